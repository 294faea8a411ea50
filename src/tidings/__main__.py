"""``python -m tidings``: the same as the ``tidings`` command."""

from tidings.cli import main

raise SystemExit(main())
