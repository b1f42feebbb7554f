"""What the trainer prints: messages, progress bars (tqdm) and one line per epoch."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

__all__ = ["Reporter", "epoch_line"]


class Reporter:
    """Where the trainer's output goes.

    Args:
        stream: where to print (standard output by default).
        verbose: print one line per epoch (and grad-norm tables).
        progress: tqdm progress bars; ``None``: when verbose and ``stream`` is a terminal.
    """

    def __init__(self, stream: TextIO | None, verbose: bool, progress: bool | None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.verbose = verbose
        if progress is None:
            progress = verbose and bool(getattr(self.stream, "isatty", lambda: False)())
        self.progress = progress

    def say(self, message: str) -> None:
        """Print a line (through tqdm while bars are shown, so they are not torn)."""
        if self.progress:
            tqdm.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def bar(self, total: int, initial: int, desc: str, unit: str, leave: bool = True) -> tqdm:
        """A progress bar, or a silent stand-in when bars are off."""
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=self.stream,
                    disable=not self.progress, dynamic_ncols=True)


def epoch_line(row: dict, epochs: int) -> str:
    """One metrics row as the line printed after each epoch."""
    parts = [f"epoch {row['epoch']}/{epochs}", f"step {row['step']}", f"lr {row['lr']:.4g}",
             f"train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%"]
    if "val_loss" in row:
        parts.append(f"val loss {row['val_loss']:.4f} acc {100 * row['val_acc']:.2f}%")
    parts.append(f"test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:.2f}%")
    parts.append(f"{row['images_per_sec']:.0f} img/s")
    return " | ".join(parts)
