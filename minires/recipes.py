"""Moved to :mod:`minires.train.recipes`; this name stays for code that imports ``minires.recipes``."""

from .train.recipes import *  # noqa: F401,F403
from .train.recipes import __all__  # noqa: F401
