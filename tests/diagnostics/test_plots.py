"""The plots: PNG and SVG files written atomically, titled, labelled, log-scaled where
gradient norms span decades, one line per run; bad inputs refused with a clear message."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from minires.diagnostics import plots
from minires.diagnostics.monitor import GradientHistory
from minires.diagnostics.sweep import SweepResult, SweepRow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_history(model, n_layers=6, steps=(1, 5, 10), decay=10.0, seed=0):
    """A history whose layer gradients fall geometrically by ``decay`` from first to last layer."""
    rng = np.random.default_rng(seed)
    layers = [f"l{i}" for i in range(n_layers - 1)] + ["fc"]
    h = GradientHistory(model, layers, ["Conv2d"] * (n_layers - 1) + ["Linear"],
                        [(4, 4, 3, 3)] * (n_layers - 1) + [(10, 4)], ["b0", "b1"])
    for s in steps:
        profile = decay ** -np.linspace(0, 1, n_layers) * rng.uniform(0.5, 2)
        h.steps.append(s)
        h.losses.append(2.0)
        h.layer_grad.append(list(profile))
        h.layer_weight.append([1.0] * n_layers)
        h.block_grad_in.append([1.0, 0.5])
        h.block_grad_out.append([0.5, 0.2])
    return h


@pytest.fixture
def captured(monkeypatch):
    """Keep every figure handed to save_figure, and still write the files."""
    figs = []
    original = plots.save_figure

    def keep(fig, stem):
        figs.append(fig)
        return original(fig, stem)

    monkeypatch.setattr(plots, "save_figure", keep)
    return figs


def check_files(paths, tmp_path, stem):
    assert [p.name for p in paths] == [f"{stem}.png", f"{stem}.svg"]
    assert paths[0].read_bytes()[:8] == PNG_MAGIC
    ET.fromstring(paths[1].read_bytes())  # well-formed SVG
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def check_labelled(ax):
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()


def test_depth_profile_overlays_models_on_log_axes_at_init_and_later(tmp_path, captured):
    hs = {"plain56": fake_history("plain56", decay=1e4), "resnet56": fake_history("resnet56", decay=3)}
    paths = plots.plot_depth_profile(hs, tmp_path / "depth")
    check_files(paths, tmp_path, "depth")
    fig = captured[0]
    axes = fig.axes
    assert len(axes) == 2 and fig.get_suptitle()
    assert "step 1" in axes[0].get_title() and "step 10" in axes[1].get_title()
    for ax in axes:
        assert ax.get_yscale() == "log"
        assert [line.get_label() for line in ax.get_lines()] == ["plain56", "resnet56"]
        assert ax.get_lines()[0].get_linestyle() == "--" and ax.get_lines()[1].get_linestyle() == "-"
    check_labelled(axes[0])
    # The plotted values are the recorded ones, input side first.
    np.testing.assert_allclose(axes[0].get_lines()[0].get_ydata(), hs["plain56"].layer_grad[0])
    np.testing.assert_allclose(axes[1].get_lines()[1].get_ydata(), hs["resnet56"].layer_grad[-1])


def test_depth_profile_after_a_chosen_step_and_single_record(tmp_path, captured):
    hs = [fake_history("a"), fake_history("b")]
    plots.plot_depth_profile(hs, tmp_path / "p", after_step=5)
    assert "step 5" in captured[-1].axes[1].get_title()
    one = [fake_history("a", steps=(0,))]
    plots.plot_depth_profile(one, tmp_path / "q")
    assert len(captured[-1].axes) == 1
    with pytest.raises(ValueError, match="step 7 was not recorded"):
        plots.plot_depth_profile(hs, tmp_path / "r", after_step=7)


def test_heatmap_is_depth_by_step_with_a_log_colour_scale(tmp_path, captured):
    from matplotlib.colors import LogNorm

    h = fake_history("plain20", n_layers=8, steps=(1, 2, 4, 8), decay=1e3)
    h.layer_grad[2][3] = math.nan  # a missing value is masked, not an error
    paths = plots.plot_heatmap(h, tmp_path / "heat")
    check_files(paths, tmp_path, "heat")
    ax = captured[0].axes[0]
    check_labelled(ax)
    mesh = ax.collections[0]
    assert isinstance(mesh.norm, LogNorm)
    assert mesh.get_array().shape == (8, 4)  # (layers, records)
    assert mesh.get_array().mask[3, 2]
    colorbar_axes = captured[0].axes[1]
    assert colorbar_axes.get_ylabel()
    plots.plot_heatmap(h, tmp_path / "heat_blocks", kind="block_in")
    with pytest.raises(ValueError, match="kind"):
        plots.plot_heatmap(h, tmp_path / "x", kind="nope")


def write_metrics(run_dir, rows):
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_training_curves_read_each_runs_metrics_and_plot_errors_in_percent(tmp_path, captured):
    rows_a = [{"epoch": e, "step": 10 * e, "train_loss": 2.0 / e, "train_acc": 0.1 * e, "test_acc": 0.08 * e,
               "test_loss": 2.1} for e in (1, 2, 3)]
    rows_b = [dict(r, train_acc=r["train_acc"] + 0.05) for r in rows_a]
    write_metrics(tmp_path / "plain20", rows_a)
    write_metrics(tmp_path / "resnet20", rows_b)
    paths = plots.plot_training_curves({"plain20": tmp_path / "plain20", "resnet20": tmp_path / "resnet20"},
                                       tmp_path / "curves")
    check_files(paths, tmp_path, "curves")
    loss_ax, train_ax, test_ax = captured[0].axes
    for ax in (loss_ax, train_ax, test_ax):
        check_labelled(ax)
        assert len(ax.get_lines()) == 2
    assert loss_ax.get_yscale() == "linear"  # 2.0 .. 0.67: less than a decade
    # A plain net and its residual twin share a colour (one per depth), dashed vs solid.
    assert train_ax.get_lines()[0].get_color() == train_ax.get_lines()[1].get_color()
    long_rows = [dict(r, train_loss=10.0 ** -e) for r in rows_a for e in [r["epoch"]]]
    plots.plot_training_curves({"plain20": long_rows}, tmp_path / "curves_long")
    assert captured[-1].axes[0].get_yscale() == "log"  # 1e-1 .. 1e-3 spans decades
    np.testing.assert_allclose(train_ax.get_lines()[0].get_xdata(), [10, 20, 30])
    np.testing.assert_allclose(train_ax.get_lines()[0].get_ydata(), [90, 80, 70])  # error %, = 100 (1 - acc)
    np.testing.assert_allclose(test_ax.get_lines()[1].get_ydata(), [92, 84, 76])
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        plots.plot_training_curves({"x": tmp_path / "missing"}, tmp_path / "c2")


def test_depth_sweep_plot_has_one_line_per_kind_and_bn_setting(tmp_path, captured):
    def result(bn, scale):
        rows = [SweepRow(d, k, f"{k}{d}", bn, 1.0, 1.0, (scale if k == "plain" else 2.0) ** (d / 20),
                         (scale if k == "plain" else 2.0) ** (d / 20), 2.3, 1.0)
                for d in (20, 56) for k in ("plain", "residual")]
        return SweepResult(rows, 8, 16, 0, bn, 0.1)

    paths = plots.plot_depth_sweep([result(True, 100.0), result(False, 1.5)], tmp_path / "sweep")
    check_files(paths, tmp_path, "sweep")
    ratio_ax, spread_ax = captured[0].axes
    for ax in (ratio_ax, spread_ax):
        check_labelled(ax)
        assert ax.get_yscale() == "log"
    labels = [line.get_label() for line in ratio_ax.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["plain, BN", "residual, BN", "plain, no BN", "residual, no BN"]


def test_save_figure_strips_a_suffix_and_creates_the_directory(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.subplots().plot([1, 2])
    paths = plots.save_figure(fig, tmp_path / "deep" / "dir" / "f.png")
    assert [p.name for p in paths] == ["f.png", "f.svg"] and all(p.is_file() for p in paths)
