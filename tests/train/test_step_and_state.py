"""The pieces the Trainer is built from: train_step / evaluate, the typed checkpoint state, the speed helpers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from minires import models, no_grad
from minires.nn import functional as F
from minires.optim import SGD
from minires.tensor import Tensor
from minires.train import (
    CheckpointError,
    EpochProgress,
    TrainConfig,
    Trainer,
    TrainingState,
    evaluate,
    read_training_state,
    train_step,
)
from minires.train.checkpoint import load_checkpoint, save_checkpoint


def _net():
    return models.create("resnet_cifar", depth=8, width=4, seed=0)


def _batch(rng, n=4, size=8):
    return (Tensor(rng.standard_normal((n, 3, size, size)).astype(np.float32)),
            Tensor(rng.integers(0, 10, n)))


def test_train_step_is_forward_loss_backward_update(rng):
    images, labels = _batch(rng)
    by_hand, stepped = _net(), _net()
    opt_hand = SGD(by_hand.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss_hand = F.cross_entropy(by_hand(images), labels)
    opt_hand.zero_grad()
    loss_hand.backward()
    opt_hand.step()

    opt = SGD(stepped.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    seen = []
    loss, logits = train_step(stepped, (images, labels), opt, before_update=lambda loss: seen.append(loss.item()))
    assert logits.shape == (4, 10) and loss.item() == loss_hand.item() == seen[0]
    for (name, a), b in zip(by_hand.named_parameters(), stepped.parameters()):
        assert np.array_equal(a.data, b.data), name


def test_before_update_sees_the_pure_loss_gradient(rng):
    net = _net()
    opt = SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.5)
    grads = {}

    def keep(loss):
        grads.update({id(p): p.grad.copy() for p in net.parameters()})

    train_step(net, _batch(rng), opt, before_update=keep)
    # The optimiser adds weight decay to a copy: .grad still holds dL/dW after the update.
    assert all(np.array_equal(grads[id(p)], p.grad) for p in net.parameters())


def test_evaluate_averages_over_every_batch_in_eval_mode_and_restores_the_mode(rng):
    net = _net()
    batches = [_batch(rng, n=n) for n in (4, 3)]
    net.train()
    with no_grad():
        net(batches[0][0])  # running statistics for eval mode
    loss, acc = evaluate(net, batches)
    assert net.training
    net.eval()
    with no_grad():
        losses = [F.cross_entropy(net(x), y, reduction="sum").item() for x, y in batches]
        correct = [int((net(x).data.argmax(axis=1) == y.data).sum()) for x, y in batches]
    assert loss == pytest.approx(sum(losses) / 7) and acc == sum(correct) / 7
    with pytest.raises(ValueError, match="no examples"):
        evaluate(net, [])


def test_epoch_progress_sums_and_round_trips(rng):
    progress = EpochProgress()
    assert np.isnan(progress.averages()[0])
    logits = Tensor(np.eye(10, dtype=np.float32)[:4] * 5)
    progress.add_batch(Tensor(np.float32(0.5)), logits, Tensor(np.array([0, 1, 2, 9])))
    assert (progress.batch, progress.seen) == (1, 4)
    assert progress.averages() == (0.5, 0.75)
    again = EpochProgress.from_dict(progress.to_dict())
    assert again.to_dict() == progress.to_dict() == {"batch": 1, "loss_sum": 2.0, "correct": 3, "seen": 4,
                                                      "train_seconds": 0.0}


def _tiny_run(tmp_path, epochs=1):
    rng = np.random.default_rng(0)
    data = SimpleNamespace(train_images=rng.integers(0, 256, (32, 3, 32, 32), dtype=np.uint8),
                           train_labels=rng.integers(0, 10, 32).astype(np.int64),
                           test_images=rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8),
                           test_labels=rng.integers(0, 10, 8).astype(np.int64))
    config = TrainConfig(model="resnet_cifar", model_kwargs={"depth": 8, "width": 4}, epochs=epochs, batch_size=16,
                         device="cpu", prefetch=0)
    trainer = Trainer(config, data, tmp_path, verbose=False, progress=False)
    trainer.fit()
    return trainer


def test_training_state_is_what_the_checkpoint_holds(tmp_path):
    trainer = _tiny_run(tmp_path)
    state = read_training_state(trainer.checkpoint_path)
    assert isinstance(state, TrainingState) and isinstance(state.config, TrainConfig)
    assert state.config == trainer.config and (state.epoch, state.global_step, state.finished) == (1, 2, True)
    assert state.partial_epoch is None and state.metrics == trainer.metrics
    saved = load_checkpoint(trainer.checkpoint_path)
    again = state.to_dict()
    assert sorted(again) == sorted(saved)
    for key in ("kind", "config", "recipe", "epoch", "global_step", "steps_per_epoch", "finished", "metrics"):
        assert again[key] == saved[key], key
    assert all(np.array_equal(again["model"][k], saved["model"][k]) for k in saved["model"])


def test_a_foreign_configuration_is_a_checkpoint_error(tmp_path):
    trainer = _tiny_run(tmp_path)
    saved = load_checkpoint(trainer.checkpoint_path)
    saved["config"]["colour"] = "blue"
    save_checkpoint(tmp_path / "other.npz", saved)
    with pytest.raises(CheckpointError, match="unusable configuration.*colour"):
        read_training_state(tmp_path / "other.npz")
    saved["kind"] = "something-else"
    save_checkpoint(tmp_path / "other.npz", saved)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        read_training_state(tmp_path / "other.npz")


def test_cpu_step_context_turns_the_speed_helpers_on_only_for_the_cpu(monkeypatch):
    import contextlib

    from minires.fast import allocator
    from minires.train import speed

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1))
    assert speed.cpu_step_context("cuda") is contextlib.nullcontext and calls == []
    context = speed.cpu_step_context("cpu")
    assert calls == [1]
    with context():
        pass
