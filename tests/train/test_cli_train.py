"""`minires train` and `minires eval` on the data helper's synthetic CIFAR-10 files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data.synthetic_cifar import write_synthetic_cifar

import minires.data
import minires.data.cifar
from minires.cli import main
from minires.train import metric_columns
from minires.train.checkpoint import load_checkpoint

# Small enough for a couple of seconds per run: 64 training images, 4 steps per epoch.
BASE = ["--model", "resnet_cifar", "--epochs", "2", "--batch-size", "16", "--limit-train", "64",
        "--limit-test", "32", "--device", "cpu", "--recipe", "fast", "--seed", "1", "--no-download"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_synthetic_cifar(tmp_path_factory.mktemp("cifar"), n_train_per_batch=40, n_test=40, seed=2)


@pytest.fixture
def no_data_loading(monkeypatch):
    """Fail the test if the command gets as far as loading data."""

    def forbidden(*args, **kwargs):
        raise AssertionError("data was loaded before the usage error was reported")

    monkeypatch.setattr(minires.data, "load_cifar10", forbidden)
    monkeypatch.setattr(minires.data.cifar, "load_cifar10", forbidden)


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_resnet_cifar_needs_depth_so_use_a_named_model(data_dir, tmp_path, capsys, no_data_loading):
    # resnet_cifar is registered but needs depth=...: a clear error, exit 2, before loading data.
    code, out, err = run_cli(["train", *BASE, "--data-dir", str(data_dir), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "cannot build model 'resnet_cifar'" in err and "depth" in err


def train_args(data_dir, out, *extra):
    args = ["train", *BASE, "--data-dir", str(data_dir), "--out", str(out), *extra]
    args[args.index("resnet_cifar")] = "resnet20"
    return args


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    """One quiet CLI run, shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("run") / "resnet20"
    import io
    from contextlib import redirect_stdout

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(train_args(data_dir, out, "--grad-norms", "3"))
    assert code == 0, buffer.getvalue()
    return out, buffer.getvalue()


def test_train_prints_backend_and_summary_first_and_writes_the_run(finished_run):
    out, stdout = finished_run
    lines = stdout.splitlines()
    assert lines[0] == "backend: numpy | device: cpu"
    assert lines[1].startswith("resnet20: 0.27M params")
    assert lines[2].startswith("data: 200 training / 40 test images")
    assert "epoch 2/2" in stdout and "gradient norms at step 3" in stdout and "done: 2 epochs" in stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.npz", "config.json", "grad_norms.jsonl", "metrics.csv", "metrics.jsonl",
    ]
    with open(out / "metrics.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == metric_columns(with_validation=False) and len(table) == 3
    config = json.loads((out / "config.json").read_text())
    assert (config["model"], config["epochs"], config["batch_size"], config["recipe"]) == ("resnet20", 2, 16, "fast")
    assert [json.loads(line)["step"] for line in (out / "grad_norms.jsonl").read_text().splitlines()] == [3, 6]


def test_eval_reproduces_the_last_test_accuracy(finished_run, data_dir, capsys):
    out, _ = finished_run
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    code, stdout, err = run_cli(["eval", "--checkpoint", str(out / "checkpoint.npz"), "--data-dir", str(data_dir),
                                 "--limit-test", "32", "--device", "cpu"], capsys)
    assert code == 0, err
    assert f"test accuracy: {100 * last['test_acc']:.2f}%" in stdout
    assert f"test loss: {last['test_loss']:.4f}" in stdout
    assert "32 images" in stdout and "epoch 2/2" in stdout


def test_quiet_prints_only_the_essentials(data_dir, tmp_path, capsys):
    code, out, err = run_cli(train_args(data_dir, tmp_path / "q", "--quiet", "--epochs", "1"), capsys)
    assert code == 0, err
    assert "epoch 1/1" not in out and "\r" not in out
    assert out.splitlines()[0] == "backend: numpy | device: cpu" and out.splitlines()[-1].startswith("done:")


def test_resume_continues_and_matches_an_uninterrupted_run(data_dir, tmp_path, capsys, finished_run):
    """Stop the 2-epoch run after epoch 1 (a KeyboardInterrupt, as Ctrl-C would raise),
    then `--resume` it: same parameters and grad-norm log as the uninterrupted run."""
    import minires.train as train_module

    original = train_module.Trainer._run_epoch
    calls = {"n": 0}

    def run_one_then_interrupt(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self)

    train_module.Trainer._run_epoch = run_one_then_interrupt
    try:
        code, out, err = run_cli(train_args(data_dir, tmp_path / "r", "--grad-norms", "3"), capsys)
    finally:
        train_module.Trainer._run_epoch = original
    assert code == 130 and "checkpoint saved" in out
    assert load_checkpoint(tmp_path / "r" / "checkpoint.npz")["epoch"] == 1

    code, out, err = run_cli(["train", "--out", str(tmp_path / "r"), "--resume", "--quiet", "--no-download",
                              "--data-dir", str(data_dir), "--device", "cpu"], capsys)
    assert code == 0, err
    resumed = load_checkpoint(tmp_path / "r" / "checkpoint.npz")["model"]
    reference = load_checkpoint(finished_run[0] / "checkpoint.npz")["model"]
    for key in reference:
        assert resumed[key].tobytes() == reference[key].tobytes(), key
    assert (tmp_path / "r" / "grad_norms.jsonl").read_text() == (finished_run[0] / "grad_norms.jsonl").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "resnet21"], "unknown model 'resnet21'"),
        (["--batch-size", "0"], "batch_size must be a positive integer, got 0"),
        (["--batch-size", "-3"], "batch_size must be a positive integer, got -3"),
        (["--batch-size", "65"], "batch size 65 is larger than the training set (64 images)"),
        (["--limit-train", "60000"], "limit_train=60000 is more than the 50000 training images"),
        (["--epochs", "0"], "epochs must be a positive integer, got 0"),
        (["--lr", "nan"], "lr must be a positive finite number"),
        (["--device", "tpu"], "--device tpu"),
    ],
)
def test_usage_errors_exit_2_before_loading_data(data_dir, tmp_path, capsys, no_data_loading, extra, message):
    code, out, err = run_cli(train_args(data_dir, tmp_path / "run", *extra), capsys)
    assert code == 2
    assert message in err
    assert "backend:" not in out  # nothing was started
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_unwritable_output_directory_exits_2(data_dir, tmp_path, capsys, no_data_loading):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, out, err = run_cli(train_args(data_dir, blocker / "run"), capsys)
    assert code == 2 and "is not writable" in err and str(blocker) in err
    code, out, err = run_cli(train_args(data_dir, blocker), capsys)
    assert code == 2 and "is not a directory" in err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write to read-only directories")
def test_read_only_output_directory_exits_2(data_dir, tmp_path, capsys, no_data_loading):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, out, err = run_cli(train_args(data_dir, ro), capsys)
    finally:
        ro.chmod(0o700)
    assert code == 2 and "is not writable" in err


def test_existing_run_needs_resume_or_overwrite(finished_run, data_dir, capsys, no_data_loading):
    out, _ = finished_run
    before = (out / "checkpoint.npz").read_bytes()
    code, stdout, err = run_cli(train_args(data_dir, out), capsys)
    assert code == 2 and "--resume" in err and "--overwrite" in err
    code, stdout, err = run_cli(train_args(data_dir, out, "--resume", "--model", "resnet32"), capsys)
    assert code == 2 and "--model 'resnet32' (the run uses 'resnet20')" in err
    code, stdout, err = run_cli(train_args(data_dir, out, "--resume", "--overwrite"), capsys)
    assert code == 2 and "contradict" in err
    assert (out / "checkpoint.npz").read_bytes() == before


def test_failed_overwrite_keeps_the_previous_run(finished_run, data_dir, tmp_path, capsys):
    # --overwrite replaces a run only once the new one has passed every check:
    # a mistyped model or missing data must not cost the finished run.
    out, _ = finished_run
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, stdout, err = run_cli(train_args(data_dir, out, "--overwrite", "--model", "resnet21"), capsys)
    assert code == 2 and "resnet21" in err
    empty = tmp_path / "no-data"
    empty.mkdir()
    code, stdout, err = run_cli(train_args(empty, out, "--overwrite"), capsys)
    assert code == 1 and str(empty) in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_short_batch_file_is_refused(data_dir, tmp_path, capsys):
    # The CLI checks every batch against the count batches.meta declares.
    import shutil

    from data.synthetic_cifar import batch_dict, write_pickle

    root = tmp_path / "short"
    shutil.copytree(data_dir, root)
    images = np.zeros((39, 3, 32, 32), dtype=np.uint8)
    write_pickle(root / "cifar-10-batches-py" / "data_batch_2",
                 batch_dict(images, np.arange(39) % 10, "training batch 2 of 5", "short"))
    code, stdout, err = run_cli(train_args(root, tmp_path / "run"), capsys)
    assert code == 1 and "data_batch_2" in err and "holds 39 images, expected 40" in err


def test_usage_error_creates_no_output_directory(data_dir, tmp_path, capsys, no_data_loading):
    out = tmp_path / "new" / "run"
    code, stdout, err = run_cli(train_args(data_dir, out, "--model", "resnet21"), capsys)
    assert code == 2 and not (tmp_path / "new").exists()


def test_overwrite_replaces_the_run_once_it_starts(finished_run, data_dir, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished_run[0], out)
    (out / "metrics.jsonl").write_text('{"stale": true}\n')
    code, stdout, err = run_cli(train_args(data_dir, out, "--overwrite", "--epochs", "1"), capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and "stale" not in rows[0] and rows[0]["epoch"] == 1
    assert load_checkpoint(out / "checkpoint.npz")["config"]["epochs"] == 1


def test_resume_without_a_checkpoint_exits_2(data_dir, tmp_path, capsys, no_data_loading):
    code, out, err = run_cli(train_args(data_dir, tmp_path / "empty", "--resume"), capsys)
    assert code == 2 and "no checkpoint to resume" in err


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_checkpoint_gives_clear_error_and_is_kept(finished_run, data_dir, tmp_path, capsys, damage):
    original = (finished_run[0] / "checkpoint.npz").read_bytes()
    run = tmp_path / "run"
    run.mkdir()
    damaged = original[: len(original) // 2] if damage == "truncate" else (
        original[:1000] + bytes([original[1000] ^ 0xFF]) + original[1001:]
    )
    (run / "checkpoint.npz").write_bytes(damaged)
    code, out, err = run_cli(["eval", "--checkpoint", str(run / "checkpoint.npz"), "--data-dir", str(data_dir)], capsys)
    assert code == 2 and "checkpoint.npz" in err and ("damaged" in err or "SHA-256" in err)
    code, out, err = run_cli(["train", "--out", str(run), "--resume", "--data-dir", str(data_dir)], capsys)
    assert code == 2 and "checkpoint.npz" in err
    assert (run / "checkpoint.npz").read_bytes() == damaged


def test_eval_refuses_weights_that_do_not_fit(finished_run, tmp_path, capsys):
    from minires.train.checkpoint import save_checkpoint

    saved = load_checkpoint(finished_run[0] / "checkpoint.npz")
    saved["config"]["model"] = "resnet32"
    save_checkpoint(tmp_path / "c.npz", saved)
    code, out, err = run_cli(["eval", "--checkpoint", str(tmp_path / "c.npz")], capsys)
    assert code == 2 and "do not fit model 'resnet32'" in err and "missing keys" in err


def test_info_still_works(capsys):
    code, out, err = run_cli(["info"], capsys)
    assert code == 0 and "active backend" in out


def test_python_dash_m_reports_usage_errors(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "minires", "train", "--model", "nope", "--out", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "unknown model 'nope'" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "minires", "train", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    for flag in ("--recipe", "--grad-norms", "--limit-train", "--resume", "--quiet", "--val-split", "--seed"):
        assert flag in proc.stdout


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's overflow warnings, expected here
def test_diverging_run_exits_1_with_a_clear_message_and_no_checkpoint(data_dir, tmp_path, capsys):
    out = tmp_path / "diverged"
    code, _, err = run_cli(train_args(data_dir, out, "--lr", "1e30"), capsys)
    assert code == 1
    assert "minires train: error: training diverged: the training loss is" in err and "lower learning rate" in err
    assert "Traceback" not in err
    assert not (out / "checkpoint.npz").exists()
