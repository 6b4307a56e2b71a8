"""Radiomic features with pyradiomics, on one crop per lesion (CT and PET), columns ``ct_`` / ``pet_``.

Settings come from pyradiomics parameter files (``configs/radiomics/ct.yaml`` and ``pet.yaml``,
every value commented there); ``features.radiomics`` in ``configs/config.yaml`` names them and
switches radiomics on or off. The same builder (:func:`load_params`, :func:`merge_params`,
:func:`build_extractor`) serves the pipeline and ``scripts/ibsi_check.py`` (which only adds the
IBSI configuration's overrides), so the IBSI evidence is about the code that runs.

Resampling
----------
When a parameter file asks for ``resampledPixelSpacing``, the pipeline resamples image and mask
itself the IBSI way (:func:`resample_ibsi`: grid centred on the input, nearest-boundary
extrapolation, CT intensities rounded to integer HU, mask interpolated trilinearly and cut at
0.5) and hands pyradiomics the resampled crop with resampling switched off
(``features.radiomics.resampling: ibsi``). ``resampling: pyradiomics`` leaves it to pyradiomics
(origin-aligned grid, no rounding, nearest-neighbour mask), which is not IBSI compliant.

Crop first
----------
pyradiomics on a whole CT volume costs about 8 s per lesion whatever its size; on the lesion's
bounding box plus a margin it costs a few hundredths of a second (ARCHITECTURE.md). The crop
margin is at least ``features.crop_margin_mm`` and at least pyradiomics' ``padDistance`` + 2
voxels at the resampled spacing, so that cropping and interpolation never reach the crop border.
The resampling grid is centred on the crop (IBSI centres it on the input image): against a
whole-image run the grid can move by a fraction of a voxel, which changes texture values by
interpolation noise only.

* CT: the first phase of ``features.radiomics.ct_phase`` that covers the whole lesion, sampled on
  the lesion's own grid (exactly when the lesion was drawn on it; through the study's phase
  alignment otherwise). The mask is the lesion mask.
* PET: the SUV image on the PET's own grid (never resampled by us); the mask is the set of PET
  voxels covered by the lesion to at least ``features.pet.min_coverage``.

A lesion too small for pyradiomics (one voxel, a single slice when 3D is required ...) or any
other extraction error gives empty values and ``radiomics_reason``; it never stops the study.
Feature values that come out NaN are reported as empty too, with the classes named.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import yaml

from pipeline.errors import ConfigError
from pipeline.features.registration import grid_through, sample_volume
from pipeline.geometry import Grid, expand_bbox, paste
from pipeline.records import LesionMask

log = logging.getLogger(__name__)

_NAMES_CACHE: dict[str, list[str]] = {}


# --------------------------------------------------------------------------- parameter files
def resolve_params_path(path: str | Path) -> Path:
    """An absolute path, or one relative to the ``configs/`` folder of the repository."""
    from pipeline.config import CONFIG_DIR

    p = Path(path)
    if p.is_absolute() or p.is_file():
        return p
    return CONFIG_DIR / p


def load_params(path: str | Path) -> dict:
    """Read a pyradiomics parameter file (YAML) as a dict (``setting``, ``imageType`` ...)."""
    p = resolve_params_path(path)
    with open(p, encoding="utf-8") as fh:
        params = yaml.safe_load(fh) or {}
    if not isinstance(params, dict):
        raise ConfigError(
            f"pyradiomics parameter file {p}: expected a mapping (setting:, imageType:, "
            f"featureClass:), found {type(params).__name__}", file=p,
            hint="see configs/radiomics/ct.yaml for the expected layout",
        )
    return params


def merge_params(base: dict, overrides: dict | None) -> dict:
    """``base`` with ``overrides`` applied: ``setting`` entries are merged key by key (a value of
    None removes the key, restoring pyradiomics' default); ``imageType`` and ``featureClass``
    are replaced as a whole when given."""
    out = copy.deepcopy(base)
    for key, val in (overrides or {}).items():
        if key == "setting":
            s = dict(out.get("setting") or {})
            for k, v in val.items():
                if v is None:
                    s.pop(k, None)
                else:
                    s[k] = copy.deepcopy(v)
            out["setting"] = s
        else:
            out[key] = copy.deepcopy(val)
    return out


def build_extractor(params: dict):
    """A pyradiomics ``RadiomicsFeatureExtractor`` configured by a parameter dict."""
    from radiomics import featureextractor

    # pyradiomics (re)sets its logger when imported; it logs every step at INFO and warns per
    # lesion about ordinary things (a single grey level, symmetric GLCM): keep only its errors.
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    logging.getLogger("pykwalify").setLevel(logging.WARNING)  # "validation.valid" per extractor
    return featureextractor.RadiomicsFeatureExtractor(copy.deepcopy(params))


def resample_ibsi(image, mask, spacing_xyz, *, interpolator: str = "sitkLinear",
                  round_intensities: bool = False):
    """Resample an image and its mask the IBSI way (IBSI 1 manual, "Interpolation").

    * Grid: the new spacing (0 = keep an axis' spacing); size ``ceil(n * s / s_new)`` per axis;
      the new grid is centred on the original one (same centre, same direction).
    * Image: ``interpolator`` (``sitkLinear`` = trilinear, ``sitkBSpline`` = cubic B-spline),
      intensities outside the image take the nearest boundary value (no zero padding), and
      are rounded to integers when ``round_intensities`` (CT: HU are integers).
    * Mask: trilinear interpolation of the binary mask, then >= 0.5 (partial-volume threshold).

    pyradiomics' own resampling differs on all three points (origin-aligned grid, no rounding,
    nearest-neighbour mask); on the IBSI CT phantom this step takes configurations B and D from
    about 40 % and 25 % of features within tolerance to 99 % (see docs/ibsi_compliance.md).

    Parameters
    ----------
    image, mask : SimpleITK images on the same grid (mask label 1).
    spacing_xyz : new spacing (x, y, z), mm; 0 keeps the original spacing of that axis.

    Returns
    -------
    (image float32, mask uint8) on the new grid.
    """
    import SimpleITK as sitk

    sp = np.asarray(image.GetSpacing(), dtype=float)
    n = np.asarray(image.GetSize(), dtype=float)
    new_sp = np.array([float(s2) if s2 else float(s) for s2, s in zip(spacing_xyz, sp)])
    new_n = np.ceil(n * sp / new_sp - 1e-6).astype(int)
    shift = (sp * (n - 1) - new_sp * (new_n - 1)) / 2.0
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), dtype=float) + d @ shift
    ref = sitk.Image([int(v) for v in new_n], sitk.sitkUInt8)
    ref.SetSpacing(tuple(float(v) for v in new_sp))
    ref.SetOrigin(tuple(float(v) for v in origin))
    ref.SetDirection(image.GetDirection())
    interp = getattr(sitk, interpolator) if isinstance(interpolator, str) else interpolator
    img = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), ref, sitk.Transform(), interp, 0.0,
                        sitk.sitkFloat32, True)
    if round_intensities:
        arr = np.rint(sitk.GetArrayFromImage(img)).astype(np.float32)
        rounded = sitk.GetImageFromArray(arr)
        rounded.CopyInformation(img)
        img = rounded
    m = sitk.Resample(sitk.Cast(mask == 1, sitk.sitkFloat32), ref, sitk.Transform(),
                      sitk.sitkLinear, 0.0, sitk.sitkFloat32, True)
    m_arr = (sitk.GetArrayFromImage(m) >= 0.5).astype(np.uint8)
    out_mask = sitk.GetImageFromArray(m_arr)
    out_mask.CopyInformation(m)
    return img, out_mask


def split_resampling(params: dict, resampling: str) -> tuple[dict, tuple | None]:
    """Take the resampling out of pyradiomics' hands when ``resampling == "ibsi"``.

    Returns the parameters to give pyradiomics and ``(spacing_xyz, interpolator)`` for
    :func:`resample_ibsi` (None when the parameter file asks for no resampling, or when
    ``resampling == "pyradiomics"``, in which case pyradiomics resamples as configured).
    """
    s = params.get("setting") or {}
    spacing = s.get("resampledPixelSpacing")
    if resampling != "ibsi" or not spacing:
        return params, None
    spec = (tuple(float(v) for v in spacing), str(s.get("interpolator", "sitkBSpline")))
    return merge_params(params, {"setting": {"resampledPixelSpacing": None,
                                             "interpolator": None}}), spec


def params_hash(params: dict) -> str:
    """Short stable hash of a parameter dict (for provenance)."""
    import hashlib

    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- extraction
def extract(extractor, image: np.ndarray, mask: np.ndarray, grid: Grid, *,
            resample: tuple | None = None, round_intensities: bool = False) -> dict[str, float]:
    """Run pyradiomics on a (z, y, x) image and boolean mask on ``grid``.

    ``resample`` = ``(spacing_xyz, interpolator)`` resamples both first with
    :func:`resample_ibsi` (see :func:`split_resampling`). Returns the feature values
    (diagnostics left out) as floats, keyed as pyradiomics names them
    (``original_glcm_Contrast`` ...). Raises whatever pyradiomics raises.
    """
    img = grid.to_sitk(np.asarray(image, dtype=np.float32))
    msk = grid.to_sitk(np.asarray(mask, dtype=np.uint8))
    if resample is not None:
        img, msk = resample_ibsi(img, msk, resample[0], interpolator=resample[1],
                                 round_intensities=round_intensities)
    res = extractor.execute(img, msk, label=1)
    out = {}
    for k, v in res.items():
        if k.startswith("diagnostics_"):
            continue
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def feature_names(params: dict) -> list[str]:
    """The feature keys an extractor with ``params`` produces (from a tiny synthetic run, cached).

    Gives every lesion row the same radiomics columns, also when its extraction fails.
    """
    key = params_hash(params)
    if key not in _NAMES_CACHE:
        rng = np.random.default_rng(0)
        g = Grid((16, 16, 16), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
        bw = float((params.get("setting") or {}).get("binWidth", 25.0))
        # a handful of grey levels whatever the bin width (few bins keep the matrices tiny)
        img = ((rng.integers(0, 6, g.shape_zyx) + 0.5) * bw).astype(np.float32)
        m = np.zeros(g.shape_zyx, dtype=bool)
        m[4:12, 4:12, 4:12] = True
        p = merge_params(params, {"setting": {"resegmentRange": None, "minimumROISize": None}})
        _NAMES_CACHE[key] = sorted(extract(build_extractor(p), img, m, g))
    return list(_NAMES_CACHE[key])


def _crop_margin_mm(params: dict, grid: Grid, base_margin_mm: float) -> float:
    s = params.get("setting") or {}
    pad = int(s.get("padDistance", 5))
    spacing = s.get("resampledPixelSpacing")
    sp = max([float(v) for v in spacing if v] or [0.0]) if spacing else 0.0
    sp = max(sp, max(grid.spacing_xyz_mm))
    return max(float(base_margin_mm), (pad + 2) * sp)


class RadiomicsRunner:
    """The study's two extractors (CT and PET) and their column names, built once in ``prepare``.

    Parameters
    ----------
    rcfg : ``features.radiomics`` settings (``enabled``, ``ct_params``, ``pet_params``,
        ``ct_phase``, ``resampling``).
    """

    def __init__(self, rcfg: dict) -> None:
        self.rcfg = rcfg
        self.ct_params = load_params(rcfg["ct_params"])
        self.pet_params = load_params(rcfg["pet_params"])
        ct_px, self.ct_resample = split_resampling(self.ct_params, rcfg["resampling"])
        pet_px, self.pet_resample = split_resampling(self.pet_params, rcfg["resampling"])
        self.ct = build_extractor(ct_px)
        self.pet = build_extractor(pet_px)
        self.ct_names = ["ct_" + n for n in feature_names(self.ct_params)]
        self.pet_names = ["pet_" + n for n in feature_names(self.pet_params)]

    def provenance(self) -> dict:
        """Parameter hashes (the config hash holds only the file names)."""
        return {"ct_params_sha256_16": params_hash(self.ct_params),
                "pet_params_sha256_16": params_hash(self.pet_params)}

    # ------------------------------------------------------------------ per lesion
    def lesion_columns(self, mask: LesionMask, ctx, cfg: dict, *, pet_mask: LesionMask | None,
                       pet_coverage=None) -> dict:
        """``ct_*`` and ``pet_*`` radiomics of one lesion plus ``radiomics_reason``.

        Parameters
        ----------
        mask : the lesion on its own grid.
        ctx : the study's FeatureContext.
        pet_mask : the lesion expressed in the PET's frame (None: PET not usable, see
            ``ctx.suv_reason``).
        pet_coverage : (bbox, coverage) of ``pet_mask`` on the PET grid, if already computed.
        """
        row = {n: None for n in self.ct_names + self.pet_names}
        reasons = []
        reasons.append(self._ct(mask, ctx, cfg, row))
        reasons.append(self._pet(pet_mask, ctx, cfg, row, pet_coverage))
        row["radiomics_reason"] = "; ".join(r for r in reasons if r)
        return row

    def _ct(self, mask: LesionMask, ctx, cfg: dict, row: dict) -> str:
        frames = ctx.frames
        space = frames.space_of_mask(mask)
        margin = _crop_margin_mm(self.ct_params, mask.grid, cfg["features"]["crop_margin_mm"])
        bbox = expand_bbox(mask.bbox_zyx, mask.grid, margin)
        cgrid = mask.grid.crop(bbox)
        les = paste(np.asarray(mask.crop, dtype=bool), mask.bbox_zyx, bbox)
        img, phase, why = None, "", []
        for role in self.rcfg["ct_phase"]:
            vol = ctx.ct.get(role)
            if vol is None:
                continue
            t, reason = frames.transform(space, frames.space_of_series.get(vol.series_uid, "nc"))
            if reason:
                why.append(f"{role}: {reason}")
                continue
            arr = sample_volume(vol, grid_through(cgrid, t), interpolation="linear")
            if not np.isfinite(arr[les]).all():
                why.append(f"{role} CT does not cover the whole lesion")
                continue
            img, phase = arr, role
            break
        if img is None:
            return "ct: no CT phase usable for radiomics" + (f" ({'; '.join(why)})" if why else "")
        img = np.where(np.isfinite(img), img, -1024.0)
        note = self._run(self.ct, img, les, cgrid, "ct_", row, self.ct_resample, True)
        return f"ct ({phase}): {note}" if note else ""

    def _pet(self, pet_mask: LesionMask | None, ctx, cfg: dict, row: dict, coverage) -> str:
        if ctx.suv is None or pet_mask is None:
            return "pet: " + (ctx.suv_reason or "no SUV image") if ctx.suv is None else (
                "pet: lesion not mappable to the PET frame")
        from pipeline.features.pet import lesion_coverage

        pg = ctx.suv.grid
        if coverage is None:
            coverage = lesion_coverage(pet_mask, pg)
        if coverage is None:
            return "pet: lesion outside the PET field of view"
        cbb, cov = coverage
        sel = cov >= float(cfg["features"]["pet"]["min_coverage"])
        if not sel.any():
            return "pet: no PET voxel covered enough by the lesion (lesion smaller than a PET voxel)"
        margin = _crop_margin_mm(self.pet_params, pg, cfg["features"]["crop_margin_mm"])
        bbox = expand_bbox(cbb, pg, margin)
        m = paste(sel, cbb, bbox)
        arr = np.asarray(ctx.suv.array)[tuple(slice(a, b) for a, b in bbox)].astype(np.float32)
        arr = np.where(np.isfinite(arr), arr, 0.0)
        note = self._run(self.pet, arr, m, pg.crop(bbox), "pet_", row, self.pet_resample, False)
        return f"pet: {note}" if note else ""

    @staticmethod
    def _run(extractor, image, mask, grid, prefix: str, row: dict, resample, round_: bool) -> str:
        n = int(np.count_nonzero(mask))
        try:
            vals = extract(extractor, image, mask, grid, resample=resample,
                           round_intensities=round_)
        except Exception as exc:  # noqa: BLE001 - pyradiomics raises plain Exceptions/ValueErrors
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return f"not computed ({n} voxels): {msg}"
        nan_classes = set()
        for k, v in vals.items():
            col = prefix + k
            if not np.isfinite(v):
                nan_classes.add(k.split("_")[1] if "_" in k else k)
                v = None
            if col in row:
                row[col] = v
        if nan_classes:
            return f"NaN values left empty in {sorted(nan_classes)}"
        return ""
