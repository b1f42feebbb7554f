"""Solution to the "Your turn" cell of 03_batch_norm.ipynb.

Try the exercise in the notebook before reading this. The definition below has the
name of the stub it solves; ``python tutorials/execute.py 03 --solutions DIR`` runs
the notebook with it in place of the stub (the tests do the same).
"""


def bn_backward(g, xhat, s, gamma):
    """Closed-form gradient of training-mode batch norm; g, xhat (N, C, H, W), s (1, C, 1, 1), gamma (C,)."""
    axes = (0, 2, 3)  # every axis but the channel
    m = g.size // g.shape[1]  # values per channel: N * H * W
    dbeta = g.sum(axis=axes)                # y = gamma xhat + beta
    dgamma = (g * xhat).sum(axis=axes)
    per_channel = gamma.reshape(1, -1, 1, 1)
    # The boxed formula: remove the mean of g and its component along xhat, scale by gamma s / m.
    dx = per_channel * s / m * (m * g - dbeta.reshape(1, -1, 1, 1) - xhat * dgamma.reshape(1, -1, 1, 1))
    return dx, dgamma, dbeta
