"""im2col / col2im kernels: layout, the adjoint identity, PyTorch parity, errors.

The layout is checked against a brute-force loop written straight from the
definition (independent of the strided-view implementation), and against
PyTorch's unfold/fold when torch is installed.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minires.kernels.im2col import col2im, conv_output_size, im2col, output_hw, pair, sliding_windows


@st.composite
def window_cases(draw, max_side: int = 9):
    """(x shape, kernel, stride, padding, dilation, seed) with a non-empty output."""
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 4))
    kernel = (draw(st.sampled_from([1, 2, 3, 5])), draw(st.sampled_from([1, 2, 3, 5])))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    hw = []
    for a in (0, 1):
        smallest = max(1, dilation[a] * (kernel[a] - 1) + 1 - 2 * padding[a])
        hw.append(draw(st.integers(smallest, max(smallest, max_side))))
    seed = draw(st.integers(0, 2**32 - 1))
    return (n, c, hw[0], hw[1]), kernel, stride, padding, dilation, seed


def brute_force_im2col(x, kernel, stride, padding, dilation):
    """cols[n, (c*kH + i)*kW + j, h*W_out + w] = x[n, c, h*sH + i*dH - pH, w*sW + j*dW - pW] (0 outside)."""
    n, c, hgt, wid = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    ho = (hgt + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wid + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cols = np.zeros((n, c * kh * kw, ho * wo), dtype=x.dtype)
    for b in range(n):
        for ch in range(c):
            for i in range(kh):
                for j in range(kw):
                    for h in range(ho):
                        for w in range(wo):
                            r, s = h * sh + i * dh - ph, w * sw + j * dw - pw
                            if 0 <= r < hgt and 0 <= s < wid:
                                cols[b, (ch * kh + i) * kw + j, h * wo + w] = x[b, ch, r, s]
    return cols


@given(window_cases(max_side=7))
def test_im2col_matches_the_definition(case):
    shape, kernel, stride, padding, dilation, seed = case
    x = np.random.default_rng(seed).standard_normal(shape)
    np.testing.assert_array_equal(
        im2col(x, kernel, stride, padding, dilation), brute_force_im2col(x, kernel, stride, padding, dilation)
    )


@given(window_cases())
def test_col2im_is_the_adjoint_of_im2col(case):
    """<im2col(x), y> == <x, col2im(y)> for random x and y: the defining property of the adjoint."""
    shape, kernel, stride, padding, dilation, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    cols = im2col(x, kernel, stride, padding, dilation)
    y = rng.standard_normal(cols.shape)
    left = float(np.sum(cols * y))
    right = float(np.sum(x * col2im(y, shape, kernel, stride, padding, dilation)))
    assert left == pytest.approx(right, rel=1e-12, abs=1e-12)


@given(window_cases())
def test_col2im_of_im2col_counts_window_memberships(case):
    """col2im(im2col(x)) = x * (number of windows containing each pixel): a sum, not an inverse."""
    shape, kernel, stride, padding, dilation, seed = case
    x = np.random.default_rng(seed).standard_normal(shape)
    counts = np.zeros(shape)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    ho, wo = output_hw(shape[2:], kernel, stride, padding, dilation)
    for h in range(ho):
        for w in range(wo):
            for i in range(kh):
                for j in range(kw):
                    r, s = h * sh + i * dh - ph, w * sw + j * dw - pw
                    if 0 <= r < shape[2] and 0 <= s < shape[3]:
                        counts[:, :, r, s] += 1
    round_trip = col2im(im2col(x, kernel, stride, padding, dilation), shape, kernel, stride, padding, dilation)
    np.testing.assert_allclose(round_trip, x * counts, rtol=1e-13, atol=1e-13)


def test_col2im_inverts_im2col_only_for_non_overlapping_tiles(rng):
    x = rng.standard_normal((2, 3, 6, 8))
    tiles = im2col(x, (2, 4), stride=(2, 4))
    np.testing.assert_array_equal(col2im(tiles, x.shape, (2, 4), stride=(2, 4)), x)
    overlapping = col2im(im2col(x, 3, stride=1, padding=1), x.shape, 3, stride=1, padding=1)
    np.testing.assert_allclose(overlapping[:, :, 2:4, 2:4], 9 * x[:, :, 2:4, 2:4])  # interior: in 9 windows


def test_sliding_windows_channels_last_is_the_same_view(rng):
    x = rng.standard_normal((2, 3, 7, 6))
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    out_hw = output_hw((7, 6), (3, 2), (2, 1), (0, 0), (1, 2))
    first = sliding_windows(x, (3, 2), (2, 1), (1, 2), out_hw)  # (N, C, kH, kW, Ho, Wo)
    second = sliding_windows(nhwc, (3, 2), (2, 1), (1, 2), out_hw, channels_last=True)  # (N, Ho, Wo, kH, kW, C)
    np.testing.assert_array_equal(first, second.transpose(0, 5, 3, 4, 1, 2))


def test_dtype_is_kept(rng):
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    cols = im2col(x, 3, 1, 1)
    assert cols.dtype == np.float32
    assert col2im(cols, x.shape, 3, 1, 1).dtype == np.float32


@given(window_cases())
def test_parity_with_torch_unfold_and_fold(case):
    torch = pytest.importorskip("torch", reason="torch is needed for the PyTorch parity checks")
    shape, kernel, stride, padding, dilation, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    cols = im2col(x, kernel, stride, padding, dilation)
    expected = torch.nn.functional.unfold(torch.from_numpy(x), kernel, dilation, padding, stride).numpy()
    np.testing.assert_array_equal(cols, expected)
    y = rng.standard_normal(cols.shape)
    folded = torch.nn.functional.fold(torch.from_numpy(y), shape[2:], kernel, dilation, padding, stride).numpy()
    np.testing.assert_allclose(col2im(y, shape, kernel, stride, padding, dilation), folded, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# Argument checking
# ---------------------------------------------------------------------------


def test_pair_accepts_ints_and_pairs():
    assert pair("stride", 2, 1) == (2, 2)
    assert pair("stride", (1, 3), 1) == (1, 3)
    assert pair("stride", [2, 1], 1) == (2, 1)
    assert pair("padding", np.int64(0), 0) == (0, 0)


@pytest.mark.parametrize(
    "value, error, text",
    [
        (0, ValueError, "stride must be >= 1, got 0"),
        ((1, -2), ValueError, "got (1, -2)"),
        (1.5, TypeError, "got 1.5"),
        (True, TypeError, "got True"),
        ((1, 2, 3), ValueError, "3 entries"),
        ("same", TypeError, "'same'"),
    ],
)
def test_pair_rejects_bad_values(value, error, text):
    with pytest.raises(error) as info:
        pair("stride", value, 1)
    assert text in str(info.value)


def test_output_size_rule():
    assert conv_output_size(32, 3, 1, 1, 1) == 32
    assert conv_output_size(32, 3, 2, 1, 1) == 16
    assert conv_output_size(7, 3, 2, 0, 2) == 2  # span 5 fits at 0 and 2
    with pytest.raises(ValueError, match=r"kernel \(5, 5\).*padded input \(4, 4\)"):
        output_hw((2, 2), (5, 5), (1, 1), (1, 1), (1, 1))


def test_im2col_rejects_bad_input():
    with pytest.raises(ValueError, match=r"4-D.*\(3, 5, 5\)"):
        im2col(np.zeros((3, 5, 5)), 3)
    with pytest.raises(ValueError, match=r"kernel \(3, 3\) \(spanning \(5, 5\) with dilation \(2, 2\)\)"):
        im2col(np.zeros((1, 1, 4, 4)), 3, dilation=2)
    with pytest.raises(ValueError, match="padding must be >= 0, got -1"):
        im2col(np.zeros((1, 1, 4, 4)), 3, padding=-1)


def test_col2im_rejects_wrong_column_shape():
    with pytest.raises(ValueError, match=r"cols must have shape \(1, 18, 16\).*got \(1, 18, 15\)"):
        col2im(np.zeros((1, 18, 15)), (1, 2, 4, 4), 3, 1, 1)
    with pytest.raises(ValueError, match=r"input_shape must be \(N, C, H, W\)"):
        col2im(np.zeros((1, 18, 16)), (2, 4, 4), 3, 1, 1)
