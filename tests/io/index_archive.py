"""A messy test archive shared by the index, classification and study-sheet tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from io_synth import make_series, write_rtstruct, write_seg
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipeline.geometry import Grid


def build_messy_archive(root: Path) -> dict:
    """2 CT phases, PET (AC and NAC), localizer, SEG x3 (one of a missing series), RTSTRUCT,
    a label map with sidecar, an orphan NIfTI, junk, two truncated files, a DICOMDIR and files
    without preamble, under ``root``.

    Returns
    -------
    dict
        ``root``, ``study`` and the written series (``nc``, ``ce``, ``short_nc``, ``pet``,
        ``nac``, ``loc``, ``raw``: io_synth series; ``seg_les``, ``seg_org``, ``seg_ghost``,
        ``rt``: SeriesInstanceUIDs).
    """
    root = Path(root)
    study = generate_uid()
    nc = make_series(root / "p1" / "a", study_uid=study, description="CT ABD NON-CONTRAST",
                     n=6, names="bare")
    ce = make_series(root / "p1" / "b", study_uid=study, description="Abdomen 5mm", n=8,
                     extra=lambda ds, k: setattr(ds, "ContrastBolusAgent", "Iohexol"))
    short_nc = make_series(root / "p1" / "c", study_uid=study, description="native", n=3)
    pet = make_series(root / "p1" / "pet", modality="PT", study_uid=study, n=4,
                      description="PET AC")
    nac = make_series(root / "p1" / "nac", modality="PT", study_uid=study, n=4,
                      description="PET NAC",
                      extra=lambda ds, k: setattr(ds, "CorrectedImage", ["DECY"]))
    loc = make_series(root / "p1" / "loc", study_uid=study, description="Topogram", n=1,
                      extra=lambda ds, k: setattr(ds, "ImageType",
                                                  ["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    mask = np.zeros((6, 8, 10), bool)
    mask[2:4, 3:6, 4:8] = True
    seg_les = write_seg(root / "p1" / "seg_lesions.dcm", ref=nc, masks={1: mask},
                        labels={1: "target 1"}, category="lesion")
    seg_org = write_seg(root / "p1" / "seg_organs.dcm", ref=ce, masks={1: np.ones((8, 8, 10), bool)},
                        labels={1: "liver"}, category="organ")
    # SEG of a series that is not in the archive
    ghost = make_series(root / "ghost", study_uid=study, n=6)
    seg_ghost = write_seg(root / "p1" / "seg_ghost.dcm", ref=ghost, masks={1: mask},
                          labels={1: "lesion x"}, category="lesion")
    shutil.rmtree(root / "ghost")
    sq = np.array([[0, 0, 0], [3, 0, 0], [3, 3, 0], [0, 3, 0]], float) + nc.positions[1]
    rt = write_rtstruct(root / "p1" / "rt", ref=nc, rois=[(1, "GTV_1", [sq])])
    # label map with sidecar
    grid = Grid((6, 8, 10), (0.7, 0.8, 2.5), tuple(nc.positions[0]))
    lab = np.zeros((10, 8, 6), np.uint8)
    lab[2:5, 2:5, 1:3] = 1
    (root / "p1" / "lm").mkdir()
    nib.save(nib.Nifti1Image(lab, grid.nifti_affine_ras()), root / "p1" / "lm" / "les.nii.gz")
    (root / "p1" / "lm" / "les.json").write_text(json.dumps({
        "patient_id": "P001", "study_uid": study, "referenced_series_uid": nc.series_uid,
        "kind": "lesion", "names": {"1": "lesion_1"}}))
    # a NIfTI without sidecar, junk, a truncated file, a DICOMDIR, a raw (no preamble) file
    shutil.copy(root / "p1" / "lm" / "les.nii.gz", root / "p1" / "orphan.nii.gz")
    (root / "notes.txt").write_text("not dicom at all\n")
    (root / "empty.dcm").write_bytes(b"")
    data = nc.paths[0].read_bytes()
    (root / "cut_in_pixels.dcm").write_bytes(data[: len(data) - 40])
    (root / "cut_in_header.dcm").write_bytes(data[:300])
    dd = Dataset()
    dd.file_meta = FileMetaDataset()
    dd.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    dd.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dd.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dd.FileSetID = "TEST"
    dd.DirectoryRecordSequence = []
    dd.save_as(root / "DICOMDIR", enforce_file_format=True)
    raw = make_series(root / "raw", study_uid=generate_uid(), patient_id="P002", n=2,
                      order="sorted", write=False)
    for p, ds in zip(raw.paths, raw.datasets):
        ds.preamble = None
        pydicom.dcmwrite(p, ds, enforce_file_format=False)
    return {
        "root": root, "study": study, "nc": nc, "ce": ce, "short_nc": short_nc, "pet": pet,
        "nac": nac, "loc": loc, "seg_les": seg_les, "seg_org": seg_org, "seg_ghost": seg_ghost,
        "rt": rt, "raw": raw,
    }
