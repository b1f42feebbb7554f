"""``minires train`` with test-only hooks, for test_data_parallel.py (run alone or as one rank under mpiexec).

    python dp_worker.py [--pid-dir D] [--stop-at K] [--raise-at K --raise-rank R] [--dump D] -- train ARGS...

--pid-dir D    write this process's pid to D/pid.<rank> once training starts (for the kill test)
--stop-at K    every rank stops after global step K, as after Ctrl-C (checkpoint saved, exit 130)
--raise-at K   rank --raise-rank raises RuntimeError after global step K (the others run on)
--dump D       after training, write this rank's parameters and buffers to D/state.<rank>.npz
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from minires.cli import main
from minires.train import Callback, Trainer


class Hooks(Callback):
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.pid_written = False

    def on_step_end(self, trainer: Trainer) -> None:
        rank, step = trainer.parallel.rank, trainer.global_step
        if self.opts.pid_dir and not self.pid_written:
            path = Path(self.opts.pid_dir) / f"pid.{rank}"
            partial = path.parent / f"{path.name}.partial"  # one per rank: written whole, then renamed
            partial.write_text(str(os.getpid()))
            os.replace(partial, path)
            self.pid_written = True
        if self.opts.raise_at is not None and step == self.opts.raise_at and rank == self.opts.raise_rank:
            raise RuntimeError(f"test failure on rank {rank} after step {step}")
        if self.opts.stop_at is not None and step == self.opts.stop_at:
            raise KeyboardInterrupt


def install(opts: argparse.Namespace) -> None:
    """Give every Trainer the hooks, and dump its state after fit()."""
    init, fit = Trainer.__init__, Trainer.fit

    def patched_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.callbacks.append(Hooks(opts))

    def patched_fit(self):
        rows = fit(self)
        if opts.dump:
            np.savez(Path(opts.dump) / f"state.{self.parallel.rank}.npz", **self.model.state_dict())
        return rows

    Trainer.__init__, Trainer.fit = patched_init, patched_fit


if __name__ == "__main__":
    split = sys.argv.index("--")
    parser = argparse.ArgumentParser()
    for flag in ("--pid-dir", "--dump"):
        parser.add_argument(flag)
    for flag in ("--stop-at", "--raise-at", "--raise-rank"):
        parser.add_argument(flag, type=int)
    install(parser.parse_args(sys.argv[1:split]))
    sys.exit(main(sys.argv[split + 1:]))
