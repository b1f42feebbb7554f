"""GradientMonitor: the right rows with the right names, values that match independent
measurements, hooks that leave training bit-for-bit unchanged and go away on detach,
and a history that survives a JSON round trip."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from minires import models, nn
from minires.diagnostics.monitor import GradientHistory, GradientMonitor, load_history, save_history
from minires.nn import functional as F
from minires.optim import SGD
from minires.tensor import Tensor

# ResNet-8 (n = 1): a stem conv, one basic block per stage, the fc layer.
RESNET8_LAYERS = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2",
                  "layer3.0.conv1", "layer3.0.conv2", "fc"]
RESNET8_BLOCKS = ["layer1.0", "layer2.0", "layer3.0"]


def tiny_model(kind="resnet", seed=0):
    return (models.resnet_cifar if kind == "resnet" else models.plain_cifar)(8, width=4, seed=seed)


def batches(n, batch=6, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return [(Tensor(rng.standard_normal((batch, 3, size, size)).astype(np.float32)),
             Tensor(rng.integers(0, 10, batch).astype(np.int64))) for _ in range(n)]


def train(model, data, monitor=None, lr=0.1):
    opt = SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    model.train()
    for step, (x, y) in enumerate(data, start=1):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if monitor is not None:
            monitor.record(step, loss=float(loss.item()))
        opt.step()
    return model


def capture_block_tensors(model):
    """Our own tap: retain the gradient of every block's input and output tensor."""
    seen = {}

    def tap(block, name, tensor):
        if name in ("input", "output") and tensor.requires_grad:
            tensor.retain_grad()
            seen[(block, name)] = tensor

    handles = [b.add_tap(tap) for _, b in model.blocks()]
    return seen, handles


def test_one_entry_per_layer_and_block_per_step_with_module_names():
    model = tiny_model()
    monitor = GradientMonitor(model)
    train(model, batches(3), monitor)
    h = monitor.history
    assert h.layers == RESNET8_LAYERS
    assert h.layer_types == ["Conv2d"] * 7 + ["Linear"]
    assert h.layer_shapes[0] == (4, 3, 3, 3) and h.layer_shapes[-1] == (10, 16)
    assert h.blocks == RESNET8_BLOCKS
    assert h.steps == [1, 2, 3] and len(h.losses) == 3
    for key in ("layer", "weight", "block_in", "block_out"):
        values = h.grad_array(key)
        assert values.shape == (3, len(h.layers) if key in ("layer", "weight") else len(h.blocks))
        assert np.all(np.isfinite(values)) and np.all(values > 0), key


def test_layer_values_match_the_weights_and_block_values_match_retained_gradients():
    model = tiny_model("plain")
    monitor = GradientMonitor(model)
    seen, handles = capture_block_tensors(model)
    (x, y), = batches(1, seed=3)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    monitor.record(7)
    h = monitor.history
    modules = dict(model.named_modules())
    for i, name in enumerate(h.layers):
        w = modules[name].weight
        assert h.layer_grad[0][i] == pytest.approx(float(np.linalg.norm(w.grad.astype(np.float64))), rel=1e-5)
        assert h.layer_weight[0][i] == pytest.approx(float(np.linalg.norm(w.data.astype(np.float64))), rel=1e-5)
    for j, (name, block) in enumerate(model.blocks()):
        g_in = seen[(block, "input")].grad.astype(np.float64)
        g_out = seen[(block, "output")].grad.astype(np.float64)
        assert h.block_grad_in[0][j] == pytest.approx(float(np.linalg.norm(g_in)), rel=1e-5)
        assert h.block_grad_out[0][j] == pytest.approx(float(np.linalg.norm(g_out)), rel=1e-5)
    # Block k's output IS block k+1's input: one tensor, one gradient.
    assert h.block_grad_out[0][:-1] == h.block_grad_in[0][1:]
    for handle in handles:
        handle.remove()


def test_include_bn_adds_the_batch_norm_layers_in_depth_order():
    monitor = GradientMonitor(tiny_model(), include_bn=True)
    layers = monitor.history.layers
    assert layers[:4] == ["conv1", "bn1", "layer1.0.conv1", "layer1.0.bn1"]
    assert layers[-1] == "fc" and len(layers) == 8 + 7  # a BN after every conv
    monitor.detach()


def test_monitoring_does_not_change_training_bitwise():
    data = batches(4, seed=5)
    plain_run = train(tiny_model(seed=2), data)
    model = tiny_model(seed=2)
    monitor = GradientMonitor(model)
    train(model, data, monitor)
    monitor.detach()
    a, b = plain_run.state_dict(), model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert len(monitor.history) == 4


def test_detach_removes_taps_and_pending_tensor_hooks():
    model = tiny_model()
    monitor = GradientMonitor(model)
    seen, handles = capture_block_tensors(model)
    (x, y), = batches(1)
    loss = F.cross_entropy(model(x), y)
    hooked = [t for t in seen.values()]
    assert all(len(t._hooks) >= 1 for t in hooked)  # the monitor's hooks are on the live tensors
    monitor.detach()  # between forward and backward: the pending tensor hooks must go too
    assert all(t._hooks == [] for t in hooked)
    assert all(len(b._taps) == 1 for _, b in model.blocks())  # only our own capture tap is left
    loss.backward()
    with pytest.raises(RuntimeError, match="detached"):
        monitor.record(1)
    assert len(monitor.history) == 0


def test_disabled_monitor_hooks_nothing_and_records_blocks_as_nan():
    model = tiny_model()
    monitor = GradientMonitor(model, enabled=False)
    seen, _ = capture_block_tensors(model)
    (x, y), = batches(1)
    F.cross_entropy(model(x), y).backward()
    assert all(t._hooks == [] for t in seen.values())
    monitor.record(1)
    h = monitor.history
    assert all(math.isnan(v) for v in h.block_grad_in[0] + h.block_grad_out[0])
    assert all(v > 0 for v in h.layer_grad[0])  # layer rows come from .grad, not from hooks


def test_no_hooks_under_no_grad():
    from minires import no_grad

    model = tiny_model()
    monitor = GradientMonitor(model)
    (x, _), = batches(1)
    with no_grad():
        model(x)  # must not try to hook tensors that will never get a gradient
    assert monitor._tensor_hooks == []
    monitor.detach()


def test_history_json_round_trip_is_exact_and_atomic(tmp_path):
    model = tiny_model()
    monitor = GradientMonitor(model)
    train(model, batches(2), monitor)
    h = monitor.history
    h.block_grad_in[1][0] = math.nan  # a missing value must survive as nan
    h.meta["note"] = "x"
    path = tmp_path / "g.json"
    save_history(h, path)
    assert [p.name for p in tmp_path.iterdir()] == ["g.json"]  # no temp file left behind
    json.loads(path.read_text())  # strict JSON (no NaN tokens)
    back = load_history(path)
    assert back.layers == h.layers and back.blocks == h.blocks and back.steps == h.steps
    assert back.layer_shapes == h.layer_shapes and back.meta == h.meta and back.losses == h.losses
    np.testing.assert_array_equal(back.grad_array("layer"), h.grad_array("layer"))
    np.testing.assert_array_equal(back.grad_array("block_in"), h.grad_array("block_in"))
    assert math.isnan(back.block_grad_in[1][0])


def test_load_history_names_the_bad_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_history(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="other.json.*not a gradient history"):
        load_history(other)
    h = GradientHistory("m", ["a"], ["Conv2d"], [(1, 1)], [])
    d = h.to_dict()
    d["records"] = [{"step": 1, "loss": None, "layer_grad": [1.0, 2.0], "layer_weight": [1.0],
                     "block_grad_in": [], "block_grad_out": []}]
    short = tmp_path / "short.json"
    short.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="short.json.*layer_grad"):
        load_history(short)


def test_format_table_has_one_aligned_row_per_layer_and_block():
    model = tiny_model()
    monitor = GradientMonitor(model)
    train(model, batches(1), monitor)
    text = monitor.format_table()
    layer_part, block_part = text.split("\n\n")
    lines = layer_part.splitlines()
    assert lines[0] == "resnet8: step 1"
    rows = lines[2:]
    assert [r.split()[0] for r in rows] == RESNET8_LAYERS
    assert len({len(r) for r in lines[1:]}) == 1  # aligned columns
    brows = block_part.splitlines()[1:]
    assert [r.split()[0] for r in brows] == RESNET8_BLOCKS


def test_trainer_callback_records_step_one_and_every_nth_matching_trainer_grad_norms(tmp_path):
    from minires.diagnostics import read_jsonl
    from minires.train import TrainConfig, Trainer, build_model

    rng = np.random.default_rng(0)
    data = SimpleNamespace(train_images=rng.integers(0, 256, (48, 3, 32, 32), dtype=np.uint8),
                           train_labels=rng.integers(0, 10, 48).astype(np.int64),
                           test_images=rng.integers(0, 256, (16, 3, 32, 32), dtype=np.uint8),
                           test_labels=rng.integers(0, 10, 16).astype(np.int64))
    config = TrainConfig(model="resnet_cifar", model_kwargs={"depth": 8, "width": 4}, epochs=2, batch_size=8,
                         limit_train=24, grad_norms=2, seed=1, prefetch=0)
    model = build_model(config.resolved())
    monitor = GradientMonitor(model)
    trainer = Trainer(config, data, tmp_path, model=model, callbacks=[monitor.callback(every=2)], verbose=False)
    trainer.fit()
    monitor.detach()
    h = monitor.history
    assert h.steps == [1, 2, 4, 6]
    # The trainer logs the same gradients before optimizer.step(); the callback reads them after it.
    logged = {r["step"]: {layer["name"]: layer["grad_norm"] for layer in r["layers"]} for r in read_jsonl(tmp_path / "grad_norms.jsonl")}
    assert sorted(logged) == [2, 4, 6]
    for step in (2, 4, 6):
        i = h.index_of(step)
        for j, name in enumerate(h.layers):
            assert h.layer_grad[i][j] == pytest.approx(logged[step][name + ".weight"], rel=1e-6)
    assert np.all(np.isfinite(h.grad_array("block_in")))
    # Both measure the same update of each recorded step, one from the callback, one inside the trainer.
    updates = {r["step"]: {layer["name"]: layer["update_ratio"] for layer in r["layers"]}
               for r in read_jsonl(tmp_path / "grad_norms.jsonl")}
    for step in (2, 4, 6):
        i = h.index_of(step)
        for j, name in enumerate(h.layers):
            ours, trainers = h.layer_update[i][j], updates[step][name + ".weight"]
            assert ours > 0 and trainers > 0
            # The trainer divides by ||W|| before the step, the callback's history by ||W|| after it.
            assert ours / h.layer_weight[i][j] == pytest.approx(trainers, rel=0.05)


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="Module"):
        GradientMonitor("resnet20")
    with pytest.raises(ValueError, match="no conv"):
        GradientMonitor(nn.ReLU())
    monitor = GradientMonitor(tiny_model())
    with pytest.raises(ValueError, match="every"):
        monitor.callback(0)
    with pytest.raises(TypeError, match="step"):
        monitor.record(1.5)
    with pytest.raises(ValueError, match="not recorded"):
        monitor.history.index_of(3)


@pytest.mark.parametrize("when", ["before_step", "after_step"])
def test_record_update_measures_the_step_actually_taken(when):
    """||W_after - W_before|| per layer, momentum and weight decay included, with record() on either side of step()."""
    model = tiny_model().double()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    monitor = GradientMonitor(model)
    for step, (x, y) in enumerate(batches(3), start=1):
        before = {name: m.weight.data.copy() for name, m in model.named_modules() if name in RESNET8_LAYERS}
        loss = F.cross_entropy(model(Tensor(x.data.astype(np.float64))), y)
        opt.zero_grad()
        loss.backward()
        if when == "before_step":
            monitor.record(step)
        opt.step()
        if when == "after_step":
            monitor.record(step)
        monitor.record_update()
        modules = dict(model.named_modules())
        expected = [np.linalg.norm(modules[name].weight.data - before[name]) for name in RESNET8_LAYERS]
        np.testing.assert_allclose(monitor.history.layer_update[-1], expected, rtol=1e-12)
    ratios = monitor.history.grad_array("update_ratio")
    assert ratios.shape == (3, len(RESNET8_LAYERS)) and np.all(ratios > 0)
    assert "update/W" in monitor.format_table()
    monitor.detach()


def test_record_update_without_a_record_is_refused_and_old_histories_load(tmp_path):
    model = tiny_model()
    monitor = GradientMonitor(model)
    with pytest.raises(RuntimeError, match="record"):
        monitor.record_update()
    train(model, batches(1), monitor)  # recorded, no record_update: no update measured
    assert np.all(np.isnan(monitor.history.grad_array("update")))
    assert "update/W" not in monitor.format_table()
    data = monitor.history.to_dict()
    for record in data["records"]:
        del record["layer_update"]  # a history saved before update ratios existed
    old = GradientHistory.from_dict(data)
    assert old.steps == [1] and np.all(np.isnan(old.grad_array("update")))
