"""TEMPORARY re-export while the training code moves (minires.fast.allocator is the home)."""

from .fast.allocator import keep_freed_memory  # noqa: F401
