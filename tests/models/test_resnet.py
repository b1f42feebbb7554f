"""The CIFAR and ImageNet networks: parameter counts, shapes, naming, initialisation, registry."""

from __future__ import annotations

import math

import numpy as np
import pytest

import minires
from minires import models, nn
from minires.models import BasicBlock, Bottleneck, PlainBlock, PlainNet, ResNet
from minires.nn import init


def _n_params(model: nn.Module) -> int:
    return sum(p.size for p in model.parameters())


def _images(shape, seed=0):
    return minires.Tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


# ---------------------------------------------------------------------------
# Parameter counts
# ---------------------------------------------------------------------------

# CIFAR ResNet of depth 6n+2 with option A (no shortcut parameters), width 16.
# A 3x3 conv from a to b channels has 9ab weights (no bias); a BN on b channels 2b.
#   stem:      conv 3->16: 9*3*16 = 432,  bn: 32                          ->     464
#   stage 1:   n blocks of two 16->16 convs + 2 BN: 2*2304 + 2*32 = 4672   ->   4672 n
#   stage 2:   first block conv 16->32 (4608) + 32->32 (9216) + 2*64       ->  13952
#              n-1 blocks of 2*9216 + 2*64 = 18560                         -> 18560 (n-1)
#   stage 3:   first block 32->64 (18432) + 64->64 (36864) + 2*128         ->  55552
#              n-1 blocks of 2*36864 + 2*128 = 73984                       -> 73984 (n-1)
#   fc:        64*10 + 10                                                   ->     650
# Total = 464 + 650 + 13952 + 55552 - 18560 - 73984 + (4672 + 18560 + 73984) n
#       = 97216 n - 21926.
#   n = 3 (ResNet-20):     291648 - 21926 =    269,722  (paper: 0.27M)
#   n = 5 (ResNet-32):     486080 - 21926 =    464,154  (0.46M)
#   n = 7 (ResNet-44):     680512 - 21926 =    658,586  (0.66M)
#   n = 9 (ResNet-56):     874944 - 21926 =    853,018  (0.85M)
#   n = 18 (ResNet-110):  1749888 - 21926 =  1,727,962  (1.7M)
#   n = 200 (ResNet-1202): 19443200 - 21926 = 19,421,274 (19.4M)
CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}
PAPER_MILLIONS = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}

# Option B adds a 1x1 projection + BN at the two stage transitions:
#   16->32: 16*32 + 2*32 = 576;  32->64: 32*64 + 2*64 = 2176;  total 2752.
OPTION_B_EXTRA = 2752


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_parameter_counts(depth):
    model = models.create(f"resnet{depth}")
    count = _n_params(model)
    assert count == CIFAR_PARAMS[depth]
    assert round(count / 1e6, 2 if depth < 100 else 1) == PAPER_MILLIONS[depth]
    plain = models.create(f"plain{depth}")
    assert _n_params(plain) == count  # plain twin: same parameters as option A
    assert _n_params(models.resnet_cifar(depth, shortcut="B")) == count + OPTION_B_EXTRA


# ResNet-18 with option-B shortcuts, by hand (3x3 conv a->b: 9ab; BN b: 2b; projection a->b: ab + 2b):
#   stem: conv 7x7 3->64 = 9408, bn 128                                         9,536
#   layer1: 2 blocks * (2 * 36864 + 2 * 128)                                   147,968
#   layer2: 73728 + 147456 + 512 + (8192 + 256)  +  2 * 147456 + 512           525,568
#   layer3: 294912 + 589824 + 1024 + (32768 + 512)  +  2 * 589824 + 1024     2,099,712
#   layer4: 1179648 + 2359296 + 2048 + (131072 + 1024)  +  2 * 2359296 + 2048 8,393,728
#   fc: 512 * 1000 + 1000                                                       513,000
#   total                                                                    11,689,512
# The projections are 8448 + 33280 + 132096 = 173,824 of them, so the option-A
# ResNet-18 and plain-18 have 11,515,688. The other totals are torchvision's published counts.
IMAGENET_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
}


@pytest.mark.filterwarnings("ignore:.*running statistics were never updated")  # eval on a fresh model, on purpose
@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_imagenet_parameter_counts_and_forward(name):
    model = models.create(name)
    assert _n_params(model) == IMAGENET_PARAMS[name]
    # A 32x32 image reaches the last stage as a 1x1 map (32 / 2 / 2 / 2 / 2 / 2): the
    # eval-mode forward is cheap even for ResNet-152 and exercises every layer.
    model.eval()
    with minires.no_grad():
        y = model(_images((1, 3, 32, 32)))
    assert y.shape == (1, 1000) and np.isfinite(y.data).all()


def test_plain_imagenet_twins_match_option_a():
    assert _n_params(models.plain18()) == _n_params(models.resnet18(shortcut="A")) == 11_689_512 - 173_824
    assert _n_params(models.plain34()) == _n_params(models.resnet34(shortcut="A"))


# ---------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                                  "plain20", "plain32", "plain44", "plain56", "plain110"])
def test_cifar_models_forward_shape(name):
    model = models.create(name)
    y = model(_images((2, 3, 32, 32)))
    assert y.shape == (2, 10) and y.dtype == np.float32


def test_cifar_stage_shapes_seen_through_block_taps():
    model = models.resnet20(num_classes=7)
    shapes = {}
    for name, blk in model.blocks():
        blk.add_tap(lambda b, tap, t, name=name: shapes.__setitem__(name, t.shape) if tap == "output" else None)
    y = model(_images((2, 3, 32, 32)))
    assert y.shape == (2, 7)
    assert list(shapes) == [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]
    assert shapes["layer1.2"] == (2, 16, 32, 32)
    assert shapes["layer2.0"] == (2, 32, 16, 16)
    assert shapes["layer3.2"] == (2, 64, 8, 8)


@pytest.mark.parametrize("name, x_shape", [
    ("resnet18", (2, 3, 64, 64)), ("resnet34", (2, 3, 64, 64)), ("resnet50", (2, 3, 64, 64)),
    ("plain18", (2, 3, 64, 64)), ("plain34", (2, 3, 64, 64)),
])
def test_imagenet_models_forward_shape_train_mode(name, x_shape):
    model = models.create(name, num_classes=5)
    assert model(_images(x_shape)).shape == (2, 5)


def test_cifar_stem_for_imagenet_family():
    model = models.resnet18(cifar_stem=True, num_classes=10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not hasattr(model, "maxpool")
    shapes = {}
    for name, blk in model.blocks():
        blk.add_tap(lambda b, tap, t, name=name: shapes.__setitem__(name, t.shape) if tap == "output" else None)
    assert model(_images((2, 3, 32, 32))).shape == (2, 10)
    # 32x32 is kept by the stem, then halved by stages 2, 3, 4.
    assert shapes["layer1.1"][2:] == (32, 32) and shapes["layer4.1"][2:] == (4, 4)
    # The 3x3 stem has 3*64*9 = 1728 weights instead of 9408 (7680 fewer), and the
    # 10-way fc has 512*10 + 10 = 5130 instead of 513,000 (990 * 513 fewer).
    assert _n_params(model) == IMAGENET_PARAMS["resnet18"] - 7680 - 990 * 513


@pytest.mark.filterwarnings("ignore:.*running statistics were never updated")  # eval on a fresh model, on purpose
def test_imagenet_stem_downsamples_by_four():
    model = models.resnet18(width=8)
    shapes = {}
    model.layer1[0].add_tap(lambda b, tap, t: shapes.__setitem__(tap, t.shape))
    model.eval()
    with minires.no_grad():
        model(_images((1, 3, 64, 64)))
    assert shapes["input"] == (1, 8, 16, 16)  # 7x7/2 conv then 3x3/2 max pool


def test_resnet1202_builds_and_trains_one_step():
    """1202 layers: no recursion limit in construction, forward or backward."""
    model = models.resnet1202(seed=0)
    assert _n_params(model) == CIFAR_PARAMS[1202]
    assert len(list(model.blocks())) == 600
    x = _images((2, 3, 8, 8))
    y = model(x)
    assert y.shape == (2, 10)
    loss = (y * minires.Tensor(np.random.default_rng(1).standard_normal((2, 10)).astype(np.float32))).sum()
    loss.backward()
    first, last = model.conv1.weight.grad, model.fc.weight.grad
    assert first is not None and np.isfinite(first).all() and np.abs(first).sum() > 0
    assert last is not None and np.isfinite(last).all()


# ---------------------------------------------------------------------------
# Naming (state-dict keys are torchvision's)
# ---------------------------------------------------------------------------


def test_state_dict_keys_follow_torchvision_naming():
    keys = list(models.resnet_cifar(8, shortcut="B").state_dict())
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]

    def block(prefix, projection):
        out = [f"{prefix}.conv1.weight"] + [f"{prefix}.bn1.{k}" for k in bn]
        out += [f"{prefix}.conv2.weight"] + [f"{prefix}.bn2.{k}" for k in bn]
        if projection:
            out += [f"{prefix}.downsample.0.weight"] + [f"{prefix}.downsample.1.{k}" for k in bn]
        return out

    expected = ["conv1.weight"] + [f"bn1.{k}" for k in bn]
    expected += block("layer1.0", False) + block("layer2.0", True) + block("layer3.0", True)
    expected += ["fc.weight", "fc.bias"]
    assert keys == expected


def test_bottleneck_network_keys():
    keys = set(models.resnet50(width=8).state_dict())  # names do not depend on the width
    assert {"layer1.0.conv3.weight", "layer1.0.bn3.running_var", "layer1.0.downsample.0.weight",
            "layer4.2.bn3.weight", "fc.weight"} <= keys
    assert "layer1.1.downsample.0.weight" not in keys  # option B: identity where shapes match
    assert not any("shortcut" in k for k in keys)


# ---------------------------------------------------------------------------
# Initialisation and reproducibility
# ---------------------------------------------------------------------------


def test_init_he_fan_out_bn_ones_zeros():
    model = models.resnet56(seed=0)
    w = model.layer3[1].conv1.weight.data  # 64 * 64 * 9 = 36864 draws
    fan_out = 64 * 3 * 3
    # The sample std of 36864 normal draws is within ~0.4% (1/sqrt(2N)) of the truth; 3% is > 7 sigma.
    assert abs(w.std() / math.sqrt(2.0 / fan_out) - 1) < 0.03
    assert abs(w.mean()) < 0.05 * math.sqrt(2.0 / fan_out)  # standard error of the mean: 0.005 std
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight.data == 1).all() and (m.bias.data == 0).all()
            assert (m.running_mean == 0).all() and (m.running_var == 1).all()
    bound = 1 / math.sqrt(64)
    assert np.abs(model.fc.weight.data).max() <= bound and np.abs(model.fc.weight.data).max() > 0.9 * bound
    assert model.fc.weight.dtype == np.float32


def test_seed_makes_construction_reproducible():
    a, b, c = models.resnet20(seed=1), models.resnet20(seed=1), models.resnet20(seed=2)
    for (ka, va), (kb, vb), (_, vc) in zip(a.state_dict().items(), b.state_dict().items(), c.state_dict().items()):
        assert ka == kb
        np.testing.assert_array_equal(va, vb)
        if ka.endswith("conv1.weight") or ka == "fc.weight":
            assert not np.array_equal(va, vc), ka


@pytest.mark.parametrize("bad", [-1, 1.5, True, "0"])
def test_a_bad_seed_is_named_in_the_error(bad):
    for build in (models.resnet20, models.plain20, lambda seed: models.create("resnet20", seed=seed)):
        with pytest.raises(ValueError, match=f"seed must be a non-negative integer, got {bad!r}"):
            build(seed=bad)


def test_manual_seed_makes_construction_reproducible():
    init.manual_seed(123)
    a = models.plain20()
    init.manual_seed(123)
    b = models.plain20()
    for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
        np.testing.assert_array_equal(va, vb)


def test_zero_init_residual_zeroes_only_the_last_bn_of_each_branch():
    basic = models.resnet20(zero_init_residual=True, seed=0)
    for _, blk in basic.blocks():
        assert (blk.bn2.weight.data == 0).all() and (blk.bn1.weight.data == 1).all()
    bottleneck = models.resnet50(zero_init_residual=True, seed=0, width=8)
    for _, blk in bottleneck.blocks():
        assert (blk.bn3.weight.data == 0).all() and (blk.bn2.weight.data == 1).all()
        if isinstance(blk.downsample, models.ProjectionShortcut):
            assert (blk.downsample[1].weight.data == 1).all()  # projections are not residual branches
    # Each block then starts as relu(shortcut): with identity shortcuts the first
    # stage maps its (non-negative) input to itself.
    x = _images((2, 3, 16, 16))
    seen = {}
    basic.layer1[0].add_tap(lambda b, n, t: seen.__setitem__(n, t.data))
    basic(x)
    np.testing.assert_array_equal(seen["output"], seen["input"])
    assert (models.resnet20(seed=0).layer1[0].bn2.weight.data == 1).all()  # off by default


def test_zero_init_residual_refused_for_plain_nets():
    with pytest.raises(ValueError, match="zero_init_residual"):
        PlainNet(PlainBlock, [1, 1, 1], zero_init_residual=True)


# ---------------------------------------------------------------------------
# Registry and argument errors
# ---------------------------------------------------------------------------

ALL_NAMES = [
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
    "plain20", "plain32", "plain44", "plain56", "plain110",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "plain18", "plain34",
    "resnet_cifar", "plain_cifar",
]


def test_registry_names_and_create():
    assert sorted(ALL_NAMES) == models.names()
    model = models.create("resnet_cifar", depth=14, shortcut="C", num_classes=3, seed=0)
    assert isinstance(model, ResNet) and model.arch == "resnet14" and len(list(model.blocks())) == 6
    assert isinstance(models.create("plain20"), PlainNet)


def test_registry_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown model name 'resnet21'.*plain110.*resnet1202.*resnet56"):
        models.create("resnet21")


@pytest.mark.parametrize("depth", [21, 2, 0, -4, 20.0, "20", True])
def test_invalid_cifar_depth_lists_valid_depths(depth):
    with pytest.raises(ValueError, match=r"6n \+ 2.*20, 32, 44, 56, 110, 1202.*got"):
        models.resnet_cifar(depth)
    with pytest.raises(ValueError, match=r"6n \+ 2"):
        models.plain_cifar(depth)


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="got 'D'"):
        models.resnet20(shortcut="D")
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        models.resnet20(num_classes=0)
    with pytest.raises(ValueError, match="stem"):
        ResNet(BasicBlock, [1], stem="tiny")
    with pytest.raises(ValueError, match="plain blocks go in PlainNet"):
        ResNet(PlainBlock, [1])
    with pytest.raises(ValueError, match="PlainNet needs a plain block"):
        PlainNet(Bottleneck, [1])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(2, 1, 8, 8\)"):
        models.resnet20()(_images((2, 1, 8, 8)))


def test_stride_in_1x1_reaches_every_bottleneck():
    model = models.resnet50(stride_in_1x1=True, width=8, num_classes=4)
    first = [blk for name, blk in model.blocks() if name.endswith(".0")]
    assert all(blk.stride_in_1x1 for _, blk in model.blocks())
    assert [blk.conv1.stride for blk in first] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert model(_images((2, 3, 32, 32))).shape == (2, 4)


def test_float64_model_keeps_float64():
    model = models.resnet_cifar(8, width=4).double()
    y = model(minires.Tensor(np.zeros((2, 3, 8, 8))))
    assert y.dtype == np.float64


@pytest.mark.parametrize("plain", [False, True])
def test_fused_training_forward_equals_the_layer_by_layer_one(plain):
    """The whole network, stem included: fused (nothing watching) vs layer by layer (hooks and taps), float64."""
    build = models.plain_cifar if plain else models.resnet_cifar
    x_data = np.random.default_rng(31).standard_normal((3, 3, 8, 8))
    runs = []
    for fused in (True, False):
        model = build(8, width=4, seed=30).double().train()
        if not fused:
            model.relu.register_forward_hook(lambda *args: None)
            for _, block in model.blocks():
                block.add_tap(lambda *args: None)
        x = minires.Tensor(x_data, requires_grad=True)
        logits = model(x)
        logits.backward(minires.Tensor(np.random.default_rng(32).standard_normal(logits.shape)))
        runs.append((logits.data, x.grad, [p.grad for p in model.parameters()], [b.copy() for b in model.buffers()]))
    for a, b in zip(runs[0][:2] + tuple(runs[0][2] + runs[0][3]), runs[1][:2] + tuple(runs[1][2] + runs[1][3])):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
