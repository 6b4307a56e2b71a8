"""Radiomics on crops: same values as on the whole image, empty values + reason when too small."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from phantom_study import arrays, config, lesion_masks, organ_masks, volumes

from pipeline.features import radiomics as rad
from pipeline.features import stage
from pipeline.geometry import Grid


def test_parameter_files_load_and_name_their_columns():
    cfg = config()
    runner = rad.RadiomicsRunner(cfg["features"]["radiomics"])
    assert "ct_original_glcm_Contrast" in runner.ct_names
    assert "ct_original_shape_MeshVolume" in runner.ct_names
    assert "pet_original_firstorder_Maximum" in runner.pet_names
    assert not any("shape" in n for n in runner.pet_names)  # shape is the CT's job
    # the pipeline resamples CT itself (IBSI way); pyradiomics gets no resampling setting
    assert runner.ct_resample == ((2.0, 2.0, 2.0), "sitkLinear")
    assert "resampledPixelSpacing" not in runner.ct.settings or \
        runner.ct.settings["resampledPixelSpacing"] is None


def test_resample_ibsi_centres_the_grid_and_cuts_the_mask_at_half():
    img = sitk.GetImageFromArray(np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7))
    img.SetSpacing((1.0, 1.0, 3.0))
    img.SetOrigin((10.0, 20.0, 30.0))
    m = sitk.GetImageFromArray(np.ones((5, 6, 7), np.uint8))
    m.CopyInformation(img)
    out, om = rad.resample_ibsi(img, m, (2.0, 2.0, 2.0), round_intensities=True)
    assert out.GetSize() == (4, 3, 8)  # ceil(7/2), ceil(6/2), ceil(15/2)
    c_in = np.array(img.TransformContinuousIndexToPhysicalPoint([3.0, 2.5, 2.0]))
    c_out = np.array(out.TransformContinuousIndexToPhysicalPoint([1.5, 1.0, 3.5]))
    np.testing.assert_allclose(c_in, c_out, atol=1e-9)  # same centre
    a = sitk.GetArrayFromImage(out)
    assert np.array_equal(a, np.rint(a))
    assert sitk.GetArrayFromImage(om).all()  # extrapolated as the nearest boundary value


def test_crop_gives_the_values_of_a_whole_volume_run():
    a = arrays("small", "extended", None)
    nc, _, _ = volumes(a, shifted_frame=False)
    cfg = config()
    runner = rad.RadiomicsRunner(cfg["features"]["radiomics"])
    m = next(x for x in lesion_masks(a, on_contrast=False) if x.name == "liver_deep")
    ctx = stage.FeatureContext(ct={"noncontrast": nc})
    row = {n: None for n in runner.ct_names}
    runner._ct(m, ctx, cfg, row)
    whole = rad.extract(runner.ct, a.ct_noncontrast_hu, a.lesion_labels == 3, a.ct_grid,
                        resample=runner.ct_resample, round_intensities=True)
    for k in ("original_firstorder_Mean", "original_firstorder_Median",
              "original_shape_VoxelVolume", "original_shape_Maximum3DDiameter"):
        # the IBSI grid is centred on the crop, not on the whole image: sub-voxel shift only
        assert row["ct_" + k] == pytest.approx(whole[k], rel=0.02), k
    runner.ct_resample = None  # native grid: the crop is exactly the whole-image run
    row = {n: None for n in runner.ct_names}
    runner._ct(m, ctx, cfg, row)
    whole = rad.extract(runner.ct, a.ct_noncontrast_hu, a.lesion_labels == 3, a.ct_grid)
    for k, v in whole.items():
        assert row["ct_" + k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


def test_too_small_lesion_gives_empty_values_and_a_reason_not_a_crash():
    a = arrays("small", "extended", None)
    nc, ce, suv = volumes(a, shifted_frame=False)
    cfg = config()
    les = lesion_masks(a, on_contrast=False)
    ctx = stage.prepare({"noncontrast": nc, "contrast": ce}, suv, None, "", cfg,
                        lesion_grid=a.ct_grid, organs=organ_masks(a), lesions=les)
    tiny = next(m for m in les if m.name == "lung_nodule_tiny")
    row = stage.lesion_columns(tiny, ctx, cfg)
    assert "pet: not computed" in row["radiomics_reason"]
    assert all(row[n] is None for n in ctx.radiomics.pet_names)
    assert row["ct_original_shape_VoxelVolume"] is not None
    # a single CT voxel: pyradiomics refuses it, the study goes on
    one = tiny.__class__(tiny.name, tiny.source, tiny.grid,
                         tuple((b[0], b[0] + 1) for b in tiny.bbox_zyx),
                         np.ones((1, 1, 1), bool), referenced_series_uid=tiny.referenced_series_uid)
    row = stage.lesion_columns(one, ctx, cfg)
    assert "ct" in row["radiomics_reason"] and "not computed" in row["radiomics_reason"]
    assert all(row[n] is None for n in ctx.radiomics.ct_names)


def test_radiomics_can_be_switched_off():
    a = arrays("small", "extended", None)
    nc, _, suv = volumes(a, shifted_frame=False)
    cfg = config(radiomics={"enabled": False})
    m = lesion_masks(a, on_contrast=False)[0]
    ctx = stage.prepare({"noncontrast": nc}, suv, None, "", cfg, lesion_grid=a.ct_grid)
    row = stage.lesion_columns(m, ctx, cfg)
    assert not any(k.startswith(("ct_original", "pet_original")) for k in row)
    assert "disabled" in row["radiomics_reason"]


def test_grid_from_crop_is_what_pyradiomics_sees():
    g = Grid((4, 5, 6), (0.5, 0.7, 2.0), (1.0, 2.0, 3.0))
    img = g.to_sitk(np.zeros(g.shape_zyx, np.float32))
    assert img.GetSpacing() == (0.5, 0.7, 2.0) and img.GetSize() == (6, 5, 4)
