"""``minires compare`` and ``minires gradflow`` end to end on synthetic data, through the
``minires`` entry point (``minires.cli.main``, what the console script calls)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minires.cli import main
from minires.diagnostics.compare import format_gradflow_table, gradflow, synthetic_dataset
from minires.diagnostics.monitor import load_history
from minires.diagnostics.plots import read_metrics


def run(argv):
    return main(argv)


def test_console_script_lists_compare_and_gradflow():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "minires", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "compare" in done.stdout and "gradflow" in done.stdout


QUICK = ["--synthetic", "--depth", "8", "--batch-size", "8", "--width", "4", "--limit-test", "16",
         "--train-eval", "16", "--quiet"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "run"
    code = run(["compare", *QUICK, "--steps", "6", "--evals", "3", "--monitor-every", "2", "--out", str(out)])
    return code, out


def test_compare_trains_both_twins_and_writes_runs_summary_and_plots(compared, capsys):
    code, out = compared
    assert code == 0
    for name in ("plain8", "resnet8"):
        for f in ("config.json", "checkpoint.npz", "metrics.jsonl", "metrics.csv", "gradients.json"):
            assert (out / name / f).is_file(), (name, f)
        config = json.loads((out / name / "config.json").read_text())
        assert config["seed"] == 0 and config["epochs"] == 3 and config["limit_train"] == 2 * 8
        assert len(read_metrics(out / name)) == 3
        history = load_history(out / name / "gradients.json")
        assert history.steps == [1, 2, 4, 6]
        assert np.all(np.isfinite(history.grad_array("layer")))
    for stem in ("training_curves", "gradient_depth", "gradient_heatmap_plain8", "gradient_heatmap_resnet8"):
        assert (out / f"{stem}.png").stat().st_size > 0 and (out / f"{stem}.svg").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["model"] for r in summary["runs"]] == ["plain8", "resnet8"]
    for r in summary["runs"]:
        assert r["steps"] == 6 and r["epochs"] == 3 and r["train_eval_images"] == 16
        assert 0.0 <= r["train_error"] <= 1.0 and 0.0 <= r["test_error"] <= 1.0
        assert r["grad_first_init"] > 0 and r["grad_ratio_init"] > 0
    table = (out / "summary.txt").read_text()
    assert "plain8" in table and "resnet8" in table and "final train error" in table


def test_compare_refuses_to_overwrite_and_bad_depths(compared, tmp_path, capsys):
    _, out = compared
    assert run(["compare", *QUICK, "--steps", "2", "--evals", "1", "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert run(["compare", *QUICK, "--depth", "21", "--steps", "2", "--out", str(tmp_path / "x")]) == 2
    assert "6n + 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --steps and --epochs are mutually exclusive
        run(["compare", *QUICK, "--steps", "2", "--epochs", "1", "--out", str(tmp_path / "y")])


def test_gradflow_prints_the_side_by_side_table_and_writes_files(tmp_path, capsys):
    out = tmp_path / "gf"
    code = run(["gradflow", "--models", "plain20", "resnet20", "--batch-size", "4", "--out", str(out),
                "--sweep", "8", "14", "--sweep-batch-size", "4"])
    assert code == 0
    text = capsys.readouterr().out
    assert "plain20" in text and "resnet20" in text and "layer1.0.conv1" in text
    assert "without batch norm" in text and "with batch norm" in text
    for f in ("gradflow_plain20.json", "gradflow_resnet20.json", "gradflow.txt", "gradflow.png", "gradflow.svg",
              "depth_sweep.json", "depth_sweep.png", "depth_sweep.svg"):
        assert (out / f).is_file(), f
    h = load_history(out / "gradflow_plain20.json")
    assert h.steps == [0] and len(h.layers) == 20 and h.losses[0] > 0
    sweeps = json.loads((out / "depth_sweep.json").read_text())
    assert [s["batch_norm"] for s in sweeps] == [True, False] and len(sweeps[0]["rows"]) == 4


def test_gradflow_refuses_unknown_models_and_tiny_batches(capsys):
    assert run(["gradflow", "--models", "resnet7"]) == 2
    assert "unknown model 'resnet7'" in capsys.readouterr().err
    assert run(["gradflow", "--batch-size", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_gradflow_function_table_rows_match_histories():
    hs = gradflow(["plain20", "resnet20"], batch_size=4, seed=1)
    table = format_gradflow_table(hs).splitlines()
    rows = table[2:22]
    assert [r.split()[1] for r in rows][:2] == ["conv1", "layer1.0.conv1"] and rows[-1].split()[1] == "fc"
    assert float(rows[0].split()[2]) == pytest.approx(hs["plain20"].layer_grad[0][0], rel=1e-3)
    assert float(rows[0].split()[3]) == pytest.approx(hs["resnet20"].layer_grad[0][0], rel=1e-3)
    no_bn = gradflow(["resnet20"], batch_size=4, seed=1, batch_norm=False)
    assert list(no_bn) == ["resnet20-nobn"] and no_bn["resnet20-nobn"].meta["batch_norm"] is False


def test_synthetic_dataset_is_learnable_shaped_and_seeded():
    a, b = synthetic_dataset(40, 20, seed=3), synthetic_dataset(40, 20, seed=3)
    assert a.train_images.shape == (40, 3, 32, 32) and a.train_images.dtype == np.uint8
    assert a.test_labels.shape == (20,) and a.test_labels.dtype == np.int64
    assert np.array_equal(a.train_images, b.train_images)
    assert sorted(np.bincount(a.train_labels)) == [4] * 10
    # The class is visible in the pixels: per-class mean images differ far more than the noise.
    means = np.stack([a.train_images[a.train_labels == c].mean(axis=0) for c in range(10)])
    assert np.abs(means[0] - means[1]).mean() > 10


def test_gradflow_on_cifar_files_uses_the_first_training_images(tmp_path, capsys):
    from data.synthetic_cifar import write_synthetic_cifar

    root = write_synthetic_cifar(tmp_path / "cifar", n_train_per_batch=8, n_test=8, seed=2)
    assert run(["gradflow", "--models", "resnet20", "--batch-size", "6", "--data-dir", str(root), "--no-download"]) == 0
    out = capsys.readouterr().out
    assert "the first 6 CIFAR-10 training images" in out and "resnet20" in out


def test_missing_data_is_a_runtime_error_with_the_directory_named(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert run(["compare", "--depth", "8", "--steps", "2", "--data-dir", str(missing), "--no-download",
                "--out", str(tmp_path / "o")]) == 1
    assert str(missing) in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, value, minimum",
    [("--epochs", "-1", 1), ("--steps", "0", 1), ("--seed", "-1", 0), ("--train-eval", "0", 1),
     ("--batch-size", "0", 1), ("--width", "0", 1), ("--limit-test", "0", 1), ("--monitor-every", "0", 1)],
)
def test_bad_numbers_are_refused_before_any_data_is_loaded(flag, value, minimum, tmp_path, capsys, monkeypatch):
    import minires.cli.compare as compare

    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded before the arguments were checked")

    monkeypatch.setattr(compare, "load_cifar", no_data)
    monkeypatch.setattr(compare, "synthetic_dataset", no_data)
    length = [] if flag in ("--epochs", "--steps") else ["--steps", "2"]
    with pytest.raises(SystemExit) as exit_info:
        run(["compare", "--depth", "8", *length, flag, value, "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert f"argument {flag}: expected an integer >= {minimum}, got '{value}'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's overflow warnings, expected here
def test_a_diverging_twin_stops_compare_with_a_clear_message(tmp_path, capsys):
    code = run(["compare", *QUICK, "--steps", "4", "--evals", "2", "--lr", "1e30", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1
    assert "minires compare: error: training diverged" in err and "lower learning rate" in err
