"""Load MNIST and Fashion-MNIST from the four standard IDX files, verified.

Public API
----------
* ``DATASETS``: the dataset names, ``("mnist", "fashion-mnist", "idx")``. ``"idx"`` is a copy of your own: any
  four IDX files of 28x28 images in 10 classes (KMNIST, EMNIST digits, a re-made MNIST), from ``data_dir`` only.
* ``VERIFIED``: the names whose files are checked against known sums (``"idx"`` is not).
* ``load_dataset(name, data_dir=None)`` -> ``((x_train, t_train), (x_test, t_test))``: images float32 in
  [0, 1] of shape (N, 784), labels int64 in 0..9.
* ``dataset_checksum(name, data_dir=None)`` -> sha256 (hex) of the four *decompressed* IDX files
  concatenated in the order train-images, train-labels, t10k-images, t10k-labels; the same whether the
  files are gzipped or not. Cached in the process per file path, inode, size and mtime, so calling it after
  ``load_dataset`` costs only a few ``stat`` calls.
* ``load_dataset_with_checksum(name, data_dir=None)`` -> ``(splits, checksum)`` from the same bytes.
* ``first=(n_train, n_test)`` (keyword of both loaders): only the first ``n_train`` training and ``n_test`` test
  samples (or all, if a split has fewer), converted to float32 without converting the rest; the files are still
  read and verified whole. The same values as slicing the full load.
* ``split_sizes(name, data_dir=None)`` -> ``(n_train, n_test)`` from the image files' headers alone (what a
  command checks its sizes against before it starts anything); files still to be downloaded count as the official
  60000 / 10000. The content is verified when it is loaded.
* ``DatasetError`` (a ``ValueError``): every failure; its message is one line.

All three functions take ``download=True`` (keyword): ``False`` never touches the network.

Where the files are looked for, in this order (the first place holding all four files is used; each file
may be gzipped, ``<file>.gz``, or not; if both exist the ``.gz`` is read):

1. ``data_dir``, when given: the folder ``data_dir/<name>/`` if it holds the four files, else ``data_dir``
   itself (``"idx"``: ``data_dir`` itself, and it must be given). When ``data_dir`` is given nothing else is
   searched and nothing is downloaded: if it lacks the files that is an error naming it.
2. ``$BNSWEEP_DATA_DIR``: same rule (``$BNSWEEP_DATA_DIR/<name>/`` first, then the folder itself). The four
   files have the same names in both datasets, so a folder holding ``mnist/`` and ``fashion-mnist/`` serves
   both. A value that lacks the files is passed over (it is listed in the not-found error).
3. The per-user cache: ``$XDG_CACHE_HOME/bnsweep/<name>`` (else ``~/.cache/bnsweep/<name>``).
4. The system folder ``/usr/share/datasets/<name>`` (Debian's ``dataset-fashion-mnist`` installs there).
5. Otherwise the missing files are downloaded into the cache from public mirrors (``download=True``),
   each written to a temporary file in the cache folder, checked, then moved in place with ``os.replace``:
   a failed or corrupt download never leaves a file under the final name.

Verification, on every read (never silently wrong data):

* structure: IDX magic numbers (2051 images, 2049 labels), 28x28 images, file length equal to the header's
  count, as many labels as images, labels in 0..9; gzip streams must be complete and pass their CRC.
* content, one rule: MNIST and Fashion-MNIST are the official files, whose *decompressed* bytes must match the
  known SHA-256 (so any copy of them, gzipped, re-compressed or not, is accepted, and nothing else is: the
  message names ``--dataset idx --data-dir DIR`` for a copy of your own). ``"idx"`` gets the structural checks
  only; a run records it as ``dataset_verified=false`` with its own ``dataset_sha256``. A download is checked
  against the upstream ``.gz`` sum, or its decompressed content against the decompressed one.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracking.cache import user_cache_dir

__all__ = [
    "DATASETS",
    "DatasetError",
    "dataset_checksum",
    "load_dataset",
    "load_dataset_with_checksum",
    "split_sizes",
    "VERIFIED",
]

log = logging.getLogger(__name__)

Split = tuple[np.ndarray, np.ndarray]
Splits = tuple[Split, Split]

DATASETS = ("mnist", "fashion-mnist", "idx")

#: The four files, in the fixed order used by :func:`dataset_checksum`.
FILE_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

ENV_DATA_DIR = "BNSWEEP_DATA_DIR"
DEFAULT_SYSTEM_DATA_ROOT = Path("/usr/share/datasets")
#: Root of the system-wide dataset folders; a module attribute so tests can point it elsewhere.
SYSTEM_DATA_ROOT = DEFAULT_SYSTEM_DATA_ROOT

IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension
ROWS = COLS = 28
N_CLASSES = 10
GZIP_MAGIC = b"\x1f\x8b"

#: The samples of the official MNIST and Fashion-MNIST splits (train, test).
OFFICIAL_SPLITS = (60000, 10000)

DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


class DatasetError(ValueError):
    """A dataset could not be found, downloaded or verified. The message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class FileSums:
    """Known SHA-256 sums of one file: of its decompressed IDX content and of the upstream ``.gz``."""

    raw_sha256: str | None = None
    gz_sha256: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """What is known about one dataset: file sums, download mirrors, how to install it."""

    name: str
    sums: dict[str, FileSums]  # keyed by the names in FILE_NAMES
    mirrors: tuple[str, ...]  # base URLs; a file's URL is base + name + ".gz"
    install_hint: str = ""


# MNIST: the SHA-256 of the four upstream .gz files as recorded by tensorflow-datasets
# (tensorflow/datasets, tensorflow_datasets/url_checksums/mnist.txt; sizes 9912422, 28881, 1648877, 4542
# bytes, the sizes LeCun's page gives), and of their decompressed content (47040016, 60008, 7840016 and 10008
# bytes) as several public projects record them, among them downloaders that pair each .gz sum with its
# decompressed sum and size.
# Fashion-MNIST: decompressed sums computed from Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1
# (60000/10000 images of 28x28, labels 0..9); Debian recompressed the files, its .gz are exactly the upstream
# size minus the stored file name. The .gz sums are the upstream ones recorded by tensorflow-datasets
# (tensorflow_datasets/url_checksums/fashion_mnist.txt).
SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        sums={
            "train-images-idx3-ubyte": FileSums(
                raw_sha256="ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                gz_sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            ),
            "train-labels-idx1-ubyte": FileSums(
                raw_sha256="65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                gz_sha256="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            ),
            "t10k-images-idx3-ubyte": FileSums(
                raw_sha256="0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                gz_sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            ),
            "t10k-labels-idx1-ubyte": FileSums(
                raw_sha256="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                gz_sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            ),
        },
        mirrors=(
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
        ),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        sums={
            "train-images-idx3-ubyte": FileSums(
                raw_sha256="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                gz_sha256="3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            ),
            "train-labels-idx1-ubyte": FileSums(
                raw_sha256="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                gz_sha256="a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            ),
            "t10k-images-idx3-ubyte": FileSums(
                raw_sha256="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                gz_sha256="346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            ),
            "t10k-labels-idx1-ubyte": FileSums(
                raw_sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                gz_sha256="67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            ),
        },
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ),
        install_hint="apt-get install dataset-fashion-mnist",
    ),
    "idx": DatasetSpec(name="idx", sums={}, mirrors=()),
}
VERIFIED = tuple(name for name, spec in SPECS.items() if spec.sums)


# --------------------------------------------------------------------------------------------- locating


@dataclass(frozen=True)
class _Location:
    """A folder that may hold the four files, and where it came from (for messages)."""

    folder: Path
    kind: str  # "data_dir", "env", "cache", "system"


def _spec(name: str) -> DatasetSpec:
    if name not in SPECS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return SPECS[name]


def cache_dir(name: str) -> Path:
    """The per-user cache folder of a dataset (where downloads go)."""
    return user_cache_dir() / name


def _file_in(folder: Path, base: str) -> Path | None:
    """The path of one of the four files in ``folder`` (``.gz`` preferred), or None."""
    for candidate in (folder / (base + ".gz"), folder / base):
        if candidate.is_file():
            return candidate
    return None


def _files_in(folder: Path) -> tuple[list[Path], list[str]]:
    """(found paths, missing base names) of the four files in ``folder``."""
    found: list[Path] = []
    missing: list[str] = []
    for base in FILE_NAMES:
        path = _file_in(folder, base)
        if path is None:
            missing.append(base)
        else:
            found.append(path)
    return found, missing


def _candidates(name: str, root: Path, kind: str) -> list[_Location]:
    """``root/<name>/`` then ``root`` itself."""
    return [_Location(root / name, kind), _Location(root, kind)]


def _describe(folder: Path, missing: list[str]) -> str:
    if not folder.is_dir():
        return f"{folder} (no such folder)"
    if len(missing) == len(FILE_NAMES):
        return f"{folder} (no IDX files)"
    return f"{folder} (missing {', '.join(missing)})"


def _supply_hint(spec: DatasetSpec) -> str:
    files = ", ".join(base + ".gz" for base in FILE_NAMES)
    if not spec.sums:
        return f"put the four IDX files ({files}; gzipped or not) in that folder"
    ways = [f"put the four IDX files ({files}; gzipped or not) in a folder and pass --data-dir DIR "
            f"or set {ENV_DATA_DIR}=DIR (DIR may also hold a {spec.name}/ subfolder with them)"]
    if spec.install_hint:
        ways.append(f"run `{spec.install_hint}`")
    if spec.mirrors:
        ways.append(f"download them from {' or '.join(spec.mirrors)}")
    return "; or ".join(ways)


def _locate(spec: DatasetSpec, data_dir: str | os.PathLike[str] | None,
            download: bool) -> tuple[list[Path], _Location]:
    """Find the four files (downloading them into the cache if allowed and needed)."""
    if not spec.sums:  # a copy of the user's own: where they say, nowhere else
        if data_dir is None:
            raise DatasetError(f"--dataset {spec.name} reads your own IDX files; name their folder with --data-dir DIR")
        folder = Path(data_dir).expanduser()
        found, missing = _files_in(folder)
        if missing:
            raise DatasetError(f"data dir {_describe(folder, missing)} does not hold the four IDX files; "
                               + _supply_hint(spec))
        return found, _Location(folder, "data_dir")
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        looked = []
        for loc in _candidates(spec.name, root, "data_dir"):
            found, missing = _files_in(loc.folder)
            if not missing:
                return found, loc
            looked.append(_describe(loc.folder, missing))
        raise DatasetError(
            f"data dir {root} does not hold the {spec.name} files: looked in {'; '.join(looked)}; "
            + _supply_hint(spec)
        )

    locations: list[_Location] = []
    env_value = os.environ.get(ENV_DATA_DIR)
    if env_value:
        locations += _candidates(spec.name, Path(env_value).expanduser(), "env")
    cache = _Location(cache_dir(spec.name), "cache")
    locations.append(cache)
    locations.append(_Location(Path(SYSTEM_DATA_ROOT) / spec.name, "system"))

    looked = [] if env_value else [f"${ENV_DATA_DIR} (not set)"]
    for loc in locations:
        found, missing = _files_in(loc.folder)
        if not missing:
            return found, loc
        label = f"${ENV_DATA_DIR}=" if loc.kind == "env" else ""
        looked.append(label + _describe(loc.folder, missing))

    where = "looked in " + "; ".join(looked)
    if not download:
        raise DatasetError(f"{spec.name} data not found ({where}); downloads are off; {_supply_hint(spec)}")
    failures = _download_missing(spec, cache.folder)
    found, missing = _files_in(cache.folder)
    if missing:
        reasons = "; ".join(failures) if failures else "no mirror configured"
        raise DatasetError(
            f"{spec.name} data not found ({where}) and the download failed ({reasons}); {_supply_hint(spec)}"
        )
    return found, cache


# ------------------------------------------------------------------------------------------ downloading


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _download_missing(spec: DatasetSpec, folder: Path) -> list[str]:
    """Download every file missing from ``folder``; return one line per failed attempt."""
    failures: list[str] = []
    _, missing = _files_in(folder)
    if not missing:
        return failures
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [f"cannot create cache folder {folder}: {_one_line(exc)}"]
    for base in missing:
        for mirror in spec.mirrors:
            url = mirror + base + ".gz"
            try:
                _download_file(url, folder / (base + ".gz"), spec.sums.get(base, FileSums()))
                log.info("downloaded %s", url)
                break
            except (OSError, http.client.HTTPException, ValueError, zlib.error) as exc:
                failures.append(f"{url}: {_one_line(exc)}")
        else:
            break  # a file no mirror could give: the dataset is incomplete, stop here
    return failures


def _download_file(url: str, dest: Path, sums: FileSums) -> None:
    """Fetch ``url`` to ``dest`` atomically: temp file in the same folder, verify, ``os.replace``."""
    if not (sums.gz_sha256 or sums.raw_sha256):
        raise DatasetError(f"no known checksum for {dest.name}; refusing to download unverifiable data")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            length = resp.headers.get("Content-Length")
            received = 0
            while chunk := resp.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
                received += len(chunk)
            if length is not None and length.isdigit() and received != int(length):
                raise DatasetError(f"incomplete download: got {received} of {length} bytes")
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if got != sums.gz_sha256:
            # A re-compressed copy is fine if its decompressed content is the known one.
            raw_ok = False
            if sums.raw_sha256:
                try:
                    raw = _gunzip(tmp.read_bytes(), tmp)
                    raw_ok = hashlib.sha256(raw).hexdigest() == sums.raw_sha256
                except DatasetError:
                    raw_ok = False
            if not raw_ok:
                raise DatasetError(f"checksum mismatch (sha256 {got[:16]}...)")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- reading


def _gunzip(data: bytes, path: Path) -> bytes:
    """Decompress all gzip members of ``data``; truncation and corruption raise DatasetError."""
    parts: list[bytes] = []
    rest = data
    while rest:
        d = zlib.decompressobj(wbits=31)
        try:
            parts.append(d.decompress(rest))
            parts.append(d.flush())
        except zlib.error as exc:
            raise DatasetError(f"{path}: corrupt gzip data ({_one_line(exc)})") from None
        if not d.eof:
            raise DatasetError(f"{path}: truncated gzip file (ends before the end of the compressed data)")
        rest = d.unused_data
        if rest and not rest.startswith(GZIP_MAGIC):
            if rest.strip(b"\x00"):
                raise DatasetError(f"{path}: trailing garbage after the gzip data")
            break  # zero padding after the last member, as gzip(1) tolerates
    return b"".join(parts)


@dataclass
class _FileRead:
    path: Path
    raw: bytes
    gz_sha256: str | None  # of the file as stored, when it was gzipped
    raw_sha256: str


def _fix_hint(loc: _Location, spec: DatasetSpec) -> str:
    if loc.kind == "cache":
        return "delete it and rerun to download it again"
    if loc.kind == "system" and spec.install_hint:
        return f"reinstall the package (`{spec.install_hint.replace('install', 'install --reinstall', 1)}`)"
    if not spec.sums:
        return "fix or replace it"
    mirrors = " or ".join(spec.mirrors)
    return "replace it with the original file" + (f" (from {mirrors})" if mirrors else "")


def _read_file(path: Path, loc: _Location, spec: DatasetSpec) -> _FileRead:
    fix = _fix_hint(loc, spec)
    try:
        stored = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {_one_line(exc)}") from None
    gz_sha = None
    if stored[:2] == GZIP_MAGIC:
        gz_sha = hashlib.sha256(stored).hexdigest()
        try:
            raw = _gunzip(stored, path)
        except DatasetError as exc:
            raise DatasetError(f"{exc}; {fix}") from None
    elif path.suffix == ".gz" and stored[:4] not in (IMAGE_MAGIC.to_bytes(4, "big"),
                                                      LABEL_MAGIC.to_bytes(4, "big")):
        raise DatasetError(f"{path}: not a gzip file; {fix}")
    else:
        raw = stored  # a ".gz" holding plain IDX (e.g. decompressed by a browser) is read as IDX
    return _FileRead(path, raw, gz_sha, hashlib.sha256(raw).hexdigest())


def _verify_sums(read: _FileRead, base: str, loc: _Location, spec: DatasetSpec) -> None:
    """An official data set's file must be the official one: its decompressed content has the known sum."""
    sums = spec.sums.get(base)
    if sums is None or read.raw_sha256 == sums.raw_sha256:
        return
    raise DatasetError(
        f"{read.path} is not the official {spec.name} {base}: its decompressed content has sha256 "
        f"{read.raw_sha256}, expected {sums.raw_sha256}; {_fix_hint(loc, spec)}, or to train on this copy of your "
        f"own pass --dataset idx --data-dir {loc.folder}"
    )


def _header(read: _FileRead, magic: int, header_len: int, fix: str) -> np.ndarray:
    raw = read.raw
    kind = "image" if magic == IMAGE_MAGIC else "label"
    if len(raw) >= 4 and int.from_bytes(raw[:4], "big") != magic:
        raise DatasetError(
            f"{read.path}: wrong magic number 0x{int.from_bytes(raw[:4], 'big'):08x}, expected 0x{magic:08x} "
            f"(not an IDX {kind} file); {fix}"
        )
    if len(raw) < header_len:
        raise DatasetError(f"{read.path}: file too short for an IDX {kind} header ({len(raw)} bytes); {fix}")
    return np.frombuffer(raw, dtype=">u4", count=header_len // 4)


def _decode_images(read: _FileRead, fix: str) -> np.ndarray:
    head = _header(read, IMAGE_MAGIC, 16, fix)
    n, rows, cols = (int(v) for v in head[1:4])
    if (rows, cols) != (ROWS, COLS):
        raise DatasetError(f"{read.path}: images are {rows}x{cols}, expected {ROWS}x{COLS}; {fix}")
    expected = 16 + n * rows * cols
    if len(read.raw) != expected:
        raise DatasetError(
            f"{read.path}: {len(read.raw)} bytes, but a header of {n} images of {rows}x{cols} needs "
            f"{expected} (truncated or corrupt); {fix}"
        )
    return np.frombuffer(read.raw, dtype=np.uint8, offset=16).reshape(n, rows * cols)


def _decode_labels(read: _FileRead, fix: str) -> np.ndarray:
    head = _header(read, LABEL_MAGIC, 8, fix)
    n = int(head[1])
    if len(read.raw) != 8 + n:
        raise DatasetError(
            f"{read.path}: {len(read.raw)} bytes, but a header of {n} labels needs {8 + n} "
            f"(truncated or corrupt); {fix}"
        )
    labels = np.frombuffer(read.raw, dtype=np.uint8, offset=8)
    if n and int(labels.max()) >= N_CLASSES:
        raise DatasetError(f"{read.path}: label {int(labels.max())} outside 0..{N_CLASSES - 1}; {fix}")
    return labels


def _to_float(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float32)
    x /= np.float32(255.0)
    return x


_CHECKSUMS: dict[tuple, str] = {}


def _stat_key(paths: list[Path]) -> tuple:
    key = []
    for p in paths:
        st = p.stat()
        key.append((str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(key)


def _load(name: str, data_dir: str | os.PathLike[str] | None, download: bool,
          first: tuple[int, int] | None = None) -> tuple[Splits, str]:
    if first is not None and (len(first) != 2 or any(isinstance(n, bool) or not isinstance(n, int) or n < 0
                                                     for n in first)):
        raise ValueError(f"first must be (n_train, n_test), two integers >= 0, got {first!r}")
    spec = _spec(name)
    paths, loc = _locate(spec, data_dir, download)
    key = _stat_key(paths)
    fix = _fix_hint(loc, spec)
    combined = hashlib.sha256()
    arrays = []
    for base, path in zip(FILE_NAMES, paths, strict=True):
        read = _read_file(path, loc, spec)
        decode = _decode_images if "images" in base else _decode_labels
        arr = decode(read, fix)  # structure first: its message says more than a checksum mismatch
        _verify_sums(read, base, loc, spec)
        combined.update(read.raw)
        arrays.append((arr, path))
    splits = []
    for i, ((images, ipath), (labels, lpath)) in enumerate((arrays[0:2], arrays[2:4])):
        if len(images) != len(labels):
            raise DatasetError(
                f"{ipath} holds {len(images)} images but {lpath} holds {len(labels)} labels; {fix}"
            )
        if first is not None:  # cut before converting: 60,000 float32 images are 188 MB a sweep never uses
            images, labels = images[: first[i]], labels[: first[i]]
        splits.append((_to_float(images), labels.astype(np.int64)))
    checksum = combined.hexdigest()
    _CHECKSUMS[key] = checksum
    log.info("loaded %s from %s (sha256 %s)", name, loc.folder, checksum)
    return (splits[0], splits[1]), checksum


# ------------------------------------------------------------------------------------------- public API


def split_sizes(name: str, data_dir: str | os.PathLike[str] | None = None, *,
                download: bool = True) -> tuple[int, int]:
    """``(training samples, test samples)`` of ``name``, read from the headers of its two image files (not verified:
    :func:`load_dataset` does that). Files not found that would be downloaded count as the official splits.
    Raises :class:`DatasetError` (one line) when they are not there and cannot be downloaded, or when a header is
    not an IDX image header."""
    spec = _spec(name)
    try:
        paths, loc = _locate(spec, data_dir, download=False)
    except DatasetError:
        if download and data_dir is None and spec.mirrors:
            return OFFICIAL_SPLITS
        raise
    fix = _fix_hint(loc, spec)
    counts = []
    for path in (paths[0], paths[2]):
        try:
            with open(path, "rb") as raw:
                head = raw.read(16)
                if head[:2] == GZIP_MAGIC:
                    raw.seek(0)
                    with gzip.open(raw) as unzipped:
                        head = unzipped.read(16)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"cannot read {path}: {_one_line(exc)}; {fix}") from None
        if len(head) < 16 or int.from_bytes(head[:4], "big") != IMAGE_MAGIC:
            raise DatasetError(f"{path} does not start with an IDX image header; {fix}")
        counts.append(int.from_bytes(head[4:8], "big"))
    return counts[0], counts[1]


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, *,
                 download: bool = True, first: tuple[int, int] | None = None) -> Splits:
    """Load ``name`` as ``((x_train, t_train), (x_test, t_test))``.

    Images are float32 in [0, 1], shape (N, 784) (row-major 28x28); labels int64 in 0..9.
    ``first=(n_train, n_test)`` returns only the first samples of each split (see the module docstring).
    See the module docstring for where the files are looked for and how they are verified.
    Raises :class:`DatasetError` (one-line message) on any problem.
    """
    return _load(name, data_dir, download, first)[0]


def load_dataset_with_checksum(name: str, data_dir: str | os.PathLike[str] | None = None, *,
                               download: bool = True,
                               first: tuple[int, int] | None = None) -> tuple[Splits, str]:
    """``(load_dataset(...), dataset_checksum(...))`` computed from the same bytes in one read."""
    return _load(name, data_dir, download, first)


def dataset_checksum(name: str, data_dir: str | os.PathLike[str] | None = None, *,
                     download: bool = True) -> str:
    """SHA-256 (hex) over the four decompressed IDX files concatenated in ``FILE_NAMES`` order.

    Independent of compression. Loads (and so verifies) the files unless this process already did for the
    same paths with the same inode, size and mtime.
    """
    spec = _spec(name)
    paths, _ = _locate(spec, data_dir, download)
    cached = _CHECKSUMS.get(_stat_key(paths))
    if cached is not None:
        return cached
    return _load(name, data_dir, download)[1]
