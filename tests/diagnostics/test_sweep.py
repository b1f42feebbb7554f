"""Gradient spread across depth at initialisation: plain versus residual, with and without BN.

The margins below were chosen after MEASURING (CPU, batch 8 of 16x16 Gaussian
images, width 16, seeds 0-2):

====================  ==============  ==================  ==================
with batch norm       max/min, d=20   max/min, d=56       first/last, d=56
====================  ==============  ==================  ==================
plain                 9.4             4.2e3 - 6.8e3       4.2e3 - 6.8e3
residual              4.2             14 - 16             14 - 16
====================  ==============  ==================  ==================

Without BN (seed 0): plain spread 6-10 at depths 20-110 (He fan-out init keeps
the backward signal's variance), residual logits' std 3.7 at depth 20 and
3.9e3 at 56 (each block adds a branch about as large as its input, so the
forward signal roughly doubles in variance per block; 236-3.9e3 over seeds 0-2).

Mechanism, with BN: the gradient at an early weight of a plain net is a product
of one backward map per later conv-BN-ReLU layer, and with BN in training mode
each of those maps has a gain slightly above one (normalising by the batch
statistics and the ReLU that follows; Yang et al., ICLR 2019), here about
1.15-1.17 per layer, so the EARLY layers' gradients grow geometrically with depth.
In the residual net the identity shortcut carries the gradient around every
branch: the blocks' contributions add up instead of multiplying, and the spread
grows only slowly. The assertions use the direction (early > late for plain+BN)
and factors at least 6x away from every measured value.
"""

from __future__ import annotations

import numpy as np
import pytest

from minires import nn
from minires.diagnostics.sweep import build_cifar_model, depth_sweep, fixed_batch, measure_at_init, without_batch_norm


@pytest.fixture(scope="module")
def bn_sweep():
    return depth_sweep([20, 56], batch_norm=True, batch_size=8, image_size=16, seed=0)


def test_with_bn_residual_spread_stays_small_while_plain56_spreads_over_orders_of_magnitude(bn_sweep):
    plain56, res56 = bn_sweep.row("plain", 56), bn_sweep.row("residual", 56)
    assert res56.spread < 100  # measured 14-16
    assert plain56.spread > 500  # measured 4.2e3-6.8e3
    assert plain56.ratio > 500  # the EARLY layers get the large gradients with BN
    assert plain56.spread > 30 * res56.spread
    # Deeper plain stacks spread more: a product of one gain per layer.
    assert plain56.spread > 50 * bn_sweep.row("plain", 20).spread  # measured 9.4 -> 4.2e3


@pytest.mark.parametrize("seed", [1, 2])
def test_plain_vs_residual_spread_holds_for_other_seeds(seed):
    result = depth_sweep([56], batch_norm=True, batch_size=8, image_size=16, seed=seed)
    assert result.row("residual", 56).spread < 100
    assert result.row("plain", 56).spread > 500


def test_without_bn_plain_gradients_stay_put_and_residual_forward_blows_up():
    result = depth_sweep([20, 56], batch_norm=False, batch_size=8, image_size=16, seed=0)
    assert result.row("plain", 56).spread < 100  # measured 8.5: He init preserves the backward signal
    std20, std56 = result.row("residual", 20).logit_std, result.row("residual", 56).logit_std
    assert std56 > 100 * std20  # measured 3.7 -> 3.9e3
    assert result.row("plain", 56).logit_std < 10  # the plain net does not explode


def test_without_batch_norm_replaces_every_bn_and_keeps_the_weights():
    with_bn = build_cifar_model("residual", 20, batch_norm=True, seed=4)
    no_bn = build_cifar_model("residual", 20, batch_norm=False, seed=4)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in no_bn.modules())
    assert no_bn.arch == "resnet20-nobn"
    a, b = with_bn.state_dict(), no_bn.state_dict()
    assert set(b) == {k for k in a if ".bn" not in k and not k.startswith("bn")}
    for key in b:
        assert np.array_equal(a[key], b[key]), key
    assert without_batch_norm(no_bn) is no_bn


def test_plain_and_residual_twins_start_from_the_same_convolutions():
    plain = build_cifar_model("plain", 20, seed=7)
    res = build_cifar_model("residual", 20, seed=7)
    a, b = plain.state_dict(), res.state_dict()
    assert a.keys() == b.keys()  # option-A shortcuts have no parameters
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_sweep_uses_one_fixed_batch_and_reports_consistent_rows():
    x, y = fixed_batch(4, 8, seed=3)
    x2, y2 = fixed_batch(4, 8, seed=3)
    assert np.array_equal(x.data, x2.data) and np.array_equal(y.data, y2.data)
    assert x.shape == (4, 3, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    result = depth_sweep([8, 14], kinds=("residual", "plain"), images=x, labels=y, seed=3)
    assert [(r.depth, r.kind) for r in result.rows] == [(8, "residual"), (8, "plain"), (14, "residual"),
                                                         (14, "plain")]
    model = build_cifar_model("plain", 14, seed=3)
    norms, loss, _ = measure_at_init(model, x, y)
    row = result.row("plain", 14)
    assert row.first == norms[0] and row.last == norms[-1] and row.loss == loss
    assert row.ratio == pytest.approx(norms[0] / norms[-1]) and row.spread == pytest.approx(norms.max() / norms.min())
    assert len(norms) == 13  # 6n + 1 convs for depth 6n + 2 (the fc is left out)
    table = result.format_table().splitlines()
    assert len(table) == 2 + 4 and table[2].split()[0] == "resnet8"


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="kind"):
        depth_sweep([20], kinds=("dense",))
    with pytest.raises(ValueError, match="depth"):
        depth_sweep([21], batch_size=2, image_size=4)
    with pytest.raises(ValueError, match="depths"):
        depth_sweep([])
    with pytest.raises(ValueError, match="batch_size"):
        fixed_batch(1)
    with pytest.raises(KeyError, match="no plain row"):
        depth_sweep([8], kinds=("residual",), batch_size=2, image_size=4).row("plain", 8)
