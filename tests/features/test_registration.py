"""Frames, rigid transforms and crop-first sampling (pipeline.features.registration)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.features.registration import (
    PhaseAlignment,
    StudyFrames,
    grid_through,
    is_subgrid,
    mask_on_grid,
    rotation_angle_deg,
    sample_volume,
    study_frames,
)
from pipeline.geometry import Grid, bbox_of, resample
from pipeline.records import LesionMask, MaskSource, Volume

G = Grid((30, 40, 50), (1.5, 1.2, 2.0), (-30.0, -24.0, -20.0))


def euler(angles_deg=(0.0, 0.0, 0.0), t=(0.0, 0.0, 0.0), centre=(1.0, 2.0, 3.0)):
    tx = sitk.Euler3DTransform()
    tx.SetCenter(centre)
    tx.SetRotation(*np.radians(angles_deg))
    tx.SetTranslation(t)
    return tx


def test_grid_through_maps_every_voxel_exactly():
    tx = euler((3.0, -2.0, 5.0), (4.0, -1.5, 2.25))
    g2 = grid_through(G, tx)
    idx = np.array([[0, 0, 0], [29, 39, 49], [7, 11, 13]], float)
    want = np.array([tx.TransformPoint(tuple(p)) for p in G.zyx_to_lps(idx)])
    np.testing.assert_allclose(g2.zyx_to_lps(idx), want, atol=1e-9)
    assert rotation_angle_deg(tx) == pytest.approx(np.degrees(np.linalg.norm(
        np.radians([3.0, -2.0, 5.0]))), rel=0.02)
    assert grid_through(G, None) is G


def test_sample_volume_slices_exactly_and_interpolates_otherwise():
    rng = np.random.default_rng(1)
    arr = rng.normal(size=G.shape_zyx).astype(np.float32)
    vol = Volume(arr, G, "HU", "s")
    bb = ((5, 12), (3, 20), (10, 31))
    sub = G.crop(bb)
    assert is_subgrid(G, sub)
    np.testing.assert_array_equal(sample_volume(vol, sub), arr[5:12, 3:20, 10:31])
    # half-voxel offset: linear interpolation, same as the whole-volume resample
    off = Grid(sub.shape_zyx, sub.spacing_xyz_mm, tuple(np.add(sub.origin_lps_mm, (0.75, 0, 0))))
    assert not is_subgrid(G, off)
    np.testing.assert_allclose(sample_volume(vol, off), resample(arr, G, off), atol=1e-6)
    # outside the field of view: NaN, never 0
    far = Grid((3, 3, 3), (1.0, 1.0, 1.0), (500.0, 0.0, 0.0))
    assert np.isnan(sample_volume(vol, far)).all()


def test_mask_moves_between_frames_without_resampling_error():
    full = np.zeros(G.shape_zyx, bool)
    full[10:16, 12:22, 20:27] = True
    bb = bbox_of(full)
    m = LesionMask("l", MaskSource.SEG, G, bb, full[tuple(slice(a, b) for a, b in bb)])
    shift = (3.0, -2.4, 4.0)  # whole voxels along x (1.5), y (1.2) and z (2.0)
    tx = euler(t=shift)
    moved = mask_on_grid(m, G, tx)
    assert moved.sum() == full.sum()
    np.testing.assert_array_equal(np.argwhere(moved).min(0), [12, 10, 22])


def test_study_frames_rules():
    a = Volume(np.zeros((4, 4, 4), np.float32), Grid((4, 4, 4), (1, 1, 1), (0, 0, 0)), "HU",
               "A", "F1")
    b = Volume(a.array, a.grid, "HU", "B", "F1")
    pet = Volume(a.array, a.grid, "SUVbw", "P", "F9")
    fr = study_frames({"noncontrast": a, "contrast": b}, pet, {})
    assert fr.alignment.status == "same_frame_resampled"
    assert fr.space_of_series == {"A": "nc", "B": "nc", "P": "nc"}
    assert any("matches no CT" in n for n in fr.notes)
    assert study_frames({"noncontrast": a}, None, {}).alignment.status == "not_needed"
    failed = StudyFrames(PhaseAlignment("registration_failed", "bad"))
    t, why = failed.transform("nc", "ce")
    assert t is None and "registration_failed" in why
    assert failed.transform("ce", "ce") == (None, "")
