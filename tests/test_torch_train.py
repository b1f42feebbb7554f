"""benchmarks/torch_train.py, the PyTorch reference for a ``minires train`` run: same schedule, batches and start.

The script only means something if the PyTorch run differs from minires's in
the library alone. So: its learning rate at every iteration equals minires's
schedulers' (both recipes), and on the same synthetic files a short run ends
its epochs at the losses ``minires train`` reports, within float32 rounding.
Skipped when torch is not installed (it is only a reference, never a dependency).
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch is not installed: the PyTorch reference run is not checked")

from data.synthetic_cifar import write_synthetic_cifar  # noqa: E402

from minires import models  # noqa: E402
from minires.cli import main as minires_main  # noqa: E402
from minires.train import recipes  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_train.py"
# lr 0.01: on random labels, lr 0.1 makes the runs chaotic and float32 rounding grows past any tolerance.
SHARED = ["--model", "resnet20", "--epochs", "2", "--batch-size", "16", "--limit-train", "64", "--limit-test", "32",
          "--recipe", "fast", "--seed", "1", "--lr", "0.01"]


def _script():
    spec = importlib.util.spec_from_file_location("torch_train_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(path: Path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("recipe", ["fast", "paper"])
def test_the_learning_rate_of_every_iteration_is_minires_schedule(recipe):
    total = 47
    optimizer = recipes.build_optimizer(models.create("resnet20"), recipes.get_recipe(recipe), lr=0.1)
    schedule = recipes.build_schedule(optimizer, recipes.get_recipe(recipe), total, depth=20)
    factor = _script().lr_factor
    for step in range(total):
        assert factor(recipes.get_recipe(recipe), step, total) * 0.1 == pytest.approx(
            optimizer.param_groups[0]["lr"], rel=1e-12, abs=1e-15), f"iteration {step}"
        optimizer.step()
        schedule.step()


def test_a_short_run_matches_minires_train_on_the_same_files(tmp_path):
    data = write_synthetic_cifar(tmp_path / "cifar", n_train_per_batch=40, n_test=40, seed=2)
    assert minires_main(["train", *SHARED, "--device", "cpu", "--no-download", "--data-dir", str(data),
                         "--out", str(tmp_path / "minires")]) == 0
    assert _script().main([*SHARED, "--threads", "1", "--data-dir", str(data), "--out", str(tmp_path / "torch")]) == 0
    ours, theirs = _rows(tmp_path / "minires" / "metrics.csv"), _rows(tmp_path / "torch" / "metrics.csv")
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs):
        assert float(a["lr"]) == pytest.approx(float(b["lr"]), rel=1e-12)
        for key in ("train_loss", "test_loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-3), (key, a, b)
