"""The review image cache: written by the study job (raw int16 CT, float16 PET, memory-mapped by
the app), equal to the DICOM it came from, PET fused on demand, switched off by configuration."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.geometry import Grid
from pipeline.records import LesionMask, MaskSource, Volume
from pipeline.review import store
from pipeline.review.cache import (AIR_HU, HU_MIN, VERSION, ImageCache, cache_dir, grid_from_dict,
                                   write_image_cache)


def _files(results):
    idx = json.loads((results / "index" / "index.json").read_text())
    files = pd.read_csv(results / "index" / "files.csv", dtype=str, keep_default_na=False)
    return idx["root"], files


def test_study_job_writes_cache_equal_to_dicom(phantom_results):
    """Every study of the sample results has a version-2 cache from the study job; the stored CT
    slices equal the DICOM's HU (within int16 rounding, 0.5 HU), air outside the stored box."""
    from pipeline.io import dicom

    root, files = _files(phantom_results)
    rows = store.read_study_sheet(phantom_results)
    assert rows
    for r in rows:
        d = cache_dir(store.study_dir(phantom_results, r["patient_id"], r["study_uid"]))
        c = ImageCache(d)
        assert c.index["version"] == VERSION and "ct" in c.index["phases"]
        assert not list(d.glob("*.npz")) and (d / "ct.npy").is_file()
        assert isinstance(c._array("ct"), np.memmap)  # the app memory-maps, never loads the volume
    r = rows[0]
    c = ImageCache(cache_dir(store.study_dir(phantom_results, r["patient_id"], r["study_uid"])))
    uid = r["ct_series_uid"]
    ct = dicom.load_ct([f"{root}/{p}" for p in files.loc[files["series_uid"] == uid, "path"]], series_uid=uid)
    assert grid_from_dict(c.index["phases"]["ct"]).same_as(ct.grid)
    y0, y1, x0, x1 = c.index["phases"]["ct"]["crop_yx"]
    for z in (0, ct.grid.shape_zyx[0] // 2, ct.grid.shape_zyx[0] - 1):
        got, want = c.slice("ct", z), np.clip(ct.array[z], -1024, 3071)
        assert np.abs(got[y0:y1, x0:x1] - want[y0:y1, x0:x1]).max() <= 0.5
        outside = np.ones(got.shape, bool)
        outside[y0:y1, x0:x1] = False
        assert np.all(got[outside] == HU_MIN) and np.all(want[outside] <= AIR_HU)
    with pytest.raises(IndexError):
        c.slice("ct", ct.grid.shape_zyx[0])


def test_backfill_writes_the_study_jobs_cache(fresh_results):
    """``--backfill-cache`` (results made without a cache) writes the same arrays and contours."""
    from pipeline.review.backfill import backfill_study_cache

    r = store.read_study_sheet(fresh_results)[0]
    d = cache_dir(store.study_dir(fresh_results, r["patient_id"], r["study_uid"]))
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.suffix == ".npy"}
    contours = json.loads((d / "contours.json").read_text())
    shutil.rmtree(d)
    backfill_study_cache(fresh_results, r["patient_id"], r["study_uid"])
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.suffix == ".npy"}.keys() == before.keys()
    for name, data in before.items():
        if name != "pet.npy":  # PET: the study job may keep SUV where backfill shows activity
            assert (d / name).read_bytes() == data, name
    assert json.loads((d / "contours.json").read_text()) == contours


def test_image_cache_switch_off(fresh_results, tmp_path):
    """``review.image_cache: false``: the study job writes its tables but no cache."""
    from pipeline.cli import main
    from pipeline.config import load_config

    r = store.read_study_sheet(fresh_results)[0]
    out = store.study_dir(fresh_results, r["patient_id"], r["study_uid"])
    shutil.rmtree(cache_dir(out))
    (out / "lesions.csv").unlink()
    cfg = load_config(overrides={"review": {"image_cache": False}})
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump(cfg))
    assert main(["study", "--results", str(fresh_results), "--patient-dir", r["patient_dir"],
                 "--study-dir", r["study_dir"], "--settings", str(settings)]) == 0
    assert (out / "lesions.csv").is_file() and not cache_dir(out).exists()
    prov = json.loads((out / "provenance.json").read_text())
    assert "review_cache" not in [s["stage"] for s in prov["stages"]]


def test_fusion_is_trilinear_and_zero_outside(tmp_path):
    """PET = x + 2 y + 3 z (mm, SUV) on a coarse grid offset from the CT: fused values on CT
    pixels inside the PET's field of view equal the plane exactly (trilinear reproduces it,
    within float16 storage 0.1 %); pixels outside it are 0."""
    ct_g = Grid((6, 30, 40), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    pet_g = Grid((4, 8, 10), (3.0, 3.0, 3.0), (1.5, 1.5, 0.5))  # x 1.5 .. 28.5, y 1.5 .. 22.5 mm
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=float) for n in pet_g.shape_zyx], indexing="ij")
    lps = pet_g.zyx_to_lps(np.stack([zz, yy, xx], -1).reshape(-1, 3))
    pet = (lps @ np.array([1.0, 2.0, 3.0]) + 10.0).reshape(pet_g.shape_zyx).astype(np.float32)
    vols = {"ct": Volume(np.zeros(ct_g.shape_zyx, np.float32), ct_g, "HU", "1.1"),
            "pet": Volume(pet, pet_g, "SUVbw", "1.2")}
    c = ImageCache(write_image_cache(tmp_path, vols, {}))
    z = 3  # CT z = 6 mm: inside the PET (z 0.5 .. 9.5 mm)
    f = c.slice("ct", z, fusion=True)
    assert f.shape == (30, 40)
    y, x = np.mgrid[0:30, 0:40].astype(float)
    want = x + 2 * y + 3 * 6.0 + 10.0
    inside = (x >= 1.5) & (x <= 28.5) & (y >= 1.5) & (y <= 22.5)
    assert np.allclose(f[inside], want[inside], rtol=1e-3)
    assert np.all(f[(x > 30) | (y > 24)] == 0.0)
    general = ImageCache(c.path)
    general._separable = lambda *a: False  # the map_coordinates path (rotated grids) gives the same
    assert np.allclose(general.slice("ct", z, fusion=True), f, atol=1e-5)
    # between the last PET slice centre and its edge (half a voxel) the edge slice is repeated
    assert np.allclose(c.slice("ct", 5, fusion=True)[inside], (want + 3 * (9.5 - 6.0))[inside], rtol=1e-3)


def test_mask_on_another_grid_is_traced_on_each_phase(tmp_path):
    """A lesion drawn on a contrast CT of half the pixel size: its contour on the non-contrast
    phase encloses the same physical square (x, y 19.5 .. 30 mm), within one pixel of that phase."""
    ct_g = Grid((5, 40, 40), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    fine = Grid((5, 80, 80), (0.5, 0.5, 2.0), (-0.25, -0.25, 0.0))
    crop = np.ones((1, 20, 20), bool)  # voxel centres x, y 19.75 .. 29.75 mm on the fine grid
    m = LesionMask("l", MaskSource.SEG, fine, ((2, 3), (40, 60), (40, 60)), crop)
    vols = {"ct": Volume(np.zeros(ct_g.shape_zyx, np.float32), ct_g, "HU", "1.1"),
            "ce_ct": Volume(np.zeros(fine.shape_zyx, np.float32), fine, "HU", "1.2")}
    c = ImageCache(write_image_cache(tmp_path, vols, {"l": m}))
    les = c.index["lesions"][0]
    assert les["slices"] == {"ct": [2, 2], "ce_ct": [2, 2]}
    for role, px in (("ct", 1.0), ("ce_ct", 0.5)):
        pts = np.array(c.contours()[role]["l"]["2"][0])
        g = grid_from_dict(c.index["phases"][role])
        xs = pts[:, 0] * px + g.origin_lps_mm[0]
        ys = pts[:, 1] * px + g.origin_lps_mm[1]
        assert abs(xs.min() - 19.5) <= px and abs(xs.max() - 30.0) <= px, role
        assert abs(ys.min() - 19.5) <= px and abs(ys.max() - 30.0) <= px, role
    # on its own grid the outline is exact: the 0.5 iso-line half a pixel outside the centres
    pts = np.array(c.contours()["ce_ct"]["l"]["2"][0])
    assert np.allclose([pts[:, 0].min(), pts[:, 0].max()], [39.5, 59.5])
    # straight runs keep only their ends: 4 sides + 4 cut corners (+ the closing vertex)
    assert len(pts) == 9


def test_rewrite_leaves_no_stale_phase(tmp_path):
    """A study rewritten with fewer phases (or over a version-1 cache) keeps only its own files."""
    g = Grid((3, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    ct = Volume(np.full(g.shape_zyx, 10.0, np.float32), g, "HU", "1.1")
    d = write_image_cache(tmp_path, {"ct": ct, "ce_ct": ct}, {})
    (d / "ct.npz").write_bytes(b"version 1")
    assert {p.name for p in d.glob("*.np*")} == {"ct.npy", "ce_ct.npy", "ct.npz"}
    write_image_cache(tmp_path, {"ct": ct}, {})
    assert {p.name for p in d.glob("*.np*")} == {"ct.npy"}
    c = ImageCache(d)
    assert list(c.index["phases"]) == ["ct"] and np.all(c.slice("ct", 2) == 10.0)


def test_failed_study_leaves_a_placeholder_index(fresh_results, tmp_path):
    """The workflow declares review_cache/index.json: a study that fails still writes it, without
    images and with the reason; the app shows no viewer and serves no slice for it."""
    from pipeline.cli import main
    from pipeline.review.app import create_app
    from pipeline.review.cache import has_images

    r = store.read_study_sheet(fresh_results)[0]
    out = store.study_dir(fresh_results, r["patient_id"], r["study_uid"])
    shared_root, files = _files(fresh_results)
    root = tmp_path / "archive"  # a private archive: the shared one stays whole
    shutil.copytree(shared_root, root)
    ip = fresh_results / "index" / "index.json"
    ip.write_text(json.dumps({**json.loads(ip.read_text()), "root": str(root)}))
    for rel in files.loc[files["series_uid"] == r["ct_series_uid"], "path"]:
        (root / rel).unlink()  # the CT is gone: the study fails at load_images
    assert main(["study", "--results", str(fresh_results), "--patient-dir", r["patient_dir"],
                 "--study-dir", r["study_dir"]]) == 0
    assert json.loads((out / "provenance.json").read_text())["status"] == "failed"
    idx = json.loads((cache_dir(out) / "index.json").read_text())
    assert idx["phases"] == {} and "did not complete" in idx["reason"]
    assert not list(cache_dir(out).glob("*.npy")) and not has_images(out)
    with pytest.raises(Exception, match="no images in the review cache"):
        ImageCache(cache_dir(out))
    app = create_app(fresh_results, reader="r", token="t")
    c = app.test_client()
    c.get("/?token=t")
    assert "no-cache" in c.get(f"/study/{r['patient_id']}/{r['study_uid']}").get_data(as_text=True)
    assert c.get(f"/slice/{r['patient_id']}/{r['study_uid']}/ct/0.png").status_code == 404
