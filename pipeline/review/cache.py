"""Per-study image cache of the review viewer (written by the study job, read by the app).

The viewer never loads DICOM: the study job calls :func:`write_image_cache` once with the volumes
and masks it already holds, and the app renders slices from the cache on request.

Layout of ``<study output dir>/review_cache/``:

``index.json``
    ``format`` (``"hitit-review-cache"``), ``version`` (1) and

    * ``phases``: per role (``"ct"``, ``"ce_ct"``, ``"pet"`` ..., the study sheet's series roles)
      ``{"file", "kind" ("ct" or "pet"), "shape_zyx", "spacing_xyz_mm", "origin_lps_mm",
      "direction", "units", "series_uid", "scale", "offset"}``; the stored integer ``q`` of a
      voxel means ``q * scale + offset`` in ``units``;
    * ``fusion``: per CT role, the file of the PET resampled onto that CT's grid
      (``{"file", "scale", "offset", "units", "max_value"}``), for the fused display;
    * ``lesions``: list of ``{"lesion_id", "label", "slices": {ct_role: [z_first, z_last]},
      "centre_slice": {ct_role: z}}`` (``z`` = slice index of that phase, 0-based);
    * ``needles``: list of ``{"lesion_id", "target_lps_mm", "entry_lps_mm" (or null),
      "target_zyx": {ct_role: [z, y, x]}, "entry_zyx": {ct_role: [z, y, x] or null}}``
      (continuous voxel indices of that phase).
``<role>.npz``
    One member per axial slice, ``z0000``, ``z0001`` ... (2D arrays, (y, x) = (rows, columns)),
    stored compressed so a slice is read without decompressing the others. CT: int16 HU (scale 1,
    offset 0, clipped to [-1024, 3071]); PET: uint16, ``value = q * scale``.
``fusion_<ct_role>.npz``
    The PET on the grid of ``ct_role``, same member scheme, uint16 with its ``scale`` (CT phases
    on the same grid share one file).
``contours.json``
    ``{ct_role: {lesion_id: {str(z): [polygon, ...]}}}``; a polygon is a list of ``[x, y]`` in
    pixel coordinates of that slice (x = column, y = row; the centre of pixel (0, 0) is at
    (0, 0)), traced at the 0.5 level of the mask resampled onto that phase (nearest neighbour) and
    simplified to within ``CONTOUR_TOLERANCE_PX``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError
from pipeline.geometry import Grid, resample
from pipeline.records import LesionMask, Volume

log = logging.getLogger(__name__)

CACHE_DIR = "review_cache"
FORMAT = "hitit-review-cache"
VERSION = 1
HU_MIN, HU_MAX = -1024, 3071
#: Largest distance (pixels) of a stored contour from the traced iso-line (Douglas-Peucker).
CONTOUR_TOLERANCE_PX = 0.25


@dataclass(frozen=True)
class NeedlePlan:
    """The planned needle of one lesion, LPS mm.

    Attributes
    ----------
    lesion_id : str
    target_lps_mm : (float, float, float)
        Target point (x, y, z) in LPS mm.
    entry_lps_mm : (float, float, float) or None
        Skin entry point (x, y, z) in LPS mm; None when no path was planned.
    """

    lesion_id: str
    target_lps_mm: tuple[float, float, float]
    entry_lps_mm: tuple[float, float, float] | None = None


def cache_dir(study_out: str | Path) -> Path:
    """``<study output dir>/review_cache``."""
    return Path(study_out) / CACHE_DIR


def _grid_dict(g: Grid) -> dict:
    return {"shape_zyx": [int(v) for v in g.shape_zyx],
            "spacing_xyz_mm": [float(v) for v in g.spacing_xyz_mm],
            "origin_lps_mm": [float(v) for v in g.origin_lps_mm],
            "direction": [float(v) for v in g.direction]}


def grid_from_dict(d: Mapping) -> Grid:
    """The :class:`Grid` of a ``phases`` entry of ``index.json``."""
    return Grid(tuple(int(v) for v in d["shape_zyx"]), tuple(float(v) for v in d["spacing_xyz_mm"]),
                tuple(float(v) for v in d["origin_lps_mm"]), tuple(float(v) for v in d["direction"]))


def _save_slices(path: Path, arr: np.ndarray) -> None:
    """One deflated ``.npy`` member per slice (level 1: fast to write, read by ``np.load``)."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for k in range(arr.shape[0]):
            with zf.open(f"z{k:04d}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arr[k]), allow_pickle=False)
    os.replace(tmp, path)


def _quantise_pet(arr: np.ndarray) -> tuple[np.ndarray, float]:
    a = np.nan_to_num(np.asarray(arr, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    a = np.clip(a, 0.0, None)
    vmax = float(a.max()) if a.size else 0.0
    scale = vmax / 65535.0 if vmax > 0 else 1.0
    return np.round(a / scale).astype(np.uint16), scale


def _contours(mask: np.ndarray) -> dict[str, list]:
    from skimage.measure import approximate_polygon, find_contours

    out: dict[str, list] = {}
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        sl = np.pad(mask[z].astype(np.float32), 1)
        polys = [np.round(approximate_polygon(c, CONTOUR_TOLERANCE_PX)[:, ::-1] - 1.0, 2).tolist()
                 for c in find_contours(sl, 0.5) if len(c) >= 3]
        if polys:
            out[str(int(z))] = polys
    return out


def write_image_cache(out_dir: str | Path, volumes_by_role: Mapping[str, Volume],
                      lesion_masks: Mapping[str, LesionMask], *,
                      needles: Sequence[NeedlePlan] = (),
                      pet_role: str = "pet") -> Path:
    """Write the review image cache of one study (pure apart from writing ``out_dir/review_cache``).

    Parameters
    ----------
    out_dir : path
        The study's output folder (``RESULTS/studies/<patient_dir>/<study_dir>``).
    volumes_by_role : mapping str -> Volume
        Series role (``"ct"`` non-contrast, ``"ce_ct"`` contrast, ``"pet"`` ...) -> volume, array
        (z, y, x) on its own LPS grid. CT volumes have ``units == "HU"``; the one under
        ``pet_role`` is the PET (SUVbw or Bq/mL, see its ``units``). Roles with ``None`` are skipped.
    lesion_masks : mapping str -> LesionMask
        Lesion id (as in ``lesions.csv``) -> mask on any grid of the same frame of reference; it
        is resampled (nearest neighbour) onto every CT phase.
    needles : sequence of NeedlePlan
        Planned target and skin entry points per lesion (LPS mm).
    pet_role : str
        Which role is the PET.

    Returns
    -------
    Path
        The cache folder.

    Raises
    ------
    ConfigError
        No CT volume given.
    """
    d = cache_dir(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    vols = {r: v for r, v in volumes_by_role.items() if v is not None}
    ct_roles = [r for r, v in vols.items() if r != pet_role and v.units == "HU"]
    if not ct_roles:
        raise ConfigError(f"the review cache needs a CT volume, got roles {sorted(vols)}",
                          file=d, hint="pass the non-contrast and/or contrast CT as units='HU' volumes")
    index: dict = {"format": FORMAT, "version": VERSION, "phases": {}, "fusion": {}, "lesions": [],
                   "needles": []}
    for role in ct_roles:
        v = vols[role]
        q = np.clip(np.round(v.array), HU_MIN, HU_MAX).astype(np.int16)
        _save_slices(d / f"{role}.npz", q)
        index["phases"][role] = {"file": f"{role}.npz", "kind": "ct", **_grid_dict(v.grid),
                                 "units": "HU", "series_uid": v.series_uid, "scale": 1.0, "offset": 0.0}
    pet = vols.get(pet_role)
    if pet is not None:
        q, scale = _quantise_pet(pet.array)
        _save_slices(d / f"{pet_role}.npz", q)
        index["phases"][pet_role] = {"file": f"{pet_role}.npz", "kind": "pet", **_grid_dict(pet.grid),
                                     "units": pet.units, "series_uid": pet.series_uid,
                                     "scale": scale, "offset": 0.0}
        for i, role in enumerate(ct_roles):
            g = vols[role].grid
            same = next((r for r in ct_roles[:i] if vols[r].grid.same_as(g)), None)
            if same is not None:  # phases on one grid share the fused PET
                index["fusion"][role] = dict(index["fusion"][same])
                continue
            on_ct = pet.array if pet.grid.same_as(g) else resample(pet.array.astype(np.float32),
                                                                   pet.grid, g, interpolation="linear")
            qf, sf = _quantise_pet(on_ct)
            _save_slices(d / f"fusion_{role}.npz", qf)
            index["fusion"][role] = {"file": f"fusion_{role}.npz", "scale": sf, "offset": 0.0,
                                     "units": pet.units, "max_value": float(qf.max()) * sf}
    contours: dict[str, dict] = {r: {} for r in ct_roles}
    for lid, m in sorted(lesion_masks.items()):
        entry = {"lesion_id": lid, "label": m.name, "slices": {}, "centre_slice": {}}
        full = m.full()
        for i, role in enumerate(ct_roles):
            g = vols[role].grid
            same = next((r for r in ct_roles[:i] if vols[r].grid.same_as(g)), None)
            if same is not None:  # phases on one grid share the contours
                if same in entry["slices"]:
                    entry["slices"][role] = entry["slices"][same]
                    entry["centre_slice"][role] = entry["centre_slice"][same]
                    contours[role][lid] = contours[same][lid]
                continue
            on = full if m.grid.same_as(g) else resample(full, m.grid, g, interpolation="nearest")
            zs = np.flatnonzero(on.any(axis=(1, 2)))
            if not len(zs):
                continue
            counts = on.sum(axis=(1, 2))
            entry["slices"][role] = [int(zs[0]), int(zs[-1])]
            entry["centre_slice"][role] = int(np.argmax(counts))
            contours[role][lid] = _contours(on)
        index["lesions"].append(entry)
    for n in needles:
        item = {"lesion_id": n.lesion_id, "target_lps_mm": [float(v) for v in n.target_lps_mm],
                "entry_lps_mm": None if n.entry_lps_mm is None else [float(v) for v in n.entry_lps_mm],
                "target_zyx": {}, "entry_zyx": {}}
        for role in ct_roles:
            g = vols[role].grid
            item["target_zyx"][role] = [round(float(v), 3) for v in g.lps_to_zyx(np.array(n.target_lps_mm))[0]]
            item["entry_zyx"][role] = (None if n.entry_lps_mm is None else
                                       [round(float(v), 3) for v in g.lps_to_zyx(np.array(n.entry_lps_mm))[0]])
        index["needles"].append(item)
    (d / "contours.json").write_text(json.dumps(contours, separators=(",", ":")))
    tmp = d / "index.json.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, d / "index.json")  # written last: a cache with an index is complete
    log.info("review cache: %d phase(s), %d lesion(s) -> %s", len(index["phases"]),
             len(index["lesions"]), d)
    return d


def needles_from_rows(rows: Sequence[Mapping[str, str]]) -> list[NeedlePlan]:
    """Needle plans from ``lesions.csv`` / ``ranking.csv`` rows (``target_*_mm``, ``entry_*_mm``).

    Rows without a finite target are skipped; a missing entry gives ``entry_lps_mm=None``.
    """
    def pt(r, pre):
        try:
            v = tuple(float(r.get(f"{pre}_{a}_mm", "")) for a in "xyz")
        except (TypeError, ValueError):
            return None
        return v if all(np.isfinite(v)) else None

    out = []
    for r in rows:
        t = pt(r, "target")
        if t is not None:
            out.append(NeedlePlan(str(r["lesion_id"]), t, pt(r, "entry")))
    return out


class ImageCache:
    """Read side of one study's cache, with per-slice access (thread-safe, slices memoised).

    Parameters
    ----------
    path : path
        The ``review_cache`` folder.

    Raises
    ------
    ConfigError
        No cache, or one of another format or version.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        p = self.path / "index.json"
        if not p.is_file():
            raise ConfigError(f"no review image cache at {self.path}", file=p,
                              hint="the study job writes it (pipeline.review.cache.write_image_cache); "
                                   "re-run the study job of this study with a version that does")
        self.index = json.loads(p.read_text())
        if self.index.get("format") != FORMAT or self.index.get("version") != VERSION:
            raise ConfigError(f"review cache of format {self.index.get('format')!r} version "
                              f"{self.index.get('version')!r}, expected {FORMAT!r} {VERSION}", file=p,
                              hint="re-run the study job to rewrite the cache")
        self._npz: dict[str, np.lib.npyio.NpzFile] = {}
        self._lock = threading.Lock()
        self._contours = None

    @property
    def ct_roles(self) -> list[str]:
        return [r for r, p in self.index["phases"].items() if p["kind"] == "ct"]

    def n_slices(self, role: str) -> int:
        return int(self.index["phases"][role]["shape_zyx"][0])

    def _file(self, name: str) -> np.lib.npyio.NpzFile:
        with self._lock:
            if name not in self._npz:
                self._npz[name] = np.load(self.path / name)
            return self._npz[name]

    def slice(self, role: str, z: int, *, fusion: bool = False) -> np.ndarray:
        """Slice ``z`` of ``role`` in physical units (HU, SUV ...), float32 (y, x).

        ``fusion=True``: the PET resampled onto CT role ``role``.

        Raises
        ------
        KeyError
            Unknown role or slice.
        """
        meta = self.index["fusion"][role] if fusion else self.index["phases"][role]
        with self._lock:
            npz = self._npz.get(meta["file"])
        if npz is None:
            npz = self._file(meta["file"])
        with self._lock:  # NpzFile reads share one file handle
            q = npz[f"z{int(z):04d}"]
        return q.astype(np.float32) * np.float32(meta["scale"]) + np.float32(meta["offset"])

    def contours(self) -> dict:
        if self._contours is None:
            self._contours = json.loads((self.path / "contours.json").read_text())
        return self._contours
