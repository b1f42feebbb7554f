"""Blocks and shortcuts: shapes, the option A/B/C rules, taps, plain twins, gradient checks."""

from __future__ import annotations

import numpy as np
import pytest
from block_cases import GRADCHECK_CASES, randomise

import minires
from minires import nn
from minires.models import (
    BasicBlock,
    Block,
    Bottleneck,
    PadShortcut,
    PlainBlock,
    PlainBottleneck,
    ProjectionShortcut,
    make_shortcut,
)
from minires.models.shortcuts import subsample_pad_channels


def _n_params(module: nn.Module) -> int:
    return sum(p.size for p in module.parameters())


# ---------------------------------------------------------------------------
# Shortcuts
# ---------------------------------------------------------------------------


def test_option_a_subsamples_and_pads_evenly_on_both_sides():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 5, 6))
    y = PadShortcut(4, 8, stride=2)(minires.Tensor(x)).data
    # Doubling 4 -> 8 channels: planes // 4 = 2 zero channels on each side.
    assert y.shape == (2, 8, 3, 3)  # ceil(5/2), ceil(6/2): the 3x3/pad-1/stride-2 conv's output size
    np.testing.assert_array_equal(y[:, :2], 0)
    np.testing.assert_array_equal(y[:, 6:], 0)
    np.testing.assert_array_equal(y[:, 2:6], x[:, :, ::2, ::2])


def test_option_a_odd_channel_difference_puts_the_extra_zero_last():
    x = np.ones((1, 3, 2, 2))
    y = subsample_pad_channels(minires.Tensor(x), stride=1, before=1, after=2).data
    assert y.shape == (1, 6, 2, 2)
    assert PadShortcut(3, 6).pad_before == 1 and PadShortcut(3, 6).pad_after == 2
    np.testing.assert_array_equal(y[0, :, 0, 0], [0, 1, 1, 1, 0, 0])


def test_option_a_has_no_parameters_and_rejects_bad_input():
    assert _n_params(PadShortcut(16, 32, 2)) == 0
    with pytest.raises(ValueError, match="in_planes=32 > out_planes=16"):
        PadShortcut(32, 16, 2)
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\).*\(2, 3, 4, 4\)"):
        PadShortcut(4, 8, 2)(minires.Tensor(np.zeros((2, 3, 4, 4))))


def test_option_a_gradcheck_odd_sizes():
    rng = np.random.default_rng(1)
    x = minires.Tensor(rng.standard_normal((2, 3, 5, 3)), requires_grad=True)
    assert minires.gradcheck(lambda t: subsample_pad_channels(t, 2, 1, 2), [x], seed=2)



def test_option_a_keeps_the_input_memory_layout():
    """Channels-last in, channels-last out and back (the CPU ResNet's layout), same values as NCHW."""
    from minires.fast.layout import is_channels_last

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 6, 5))
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    g = rng.standard_normal((2, 8, 3, 3))
    results = []
    for data in (x, x_cl):
        t = minires.Tensor(data, requires_grad=True)
        seen = []
        t.register_hook(lambda grad: seen.append(grad.data))  # as the Function returns it (.grad is a copy)
        y = subsample_pad_channels(t, 2, 2, 2)
        y.backward(minires.Tensor(g))
        results.append((y.data, seen[0]))
        assert is_channels_last(y.data) == is_channels_last(data) == is_channels_last(seen[0])
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])

@pytest.mark.parametrize(
    "option, in_planes, out_planes, stride, expected",
    [
        ("A", 16, 16, 1, nn.Identity),
        ("A", 16, 32, 2, PadShortcut),
        ("A", 64, 256, 1, PadShortcut),  # bottleneck stage 1: channels change, grid does not
        ("B", 16, 16, 1, nn.Identity),
        ("B", 16, 32, 2, ProjectionShortcut),
        ("B", 16, 16, 2, ProjectionShortcut),  # stride alone changes the shape
        ("C", 16, 16, 1, ProjectionShortcut),
        ("C", 16, 32, 2, ProjectionShortcut),
    ],
)
def test_make_shortcut_choice(option, in_planes, out_planes, stride, expected):
    assert type(make_shortcut(option, in_planes, out_planes, stride)) is expected


def test_make_shortcut_rejects_unknown_option():
    with pytest.raises(ValueError, match=r"'A', 'B', 'C'.*'D'"):
        make_shortcut("D", 16, 32, 2)


def test_projection_is_a_strided_1x1_conv_then_bn_under_torchvision_names():
    proj = ProjectionShortcut(16, 32, stride=2)
    conv, bn = proj[0], proj[1]
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and conv.bias is None
    assert list(proj.state_dict()) == [
        "0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
    ]
    assert _n_params(proj) == 16 * 32 + 2 * 32


# ---------------------------------------------------------------------------
# Block structure and shapes
# ---------------------------------------------------------------------------

BLOCK_CASES = [
    # (constructor, kwargs, expansion)
    (BasicBlock, {"shortcut": "A"}, 1),
    (BasicBlock, {"shortcut": "B"}, 1),
    (BasicBlock, {"shortcut": "C"}, 1),
    (PlainBlock, {}, 1),
    (Bottleneck, {"shortcut": "A"}, 4),
    (Bottleneck, {"shortcut": "B"}, 4),
    (Bottleneck, {"shortcut": "C"}, 4),
    (Bottleneck, {"shortcut": "B", "stride_in_1x1": True}, 4),
    (PlainBottleneck, {}, 4),
    (PlainBottleneck, {"stride_in_1x1": True}, 4),
]


@pytest.mark.parametrize("cls, kwargs, expansion", BLOCK_CASES)
@pytest.mark.parametrize("stride", [1, 2])
def test_block_output_shape(cls, kwargs, expansion, stride):
    block = cls(4, 4, stride=stride, **kwargs)
    assert isinstance(block, Block) and cls.expansion == expansion
    y = block(minires.Tensor(np.random.default_rng(0).standard_normal((2, 4, 7, 6)).astype(np.float32)))
    assert y.shape == (2, 4 * expansion, 4 if stride == 2 else 7, 3 if stride == 2 else 6)
    assert y.dtype == np.float32
    assert np.all(y.data >= 0)  # every block ends in a ReLU


def test_basic_block_state_dict_keys_follow_torchvision():
    keys_b = list(BasicBlock(16, 32, stride=2, shortcut="B").state_dict())
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expected = ["conv1.weight"] + [f"bn1.{k}" for k in bn] + ["conv2.weight"] + [f"bn2.{k}" for k in bn]
    assert keys_b == expected + ["downsample.0.weight"] + [f"downsample.1.{k}" for k in bn]
    # Option A and plain blocks have no shortcut state: the same keys without the downsample.
    assert list(BasicBlock(16, 32, stride=2, shortcut="A").state_dict()) == expected
    assert list(PlainBlock(16, 32, stride=2).state_dict()) == expected


def test_shortcut_is_reachable_and_is_the_downsample_module():
    block = BasicBlock(16, 32, stride=2, shortcut="B")
    assert block.shortcut is block.downsample
    assert isinstance(block.shortcut, ProjectionShortcut)
    assert isinstance(BasicBlock(16, 16, shortcut="B").shortcut, nn.Identity)
    assert not hasattr(PlainBlock(16, 32, 2), "shortcut")


def test_bottleneck_stride_placement():
    v15 = Bottleneck(64, 32, stride=2)
    v1 = Bottleneck(64, 32, stride=2, stride_in_1x1=True)
    assert v15.conv1.stride == (1, 1) and v15.conv2.stride == (2, 2)
    assert v1.conv1.stride == (2, 2) and v1.conv2.stride == (1, 1)
    # Both: 1x1 reduce to planes, 3x3 at planes, 1x1 restore to 4 * planes.
    assert v15.conv1.weight.shape == (32, 64, 1, 1)
    assert v15.conv2.weight.shape == (32, 32, 3, 3)
    assert v15.conv3.weight.shape == (128, 32, 1, 1)
    assert _n_params(v1) == _n_params(v15)


@pytest.mark.parametrize("stride, in_planes", [(1, 16), (2, 8)])
def test_plain_twin_has_the_parameters_of_the_option_a_block(stride, in_planes):
    assert _n_params(PlainBlock(in_planes, 16, stride)) == _n_params(BasicBlock(in_planes, 16, stride, "A"))
    assert _n_params(PlainBottleneck(in_planes * 4, 16, stride)) == _n_params(
        Bottleneck(in_planes * 4, 16, stride, "A")
    )


def test_invalid_block_arguments():
    with pytest.raises(ValueError, match="stride must be a positive integer, got 0"):
        BasicBlock(4, 4, stride=0)
    with pytest.raises(ValueError, match="got 'X'"):
        BasicBlock(4, 4, shortcut="X")


# ---------------------------------------------------------------------------
# Taps and the forward computation they expose
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shortcut", ["A", "B", "C"])
def test_residual_block_output_is_relu_of_branch_plus_shortcut(shortcut):
    block = randomise(BasicBlock(4, 8, stride=2, shortcut=shortcut).double(), 0)
    x = minires.Tensor(np.random.default_rng(1).standard_normal((2, 4, 6, 6)))
    seen = {}
    block.add_tap(lambda blk, name, t: seen.__setitem__(name, t))
    y = block(x)
    assert list(seen) == ["input", "residual", "shortcut", "output"]
    assert seen["input"] is x and seen["output"] is y
    f, s = seen["residual"].data, seen["shortcut"].data
    np.testing.assert_allclose(y.data, np.maximum(f + s, 0), rtol=0, atol=0)
    # The shortcut tap is exactly what the shortcut module computes on its own.
    np.testing.assert_array_equal(s, block.shortcut(x).data)
    # The residual tap is the branch: ReLU is not applied yet, so negatives survive.
    assert (f < 0).any()


def test_plain_block_is_the_residual_block_minus_the_addition():
    residual = randomise(BasicBlock(4, 8, stride=2, shortcut="A").double(), 3)
    plain = PlainBlock(4, 8, stride=2).double()
    plain.load_state_dict(residual.state_dict())  # same keys: option A has no shortcut state
    x = minires.Tensor(np.random.default_rng(4).standard_normal((2, 4, 6, 6)))
    taps_r, taps_p = {}, {}
    residual.add_tap(lambda b, n, t: taps_r.__setitem__(n, t.data))
    plain.add_tap(lambda b, n, t: taps_p.__setitem__(n, t.data))
    y_plain = plain(x)
    residual(x)
    assert list(taps_p) == ["input", "residual", "output"]
    np.testing.assert_allclose(taps_p["residual"], taps_r["residual"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y_plain.data, np.maximum(taps_r["residual"], 0), rtol=1e-12, atol=1e-12)
    assert not np.allclose(y_plain.data, taps_r["output"])  # the addition really is gone


def test_bottleneck_taps_and_output():
    block = randomise(Bottleneck(8, 4, stride=2, shortcut="B").double(), 5)
    seen = []
    block.add_tap(lambda b, n, t: seen.append((b, n, t.data)))
    y = block(minires.Tensor(np.random.default_rng(6).standard_normal((2, 8, 5, 5))))
    assert [n for _, n, _ in seen] == ["input", "residual", "shortcut", "output"]
    assert all(b is block for b, _, _ in seen)
    np.testing.assert_allclose(y.data, np.maximum(seen[1][2] + seen[2][2], 0), rtol=0, atol=0)


def test_tap_handle_remove_and_multiple_taps():
    block = BasicBlock(4, 4)
    x = minires.Tensor(np.ones((1, 4, 3, 3), dtype=np.float32))
    a, b = [], []
    ha = block.add_tap(lambda blk, n, t: a.append(n))
    block.add_tap(lambda blk, n, t: b.append(n))
    block(x)
    ha.remove()
    block(x)
    assert len(a) == 4 and len(b) == 8
    assert block._taps and len(block._taps) == 1
    with pytest.raises(TypeError, match="callable"):
        block.add_tap("not a function")


def test_tap_can_remove_itself_during_forward():
    block = BasicBlock(4, 4)
    calls = []

    def once(blk, name, t):
        calls.append(name)
        handle.remove()

    handle = block.add_tap(once)
    block(minires.Tensor(np.ones((1, 4, 3, 3), dtype=np.float32)))
    assert calls == ["input"]


def test_taps_see_live_graph_tensors_so_gradients_can_be_hooked():
    """A diagnostics tap can register a gradient hook on the block's input and output."""
    block = randomise(BasicBlock(4, 4, shortcut="A").double(), 7)
    grads = {}

    def tap(blk, name, t):
        if name in ("input", "output"):
            t.register_hook(lambda g, name=name: grads.__setitem__(name, g.data))

    block.add_tap(tap)
    x = minires.Tensor(np.random.default_rng(8).standard_normal((2, 4, 3, 3)), requires_grad=True)
    y = block(x)
    upstream = np.random.default_rng(9).standard_normal(y.shape)
    y.backward(upstream)
    np.testing.assert_array_equal(grads["output"], upstream)
    np.testing.assert_allclose(grads["input"], x.grad, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------
# Gradient checks (float64, train mode: BN uses batch statistics)
# ---------------------------------------------------------------------------



@pytest.mark.parametrize("cls, in_planes, planes, stride, kwargs", GRADCHECK_CASES)
def test_block_gradcheck_train_mode(cls, in_planes, planes, stride, kwargs):
    block = randomise(cls(in_planes, planes, stride=stride, **kwargs).double(), 10).train()
    x = minires.Tensor(np.random.default_rng(11).standard_normal((2, in_planes, 4, 4)), requires_grad=True)
    params = list(block.parameters())
    # The parameters are passed as gradcheck inputs so that they are perturbed
    # and checked too; fn ignores the extra arguments because the block reads
    # the very same Parameter objects.
    assert minires.gradcheck(lambda inp, *_: block(inp), [x, *params], seed=12, atol=1e-6, rtol=1e-4)


def test_block_gradcheck_eval_mode():
    block = randomise(Bottleneck(4, 2, stride=2, shortcut="B").double(), 13).eval()
    x = minires.Tensor(np.random.default_rng(14).standard_normal((2, 4, 3, 3)), requires_grad=True)
    assert minires.gradcheck(lambda inp, *_: block(inp), [x, *block.parameters()], seed=15, atol=1e-6, rtol=1e-4)
