"""``python -m analysis --experiment NAME ...``; see ``python -m analysis --help``."""

from analysis.cli import main

raise SystemExit(main())
