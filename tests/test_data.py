"""pipeline.data: IDX reading, verification, search order, download, and the real Fashion-MNIST files.

Every test runs isolated: no BNSWEEP_DATA_DIR, a cache and a "system" folder in tmp, and the mirrors of the
real datasets replaced by a closed loopback port, so nothing here can reach the internet. Download tests use
a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import socket
import threading
from dataclasses import replace

import numpy as np
import pytest

from pipeline import data
from pipeline.data import DatasetError, FileSums
from tests.idx import FILE_NAMES, image_bytes, label_bytes, write_file, write_idx_dataset

DEBIAN_FASHION = data.DEFAULT_SYSTEM_DATA_ROOT / "fashion-mnist"


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Cache and system folder in tmp, no env override, unreachable mirrors, empty checksum cache."""
    for var in ("BNSWEEP_DATA_DIR", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
                "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(data, "SYSTEM_DATA_ROOT", tmp_path / "system")
    monkeypatch.setattr(data, "_CHECKSUMS", {})
    monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT_S", 10.0)
    dead = _closed_port_url()
    specs = {name: replace(spec, mirrors=(dead,)) for name, spec in data.SPECS.items()}
    monkeypatch.setattr(data, "SPECS", specs)
    return tmp_path


def set_sums(monkeypatch, name: str, raw: dict[str, str] | None = None, gz: dict[str, str] | None = None,
             mirrors: tuple[str, ...] | None = None) -> None:
    """Replace the known sums (and optionally mirrors) of dataset ``name``."""
    spec = data.SPECS[name]
    sums = {base: FileSums(raw_sha256=(raw or {}).get(base), gz_sha256=(gz or {}).get(base))
            for base in FILE_NAMES}
    monkeypatch.setitem(data.SPECS, name, replace(spec, sums=sums, mirrors=mirrors or spec.mirrors))


def assert_matches(splits, ds) -> None:
    (x_train, t_train), (x_test, t_test) = splits
    for x, t, x8, t8 in ((x_train, t_train, ds.x_train, ds.t_train), (x_test, t_test, ds.x_test, ds.t_test)):
        assert x.dtype == np.float32 and t.dtype == np.int64
        assert x.shape == (len(x8), 784) and t.shape == (len(t8),)
        np.testing.assert_array_equal(x, x8.reshape(len(x8), 784).astype(np.float32) / np.float32(255))
        np.testing.assert_array_equal(t, t8.astype(np.int64))


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


# ------------------------------------------------------------------------------------------ reading


def test_unknown_dataset_lists_choices():
    with pytest.raises(DatasetError) as excinfo:
        data.load_dataset("cifar10")
    assert isinstance(excinfo.value, ValueError)
    msg = one_line_error(excinfo)
    assert "'cifar10'" in msg and "mnist" in msg and "fashion-mnist" in msg
    assert data.DATASETS == ("mnist", "fashion-mnist", "idx")
    assert data.VERIFIED == ("mnist", "fashion-mnist")


@pytest.mark.parametrize("compressed", [True, False])
def test_reads_gzip_and_raw_idx(monkeypatch, tmp_path, compressed):
    ds = write_idx_dataset(tmp_path / "d", n_train=7, n_test=3, gzip=compressed, seed=1)
    set_sums(monkeypatch, "fashion-mnist", raw=ds.raw_sha256)
    assert_matches(data.load_dataset("fashion-mnist", data_dir=tmp_path / "d"), ds)


def test_pixel_scaling_covers_0_to_1(tmp_path):
    folder = tmp_path / "d"
    ds = write_idx_dataset(folder, n_train=2, n_test=1)
    images = np.zeros((2, 28, 28), np.uint8)
    images[0, 0, 0], images[1, 27, 27], images[1, 5, 5] = 255, 1, 128
    write_file(folder / FILE_NAMES[0], image_bytes(images), gzip=False)
    splits = data.load_dataset("idx", data_dir=folder)
    x_train = splits[0][0]
    assert x_train[0, 0] == 1.0 and x_train.min() == 0.0 and x_train.max() == 1.0
    assert x_train[1, 783] == np.float32(1 / 255) and x_train[1, 5 * 28 + 5] == np.float32(128 / 255)
    assert_matches(splits, replace(ds, x_train=images))


def test_gz_named_file_holding_plain_idx_is_read(tmp_path):
    ds = write_idx_dataset(tmp_path / "d", n_train=4, n_test=2, gzip=False)
    for base in FILE_NAMES:
        os.rename(ds.paths[base], ds.paths[base].with_name(base + ".gz"))
    assert_matches(data.load_dataset("idx", data_dir=tmp_path / "d"), ds)


# ------------------------------------------------------------------------- one rule: official, or your own


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_any_copy_of_the_official_content_is_accepted(monkeypatch, tmp_path, name):
    """Re-compressed by anyone, decompressed, or decompressed under a .gz name: the content's sum decides."""
    official = write_idx_dataset(tmp_path / "official", n_train=7, n_test=3, gzip=True, seed=1)
    set_sums(monkeypatch, name, raw=official.raw_sha256, gz=official.file_sha256)
    copy = tmp_path / "copy"
    write_file(copy / (FILE_NAMES[0] + ".gz"), official.raw[FILE_NAMES[0]], gzip=True, mtime=12345)
    write_file(copy / FILE_NAMES[1], official.raw[FILE_NAMES[1]], gzip=False)
    write_file(copy / (FILE_NAMES[2] + ".gz"), official.raw[FILE_NAMES[2]], gzip=True, mtime=54321)
    write_file(copy / (FILE_NAMES[3] + ".gz"), official.raw[FILE_NAMES[3]], gzip=False)
    assert (copy / (FILE_NAMES[0] + ".gz")).read_bytes() != official.paths[FILE_NAMES[0]].read_bytes()
    splits, checksum = data.load_dataset_with_checksum(name, data_dir=copy)
    assert_matches(splits, official)
    assert checksum == official.checksum


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("compressed", [True, False], ids=["gz", "plain"])
def test_a_copy_of_your_own_is_refused_under_an_official_name_naming_idx(tmp_path, name, compressed):
    """The real known sums: a tiny IDX set is no official file, gzipped or not, whatever it is called."""
    ds = write_idx_dataset(tmp_path / "own", n_train=7, n_test=3, gzip=compressed, seed=2)
    with pytest.raises(DatasetError) as excinfo:
        data.load_dataset(name, data_dir=ds.folder)
    msg = one_line_error(excinfo)
    want = data.SPECS[name].sums[FILE_NAMES[0]].raw_sha256
    assert f"{ds.paths[FILE_NAMES[0]]} is not the official {name} {FILE_NAMES[0]}" in msg
    assert f"sha256 {ds.raw_sha256[FILE_NAMES[0]]}, expected {want}" in msg
    assert msg.endswith(f"or to train on this copy of your own pass --dataset idx --data-dir {ds.folder}")


@pytest.mark.parametrize("compressed", [True, False], ids=["gz", "plain"])
def test_the_same_copy_is_accepted_as_idx_with_its_own_checksum(tmp_path, compressed):
    ds = write_idx_dataset(tmp_path / "own", n_train=7, n_test=3, gzip=compressed, seed=2)
    splits, checksum = data.load_dataset_with_checksum("idx", data_dir=ds.folder)
    assert_matches(splits, ds)
    assert checksum == ds.checksum == data.dataset_checksum("idx", data_dir=ds.folder)


def test_idx_reads_only_the_data_dir_it_is_given(monkeypatch, isolated):
    ds = write_idx_dataset(isolated / "flat", n_train=5, n_test=2)
    monkeypatch.setenv("BNSWEEP_DATA_DIR", str(ds.folder))  # never searched for "idx"
    write_idx_dataset(data.cache_dir("idx"), n_train=5, n_test=2)
    with pytest.raises(DatasetError) as excinfo:
        data.load_dataset("idx")
    assert one_line_error(excinfo) == "--dataset idx reads your own IDX files; name their folder with --data-dir DIR"
    write_idx_dataset(isolated / "root" / "idx", n_train=5, n_test=2)
    with pytest.raises(DatasetError) as excinfo:
        data.load_dataset("idx", data_dir=isolated / "root")
    assert f"data dir {isolated / 'root'} (no IDX files) does not hold the four IDX files" in one_line_error(excinfo)


def test_idx_gets_the_structural_checks(tmp_path):
    ds = write_idx_dataset(tmp_path / "d", n_train=6, n_test=3)
    bad = write_file(ds.paths[FILE_NAMES[3]], label_bytes(np.array([1, 10, 2])), gzip=False)
    with pytest.raises(DatasetError) as excinfo:
        data.load_dataset("idx", data_dir=ds.folder)
    msg = one_line_error(excinfo)
    assert f"{bad}: label 10 outside 0..9; fix or replace it" == msg


def _truncate_gz(folder):
    p = folder / (FILE_NAMES[0] + ".gz")
    p.write_bytes(p.read_bytes()[:-200])
    return p


def _corrupt_gz(folder):
    p = folder / (FILE_NAMES[2] + ".gz")
    b = bytearray(p.read_bytes())
    mid = len(b) // 2
    b[mid:mid + 64] = b"\xff" * 64
    p.write_bytes(bytes(b))
    return p


def _not_gzip(folder):
    p = folder / (FILE_NAMES[3] + ".gz")
    p.write_bytes(b"<html>404 not found</html>")
    return p


def _trailing_garbage(folder):
    p = folder / (FILE_NAMES[1] + ".gz")
    p.write_bytes(p.read_bytes() + b"garbage")
    return p


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [(_truncate_gz, "truncated gzip"), (_corrupt_gz, "corrupt gzip"), (_not_gzip, "not a gzip file"),
     (_trailing_garbage, "trailing garbage")],
    ids=["truncated", "corrupt", "not-gzip", "trailing-garbage"],
)
def test_bad_gzip_is_a_clear_error(monkeypatch, tmp_path, corrupt, expected):
    folder = tmp_path / "d"
    ds = write_idx_dataset(folder, n_train=50, n_test=20, gzip=True)
    set_sums(monkeypatch, "mnist", raw=ds.raw_sha256)
    bad = corrupt(folder)
    with pytest.raises(DatasetError) as excinfo:
        data.load_dataset("mnist", data_dir=folder)
    msg = one_line_error(excinfo)
    assert str(bad) in msg and expected in msg
    assert "replace it with the original file" in msg


def _images(n, rows=28, cols=28, magic=0x00000803):
    return image_bytes(np.zeros((n, rows, cols), np.uint8), magic=magic)


@pytest.mark.parametrize(
    ("base", "raw", "expected"),
    [
        (FILE_NAMES[0], _images(6)[:-100], "truncated or corrupt"),
        (FILE_NAMES[0], _images(6) + b"\x00", "truncated or corrupt"),
        (FILE_NAMES[1], label_bytes(np.zeros(6))[:-1], "truncated or corrupt"),
        (FILE_NAMES[0], _images(6, magic=0x00000804), "wrong magic number 0x00000804"),
        (FILE_NAMES[2], label_bytes(np.zeros(3)), "wrong magic number 0x00000801"),
        (FILE_NAMES[3], _images(3), "wrong magic number 0x00000803"),
        (FILE_NAMES[1], label_bytes(np.zeros(5)), "holds 6 images but"),
        (FILE_NAMES[2], _images(3, rows=27), "images are 27x28, expected 28x28"),
        (FILE_NAMES[0], _images(6, rows=784, cols=1), "images are 784x1"),
        (FILE_NAMES[3], label_bytes(np.array([1, 10, 2])), "label 10 outside 0..9"),
        (FILE_NAMES[1], b"\x00\x00\x08", "too short"),
        (FILE_NAMES[0], b"", "too short"),
    ],
    ids=["images-truncated", "images-extra-byte", "labels-truncated", "images-magic", "labels-as-images",
         "images-as-labels", "count-mismatch", "rows", "flat", "label-range", "short-header", "empty"],
)
@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "gz"])
def test_bad_idx_is_a_clear_error(tmp_path, monkeypatch, base, raw, expected, compressed):
    folder = tmp_path / "d"
    ds = write_idx_dataset(folder, n_train=6, n_test=3, gzip=compressed)
    bad = write_file(ds.paths[base], raw, gzip=compressed)
    set_sums(monkeypatch, "mnist", raw=ds.raw_sha256 | {base: hashlib.sha256(raw).hexdigest()})
    with pytest.raises(DatasetError) as excinfo:
        data.load_dataset("mnist", data_dir=folder)
    msg = one_line_error(excinfo)
    assert str(bad) in msg and expected in msg


def test_content_checksum_mismatch(monkeypatch, tmp_path):
    folder = tmp_path / "d"
    ds = write_idx_dataset(folder, n_train=6, n_test=3, gzip=True)
    set_sums(monkeypatch, "fashion-mnist", raw=ds.raw_sha256)
    assert_matches(data.load_dataset("fashion-mnist", data_dir=folder), ds)
    x = ds.x_test.copy()
    x[1, 2, 3] ^= 1  # one bit of one pixel: the file stays structurally valid
    bad = write_file(ds.paths[FILE_NAMES[2]], image_bytes(x), gzip=True)
    with pytest.raises(DatasetError) as excinfo:
        data.load_dataset("fashion-mnist", data_dir=folder)
    msg = one_line_error(excinfo)
    assert f"{bad} is not the official fashion-mnist" in msg and ds.raw_sha256[FILE_NAMES[2]] in msg


def test_fix_hint_depends_on_where_the_file_is(monkeypatch, isolated):
    cache = data.cache_dir("mnist")
    ds = write_idx_dataset(cache, n_train=6, n_test=3, gzip=True)
    set_sums(monkeypatch, "mnist", raw=ds.raw_sha256)
    _truncate_gz(cache)
    with pytest.raises(DatasetError) as excinfo:
        data.load_dataset("mnist")
    assert "delete it and rerun to download it again" in one_line_error(excinfo)

    system = data.SYSTEM_DATA_ROOT / "fashion-mnist"
    ds = write_idx_dataset(system, n_train=6, n_test=3, gzip=True)
    set_sums(monkeypatch, "fashion-mnist", raw=ds.raw_sha256 | {FILE_NAMES[3]: "0" * 64})
    with pytest.raises(DatasetError) as excinfo:
        data.load_dataset("fashion-mnist")
    msg = one_line_error(excinfo)
    assert str(ds.paths[FILE_NAMES[3]]) in msg and "apt-get install --reinstall dataset-fashion-mnist" in msg


# ----------------------------------------------------------------------------------------- checksums


def test_checksum_is_over_decompressed_content(monkeypatch, tmp_path):
    gz = write_idx_dataset(tmp_path / "gz", n_train=6, n_test=3, gzip=True, seed=4)
    raw = write_idx_dataset(tmp_path / "raw", n_train=6, n_test=3, gzip=False, seed=4)
    set_sums(monkeypatch, "mnist", raw=gz.raw_sha256)
    expected = hashlib.sha256(b"".join(raw.paths[b].read_bytes() for b in FILE_NAMES)).hexdigest()
    assert data.dataset_checksum("mnist", data_dir=tmp_path / "gz") == expected
    assert data.dataset_checksum("mnist", data_dir=tmp_path / "raw") == expected
    other = write_idx_dataset(tmp_path / "other", n_train=6, n_test=3, seed=5)
    assert data.dataset_checksum("idx", data_dir=tmp_path / "other") == other.checksum != expected


def test_load_with_checksum_agrees_and_cache_follows_file_changes(tmp_path):
    folder = tmp_path / "d"
    ds = write_idx_dataset(folder, n_train=6, n_test=3, seed=6)
    splits, checksum = data.load_dataset_with_checksum("idx", data_dir=folder)
    assert_matches(splits, ds)
    assert checksum == ds.checksum == data.dataset_checksum("idx", data_dir=folder)

    # Same sizes, new content, new mtime: the cached checksum must not be reused.
    before = {b: ds.paths[b].stat().st_mtime_ns for b in FILE_NAMES}
    ds2 = write_idx_dataset(folder, n_train=6, n_test=3, seed=7)
    for b in FILE_NAMES:
        os.utime(ds2.paths[b], ns=(before[b] + 5_000_000_000, before[b] + 5_000_000_000))
    assert data.dataset_checksum("idx", data_dir=folder) == ds2.checksum != ds.checksum


def test_first_samples_equal_the_full_load_sliced_and_the_checksum_is_still_of_the_whole_files(tmp_path):
    folder = tmp_path / "d"
    ds = write_idx_dataset(folder, n_train=6, n_test=3, seed=8)
    (x_tr, t_tr), (x_te, t_te) = data.load_dataset("idx", data_dir=folder)
    ((fx_tr, ft_tr), (fx_te, ft_te)), checksum = data.load_dataset_with_checksum("idx", data_dir=folder,
                                                                                first=(4, 10))
    assert checksum == ds.checksum
    assert fx_tr.shape == (4, 784) and fx_te.shape == (3, 784)  # a split with fewer samples comes whole
    for got, want in ((fx_tr, x_tr[:4]), (ft_tr, t_tr[:4]), (fx_te, x_te), (ft_te, t_te)):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    with pytest.raises(ValueError, match="first must be"):
        data.load_dataset("idx", data_dir=folder, first=(4,))


# ---------------------------------------------------------------------------------------- search order


LOCATIONS = ("data_dir", "env", "cache", "system")


def _place_everywhere(isolated) -> dict[str, object]:
    """A distinct tiny mnist in each location, told apart by n_train."""
    root = isolated
    folders = {
        "data_dir": root / "given",
        "env": root / "envroot" / "mnist",
        "cache": data.cache_dir("mnist"),
        "system": data.SYSTEM_DATA_ROOT / "mnist",
    }
    return {kind: write_idx_dataset(folder, n_train=5 + i, n_test=2, seed=10 + i)
            for i, (kind, folder) in enumerate(folders.items())}


@pytest.mark.parametrize("winner", LOCATIONS)
def test_search_order(monkeypatch, isolated, winner):
    placed = _place_everywhere(isolated)
    monkeypatch.setenv("BNSWEEP_DATA_DIR", str(isolated / "envroot"))
    for kind in LOCATIONS[1:LOCATIONS.index(winner)]:  # remove the ones that would win before it
        for path in placed[kind].paths.values():
            path.unlink()
    data_dir = isolated / "given" if winner == "data_dir" else None
    set_sums(monkeypatch, "mnist", raw=placed[winner].raw_sha256)
    splits, checksum = data.load_dataset_with_checksum("mnist", data_dir=data_dir)
    assert_matches(splits, placed[winner])
    assert checksum == placed[winner].checksum


def test_env_var_may_hold_the_files_directly(monkeypatch, isolated):
    ds = write_idx_dataset(isolated / "flat", n_train=5, n_test=2, seed=3)
    write_idx_dataset(data.cache_dir("mnist"), n_train=9, n_test=2)
    monkeypatch.setenv("BNSWEEP_DATA_DIR", str(isolated / "flat"))
    set_sums(monkeypatch, "mnist", raw=ds.raw_sha256)
    assert_matches(data.load_dataset("mnist"), ds)


def test_env_var_without_the_files_falls_through(monkeypatch, isolated):
    (isolated / "empty").mkdir()
    monkeypatch.setenv("BNSWEEP_DATA_DIR", str(isolated / "empty"))
    ds = write_idx_dataset(data.SYSTEM_DATA_ROOT / "mnist", n_train=5, n_test=2)
    set_sums(monkeypatch, "mnist", raw=ds.raw_sha256)
    assert_matches(data.load_dataset("mnist"), ds)


def test_data_dir_given_is_the_only_place_looked(isolated):
    write_idx_dataset(data.cache_dir("mnist"), n_train=5, n_test=2)
    given = isolated / "given"
    ds = write_idx_dataset(given, n_train=5, n_test=2)
    ds.paths[FILE_NAMES[3]].unlink()
    with pytest.raises(DatasetError) as excinfo:
        data.load_dataset("mnist", data_dir=given)
    msg = one_line_error(excinfo)
    assert f"data dir {given} does not hold the mnist files" in msg
    assert "missing t10k-labels-idx1-ubyte" in msg and str(data.cache_dir("mnist")) not in msg

    with pytest.raises(DatasetError) as excinfo:
        data.dataset_checksum("mnist", data_dir=isolated / "nowhere")
    assert f"{isolated / 'nowhere'} (no such folder)" in one_line_error(excinfo)


def test_data_dir_may_hold_a_dataset_subfolder(monkeypatch, isolated):
    ds = write_idx_dataset(isolated / "root" / "mnist", n_train=5, n_test=2, seed=8)
    set_sums(monkeypatch, "mnist", raw=ds.raw_sha256)
    assert_matches(data.load_dataset("mnist", data_dir=isolated / "root"), ds)


def test_not_found_offline_says_where_it_looked_and_how_to_fix(monkeypatch, isolated):
    with pytest.raises(DatasetError) as excinfo:
        data.load_dataset("fashion-mnist")
    msg = one_line_error(excinfo)
    for fragment in ("$BNSWEEP_DATA_DIR (not set)", str(data.cache_dir("fashion-mnist")),
                     str(data.SYSTEM_DATA_ROOT / "fashion-mnist"), "download failed", "127.0.0.1",
                     "--data-dir", "BNSWEEP_DATA_DIR=DIR", "apt-get install dataset-fashion-mnist"):
        assert fragment in msg
    # Nothing was left behind in the cache by the failed attempts.
    assert list(data.cache_dir("fashion-mnist").iterdir()) == []

    monkeypatch.setenv("BNSWEEP_DATA_DIR", str(isolated / "typo"))
    with pytest.raises(DatasetError) as excinfo:
        data.load_dataset("mnist", download=False)
    msg = one_line_error(excinfo)
    assert f"$BNSWEEP_DATA_DIR={isolated / 'typo'} (no such folder)" in msg
    assert "downloads are off" in msg and "apt-get" not in msg


# ----------------------------------------------------------------------------------------- downloading


class Mirror:
    """An HTTP server on 127.0.0.1 serving bytes by path, optionally cut off mid-body."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                mirror.requests.append(self.path)
                body = mirror.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in mirror.cut:
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                else:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def serve(self, prefix: str, ds, corrupt: bool = False) -> str:
        for base in FILE_NAMES:
            body = ds.paths[base].read_bytes()
            if corrupt:
                body = body[:-16] + bytes(16)
            self.files[f"/{prefix}/{base}.gz"] = body
        return f"{self.url}{prefix}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def mirror():
    m = Mirror()
    yield m
    m.close()


@pytest.fixture
def upstream(tmp_path):
    """The 'upstream' gz files a mirror serves."""
    return write_idx_dataset(tmp_path / "upstream", n_train=8, n_test=4, gzip=True, seed=20)


def cache_listing(name: str = "mnist") -> list[str]:
    folder = data.cache_dir(name)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.slow
def test_download_skips_corrupt_mirror_and_caches(monkeypatch, mirror, upstream):
    bad = mirror.serve("bad", upstream, corrupt=True)
    good = mirror.serve("good", upstream)
    set_sums(monkeypatch, "mnist", raw=upstream.raw_sha256, gz=upstream.file_sha256, mirrors=(bad, good))
    assert_matches(data.load_dataset("mnist"), upstream)
    assert cache_listing() == sorted(b + ".gz" for b in FILE_NAMES)
    for base in FILE_NAMES:
        assert (data.cache_dir("mnist") / (base + ".gz")).read_bytes() == upstream.paths[base].read_bytes()
    assert sorted(mirror.requests) == sorted([f"/bad/{b}.gz" for b in FILE_NAMES]
                                             + [f"/good/{b}.gz" for b in FILE_NAMES])

    # Now cached: a second load needs no mirror.
    mirror.requests.clear()
    assert_matches(data.load_dataset("mnist"), upstream)
    assert mirror.requests == []


@pytest.mark.slow
def test_download_with_only_corrupt_mirror_fails_and_leaves_nothing(monkeypatch, mirror, upstream):
    bad = mirror.serve("bad", upstream, corrupt=True)
    set_sums(monkeypatch, "mnist", raw=upstream.raw_sha256, gz=upstream.file_sha256, mirrors=(bad,))
    with pytest.raises(DatasetError) as excinfo:
        data.load_dataset("mnist")
    msg = one_line_error(excinfo)
    assert f"{bad}{FILE_NAMES[0]}.gz: DatasetError: checksum mismatch" in msg
    assert cache_listing() == []


@pytest.mark.slow
def test_download_cut_off_mid_transfer_leaves_no_partial_file(monkeypatch, mirror, upstream):
    cut = mirror.serve("cut", upstream)
    mirror.cut.add(f"/cut/{FILE_NAMES[2]}.gz")
    set_sums(monkeypatch, "mnist", raw=upstream.raw_sha256, gz=upstream.file_sha256, mirrors=(cut,))
    with pytest.raises(DatasetError) as excinfo:
        data.load_dataset("mnist")
    msg = one_line_error(excinfo)
    assert f"{cut}{FILE_NAMES[2]}.gz: DatasetError: incomplete download: got " in msg
    # The two files before it were complete and verified; no partial or temporary file anywhere.
    assert cache_listing() == sorted(b + ".gz" for b in FILE_NAMES[:2])

    # A later run with a working mirror fetches only what is missing.
    good = mirror.serve("good", upstream)
    set_sums(monkeypatch, "mnist", raw=upstream.raw_sha256, gz=upstream.file_sha256, mirrors=(cut, good))
    mirror.requests.clear()
    assert_matches(data.load_dataset("mnist"), upstream)
    assert mirror.requests == [f"/cut/{FILE_NAMES[2]}.gz", f"/good/{FILE_NAMES[2]}.gz",
                               f"/cut/{FILE_NAMES[3]}.gz"]
    assert cache_listing() == sorted(b + ".gz" for b in FILE_NAMES)


@pytest.mark.slow
def test_download_accepts_recompressed_gz_with_known_content(monkeypatch, mirror, upstream, tmp_path):
    """Fashion-MNIST's case: a mirror's .gz differs from upstream's, its content is the known one."""
    other = write_idx_dataset(tmp_path / "recompressed", n_train=8, n_test=4, gzip=False, seed=20)
    for base in FILE_NAMES:
        write_file(other.paths[base], other.raw[base], gzip=True, mtime=777)
    url = mirror.serve("re", other)
    set_sums(monkeypatch, "fashion-mnist", raw=upstream.raw_sha256, gz=upstream.file_sha256, mirrors=(url,))
    assert other.paths[FILE_NAMES[0]].read_bytes() != upstream.paths[FILE_NAMES[0]].read_bytes()
    assert_matches(data.load_dataset("fashion-mnist"), upstream)
    assert cache_listing("fashion-mnist") == sorted(b + ".gz" for b in FILE_NAMES)


@pytest.mark.slow
def test_download_off_makes_no_request(monkeypatch, mirror, upstream):
    good = mirror.serve("good", upstream)
    set_sums(monkeypatch, "mnist", raw=upstream.raw_sha256, gz=upstream.file_sha256, mirrors=(good,))
    with pytest.raises(DatasetError) as excinfo:
        data.dataset_checksum("mnist", download=False)
    assert "downloads are off" in one_line_error(excinfo)
    assert mirror.requests == []
    assert data.dataset_checksum("mnist") == upstream.checksum
    assert len(mirror.requests) == 4


# ------------------------------------------------------------------------------------- the real files


@pytest.mark.slow
def test_real_debian_fashion_mnist(monkeypatch):
    if not DEBIAN_FASHION.is_dir():
        pytest.fail(f"{DEBIAN_FASHION} is missing: run `apt-get install dataset-fashion-mnist` "
                    "(the real Fashion-MNIST data this test checks)")
    # The fixture keeps the real sums (only the mirrors are unreachable); look in the real system folder.
    monkeypatch.setattr(data, "SYSTEM_DATA_ROOT", data.DEFAULT_SYSTEM_DATA_ROOT)

    (x_train, t_train), (x_test, t_test) = data.load_dataset("fashion-mnist", download=False)
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert x_train.dtype == x_test.dtype == np.float32
    assert t_train.dtype == t_test.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0 and x_test.min() == 0.0 and x_test.max() == 1.0
    # Fashion-MNIST is balanced: 6000 train and 1000 test images per class.
    assert np.bincount(t_train).tolist() == [6000] * 10
    assert np.bincount(t_test).tolist() == [1000] * 10

    raw = {b: gzip.decompress((DEBIAN_FASHION / (b + ".gz")).read_bytes()) for b in FILE_NAMES}
    np.testing.assert_array_equal(
        x_test, np.frombuffer(raw[FILE_NAMES[2]], np.uint8, offset=16).reshape(-1, 784) / np.float32(255))
    np.testing.assert_array_equal(t_train, np.frombuffer(raw[FILE_NAMES[1]], np.uint8, offset=8))
    expected = hashlib.sha256(b"".join(raw[b] for b in FILE_NAMES)).hexdigest()
    assert data.dataset_checksum("fashion-mnist", download=False) == expected
    # Each file matched its known decompressed sum (a mismatch would have raised above).
    for b in FILE_NAMES:
        assert hashlib.sha256(raw[b]).hexdigest() == data.SPECS["fashion-mnist"].sums[b].raw_sha256
