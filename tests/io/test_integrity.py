"""File recognition and the truncation walk (pipeline.io.integrity)."""

from __future__ import annotations

import numpy as np
import pydicom
from io_synth import make_series, write_rtstruct
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipeline.io.index import scan_archive
from pipeline.io.integrity import NOT_DICOM, check_complete, read_checked_header, sniff_dicom


def test_truncation_check_directly(tmp_path):
    s = make_series(tmp_path / "ct", n=1, rows=64, cols=64, order="sorted")
    data = s.paths[0].read_bytes()
    for cut, expect in [(len(data), None), (len(data) - 1, "remain"), (len(data) - 4000, "remain")]:
        p = tmp_path / f"cut{cut}.dcm"
        p.write_bytes(data[:cut])
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        reason = check_complete(p, ds)
        assert (reason is None) if expect is None else (expect in reason)
    # encapsulated (RLE) pixel data cut inside a fragment
    ds = pydicom.dcmread(s.paths[0])
    ds.compress(pydicom.uid.RLELossless)
    p = tmp_path / "rle.dcm"
    ds.save_as(p, enforce_file_format=True)
    assert check_complete(p, pydicom.dcmread(p, stop_before_pixels=True)) is None
    rle = p.read_bytes()
    p.write_bytes(rle[:-10])
    assert "item at byte" in check_complete(p, pydicom.dcmread(p, stop_before_pixels=True))
    # PixelData length consistent with the file but shorter than Rows x Columns x 2
    ds = pydicom.dcmread(s.paths[0])
    ds.PixelData = ds.PixelData[:100]
    p = tmp_path / "short.dcm"
    ds.save_as(p, enforce_file_format=True)
    assert "PixelData holds 100 bytes" in check_complete(
        p, pydicom.dcmread(p, stop_before_pixels=True))


def test_truncated_sequence_file(tmp_path):
    """An RTSTRUCT (undefined-length sequences) cut in the middle is caught too."""
    ct = make_series(tmp_path / "src" / "ct", n=3)
    sq = np.array([[0, 0, 0], [3, 0, 0], [3, 3, 0], [0, 3, 0]], float) + ct.positions[1]
    write_rtstruct(tmp_path / "src" / "rt", ref=ct, rois=[(1, "GTV_1", [sq])])
    data = (tmp_path / "src" / "rt").read_bytes()
    arch = tmp_path / "arch"
    arch.mkdir()
    p = arch / "rt_cut"
    p.write_bytes(data[: len(data) // 2])
    ix = scan_archive(arch)
    assert list(ix.problems["path"]) == ["rt_cut"]
    assert ix.files.empty
    ds = pydicom.dcmread(tmp_path / "src" / "rt", stop_before_pixels=True)
    assert check_complete(tmp_path / "src" / "rt", ds) is None


def test_read_checked_header_outcomes(tmp_path):
    s = make_series(tmp_path / "ct", n=1, order="sorted")
    ok = read_checked_header(s.paths[0])
    assert ok.dataset is not None and ok.reason == "" and "PixelData" not in ok.dataset
    assert sniff_dicom(s.paths[0]) == (True, True)
    (tmp_path / "notes.txt").write_text("not dicom at all\n")
    junk = read_checked_header(tmp_path / "notes.txt")
    assert junk.dataset is None and junk.error_class == NOT_DICOM
    assert sniff_dicom(tmp_path / "notes.txt") == (False, False)
    data = s.paths[0].read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-40])
    cut = read_checked_header(tmp_path / "cut.dcm")
    assert cut.dataset is None and cut.error_class == "DicomReadError" and "remain" in cut.reason
    assert cut.partial.SeriesInstanceUID == s.series_uid  # the header still tells where it belongs
    dd = Dataset()
    dd.file_meta = FileMetaDataset()
    dd.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    dd.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dd.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dd.FileSetID = "TEST"
    dd.DirectoryRecordSequence = []
    dd.save_as(tmp_path / "DICOMDIR", enforce_file_format=True)
    skipped = read_checked_header(tmp_path / "DICOMDIR")
    assert skipped.dataset is None and skipped.reason == "" and skipped.error_class == ""
    ds = pydicom.dcmread(s.paths[0])
    del ds.SeriesInstanceUID
    ds.save_as(tmp_path / "noseries.dcm", enforce_file_format=True)
    miss = read_checked_header(tmp_path / "noseries.dcm")
    assert miss.error_class == "MissingTagError" and "SeriesInstanceUID" in miss.reason
