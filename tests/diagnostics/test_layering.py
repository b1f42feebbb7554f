"""diagnostics sits below training: importing it loads neither minires.train nor minires.cli."""

from __future__ import annotations

import subprocess
import sys


def test_diagnostics_imports_neither_train_nor_cli():
    code = ("import sys, minires.diagnostics, minires.diagnostics.compare, minires.diagnostics.plots; "
            "print(sorted(m for m in sys.modules if m.startswith(('minires.train', 'minires.cli'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_old_import_paths_still_work():
    # Tutorials import minires.recipes; notebooks and benchmarks import these names from minires.train.
    from minires import recipes
    from minires.train import (  # noqa: F401
        Callback,
        ConfigError,
        TrainConfig,
        Trainer,
        TrainingDiverged,
        build_model,
        evaluate,
        metric_columns,
    )
    from minires.train import recipes as train_recipes

    assert recipes.get_recipe is train_recipes.get_recipe and recipes.build_schedule is train_recipes.build_schedule
