"""``python -m minires ...`` is the same as the ``minires`` console script."""

from .cli import main

raise SystemExit(main())
