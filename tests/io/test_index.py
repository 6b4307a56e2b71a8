"""Header-only archive index: scan, problems, persistence (pipeline.io.index)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from index_archive import build_messy_archive
from io_synth import make_series, write_seg

from pipeline.errors import ConfigError
from pipeline.geometry import Grid
from pipeline.io.index import read_index, scan_archive, write_index
from pipeline.sheet import build_study_sheet


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """See :func:`index_archive.build_messy_archive`."""
    return build_messy_archive(tmp_path_factory.mktemp("archive"))


@pytest.fixture(scope="module")
def index(archive):
    calls = []
    ix = scan_archive(archive["root"], progress=lambda d, t: calls.append((d, t)))
    ix.meta["_calls"] = calls
    return ix


def test_problems_listed_with_reasons(index):
    pr = index.problems.set_index("path")
    assert "not a DICOM file" in pr.loc["notes.txt", "reason"]
    assert "not a DICOM file" in pr.loc["empty.dcm", "reason"]
    assert "truncated" in pr.loc["cut_in_pixels.dcm", "reason"]
    assert "remain" in pr.loc["cut_in_pixels.dcm", "reason"]
    assert pr.loc["cut_in_header.dcm", "error_class"] == "DicomReadError"
    assert "sidecar" in pr.loc["p1/orphan.nii.gz", "reason"]
    assert "DICOMDIR" not in pr.index
    assert "DICOMDIR" not in set(index.files["path"])
    assert len(pr) == 5


def test_progress_reported(index):
    calls = index.meta["_calls"]
    assert calls[-1][0] == calls[-1][1] and len(calls) == calls[-1][1]


def test_files_recognised_by_content(index, archive):
    paths = set(index.files["path"])
    assert {p.relative_to(archive["root"]).as_posix() for p in archive["nc"].paths} <= paths
    assert "p1/rt" in paths  # RTSTRUCT without extension
    raw_rows = index.files[index.files["patient_id"] == "P002"]
    assert len(raw_rows) == 2  # files without preamble


def test_index_round_trip(index, tmp_path):
    write_index(index, tmp_path / "ix")
    assert {p.name for p in (tmp_path / "ix").iterdir()} == {
        "files.csv", "series.csv", "problems.csv", "index.json"}
    back = read_index(tmp_path / "ix")
    pd.testing.assert_frame_equal(back.files, index.files)
    pd.testing.assert_frame_equal(back.series, index.series)
    pd.testing.assert_frame_equal(back.problems, index.problems)
    assert back.root == index.root.resolve()
    assert back.series_paths(index.series.iloc[0]["series_uid"])[0].exists()


def test_empty_archive(tmp_path):
    ix = scan_archive(tmp_path)
    assert ix.files.empty and ix.series.empty and ix.problems.empty


def test_missing_root_is_config_error(tmp_path):
    with pytest.raises(ConfigError):
        scan_archive(tmp_path / "nope")


def test_index_carries_no_patient_names(index):
    assert "PatientName" not in index.files.columns
    assert not any("Test^Patient" in str(v) for v in index.series.to_numpy().ravel())


def test_truncated_file_reported_with_its_study(index, archive):
    pr = index.problems.set_index("path")
    nc = archive["nc"]
    row = pr.loc["cut_in_pixels.dcm"]
    assert (row["study_uid"], row["series_uid"]) == (archive["study"], nc.series_uid)


def test_labelmap_sidecar_without_ids_inherits_from_series(tmp_path):
    import json

    import nibabel as nib

    s = make_series(tmp_path / "ct", n=3, patient_id="PX")
    grid = Grid((3, 8, 10), (0.7, 0.8, 2.5), tuple(s.positions[0]))
    lab = np.zeros((10, 8, 3), np.uint8)
    lab[1:3, 1:3, 1] = 1
    nib.save(nib.Nifti1Image(lab, grid.nifti_affine_ras()), tmp_path / "m.nii.gz")
    (tmp_path / "m.json").write_text(json.dumps({"referenced_series_uid": s.series_uid,
                                                 "names": {"1": "tumour"}}))
    ix = scan_archive(tmp_path)
    lm = ix.series[ix.series["modality"] == "LABELMAP"].iloc[0]
    assert (lm["patient_id"], lm["study_uid"]) == ("PX", s.study_uid)
    assert lm["segment_kind"] == "lesion"  # "tumour" matches the default lesion patterns
    sheet = build_study_sheet(ix)
    assert len(sheet) == 1 and sheet.iloc[0]["lesion_mask_ref"] == "m.nii.gz"


def test_symlinked_folders_inside_the_root_followed_once(tmp_path):
    arch = tmp_path / "arch"
    s = make_series(arch / "real" / "ct", n=3)
    (arch / "link").symlink_to(arch / "real", target_is_directory=True)
    (arch / "link2").symlink_to(arch / "real", target_is_directory=True)
    (arch / "real" / "loop").symlink_to(arch, target_is_directory=True)
    ix = scan_archive(arch)
    assert len(ix.files) == 3 and ix.series.iloc[0]["series_uid"] == s.series_uid
    assert ix.series_paths(s.series_uid)[0].exists()
    assert ix.problems.empty  # loops and duplicate links are not problems


def test_series_refs_records(index, archive):
    from pipeline.records import CTPhase, Modality, SegmentKind

    refs = {r.series_uid: r for r in index.series_refs()}
    assert refs[archive["ce"].series_uid].ct_phase is CTPhase.CONTRAST
    assert refs[archive["seg_les"]].modality is Modality.SEG
    assert refs[archive["seg_les"]].segment_kind is SegmentKind.LESION
    assert refs[archive["seg_les"]].referenced_series_uids == (archive["nc"].series_uid,)


def test_index_reads_no_pixel_data(tmp_path, monkeypatch):
    """Indexing never decodes pixels: pixel access is patched to fail, and the bytes read from
    the image files stay a small fraction of their size (pixel data is skipped by seeking)."""
    import builtins

    from pydicom.dataset import Dataset as PydDataset

    s = make_series(tmp_path / "ct", n=4, rows=128, cols=128)
    write_seg(tmp_path / "seg.dcm", ref=s, masks={1: np.ones((4, 128, 128), bool)},
              labels={1: "lesion"})

    def boom(self, *a, **k):  # pragma: no cover - must not be called
        raise AssertionError("pixel data decoded during indexing")

    monkeypatch.setattr(PydDataset, "pixel_array", property(boom))
    monkeypatch.setattr(PydDataset, "convert_pixel_data", boom)
    read = {"bytes": 0}
    real_open = builtins.open

    class Counting:
        def __init__(self, f):
            self._f = f

        def read(self, n=-1):
            data = self._f.read(n)
            read["bytes"] += len(data)
            return data

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def __iter__(self):
            return iter(self._f)

    def counting_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        return Counting(f) if "b" in mode and str(file).startswith(str(tmp_path)) else f

    monkeypatch.setattr(builtins, "open", counting_open)
    ix = scan_archive(tmp_path)
    monkeypatch.setattr(builtins, "open", real_open)
    total = sum((tmp_path / p).stat().st_size for p in ix.files["path"])
    assert len(ix.files) == 5
    assert read["bytes"] < 0.25 * total, (read["bytes"], total)


# --------------------------------------------------------------------------- file cache
def _tables_equal(a, b):
    pd.testing.assert_frame_equal(a.files, b.files)
    pd.testing.assert_frame_equal(a.series, b.series)
    pd.testing.assert_frame_equal(a.problems, b.problems)


@pytest.fixture()
def arch_copy(archive, tmp_path):
    import shutil

    dst = tmp_path / "arch"
    shutil.copytree(archive["root"], dst, symlinks=True)
    return dst


def test_cache_gives_the_fresh_tables(arch_copy, tmp_path):
    cache = tmp_path / "res" / "index" / "file_cache.parquet"
    fresh = scan_archive(arch_copy)
    first = scan_archive(arch_copy, cache=cache)
    assert cache.is_file()
    _tables_equal(first, fresh)
    again = scan_archive(arch_copy, cache=cache)
    _tables_equal(again, fresh)
    n_dicom_side = first.meta["n_read"]
    # every file is a hit (label maps: with their sidecar's size and mtime in the key)
    assert again.meta["n_cached"] > 0
    assert again.meta["n_read"] == 0
    assert again.meta["n_cached"] + again.meta["n_read"] == n_dicom_side
    assert not list(cache.parent.glob(".*tmp"))  # the atomic write leaves no temporary file


def test_cache_rereads_changed_drops_removed_adds_new(arch_copy, archive, tmp_path):
    import os
    import shutil

    cache = tmp_path / "c.parquet"
    scan_archive(arch_copy, cache=cache)
    nc = [p.relative_to(archive["root"]).as_posix() for p in archive["nc"].paths]
    ce = [p.relative_to(archive["root"]).as_posix() for p in archive["ce"].paths]
    # 1. same size, new mtime: re-read, same record
    st = (arch_copy / nc[1]).stat()
    os.utime(arch_copy / nc[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    # 2. same mtime, new size: cut in its pixels -> now a problem
    data = (arch_copy / nc[2]).read_bytes()
    (arch_copy / nc[2]).write_bytes(data[:-40])
    os.utime(arch_copy / nc[2], ns=(st.st_atime_ns, st.st_mtime_ns))
    # 3. a label map whose sidecar changed is read again
    sc = arch_copy / "p1" / "lm" / "les.json"
    sc.write_text(sc.read_text().replace("lesion_1", "lesion_one"))
    # 4. removed, 5. new
    (arch_copy / ce[0]).unlink()
    shutil.copy(archive["root"] / ce[0], arch_copy / "p1" / "moved_here.dcm")
    ix = scan_archive(arch_copy, cache=cache)
    _tables_equal(ix, scan_archive(arch_copy))
    assert ix.meta["n_read"] == 4  # changed x2 + label map + new
    lm = ix.series[ix.series["modality"] == "LABELMAP"].iloc[0]
    assert "lesion_one" in lm["segment_names"]
    paths = set(ix.files["path"])
    assert nc[1] in paths and nc[2] not in paths and ce[0] not in paths
    assert "p1/moved_here.dcm" in paths
    assert "truncated" in ix.problems.set_index("path").loc[nc[2], "reason"]
    # the rewritten cache knows the new state: nothing but the label maps is read again
    assert scan_archive(arch_copy, cache=cache).meta["n_read"] == 0


def test_stale_or_damaged_cache_ignored(arch_copy, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from pipeline.io import index as idx
    from pipeline.io import integrity

    cache = tmp_path / "c.parquet"
    fresh = scan_archive(arch_copy, cache=cache)
    # a cache of another reader version is not trusted, even with matching keys
    monkeypatch.setattr(integrity, "FAST_READER_VERSION", integrity.FAST_READER_VERSION + 1)
    ix = scan_archive(arch_copy, cache=cache)
    assert ix.meta["n_cached"] == 0
    _tables_equal(ix, fresh)
    monkeypatch.undo()
    # forged content under a foreign key (per-file cache and last-scan tables): ignored
    import pyarrow as pa

    parts = sorted(tmp_path.glob("c*.parquet"))
    assert len(parts) == 4  # c.parquet + c.files / c.series / c.problems.parquet
    for part in parts:
        df = pq.read_table(part).to_pandas()
        for col in ("f_patient_id", "patient_id"):
            if col in df.columns:
                df[col] = "FORGED"
        bad = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(
            {b"hitit_file_cache": b'{"schema": 1, "key": "someone else"}'})
        pq.write_table(bad, part)
    ix = scan_archive(arch_copy, cache=cache)
    assert ix.meta["n_cached"] == 0 and "FORGED" not in set(ix.files["patient_id"])
    _tables_equal(ix, fresh)
    # other name patterns change the segment kinds, other code anything: another key
    assert idx.cache_key(("x*",), ()) != idx.cache_key((), ())
    k0 = idx.cache_key((), ())
    monkeypatch.setattr(idx, "_code_digest", lambda: "edited classify.py")
    assert idx.cache_key((), ()) != k0
    assert scan_archive(arch_copy, cache=cache).meta["n_cached"] == 0
    monkeypatch.undo()
    # damaged files are rebuilt
    for part in tmp_path.glob("c*.parquet"):
        part.write_bytes(b"not parquet")
    ix = scan_archive(arch_copy, cache=cache)
    assert ix.meta["n_cached"] == 0
    _tables_equal(ix, fresh)
    assert scan_archive(arch_copy, cache=cache).meta["n_cached"] > 0


def test_fifo_and_outward_link_skipped_without_blocking(tmp_path):
    """A FIFO named *.dcm and a link to a folder outside the root are never opened: each is a
    problem row. The scan runs in a daemon thread with a timeout, so a regression (a blocking
    open of the FIFO) fails the test instead of hanging the run."""
    import os
    import threading

    arch = tmp_path / "arch"
    s = make_series(arch / "ct", n=2)
    outside = tmp_path / "outside"
    make_series(outside, n=2, patient_id="OUTSIDE")
    os.mkfifo(arch / "pipe.dcm")
    (arch / "etc").symlink_to(outside, target_is_directory=True)
    (arch / "passwd").symlink_to(outside / sorted(p.name for p in outside.iterdir())[0])
    (arch / "dangling.dcm").symlink_to(tmp_path / "nowhere.dcm")
    box = {}

    def run():
        box["ix"] = scan_archive(arch, cache=tmp_path / "c.parquet")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "scan_archive blocked (FIFO opened?)"
    ix = box["ix"]
    assert set(ix.files["series_uid"]) == {s.series_uid}
    assert "OUTSIDE" not in set(ix.files["patient_id"])
    pr = ix.problems.set_index("path")
    assert set(pr.index) == {"pipe.dcm", "etc", "passwd", "dangling.dcm"}
    assert "FIFO" in pr.loc["pipe.dcm", "reason"]
    assert "outside the archive root" in pr.loc["etc", "reason"]
    assert "outside the archive root" in pr.loc["passwd", "reason"]
    assert "broken symbolic link" in pr.loc["dangling.dcm", "reason"]
    # unchanged archive: the last scan's tables, the walk's own problems found again
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive()
    assert box["ix"].meta["n_read"] == 0
    _tables_equal(box["ix"], ix)


def test_unwritable_cache_costs_speed_not_the_index(arch_copy, tmp_path):
    """A cache that cannot be written (here its folder is a file: works for root too) gives a
    warning and the full index."""
    blocker = tmp_path / "results"
    blocker.write_text("a file where the cache folder should be")
    ix = scan_archive(arch_copy, cache=blocker / "index" / "file_cache.parquet")
    _tables_equal(ix, scan_archive(arch_copy))
    assert ix.meta["n_read"] > 0


def test_fast_reader_gives_the_tables_of_the_full_read(arch_copy, monkeypatch):
    """The fast header path changes speed, not results: with it switched off (every file read
    by pydicom and walked element by element) the tables are identical."""
    from pipeline.io import index as idx

    fast = scan_archive(arch_copy)
    monkeypatch.setattr(idx, "read_fast_header", lambda path, size: None)
    _tables_equal(fast, scan_archive(arch_copy))
