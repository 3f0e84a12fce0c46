"""The per-user cache folder: what bnsweep keeps because it can read it again faster than fetch it."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/bnsweep``, else ``~/.cache/bnsweep``: the data sets downloaded (``pipeline.data``) and the
    metric histories of ended runs (``analysis.histories``)."""
    base = os.environ.get("XDG_CACHE_HOME") or ""
    return (Path(base) if base else Path.home() / ".cache") / "bnsweep"
