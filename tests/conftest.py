"""Shared fixtures. Tests run in a loopback-only network namespace (see README): nothing can download."""

from __future__ import annotations

from pathlib import Path

import pytest

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The real Fashion-MNIST files of Debian's dataset-fashion-mnist; missing data fails loudly, never skips."""
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"real Fashion-MNIST is missing in {FASHION_DIR}: apt-get install dataset-fashion-mnist")
    return FASHION_DIR
