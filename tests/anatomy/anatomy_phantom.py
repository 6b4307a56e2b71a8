"""A phantom patient run through the anatomy stage (arrays only, no files)."""

from __future__ import annotations

import copy

import numpy as np

from pipeline.anatomy import stage
from pipeline.config import load_config
from pipeline.geometry import bbox_of
from pipeline.records import LesionMask, MaskSource, SegmentKind, Volume
from pipeline.testing import phantom as P


def mask_of(full: np.ndarray, grid, name: str, kind=SegmentKind.LESION) -> LesionMask:
    bb = bbox_of(full)
    return LesionMask(name, MaskSource.SEG, grid, bb, full[tuple(slice(a, b) for a, b in bb)],
                      kind=kind)


class PhantomStudy:
    """A phantom patient run through the anatomy stage: arrays, truth, context and rows."""

    def __init__(self, variant: str, cfg_anatomy: dict | None = None, organs: bool = True):
        self.arrays = P.phantom_arrays("small", 1, 0, variant)
        self.grid = self.arrays.ct_grid
        self.truth = {t["name"]: t for t in P.lesion_truth(self.arrays)}
        self.cfg = copy.deepcopy(load_config())
        self.cfg["anatomy"].update(cfg_anatomy or {})
        org = {n: mask_of(self.arrays.organ_mask(n), self.grid, n, SegmentKind.ORGAN)
               for n in P.ORGAN_NAMES} if organs else {}
        ct = Volume(self.arrays.ct_noncontrast_hu, self.grid, "HU", "ct")
        self.ctx = stage.prepare({"noncontrast": ct}, self.grid, org, self.cfg)
        self.masks = {
            les.name: mask_of(self.arrays.lesion_labels == k, self.grid, les.name)
            for k, les in enumerate(self.arrays.design.lesions, start=1)
        }
        self.rows = {name: stage.lesion_columns(m, self.ctx, self.cfg, features={})
                     for name, m in self.masks.items()}
