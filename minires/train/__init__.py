"""Training: epochs of SGD steps, evaluation, metrics files, checkpoints, exact resume.

Read :mod:`.step` first (one training step and one evaluation pass), then
:mod:`.trainer` (the loop that calls them). The other modules each do one job::

    config.py       TrainConfig: what defines a run; ConfigError; build_model
    recipes.py      the paper's and the fast optimiser settings and lr schedules
    run_dir.py      the run directory: its files, checks before any work
    metrics.py      metrics.jsonl / metrics.csv, grad_norms.jsonl
    state.py        TrainingState, EpochProgress: what a checkpoint holds
    checkpoint.py   the checkpoint file format (npz + JSON, no pickle, SHA-256)
    resume.py       read a checkpoint back, check it continues this run
    divergence.py   TrainingDiverged: stop at a NaN/inf loss, never save ruined weights
    interrupt.py    Ctrl-C: finish the step, save, stop
    progress.py     progress bars and printed lines
    speed.py        the CPU speed helpers a step runs under
    callbacks.py    Callback: hooks after every step and epoch
"""

from .callbacks import Callback
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import CIFAR10_TRAIN_SIZE, RUN_DEFINING, ConfigError, TrainConfig, build_model
from .divergence import TrainingDiverged
from .metrics import metric_columns, write_metrics
from .resume import read_training_state
from .run_dir import CHECKPOINT_NAME, prepare_out_dir, start_run_dir
from .state import CHECKPOINT_KIND, EpochProgress, TrainingState
from .step import evaluate, train_step
from .trainer import Trainer

__all__ = [
    "ConfigError",
    "TrainingDiverged",
    "TrainConfig",
    "Callback",
    "Trainer",
    "train_step",
    "evaluate",
    "build_model",
    "prepare_out_dir",
    "start_run_dir",
    "metric_columns",
    "write_metrics",
    "TrainingState",
    "EpochProgress",
    "read_training_state",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "RUN_DEFINING",
    "CHECKPOINT_KIND",
    "CHECKPOINT_NAME",
    "CIFAR10_TRAIN_SIZE",
]
