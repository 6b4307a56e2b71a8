"""Issue 12 item 8: a file zero-padded to 2 GiB is refused without walking its bytes.

The integrity walk seeks over PixelData by its declared length and stops at the first element
whose tag does not ascend (zero bytes read as (0000,0000)), so its cost is bounded by the number
of elements; a file larger than ``index.max_file_mb`` is refused unread. The files are sparse
(``truncate``): they take no disk space. The tests assert outcomes, not times
(scripts/benchmark_ingest.py prints the time).
"""

from __future__ import annotations

import shutil

import pydicom
import pytest
from io_synth import make_series

from pipeline.config import load_config
from pipeline.io.index import DEFAULT_MAX_FILE_MB, scan_archive
from pipeline.io.integrity import TRAILING_JUNK_MAX_BYTES, check_complete

GIB2 = 2 * 1024**3


@pytest.fixture
def series(tmp_path):
    return make_series(tmp_path / "arch" / "ct", n=3, rows=32, cols=32, order="sorted")


def _pad(path, size) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def _problem(index, name):
    rows = index.problems[index.problems["path"].str.endswith(name)]
    assert len(rows) == 1, index.problems.to_string()
    return rows.iloc[0]


def test_zero_padded_2gib_file_is_refused_naming_pixeldata(series, tmp_path):
    p = series.paths[1]
    real = p.stat().st_size
    _pad(p, GIB2)
    index = scan_archive(tmp_path / "arch")
    row = _problem(index, p.name)
    assert row["error_class"] == "DicomReadError"
    assert "PixelData (7FE0,0010)" in row["reason"]
    assert f"{GIB2 - real} bytes" in row["reason"]  # exactly the padding
    assert str(GIB2) in row["reason"]
    assert len(index.files) == 2  # the other slices are indexed as before
    assert p.name not in " ".join(index.files["path"])


def test_small_trailing_padding_is_accepted_and_the_file_still_loads(series, tmp_path):
    p = series.paths[0]
    _pad(p, p.stat().st_size + 1000)
    ds = pydicom.dcmread(p, stop_before_pixels=True)
    assert check_complete(p, ds) is None
    assert 1000 <= TRAILING_JUNK_MAX_BYTES
    index = scan_archive(tmp_path / "arch")
    assert len(index.files) == 3 and index.problems.empty
    assert pydicom.dcmread(p).pixel_array.shape == (32, 32)


def test_padding_just_over_the_tolerance_is_refused(series):
    p = series.paths[0]
    _pad(p, p.stat().st_size + TRAILING_JUNK_MAX_BYTES + 8)
    reason = check_complete(p, pydicom.dcmread(p, stop_before_pixels=True))
    assert reason is not None and "PixelData (7FE0,0010)" in reason


def test_zero_bytes_inside_the_header_are_a_damaged_file(series):
    """Zeros before PixelData: the walk stops at the first out-of-order tag."""
    p = series.paths[0]
    data = bytearray(p.read_bytes())
    ds = pydicom.dcmread(p, stop_before_pixels=True)
    # zero one element header in the middle of the data set: (0000,0000) after a larger tag
    off = data.find(b"\x20\x00\x32\x00")  # ImagePositionPatient (0020,0032), explicit VR LE
    assert off > 0 and ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    data[off:off + 8] = bytes(8)
    p.write_bytes(bytes(data))
    reason = check_complete(p, ds)
    assert reason is not None and "(0000,0000)" in reason and "out of order" in reason


def test_file_larger_than_max_file_mb_is_refused_unread(series, tmp_path):
    p = series.paths[2]
    size = p.stat().st_size
    index = scan_archive(tmp_path / "arch", max_file_mb=size / 2**20 / 2)
    row = _problem(index, p.name)
    assert "index.max_file_mb" in row["reason"] and str(size) in row["reason"]
    assert len(index.files) == 0  # every slice is over that limit
    assert len(scan_archive(tmp_path / "arch", max_file_mb=None).files) == 3


def test_max_file_mb_is_configured_with_its_default():
    cfg = load_config()
    assert cfg["index"]["max_file_mb"] == DEFAULT_MAX_FILE_MB == 4096


def test_cache_key_depends_on_the_size_limit():
    from pipeline.io.index import cache_key

    assert cache_key((), (), 4096) != cache_key((), (), 100)


def test_corpus_case_zero_padded_2gb(tmp_path):
    from pipeline.testing.corpus import ZERO_PADDED_SIZE, write_corpus

    (case,) = write_corpus(tmp_path / "corpus", only=["zero_padded_2gb"])
    big = [p for p in case.folder.rglob("*") if p.is_file() and p.stat().st_size == ZERO_PADDED_SIZE]
    assert len(big) == 1
    index = scan_archive(tmp_path / "corpus")
    row = _problem(index, big[0].name)
    assert case.error_class == row["error_class"]
    assert case.message in row["reason"]
    shutil.rmtree(tmp_path / "corpus")
