"""Solution to the "Your turn" cell of 07_data_parallel.ipynb.

Try the exercise in the notebook before reading this. The definition below has the
name of the stub it solves; ``python tutorials/execute.py 07 --solutions DIR`` runs
the notebook with it in place of the stub (the tests do the same).
"""

import numpy as np


def sync_bn_backward(g_shards, xhat_shards, gamma, s, all_reduce):
    """dL/dx of every rank for batch norm with global statistics: a list of one (n_r, C, H, W) array per rank."""
    axes = (0, 2, 3)  # every axis but the channel
    channels = gamma.shape[0]
    # What each rank computes from its own shard, packed into one array: [m_r, sum g (C), sum g * xhat (C)].
    local = [np.concatenate([[g.size // channels], g.sum(axis=axes), (g * xhat).sum(axis=axes)])
             for g, xhat in zip(g_shards, xhat_shards)]
    totals = all_reduce(local)  # one all-reduce: every rank now holds M and the two global sums
    per_channel = gamma.reshape(1, -1, 1, 1)
    dx_shards = []
    for g, xhat, total in zip(g_shards, xhat_shards, totals):  # from here on, each rank on its own
        count = total[0]
        sum_g = total[1:1 + channels].reshape(1, -1, 1, 1)
        sum_g_xhat = total[1 + channels:].reshape(1, -1, 1, 1)
        # The boxed formula with the global count and sums: remove the mean of g and its component along xhat.
        dx_shards.append(per_channel * s / count * (count * g - sum_g - xhat * sum_g_xhat))
    return dx_shards
