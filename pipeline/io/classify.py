"""Series classification of the archive index, from headers only.

Per file (:func:`file_extra`): contrast agent, CorrectedImage, and for SEG / RTSTRUCT the
segments (lesion / organ / unknown by coded category, then name patterns) and the referenced
series and instances. Per series (:func:`classify_series`):

* ``ct_phase``: ``contrast`` if any file has a ContrastBolusAgent (not "none"/"no"), else by
  description keywords (:data:`NONCONTRAST_KEYWORDS` first, then :data:`CONTRAST_KEYWORDS`),
  else ``unknown``; ``phase_reason`` says which (:func:`ct_phase_from_headers`).
* ``excluded_reason``: localizer/scout (ImageType), secondary capture, structured reports and
  dose reports/summaries, screen saves, unused modalities, sagittal/coronal CT reformats.
* ``pet_corrected``: CorrectedImage contains ATTN (NA when unknown, non-PET).
* ``segment_kind``, ``reference_problem``: see :func:`pipeline.io.index.scan_archive`.

Why :func:`refine_ct_phase` is not part of the index
----------------------------------------------------
The contrast phase can also be read from the pixels: the median HU inside the aorta. That needs
the CT's pixel data *and* an aorta mask on its grid (an organ segmentation, itself read with its
pixels), for every CT whose headers leave the phase open. The index reads headers only (one
header per file, about 100x faster than loading the series), so :func:`refine_ct_phase` is not
called while building the index or the study sheet. It is a user-callable check: load the CT
(:func:`pipeline.io.dicom.load_ct`) and an aorta mask, call it, and when it disagrees with the
sheet, swap ``ct_series_uid`` / ``ce_ct_series_uid`` in an edited copy of the study sheet
(``--set studies=edited.csv``).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.io.integrity import header_str
from pipeline.io.rtstruct import classify_roi, roi_table, rtstruct_references
from pipeline.io.seg import classify_segment, referenced_series_uids, segment_descriptions
from pipeline.records import CTPhase, Modality

log = logging.getLogger(__name__)

SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."

#: Description keywords (regular expressions, lower case) telling a CT's contrast phase. The
#: non-contrast list is tried first because "non-contrast" contains "contrast".
NONCONTRAST_KEYWORDS: tuple[str, ...] = (
    r"\bnon[-_ ]?contrast", r"\bnon[-_ ]?enhanced", r"\bunenhanced", r"\bnative\b",
    r"\bw/o\b", r"\bwithout\b", r"\bnc\b", r"\bplain\b", r"\bpre[-_ ]?contrast",
    r"(^|[\s_(])c-($|[\s_)])", r"\bnoncon\b", r"\bnon[-_ ]?con\b",
)
CONTRAST_KEYWORDS: tuple[str, ...] = (
    r"contrast", r"\benhanced", r"(^|[\s_(])c\+", r"\bce\b", r"\bcect\b", r"\barterial",
    r"\bvenous", r"\bportal", r"\bpv\b", r"\bdelayed", r"\bnephrographic", r"\bw/(?!o)",
    r"\bwith\b", r"\bangio",
)
#: Description keywords of dose reports and summaries (excluded series).
DOSE_REPORT_KEYWORDS: tuple[str, ...] = (
    r"dose\s*(report|info|summary)", r"patient\s*protocol", r"screen\s*save", r"\bsummary\b",
    r"exam\s*summary",
)
_NO_AGENT = {"", "none", "no", "n/a", "na", "0", "-", "nil", "non", "without"}

#: Median HU inside the (eroded) aorta above which a CT is contrast-enhanced, and below which
#: it is non-contrast (unenhanced blood is 30-60 HU; portal-venous aorta 120-200 HU, arterial
#: > 250 HU). In between: unknown.
AORTA_CONTRAST_HU = 110.0
AORTA_NONCONTRAST_HU = 75.0


@dataclass
class SeriesExtra:
    """Per-file header information used only to classify series (not stored in files.csv)."""

    contrast_agent: str = ""
    corrected_image: str = ""
    study_date: str = ""
    segments: list = field(default_factory=list)  # (label, kind)
    ref_series: list = field(default_factory=list)
    ref_sops: list = field(default_factory=list)


def file_extra(ds, dm: str, lesion_patterns, organ_patterns) -> SeriesExtra:
    """The classification inputs of one DICOM header ``ds`` of DICOM modality ``dm``."""
    agent = header_str(ds, "ContrastBolusAgent")
    if not agent:  # enhanced CT: Contrast/Bolus Agent Sequence (0018,0012)
        seq = ds.get("ContrastBolusAgentSequence", None) or []
        agent = next((str(it.get("CodeMeaning", "") or it.get("CodeValue", "")) for it in seq
                      if it.get("CodeMeaning", "") or it.get("CodeValue", "")), "")
    ex = SeriesExtra(contrast_agent=agent, corrected_image=header_str(ds, "CorrectedImage"),
                     study_date=header_str(ds, "StudyDate"))
    if dm == "SEG":
        for d in segment_descriptions(ds):
            kind = classify_segment(name=d["label"], category_code=d["category_code"],
                                    type_code=d["type_code"],
                                    lesion_name_patterns=lesion_patterns,
                                    organ_name_patterns=organ_patterns)
            ex.segments.append((d["label"], kind.value))
        ex.ref_series = referenced_series_uids(ds)
        for item in ds.get("ReferencedSeriesSequence", []) or []:
            for ri in item.get("ReferencedInstanceSequence", []) or []:
                if "ReferencedSOPInstanceUID" in ri:
                    ex.ref_sops.append(str(ri.ReferencedSOPInstanceUID))
    elif dm == "RTSTRUCT":
        for roi in roi_table(ds):
            kind = classify_roi(roi["name"], roi["interpreted_type"],
                                lesion_name_patterns=lesion_patterns,
                                organ_name_patterns=organ_patterns)
            if roi["n_contours"] > 0:
                ex.segments.append((roi["name"], kind.value))
        ex.ref_series, ex.ref_sops = rtstruct_references(ds)
    return ex


def orientation_label(iop: str) -> str:
    """axial / coronal / sagittal / oblique / invalid from an ImageOrientationPatient string."""
    if not iop:
        return ""
    try:
        v = np.asarray([float(x) for x in iop.split("\\")], dtype=float).reshape(2, 3)
    except ValueError:
        return ""
    n = np.cross(v[0], v[1])
    if np.linalg.norm(n) < 1e-6:
        return "invalid"
    n = np.abs(n / np.linalg.norm(n))
    axis = int(np.argmax(n))
    if n[axis] < 0.99:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _match(desc: str, patterns: Iterable[str]) -> str | None:
    low = desc.lower()
    for p in patterns:
        if re.search(p, low):
            return p
    return None


def ct_phase_from_headers(agents: list[str], desc: str) -> tuple[str, str]:
    """(ct_phase, phase_reason) from the series' ContrastBolusAgent values and description."""
    real = sorted({a for a in agents if a.strip().lower() not in _NO_AGENT})
    if real:
        return CTPhase.CONTRAST.value, f"ContrastBolusAgent '{real[0]}'"
    p = _match(desc, NONCONTRAST_KEYWORDS)
    if p:
        return CTPhase.NONCONTRAST.value, f"description '{desc}' matches {p}"
    p = _match(desc, CONTRAST_KEYWORDS)
    if p:
        return CTPhase.CONTRAST.value, f"description '{desc}' matches {p}"
    return CTPhase.UNKNOWN.value, "no ContrastBolusAgent and no phase keyword in the description"


def refine_ct_phase(
    ct_volume,
    aorta_mask,
    *,
    header_phase: CTPhase | str = CTPhase.UNKNOWN,
    min_voxels: int = 20,
) -> tuple[CTPhase, str]:
    """CT contrast phase from the HU of the aorta (needs pixels: not called by the index).

    See the module docstring for why the index and the study sheet do not call it.

    Parameters
    ----------
    ct_volume : Volume
        The CT (HU), e.g. from :func:`pipeline.io.dicom.load_ct`.
    aorta_mask : LesionMask or (z, y, x) bool array
        The aorta on ``ct_volume``'s grid (an organ mask from a SEG, RTSTRUCT or label map).
    header_phase : CTPhase or str
        The phase the index found from the headers (ContrastBolusAgent, description).
    min_voxels : int
        Fewest voxels (after a one-voxel erosion, to leave out the wall and partial volume)
        needed to judge.

    Returns
    -------
    (CTPhase, reason)
        ``contrast`` when the median aortic HU is >= 110, ``noncontrast`` when <= 75, else the
        header phase. The reason gives the median HU, the voxel count and whether it agrees with
        the header phase; a disagreement keeps the HU verdict (the pixels decide) and says so.
    """
    from scipy import ndimage

    header_phase = CTPhase(header_phase)
    if hasattr(aorta_mask, "full"):
        if not aorta_mask.grid.same_as(ct_volume.grid):
            return header_phase, "aorta mask is not on the CT grid; phase from the headers"
        mask = aorta_mask.full()
    else:
        mask = np.asarray(aorta_mask, dtype=bool)
    if mask.shape != tuple(ct_volume.array.shape):
        return header_phase, "aorta mask shape differs from the CT; phase from the headers"
    core = ndimage.binary_erosion(mask, iterations=1)
    if core.sum() < min_voxels:
        core = mask
    n = int(core.sum())
    if n < min_voxels:
        return header_phase, (f"aorta mask has {n} voxels (< {min_voxels}); phase from the "
                              "headers")
    hu = float(np.median(ct_volume.array[core]))
    if hu >= AORTA_CONTRAST_HU:
        phase = CTPhase.CONTRAST
    elif hu <= AORTA_NONCONTRAST_HU:
        phase = CTPhase.NONCONTRAST
    else:
        return header_phase, (f"median aortic HU {hu:.0f} over {n} voxels is between "
                              f"{AORTA_NONCONTRAST_HU:.0f} and {AORTA_CONTRAST_HU:.0f}: "
                              "inconclusive; phase from the headers")
    reason = f"median aortic HU {hu:.0f} over {n} voxels"
    if header_phase is CTPhase.UNKNOWN:
        reason += " (headers did not tell)"
    elif header_phase is not phase:
        reason += f" contradicts the header phase {header_phase.value}; the HU decide"
        log.warning("CT %s: %s", ct_volume.series_uid, reason)
    else:
        reason += f" agrees with the headers ({header_phase.value})"
    return phase, reason


def excluded_reason(dm: str, sop_classes: set[str], image_types: list[str], desc: str
                     ) -> tuple[str, bool]:
    localizer = any(
        tok in {"LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW", "SCANOGRAM"}
        for it in image_types for tok in it.upper().split("\\")
    )
    if localizer:
        return "localizer/scout (ImageType)", True
    if any(c.startswith(SECONDARY_CAPTURE_PREFIX) for c in sop_classes):
        return "secondary capture", False
    if dm == "SR" or any(c.startswith(SR_PREFIX) for c in sop_classes):
        return "structured report (dose report or summary)", False
    if _match(desc, DOSE_REPORT_KEYWORDS):
        return f"dose report/summary (description '{desc}')", False
    if dm in ("CT", "PT") and any("SCREEN SAVE" in it.upper() for it in image_types):
        return "screen save", False
    if dm not in {m.value for m in Modality} and dm:
        return f"modality {dm} not used", False
    return "", False


#: Prefix of a ``reference_problem`` part that does not make a segmentation unusable: an RTSTRUCT
#: whose referenced series is in the archive with only some of the instances it lists (a cropped
#: or partly transferred export); its contours on the present slices are rasterized.
PARTLY_PRESENT = "partly present series"


def blocking_reference_problems(reference_problem: str) -> list[str]:
    """The parts of a ``reference_problem`` cell that make the segmentation unusable.

    Parts are separated by ``"; "``; a :data:`PARTLY_PRESENT` part is not blocking.
    """
    return [p for p in (reference_problem or "").split("; ")
            if p and not p.startswith(PARTLY_PRESENT)]


def series_segment_kind(kinds: list[str]) -> str:
    """lesion / organ / mixed / unknown from the kinds of a series' segments ("" if none)."""
    c = Counter(kinds)
    if c["lesion"] and c["organ"]:
        return "mixed"
    if c["lesion"]:
        return "lesion"
    if c["organ"]:
        return "organ"
    return "unknown" if kinds else ""


def classify_series(files: pd.DataFrame, extras: dict[str, SeriesExtra]) -> list[dict]:
    """One classified row per series (the columns of ``pipeline.io.index.SERIES_COLUMNS``).

    Parameters
    ----------
    files : DataFrame
        The ``files`` table of the index.
    extras : dict
        ``path`` -> :class:`SeriesExtra` of every row of ``files``.
    """
    all_series = set(files["series_uid"])
    all_sops = set(files["sop_instance_uid"]) - {""}
    rows = []
    for uid, g in files.groupby("series_uid", sort=False):
        first = g.iloc[0]
        mod = Counter(g["modality"]).most_common(1)[0][0]
        dm = Counter(g["dicom_modality"]).most_common(1)[0][0]
        ex_list = [extras[p] for p in g["path"]]
        desc = first["series_description"]
        orients = {orientation_label(o) for o in set(g["image_orientation"]) if o}
        orientation = orients.pop() if len(orients) == 1 else ("mixed" if orients else "")
        excluded, is_loc = excluded_reason(dm, set(g["sop_class_uid"]),
                                            list(g["image_type"]), desc)
        if not excluded and mod == Modality.CT.value and orientation in ("sagittal", "coronal"):
            excluded = f"{orientation} reformat (not an axial CT volume)"
        phase, phase_reason = "", ""
        if mod == Modality.CT.value:
            phase, phase_reason = ct_phase_from_headers([e.contrast_agent for e in ex_list], desc)
        pet_corrected = pd.NA
        if mod == Modality.PT.value:
            ci = {e.corrected_image.upper() for e in ex_list if e.corrected_image}
            if ci:
                pet_corrected = any("ATTN" in c.split("\\") for c in ci)
            elif re.search(r"\bnac\b|uncorrected|no[-_ ]?ac\b", desc.lower()):
                pet_corrected = False
        segs: list[tuple[str, str]] = []
        refs: list[str] = []
        ref_sops: list[str] = []
        for e in ex_list:
            segs += e.segments
            refs += e.ref_series
            ref_sops += e.ref_sops
        refs = list(dict.fromkeys(refs))
        problems = []
        missing_series = [r for r in refs if r not in all_series]
        if missing_series:
            problems.append(f"referenced series not in the archive: {', '.join(missing_series)}")
        uniq_sops = list(dict.fromkeys(ref_sops))
        missing_sops = [s for s in uniq_sops if s not in all_sops]
        if missing_sops:
            text = (f"{len(missing_sops)} referenced image instance(s) not in the archive "
                    f"(first {missing_sops[0]})")
            partial = (mod == Modality.RTSTRUCT.value and refs and not missing_series
                       and len(missing_sops) < len(uniq_sops))
            if partial:
                text = (f"{PARTLY_PRESENT}: {len(missing_sops)} of {len(uniq_sops)} referenced "
                        f"image instance(s) not in the archive (first {missing_sops[0]}), "
                        "contours on the present slices are used")
            problems.append(text)
        if mod in (Modality.SEG.value, Modality.RTSTRUCT.value) and not refs:
            problems.append("names no referenced image series")
        kinds = [k for _, k in segs]
        rows.append({
            "series_uid": uid,
            "study_uid": Counter(g["study_uid"]).most_common(1)[0][0],
            "patient_id": Counter(g["patient_id"]).most_common(1)[0][0],
            "modality": mod, "dicom_modality": dm,
            "n_files": int(len(g)),
            "n_instances": int(len(set(g["sop_instance_uid"]) - {""}) or len(g)),
            "n_slices": int(sum(int(v) if not pd.isna(v) and int(v) > 1 else 1
                                for v in g.drop_duplicates("sop_instance_uid")
                                ["number_of_frames"])),
            "description": desc, "series_number": first["series_number"],
            "frame_of_reference_uid": first["frame_of_reference_uid"],
            "study_date": next((e.study_date for e in ex_list if e.study_date), ""),
            "orientation": orientation,
            "ct_phase": phase, "phase_reason": phase_reason,
            "excluded_reason": excluded, "is_localizer": bool(is_loc),
            "pet_corrected": pet_corrected,
            "referenced_series_uids": ";".join(refs),
            "segment_kind": series_segment_kind(kinds) if segs or mod in (
                Modality.SEG.value, Modality.RTSTRUCT.value, Modality.LABELMAP.value) else "",
            "n_segments": len(segs),
            "n_lesion_segments": kinds.count("lesion"),
            "n_organ_segments": kinds.count("organ"),
            "segment_names": json.dumps([n for n, _ in segs], ensure_ascii=False) if segs else "",
            "reference_problem": "; ".join(problems),
            "first_path": first["path"],
        })
    return rows
