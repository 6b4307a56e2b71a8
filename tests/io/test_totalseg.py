"""TotalSegmentator output folders (io): detection and reading, and the anatomy mapping on top."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from pipeline.anatomy import organs as O
from pipeline.geometry import Grid
from pipeline.io import totalseg as T
from pipeline.records import SegmentKind

G = Grid((20, 30, 40), (2.0, 2.0, 3.0), (-40.0, -30.0, -30.0))


def _box(lo, hi) -> np.ndarray:
    m = np.zeros(G.shape_zyx, bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


def _write_nifti(path, mask_zyx: np.ndarray, grid: Grid) -> None:
    data = np.ascontiguousarray(np.transpose(mask_zyx, (2, 1, 0))).astype(np.uint8)
    nib.save(nib.Nifti1Image(data, grid.nifti_affine_ras()), str(path))


def test_totalseg_folder_detection_and_reading(tmp_path):
    folder = tmp_path / "segmentations"
    folder.mkdir()
    _write_nifti(folder / "liver.nii.gz", _box((0, 0, 0), (5, 5, 5)), G)
    _write_nifti(folder / "lung_upper_lobe_right.nii.gz", _box((5, 5, 5), (8, 8, 8)), G)
    _write_nifti(folder / "lung_lower_lobe_right.nii.gz", _box((8, 5, 5), (10, 8, 8)), G)
    _write_nifti(folder / "spleen.nii.gz", np.zeros(G.shape_zyx, bool), G)  # empty: skipped
    (folder / "notes.txt").write_text("x")
    assert T.is_totalseg_folder(folder)
    assert not T.is_totalseg_folder(tmp_path / "missing")
    other = tmp_path / "other"
    other.mkdir()
    _write_nifti(other / "lesions.nii.gz", _box((0, 0, 0), (2, 2, 2)), G)
    assert not T.is_totalseg_folder(other)
    raw = T.read_totalseg_folder(folder, grid=G)  # io: one mask per non-empty file, unmapped
    assert list(raw) == ["liver", "lung_lower_lobe_right", "lung_upper_lobe_right"]
    assert all(m.kind == SegmentKind.ORGAN and m.name == k for k, m in raw.items())
    assert raw["lung_upper_lobe_right"].voxel_count == 3 * 3 * 3
    out = O.totalseg_organs(folder, grid=G)  # anatomy: mapped to structures and merged
    assert sorted(out) == ["liver", "lung_right"]
    assert out["lung_right"].voxel_count == 5 * 3 * 3
    assert out["liver"].grid.same_as(G)
    # another grid: resampled (nearest) onto the target
    fine = Grid((40, 60, 80), (1.0, 1.0, 1.5), (-40.5, -30.5, -30.75))
    out2 = O.totalseg_organs(folder, grid=fine)
    assert out2["liver"].grid.same_as(fine)
    assert out2["liver"].voxel_count == pytest.approx(8 * out["liver"].voxel_count, rel=0.1)
    native = O.totalseg_organs(folder)  # no target grid: each file's own grid
    assert native["liver"].grid.same_as(G)
