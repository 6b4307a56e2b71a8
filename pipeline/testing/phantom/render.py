"""Phantom images in memory: voxel arrays of the CT (both phases) and the PET of one patient.

Voxels are sampled at their centres from the analytic design (:mod:`.design`), with no blur; the
CT gets seeded Gaussian noise. Arrays are indexed ``(z, y, x)``; CT in HU, PET in SUVbw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.geometry import Grid
from pipeline.testing.phantom.design import (
    CT_NOISE_SIGMA_HU,
    ORGANS,
    PET_STORED_MAX,
    TISSUE_VALUES,
    TOTALSEG_STRUCTURES,
    LesionDesign,
    PatientDesign,
    Tissue,
    body_skin_depth,
    classify_tissue,
    ct_grid,
    grid_axes,
    label_lesions,
    patient_design,
    pet_grid,
)


def _label_grid(grid: Grid, lesions: Sequence[LesionDesign], shift=None):
    """Tissue, lesion, core and overlap arrays on a grid, in z-chunks of ~4 M voxels.

    ``shift`` (dx, dy, dz mm): the patient is translated by it, i.e. voxel centre ``p`` shows
    the anatomy at ``p - shift`` (the shifted contrast CT).
    """
    xs, ys, zs = grid_axes(grid)
    if shift is not None:
        xs, ys, zs = xs - shift[0], ys - shift[1], zs - shift[2]
    x = xs[None, None, :]
    y = ys[None, :, None]
    skin = body_skin_depth(x, y)  # (1, ny, nx)
    nz, ny, nx = grid.shape_zyx
    tissue = np.empty(grid.shape_zyx, dtype=np.uint8)
    labels = np.empty(grid.shape_zyx, dtype=np.uint8)
    core = np.empty(grid.shape_zyx, dtype=bool)
    overlap = np.empty(grid.shape_zyx, dtype=bool)
    step = max(1, int(4_000_000 // (ny * nx)))
    for z0 in range(0, nz, step):
        z = zs[z0 : z0 + step, None, None]
        tissue[z0 : z0 + step] = classify_tissue(x, y, z, skin)
        lab, cor, ovl = label_lesions(x, y, z, lesions)
        labels[z0 : z0 + step] = lab
        core[z0 : z0 + step] = cor
        overlap[z0 : z0 + step] = ovl
    return tissue, labels, core, overlap


# --------------------------------------------------------------------------- arrays
@dataclass(frozen=True, eq=False)
class PhantomArrays:
    """All phantom images of one patient, without files.

    Attributes
    ----------
    design : PatientDesign
    ct_grid, pet_grid : Grid
        LPS geometry of the CT (both phases) and the PET.
    ct_noncontrast_hu, ct_contrast_hu : (z, y, x) float32
        HU with noise, rounded to integers exactly as stored in the DICOM files.
    pet_suv : (z, y, x) float32
        Exact SUVbw at PET voxel centres (before int16 storage).
    tissue_labels : (z, y, x) uint8 on the CT grid
        :class:`Tissue` classes without lesions.
    lesion_labels : (z, y, x) uint8 on the CT grid
        k = ``design.lesions[k-1]``, 0 = background.
    lesion_core : (z, y, x) bool on the CT grid
        Necrotic core voxels.
    pet_tissue_labels, pet_lesion_labels, pet_lesion_core : same on the PET grid.
    contrast_shift_mm : (dx, dy, dz) or None
        Rigid offset of the patient in the contrast CT.
    contrast_tissue_labels, contrast_lesion_labels, contrast_lesion_core : arrays or None
        When shifted: the labels of the contrast CT (same grid, shifted content); else None
        (use the properties ``*_contrast``, which fall back to the unshifted arrays).
    """

    design: PatientDesign
    ct_grid: Grid
    pet_grid: Grid
    ct_noncontrast_hu: np.ndarray
    ct_contrast_hu: np.ndarray
    pet_suv: np.ndarray
    tissue_labels: np.ndarray
    lesion_labels: np.ndarray
    lesion_core: np.ndarray
    pet_tissue_labels: np.ndarray
    pet_lesion_labels: np.ndarray
    pet_lesion_core: np.ndarray
    contrast_shift_mm: tuple[float, float, float] | None = None
    contrast_tissue_labels: np.ndarray | None = None
    contrast_lesion_labels: np.ndarray | None = None
    contrast_lesion_core: np.ndarray | None = None

    @property
    def tissue_labels_contrast(self) -> np.ndarray:
        """Tissue labels of the contrast CT (shifted content when ``contrast_shift_mm``)."""
        return self.tissue_labels if self.contrast_tissue_labels is None else (
            self.contrast_tissue_labels)

    @property
    def lesion_labels_contrast(self) -> np.ndarray:
        """Lesion labels of the contrast CT (shifted content when ``contrast_shift_mm``)."""
        return self.lesion_labels if self.contrast_lesion_labels is None else (
            self.contrast_lesion_labels)

    @property
    def lesion_names(self) -> tuple[str, ...]:
        """Lesion names in label order."""
        return tuple(les.name for les in self.design.lesions)

    @property
    def organ_labels(self) -> np.ndarray:
        """(z, y, x) uint8 on the CT grid: k = ``ORGAN_NAMES[k-1]`` (lesions included)."""
        lut = np.zeros(len(Tissue), dtype=np.uint8)
        for k, (_, tissue, _, _) in enumerate(ORGANS, start=1):
            lut[int(tissue)] = k
        return lut[self.tissue_labels]

    def organ_mask(self, name: str) -> np.ndarray:
        """Boolean CT-grid mask of organ ``name`` (one of :data:`ORGAN_NAMES`)."""
        tissue = dict((o[0], o[1]) for o in ORGANS)[name]
        return self.tissue_labels == int(tissue)

    def totalseg_masks(self) -> dict[str, np.ndarray]:
        """Boolean CT-grid masks of :data:`TOTALSEG_STRUCTURES` (files of ``totalseg/``)."""
        zs = grid_axes(self.ct_grid)[2]
        out = {}
        for name, organ, z0, z1 in TOTALSEG_STRUCTURES:
            in_slab = (zs >= z0) & (zs < z1)
            out[name] = self.organ_mask(organ) & in_slab[:, None, None]
        return out

    @property
    def body_mask(self) -> np.ndarray:
        """Boolean CT-grid mask of the patient body (no air, no table)."""
        return (self.tissue_labels != Tissue.AIR) & (self.tissue_labels != Tissue.TABLE)

    def pet_activity_bqml(self) -> np.ndarray:
        """Exact PET activity concentration, Bq/mL decay-corrected to SeriesTime (float64)."""
        return self.pet_suv.astype(np.float64) / self.design.suvbw_factor


def _value_luts(lesions: Sequence[LesionDesign], column: int):
    """Lookup tables (tissue, lesion, core) for column 0 = HU nc, 1 = HU ce, 2 = SUV."""
    tissue = np.array([TISSUE_VALUES[t][column] for t in Tissue], dtype=np.float32)
    les_vals = [np.nan] + [(l.hu_noncontrast, l.hu_contrast, l.suv)[column] for l in lesions]
    core_vals = [np.nan] + [
        (l.core_hu_noncontrast, l.core_hu_contrast, l.core_suv)[column] for l in lesions
    ]
    return tissue, np.array(les_vals, np.float32), np.array(core_vals, np.float32)


def render_values(tissue, labels, core, lesions, column: int) -> np.ndarray:
    """Values of labelled voxels: column 0 = HU non-contrast, 1 = HU contrast, 2 = SUVbw
    (tissue value, overridden by the lesion value, then by the core value inside a core)."""
    t_lut, l_lut, c_lut = _value_luts(lesions, column)
    out = t_lut[tissue]
    m = labels > 0
    out[m] = l_lut[labels[m]]
    mc = core & m
    out[mc] = c_lut[labels[mc]]
    return out


def phantom_arrays(
    size: str = "small",
    patient_index: int = 1,
    seed: int = 0,
    variant: str = "standard",
    contrast_shift_mm: tuple[float, float, float] | None = None,
) -> PhantomArrays:
    """Build every phantom image of one patient in memory.

    Parameters
    ----------
    size : {"small", "full"}
    patient_index : int
        1 = canonical design.
    seed : int
        Cohort seed (CT noise, jitter of patients >= 2).
    variant : {"standard", "extended"}
        See :func:`lesion_designs`.
    contrast_shift_mm : (dx, dy, dz) mm, optional
        The contrast CT shows the patient translated by this offset (same grid, so voxel ``p``
        of the contrast CT shows the anatomy at ``p - shift``); everything else is unshifted.

    Returns
    -------
    PhantomArrays

    Raises
    ------
    RuntimeError
        If lesions overlap each other or leave their intended tissue (a design error).
    """
    design = patient_design(patient_index, seed, size, variant, contrast_shift_mm)
    shift = design.contrast_shift_mm
    cg, pg = ct_grid(size), pet_grid(size)
    lesions = design.lesions
    tissue, labels, core, overlap = _label_grid(cg, lesions)
    if overlap.any():
        raise RuntimeError(f"phantom lesions overlap in {int(overlap.sum())} CT voxels")
    check_hosts(tissue, labels, lesions)
    p_tissue, p_labels, p_core, p_overlap = _label_grid(pg, lesions)
    if p_overlap.any():
        raise RuntimeError("phantom lesions overlap on the PET grid")
    c_tissue, c_labels, c_core = tissue, labels, core
    if shift is not None:
        c_tissue, c_labels, c_core, _ = _label_grid(cg, lesions, shift)

    cts = []
    for phase, column in ((0, 0), (1, 1)):
        if phase == 0:
            clean = render_values(tissue, labels, core, lesions, column)
        else:
            clean = render_values(c_tissue, c_labels, c_core, lesions, column)
        rng = np.random.default_rng([int(seed), int(patient_index), 1000 + phase])
        noise = rng.standard_normal(cg.shape_zyx, dtype=np.float32) * CT_NOISE_SIGMA_HU
        hu = np.clip(np.rint(clean + noise), -1024, 3071).astype(np.float32)
        cts.append(hu)
    suv = render_values(p_tissue, p_labels, p_core, lesions, 2).astype(np.float32)
    return PhantomArrays(
        design=design,
        ct_grid=cg,
        pet_grid=pg,
        ct_noncontrast_hu=cts[0],
        ct_contrast_hu=cts[1],
        pet_suv=suv,
        tissue_labels=tissue,
        lesion_labels=labels,
        lesion_core=core,
        pet_tissue_labels=p_tissue,
        pet_lesion_labels=p_labels,
        pet_lesion_core=p_core,
        contrast_shift_mm=shift,
        contrast_tissue_labels=c_tissue if shift is not None else None,
        contrast_lesion_labels=c_labels if shift is not None else None,
        contrast_lesion_core=c_core if shift is not None else None,
    )


def check_hosts(tissue: np.ndarray, labels: np.ndarray, lesions: Sequence[LesionDesign]) -> None:
    """Raise RuntimeError when a lesion covers no voxel or a voxel outside its host tissues."""
    for k, les in enumerate(lesions, start=1):
        under = np.unique(tissue[labels == k])
        allowed = {int(Tissue[name]) for name in les.host_tissues}
        bad = [Tissue(int(t)).name for t in under if int(t) not in allowed]
        if len(under) == 0:
            raise RuntimeError(f"phantom lesion {les.name} covers no CT voxel")
        if bad:
            raise RuntimeError(
                f"phantom lesion {les.name} leaves its host tissue {les.host_tissues}: covers {bad}"
            )


def quantize_pet_slices(activity_bqml: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Store PET activity as int16 with one RescaleSlope per slice (intercept 0).

    The slope is ``slice max / 32000`` rounded to a valid 16-character DICOM DS, and the stored
    values are quantised with that rounded slope, so ``stored * slope`` is what a reader gets.

    Returns
    -------
    stored : (z, y, x) int16
    slopes : (z,) float64
    """
    from pydicom.valuerep import DSfloat

    nz = activity_bqml.shape[0]
    stored = np.empty(activity_bqml.shape, dtype=np.int16)
    slopes = np.empty(nz, dtype=np.float64)
    for k in range(nz):
        mx = float(activity_bqml[k].max())
        slope = float(DSfloat(mx / PET_STORED_MAX, auto_format=True)) if mx > 0 else 1.0
        slopes[k] = slope
        stored[k] = np.clip(np.rint(activity_bqml[k] / slope), 0, 32767).astype(np.int16)
    return stored, slopes
