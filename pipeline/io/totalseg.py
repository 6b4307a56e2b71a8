"""TotalSegmentator output folders and the codes of organ SEG segments (reading only).

This is the io side of organ masks: it reads files and returns masks and codes exactly as they
are stored. Mapping names and codes to one structure vocabulary ("lung_upper_lobe_left" ->
``lung_left``, SNOMED CT 10200004 -> ``liver``) and merging masks of one structure is anatomy
work (:mod:`pipeline.anatomy.organs`), so that ``pipeline.io`` never imports
``pipeline.anatomy``.

* :func:`is_totalseg_folder` / :func:`read_totalseg_folder`: a TotalSegmentator NIfTI output
  folder (one ``<structure>.nii.gz`` per structure), one ORGAN mask per non-empty file.
* :func:`seg_segment_codes`: SegmentLabel and coded SegmentedPropertyType (with its laterality
  modifier) of every segment of a DICOM SEG, from the header only.

Frames and units: masks are :class:`~pipeline.records.LesionMask` crops on a grid in LPS mm,
index order (z, y, x); NIfTI RAS affines are converted to LPS by
:meth:`pipeline.geometry.Grid.from_nifti_affine`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import SegmentationError
from pipeline.geometry import Grid, bbox_of, resample
from pipeline.records import LesionMask, MaskSource, SegmentKind

log = logging.getLogger(__name__)

#: TotalSegmentator v1/v2 structure names (file stems of its output folder), used to recognise
#: such a folder (:func:`is_totalseg_folder`).
TOTALSEG_NAMES: frozenset[str] = frozenset(
    ["adrenal_gland_left", "adrenal_gland_right", "aorta", "autochthon_left", "autochthon_right", "brain", "clavicula_left", "clavicula_right", "colon", "duodenum", "esophagus", "face", "femur_left", "femur_right", "gallbladder", "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right", "gluteus_minimus_left", "gluteus_minimus_right", "heart", "heart_atrium_left", "heart_atrium_right", "heart_myocardium", "heart_ventricle_left", "heart_ventricle_right", "hip_left", "hip_right", "humerus_left", "humerus_right", "iliac_artery_left", "iliac_artery_right", "iliac_vena_left", "iliac_vena_right", "iliopsoas_left", "iliopsoas_right", "inferior_vena_cava", "kidney_left", "kidney_right", "kidney_cyst_left", "kidney_cyst_right", "liver", "lung_lower_lobe_left", "lung_lower_lobe_right", "lung_middle_lobe_right", "lung_upper_lobe_left", "lung_upper_lobe_right", "pancreas", "portal_vein_and_splenic_vein", "pulmonary_artery", "pulmonary_vein", "sacrum", "scapula_left", "scapula_right", "small_bowel", "spinal_cord", "spleen", "stomach", "sternum", "costal_cartilages", "subclavian_artery_left", "subclavian_artery_right", "common_carotid_artery_left", "common_carotid_artery_right", "brachiocephalic_trunk", "brachiocephalic_vein_left", "brachiocephalic_vein_right", "atrial_appendage_left", "superior_vena_cava", "thyroid_gland", "trachea", "urinary_bladder", "prostate", "skull", "face", "skeletal_muscle", "subcutaneous_fat", "torso_fat"]
    + [f"vertebrae_{v}" for v in (
        [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)]
        + [f"L{i}" for i in range(1, 6)] + ["S1"])]
    + [f"rib_{s}_{i}" for s in ("left", "right") for i in range(1, 13)]
)

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _nifti_stem(path: Path) -> str | None:
    low = path.name.lower()
    for suf in _NIFTI_SUFFIXES:
        if low.endswith(suf):
            return path.name[: -len(suf)]
    return None


def _nifti_files(folder: Path) -> list[tuple[str, Path]]:
    out = []
    for p in sorted(folder.iterdir()):
        stem = _nifti_stem(p)
        if stem is not None and p.is_file():
            out.append((stem, p))
    return out


def is_totalseg_folder(path: str | Path) -> bool:
    """True for a TotalSegmentator output folder: a folder of NIfTI files of which at least
    half (and at least one) are named after TotalSegmentator structures (:data:`TOTALSEG_NAMES`).
    """
    p = Path(path)
    if not p.is_dir():
        return False
    files = _nifti_files(p)
    known = sum(1 for stem, _ in files if stem in TOTALSEG_NAMES)
    return known >= 1 and 2 * known >= len(files)


def read_totalseg_folder(
    folder: str | Path, *, grid: Grid | None = None, source_uid: str = ""
) -> dict[str, LesionMask]:
    """Organ masks of a TotalSegmentator NIfTI output folder, one per non-empty file.

    Every ``<name>.nii(.gz)`` is read as a binary mask (value > 0) named after its file stem
    (``lung_upper_lobe_left``, ``vertebrae_T9`` ...). Names are not mapped and masks are not
    merged here: :func:`pipeline.anatomy.organs.canonical_organs` does that for every organ
    source alike. Empty files are skipped.

    Parameters
    ----------
    folder : path
        The folder (TotalSegmentator ``-o``); files that are not NIfTI are ignored.
    grid : Grid, optional
        Target grid (normally the CT the lesions were drawn on). A file on the same grid is
        used as it is; another grid is resampled onto it (nearest neighbour, with a log
        message). None: each file keeps its own grid (RAS affine -> LPS).
    source_uid : str
        Recorded as ``source_uid`` (default: the folder name).

    Returns
    -------
    dict file stem -> LesionMask (kind ORGAN, source LABELMAP, ``segment_number`` = 1-based
    position of the file in name order), in name order.

    Raises
    ------
    SegmentationError
        The folder is missing or holds no NIfTI file, or a file is not a readable 3D image.
    """
    import nibabel as nib

    folder = Path(folder)
    if not folder.is_dir():
        raise SegmentationError("TotalSegmentator folder not found", file=folder,
                                hint="point organ_mask_ref at TotalSegmentator's -o folder")
    files = _nifti_files(folder)
    if not files:
        raise SegmentationError("no NIfTI file in the TotalSegmentator folder", file=folder,
                                hint="point organ_mask_ref at TotalSegmentator's -o folder")
    uid = source_uid or folder.name
    out: dict[str, LesionMask] = {}
    for number, (stem, path) in enumerate(files, start=1):
        try:
            img = nib.load(str(path))
            data = np.asanyarray(img.dataobj)
        except Exception as exc:
            raise SegmentationError(f"cannot read NIfTI: {type(exc).__name__}: {exc}",
                                    file=path, hint="re-run TotalSegmentator or remove the "
                                    "damaged file") from exc
        while data.ndim > 3 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise SegmentationError(f"expected a 3D mask, found shape {data.shape}", file=path,
                                    hint="give TotalSegmentator's per-structure 3D masks")
        src = Grid.from_nifti_affine(img.affine, tuple(int(v) for v in data.shape))
        full = np.ascontiguousarray(np.transpose(data > 0, (2, 1, 0)))
        if not full.any():
            continue
        on = src
        if grid is not None and not src.same_as(grid):
            full = resample(full, src, grid, interpolation="nearest")
            on = grid
            log.info("TotalSegmentator %s resampled onto the target grid (nearest)", path.name)
        bb = bbox_of(full)
        if bb is None:
            continue
        out[stem] = LesionMask(
            name=stem, source=MaskSource.LABELMAP, grid=on, bbox_zyx=bb,
            crop=full[tuple(slice(a, b) for a, b in bb)], kind=SegmentKind.ORGAN,
            source_uid=uid, segment_number=number,
        )
    log.info("TotalSegmentator folder %s: %d files -> %d non-empty masks", folder.name,
             len(files), len(out))
    return out


# --------------------------------------------------------------------------- SEG segment codes
@dataclass(frozen=True)
class SegmentCode:
    """What a DICOM SEG says about one segment (header only, nothing mapped).

    Attributes
    ----------
    segment_number : int
        SegmentNumber (0062,0004).
    label : str
        SegmentLabel (0062,0005), "" when absent.
    code : str
        CodeValue of SegmentedPropertyTypeCodeSequence (0062,000F), e.g. SNOMED CT
        ``10200004`` (liver); "" when absent.
    laterality_code : str
        CodeValue of SegmentedPropertyTypeModifierCodeSequence (0062,0011), e.g. ``7771000``
        (left); "" when absent.
    """

    segment_number: int
    label: str = ""
    code: str = ""
    laterality_code: str = ""


def seg_segment_codes(path: str | Path) -> dict[int, SegmentCode]:
    """Label and property-type codes of every segment of a DICOM SEG (header only).

    Parameters
    ----------
    path : path
        The SEG file.

    Returns
    -------
    dict SegmentNumber -> :class:`SegmentCode`, in SegmentSequence order. Map them to
    structures with :func:`pipeline.anatomy.organs.structures_of_codes`.

    Raises
    ------
    SegmentationError
        The header cannot be read.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:
        raise SegmentationError(f"cannot read SEG header: {type(exc).__name__}: {exc}",
                                file=Path(path),
                                hint="give a readable DICOM SEG as the organ mask") from exc
    out: dict[int, SegmentCode] = {}
    for s in ds.get("SegmentSequence", []) or []:
        code = lat = ""
        for item in s.get("SegmentedPropertyTypeCodeSequence", []) or []:
            code = str(item.get("CodeValue", "") or "")
            for mod in item.get("SegmentedPropertyTypeModifierCodeSequence", []) or []:
                lat = str(mod.get("CodeValue", "") or "")
        number = int(s.get("SegmentNumber", 0))
        out[number] = SegmentCode(number, str(s.get("SegmentLabel", "") or ""), code, lat)
    return out
