"""``python -m seal_env.serve``: see :mod:`seal_env.serve`."""

from seal_env.serve.cli import main

raise SystemExit(main())
