"""Build the feature stage's inputs from in-memory phantom arrays (no DICOM round trip).

Volumes carry series and frame-of-reference UIDs as the DICOM loader would set them; lesion masks
reference the CT they are drawn on, organ masks the non-contrast CT.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import numpy as np

from pipeline import config as cfgmod
from pipeline.geometry import bbox_of
from pipeline.records import LesionMask, MaskSource, SegmentKind, Volume
from pipeline.testing.phantom import ORGAN_NAMES, phantom_arrays

NC_UID, CE_UID, PET_UID = "1.2.826.0.1.1", "1.2.826.0.1.2", "1.2.826.0.1.3"
FRAME, FRAME_CE = "1.2.826.0.9.1", "1.2.826.0.9.2"


@lru_cache(maxsize=8)
def arrays(size="small", variant="extended", shift=None, seed=0):
    return phantom_arrays(size, 1, seed, variant=variant, contrast_shift_mm=shift)


def config(**features) -> dict:
    cfg = cfgmod.load_config()
    cfg = copy.deepcopy(cfg)
    for k, v in features.items():
        cfg["features"][k] = cfgmod.deep_merge(cfg["features"][k], v) if isinstance(v, dict) else v
    return cfg


def _mask(full: np.ndarray, grid, name, kind, ref, k=0) -> LesionMask | None:
    bb = bbox_of(full)
    if bb is None:
        return None
    return LesionMask(name, MaskSource.SEG, grid, bb, full[tuple(slice(a, b) for a, b in bb)].copy(),
                      kind=kind, referenced_series_uid=ref, segment_number=k)


def volumes(a, *, shifted_frame: bool):
    nc = Volume(a.ct_noncontrast_hu, a.ct_grid, "HU", NC_UID, FRAME)
    ce = Volume(a.ct_contrast_hu, a.ct_grid, "HU", CE_UID, FRAME_CE if shifted_frame else FRAME)
    suv = Volume(a.pet_suv, a.pet_grid, "SUVbw", PET_UID, FRAME)
    return nc, ce, suv


def lesion_masks(a, *, on_contrast: bool) -> list[LesionMask]:
    labels = a.lesion_labels_contrast if on_contrast else a.lesion_labels
    ref = CE_UID if on_contrast else NC_UID
    out = []
    for k, name in enumerate(a.lesion_names, start=1):
        m = _mask(labels == k, a.ct_grid, name, SegmentKind.LESION, ref, k)
        if m is not None:
            out.append(m)
    return out


def organ_masks(a) -> dict[str, LesionMask]:
    out = {}
    for k, name in enumerate(ORGAN_NAMES, start=1):
        m = _mask(a.organ_mask(name), a.ct_grid, name, SegmentKind.ORGAN, NC_UID, k)
        if m is not None:
            out[name] = m
    return out


@lru_cache(maxsize=8)
def _truth(a) -> tuple:
    from pipeline.testing.phantom import lesion_truth

    return tuple(lesion_truth(a))


def truth_by_name(a) -> dict[str, dict]:
    """Ground truth per lesion name (``pipeline.testing.phantom.lesion_truth``, exact PET)."""
    return {t["name"]: t for t in _truth(a)}
