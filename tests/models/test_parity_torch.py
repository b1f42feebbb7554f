"""Parity with PyTorch: same weights by name, same logits and parameter gradients (float64).

The reference networks are written here in plain ``torch.nn`` (torchvision is
not a dependency), following torchvision's ResNet layout and names. Loading
minires's ``state_dict`` into them with ``strict=True`` checks that every key
matches; comparing the outputs and every gradient checks the computation.
"""

from __future__ import annotations

import numpy as np
import pytest

import minires
from minires import models, nn
from minires.models import BasicBlock, Bottleneck, PlainBlock, PlainBottleneck, PlainNet, ResNet

torch = pytest.importorskip("torch", reason="PyTorch parity tests need torch")
tnn = torch.nn


# ---------------------------------------------------------------------------
# Reference modules in torch
# ---------------------------------------------------------------------------


class TorchPadShortcut(tnn.Module):
    """Option A: subsample, then zero channels split evenly between both ends."""

    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.stride = stride
        self.before = (out_planes - in_planes) // 2
        self.after = out_planes - in_planes - self.before

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        # F.pad's pairs run from the last axis backwards: (W, H, C).
        return tnn.functional.pad(x, (0, 0, 0, 0, self.before, self.after))


def torch_shortcut(option, in_planes, out_planes, stride):
    same = stride == 1 and in_planes == out_planes
    if option == "C" or (option == "B" and not same):
        return tnn.Sequential(
            tnn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), tnn.BatchNorm2d(out_planes)
        )
    if same:
        return None  # torchvision's convention for the identity
    return TorchPadShortcut(in_planes, out_planes, stride)


class TorchBasic(tnn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1, shortcut=None):
        super().__init__()
        self.conv1 = tnn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU()
        self.residual = shortcut is not None
        self.downsample = torch_shortcut(shortcut, in_planes, planes, stride) if self.residual else None

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class TorchBottleneck(tnn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1, shortcut=None, stride_in_1x1=False):
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = tnn.Conv2d(in_planes, planes, 1, stride=s1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride=s3, padding=1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes * 4)
        self.relu = tnn.ReLU()
        self.residual = shortcut is not None
        self.downsample = torch_shortcut(shortcut, in_planes, planes * 4, stride) if self.residual else None

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class TorchNet(tnn.Module):
    """torchvision's ResNet skeleton; ``shortcut=None`` builds the plain twin."""

    def __init__(self, block, layers, num_classes, width, stem, shortcut=None, **block_kwargs):
        super().__init__()
        if stem == "imagenet":
            self.conv1 = tnn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = tnn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = tnn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
            self.maxpool = None
        self.bn1 = tnn.BatchNorm2d(width)
        self.relu = tnn.ReLU()
        planes_in = width
        for i, count in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(count):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(planes_in, planes, stride, shortcut, **block_kwargs))
                planes_in = planes * block.expansion
            setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.avgpool = tnn.AdaptiveAvgPool2d(1)
        self.fc = tnn.Linear(planes_in, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------------------
# The pairs under test
# ---------------------------------------------------------------------------


def _pair(case):
    """(minires model, torch model, input spatial size) for a named case; both float64."""
    if case == "cifar-A":
        mine = models.resnet_cifar(14, shortcut="A", width=4, num_classes=5, seed=0)
        ref = TorchNet(TorchBasic, [2, 2, 2], 5, 4, "cifar", shortcut="A")
        size = 8
    elif case == "cifar-B":
        mine = models.resnet_cifar(14, shortcut="B", width=4, num_classes=5, seed=0)
        ref = TorchNet(TorchBasic, [2, 2, 2], 5, 4, "cifar", shortcut="B")
        size = 8
    elif case == "cifar-C":
        mine = models.resnet_cifar(8, shortcut="C", width=4, num_classes=5, seed=0)
        ref = TorchNet(TorchBasic, [1, 1, 1], 5, 4, "cifar", shortcut="C")
        size = 8
    elif case == "plain":
        mine = models.plain_cifar(14, width=4, num_classes=5, seed=0)
        ref = TorchNet(TorchBasic, [2, 2, 2], 5, 4, "cifar", shortcut=None)
        size = 8
    elif case == "bottleneck":
        # ImageNet stem (7x7/2 conv, max pool) + two bottleneck stages of two blocks.
        mine = ResNet(Bottleneck, [2, 2], num_classes=5, width=4, stem="imagenet", seed=0, shortcut="B")
        ref = TorchNet(TorchBottleneck, [2, 2], 5, 4, "imagenet", shortcut="B")
        size = 16
    elif case == "bottleneck-v1-A":
        mine = ResNet(Bottleneck, [1, 2], num_classes=5, width=4, stem="cifar", seed=0, shortcut="A",
                      stride_in_1x1=True)
        ref = TorchNet(TorchBottleneck, [1, 2], 5, 4, "cifar", shortcut="A", stride_in_1x1=True)
        size = 6
    elif case == "plain-bottleneck":
        mine = PlainNet(PlainBottleneck, [1, 1], num_classes=5, width=4, stem="cifar", seed=0)
        ref = TorchNet(TorchBottleneck, [1, 1], 5, 4, "cifar", shortcut=None)
        size = 6
    else:  # pragma: no cover
        raise KeyError(case)
    mine.double()
    _randomise_bn(mine, seed=1)
    ref.double()
    # strict: every key on both sides must match, by name, with no renaming.
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in mine.state_dict().items()}, strict=True)
    return mine, ref, size


def _randomise_bn(model, seed):
    """Non-trivial BN affine terms and running statistics, so eval mode is really tested."""
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.weight.shape)
            m.bias.data[...] = rng.normal(0.0, 0.2, m.bias.shape)
            m.running_mean[...] = rng.normal(0.0, 0.2, m.running_mean.shape)
            m.running_var[...] = rng.uniform(0.5, 2.0, m.running_var.shape)
            m.num_batches_tracked[...] = 3


CASES = ["cifar-A", "cifar-B", "cifar-C", "plain", "bottleneck", "bottleneck-v1-A", "plain-bottleneck"]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", CASES)
def test_logits_and_gradients_match_torch(case, mode):
    mine, ref, size = _pair(case)
    mine.train(mode == "train")
    ref.train(mode == "train")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 3, size, size))
    upstream = rng.standard_normal((3, 5))  # random, so every logit's gradient path counts

    y_mine = mine(minires.Tensor(x))
    y_ref = ref(torch.from_numpy(x))
    np.testing.assert_allclose(y_mine.data, y_ref.detach().numpy(), rtol=1e-10, atol=1e-12)

    y_mine.backward(upstream)
    y_ref.backward(torch.from_numpy(upstream))
    ref_params = dict(ref.named_parameters())
    mine_params = dict(mine.named_parameters())
    assert mine_params.keys() == ref_params.keys()
    for name, p in mine_params.items():
        assert p.grad is not None, name
        np.testing.assert_allclose(p.grad, ref_params[name].grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=name)

    # Train mode updates the running statistics; both must agree (eval: unchanged).
    ref_state = ref.state_dict()
    for name, value in mine.state_dict().items():
        np.testing.assert_allclose(value, ref_state[name].numpy(), rtol=1e-12, atol=1e-14, err_msg=name)


def test_option_a_block_alone_matches_torch():
    """The zero-padding shortcut's placement of channels is what torch reproductions use."""
    mine = BasicBlock(4, 8, stride=2, shortcut="A").double()
    ref = TorchBasic(4, 8, 2, "A").double()
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in mine.state_dict().items()}, strict=True)
    x = np.random.default_rng(3).standard_normal((2, 4, 5, 5))
    np.testing.assert_allclose(mine(minires.Tensor(x)).data, ref(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-10, atol=1e-12)
    # And the plain block against the shortcut-free torch block.
    plain, ref_plain = PlainBlock(4, 8, 2).double(), TorchBasic(4, 8, 2, None).double()
    ref_plain.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in plain.state_dict().items()}, strict=True)
    np.testing.assert_allclose(plain(minires.Tensor(x)).data, ref_plain(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-10, atol=1e-12)


def test_torch_weights_load_into_minires():
    """The other direction: a torch state dict loads into minires by name."""
    ref = TorchNet(TorchBasic, [1, 1, 1], 10, 16, "cifar", shortcut="B").double()
    gen = torch.Generator().manual_seed(5)
    for m in ref.modules():
        if isinstance(m, tnn.BatchNorm2d):  # trained-looking statistics, so eval mode uses real values
            m.running_mean.normal_(0.0, 0.2, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.num_batches_tracked.fill_(7)
    mine = models.resnet_cifar(8, shortcut="B").double()
    mine.load_state_dict(ref.state_dict(), strict=True)
    mine.eval()
    ref.eval()
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8))
    np.testing.assert_allclose(mine(minires.Tensor(x)).data, ref(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(mine.layer3[0].downsample[1].running_var, ref.layer3[0].downsample[1].running_var)
