"""``python -m analysis --experiment NAME ...``; see ``python -m analysis --help``."""

import gc

from analysis.cli import main

code = main()
# The figures and the report are written: skip Python's garbage collection over the ~2,300 modules MLflow imports
# while it tears them down (about half a second of exit); the OS takes the memory back as from any process.
gc.freeze()
raise SystemExit(code)
