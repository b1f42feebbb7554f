"""The ``minires`` command line.

Sub-commands are small functions registered in :func:`build_parser`; each
returns a process exit code:

* ``minires info``: versions, backend, devices;
* ``minires train``: train a model on CIFAR-10 (see :mod:`minires.train`);
* ``minires eval``: test accuracy and loss of a saved checkpoint;
* ``minires compare``: train plain and residual twins side by side (see
  :mod:`minires.diagnostics.compare`);
* ``minires gradflow``: per-layer gradient norms at initialisation, plain
  versus residual, in seconds.

Exit codes: 0 success; 1 a runtime failure (data missing, ...); 2 a usage
error found before any work (unknown model, impossible batch size, output
directory not writable, damaged or mismatching checkpoint); 130 interrupted
by Ctrl-C (after saving a checkpoint).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

from . import __version__, backend


def cmd_info(args: argparse.Namespace) -> int:
    """Print versions, the active backend, devices and, when there is no GPU, why."""
    import numpy

    print(f"minires {__version__}")
    print(f"python  {platform.python_version()} ({sys.executable})")
    print(f"numpy   {numpy.__version__}")
    try:
        import cupy  # noqa: F401

        cupy_version = cupy.__version__
    except Exception:
        cupy_version = "not installed"
    print(f"cupy    {cupy_version}")
    env = os.environ.get("MINIRES_DEVICE", "")
    print(f"MINIRES_DEVICE = {env or '(unset: auto)'}")
    if backend.cupy_available():
        cp = backend.get_array_module(backend.to_device(numpy.zeros(1), "cuda"))
        count = cp.cuda.runtime.getDeviceCount()
        for i in range(count):
            props = cp.cuda.runtime.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            print(f"device  cuda:{i}  {name}  {props['totalGlobalMem'] / 2**30:.1f} GiB")
        print("GPU backend: available (CuPy)")
    else:
        print("device  cpu")
        print(f"GPU backend: unavailable: {backend.cupy_unavailable_reason()}")
    try:
        dev = backend.default_device()
        print(f"active backend: {'cupy' if dev.type == 'cuda' else 'numpy'} (default device {dev})")
    except Exception as exc:  # MINIRES_DEVICE=cuda without a GPU: say so, do not crash info
        print(f"active backend: none: {exc}")
        return 1
    return 0


# ---------------------------------------------------------------------------
# train / eval
# ---------------------------------------------------------------------------

# Arguments that define a run (minires.train.RUN_DEFINING) default to None so
# that, with --resume, "not given" (take the checkpoint's) differs from "given".
_FRESH_DEFAULTS = {"model": "resnet20", "recipe": "paper", "seed": 0, "val_split": 0, "augment": True}


def _fail(command: str, message: str, code: int = 2) -> int:
    print(f"minires {command}: error: {message}", file=sys.stderr)
    return code


def _integer(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    return value


def _banner(dev, model) -> None:
    """The active backend/device and the model's one-line summary."""
    from .summary import summary

    module = "cupy" if dev.type == "cuda" else "numpy"
    print(f"backend: {module} | device: {dev}")
    print(summary(model, (3, 32, 32)).summary_line())


def _load_data(data_dir, download: bool, command: str):
    """CIFAR-10 from ``data_dir`` (or the default location); ``(data, None)`` or ``(None, exit_code)``."""
    from .data import CIFARError, load_cifar10, resolve_data_dir

    root = resolve_data_dir(data_dir)
    try:
        # "meta": every batch file must hold the number of images batches.meta
        # declares (10,000 in the official files, fewer in the tests' small
        # synthetic CIFAR-10), so a short but readable file is still refused.
        data = load_cifar10(root, download=download, examples_per_batch="meta")
    except CIFARError as exc:
        return None, _fail(command, str(exc), code=1)
    print(f"data: {data.train_images.shape[0]} training / {data.test_images.shape[0]} test images from {root}")
    return data, None


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model; every usage error is reported before the data is loaded."""
    from .checkpoint import CheckpointError, load_checkpoint
    from .train import RUN_DEFINING, ConfigError, Trainer, TrainConfig, TrainingDiverged, build_model, prepare_out_dir

    given = {
        "model": args.model, "recipe": args.recipe, "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "seed": args.seed, "limit_train": args.limit_train, "limit_test": args.limit_test,
        "val_split": args.val_split, "augment": None if args.augment is None else bool(args.augment),
    }
    free = {"device": args.device, "data_dir": args.data_dir, "grad_norms": args.grad_norms}
    try:
        out = prepare_out_dir(args.out, resume=args.resume, overwrite=args.overwrite)
        if args.resume:
            # The checkpoint's configuration is the run's; flags may only repeat it.
            saved = load_checkpoint(out / "checkpoint.npz")
            if not isinstance(saved.get("config"), dict):
                raise CheckpointError(f"{out / 'checkpoint.npz'} has no training configuration")
            config = TrainConfig.from_dict(saved["config"])
            clashes = [
                f"--{k.replace('_', '-')} {v!r} (the run uses {getattr(config, k)!r})"
                for k, v in given.items() if v is not None and k in RUN_DEFINING and v != getattr(config, k)
            ]
            if clashes:
                raise ConfigError(
                    f"cannot --resume {out} with different settings: " + "; ".join(clashes)
                    + ". Drop these flags, or train into a new --out."
                )
        else:
            config = TrainConfig(**{k: (_FRESH_DEFAULTS.get(k) if v is None else v) for k, v in given.items()})
        for key, value in free.items():
            if value is not None:
                setattr(config, key, value)
        config.validate()
        config.check_sizes()
        try:
            dev = backend.device(config.device)
        except (ValueError, backend.DeviceError) as exc:
            raise ConfigError(f"--device {config.device}: {exc}") from exc
        model = build_model(config).to(dev)
    except (ConfigError, CheckpointError) as exc:
        return _fail("train", str(exc))

    _banner(dev, model)
    data, code = _load_data(config.data_dir, not args.no_download, "train")
    if data is None:
        return code
    quiet = bool(args.quiet)
    try:
        trainer = Trainer(config, data, out, resume=args.resume, overwrite=args.overwrite, model=model,
                          progress=(not quiet and sys.stdout.isatty()), verbose=not quiet)
    except (ConfigError, CheckpointError) as exc:
        return _fail("train", str(exc))
    cfg = trainer.config
    if trainer.finished:
        print(f"run: {out} is already complete ({cfg.epochs} epochs); nothing to do")
    elif not quiet:
        start = f"resuming at epoch {trainer.epoch + 1}, step {trainer.global_step}" if args.resume else "starting"
        print(f"run: {out} | recipe {cfg.recipe}: {cfg.epochs} epochs x {trainer.steps_per_epoch} steps, "
              f"batch {cfg.batch_size}, lr {cfg.lr} | {start}")
    try:
        rows = trainer.fit()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except TrainingDiverged as exc:
        return _fail("train", str(exc), code=1)
    if rows:
        last = rows[-1]
        print(f"done: {len(rows)} epochs, test accuracy {100 * last['test_acc']:.2f}%, "
              f"test loss {last['test_loss']:.4f}; checkpoint {trainer.checkpoint_path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Print the test accuracy and loss of a checkpoint's model."""
    from .checkpoint import CheckpointError, load_checkpoint
    from .data import DataLoader, subset
    from .train import CHECKPOINT_KIND, ConfigError, TrainConfig, build_model, evaluate

    try:
        saved = load_checkpoint(args.checkpoint)
        if saved.get("kind") != CHECKPOINT_KIND or not isinstance(saved.get("config"), dict):
            raise CheckpointError(f"{args.checkpoint} is not a minires training checkpoint")
        config = TrainConfig.from_dict(saved["config"])
        dev = backend.device(args.device)
        model = build_model(config)
        try:
            model.load_state_dict(saved["model"])
        except (RuntimeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{args.checkpoint}: the saved weights do not fit model {config.model!r}: {exc}")
        model.to(dev)
        if args.batch_size is not None and args.batch_size < 1:
            raise ConfigError(f"--batch-size must be a positive integer, got {args.batch_size}")
        if args.limit_test is not None and args.limit_test < 1:
            raise ConfigError(f"--limit-test must be a positive integer, got {args.limit_test}")
    except (ConfigError, CheckpointError, ValueError, backend.DeviceError) as exc:
        return _fail("eval", str(exc))

    _banner(dev, model)
    epoch, total = saved.get("epoch"), config.epochs
    print(f"checkpoint: {args.checkpoint} (model {config.model}, epoch {epoch}/{total}, "
          f"step {saved.get('global_step')})")
    data, code = _load_data(args.data_dir if args.data_dir is not None else config.data_dir,
                            not args.no_download, "eval")
    if data is None:
        return code
    n_test = data.test_images.shape[0]
    if args.limit_test is not None and args.limit_test > n_test:
        return _fail("eval", f"--limit-test {args.limit_test} is more than the {n_test} test images")
    images, labels = subset(data.test_images, data.test_labels, args.limit_test)
    loader = DataLoader(images, labels, batch_size=args.batch_size or config.eval_batch_size, shuffle=False,
                        device=dev)
    loss, acc = evaluate(model, loader)
    print(f"test accuracy: {100 * acc:.2f}% | test loss: {loss:.4f} | {images.shape[0]} images")
    return 0


def _add_train_parser(sub) -> None:
    from . import recipes

    p = sub.add_parser(
        "train", help="train a model on CIFAR-10",
        description="Train a model on CIFAR-10. Writes config.json, checkpoint.npz, metrics.jsonl, metrics.csv "
                    "(and grad_norms.jsonl) into --out.",
    )
    p.add_argument("--model", help="model name (default resnet20; see minires.models.names())")
    p.add_argument("--recipe", choices=recipes.names(), help="training recipe (default paper)")
    p.add_argument("--epochs", type=_integer, help="epochs (default: the recipe's, 164 for paper)")
    p.add_argument("--batch-size", type=_integer, help="batch size (default: the recipe's, 128)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's, 0.1)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--data-dir", help="directory containing cifar-10-batches-py (default: $MINIRES_DATA or "
                                      "~/.cache/minires)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading CIFAR-10")
    p.add_argument("--out", required=True, help="run directory, e.g. runs/resnet20")
    p.add_argument("--seed", type=_integer, help="random seed (default 0)")
    p.add_argument("--grad-norms", type=_integer, metavar="N",
                   help="every N steps print per-layer gradient norms and log them to grad_norms.jsonl")
    p.add_argument("--limit-train", type=_integer, metavar="K", help="train on the first K images")
    p.add_argument("--limit-test", type=_integer, metavar="K", help="evaluate on the first K test images")
    p.add_argument("--val-split", type=_integer, nargs="?", const=5000, metavar="N",
                   help="hold out N training images for validation (N defaults to 5000, the paper's 45k/5k)")
    p.add_argument("--no-augment", dest="augment", action="store_const", const=False,
                   help="no random crops/flips")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a run already saved in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(func=cmd_train, augment=None)


def _add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="test accuracy and loss of a checkpoint",
                       description="Evaluate a checkpoint written by `minires train` on the CIFAR-10 test set.")
    p.add_argument("--checkpoint", required=True, help="path to checkpoint.npz")
    p.add_argument("--data-dir", help="directory containing cifar-10-batches-py (default: the run's)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading CIFAR-10")
    p.add_argument("--limit-test", type=_integer, metavar="K", help="evaluate on the first K test images")
    p.add_argument("--batch-size", type=_integer, help="evaluation batch size (memory only)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_eval)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minires", description="minires: residual networks from scratch in NumPy/CuPy, trained and taken apart"
    )
    parser.add_argument("--version", action="version", version=f"minires {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_info = sub.add_parser("info", help="versions, backend, devices")
    p_info.set_defaults(func=cmd_info)
    _add_train_parser(sub)
    _add_eval_parser(sub)
    # The diagnostics own their commands' arguments; importing them here costs
    # nothing heavy (matplotlib is only imported when a plot is drawn).
    from .diagnostics.compare import add_compare_parser, add_gradflow_parser

    add_compare_parser(sub)
    add_gradflow_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
