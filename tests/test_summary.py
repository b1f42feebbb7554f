"""minires.summary: measured output shapes, parameter totals and MAC counts."""

from __future__ import annotations

import numpy as np
import pytest

import minires
from minires import models, nn
from minires.summary import Summary, layer_macs, summary

# MACs of a CIFAR ResNet of depth 6n+2 at 32x32 (conv: C_out*C_in*kh*kw*H_out*W_out):
#   stem conv 3->16 on 32x32:                  16*3*9*1024   =   442,368
#   every 3x3 conv keeping its width costs the same at every stage, because the
#   width doubles when the map area quarters:  16*16*9*1024 = 32*32*9*256 = 64*64*9*64 = 2,359,296
#   the two stage-opening convs (16->32 at 16x16, 32->64 at 8x8) cost half: 1,179,648 each
#   fc 64 -> 10:                                                     640
# With 6n stage convs: (6n - 2) * 2,359,296 + 2 * 1,179,648 = (6n - 1) * 2,359,296, so
#   MACs = 442,368 + 640 + (6n - 1) * 2,359,296.
#   n = 3  (ResNet-20):  17 * 2,359,296 + 443,008 =  40,551,040   (paper: 40.55M)
#   n = 9  (ResNet-56):  53 * 2,359,296 + 443,008 = 125,485,696   (125.5M)
#   n = 18 (ResNet-110): 107 * 2,359,296 + 443,008 = 252,887,680  (252.9M)
# Option-A shortcuts, BN, ReLU, pooling and the additions add 0.
CIFAR_MACS = {"resnet20": 40_551_040, "resnet56": 125_485_696, "resnet110": 252_887_680}


@pytest.mark.parametrize("name", sorted(CIFAR_MACS))
def test_cifar_macs_match_the_paper(name):
    model = models.create(name)
    s = summary(model, (3, 32, 32))
    assert isinstance(s, Summary)
    assert s.total_macs == CIFAR_MACS[name]
    assert s.total_params == sum(p.size for p in model.parameters())
    # The plain twin runs the same convolutions: same MACs.
    assert summary(models.create(name.replace("resnet", "plain")), (3, 32, 32)).total_macs == CIFAR_MACS[name]


def test_summary_line():
    assert summary(models.resnet20(), (3, 32, 32)).summary_line() == "resnet20: 0.27M params, 40.55M MACs/image"
    assert summary(models.resnet56(), (3, 32, 32)).summary_line() == "resnet56: 0.85M params, 125.49M MACs/image"


def test_rows_are_leaf_modules_in_execution_order():
    model = models.resnet20()
    s = summary(model, (3, 32, 32), batch_size=4)
    first = s.layers[0]
    assert (first.name, first.type, first.output_shape, first.params, first.macs) == (
        "conv1", "Conv2d", (4, 16, 32, 32), 432, 16 * 3 * 9 * 32 * 32,
    )
    assert [r.name for r in s.layers[:3]] == ["conv1", "bn1", "relu"]
    last = s.layers[-1]
    assert (last.name, last.output_shape, last.params, last.macs) == ("fc", (4, 10), 650, 640)
    # Option A's stage transition: the PadShortcut row, no parameters, no MACs.
    pad = next(r for r in s.layers if r.name == "layer2.0.downsample")
    assert (pad.type, pad.output_shape, pad.params, pad.macs) == ("PadShortcut", (4, 32, 16, 16), 0, 0)
    # A block's ReLU module runs twice per block; each call is a row, its (zero) params counted once.
    assert sum(r.name == "layer1.0.relu" for r in s.layers) == 2
    # Every parameter is in exactly one row.
    assert sum(r.params for r in s.layers) == s.total_params
    assert s.input_shape == (4, 3, 32, 32)


def test_table_text():
    text = str(summary(models.resnet_cifar(8, shortcut="B"), (3, 32, 32)))
    lines = text.splitlines()
    assert lines[0] == "resnet8, input [1, 3, 32, 32]"
    assert lines[2].split() == ["Layer", "Type", "Output", "shape", "Params", "MACs"]
    assert any(line.split()[:2] == ["layer2.0.downsample.0", "Conv2d"] for line in lines)
    assert lines[-2].startswith("Total params: ")
    assert lines[-1].startswith("Total MACs per image: ")


def test_resnet18_imagenet_macs():
    # ResNet-18 at 224x224 (torchvision's 1.81 GFLOPs, i.e. multiply-adds):
    #   stem 7x7 conv 3->64 on 112x112:           64*3*49*12544        =   118,013,952
    #   layer1: 4 convs 64*64*9*56*56                                  =   462,422,016
    #   layers 2-4 each: opening conv 57,802,752 + 3 convs 115,605,504
    #                    + projection 6,422,528                        = 3 * 411,041,792
    #   fc 512*1000                                                    =       512,000
    #   total                                                            1,814,073,344
    model = models.resnet18(width=64)
    s = summary(model, (3, 224, 224))
    assert s.total_macs == 1_814_073_344
    assert s.total_params == 11_689_512


def test_summary_restores_modes_and_removes_hooks_and_keeps_state():
    model = models.resnet_cifar(8)
    model.train()
    model.layer2.eval()  # a mixed state must come back exactly
    before = {k: v.copy() for k, v in model.state_dict().items()}
    summary(model, (3, 16, 16))
    assert model.training and model.layer1.training and not model.layer2.training
    assert not model.layer2[0].bn1.training
    assert all(not m._forward_hooks for m in model.modules())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])  # no running-statistics update from the probe


def test_summary_removes_hooks_when_forward_fails():
    model = models.resnet_cifar(8)
    with pytest.raises(ValueError):
        summary(model, (1, 8, 8))  # wrong channel count
    assert all(not m._forward_hooks for m in model.modules())
    assert model.training


def test_a_batch_axis_in_input_shape_is_explained():
    with pytest.raises(ValueError) as info:
        summary(models.resnet_cifar(8), (2, 3, 8, 8))  # the batch axis given by mistake
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "probed the model with shape (1, 2, 3, 8, 8)" in notes
    assert "input_shape is ONE input without the batch axis" in notes


@pytest.mark.parametrize("bad", [(), (3, 0, 32), (3, 32.0, 32), "abc"])
def test_bad_input_shape(bad):
    with pytest.raises(ValueError, match="input_shape"):
        summary(models.resnet_cifar(8), bad)


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        summary(models.resnet_cifar(8), (3, 8, 8), batch_size=0)
    with pytest.raises(TypeError, match="Module"):
        summary(object(), (3, 8, 8))


def test_layer_macs_rules():
    conv = nn.Conv2d(8, 16, kernel_size=(3, 1), stride=2, padding=1, bias=True)
    assert layer_macs(conv, (5, 16, 4, 7)) == 16 * 8 * 3 * 1 * 4 * 7  # per image: batch 5 is ignored
    assert layer_macs(nn.Linear(12, 3), (5, 3)) == 36
    assert layer_macs(nn.Linear(12, 3), (5, 6, 3)) == 36 * 6  # applied to 6 rows per sample
    assert layer_macs(nn.BatchNorm2d(4), (1, 4, 8, 8)) == 0
    assert layer_macs(nn.ReLU(), (1, 4, 8, 8)) == 0


def test_probe_does_not_swallow_the_untrained_bn_warning():
    """The probe silences BN's "never trained" warning for itself only; the user still gets it."""
    model = models.resnet_cifar(8)
    summary(model, (3, 8, 8))
    model.eval()
    with pytest.warns(UserWarning, match="running statistics were never updated"):
        model(minires.Tensor(np.zeros((1, 3, 8, 8), dtype=np.float32)))
