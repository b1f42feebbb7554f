"""cross_entropy and accuracy: gradient checks, PyTorch parity, stability, error messages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minires import Tensor, gradcheck
from minires.kernels.cross_entropy import cross_entropy_forward, log_softmax
from minires.nn.functional.loss import accuracy, cross_entropy


@st.composite
def ce_case(draw):
    n = draw(st.integers(1, 6))
    k = draw(st.integers(1, 7))
    seed = draw(st.integers(0, 2**32 - 1))
    smoothing = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]) | st.floats(0.0, 1.0))
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, k)) * rng.uniform(0.1, 5.0)
    target = rng.integers(0, k, size=n)
    return logits, target, smoothing, reduction, seed


@settings(max_examples=25)
@given(ce_case())
def test_gradcheck(case):
    logits, target, smoothing, reduction, seed = case
    x = Tensor(logits, requires_grad=True)
    assert gradcheck(lambda z: cross_entropy(z, target, smoothing, reduction), [x], seed=seed)


@settings(max_examples=15)
@given(ce_case())
def test_gradient_rows_sum_to_zero_and_reductions_agree(case):
    # d loss / d z = p - q, and both p and q sum to one over the classes.
    logits, target, smoothing, _, _ = case
    n = logits.shape[0]
    per_example = cross_entropy(Tensor(logits), target, smoothing, "none").data
    total = cross_entropy(Tensor(logits), target, smoothing, "sum").data
    mean = cross_entropy(Tensor(logits), target, smoothing, "mean").data
    np.testing.assert_allclose(total, per_example.sum(), rtol=1e-12)
    np.testing.assert_allclose(mean, per_example.sum() / n, rtol=1e-12)
    x = Tensor(logits, requires_grad=True)
    cross_entropy(x, target, smoothing, "sum").backward()
    np.testing.assert_allclose(x.grad.sum(axis=1), 0.0, atol=1e-12)


def test_matches_definition_with_explicit_target_distribution(rng):
    # loss = -sum_k q_k log p_k with q = (1 - eps) onehot + eps / K, p = softmax (computed here directly).
    logits = rng.standard_normal((5, 4))
    target = np.array([0, 3, 1, 1, 2])
    eps = 0.3
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    q = (1 - eps) * np.eye(4)[target] + eps / 4
    expected = -(q * np.log(p)).sum(axis=1)
    np.testing.assert_allclose(cross_entropy(Tensor(logits), target, eps, "none").data, expected, rtol=1e-12)
    x = Tensor(logits, requires_grad=True)
    g = rng.standard_normal(5)
    cross_entropy(x, target, eps, "none").backward(g)
    np.testing.assert_allclose(x.grad, g[:, None] * (p - q), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_logits_give_finite_exact_loss_and_gradient(dtype):
    # Row 0: the target (class 2) is 2e4 below the winner: loss = 2e4 (exp(-1e4) vanishes).
    # Row 1: the target wins by 1e4: loss = log(1 + exp(-1e4) + exp(-2e4)) = 0.
    logits = np.array([[1e4, 0.0, -1e4], [2e4, 1e4, 0.0]], dtype=dtype)
    x = Tensor(logits, requires_grad=True)
    loss = cross_entropy(x, [2, 0], 0.0, "none")
    assert loss.dtype == dtype
    np.testing.assert_allclose(loss.data, [2e4, 0.0], rtol=1e-7, atol=0)
    loss.backward(np.array([1.0, 1.0], dtype=dtype))
    assert np.all(np.isfinite(x.grad))
    np.testing.assert_allclose(x.grad, [[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]], atol=1e-7)


def test_log_softmax_is_stable_and_normalised(rng):
    z = rng.standard_normal((4, 6)) * 1e4
    logp = log_softmax(z)
    assert np.all(np.isfinite(logp))
    np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1.0, rtol=1e-12)


def test_float32_stays_float32(rng):
    x = Tensor(rng.standard_normal((8, 10)).astype(np.float32), requires_grad=True)
    for reduction in ("mean", "sum", "none"):
        loss = cross_entropy(x, rng.integers(0, 10, 8), 0.1, reduction)
        assert loss.dtype == np.float32
    loss.backward(np.ones(8, np.float32))
    assert x.grad.dtype == np.float32
    losses, probs = cross_entropy_forward(x.data, np.zeros(8, np.int64), 0.1)
    assert losses.dtype == probs.dtype == np.float32


def test_reduced_loss_is_a_scalar_and_backward_needs_no_argument(rng):
    x = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    loss = cross_entropy(x, [1, 2, 3])
    assert loss.shape == ()
    loss.backward()
    assert x.grad.shape == (3, 4)


@pytest.mark.parametrize("target", [[2, 0, 1], np.array([2, 0, 1], np.int32), np.array([2, 0, 1], np.uint8), "tensor"])
def test_target_forms(target):
    logits = np.array([[0.1, 0.2, 3.0], [1.0, -1.0, 0.0], [0.0, 2.0, 0.5]])
    if isinstance(target, str):
        target = Tensor(np.array([2, 0, 1]))
    reference = cross_entropy(Tensor(logits), np.array([2, 0, 1], np.int64)).item()
    assert cross_entropy(Tensor(logits), target).item() == reference


# ---------------------------------------------------------------------------
# PyTorch parity
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.7])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_matches_torch(rng, smoothing, reduction, scale):
    torch = pytest.importorskip("torch", reason="PyTorch parity tests need torch")
    logits = rng.standard_normal((7, 5)) * scale
    target = rng.integers(0, 5, 7)
    x = Tensor(logits, requires_grad=True)
    loss = cross_entropy(x, target, smoothing, reduction)
    g = rng.standard_normal(loss.shape)
    loss.backward(g)
    tx = torch.tensor(logits, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tx, torch.tensor(target), reduction=reduction, label_smoothing=smoothing)
    tloss.backward(torch.tensor(g, dtype=torch.float64))
    np.testing.assert_allclose(loss.data, tloss.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_float32_large_logits_match_torch(rng):
    torch = pytest.importorskip("torch", reason="PyTorch parity tests need torch")
    logits = (rng.standard_normal((16, 10)) * 1e4).astype(np.float32)
    target = rng.integers(0, 10, 16)
    x = Tensor(logits, requires_grad=True)
    loss = cross_entropy(x, target, 0.1)
    loss.backward()
    tx = torch.tensor(logits, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tx, torch.tensor(target), label_smoothing=0.1)
    tloss.backward()
    assert np.isfinite(loss.item())
    np.testing.assert_allclose(loss.item(), tloss.item(), rtol=1e-6)
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_float_target_is_an_error():
    with pytest.raises(TypeError, match="integer class indices, got dtype float64"):
        cross_entropy(Tensor(np.zeros((2, 3))), np.array([0.0, 1.0]))


@pytest.mark.parametrize("bad, index", [(3, 1), (-1, 1), (-100, 1)])
def test_target_out_of_range_names_the_value(bad, index):
    target = np.array([0, bad, 2, 1])
    with pytest.raises(ValueError, match=rf"target\[{index}\] = {bad} is out of range for 3 classes \(valid: 0..2\)"):
        cross_entropy(Tensor(np.zeros((4, 3))), target)


def test_batch_size_mismatch_shows_both_shapes():
    with pytest.raises(ValueError, match=r"logits have shape \(4, 3\) \(N=4\) but target has shape \(5,\) \(N=5\)"):
        cross_entropy(Tensor(np.zeros((4, 3))), np.zeros(5, np.int64))


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4), ()])
def test_logits_of_wrong_rank(shape):
    with pytest.raises(ValueError, match=rf"logits of shape \(N, K\), got {len(shape)}-D shape"):
        cross_entropy(Tensor(np.zeros(shape)), np.zeros(2, np.int64))


def test_target_of_wrong_rank():
    with pytest.raises(ValueError, match=r"target must have shape \(N,\), got 2-D shape \(4, 1\)"):
        cross_entropy(Tensor(np.zeros((4, 3))), np.zeros((4, 1), np.int64))


def test_bad_reduction_smoothing_and_empty_batch():
    x = Tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="reduction must be one of .* got 'average'"):
        cross_entropy(x, [0, 1], reduction="average")
    with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 1\], got 1.5"):
        cross_entropy(x, [0, 1], label_smoothing=1.5)
    with pytest.raises(ValueError, match="empty batch"):
        cross_entropy(Tensor(np.zeros((0, 3))), np.zeros(0, np.int64))
    with pytest.raises(TypeError, match="floating-point logits, got dtype int64"):
        cross_entropy(Tensor(np.zeros((2, 3), np.int64)), [0, 1])


# ---------------------------------------------------------------------------
# accuracy
# ---------------------------------------------------------------------------


def test_accuracy_top1():
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 5.0], [1.0, 3.0, 2.0]])
    # argmax per row: 1, 0, 2, 1
    result = accuracy(Tensor(logits), [1, 0, 0, 2])
    assert isinstance(result, float)
    assert result == 0.5


def _brute_force_topk(z, target, k):
    # Rank classes by descending logit, ties broken by lower index (a stable sort of -z).
    hits = [target[i] in np.argsort(-z[i], kind="stable")[:k] for i in range(len(target))]
    return sum(hits) / len(target)


@settings(max_examples=25)
@given(st.integers(1, 8), st.integers(1, 6), st.integers(0, 2**32 - 1), st.data())
def test_accuracy_topk_matches_brute_force_including_ties(n, k, seed, data):
    rng = np.random.default_rng(seed)
    z = rng.integers(-2, 3, size=(n, k)).astype(np.float64)  # small integers: many ties
    target = rng.integers(0, k, n)
    topk = data.draw(st.integers(1, k))
    assert accuracy(z, target, topk=topk) == pytest.approx(_brute_force_topk(z, target, topk), abs=0)
    if topk == 1:
        assert accuracy(z, target) == float(np.mean(z.argmax(axis=1) == target))


def test_accuracy_errors():
    with pytest.raises(ValueError, match=r"topk must be an integer in \[1, 3\] for 3 classes, got 4"):
        accuracy(np.zeros((2, 3)), [0, 1], topk=4)
    with pytest.raises(ValueError, match=r"target\[0\] = 7 is out of range"):
        accuracy(np.zeros((2, 3)), [7, 1])


# ---------------------------------------------------------------------------
# Targets already on a device: checked without reading them back
# ---------------------------------------------------------------------------


class _DeviceLabels(np.ndarray):
    """Labels that play a GPU array: any read of a value back to the host fails the test.

    On a GPU, ``int(x)``, ``bool(x)``, ``x.item()`` or the indices of a mask
    (``flatnonzero``, whose ``.size`` is then read) wait for every queued
    kernel. Arithmetic, comparisons, clip and where stay allowed: on a GPU
    they queue more kernels and return at once.
    """

    def _host_read(self, *args, **kwargs):
        raise AssertionError("the target was read back to the host (a GPU sync on every step)")

    __bool__ = __int__ = __float__ = __index__ = _host_read
    item = tolist = nonzero = get = _host_read


def _device_labels(values):
    return np.asarray(values, dtype=np.int64).view(_DeviceLabels)


@pytest.fixture
def labels_on_device(monkeypatch):
    """Make the loss treat every target as a GPU array (the device branch, exercised with NumPy)."""
    from minires.nn.functional import loss

    monkeypatch.setattr(loss, "_on_device", lambda array: True)


def _plain(a):
    return np.asarray(a).view(np.ndarray)


def test_the_fake_device_labels_refuse_host_reads():
    labels = _device_labels([0, 5])
    with pytest.raises(AssertionError, match="read back"):
        np.flatnonzero(labels >= 3)
    with pytest.raises(AssertionError, match="read back"):
        bool((labels >= 3).any())


def test_device_target_out_of_range_poisons_loss_and_gradient_without_a_host_read(labels_on_device, rng):
    logits = rng.standard_normal((4, 3))
    target = _device_labels([0, 5, 2, -1])  # examples 1 and 3 are out of range
    x = Tensor(logits, requires_grad=True)
    per_example = cross_entropy(x, target, reduction="none")
    losses = _plain(per_example.data)
    assert np.isnan(losses[[1, 3]]).all()
    clean = cross_entropy(Tensor(logits[[0, 2]]), np.array([0, 2]), reduction="none").data
    np.testing.assert_array_equal(losses[[0, 2]], clean)  # the good examples are untouched
    per_example.backward(np.ones(4))
    grad = _plain(x.grad)
    assert np.isnan(grad[[1, 3]]).all() and np.isfinite(grad[[0, 2]]).all()
    for reduction in ("mean", "sum"):
        assert np.isnan(_plain(cross_entropy(Tensor(logits), target, reduction=reduction).data))


def test_device_target_in_range_gives_the_host_result(labels_on_device, rng):
    logits = rng.standard_normal((5, 4))
    labels = np.array([3, 0, 1, 1, 2])
    for smoothing in (0.0, 0.2):
        x_dev, x_host = Tensor(logits, requires_grad=True), Tensor(logits, requires_grad=True)
        on_device = cross_entropy(x_dev, _device_labels(labels), smoothing)
        on_device.backward()
        assert _plain(on_device.data) == cross_entropy(x_host, labels, smoothing).data
        x_host.grad = None
        cross_entropy(x_host, labels, smoothing).backward()
        np.testing.assert_array_equal(_plain(x_dev.grad), x_host.grad)


def test_host_target_is_still_checked_eagerly_beside_device_targets(monkeypatch):
    # Only device arrays take the deferred branch; a NumPy target gets the clear error, not a NaN.
    from minires.nn.functional import loss

    monkeypatch.setattr(loss, "_on_device", lambda array: isinstance(array, _DeviceLabels))
    with pytest.raises(ValueError, match=r"target\[1\] = 3 is out of range"):
        cross_entropy(Tensor(np.zeros((2, 3))), np.array([0, 3]))
