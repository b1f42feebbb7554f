"""Write a small CIFAR-10 sample as .npy files, to carry to a GPU machine that has no network.

The GPU acceptance run (``benchmarks/gpu_acceptance.sh``) trains a ResNet-20
for a few minutes on real images. The machine it runs on cannot download
CIFAR-10, and what travels with the source tree is limited (64 MiB in all),
so this script keeps the first 10,000 training images (CIFAR-10's first batch
file, all ten classes in roughly equal numbers) and the first 2,000 test
images: 37 MB of uint8 pixels.

    MINIRES_DATA=/work/shared/data python benchmarks/prepare_gpu_data.py            # -> gpu_data/
    python benchmarks/prepare_gpu_data.py --data-dir ~/data --out gpu_data --train 10000 --test 2000

Files written in ``--out`` (ignored by git): ``train_images.npy``
``(N, 3, 32, 32)`` uint8, ``train_labels.npy`` ``(N,)`` uint8 (0..9), the
same for ``test_``, and ``manifest.json`` saying where they came from.
Nothing is downloaded: CIFAR-10 must already be in ``--data-dir`` (default
``$MINIRES_DATA``, as for ``minires train``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from minires.data import load_cifar10
from minires.data.errors import CIFARNotFoundError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "gpu_data"
NAMES = ("train_images", "train_labels", "test_images", "test_labels")


def sample(data, train: int, test: int) -> dict[str, np.ndarray]:
    """The first ``train`` training and ``test`` test examples, as compact uint8 arrays."""
    arrays = {
        "train_images": data.train_images[:train],
        "train_labels": data.train_labels[:train],
        "test_images": data.test_images[:test],
        "test_labels": data.test_labels[:test],
    }
    # Labels are 0..9: uint8 is a quarter of int64's bytes. The loader converts them back.
    return {name: np.ascontiguousarray(a, dtype=np.uint8) for name, a in arrays.items()}


def write(arrays: dict[str, np.ndarray], out: Path, source: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        np.save(out / f"{name}.npy", array)
    manifest = {
        "source": source,
        "what": "first examples of CIFAR-10, in file order",
        **{name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in arrays.items()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None,
                        help="directory holding cifar-10-batches-py (default $MINIRES_DATA)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where to write (default {DEFAULT_OUT})")
    parser.add_argument("--train", type=int, default=10000, help="training images to keep (default 10000)")
    parser.add_argument("--test", type=int, default=2000, help="test images to keep (default 2000)")
    args = parser.parse_args(argv)
    if not (1 <= args.train <= 50000 and 1 <= args.test <= 10000):
        parser.error(f"--train must be in 1..50000 and --test in 1..10000, got {args.train} and {args.test}")
    try:
        # cache=False: read the batch files, write nothing beside them.
        data = load_cifar10(args.data_dir, download=False, cache=False, progress=False)
    except CIFARNotFoundError as exc:
        print(f"prepare_gpu_data.py: {exc}", file=sys.stderr)
        return 1
    arrays = sample(data, args.train, args.test)
    write(arrays, args.out, str(data.source))
    size = sum(a.nbytes for a in arrays.values()) / 2**20
    print(f"wrote {', '.join(NAMES)} ({size:.1f} MiB) and manifest.json to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
