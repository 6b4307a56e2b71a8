"""Header-only index of an arbitrary archive tree: scan, tables, persistence.

Scanning
--------
Every regular file under the root is looked at once (:func:`scan_archive`):

* **DICOM is recognised by content**, not by name, and checked for truncation without reading
  pixel values (:mod:`pipeline.io.integrity`). DICOMDIR files are skipped.
* **NIfTI / NRRD label maps** (``*.nii``, ``*.nii.gz``, ``*.seg.nrrd``) with a ``<stem>.json``
  sidecar are indexed as :attr:`Modality.LABELMAP` with the sidecar's patient_id / study_uid /
  referenced_series_uid / kind. Sidecars themselves are not records. Label maps in a
  TotalSegmentator output folder are organ masks, listed in ``meta["totalseg_folders"]``.
* Everything else, and every file that fails a check, goes to ``problems`` with the reason.
* Series are classified (CT phase, exclusions, PET correction, segment kinds, broken
  references) by :mod:`pipeline.io.classify`.

The study sheet built from the index lives in :mod:`pipeline.sheet`.

Tables
------
``files`` (one row per DICOM object or label map), ``series`` (one row per series with its
classification) and ``problems`` (path, reason, error_class) are pandas DataFrames; paths are
relative to ``root`` (POSIX separators). :func:`write_index` / :func:`read_index` store them as
``files.csv``, ``series.csv``, ``problems.csv`` plus ``index.json`` (root, counts).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from pipeline.errors import ConfigError, PipelineError
from pipeline.io.classify import SeriesExtra, classify_series, file_extra
from pipeline.io.integrity import header_str, read_checked_header
from pipeline.io.labelmap import (
    is_labelmap,
    is_nrrd,
    labelmap_grid,
    nrrd_segments,
    read_sidecar,
    sidecar_path,
)
from pipeline.io.seg import (
    DEFAULT_LESION_NAME_PATTERNS,
    DEFAULT_ORGAN_NAME_PATTERNS,
    classify_segment,
)
from pipeline.records import CTPhase, Modality, SegmentKind, SeriesRef

log = logging.getLogger(__name__)

# Column specifications: name -> kind ("str", "int", "Int64" (nullable), "bool", "boolean").
FILE_COLUMNS: dict[str, str] = {
    "path": "str", "patient_id": "str", "study_uid": "str", "series_uid": "str",
    "sop_instance_uid": "str", "sop_class_uid": "str", "modality": "str",
    "dicom_modality": "str", "series_description": "str", "series_number": "str",
    "frame_of_reference_uid": "str", "image_position": "str", "image_orientation": "str",
    "instance_number": "Int64", "rows": "Int64", "columns": "Int64",
    "number_of_frames": "Int64", "image_type": "str", "transfer_syntax_uid": "str",
    "file_size": "int", "study_date": "str",
}
SERIES_COLUMNS: dict[str, str] = {
    "series_uid": "str", "study_uid": "str", "patient_id": "str", "modality": "str",
    "dicom_modality": "str", "n_files": "int", "n_instances": "int", "n_slices": "int",
    "description": "str",
    "series_number": "str", "frame_of_reference_uid": "str", "study_date": "str",
    "orientation": "str", "ct_phase": "str", "phase_reason": "str", "excluded_reason": "str",
    "is_localizer": "bool", "pet_corrected": "boolean", "referenced_series_uids": "str",
    "segment_kind": "str", "n_segments": "int", "n_lesion_segments": "int",
    "n_organ_segments": "int", "segment_names": "str", "reference_problem": "str",
    "first_path": "str",
}
PROBLEM_COLUMNS: dict[str, str] = {
    "path": "str", "reason": "str", "error_class": "str",
    # filled when the header could still be read (e.g. a file cut in its pixel data), so that a
    # study can report its own broken files
    "patient_id": "str", "study_uid": "str", "series_uid": "str",
}


@dataclass
class ArchiveIndex:
    """Result of :func:`scan_archive`.

    Attributes
    ----------
    files, series, problems : pandas.DataFrame
        See the module docstring and ``FILE_COLUMNS`` / ``SERIES_COLUMNS`` / ``PROBLEM_COLUMNS``.
    root : Path
        The scanned folder; all ``path`` columns are relative to it.
    """

    files: pd.DataFrame
    series: pd.DataFrame
    problems: pd.DataFrame
    root: Path
    meta: dict = field(default_factory=dict)

    def series_paths(self, series_uid: str) -> list[Path]:
        """Absolute paths of the files of one series, in ``files`` order."""
        rows = self.files[self.files["series_uid"] == series_uid]
        return [self.root / p for p in rows["path"]]

    def series_sop_uids(self, series_uid: str) -> list[str]:
        """SOPInstanceUIDs of one series."""
        rows = self.files[self.files["series_uid"] == series_uid]
        return [u for u in rows["sop_instance_uid"] if u]

    def series_row(self, series_uid: str) -> pd.Series:
        """The ``series`` row of one series (KeyError if absent)."""
        rows = self.series[self.series["series_uid"] == series_uid]
        if rows.empty:
            raise KeyError(series_uid)
        return rows.iloc[0]

    def series_refs(self) -> list[SeriesRef]:
        """The series as :class:`pipeline.records.SeriesRef` records."""
        out = []
        for r in self.series.itertuples(index=False):
            kind = r.segment_kind if r.segment_kind in {k.value for k in SegmentKind} else "unknown"
            out.append(SeriesRef(
                series_uid=r.series_uid, study_uid=r.study_uid, patient_id=r.patient_id,
                modality=Modality(r.modality), n_files=int(r.n_files), description=r.description,
                ct_phase=CTPhase(r.ct_phase) if r.ct_phase else CTPhase.UNKNOWN,
                frame_of_reference_uid=r.frame_of_reference_uid,
                referenced_series_uids=tuple(u for u in r.referenced_series_uids.split(";") if u),
                segment_kind=SegmentKind(kind),
            ))
        return out


# =========================================================================== per-file records
def _int_or_none(ds, kw: str):
    v = ds.get(kw, None)
    try:
        return int(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _modality_enum(dicom_modality: str) -> Modality:
    try:
        return Modality(dicom_modality)
    except ValueError:
        return Modality.OTHER


def _fg_first(ds, group: str, kw: str) -> str:
    """A multi-frame functional-group attribute of the first frame (per-frame, then shared)."""
    from pipeline.io.dicom import functional_group_value

    if "PerFrameFunctionalGroupsSequence" not in ds and "SharedFunctionalGroupsSequence" not in ds:
        return ""
    try:
        v = functional_group_value(ds, 0, group, kw)
    except Exception:  # damaged functional groups: leave it to the loader
        return ""
    if v is None:
        return ""
    return "\\".join(str(x) for x in v) if isinstance(v, (list, tuple,
                                                         pydicom.multival.MultiValue)) else str(v)


def _file_record(path: Path, root: Path, ds, size: int) -> dict:
    dm = header_str(ds, "Modality").upper()
    return {
        "path": path.relative_to(root).as_posix(),
        "patient_id": header_str(ds, "PatientID"),
        "study_uid": header_str(ds, "StudyInstanceUID"),
        "series_uid": header_str(ds, "SeriesInstanceUID"),
        "sop_instance_uid": header_str(ds, "SOPInstanceUID"),
        "sop_class_uid": header_str(ds, "SOPClassUID"),
        "modality": _modality_enum(dm).value,
        "dicom_modality": dm,
        "series_description": header_str(ds, "SeriesDescription"),
        "series_number": header_str(ds, "SeriesNumber"),
        "frame_of_reference_uid": header_str(ds, "FrameOfReferenceUID"),
        "image_position": header_str(ds, "ImagePositionPatient")
        or _fg_first(ds, "PlanePositionSequence", "ImagePositionPatient"),
        "image_orientation": header_str(ds, "ImageOrientationPatient")
        or _fg_first(ds, "PlaneOrientationSequence", "ImageOrientationPatient"),
        "instance_number": _int_or_none(ds, "InstanceNumber"),
        "rows": _int_or_none(ds, "Rows"),
        "columns": _int_or_none(ds, "Columns"),
        "number_of_frames": _int_or_none(ds, "NumberOfFrames"),
        "image_type": header_str(ds, "ImageType"),
        "transfer_syntax_uid": header_str(getattr(ds, "file_meta", {}), "TransferSyntaxUID")
        if hasattr(ds, "file_meta") else "",
        "file_size": int(size),
        "study_date": header_str(ds, "StudyDate"),
    }


def _labelmap_record(path: Path, root: Path, lesion_patterns, organ_patterns
                     ) -> tuple[dict, SeriesExtra]:
    sc = read_sidecar(path)
    grid = labelmap_grid(path)  # header only: validates the NIfTI / NRRD header
    rel = path.relative_to(root).as_posix()
    rec = {k: "" for k, t in FILE_COLUMNS.items() if t == "str"}
    rec.update({
        "path": rel, "patient_id": sc["patient_id"], "study_uid": sc["study_uid"],
        "series_uid": f"labelmap:{rel}", "modality": Modality.LABELMAP.value,
        "dicom_modality": "", "series_description": sidecar_path(path).name,
        "instance_number": None, "rows": grid.shape_zyx[1], "columns": grid.shape_zyx[2],
        "number_of_frames": grid.shape_zyx[0], "file_size": int(os.path.getsize(path)),
    })
    ex = SeriesExtra()
    kind = sc["kind"].value
    names = dict(sc["names"])
    if not names and is_nrrd(path):  # 3D Slicer .seg.nrrd: names in the header
        import SimpleITK as sitk

        r = sitk.ImageFileReader()
        r.SetFileName(str(path))
        r.ReadImageInformation()
        names = {v: n for _, v, n in nrrd_segments({k: r.GetMetaData(k)
                                                     for k in r.GetMetaDataKeys()})}
    for value, name in sorted(names.items()):
        if value == 0:
            continue
        k = kind
        if k == "unknown":
            k = classify_segment(name=name, lesion_name_patterns=lesion_patterns,
                                 organ_name_patterns=organ_patterns).value
        ex.segments.append((name, k))
    if sc["referenced_series_uid"]:
        ex.ref_series = [sc["referenced_series_uid"]]
    return rec, ex


def _typed(df: pd.DataFrame, spec: dict[str, str]) -> pd.DataFrame:
    """Cast columns to their declared kinds (also used after reading CSV)."""
    df = df.copy()
    for col, kind in spec.items():
        if col not in df.columns:
            df[col] = pd.Series([None] * len(df), dtype=object)
        s = df[col]
        if kind == "str":
            df[col] = s.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v))
                            or v is pd.NA else str(v)).astype(str)
        elif kind == "int":
            df[col] = pd.to_numeric(s, errors="raise").astype("int64")
        elif kind == "Int64":
            df[col] = pd.to_numeric(s.replace("", None), errors="coerce").astype("Int64")
        elif kind == "bool":
            df[col] = s.map(lambda v: v if isinstance(v, (bool, np.bool_))
                            else str(v).strip().lower() == "true").astype(bool)
        elif kind == "boolean":
            df[col] = s.map(
                lambda v: pd.NA if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))
                or (isinstance(v, str) and v.strip() in ("", "<NA>", "nan"))
                else (bool(v) if isinstance(v, (bool, np.bool_))
                      else str(v).strip().lower() == "true")
            ).astype("boolean")
    return df[list(spec)]


# =========================================================================== public: scan
def scan_archive(
    root: Path,
    progress: Callable[[int, int], None] | None = None,
    *,
    lesion_name_patterns: Iterable[str] = DEFAULT_LESION_NAME_PATTERNS,
    organ_name_patterns: Iterable[str] = DEFAULT_ORGAN_NAME_PATTERNS,
) -> ArchiveIndex:
    """Index every file under ``root`` from headers only.

    Parameters
    ----------
    root : Path
        Archive folder (any layout, any file names).
    progress : callable (done, total), optional
        Called after each file.
    lesion_name_patterns, organ_name_patterns : iterable of str
        fnmatch patterns (case-insensitive) for segments / ROIs whose coded category does not
        tell lesion from organ (see :func:`pipeline.io.seg.classify_segment`).

    Returns
    -------
    ArchiveIndex
        ``series`` classification (:mod:`pipeline.io.classify`):

        * ``ct_phase``: ``contrast`` if any file has a ContrastBolusAgent (not "none"/"no"),
          else by description keywords, else ``unknown``; ``phase_reason`` says which.
        * ``excluded_reason``: localizer/scout (ImageType), secondary capture, structured
          reports and dose reports/summaries, screen saves, unused modalities ("" = usable).
        * ``pet_corrected``: CorrectedImage contains ATTN (NA when unknown, non-PET).
        * ``referenced_series_uids``: SEG ReferencedSeriesSequence, RTSTRUCT
          RTReferencedSeriesSequence, label-map sidecar (";"-joined).
        * ``segment_kind``: lesion / organ / mixed / unknown from the segments' coded categories
          (49755003 -> lesion, 91723000 -> organ), then name patterns; sidecar ``kind`` for label
          maps.
        * ``reference_problem``: referenced series or instances missing from the archive.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"archive folder does not exist: {root}", file=root,
                          hint="pass the folder that holds the DICOM files")
    all_paths: list[Path] = []
    seen_dirs: set[str] = set()
    # symbolic links to folders are followed (archives are often assembled from links); a
    # folder reached twice (link loops, duplicate links) is scanned once
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            all_paths.append(Path(dirpath) / name)
    nifti_stems = {sidecar_path(p) for p in all_paths if is_labelmap(p)}
    totalseg_dirs: dict[Path, bool] = {}
    records: list[dict] = []
    extras: dict[str, SeriesExtra] = {}
    problems: list[dict] = []
    total = len(all_paths)

    def problem(p: Path, reason: str, cls: str, ds=None) -> None:
        rec = {"path": p.relative_to(root).as_posix(), "reason": reason, "error_class": cls}
        if ds is not None:
            rec.update(patient_id=header_str(ds, "PatientID"),
                       study_uid=header_str(ds, "StudyInstanceUID"),
                       series_uid=header_str(ds, "SeriesInstanceUID"))
        problems.append(rec)

    for i, p in enumerate(all_paths):
        try:
            if p.is_symlink() and not p.exists():
                problem(p, "broken symbolic link", "DicomReadError")
            elif is_labelmap(p):
                if not sidecar_path(p).exists() and _in_totalseg_folder(p, totalseg_dirs):
                    pass  # part of a TotalSegmentator output folder (organ masks)
                elif not sidecar_path(p).exists():
                    problem(p, f"label map without sidecar {sidecar_path(p).name} (needs "
                            "patient_id, study_uid, referenced_series_uid, kind, names)",
                            "SegmentationError")
                else:
                    rec, ex = _labelmap_record(p, root, lesion_name_patterns,
                                               organ_name_patterns)
                    records.append(rec)
                    extras[rec["path"]] = ex
            elif p in nifti_stems:
                pass  # sidecar of a label map
            else:
                _index_dicom(p, root, records, extras, problem, lesion_name_patterns,
                             organ_name_patterns)
        except PipelineError as exc:
            problem(p, exc.message, type(exc).__name__)
        except Exception as exc:  # one bad file never stops the scan
            problem(p, f"unreadable: {type(exc).__name__}: {exc}", "DicomReadError")
        if progress is not None:
            progress(i + 1, total)

    files = _inherit_labelmap_ids(
        _typed(pd.DataFrame(records, columns=list(FILE_COLUMNS)), FILE_COLUMNS), extras)
    series = _typed(pd.DataFrame(classify_series(files, extras) if len(files) else [],
                                 columns=list(SERIES_COLUMNS)), SERIES_COLUMNS)
    probs = _typed(pd.DataFrame(problems, columns=list(PROBLEM_COLUMNS)), PROBLEM_COLUMNS)
    log.info("indexed %d files in %d series under %s; %d problem file(s)",
             len(files), len(series), root, len(probs))
    return ArchiveIndex(files=files, series=series, problems=probs, root=root,
                        meta={"n_scanned": total,
                              "totalseg_folders": _totalseg_records(totalseg_dirs, root, files)})


def _in_totalseg_folder(p: Path, cache: dict[Path, bool]) -> bool:
    """True when ``p`` lies in a TotalSegmentator output folder (cached per folder)."""
    from pipeline.io.totalseg import is_totalseg_folder

    d = p.parent
    if d not in cache:
        cache[d] = is_totalseg_folder(d)
    return cache[d]


def _totalseg_records(dirs: dict[Path, bool], root: Path, files: pd.DataFrame) -> list[dict]:
    """TotalSegmentator folders with the study they belong to.

    A folder belongs to a study when the DICOM files under its parent folder are of exactly one
    study; otherwise its study is left empty and the folder must be named in an edited study
    sheet (``organ_mask_source`` totalseg, ``organ_mask_ref`` the folder relative to the root).
    """
    out = []
    for d, ok in sorted(dirs.items()):
        if not ok:
            continue
        rel = d.relative_to(root).as_posix()
        parent = d.parent.relative_to(root).as_posix()
        prefix = "" if parent == "." else parent + "/"
        near = files[files["path"].str.startswith(prefix) & (files["modality"] != "LABELMAP")] \
            if len(files) else files
        studies = sorted(set(near["study_uid"])) if len(near) else []
        out.append({"path": rel, "study_uid": studies[0] if len(studies) == 1 else "",
                    "patient_id": str(near["patient_id"].iloc[0]) if len(studies) == 1 else ""})
    return out


def _inherit_labelmap_ids(files: pd.DataFrame, extras: dict[str, SeriesExtra]) -> pd.DataFrame:
    """Label maps whose sidecar lacks patient_id / study_uid take them from their series."""
    if files.empty:
        return files
    lm = files["modality"] == Modality.LABELMAP.value
    need = lm & ((files["patient_id"] == "") | (files["study_uid"] == ""))
    if not need.any():
        return files
    dicom = files[~lm].drop_duplicates("series_uid").set_index("series_uid")
    files = files.copy()
    for i in files.index[need]:
        refs = extras[files.at[i, "path"]].ref_series
        ref = next((r for r in refs if r in dicom.index), None)
        if ref is None:
            continue
        for col in ("patient_id", "study_uid"):
            if not files.at[i, col]:
                files.at[i, col] = dicom.at[ref, col]
    return files


def _index_dicom(p: Path, root: Path, records: list, extras: dict, problem,
                 lesion_patterns, organ_patterns) -> None:
    check = read_checked_header(p)
    if check.dataset is None:
        if check.reason:
            problem(p, check.reason, check.error_class, check.partial)
        return
    ds = check.dataset
    rec = _file_record(p, root, ds, p.stat().st_size)
    records.append(rec)
    extras[rec["path"]] = file_extra(ds, rec["dicom_modality"], lesion_patterns, organ_patterns)


# =========================================================================== persistence
def write_index(index: ArchiveIndex, out_dir: Path) -> None:
    """Write ``files.csv``, ``series.csv``, ``problems.csv`` and ``index.json`` to ``out_dir``.

    Paths stay relative to the archive root; the root is stored in ``index.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index.files.to_csv(out / "files.csv", index=False)
    index.series.to_csv(out / "series.csv", index=False)
    index.problems.to_csv(out / "problems.csv", index=False)
    meta = dict(index.meta)
    meta.update({"root": str(Path(index.root).resolve()), "n_files": int(len(index.files)),
                 "n_series": int(len(index.series)), "n_problems": int(len(index.problems))})
    (out / "index.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def _read_csv(path: Path, spec: dict[str, str]) -> pd.DataFrame:
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    missing = [c for c in spec if c not in df.columns]
    if missing:
        raise ConfigError(f"index table lacks column(s) {missing}", file=path, tag=missing[0],
                          hint="re-create the index with scan_archive/write_index")
    return _typed(df, spec)


def read_index(out_dir: Path) -> ArchiveIndex:
    """Read an index written by :func:`write_index` (round-trip safe)."""
    out = Path(out_dir)
    meta = json.loads((out / "index.json").read_text(encoding="utf-8"))
    return ArchiveIndex(
        files=_read_csv(out / "files.csv", FILE_COLUMNS),
        series=_read_csv(out / "series.csv", SERIES_COLUMNS),
        problems=_read_csv(out / "problems.csv", PROBLEM_COLUMNS),
        root=Path(meta["root"]),
        meta=meta,
    )
