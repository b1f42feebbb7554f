"""The trainer end to end on tiny synthetic data (CPU): learning, determinism,
exact resumption, interruption, metrics, gradient norms, checkpoint safety, recipes."""

from __future__ import annotations

import csv
import json
import math
import signal
import time
from types import SimpleNamespace

import numpy as np
import pytest
from data.synthetic_cifar import write_synthetic_cifar

from minires import backend, models
from minires.data import load_cifar10
from minires.diagnostics import read_jsonl
from minires.optim import SGD
from minires.tensor import Tensor
from minires.train import (
    Callback,
    ConfigError,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    build_model,
    metric_columns,
    recipes,
)
from minires.train import trainer as trainer_module
from minires.train.checkpoint import CheckpointError, load_checkpoint
from minires.train.interrupt import StoppedTogether

TINY = {"model": "resnet_cifar", "model_kwargs": {"depth": 8, "width": 4}, "device": "cpu"}


@pytest.fixture(scope="module")
def cifar_files(tmp_path_factory):
    """The data helper's synthetic CIFAR-10 files (random pixels), loaded the official way."""
    root = write_synthetic_cifar(tmp_path_factory.mktemp("cifar"), n_train_per_batch=40, n_test=50, seed=1)
    return load_cifar10(root, download=False, examples_per_batch=None, cache=False)


def learnable_data(n_train=160, n_test=80, seed=0):
    """Images whose class is visible: class c brightens a (c-dependent) channel and image half."""
    rng = np.random.default_rng(seed)

    def make(n):
        labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
        images = rng.integers(0, 120, size=(n, 3, 32, 32))
        for i, c in enumerate(labels):
            half = slice(0, 16) if c % 2 == 0 else slice(16, 32)
            images[i, c % 3, half, :] += 100 + 10 * int(c // 3)
        return images.astype(np.uint8), labels

    train_images, train_labels = make(n_train)
    test_images, test_labels = make(n_test)
    return SimpleNamespace(train_images=train_images, train_labels=train_labels,
                           test_images=test_images, test_labels=test_labels)


def tiny_config(**overrides) -> TrainConfig:
    base = dict(TINY, recipe="paper", epochs=3, batch_size=16, lr=0.05, limit_train=64, limit_test=32, seed=3)
    base.update(overrides)
    return TrainConfig(**base)


def params_of(trainer) -> dict:
    return {k: v.copy() for k, v in trainer.model.state_dict().items()}


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"{k} differs"


def drop_timing(rows):
    return [{k: v for k, v in r.items() if k not in ("images_per_sec", "epoch_seconds")} for r in rows]


def quiet_trainer(config, data, out, **kw):
    return Trainer(config, data, out, verbose=False, progress=False, **kw)


class InterruptAt(Callback):
    """Raise KeyboardInterrupt after global step ``step`` (like Ctrl-C between steps),
    or at the end of epoch ``epoch`` (after its checkpoint)."""

    def __init__(self, step=None, epoch=None):
        self.step, self.epoch = step, epoch

    def on_step_end(self, trainer):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt

    def on_epoch_end(self, trainer, row):
        if row["epoch"] == self.epoch:
            raise KeyboardInterrupt


# ---------------------------------------------------------------------------
# learning and determinism
# ---------------------------------------------------------------------------


def test_loss_decreases_and_beats_chance_on_learnable_data(tmp_path):
    data = learnable_data()
    cfg = tiny_config(recipe="fast", epochs=6, lr=0.1, limit_train=None, limit_test=None, augment=False)
    rows = quiet_trainer(cfg, data, tmp_path).fit()
    assert len(rows) == 6
    assert rows[-1]["train_loss"] < 0.6 * rows[0]["train_loss"], [r["train_loss"] for r in rows]
    # 10 balanced classes: chance is 10%.
    assert rows[-1]["test_acc"] >= 0.5, [r["test_acc"] for r in rows]


def test_same_seed_same_parameters_different_seed_different(tmp_path, cifar_files):
    a = quiet_trainer(tiny_config(epochs=1), cifar_files, tmp_path / "a")
    a.fit()
    b = quiet_trainer(tiny_config(epochs=1), cifar_files, tmp_path / "b")
    b.fit()
    assert_bitwise_equal(params_of(a), params_of(b))
    c = quiet_trainer(tiny_config(epochs=1, seed=4), cifar_files, tmp_path / "c")
    c.fit()
    assert any(not np.array_equal(x, y) for x, y in zip(params_of(a).values(), params_of(c).values()))


# ---------------------------------------------------------------------------
# exact resumption
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cifar_files):
    """A 3-epoch run (4 steps per epoch) with augmentation, never stopped: the reference."""
    trainer = quiet_trainer(tiny_config(), cifar_files, tmp_path_factory.mktemp("ref"))
    rows = trainer.fit()
    return SimpleNamespace(params=params_of(trainer), rows=rows, optimizer=trainer.optimizer.state_dict(),
                           lr=trainer.optimizer.param_groups[0]["lr"], steps=trainer.global_step)


@pytest.mark.parametrize(
    "stop, step, batch_in_epoch",
    [({"epoch": 1}, 4, None), ({"step": 4}, 4, 4), ({"step": 6}, 6, 2)],
    ids=["after-epoch-1", "before-eval-of-epoch-1", "mid-epoch-2"],
)
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, cifar_files, uninterrupted, stop, step,
                                                      batch_in_epoch):
    first = quiet_trainer(tiny_config(), cifar_files, tmp_path, callbacks=[InterruptAt(**stop)])
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    saved = load_checkpoint(tmp_path / "checkpoint.npz")
    assert saved["global_step"] == step
    if batch_in_epoch is None:
        assert saved["partial_epoch"] is None and saved["epoch"] == 1
    else:
        assert saved["partial_epoch"]["batch"] == batch_in_epoch

    second = quiet_trainer(tiny_config(), cifar_files, tmp_path, resume=True)
    assert second.global_step == step
    rows = second.fit()
    assert second.global_step == uninterrupted.steps
    assert_bitwise_equal(params_of(second), uninterrupted.params)
    for idx, state in uninterrupted.optimizer["state"].items():
        assert np.array_equal(second.optimizer.state_dict()["state"][idx]["momentum_buffer"], state["momentum_buffer"])
    assert second.optimizer.param_groups[0]["lr"] == uninterrupted.lr
    # Same metrics too, apart from wall-clock timing.
    assert drop_timing(rows) == drop_timing(uninterrupted.rows)


def test_interrupt_inside_a_step_keeps_last_epoch_checkpoint(tmp_path, cifar_files, uninterrupted, monkeypatch):
    """A KeyboardInterrupt in the middle of an update cannot be saved consistently:
    the checkpoint of the last completed epoch stays, and resuming from it is still exact."""
    trainer = quiet_trainer(tiny_config(), cifar_files, tmp_path)
    real_step = trainer.optimizer.step
    calls = {"n": 0}

    def step_then_interrupt_at_6():
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        real_step()

    monkeypatch.setattr(trainer.optimizer, "step", step_then_interrupt_at_6)
    with pytest.raises(KeyboardInterrupt) as stopped:
        trainer.fit()
    assert not isinstance(stopped.value, StoppedTogether)  # a torn step: other ranks may be anywhere
    saved = load_checkpoint(tmp_path / "checkpoint.npz")
    assert saved["epoch"] == 1 and saved["global_step"] == 4 and saved["partial_epoch"] is None

    resumed = quiet_trainer(tiny_config(), cifar_files, tmp_path, resume=True)
    resumed.fit()
    assert_bitwise_equal(params_of(resumed), uninterrupted.params)


def test_ctrl_c_finishes_the_step_then_saves(tmp_path, cifar_files, uninterrupted):
    """A real SIGINT arriving during a forward pass: the step completes, a checkpoint
    is written at that step, and the resumed run is exact."""
    trainer = quiet_trainer(tiny_config(), cifar_files, tmp_path)
    model = trainer.model
    original_forward = model.forward
    count = {"n": 0}

    def forward_with_sigint(x):
        count["n"] += model.training  # training forwards only, not evaluation
        if model.training and count["n"] == 7:
            signal.raise_signal(signal.SIGINT)  # handled by the trainer: sets a flag, returns
        return original_forward(x)

    model.forward = forward_with_sigint
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(StoppedTogether):  # on N ranks every one stops after this step: each may just exit
        trainer.fit()
    assert signal.getsignal(signal.SIGINT) is handler_before  # the trainer's handler is removed again
    saved = load_checkpoint(tmp_path / "checkpoint.npz")
    assert saved["global_step"] == 7  # the 7th step was completed, not torn

    resumed = quiet_trainer(tiny_config(), cifar_files, tmp_path, resume=True)
    resumed.fit()
    assert_bitwise_equal(params_of(resumed), uninterrupted.params)


def test_resuming_a_finished_run_changes_nothing(tmp_path, cifar_files):
    trainer = quiet_trainer(tiny_config(epochs=1), cifar_files, tmp_path)
    rows = trainer.fit()
    before = (tmp_path / "checkpoint.npz").read_bytes()
    again = quiet_trainer(tiny_config(epochs=1), cifar_files, tmp_path, resume=True)
    assert again.fit() == rows
    assert (tmp_path / "checkpoint.npz").read_bytes() == before


# ---------------------------------------------------------------------------
# files: metrics, grad norms, checkpoint contents
# ---------------------------------------------------------------------------


def test_metrics_files_have_expected_columns_and_rows(tmp_path, cifar_files):
    cfg = tiny_config(epochs=2, val_split=40, limit_train=48)
    trainer = quiet_trainer(cfg, cifar_files, tmp_path)
    rows = trainer.fit()
    columns = metric_columns(with_validation=True)
    assert columns[:5] == ["epoch", "step", "lr", "train_loss", "train_acc"]
    assert {"val_loss", "val_acc", "test_loss", "test_acc", "images_per_sec", "epoch_seconds"} <= set(columns)

    with open(tmp_path / "metrics.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == columns and len(table) == 3
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    parsed = [json.loads(line) for line in lines]
    assert [list(p) for p in parsed] == [columns, columns]
    assert parsed == rows
    for csv_row, row in zip(table[1:], rows):
        assert [float(x) for x in csv_row] == [float(row[c]) for c in columns]

    steps = trainer.steps_per_epoch
    assert steps == 48 // 16
    for i, row in enumerate(rows):
        assert row["epoch"] == i + 1 and row["step"] == (i + 1) * steps
        for key in ("train_acc", "val_acc", "test_acc"):
            assert 0.0 <= row[key] <= 1.0
        assert row["images_per_sec"] > 0 and row["epoch_seconds"] > 0
    # Test accuracy is measured on exactly limit_test images: a multiple of 1/32.
    assert all(abs(row["test_acc"] * 32 - round(row["test_acc"] * 32)) < 1e-9 for row in rows)
    # The paper recipe's lr at the last step of epoch 1 (step 2 of 6, before the 50% milestone).
    assert rows[0]["lr"] == pytest.approx(0.05)
    assert rows[1]["lr"] == pytest.approx(0.05 * 0.01)


def test_grad_norms_logged_every_n_steps(tmp_path, cifar_files, capsys):
    trainer = Trainer(tiny_config(epochs=1, grad_norms=3), cifar_files, tmp_path, verbose=True, progress=False)
    trainer.fit()
    records = read_jsonl(tmp_path / "grad_norms.jsonl")
    assert [r["step"] for r in records] == [3]  # 4 steps: only step 3
    weights = [name for name, p in trainer.model.named_parameters() if p.ndim >= 2]
    layers = records[0]["layers"]
    assert [layer["name"] for layer in layers] == weights
    for layer in layers:
        assert layer["grad_norm"] > 0 and layer["weight_norm"] > 0
        assert layer["ratio"] == pytest.approx(layer["grad_norm"] / layer["weight_norm"])
    out = capsys.readouterr().out
    assert "gradient norms at step 3" in out and weights[0] in out and "||grad W||" in out and "update/W" in out


def test_grad_norms_log_the_update_to_weight_ratio_of_the_step(tmp_path, cifar_files):
    """update_ratio = ||W after step 1 - W before|| / ||W before||, the step taken (momentum, weight decay)."""
    config = tiny_config(epochs=1, grad_norms=1)
    start = {name: p.data.copy() for name, p in build_model(config.resolved()).named_parameters()}

    class AfterStepOne(Callback):
        def on_step_end(self, trainer):
            if trainer.global_step == 1:
                self.weights = {name: p.data.copy() for name, p in trainer.model.named_parameters()}

    after = AfterStepOne()
    quiet_trainer(config, cifar_files, tmp_path, callbacks=[after]).fit()
    first = read_jsonl(tmp_path / "grad_norms.jsonl")[0]
    assert first["step"] == 1
    for layer in first["layers"]:
        w0 = start[layer["name"]]
        assert layer["weight_norm"] == pytest.approx(np.linalg.norm(w0), rel=1e-6)
        expected = np.linalg.norm(after.weights[layer["name"]] - w0) / np.linalg.norm(w0)
        assert layer["update_ratio"] == pytest.approx(expected, rel=1e-5), layer["name"]


def test_checkpoint_holds_the_whole_run(tmp_path, cifar_files):
    trainer = quiet_trainer(tiny_config(epochs=1), cifar_files, tmp_path)
    trainer.fit()
    saved = load_checkpoint(tmp_path / "checkpoint.npz")
    assert saved["epoch"] == 1 and saved["global_step"] == 4 and saved["finished"] is True
    assert saved["config"]["model"] == "resnet_cifar" and saved["config"]["epochs"] == 1
    assert_bitwise_equal(saved["model"], params_of(trainer))
    assert set(saved["optimizer"]) == {"state", "param_groups"}
    assert saved["scheduler"]["last_epoch"] == 4
    assert saved["rng"]["loader"]["epoch"] == 1 and saved["rng"]["loader"]["batch"] == 0
    assert saved["rng"]["init"]["bit_generator"] == "PCG64"
    assert saved["metrics"] == trainer.metrics
    assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 16


# ---------------------------------------------------------------------------
# refusing to do the wrong thing
# ---------------------------------------------------------------------------


def test_corrupt_checkpoint_is_refused_and_not_overwritten(tmp_path, cifar_files):
    quiet_trainer(tiny_config(epochs=1), cifar_files, tmp_path).fit()
    path = tmp_path / "checkpoint.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checkpoint.npz"):
        quiet_trainer(tiny_config(epochs=1), cifar_files, tmp_path, resume=True)
    with pytest.raises(ConfigError, match="--resume"):
        quiet_trainer(tiny_config(epochs=1), cifar_files, tmp_path)
    assert path.read_bytes() == bytes(data)


def test_mismatching_model_is_refused(tmp_path, cifar_files):
    quiet_trainer(tiny_config(epochs=1), cifar_files, tmp_path).fit()
    before = (tmp_path / "checkpoint.npz").read_bytes()
    other = tiny_config(epochs=1, model_kwargs={"depth": 14, "width": 4})
    with pytest.raises(CheckpointError, match="model_kwargs"):
        quiet_trainer(other, cifar_files, tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="seed"):
        quiet_trainer(tiny_config(epochs=1, seed=9), cifar_files, tmp_path, resume=True)
    assert (tmp_path / "checkpoint.npz").read_bytes() == before


def test_weights_of_another_architecture_are_refused(tmp_path, cifar_files):
    """Even with a matching config, weights that do not fit the model give a clear error."""
    from minires.train.checkpoint import save_checkpoint

    quiet_trainer(tiny_config(epochs=1), cifar_files, tmp_path).fit()
    saved = load_checkpoint(tmp_path / "checkpoint.npz")
    saved["model"] = models.create("resnet_cifar", depth=8, width=8).state_dict()
    save_checkpoint(tmp_path / "checkpoint.npz", saved)
    with pytest.raises(CheckpointError, match="size mismatch"):
        quiet_trainer(tiny_config(epochs=1), cifar_files, tmp_path, resume=True)


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.pop("rng"), "'rng'"),
    (lambda s: s.pop("config"), "'config'"),
    (lambda s: s.update(steps_per_epoch="4"), "'steps_per_epoch' (expected int)"),
    (lambda s: s["rng"].pop("init"), "'rng'['init']"),
    (lambda s: s.update(partial_epoch={"batch": 1}), "'partial_epoch'"),
])
def test_checkpoint_with_missing_entries_gives_a_clear_error(tmp_path, cifar_files, damage, message):
    """A valid file written by other code (right SHA-256, wrong contents) is refused by name, not by KeyError."""
    from minires.train.checkpoint import save_checkpoint

    quiet_trainer(tiny_config(epochs=1), cifar_files, tmp_path).fit()
    saved = load_checkpoint(tmp_path / "checkpoint.npz")
    damage(saved)
    save_checkpoint(tmp_path / "checkpoint.npz", saved)
    with pytest.raises(CheckpointError, match="lacks or has malformed entries") as info:
        quiet_trainer(tiny_config(epochs=1), cifar_files, tmp_path, resume=True)
    assert message in str(info.value)


def test_fresh_run_needs_overwrite_to_replace_a_run(tmp_path, cifar_files):
    quiet_trainer(tiny_config(epochs=1), cifar_files, tmp_path).fit()
    with pytest.raises(ConfigError, match="--overwrite"):
        quiet_trainer(tiny_config(epochs=1), cifar_files, tmp_path)
    trainer = quiet_trainer(tiny_config(epochs=1, seed=5), cifar_files, tmp_path, overwrite=True)
    assert not (tmp_path / "metrics.csv").exists()
    trainer.fit()
    assert load_checkpoint(tmp_path / "checkpoint.npz")["config"]["seed"] == 5


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model": "resnet21"}, "unknown model 'resnet21'"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"batch_size": 65}, "batch size 65 is larger than the training set"),
        ({"limit_train": 10**6}, "limit_train=1000000"),
        ({"recipe": "slow"}, "unknown recipe 'slow'"),
        ({"lr": -1.0}, "lr must be a positive finite number"),
    ],
)
def test_bad_configs_are_refused_before_any_work(tmp_path, cifar_files, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        quiet_trainer(tiny_config(**overrides), cifar_files, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


# ---------------------------------------------------------------------------
# recipes and schedules
# ---------------------------------------------------------------------------


def _lrs(scheduler, optimizer, steps):
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    return out


def _optimizer(lr=0.1):
    return SGD([Tensor(np.zeros(3, dtype=np.float32), requires_grad=True)], lr=lr, momentum=0.9)


def test_paper_schedule_divides_by_10_at_half_and_three_quarters():
    opt = _optimizer()
    lrs = _lrs(recipes.build_schedule(opt, recipes.get_recipe("paper"), 400, depth=20), opt, 400)
    assert lrs[0] == lrs[199] == pytest.approx(0.1)
    assert lrs[200] == lrs[299] == pytest.approx(0.01)
    assert lrs[300] == lrs[399] == pytest.approx(0.001)


def test_paper_schedule_warms_up_deep_networks():
    # Full length (64k iterations): 400 warm-up iterations at 0.01, as in the paper.
    opt = _optimizer()
    sched = recipes.build_schedule(opt, recipes.get_recipe("paper"), 64000, depth=110)
    lrs = _lrs(sched, opt, 402)
    assert lrs[0] == lrs[399] == pytest.approx(0.01)
    assert lrs[400] == lrs[401] == pytest.approx(0.1)
    # A short run keeps the proportion: 400 / 64000 of 1600 steps = 10 steps.
    opt = _optimizer()
    lrs = _lrs(recipes.build_schedule(opt, recipes.get_recipe("paper"), 1600, depth=110), opt, 1600)
    assert lrs[9] == pytest.approx(0.01) and lrs[10] == pytest.approx(0.1)
    assert lrs[800] == pytest.approx(0.01) and lrs[1200] == pytest.approx(0.001)


def test_fast_schedule_is_linear_warmup_then_cosine():
    total, lr = 200, 0.1
    opt = _optimizer(lr)
    lrs = _lrs(recipes.build_schedule(opt, recipes.get_recipe("fast"), total, depth=20), opt, total)
    warm = math.ceil(0.05 * total)
    for t in range(total):
        if t < warm:
            expected = lr * (0.1 + 0.9 * t / warm)
        else:
            expected = 0.5 * lr * (1 + math.cos(math.pi * (t - warm) / (total - warm)))
        assert lrs[t] == pytest.approx(expected, rel=1e-12, abs=1e-15), t
    assert max(lrs) == pytest.approx(lr)


def test_model_depth():
    assert recipes.model_depth(models.create("resnet20")) == 20
    assert recipes.model_depth(models.create("resnet_cifar", depth=14, width=4)) == 14
    net = models.create("resnet_cifar", depth=14, width=4)
    net.arch = None  # falls back to counting conv/linear layers: 1 + 12 + 1
    assert recipes.model_depth(net) == 14


# ---------------------------------------------------------------------------
# gradient-norm rows (minires.diagnostics.grad_norms)
# ---------------------------------------------------------------------------


def test_grad_norm_rows_match_numpy_norms(rng):
    from minires.diagnostics import format_table, grad_norm_rows
    from minires.nn import functional as F

    net = models.create("resnet_cifar", depth=8, width=4, seed=0)
    x = Tensor(rng.standard_normal((4, 3, 8, 8)).astype(np.float32))
    F.cross_entropy(net(x), Tensor(rng.integers(0, 10, 4))).backward()

    rows = grad_norm_rows(net)
    params = dict(net.named_parameters())
    assert [r.name for r in rows] == [n for n, p in params.items() if p.ndim >= 2]
    for r in rows:
        p = params[r.name]
        assert r.shape == p.shape
        assert r.grad_norm == pytest.approx(np.sqrt((p.grad.astype(np.float64) ** 2).sum()), rel=1e-5)
        assert r.weight_norm == pytest.approx(np.sqrt((p.data.astype(np.float64) ** 2).sum()), rel=1e-5)
        assert r.ratio == pytest.approx(r.grad_norm / r.weight_norm)
    everything = grad_norm_rows(net, weights_only=False)
    assert len(everything) == len(params)

    params["fc.weight"].grad = None  # a parameter that took no part in the loss
    row = {r.name: r for r in grad_norm_rows(net)}["fc.weight"]
    assert math.isnan(row.grad_norm) and math.isnan(row.ratio)
    table = format_table(grad_norm_rows(net), title="step 1").splitlines()
    assert table[0] == "step 1" and "||grad W||" in table[1] and len(table) == 2 + len(rows)


def test_print_table_prints_format_table_to_a_file_or_a_writer(rng):
    import io

    from minires.diagnostics import format_table, grad_norm_rows, print_table
    from minires.nn import functional as F

    net = models.create("resnet_cifar", depth=8, width=4, seed=0)
    x = Tensor(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    F.cross_entropy(net(x), Tensor(rng.integers(0, 10, 2))).backward()
    rows = grad_norm_rows(net)
    expected = format_table(rows, title="step 7")
    buffer = io.StringIO()
    print_table(rows, title="step 7", file=buffer)
    assert buffer.getvalue() == expected + "\n"
    written = []
    print_table(rows, title="step 7", write=written.append)
    assert written == [expected]


def test_grad_norms_option_prints_the_table_of_each_nth_step(tmp_path, cifar_files):
    import io

    stream = io.StringIO()
    trainer = Trainer(tiny_config(epochs=1, grad_norms=2), cifar_files, tmp_path, verbose=True, progress=False,
                      stream=stream)
    trainer.fit()
    text = stream.getvalue()
    # 64 images / batch 16 = 4 steps: tables at steps 2 and 4, one row per conv/linear weight.
    assert text.count("gradient norms at step") == 2 and "at step 2 " in text and "at step 4 " in text
    n_weights = sum(1 for _, p in trainer.model.named_parameters() if p.ndim >= 2)
    block = text.split("gradient norms at step 2 ")[1].splitlines()[1 : 2 + n_weights]
    assert block[0].startswith("layer") and all("e" in line for line in block[1:])


def test_cpu_runs_keep_freed_memory_for_reuse(tmp_path, cifar_files, monkeypatch):
    from minires.fast import allocator

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    quiet_trainer(tiny_config(epochs=1), cifar_files, tmp_path)
    assert calls == [1]


# ---------------------------------------------------------------------------
# divergence: a NaN/inf run stops, and the last good checkpoint survives
# ---------------------------------------------------------------------------


class PoisonAt(Callback):
    """After global step ``step``, write ``value`` into the first parameter (a blown-up
    update, made deterministic); with ``interrupt_at``, also act like Ctrl-C after that step.
    Records the checkpoint's bytes at each epoch end, to check later that they were kept."""

    def __init__(self, step, value=np.nan, interrupt_at=None):
        self.step, self.value, self.interrupt_at = step, value, interrupt_at
        self.saved_bytes = None

    def on_step_end(self, trainer):
        if trainer.global_step == self.step:
            next(iter(trainer.model.parameters())).data[...] = self.value
        if trainer.global_step == self.interrupt_at:
            raise KeyboardInterrupt

    def on_epoch_end(self, trainer, row):
        self.saved_bytes = trainer.checkpoint_path.read_bytes()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's overflow warnings, expected here
def test_a_learning_rate_far_too_high_stops_with_a_clear_error_and_saves_nothing(tmp_path, cifar_files):
    """The review's case (`--lr 1e30`): every epoch used to log "train loss nan" and save NaN weights."""
    trainer = quiet_trainer(tiny_config(lr=1e30, epochs=2), cifar_files, tmp_path)
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit()
    err = info.value
    assert isinstance(err, RuntimeError)
    # Step 1 starts from the finite initial weights; its update ruins them.
    assert (err.epoch, err.batch, err.step) == (1, 2, 2) and not math.isfinite(err.loss)
    message = str(err)
    assert f"training loss is {err.loss} at epoch 1, batch 2 (step 2)" in message
    assert "lower learning rate than lr=1e+30" in message and "no checkpoint has been written yet" in message
    assert trainer.global_step == 2  # stopped at once, not at the end of the epoch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no checkpoint, no NaN metrics


def _first_parameter_name(trainer):
    return next(iter(trainer.model.state_dict()))


@pytest.mark.parametrize("check_every", [1, 100], ids=["every-step-as-on-cpu", "grouped-as-on-gpu"])
def test_divergence_mid_run_keeps_the_last_good_checkpoint(tmp_path, cifar_files, check_every):
    """NaN weights after step 5 (epoch 2, batch 1): the loss of step 6 is NaN. Whether losses
    are read every step (CPU) or in groups (GPU), the error names step 6 and the checkpoint
    of epoch 1 is left byte for byte as it was."""
    poison = PoisonAt(step=5)
    trainer = quiet_trainer(tiny_config(epochs=3), cifar_files, tmp_path, callbacks=[poison])
    trainer.loss_watch.check_every = check_every
    with pytest.raises(TrainingDiverged, match=r"training loss is nan at epoch 2, batch 2 \(step 6\)") as info:
        trainer.fit()
    assert (info.value.epoch, info.value.batch, info.value.step) == (2, 2, 6)
    assert "keeps the state after step 4" in str(info.value)
    # Stopped at once when every step is checked; at the epoch's end (before evaluating) when grouped.
    assert trainer.global_step == (6 if check_every == 1 else 8)
    assert (tmp_path / "checkpoint.npz").read_bytes() == poison.saved_bytes
    saved = load_checkpoint(tmp_path / "checkpoint.npz")
    assert saved["global_step"] == 4 and all(np.isfinite(a).all() for a in saved["model"].values())
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 1
    # The run can be resumed from the good checkpoint.
    assert quiet_trainer(tiny_config(epochs=3), cifar_files, tmp_path, resume=True).global_step == 4


def test_an_interrupt_after_unchecked_divergence_saves_nothing(tmp_path, cifar_files):
    """Ctrl-C normally saves a checkpoint mid-epoch; with losses not yet read (the GPU case)
    the save reads them first and refuses."""
    poison = PoisonAt(step=5, interrupt_at=6)
    trainer = quiet_trainer(tiny_config(epochs=3), cifar_files, tmp_path, callbacks=[poison])
    trainer.loss_watch.check_every = 100
    try:
        with pytest.raises(TrainingDiverged, match=r"step 6\)"):
            trainer.fit()
    except KeyboardInterrupt:
        pytest.fail("the interrupt saved a checkpoint of the diverged weights instead of refusing")
    assert (tmp_path / "checkpoint.npz").read_bytes() == poison.saved_bytes


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # evaluating inf weights
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_not_saved_even_when_every_loss_was_finite(tmp_path, cifar_files, value):
    """Ruined by the LAST update of epoch 2 (step 8): no later loss shows it, but the
    checkpoint of epoch 2 would hold it, so the save is refused by name."""
    poison = PoisonAt(step=8, value=value)
    trainer = quiet_trainer(tiny_config(epochs=3), cifar_files, tmp_path, callbacks=[poison])
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit()
    err = info.value
    assert (err.epoch, err.batch, err.step, err.loss) == (2, 4, 8, None)
    assert f"after step 8 (epoch 2, batch 4) NaN or inf appeared in {_first_parameter_name(trainer)}" in str(err)
    assert "keeps the state after step 4" in str(err)
    assert (tmp_path / "checkpoint.npz").read_bytes() == poison.saved_bytes
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 1  # the ruined epoch's row is not logged


def test_epoch_time_is_read_after_the_device_finished(tmp_path, cifar_files, monkeypatch):
    """GPU kernels run asynchronously: each epoch's time is final only after a device synchronisation."""
    events = []
    real_counter = time.perf_counter

    def counter():
        events.append("clock")
        return real_counter()

    monkeypatch.setattr(backend.Device, "synchronize", lambda self: events.append("sync"))
    monkeypatch.setattr(trainer_module.time, "perf_counter", counter)
    rows = quiet_trainer(tiny_config(epochs=2), cifar_files, tmp_path).fit()
    assert events.count("sync") == 2, events
    # Within each epoch, the synchronisation comes before the clock that fixes its time.
    for i in (i for i, e in enumerate(events) if e == "sync"):
        assert events[i + 1] == "clock", events
    assert all(r["epoch_seconds"] > 0 for r in rows)
