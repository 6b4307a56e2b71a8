"""Header-only index of an arbitrary archive tree: scan, tables, persistence.

Scanning
--------
Every regular file under the root is looked at once (:func:`scan_archive`):

* The tree is walked with :func:`os.scandir`. Only regular files are opened: FIFOs, sockets and
  devices, broken symbolic links and links pointing out of the archive root each get a
  ``problems`` row and are never opened (links inside the root are followed, a folder reached
  twice is scanned once).
* **DICOM is recognised by content**, not by name, and checked for truncation without reading
  pixel values (:mod:`pipeline.io.integrity`). Classic single-frame CT / MR / PET files, the
  bulk of an archive, go through :func:`pipeline.io.integrity.read_fast_header` (only the
  index tags, truncation checked from the PixelData length and the file size); every other
  object and every file the fast path does not accept is read by pydicom and walked element
  by element. DICOMDIR files are skipped.
* **NIfTI / NRRD label maps** (``*.nii``, ``*.nii.gz``, ``*.seg.nrrd``) with a ``<stem>.json``
  sidecar are indexed as :attr:`Modality.LABELMAP` with the sidecar's patient_id / study_uid /
  referenced_series_uid / kind. Sidecars themselves are not records. Label maps in a
  TotalSegmentator output folder are organ masks, listed in ``meta["totalseg_folders"]``.
* Everything else, and every file that fails a check, goes to ``problems`` with the reason.
* Series are classified (CT phase, exclusions, PET correction, segment kinds, broken
  references) by :mod:`pipeline.io.classify`.

The study sheet built from the index lives in :mod:`pipeline.sheet`.

Incremental index
-----------------
``scan_archive(root, cache=PATH)`` (``hitit index`` uses ``RESULTS/index/file_cache.parquet``)
keeps each file's outcome (its ``files`` row and classification inputs, or its problem row)
keyed on (relative path, size, mtime_ns), plus, for label maps, their sidecar's size and mtime.
New or changed files are read, removed files drop out, the rest comes from the cache. Next to
it, ``file_cache.{files,series,problems}.parquet`` hold the last scan's tables under a digest
of every walked file: an unchanged archive is re-indexed from them without opening a file.
All cache files are written atomically (temporary file, then rename) and carry
:func:`cache_key` (cache schema, table columns, fast-reader tag list and version, pydicom
version, segment name patterns): a cache written under another key is ignored, not trusted.

Tables
------
``files`` (one row per DICOM object or label map), ``series`` (one row per series with its
classification) and ``problems`` (path, reason, error_class) are pandas DataFrames; paths are
relative to ``root`` (POSIX separators). :func:`write_index` / :func:`read_index` store them as
``files.csv``, ``series.csv``, ``problems.csv`` plus ``index.json`` (root, counts).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from pipeline.errors import ConfigError, PipelineError
from pipeline.io.classify import SeriesExtra, classify_series, file_extra
from pipeline.io.integrity import header_str, read_checked_header, read_fast_header
from pipeline.io.labelmap import (
    NIFTI_SUFFIXES,
    NRRD_SUFFIXES,
    is_nrrd,
    labelmap_grid,
    nrrd_segments,
    read_sidecar,
    sidecar_path,
)
from pipeline.io.sanitize import checked_uid
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


def _file_record(rel: str, ds, size: int) -> dict:
    """The ``files`` row of one DICOM header (a pydicom Dataset or a
    :class:`pipeline.io.integrity.FastHeader`); ``rel`` is its path relative to the root."""
    dm = header_str(ds, "Modality").upper()
    return {
        "path": rel,
        "patient_id": header_str(ds, "PatientID"),
        "study_uid": checked_uid(header_str(ds, "StudyInstanceUID"),
                                 tag="StudyInstanceUID (0020,000D)", where=rel),
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


# =========================================================================== walking
@dataclass(frozen=True)
class _Entry:
    """One regular file found by :func:`_walk`: absolute path, path relative to the root
    (POSIX), size in bytes and modification time in ns (of the link target for links)."""

    path: str
    rel: str
    size: int
    mtime_ns: int


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _walk(root: Path) -> tuple[list[_Entry], list[dict]]:
    """Regular files under ``root`` in a stable order, and a problem row per skipped entry.

    Uses :func:`os.scandir` (the stat information comes with the listing). Within a folder its
    files come first (sorted by name), then its sub-folders (sorted, depth first). Symbolic
    links are followed only when their target lies inside ``root`` (a folder reached twice,
    through loops or duplicate links, is scanned once); links pointing out of the archive,
    broken links and entries that are not regular files (FIFOs, sockets, devices) are never
    opened: each gets a problem row.
    """
    root_real = os.path.realpath(root)
    files: list[_Entry] = []
    problems: list[dict] = []
    seen: set[str] = set()

    def skip(path: str, reason: str) -> None:
        problems.append({"path": Path(path).relative_to(root).as_posix(), "reason": reason,
                         "error_class": "DicomReadError"})

    def visit(folder: str, prefix: str) -> None:
        real = os.path.realpath(folder)
        if real in seen:
            return
        seen.add(real)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            skip(folder, f"folder cannot be listed: {exc.strerror or exc}")
            return
        subdirs: list[tuple[str, str]] = []
        for e in entries:
            try:
                if e.is_symlink():
                    target = os.path.realpath(e.path)
                    if not os.path.exists(target):
                        skip(e.path, "broken symbolic link")
                        continue
                    if not _inside(target, root_real):
                        skip(e.path, f"symbolic link to {target}, outside the archive root: "
                                     "not followed (copy the files into the archive, or link "
                                     "to a folder inside it)")
                        continue
                    st = os.stat(e.path)
                else:
                    st = e.stat(follow_symlinks=False)
            except OSError as exc:
                skip(e.path, f"cannot stat: {exc.strerror or exc}")
                continue
            if stat.S_ISDIR(st.st_mode):
                subdirs.append((e.path, prefix + e.name + "/"))
            elif stat.S_ISREG(st.st_mode):
                files.append(_Entry(e.path, prefix + e.name, int(st.st_size),
                                    int(st.st_mtime_ns)))
            else:
                kind = ("FIFO" if stat.S_ISFIFO(st.st_mode) else "socket"
                        if stat.S_ISSOCK(st.st_mode) else "device"
                        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "special file")
                skip(e.path, f"not a regular file ({kind}): skipped without opening it")
        for d, sub_prefix in subdirs:
            visit(d, sub_prefix)

    visit(str(root), "")
    return files, problems


# =========================================================================== file cache
#: Layout version of the file cache; a cache of another version is ignored.
#: Default of ``index.max_file_mb``: larger files are refused unread.
DEFAULT_MAX_FILE_MB = 4096.0
CACHE_SCHEMA = 2  # 2: invalid StudyInstanceUIDs replaced at ingestion
_EXTRA_FIELDS = ("contrast_agent", "corrected_image", "study_date", "segments", "ref_series",
                 "ref_sops")
_OUTCOME_FILE, _OUTCOME_PROBLEM, _OUTCOME_SKIP = "file", "problem", "skip"
_CACHE_COLUMNS = (["c_path", "c_size", "c_mtime_ns", "c_outcome", "c_extra", "c_dep"]
                  + [f"f_{k}" for k in FILE_COLUMNS] + [f"p_{k}" for k in PROBLEM_COLUMNS])


#: Modules whose code decides a file's record, problem or classification: their source is
#: part of :func:`cache_key`, so that a cache written by other code is never trusted.
_CACHE_CODE_MODULES = ("pipeline.io.index", "pipeline.io.integrity", "pipeline.io.classify",
                       "pipeline.io.seg", "pipeline.io.rtstruct", "pipeline.io.labelmap",
                       "pipeline.io.totalseg", "pipeline.io.dicom", "pipeline.records")


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """Hash of the source files of :data:`_CACHE_CODE_MODULES`."""
    import importlib

    h = hashlib.sha256()
    for name in _CACHE_CODE_MODULES:
        h.update(name.encode())
        h.update(Path(importlib.import_module(name).__file__).read_bytes())
    return h.hexdigest()


def cache_key(lesion_name_patterns: Iterable[str], organ_name_patterns: Iterable[str],
              max_file_mb: float | None = None) -> str:
    """Hash of everything a cached per-file outcome depends on besides the file itself.

    The cache schema, the table columns, the fast reader's tag list and decoding version, its
    SOP classes, the source code of the modules that read and classify files
    (:data:`_CACHE_CODE_MODULES`), the pydicom version, the segment name patterns (they
    decide segment kinds) and the file size limit (``max_file_mb``). A cache written under another key is ignored, not trusted.
    """
    from pipeline.io import integrity

    blob = json.dumps({
        "code": _code_digest(),
        "schema": CACHE_SCHEMA, "files": FILE_COLUMNS, "problems": PROBLEM_COLUMNS,
        "fast_tags": {f"{t:08X}": v for t, v in sorted(integrity.FAST_TAGS.items())},
        "fast_version": integrity.FAST_READER_VERSION,
        "fast_sop": sorted(integrity.FAST_SOP_CLASSES), "pydicom": pydicom.__version__,
        "lesion": list(lesion_name_patterns), "organ": list(organ_name_patterns),
        "extra": _EXTRA_FIELDS, "layout": _CACHE_COLUMNS, "series": SERIES_COLUMNS,
        "max_file_mb": max_file_mb,
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _extra_to_json(ex: SeriesExtra) -> str:
    return json.dumps([ex.contrast_agent, ex.corrected_image, ex.study_date,
                       [list(s) for s in ex.segments], list(ex.ref_series), list(ex.ref_sops)],
                      ensure_ascii=False)


def _extra_from_json(s: str) -> SeriesExtra:
    a, c, d, segs, refs, sops = json.loads(s)
    return SeriesExtra(contrast_agent=a, corrected_image=c, study_date=d,
                       segments=[tuple(x) for x in segs], ref_series=refs, ref_sops=sops)


def _snapshot_path(path: Path, table: str) -> Path:
    return path.with_name(path.name.removesuffix(".parquet") + f".{table}.parquet")


def _entries_digest(entries: list[_Entry]) -> str:
    """Hash of every walked file's (relative path, size, mtime_ns): equal digests mean an
    unchanged archive (label maps, sidecars and TotalSegmentator folders included)."""
    h = hashlib.sha256()
    for e in entries:
        h.update(f"{e.rel}\0{e.size}\0{e.mtime_ns}\n".encode())
    return h.hexdigest()


def _read_snapshot(path: Path, key: str, digest: str) -> tuple[dict, dict] | None:
    """The tables of the last scan if it saw the very same files ({name: DataFrame}, meta)."""
    import pyarrow.parquet as pq

    out, tokens, meta = {}, set(), {}
    for name in ("files", "series", "problems"):
        sp = _snapshot_path(path, name)
        if not sp.is_file():
            return None
        try:
            table = pq.read_table(sp)
            meta = json.loads((table.schema.metadata or {}).get(b"hitit_file_cache", b"{}"))
            if (meta.get("key"), meta.get("schema"), meta.get("digest")) != (
                    key, CACHE_SCHEMA, digest):
                return None
            out[name] = table.to_pandas()
        except Exception as exc:
            log.warning("index snapshot %s unreadable (%s): ignored", sp, exc)
            return None
        tokens.add(meta.get("token"))
    if len(tokens) != 1:  # written by two different scans (one interrupted): not trusted
        return None
    return out, meta


def _read_cache(path: Path, key: str) -> pd.DataFrame | None:
    """The cached rows (indexed by relative path), or None if absent, unreadable or stale."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(b"hitit_file_cache", b"{}"))
        if meta.get("key") != key or meta.get("schema") != CACHE_SCHEMA:
            log.info("file cache %s was written by another version of the index: ignored", path)
            return None
        missing = set(_CACHE_COLUMNS) - set(table.column_names)
        if missing:
            raise ValueError(f"columns {sorted(missing)} missing")
        df = table.to_pandas()
    except Exception as exc:  # a damaged cache is rebuilt, never trusted
        log.warning("file cache %s unreadable (%s: %s): ignored", path, type(exc).__name__, exc)
        return None
    return df.set_index("c_path", drop=False)


def _write_cache(path: Path, key: str, df: pd.DataFrame, **meta) -> None:
    """Write a cache table atomically (a temporary file in the same folder, then a rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    table = table.replace_schema_metadata({
        **(table.schema.metadata or {}),
        b"hitit_file_cache": json.dumps({"schema": CACHE_SCHEMA, "key": key,
                                         **meta}).encode()})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _cache_frame(entries: list[_Entry], outcomes: dict[str, tuple], order: list[str],
                 deps: dict[str, str]) -> pd.DataFrame:
    """The cache table of the read outcomes: key columns (``c_dep``: the sidecar's
    "size:mtime_ns" of a label map), outcome, file / problem columns."""
    rows = []
    by_rel = {e.rel: e for e in entries}
    for rel in order:
        out = outcomes[rel]
        e = by_rel[rel]
        row = {"c_path": rel, "c_size": e.size, "c_mtime_ns": e.mtime_ns, "c_outcome": out[0],
               "c_extra": "", "c_dep": deps.get(rel, "")}
        if out[0] == _OUTCOME_FILE:
            row.update({f"f_{k}": v for k, v in out[1].items()})
            row["c_extra"] = _extra_to_json(out[2])
        elif out[0] == _OUTCOME_PROBLEM:
            row.update({f"p_{k}": v for k, v in out[1].items()})
        rows.append(row)
    df = pd.DataFrame(rows, columns=_CACHE_COLUMNS)
    for k, kind in FILE_COLUMNS.items():
        col = f"f_{k}"
        if kind in ("int", "Int64"):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
        else:
            df[col] = df[col].where(df[col].notna(), "").astype(str)
    for k in PROBLEM_COLUMNS:
        df[f"p_{k}"] = df[f"p_{k}"].where(df[f"p_{k}"].notna(), "").astype(str)
    for k in ("c_path", "c_outcome", "c_extra", "c_dep"):
        df[k] = df[k].astype(str)
    df["c_size"] = df["c_size"].astype("int64")
    df["c_mtime_ns"] = df["c_mtime_ns"].astype("int64")
    return df


# =========================================================================== public: scan
def scan_archive(
    root: Path,
    progress: Callable[[int, int], None] | None = None,
    *,
    lesion_name_patterns: Iterable[str] = DEFAULT_LESION_NAME_PATTERNS,
    organ_name_patterns: Iterable[str] = DEFAULT_ORGAN_NAME_PATTERNS,
    cache: Path | None = None,
    max_file_mb: float | None = DEFAULT_MAX_FILE_MB,
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
    cache : Path, optional
        Per-file cache (parquet, e.g. ``RESULTS/index/file_cache.parquet``) keyed on (relative
        path, size, mtime_ns): files whose key is unchanged take their record (or problem) from
        it, new or changed files are read, removed files drop out, and the cache is rewritten
        atomically. A cache written under another :func:`cache_key` (schema, tag list, reader
        version, pydicom version, name patterns) is ignored. Label maps and their sidecars are
        always read (they are few and depend on their sidecar). ``meta`` reports ``n_read``
        and ``n_cached``.
    max_file_mb : float or None
        A file larger than this (MB = 2**20 bytes; ``index.max_file_mb``) gets a problem row
        naming its size and the limit and is never opened (None: no limit). Within the limit
        the integrity check's cost is bounded by the number of elements, not the file size
        (:func:`pipeline.io.integrity.check_complete`).

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

    Notes
    -----
    Classic single-frame CT / MR / PET files are read by
    :func:`pipeline.io.integrity.read_fast_header` (index tags only, truncation checked from
    the PixelData length and the file size); everything else, and every file the fast path
    does not accept, by :func:`pipeline.io.integrity.read_checked_header`.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"archive folder does not exist: {root}", file=root,
                          hint="pass the folder that holds the DICOM files")
    lesion_name_patterns = tuple(lesion_name_patterns)
    organ_name_patterns = tuple(organ_name_patterns)
    entries, walk_problems = _walk(root)
    key = (cache_key(lesion_name_patterns, organ_name_patterns, max_file_mb)
           if cache is not None else "")
    max_bytes = None if max_file_mb is None else float(max_file_mb) * 2**20
    if cache is not None:
        # an unchanged archive: the tables of the last scan, without looking at any file
        digest = _entries_digest(entries)
        snap = _read_snapshot(Path(cache), key, digest)
        if snap is not None:
            return _from_snapshot(root, snap, walk_problems, progress, len(entries))
    cached = _read_cache(Path(cache), key) if cache is not None else None
    labelmaps = {e.rel for e in entries if e.rel.rsplit("/", 1)[-1].lower().endswith(
        NIFTI_SUFFIXES + NRRD_SUFFIXES)}
    sidecars = {str(sidecar_path(root / rel)) for rel in labelmaps}
    totalseg_dirs: dict[Path, bool] = {}
    # per entry, in walk order: ("file", record, extra) | ("problem", row) | ("skip",) or,
    # for cache hits, ("cached",)
    outcomes: dict[str, tuple] = {}
    dicom_order: list[str] = []
    hits: list[str] = []
    total = len(entries)
    n_read = 0

    def problem_row(rel: str, reason: str, cls: str, ds=None) -> dict:
        rec = {"path": rel, "reason": reason, "error_class": cls}
        if ds is not None:
            rec.update(patient_id=header_str(ds, "PatientID"),
                       study_uid=header_str(ds, "StudyInstanceUID"),
                       series_uid=header_str(ds, "SeriesInstanceUID"))
        return rec

    if cached is not None and len(cached):
        c_key = dict(zip(cached["c_path"], zip(cached["c_size"], cached["c_mtime_ns"],
                                               cached["c_dep"])))
    else:
        c_key = {}
    by_path = {e.path: e for e in entries}
    deps: dict[str, str] = {}  # label map -> its sidecar's "size:mtime_ns"

    def sidecar_key(p: Path) -> str:
        sc = by_path.get(str(sidecar_path(p)))
        return f"{sc.size}:{sc.mtime_ns}" if sc is not None else ""

    for i, e in enumerate(entries):
        rel = e.rel
        try:
            if max_bytes is not None and e.size > max_bytes:
                outcomes[rel] = (_OUTCOME_PROBLEM, problem_row(
                    rel, f"file of {e.size / 2**20:.0f} MB ({e.size} bytes) is larger than "
                    f"index.max_file_mb ({float(max_file_mb):g} MB): not read (a DICOM image "
                    "padded or damaged, or not an image); raise index.max_file_mb if it is "
                    "a real object", "DicomReadError"))
                dicom_order.append(rel)
            elif rel in labelmaps:
                p = Path(e.path)
                if not sidecar_path(p).exists() and _in_totalseg_folder(p, totalseg_dirs):
                    outcomes[rel] = (_OUTCOME_SKIP,)  # a TotalSegmentator output folder
                elif not sidecar_path(p).exists():
                    outcomes[rel] = (_OUTCOME_PROBLEM, problem_row(
                        rel, f"label map without sidecar {sidecar_path(p).name} (needs "
                        "patient_id, study_uid, referenced_series_uid, kind, names)",
                        "SegmentationError"))
                else:
                    deps[rel] = sidecar_key(p)
                    dicom_order.append(rel)
                    if deps[rel] and c_key.get(rel) == (e.size, e.mtime_ns, deps[rel]):
                        outcomes[rel] = ("cached",)
                        hits.append(rel)
                    else:
                        rec, ex = _labelmap_record(p, root, lesion_name_patterns,
                                                   organ_name_patterns)
                        outcomes[rel] = (_OUTCOME_FILE, rec, ex)
                        n_read += 1
            elif e.path in sidecars:
                outcomes[rel] = (_OUTCOME_SKIP,)  # sidecar of a label map
            elif c_key.get(rel) == (e.size, e.mtime_ns, ""):
                outcomes[rel] = ("cached",)
                hits.append(rel)
                dicom_order.append(rel)
            else:
                outcomes[rel] = _dicom_outcome(e, lesion_name_patterns, organ_name_patterns,
                                               problem_row)
                dicom_order.append(rel)
                n_read += 1
        except Exception as exc:  # one bad file never stops the scan
            if isinstance(exc, PipelineError):
                row = problem_row(rel, exc.message, type(exc).__name__)
            else:
                row = problem_row(rel, f"unreadable: {type(exc).__name__}: {exc}",
                                  "DicomReadError")
            outcomes[rel] = (_OUTCOME_PROBLEM, row)  # cached like any other outcome
            n_read += 1
            if not dicom_order or dicom_order[-1] != rel:
                dicom_order.append(rel)
        if progress is not None:
            progress(i + 1, total)

    # assemble in walk order: fresh rows from dicts, cached rows straight from the cache table
    order = {e.rel: i for i, e in enumerate(entries)}
    fresh_files = [o[1] for o in outcomes.values() if o[0] == _OUTCOME_FILE]
    extras: dict[str, SeriesExtra] = {o[1]["path"]: o[2] for o in outcomes.values()
                                      if o[0] == _OUTCOME_FILE}
    problems = list(walk_problems)
    problems += [o[1] for o in outcomes.values() if o[0] == _OUTCOME_PROBLEM]
    files = _typed(pd.DataFrame(fresh_files, columns=list(FILE_COLUMNS)), FILE_COLUMNS)
    probs = _typed(pd.DataFrame(problems, columns=list(PROBLEM_COLUMNS)), PROBLEM_COLUMNS)
    if hits:
        hit = cached.loc[hits]
        hf = hit[hit["c_outcome"] == _OUTCOME_FILE]
        cf = hf[[f"f_{k}" for k in FILE_COLUMNS]].rename(columns=lambda c: c[2:])
        cf = cf.astype({k: ("int64" if t == "int" else "Int64" if t == "Int64" else object)
                        for k, t in FILE_COLUMNS.items()})
        for k, t in FILE_COLUMNS.items():
            if t == "str":
                cf[k] = cf[k].astype(str)
        cached_extra = dict(zip(hf["c_path"], hf["c_extra"]))
        hp = hit[hit["c_outcome"] == _OUTCOME_PROBLEM]
        cp = hp[[f"p_{k}" for k in PROBLEM_COLUMNS]].rename(columns=lambda c: c[2:])
        files = pd.concat([files, cf.reset_index(drop=True)], ignore_index=True) \
            if len(files) else cf.reset_index(drop=True)
        probs = pd.concat([probs, cp.reset_index(drop=True).astype(str)], ignore_index=True) \
            if len(probs) else cp.reset_index(drop=True).astype(str)
    else:
        cached_extra = {}
    files = _in_walk_order(files, order)
    probs = _in_walk_order(probs, order)
    extras.update({p: _extra_from_json(x) for p, x in cached_extra.items()})
    files = _inherit_labelmap_ids(files, extras)
    series = _typed(pd.DataFrame(classify_series(files, extras) if len(files) else [],
                                 columns=list(SERIES_COLUMNS)), SERIES_COLUMNS)
    totalseg = _totalseg_records(totalseg_dirs, root, files)
    if cache is not None:
        try:
            _store(Path(cache), key, entries, outcomes, dicom_order, hits, cached, deps,
                   digest, walk_problems, files, series, probs, totalseg)
        except OSError as exc:  # a read-only results folder costs speed, not the index
            log.warning("index cache %s not written (%s); the next scan reads every file",
                        cache, exc)
    log.info("indexed %d files in %d series under %s; %d problem file(s); %d read, %d from "
             "the cache", len(files), len(series), root, len(probs), n_read, len(hits))
    return ArchiveIndex(files=files, series=series, problems=probs, root=root,
                        meta={"n_scanned": total, "n_read": n_read, "n_cached": len(hits),
                              "totalseg_folders": totalseg})


def _store(cache: Path, key: str, entries, outcomes, dicom_order, hits, cached, deps, digest,
           walk_problems, files, series, probs, totalseg) -> None:
    """Write the per-file cache and the last-scan tables (see the module docstring)."""
    import uuid

    fresh = {rel: outcomes[rel] for rel in dicom_order if outcomes[rel][0] != "cached"}
    frame = _cache_frame(entries, fresh, [r for r in dicom_order if r in fresh], deps)
    if hits:
        keep = cached.loc[hits].reset_index(drop=True)
        frame = pd.concat([frame, keep[frame.columns].astype(frame.dtypes.to_dict())],
                          ignore_index=True) if len(frame) else keep[frame.columns]
    _write_cache(cache, key, frame)
    walk_paths = {w["path"] for w in walk_problems}
    meta = {"digest": digest, "token": uuid.uuid4().hex, "n_cached": len(dicom_order),
            "totalseg_folders": totalseg}
    for name, df in (("files", files), ("series", series),
                     ("problems", probs[~probs["path"].isin(walk_paths)])):
        _write_cache(_snapshot_path(cache, name), key, df, **meta)


def _from_snapshot(root: Path, snap: tuple[dict, dict], walk_problems: list[dict], progress,
                   total: int) -> ArchiveIndex:
    """The index of an unchanged archive from the last scan's tables; the problems of the walk
    itself (FIFOs, links out of the root: never cached) are taken from this walk."""
    tables, meta = snap
    probs = tables["problems"]
    if walk_problems:
        probs = pd.concat([_typed(pd.DataFrame(walk_problems, columns=list(PROBLEM_COLUMNS)),
                                  PROBLEM_COLUMNS), probs], ignore_index=True)
    if progress is not None:
        progress(total, total)
    n_cached = int(meta.get("n_cached", 0))
    log.info("archive %s unchanged since the last scan: %d files in %d series, %d problem "
             "file(s), all from the cache", root, len(tables["files"]), len(tables["series"]),
             len(probs))
    return ArchiveIndex(files=tables["files"], series=tables["series"], problems=probs,
                        root=root, meta={"n_scanned": total, "n_read": 0, "n_cached": n_cached,
                                         "totalseg_folders": meta.get("totalseg_folders", [])})


def _in_walk_order(df: pd.DataFrame, order: dict[str, int]) -> pd.DataFrame:
    """Rows sorted by the walk position of their path (skipped entries, not in the walk, keep
    their place at the front); a clean 0..n-1 index."""
    if df.empty:
        return df.reset_index(drop=True)
    pos = df["path"].map(order).fillna(-1)
    return df.iloc[np.argsort(pos.to_numpy(), kind="stable")].reset_index(drop=True)


def _dicom_outcome(e: _Entry, lesion_patterns, organ_patterns, problem_row) -> tuple:
    """("file", record, extra), ("problem", row) or ("skip",) of one non-label-map file."""
    fast = read_fast_header(e.path, e.size)
    if fast is not None:
        rec = _file_record(e.rel, fast, e.size)
        return _OUTCOME_FILE, rec, file_extra(fast, rec["dicom_modality"], lesion_patterns,
                                              organ_patterns)
    check = read_checked_header(Path(e.path))
    if check.dataset is None:
        if check.reason:
            return _OUTCOME_PROBLEM, problem_row(e.rel, check.reason, check.error_class,
                                                 check.partial)
        return (_OUTCOME_SKIP,)
    ds = check.dataset
    rec = _file_record(e.rel, ds, e.size)
    return _OUTCOME_FILE, rec, file_extra(ds, rec["dicom_modality"], lesion_patterns,
                                          organ_patterns)


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
