"""Learning-rate schedules: closed forms, the paper's recipes, torch parity, saving and loading."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minires.nn import Parameter
from minires.optim import SGD
from minires.optim import lr_scheduler as L


def _optimizer(lrs=(0.1,)):
    groups = [{"params": [Parameter(np.zeros(2))], "lr": lr} for lr in lrs]
    return SGD(groups, lr=lrs[0], momentum=0.9)


def _lrs(scheduler, steps):
    """The lr of every group at steps 0..steps-1 (what each optimiser step would use)."""
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in scheduler.optimizer.param_groups])
        assert scheduler.get_last_lr() == out[-1]
        scheduler.step()
    return np.array(out)


def test_multistep_is_the_paper_schedule():
    # lr 0.1, /10 at 32k and 48k iterations, stepped per iteration: the formula is base * 0.1 ** (#milestones <= t).
    opt = _optimizer()
    sched = L.MultiStepLR(opt, milestones=[48000, 32000], gamma=0.1)  # order does not matter
    for t, expected in [(0, 0.1), (31999, 0.1), (32000, 0.01), (47999, 0.01), (48000, 0.001), (63999, 0.001)]:
        sched.last_epoch = t - 1
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12), t


def test_resnet110_warmup_recipe():
    # Paper: lr 0.01 until training error < 80% (about 400 iterations), then 0.1, then the /10 steps.
    opt = _optimizer()
    sched = L.ChainedScheduler([L.ConstantLR(opt, factor=0.1, total_iters=400), L.MultiStepLR(opt, [32000, 48000])])
    lrs = _lrs(sched, 401)[:, 0]
    np.testing.assert_allclose(lrs[:400], 0.01, rtol=1e-12)
    assert lrs[400] == pytest.approx(0.1, rel=1e-12)
    sched.last_epoch = 31999
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01, rel=1e-12)


def test_closed_forms():
    opt = _optimizer((0.2, 0.05))
    lrs = _lrs(L.CosineAnnealingLR(opt, T_max=10, eta_min=0.001), 11)
    for t in range(11):
        for g, base in enumerate((0.2, 0.05)):
            assert lrs[t, g] == pytest.approx(0.001 + (base - 0.001) * (1 + math.cos(math.pi * t / 10)) / 2, rel=1e-12)
    assert lrs[10, 0] == pytest.approx(0.001)
    opt = _optimizer((0.2,))
    lrs = _lrs(L.LinearLR(opt, start_factor=0.25, total_iters=4), 7)[:, 0]
    np.testing.assert_allclose(lrs, 0.2 * np.array([0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0, 1.0]), rtol=1e-12)
    opt = _optimizer((0.2,))
    lrs = _lrs(L.StepLR(opt, step_size=3, gamma=0.5), 7)[:, 0]
    np.testing.assert_allclose(lrs, 0.2 * np.array([1, 1, 1, 0.5, 0.5, 0.5, 0.25]), rtol=1e-12)


def test_sequential_hands_over_with_a_fresh_clock():
    opt = _optimizer((1.0,))
    sched = L.SequentialLR(
        opt, [L.LinearLR(opt, start_factor=0.5, total_iters=2), L.CosineAnnealingLR(opt, T_max=4)], milestones=[3]
    )
    lrs = _lrs(sched, 8)[:, 0]
    cosine = [(1 + math.cos(math.pi * t / 4)) / 2 for t in range(5)]
    np.testing.assert_allclose(lrs, [0.5, 0.75, 1.0] + cosine, rtol=1e-12)


TORCH_CASES = {
    "multistep": lambda M, o: M.MultiStepLR(o, milestones=[3, 7, 7, 12], gamma=0.3),
    "step": lambda M, o: M.StepLR(o, step_size=4, gamma=0.5),
    "constant": lambda M, o: M.ConstantLR(o, factor=0.1, total_iters=6),
    "linear": lambda M, o: M.LinearLR(o, start_factor=0.1, end_factor=0.9, total_iters=9),
    "cosine": lambda M, o: M.CosineAnnealingLR(o, T_max=15, eta_min=1e-3),
    "cosine_past_T_max": lambda M, o: M.CosineAnnealingLR(o, T_max=7),
    "sequential": lambda M, o: M.SequentialLR(
        o, [M.LinearLR(o, start_factor=0.01, total_iters=5), M.CosineAnnealingLR(o, T_max=20)], milestones=[5]
    ),
    "sequential3": lambda M, o: M.SequentialLR(
        o,
        [M.ConstantLR(o, factor=0.1, total_iters=10), M.MultiStepLR(o, [4, 8]), M.CosineAnnealingLR(o, T_max=9)],
        milestones=[4, 14],
    ),
    "chained": lambda M, o: M.ChainedScheduler([M.ConstantLR(o, factor=0.1, total_iters=4), M.MultiStepLR(o, [10, 20])]),
    "chained_cosine": lambda M, o: M.ChainedScheduler(
        [M.LinearLR(o, start_factor=0.2, total_iters=5), M.CosineAnnealingLR(o, T_max=25)]
    ),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_sequences_match_torch(case):
    torch = pytest.importorskip("torch", reason="PyTorch is optional; it is only the reference here")
    build = TORCH_CASES[case]
    lrs = (0.1, 0.03)
    ours = build(L, _optimizer(lrs))
    t_params = [torch.nn.Parameter(torch.zeros(2)) for _ in lrs]
    t_opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(t_params, lrs)], lr=lrs[0], momentum=0.9)
    theirs = build(torch.optim.lr_scheduler, t_opt)
    expected = []
    for _ in range(30):
        expected.append([g["lr"] for g in t_opt.param_groups])
        t_opt.step()  # torch warns if a scheduler steps before its optimiser
        theirs.step()
    # Torch's recursive formulas accumulate rounding; the closed forms are exact.
    np.testing.assert_allclose(_lrs(ours, 30), np.array(expected), rtol=1e-12, atol=0)


@pytest.mark.parametrize("case", ["multistep", "cosine", "sequential3", "chained"])
def test_state_dict_round_trip(case):
    build = TORCH_CASES[case]
    opt = _optimizer((0.1, 0.03))
    sched = build(L, opt)
    _lrs(sched, 9)
    saved_sched, saved_opt = sched.state_dict(), opt.state_dict()
    assert "optimizer" not in saved_sched
    reference = _lrs(sched, 10)

    fresh_opt = _optimizer((0.5, 0.5))  # different lrs: everything must come from the state
    fresh = build(L, fresh_opt)
    fresh_opt.load_state_dict(saved_opt)
    fresh.load_state_dict(saved_sched)
    assert fresh.last_epoch == 9
    np.testing.assert_array_equal(_lrs(fresh, 10), reference)


def test_load_sets_the_lr_whatever_the_order():
    opt = _optimizer()
    sched = L.MultiStepLR(opt, [2])
    _lrs(sched, 4)
    saved = sched.state_dict()
    fresh_opt = _optimizer()
    fresh = L.MultiStepLR(fresh_opt, [2])
    fresh.load_state_dict(saved)  # without loading the optimiser state at all
    assert fresh_opt.param_groups[0]["lr"] == pytest.approx(0.01)


def test_load_rejects_mismatched_states():
    opt = _optimizer()
    saved = L.MultiStepLR(opt, [2]).state_dict()
    with pytest.raises(ValueError, match="another kind of scheduler"):
        L.CosineAnnealingLR(_optimizer(), T_max=5).load_state_dict(saved)
    with pytest.raises(ValueError, match="1 base learning rates but the optimizer has 2 groups"):
        L.MultiStepLR(_optimizer((0.1, 0.2)), [2]).load_state_dict(saved)


def test_independent_schedulers_share_the_initial_lr():
    opt = _optimizer((0.4,))
    first = L.ConstantLR(opt, factor=0.5, total_iters=2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)
    second = L.MultiStepLR(opt, [1])
    assert first.base_lrs == second.base_lrs == [0.4]


def test_constructor_errors():
    opt = _optimizer()
    with pytest.raises(TypeError, match="not a minires Optimizer"):
        L.MultiStepLR(object(), [1])
    with pytest.raises(ValueError, match="each milestone must be a non-negative integer, got 1.5"):
        L.MultiStepLR(opt, [1.5])
    with pytest.raises(ValueError, match="T_max must be a positive integer, got 0"):
        L.CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(ValueError, match=r"factor must be in \[0, 1\], got 2"):
        L.ConstantLR(opt, factor=2)
    with pytest.raises(ValueError, match=r"start_factor must be in \(0, 1\], got 0"):
        L.LinearLR(opt, start_factor=0)
    with pytest.raises(ValueError, match="one milestone fewer than schedulers"):
        L.SequentialLR(opt, [L.ConstantLR(opt)], milestones=[3])
    with pytest.raises(ValueError, match="different optimizer"):
        L.ChainedScheduler([L.ConstantLR(opt), L.ConstantLR(_optimizer())])
    with pytest.raises(KeyError, match="initial_lr"):
        L.MultiStepLR(_optimizer(), [2], last_epoch=5)
