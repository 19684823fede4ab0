"""``python -m papernotes`` is the same as the ``papernotes`` console script."""

from papernotes.cli import main

raise SystemExit(main())
