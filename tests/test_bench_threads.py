"""The thread measurements of benchmarks/: the region summary's arithmetic and that the scripts run.

The benchmarks print tables and are not timed here; these tests check that
``bench_train_step.py --profile threads`` adds up what it reports correctly
(on a made-up step whose totals are known) and wraps the kernels' real
``run_chunks`` (and restores it), and that ``bench_threads.py`` runs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_region_summary_adds_up_a_known_step():
    bench = _load("bench_train_step")
    regions = [
        (0.010, [(0.0001, 0.009), (0.0004, 0.007)]),  # two threads: imbalance 2 ms, late start 0.4 ms
        (0.020, [(0.0000, 0.019), (0.0010, 0.018)]),  # imbalance 1 ms, late start 1 ms
        (0.003, [(0.0000, 0.003)]),  # run by the caller alone
    ]
    s = bench._summarise_regions(regions, wall=0.040)
    assert (s["parallel"], s["serial"], s["threads"]) == (2, 1, 2)
    assert s["parallel_wall"] == pytest.approx(0.030)
    assert s["busy"] == pytest.approx(0.009 + 0.007 + 0.019 + 0.018)
    assert s["imbalance"] == pytest.approx(0.002 + 0.001)
    assert s["late"] == pytest.approx(0.0004 + 0.0010)
    assert s["serial_wall"] == pytest.approx(0.003)
    assert s["outside"] == pytest.approx(0.040 - 0.030 - 0.003)
    assert s["perfect"] == pytest.approx(0.053 / 2 + 0.003 + 0.007)


def test_thread_profile_sees_every_region_of_a_real_kernel_and_restores_run_chunks(capsys):
    import numpy as np

    from minires.fast import batch_norm, conv, relu

    bench = _load("bench_train_step")
    originals = (conv.run_chunks, batch_norm.run_chunks, relu.run_chunks)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    seen = []

    def step() -> float:
        seen.append(conv.run_chunks is not originals[0] and batch_norm.run_chunks is conv.run_chunks)
        batch_norm.batch_norm_train_forward(x, None, None, 1e-5)  # three regions
        return 0.0

    bench.profile_threads(step, steps=2)
    out = capsys.readouterr().out
    assert seen == [True, True, True]  # warm-up + 2 steps, all traced
    assert (conv.run_chunks, batch_norm.run_chunks, relu.run_chunks) == originals
    line = next(l for l in out.splitlines() if l.startswith("regions run by the caller alone"))
    assert "(3 per step" in line  # a problem this small runs on the calling thread
    assert "perfect split" in out


def test_bench_threads_prints_its_tables(capsys):
    bench = _load("bench_threads")
    bench.CALL_SECONDS = 0.01
    bench.SIZES = (1024,)
    assert bench.main(["--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "| lock passed to another thread and back (two wake-ups) |" in out
    assert "| 1,024 elements (4 kB) |" in out
    with pytest.raises(SystemExit):
        bench.main(["--repeat", "0"])
