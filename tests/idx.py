"""Write tiny MNIST-format (IDX) datasets for tests.

``write_idx_dataset(folder, n_train, n_test)`` writes the four standard files
(``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, with ``.gz`` appended when ``gzip=True``) holding random 28x28 uint8 images and
labels 0..9, and returns what it wrote.

Load such a folder as ``pipeline.data.load_dataset("idx", data_dir=folder)``: a copy of your own. Under an
official name (``"mnist"``, ``"fashion-mnist"``) its content does not match the known sums and is refused, unless
a test replaces those sums.
"""

from __future__ import annotations

import gzip as gzip_module
import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FILE_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def image_bytes(images: np.ndarray, magic: int = 0x00000803) -> bytes:
    """IDX3 bytes of uint8 images shaped (n, rows, cols)."""
    images = np.asarray(images, dtype=np.uint8)
    n, rows, cols = images.shape
    return struct.pack(">IIII", magic, n, rows, cols) + images.tobytes()


def label_bytes(labels: np.ndarray, magic: int = 0x00000801) -> bytes:
    """IDX1 bytes of uint8 labels shaped (n,)."""
    labels = np.asarray(labels, dtype=np.uint8)
    return struct.pack(">II", magic, len(labels)) + labels.tobytes()


def write_file(path: Path, raw: bytes, gzip: bool, mtime: int = 0) -> Path:
    """Write ``raw`` to ``path`` (gzip-compressed when ``gzip``; ``path`` is used as given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip_module.compress(raw, mtime=mtime) if gzip else raw)
    return path


@dataclass
class IdxDataset:
    """What :func:`write_idx_dataset` wrote. Arrays are the uint8 content; sums are hex SHA-256."""

    folder: Path
    x_train: np.ndarray  # (n_train, 28, 28) uint8
    t_train: np.ndarray  # (n_train,) uint8
    x_test: np.ndarray
    t_test: np.ndarray
    paths: dict[str, Path] = field(default_factory=dict)  # base name -> written file
    raw: dict[str, bytes] = field(default_factory=dict)  # base name -> decompressed IDX bytes
    raw_sha256: dict[str, str] = field(default_factory=dict)
    file_sha256: dict[str, str] = field(default_factory=dict)  # of the file as written (gz or raw)

    @property
    def checksum(self) -> str:
        """SHA-256 over the four decompressed files in the standard order (cf. dataset_checksum)."""
        h = hashlib.sha256()
        for base in FILE_NAMES:
            h.update(self.raw[base])
        return h.hexdigest()


def write_idx_dataset(folder: str | Path, n_train: int, n_test: int, gzip: bool = False,
                      seed: int = 0) -> IdxDataset:
    """Write a random tiny dataset as the four standard IDX files in ``folder`` (created if needed)."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    t_train = rng.integers(0, 10, size=n_train, dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    t_test = rng.integers(0, 10, size=n_test, dtype=np.uint8)
    ds = IdxDataset(folder, x_train, t_train, x_test, t_test)
    contents = (image_bytes(x_train), label_bytes(t_train), image_bytes(x_test), label_bytes(t_test))
    for base, raw in zip(FILE_NAMES, contents, strict=True):
        path = write_file(folder / (base + ".gz" if gzip else base), raw, gzip)
        ds.paths[base] = path
        ds.raw[base] = raw
        ds.raw_sha256[base] = hashlib.sha256(raw).hexdigest()
        ds.file_sha256[base] = hashlib.sha256(path.read_bytes()).hexdigest()
    return ds
