"""The thread measurements of benchmarks/: the region summary's arithmetic and that the scripts run.

The benchmarks print tables and are not timed here; these tests check that
``bench_train_step.py --profile threads`` adds up what it reports correctly
(on a made-up step whose totals are known) and wraps the kernels' real
``run_chunks`` (and restores it), that ``bench_train_step.py --kernels``
runs minires' step under the set it names, and that ``bench_threads.py`` runs.
"""

from __future__ import annotations

import importlib.util
import os
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
    line = next(row for row in out.splitlines() if row.startswith("regions run by the caller alone"))
    assert "(3 per step" in line  # a problem this small runs on the calling thread
    assert "perfect split" in out


@pytest.mark.parametrize("kernels, fused", [("reference", False), ("fast", True)])
def test_train_step_runs_under_the_kernel_set_it_is_given(capsys, monkeypatch, kernels, fused):
    import minires

    bench = _load("bench_train_step")
    for name in ("MINIRES_NUM_THREADS", "MINIRES_KERNELS"):  # main() sets both: restored afterwards
        monkeypatch.setenv(name, os.environ.get(name, ""))
    other = "fast" if kernels == "reference" else "reference"
    with minires.use_kernels(other):  # main() sets the set for the process: restored afterwards
        assert bench.main(["--models", "8", "--batch", "2", "--steps", "1", "--threads", "1",
                           "--profile", "ops", "--kernels", kernels, "--malloc", "glibc"]) == 0
        assert minires.get_kernels() == kernels
    out = capsys.readouterr().out
    assert f"minires kernels: {kernels}" in out
    # The fast set runs each residual block's batch norm and ReLU as one fused Function; the reference does not.
    assert ("BatchNormReLUTrain" in out) == fused
    assert "Conv2dFunction" in out


def test_train_step_refuses_to_profile_threads_of_the_reference_kernels(capsys):
    bench = _load("bench_train_step")
    with pytest.raises(SystemExit):
        bench.main(["--profile", "threads", "--kernels", "reference"])
    assert "the reference kernels have none" in capsys.readouterr().err


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
