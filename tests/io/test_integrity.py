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


def _full_and_fast(path):
    from pipeline.io.classify import file_extra
    from pipeline.io.index import _file_record
    from pipeline.io.integrity import read_fast_header

    size = path.stat().st_size
    fast = read_fast_header(path, size)
    check = read_checked_header(path)
    full = None
    if check.dataset is not None:
        full = _file_record("x", check.dataset, size), file_extra(check.dataset, "CT", (), ())
    if fast is None:
        return full, None
    return full, (_file_record("x", fast, size), file_extra(fast, "CT", (), ()))


def test_fast_header_matches_pydicom(tmp_path):
    """The fast reader gives the very record pydicom gives, across encodings and odd values."""
    from pipeline.io.integrity import read_fast_header

    def odd(ds, k):
        ds.SeriesDescription = " CT ABD  "
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ContrastBolusAgent = "Iohexol 350"
        ds.InstanceNumber = "0007"
        ds.PatientID = "Zoë-Ñ 12"
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.CorrectedImage = ["DECY", "ATTN"]

    cases = {
        "plain": make_series(tmp_path / "a", n=1, order="sorted"),
        "odd": make_series(tmp_path / "b", n=1, order="sorted", extra=odd),
        "pet": make_series(tmp_path / "c", modality="PT", n=1, order="sorted"),
    }
    paths = [s.paths[0] for s in cases.values()]
    # implicit VR little endian, encapsulated (RLE), trailing padding after the pixels
    ds = pydicom.dcmread(paths[0])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.save_as(tmp_path / "implicit.dcm", implicit_vr=True, little_endian=True)
    ds = pydicom.dcmread(paths[1])
    ds.compress(pydicom.uid.RLELossless)
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    ds = pydicom.dcmread(paths[0])
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 64)  # DataSetTrailingPadding
    ds.save_as(tmp_path / "padded.dcm", enforce_file_format=True)
    paths += [tmp_path / "implicit.dcm", tmp_path / "rle.dcm", tmp_path / "padded.dcm"]
    for p in paths:
        full, fast = _full_and_fast(p)
        assert fast is not None, p
        assert fast[0] == full[0], p
        assert fast[1] == full[1], p
    rec, ex = _full_and_fast(paths[1])[1]
    assert rec["patient_id"] == "Zoë-Ñ 12" and rec["series_description"] == "CT ABD"
    assert rec["image_type"] == "ORIGINAL\\PRIMARY\\AXIAL" and rec["instance_number"] == 7
    assert ex.contrast_agent == "Iohexol 350" and ex.corrected_image == "DECY\\ATTN"
    assert read_fast_header(paths[0], paths[0].stat().st_size)["Rows"] == 8


def test_fast_header_defers_every_doubtful_file(tmp_path):
    """Cut, inconsistent, preamble-less, non-image and unusual files are left to the full read
    (None), which gives each its documented reason."""
    from pipeline.io.integrity import read_fast_header

    s = make_series(tmp_path / "ct", n=1, rows=64, cols=64, order="sorted")
    data = s.paths[0].read_bytes()

    def fast(p):
        return read_fast_header(p, p.stat().st_size)

    for name, blob in [("cut_pixels", data[:-1]), ("cut_header", data[:300]),
                       ("cut_meta", data[:140]), ("junk", b"hello" * 100), ("empty", b"")]:
        (tmp_path / name).write_bytes(blob)
        assert fast(tmp_path / name) is None, name
    ds = pydicom.dcmread(s.paths[0])
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(tmp_path / "short.dcm", enforce_file_format=True)
    assert fast(tmp_path / "short.dcm") is None
    del ds.SOPInstanceUID
    ds.PixelData = pydicom.dcmread(s.paths[0]).PixelData
    ds.save_as(tmp_path / "nosop.dcm", enforce_file_format=True)
    assert fast(tmp_path / "nosop.dcm") is None
    ds = pydicom.dcmread(s.paths[0])
    ds.SpecificCharacterSet = "ISO_IR 144"  # Cyrillic: left to pydicom's decoders
    ds.save_as(tmp_path / "cyr.dcm", enforce_file_format=True)
    assert fast(tmp_path / "cyr.dcm") is None
    ds = pydicom.dcmread(s.paths[0])
    ds.SOPClassUID = [ds.SOPClassUID, "1.2.3"]  # multi-valued: nonsense, left to pydicom
    ds.save_as(tmp_path / "multisop.dcm", enforce_file_format=True)
    assert fast(tmp_path / "multisop.dcm") is None
    ds = pydicom.dcmread(s.paths[0])
    ds.preamble = None
    pydicom.dcmwrite(tmp_path / "raw.dcm", ds, enforce_file_format=False)
    assert fast(tmp_path / "raw.dcm") is None
    # the transfer syntax says big endian (same UID length): the fast reader does not guess
    (tmp_path / "big.dcm").write_bytes(data.replace(b"1.2.840.10008.1.2.1\0",
                                                    b"1.2.840.10008.1.2.2\0", 1))
    assert fast(tmp_path / "big.dcm") is None
    ct = make_series(tmp_path / "src", n=3)
    sq = np.array([[0, 0, 0], [3, 0, 0], [3, 3, 0]], float) + ct.positions[1]
    write_rtstruct(tmp_path / "rt", ref=ct, rois=[(1, "GTV_1", [sq])])
    assert fast(tmp_path / "rt") is None  # not an image SOP class: read in full
    assert fast(s.paths[0]) is not None
