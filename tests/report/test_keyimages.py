"""Key images: the contour is drawn where the lesion is (pixel sampling), crops round-trip,
needle paths and MIP labels land on their projected positions.

Synthetic volumes with an analytic ellipsoid lesion, on an axial grid and on a grid rotated
about z with the CT on a third grid (so the slice is resampled); every expected pixel position
is computed from LPS points through :class:`pipeline.geometry.Grid` and the rendered image's
:class:`PanelMap`, never from the renderer's own intermediate arrays.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from pipeline.geometry import Grid, bbox_of
from pipeline.records import LesionMask, MaskSource, Volume
from pipeline.report import figures as F
from pipeline.report import keyimages as K

CENTRE = np.array([12.3, -17.9, 31.1])
SEMI = np.array([11.0, 7.0, 6.0])  # mm along LPS x, y, z
YELLOW = np.array(F.hex_to_rgb(F.CONTOUR_CT))
GREEN = np.array(F.hex_to_rgb(F.NEEDLE))


def _rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])


def _grid(shape, spacing, centre, rot_deg=0.0) -> Grid:
    d = _rot_z(rot_deg)
    half = (np.array(shape[::-1]) - 1) / 2 * np.array(spacing)
    origin = np.asarray(centre) - d @ half
    return Grid(tuple(shape), tuple(spacing), tuple(origin), tuple(d.ravel()))


def _inside(pts: np.ndarray) -> np.ndarray:
    return (((pts - CENTRE) / SEMI) ** 2).sum(axis=1) <= 1.0


def _field(grid: Grid) -> np.ndarray:
    idx = np.argwhere(np.ones(grid.shape_zyx, bool))
    return _inside(grid.zyx_to_lps(idx)).reshape(grid.shape_zyx)


def make_case(kind: str):
    """(ct Volume, LesionMask, suv Volume) for an 'axial' or 'rotated' geometry."""
    if kind == "axial":
        mgrid = _grid((20, 110, 110), (0.8, 0.8, 2.5), CENTRE + [3.0, -2.0, 1.0])
        cgrid = mgrid
    else:
        mgrid = _grid((20, 110, 110), (0.8, 0.8, 2.5), CENTRE + [3.0, -2.0, 1.0], rot_deg=20.0)
        cgrid = _grid((30, 100, 100), (0.9, 0.9, 2.0), CENTRE + [-1.0, 2.0, -2.0], rot_deg=-7.0)
    full = _field(mgrid)
    bb = bbox_of(full)
    mask = LesionMask("lesion A", MaskSource.SEG, mgrid, bb,
                      full[tuple(slice(a, b) for a, b in bb)].copy(), referenced_series_uid="1.2.3")
    ct = Volume(np.where(_field(cgrid), 100.0, 40.0).astype(np.float32), cgrid, "HU", "1.2.3")
    pgrid = _grid((16, 40, 40), (4.0, 4.0, 4.0), CENTRE + [1.0, 1.0, 0.0])
    suv = Volume(np.where(_field(pgrid), 8.0, 1.0).astype(np.float32), pgrid, "SUVbw", "1.2.4")
    return ct, mask, suv


def _png(img: K.KeyImage) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(img.png)).convert("RGB")).astype(int)


def _colour_mask(rgb: np.ndarray, colour: np.ndarray, tol: int = 12) -> np.ndarray:
    return np.all(np.abs(rgb - colour) <= tol, axis=-1)


def _panel_slice(rgb: np.ndarray, pm: K.PanelMap) -> np.ndarray:
    out = np.zeros(rgb.shape[:2], bool)
    out[pm.y0:pm.y0 + pm.height, pm.x0:pm.x0 + pm.width] = True
    return out


def _face_points_lps(mask: LesionMask, k: int) -> np.ndarray:
    """LPS midpoints between in-plane 4-neighbours inside / outside the 3D mask on slice k."""
    sl = mask.full()[k]
    pts = []
    for axis in (0, 1):
        for step in (-1, 1):
            nb = np.roll(np.pad(sl, 1), -step, axis=axis)[1:-1, 1:-1]
            idx = np.argwhere(sl & ~nb).astype(float)
            idx[:, axis] += 0.5 * step
            pts.append(idx)
    rc = np.concatenate(pts)
    zyx = np.column_stack([np.full(len(rc), float(k)), rc])
    return mask.grid.zyx_to_lps(zyx)


@pytest.mark.parametrize("kind", ["axial", "rotated"])
def test_contour_drawn_on_the_projected_lesion_boundary(kind):
    ct, mask, suv = make_case(kind)
    crops = K.extract_lesion_crops(ct, mask, "lesion_a", None, suv=suv)
    img = K.render_key_image(crops)
    rgb = _png(img)
    assert img.slice_kind == "centre"
    pm = img.panels[0]  # the CT panel
    yellow = _colour_mask(rgb, YELLOW) & _panel_slice(rgb, pm)
    assert yellow.sum() > 50

    # the slice drawn is the mask-grid slice through the centroid
    k = int(round(mask.grid.lps_to_zyx(CENTRE[None, :])[0, 0]))
    faces = _face_points_lps(mask, k)
    proj = pm.lps_to_png(faces)
    assert np.allclose(proj[:, 2], 0.0, atol=1e-6)  # the boundary lies on the drawn plane
    ys, xs = np.nonzero(yellow)
    hits = 0
    for x, y in proj[:, :2]:
        xi, yi = int(round(x)), int(round(y))
        win = yellow[max(yi - 1, 0):yi + 2, max(xi - 1, 0):xi + 2]
        hits += bool(win.any())
    # contour colour at (or within 1 px of) every projected boundary point
    assert hits == len(proj), f"{len(proj) - hits} of {len(proj)} boundary points without contour"

    # no contour colour far from the boundary: every yellow pixel is within 2 px of it
    d = np.sqrt(((np.column_stack([xs, ys])[:, None, :] - proj[None, :, :2]) ** 2).sum(-1)).min(axis=1)
    assert d.max() <= 2.0, f"stray contour pixel {d.max():.1f} px from the lesion boundary"

    # the analytic ellipse (this slice's section of the ellipsoid) agrees within 1.5 px (measured
    # 0.6-0.9 px; the voxelised boundary may differ from it by up to half a voxel, 1.6 px here)
    z = float(mask.grid.zyx_to_lps(np.array([[k, 0, 0]], float))[0, 2])
    r = math.sqrt(max(0.0, 1 - ((z - CENTRE[2]) / SEMI[2]) ** 2))
    th = np.radians(np.arange(0, 360, 5))
    ell = np.column_stack([CENTRE[0] + SEMI[0] * r * np.cos(th), CENTRE[1] + SEMI[1] * r * np.sin(th),
                           np.full(len(th), z)])
    pe = pm.lps_to_png(ell)[:, :2]
    tol = 1.5
    de = np.sqrt(((pe[:, None, :] - np.column_stack([xs, ys])[None, :, :]) ** 2).sum(-1)).min(axis=1)
    assert de.max() <= tol, f"analytic boundary {de.max():.2f} px from the contour (tolerance {tol:.2f})"

    # far outside (1.6 x the section's semi-axes) there is no contour
    far = np.column_stack([CENTRE[0] + 1.6 * SEMI[0] * r * np.cos(th),
                           CENTRE[1] + 1.6 * SEMI[1] * r * np.sin(th), np.full(len(th), z)])
    pf = np.rint(pm.lps_to_png(far)[:, :2]).astype(int)
    assert not any(yellow[y - 2:y + 3, x - 2:x + 3].any() for x, y in pf)

    # the lesion centre projects inside the contour: a contour pixel on every side, none nearby
    cx, cy, off = pm.lps_to_png(CENTRE[None, :])[0]
    cx, cy = int(round(cx)), int(round(cy))
    assert abs(off) <= 0.5 * mask.grid.spacing_xyz_mm[2] + 1e-6
    assert not yellow[cy - 3:cy + 4, cx - 3:cx + 4].any()
    assert yellow[cy, cx:pm.x0 + pm.width].any() and yellow[cy, pm.x0:cx].any()
    assert yellow[cy:pm.y0 + pm.height, cx].any() and yellow[pm.y0:cy, cx].any()

    # the fused panel shows PET (warm colours inside the lesion) with a sky-blue contour
    pet = img.panels[1]
    blue = _colour_mask(rgb, np.array(F.hex_to_rgb(F.CONTOUR_PET))) & _panel_slice(rgb, pet)
    assert blue.sum() > 50
    px, py, _ = pet.lps_to_png(CENTRE[None, :])[0]
    r_, _, b_ = rgb[int(round(py)), int(round(px))]
    assert r_ > 200 and r_ > b_ + 80  # inferno high end, not grey


def test_slice_pixel_round_trip_and_off_plane_distance():
    ct, mask, suv = make_case("rotated")
    crops = K.extract_lesion_crops(ct, mask, "lesion_a", None, suv=suv)
    s = crops.get("centre")
    rc = np.array([[0.0, 3.0, 7.5], [0.0, 40.25, 12.0]])
    lps = s.grid.zyx_to_lps(rc)
    p = K.slice_pixel(s.grid, lps)
    assert np.allclose(p[:, 0], rc[:, 2]) and np.allclose(p[:, 1], rc[:, 1])
    assert np.allclose(p[:, 2], 0.0)
    shifted = lps + 3.0 * s.grid.slice_normal
    assert np.allclose(K.slice_pixel(s.grid, shifted)[:, 2], 3.0)
    # the saved CT reproduces the lesion (100 HU) at the centre and the background outside
    c = s.project(CENTRE[None, :])[0]
    assert s.ct_hu[int(round(c[1])), int(round(c[0]))] == pytest.approx(100, abs=1)
    assert s.mask[int(round(c[1])), int(round(c[0]))]
    assert s.ct_hu.dtype == np.int16 and s.pet is not None


def test_crops_round_trip(tmp_path):
    ct, mask, suv = make_case("axial")
    row = {"centroid_x_mm": CENTRE[0], "centroid_y_mm": CENTRE[1], "centroid_z_mm": CENTRE[2],
           "suv_peak_x_mm": CENTRE[0], "suv_peak_y_mm": CENTRE[1], "suv_peak_z_mm": CENTRE[2] + 5.0}
    crops = K.extract_lesion_crops(ct, mask, "lesion_a", row, suv=suv)
    assert [s.kind for s in crops.slices] == ["centre", "target"]
    p = K.save_crops(tmp_path / "a.npz", crops)
    back = K.load_crops(p)
    assert back.lesion_id == "lesion_a" and back.lesion_label == "lesion A"
    for a, b in zip(crops.slices, back.slices):
        assert a.kind == b.kind and a.grid.same_as(b.grid)
        assert np.array_equal(a.ct_hu, b.ct_hu) and np.array_equal(a.mask, b.mask)
        assert np.allclose(a.pet, b.pet)
    with np.load(p, allow_pickle=False) as z:  # no pickled objects, no volume
        assert all(z[k].ndim <= 2 for k in z.files)


@pytest.mark.parametrize("oblique", [False, True])
def test_needle_path_drawn_between_projected_entry_and_target(oblique):
    ct, mask, suv = make_case("axial")
    target = CENTRE.copy()
    entry = CENTRE + np.array([-45.0, -20.0, 18.0 if oblique else 0.0])
    row = {"target_x_mm": target[0], "target_y_mm": target[1], "target_z_mm": target[2],
           "entry_x_mm": entry[0], "entry_y_mm": entry[1], "entry_z_mm": entry[2]}
    crops = K.extract_lesion_crops(ct, mask, "lesion_a", row, suv=suv)
    assert "needle" in [s.kind for s in crops.slices]
    nd = K.NeedlePath(tuple(entry), tuple(target), length_mm=None)
    img = K.render_key_image(crops, needle=nd)
    pm = img.panels[0]
    pe, pt = pm.lps_to_png(np.vstack([entry, target]))
    if oblique:  # the oblique needle plane holds both points exactly
        assert img.slice_kind == "needle"
        assert abs(pe[2]) < 1e-6 and abs(pt[2]) < 1e-6
    else:
        assert abs(pe[2]) <= 1.25 and abs(pt[2]) <= 1.25
    rgb = _png(img)
    green = _colour_mask(rgb, GREEN, tol=10) & _panel_slice(rgb, pm)
    for t in np.linspace(0.15, 0.85, 8):
        x, y = pe[:2] + t * (pt[:2] - pe[:2])
        xi, yi = int(round(x)), int(round(y))
        assert green[yi - 2:yi + 3, xi - 2:xi + 3].any(), f"no needle colour at t={t:.2f}"
    # the entry marker is a filled disc at the projected entry point
    xi, yi = int(round(pe[0])), int(round(pe[1]))
    assert green[yi - 1:yi + 2, xi - 1:xi + 2].all()
    assert f"{np.linalg.norm(target - entry):.0f} mm" in img.alt
    # nothing green far from the segment
    ys, xs = np.nonzero(green)
    seg = pt[:2] - pe[:2]
    tt = np.clip(((np.column_stack([xs, ys]) - pe[:2]) @ seg) / (seg @ seg), 0, 1)
    dist = np.linalg.norm(np.column_stack([xs, ys]) - (pe[:2] + tt[:, None] * seg), axis=1)
    assert dist.max() <= 8.0


def test_write_key_images_files_and_errors(tmp_path):
    ct, mask, suv = make_case("axial")
    empty = LesionMask("empty", MaskSource.SEG, mask.grid, mask.bbox_zyx, np.zeros_like(mask.crop))
    out = K.write_key_images(tmp_path, ct, [mask, empty], ["lesion_a", "broken"], suv=suv,
                             rows=[{"lesion_id": "lesion_a", "longest_diameter_mm": 22.0}])
    names = sorted(p.name for p in out)
    assert names == ["index.json", "lesion_a.npz", "lesion_a.png", "pet_mip.npz", "pet_mip.png"]
    idx = json.loads((tmp_path / "keyimages" / "index.json").read_text())
    assert [e["lesion_id"] for e in idx["lesions"]] == ["lesion_a"]
    assert idx["errors"] and idx["errors"][0]["lesion_id"] == "broken"
    assert idx["lesions"][0]["alt"].startswith("Key image of lesion")
    assert all(p.stat().st_size < 500_000 for p in out)
    # the CT may be given as {series_uid: Volume}: each mask uses the CT it was drawn on
    out3 = K.write_key_images(tmp_path / "bydict", {"9.9": suv, "1.2.3": ct}, [mask], ["lesion_a"])
    assert (tmp_path / "bydict" / "keyimages" / "lesion_a.png") in out3
    c = K.load_crops(tmp_path / "bydict" / "keyimages" / "lesion_a.npz")
    assert c.ct_series_uid == "1.2.3"
    # without PET: a single CT panel and no MIP
    out2 = K.write_key_images(tmp_path / "nopet", ct, [mask], ["lesion_a"])
    assert sorted(p.name for p in out2) == ["index.json", "lesion_a.npz", "lesion_a.png"]
    w, h = Image.open(tmp_path / "nopet" / "keyimages" / "lesion_a.png").size
    assert (w, h) == (256, 256 + K.HEADER_PX)


def test_mip_label_on_the_hot_voxel():
    _, _, suv = make_case("axial")
    arr = np.ones(suv.grid.shape_zyx, np.float32)
    hot = (8, 20, 27)
    arr[hot] = 10.0
    vol = Volume(arr, suv.grid, "SUVbw", "1.2.4")
    lps = tuple(suv.grid.zyx_to_lps(np.array([hot], float))[0])
    im = K.render_mip(K.compute_mip(vol), [K.MipLabel("1", lps, radius_mm=12.0)])
    rgb = np.asarray(Image.open(io.BytesIO(im.png)).convert("RGB")).astype(float)[K.HEADER_PX:]
    body = rgb[..., 0]
    grey = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])  # not the coloured label
    w = np.where(grey, np.clip(200 - body, 0, None), 0.0)  # darkness above the SUV-1 background
    w[:16], w[-16:], w[:, :16], w[:, -16:] = 0, 0, 0, 0  # orientation letters at the edges
    ys, xs = np.nonzero(w)
    cx = (xs * w[ys, xs]).sum() / w[ys, xs].sum()
    cy = (ys * w[ys, xs]).sum() / w[ys, xs].sum() + K.HEADER_PX
    x, y = im.positions["1"]
    assert math.hypot(cx - x, cy - y) <= 1.0
    assert "lesions circled and labelled 1" in im.alt


# --------------------------------------------------------------------------- both CT phases
def _two_phases(frame_nc: str = ""):
    """Contrast CT (lesion 100 HU, the mask's CT) and a non-contrast CT (lesion 60 HU) on the
    same grid, with their roles."""
    from dataclasses import replace

    ct, mask, suv = make_case("axial")
    nc = Volume(np.where(_field(ct.grid), 60.0, 40.0).astype(np.float32), ct.grid, "HU", "1.2.5",
                frame_of_reference_uid=frame_nc)
    ce = replace(ct, frame_of_reference_uid="")
    return {"1.2.3": ce, "1.2.5": nc}, mask, suv, {"1.2.3": "contrast", "1.2.5": "noncontrast"}


def _grey(hu: float) -> float:
    w, lvl = K.SOFT_TISSUE_WINDOW
    return float(np.clip((hu - (lvl - w / 2)) / w, 0, 1) * 255)


@pytest.mark.parametrize("with_pet", [True, False])
def test_key_image_shows_the_noncontrast_phase_beside_the_contrast_phase(tmp_path, with_pet):
    cts, mask, suv, roles = _two_phases()
    K.write_key_images(tmp_path, cts, [mask], ["lesion_a"], suv=suv if with_pet else None,
                       ct_roles=roles)
    kdir = tmp_path / "keyimages"
    entry = json.loads((kdir / "index.json").read_text())["lesions"][0]
    assert entry["phases"] == ["contrast", "noncontrast"]
    assert "left panel: contrast-enhanced CT" in entry["alt"]
    assert "non-contrast CT on the same plane" in entry["alt"]
    n_pan = 3 if with_pet else 2
    w, h = Image.open(kdir / "lesion_a.png").size
    assert (w, h) == (n_pan * 256 + (n_pan - 1) * K.GAP_PX, 256 + K.HEADER_PX)
    # the worksheet redraws from the crop: the same panels, each phase at its own HU
    crops = K.load_crops(kdir / "lesion_a.npz")
    assert (crops.ct_phase, crops.other_phase) == ("contrast", "noncontrast")
    img = K.render_key_image(crops)
    assert img.phases == ("contrast", "noncontrast") and len(img.panels) == n_pan
    rgb = _png(img)
    s = crops.get("centre")
    c_px = []
    for pm in img.panels[:2]:
        cc, rr = np.nonzero(s.mask.T)  # a lesion pixel well inside: the centre of the mask
        p = pm.slice_to_png([np.median(cc)], [np.median(rr)])[0]
        c_px.append(rgb[int(round(p[1])), int(round(p[0]))])
    assert np.allclose(c_px[0], _grey(100.0), atol=3)   # contrast: lesion 100 HU
    assert np.allclose(c_px[1], _grey(60.0), atol=3)    # non-contrast: lesion 60 HU


def test_key_image_single_phase_without_roles_or_in_another_frame(tmp_path):
    cts, mask, suv, roles = _two_phases()
    K.write_key_images(tmp_path / "noroles", cts, [mask], ["lesion_a"])
    e = json.loads((tmp_path / "noroles" / "keyimages" / "index.json").read_text())["lesions"][0]
    assert e["phases"] == ["unknown"]
    assert Image.open(tmp_path / "noroles" / "keyimages" / "lesion_a.png").size[0] == 256
    # a non-contrast CT in another frame of reference is not overlaid blindly: a note says why
    cts, mask, suv, roles = _two_phases(frame_nc="9.8.7")
    K.write_key_images(tmp_path / "frame", cts, [mask], ["lesion_a"], ct_roles=roles)
    e = json.loads((tmp_path / "frame" / "keyimages" / "index.json").read_text())["lesions"][0]
    assert e["phases"] == ["contrast"]
    assert any("non-contrast CT not shown" in n for n in e["notes"])
