"""A short training run on real CIFAR-10 must learn: > 35% test accuracy (chance: 10%).

Needs the data: set MINIRES_DATA to the directory that contains
``cifar-10-batches-py/`` (CI sets it to ../shared/data). Skipped otherwise.

The setting is chosen to be quick on a few CPU cores: a narrow
ResNet-8 (3 stages of one basic block, widths 8/16/32, 20k parameters),
the first 5,000 training images, 6 epochs of 78 steps at batch 64 with the
`fast` recipe (warm-up + cosine), no augmentation (too few epochs to overfit),
evaluated on the first 2,000 test images. It reached 50.8% when it was
written (seed 0), so 35% leaves a wide margin for seeds and platforms.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from minires.train import TrainConfig, Trainer


def _real_data_dir() -> Path:
    value = os.environ.get("MINIRES_DATA", "").strip()
    if not value:
        pytest.skip("real CIFAR-10 not configured: set MINIRES_DATA to the directory containing cifar-10-batches-py")
    root = Path(value).expanduser()
    if not (root / "cifar-10-batches-py").is_dir():
        pytest.skip(f"MINIRES_DATA={value} has no cifar-10-batches-py directory")
    return root


@pytest.mark.slow
def test_short_run_on_real_cifar10_beats_35_percent(tmp_path):
    from minires.data import load_cifar10

    data = load_cifar10(_real_data_dir(), download=False)
    config = TrainConfig(
        model="resnet_cifar", model_kwargs={"depth": 8, "width": 8}, recipe="fast", epochs=6, batch_size=64,
        lr=0.1, limit_train=5000, limit_test=2000, augment=False, device="cpu", seed=0,
    )
    trainer = Trainer(config, data, tmp_path, verbose=False, progress=False)
    rows = trainer.fit()
    assert trainer.global_step == 6 * (5000 // 64)
    accuracies = [round(100 * r["test_acc"], 2) for r in rows]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"], [r["train_loss"] for r in rows]
    assert rows[-1]["test_acc"] > 0.35, f"test accuracy per epoch (%): {accuracies}"
