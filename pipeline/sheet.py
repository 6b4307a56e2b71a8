"""The study sheet ``RESULTS/cohort/studies.csv``: its one owner.

One row per study with the series and masks chosen for it. Everything that builds, checks,
reads, writes or queries the sheet goes through this module, so that there is one empty-value
rule (every cell a string, empty = ``""``) and one notion of "the patient's earlier studies".

* :func:`build_study_sheet` chooses the series from the header-only archive index
  (:mod:`pipeline.io.index`); :func:`sheet_for_index` is the index step (automatic choice, or a
  user's edited sheet validated against the index) and adds ``study_date``, ``patient_dir`` and
  ``study_dir``.
* :func:`validate_study_sheet` checks a sheet against ``configs/studies.schema.yaml`` and the
  index; errors name the row and the column.
* :func:`read_study_sheet` / :func:`write_study_sheet` read and atomically write it.
* :func:`study_row` is one study's row, :func:`earlier_studies` the same patient's studies
  strictly before it (used by the Snakefile's ``rank`` rule inputs and by
  :func:`pipeline.study.run_ranking`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import CONFIG_DIR
from pipeline.errors import ConfigError
from pipeline.io.classify import blocking_reference_problems
from pipeline.io.index import ArchiveIndex
from pipeline.records import CTPhase, Modality

log = logging.getLogger(__name__)

#: Where the sheet lives inside the results folder.
SHEET_RELPATH = Path("cohort") / "studies.csv"
#: JSON Schema of one row.
SCHEMA_PATH = CONFIG_DIR / "studies.schema.yaml"
#: The columns a user edits (the schema's ``x-columns``).
STUDY_SHEET_COLUMNS: tuple[str, ...] = (
    "patient_id", "study_uid", "ct_series_uid", "ce_ct_series_uid", "pet_series_uid",
    "lesion_mask_source", "lesion_mask_ref", "organ_mask_source", "organ_mask_ref", "notes",
)
#: Start of the ``notes`` part of a study without a usable lesion segmentation; when a SEG /
#: RTSTRUCT / label map exists but cannot be used it is followed by ": " and, per candidate,
#: "source ref (file path): why" (e.g. its referenced series is not in the archive), " | "-joined.
NO_LESION_SEGMENTATION = "no lesion segmentation"
#: Columns the workflow adds when it writes ``RESULTS/cohort/studies.csv``.
WORKFLOW_COLUMNS: tuple[str, ...] = ("study_date", "patient_dir", "study_dir")


def sheet_path(results: str | Path) -> Path:
    """``RESULTS/cohort/studies.csv``."""
    return Path(results) / SHEET_RELPATH


def _is_empty(v) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and np.isnan(v))


def _as_str(df: pd.DataFrame) -> pd.DataFrame:
    """Every cell as a string; None / NaN / NA become ""."""
    out = df.copy()
    for col in out.columns:
        out[col] = out[col].map(lambda v: "" if _is_empty(v) else str(v)).astype(object)
    return out


# =========================================================================== read / write
def read_study_sheet(path: str | Path) -> pd.DataFrame:
    """Read a study sheet CSV with every cell as a string ("" when empty).

    Parameters
    ----------
    path : str or Path
        ``RESULTS/cohort/studies.csv`` or a user's edited copy.

    Raises
    ------
    ConfigError
        When the file is missing or is not a CSV with a header row.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study sheet not found: {path}", file=path,
                          hint="run the index step (hitit run) first, or give the path of an "
                          "existing sheet")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    except Exception as exc:
        raise ConfigError(f"cannot read study sheet: {exc}", file=path,
                          hint="save the sheet as comma-separated CSV with a header row") from exc


def write_study_sheet(sheet: pd.DataFrame, path: str | Path) -> Path:
    """Write the sheet atomically: a temporary file in the same folder, fsync, ``os.replace``.

    An unchanged sheet is not rewritten, so its modification time tells the workflow whether
    the cohort's set of studies changed.

    A reader (a Snakemake job, the progress watcher) sees either the old sheet or the new one,
    never a partial file; when writing fails, the temporary file is removed and the old sheet
    (if any) is left as it was.

    Parameters
    ----------
    sheet : DataFrame
        Cells may be strings or empty (None / NaN are written as "").
    path : str or Path
        Destination, e.g. :func:`sheet_path` of the results folder.

    Returns
    -------
    Path
        ``path``.
    """
    from pipeline.io.tables import write_text_atomic

    path = Path(path)
    write_text_atomic(path, _as_str(sheet).to_csv(index=False, lineterminator="\n"))
    return path


# =========================================================================== queries
def study_row(sheet: pd.DataFrame, patient_dir: str, study_dir: str) -> dict:
    """The row of one study folder as a dict of strings.

    Raises
    ------
    ConfigError
        Unless exactly one row has this ``patient_dir`` and ``study_dir``.
    """
    sel = sheet[(sheet["patient_dir"] == patient_dir) & (sheet["study_dir"] == study_dir)]
    if len(sel) != 1:
        raise ConfigError(f"study {patient_dir}/{study_dir} found {len(sel)} times in the study "
                          "sheet, expected once", tag="patient_dir/study_dir",
                          hint="re-run the index step so that the sheet matches the results "
                          "folder")
    return {k: ("" if _is_empty(v) else str(v)) for k, v in sel.iloc[0].to_dict().items()}


#: Optional columns a user may add to an edited sheet: ``study_time`` (StudyTime (0008,0030),
#: orders studies of one day) and ``timepoint_role`` (:data:`TIMEPOINT_ROLES`; see
#: :mod:`pipeline.followup.timepoints`).
OPTIONAL_COLUMNS: tuple[str, ...] = ("study_time", "timepoint_role")
#: Values of ``timepoint_role``: "" (automatic: the first study with lesion masks is the
#: baseline, later ones follow-ups), ``baseline``, ``follow_up``, ``exclude`` (measured, left
#: out of the response assessment).
TIMEPOINT_ROLES: tuple[str, ...] = ("", "baseline", "follow_up", "exclude")


def study_order_key(row: dict) -> tuple[str, str, str]:
    """Chronological sort key of a sheet row: (study_date, study_time, study_uid).

    ``study_time`` is used when the sheet has that optional column ("" otherwise), so studies of
    one day are ordered by time and then by UID (a fixed, if arbitrary, order).
    """
    return (str(row.get("study_date", "") or ""), str(row.get("study_time", "") or ""),
            str(row.get("study_uid", "") or ""))



def earlier_studies(sheet: pd.DataFrame, patient_dir: str, study_dir: str) -> list[dict]:
    """The same patient's studies strictly before this one, oldest first.

    Studies are ordered by :func:`study_order_key`: ``study_date`` (DICOM ``YYYYMMDD``), then
    ``study_time`` when an edited sheet has that column (the index keeps no StudyTime), then
    StudyInstanceUID (a fixed, if arbitrary, order for studies of one day; the (date, UID)
    order :func:`pipeline.ranking.longitudinal.rank_patient` uses). A
    study without a date has no earlier studies and is never an earlier study (its place in
    time is unknown).

    Parameters
    ----------
    sheet : DataFrame
        The results study sheet (with ``patient_dir``, ``study_dir``, ``study_date``).
    patient_dir, study_dir : str
        The study's folder names.

    Returns
    -------
    list of dict
        Sheet rows (strings), sorted by :func:`study_order_key`.

    Raises
    ------
    ConfigError
        When the study is not in the sheet exactly once.
    """
    me = study_row(sheet, patient_dir, study_dir)
    if not me.get("study_date", ""):
        return []
    mine = study_order_key(me)
    same = sheet[(sheet["patient_dir"] == patient_dir) & (sheet["study_dir"] != study_dir)]
    out = []
    for r in same.to_dict(orient="records"):
        r = {k: ("" if _is_empty(v) else str(v)) for k, v in r.items()}
        if r.get("study_date", "") and study_order_key(r) < mine:
            out.append(r)
    return sorted(out, key=study_order_key)


# =========================================================================== building
def study_dates(index: ArchiveIndex) -> dict[str, str]:
    """StudyInstanceUID -> StudyDate: the most common non-empty StudyDate of the study's files."""
    files = index.files
    if files.empty or "study_date" not in files.columns:
        return {}
    out: dict[str, str] = {}
    for uid, g in files[files["study_date"] != ""].groupby("study_uid", sort=True):
        counts = Counter(g["study_date"])
        out[str(uid)] = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    return out


def with_output_dirs(sheet: pd.DataFrame) -> pd.DataFrame:
    """Add ``patient_dir`` and ``study_dir``: sanitized, collision-free folder names."""
    from pipeline.io.sanitize import safe_id

    df = _as_str(sheet)
    df["patient_dir"] = [safe_id(p) for p in df["patient_id"]]
    df["study_dir"] = [safe_id(s) for s in df["study_uid"]]
    return df


def sheet_for_index(
    index: ArchiveIndex,
    *,
    user_sheet: str | Path | None = None,
    mask_source_priority: tuple[str, ...] = ("seg", "rtstruct", "labelmap"),
    schema_path: Path = SCHEMA_PATH,
) -> tuple[pd.DataFrame, str]:
    """The results study sheet of an index (what the index step writes).

    Parameters
    ----------
    index : ArchiveIndex
        From :func:`pipeline.io.index.scan_archive`.
    user_sheet : str or Path, optional
        A user's edited sheet (configuration key ``studies``); validated against the schema
        and the index and used instead of the automatic choice.
    mask_source_priority : tuple of str
        As in :func:`build_study_sheet`.
    schema_path : Path
        JSON Schema of one row.

    Returns
    -------
    (DataFrame, str)
        The sheet with ``study_date`` (the user's, else from the index), ``patient_dir`` and
        ``study_dir`` added, all cells strings; and where it came from, for the log.
    """
    if user_sheet:
        sheet = validate_study_sheet(read_study_sheet(user_sheet), schema_path, index=index)
        source = f"user study sheet {user_sheet}"
    else:
        sheet = build_study_sheet(index, mask_source_priority=mask_source_priority)
        source = "automatic series choice"
    if "study_date" not in sheet.columns:
        dates = study_dates(index)
        sheet["study_date"] = [dates.get(u, "") for u in sheet["study_uid"]]
    return with_output_dirs(sheet), source


def _pick(cands: pd.DataFrame, prefer: Callable[[pd.Series], tuple] | None = None
          ) -> pd.Series | None:
    if cands.empty:
        return None
    keyed = []
    for _, r in cands.iterrows():
        extra = prefer(r) if prefer else ()
        size = int(r["n_slices"]) if "n_slices" in r and int(r["n_slices"]) else int(r["n_files"])
        keyed.append((extra + (-size, r["series_uid"]), r))
    keyed.sort(key=lambda t: t[0])
    return keyed[0][1]


def build_study_sheet(
    index: ArchiveIndex,
    *,
    mask_source_priority: tuple[str, ...] = ("seg", "rtstruct", "labelmap"),
) -> pd.DataFrame:
    """One row per study with the series chosen for each role.

    Choice rules
    ------------
    Series with an ``excluded_reason`` (localizers, secondary captures, reports) are never chosen.
    The CT phase is the index's, from headers only: the pixel check
    :func:`pipeline.io.classify.refine_ct_phase` is not applied here (it needs every candidate
    CT's pixels and an aorta mask; see :mod:`pipeline.io.classify`).

    * ``ct_series_uid``: the non-contrast CT with the most slices (frames of multi-frame objects
      count); if there is none, the CT of unknown phase with the most slices (noted). Ties:
      smallest SeriesInstanceUID.
    * ``ce_ct_series_uid``: the contrast CT with the most slices.
    * ``pet_series_uid``: the attenuation-corrected PET (CorrectedImage ATTN; unknown accepted
      with a note) with the most slices; a PET known to be uncorrected is never chosen, even
      when it is the only PET (noted).
    * Studies with only a PET or only a CT get their row too, with a note saying which features
      their data allow (PET only: shape and SUV from a mask drawn on the PET, no skin depth or
      organ; CT only: no SUV).
    * ``lesion_mask_source`` / ``lesion_mask_ref``: the first source in ``mask_source_priority``
      that has a usable candidate. Candidates: SEG / RTSTRUCT series and label maps of the study
      whose ``segment_kind`` is lesion or mixed (unknown only if no source has one, noted) and
      whose references are intact: a segmentation whose referenced series is not in the study
      or has another blocking ``reference_problem`` is skipped with a note (an RTSTRUCT on a
      partly present series is kept, noted). When no lesion candidate is left, the note
      "no lesion segmentation" says which candidates were skipped and why (file, referenced
      UID). Among candidates: those
      referencing the chosen CT, then the contrast CT, then the PET; then most segments; then
      smallest UID. ``lesion_mask_ref`` is the SeriesInstanceUID (SEG, RTSTRUCT) or the label
      map's path relative to the archive root.
    * ``organ_mask_*``: the same with segment_kind organ or mixed (no unknown fallback).
    * ``notes``: every such decision, "; "-joined.
    * ``study_date``: StudyDate (0008,0020) of the study (:func:`study_dates`), "" if unknown.

    Sources ``""`` mean none; the row is still written so that a user can fill it.
    """
    series = index.series
    out = []
    if series.empty:
        return pd.DataFrame(columns=[*STUDY_SHEET_COLUMNS, "study_date"])
    dates = study_dates(index)
    usable = series[series["excluded_reason"] == ""]
    archive_series = set(series["series_uid"])
    for (pid, study), g_all in series.groupby(["patient_id", "study_uid"], sort=True):
        g = usable[(usable["patient_id"] == pid) & (usable["study_uid"] == study)]
        notes: list[str] = []
        n_excl = len(g_all) - len(g)
        if n_excl:
            notes.append(f"{n_excl} series excluded ("
                         + ", ".join(sorted(set(g_all["excluded_reason"]) - {""})) + ")")
        if not index.problems.empty:
            bad = index.problems[(index.problems["study_uid"] == study)
                                 & (index.problems["patient_id"] == pid)]
            if len(bad):
                notes.append(f"{len(bad)} file(s) of this study unreadable or truncated, first "
                             f"{bad.iloc[0]['path']}: {bad.iloc[0]['reason']}")
        cts = g[g["modality"] == Modality.CT.value]
        ct = _pick(cts[cts["ct_phase"] == CTPhase.NONCONTRAST.value])
        if ct is None:
            ct = _pick(cts[cts["ct_phase"] == CTPhase.UNKNOWN.value])
            if ct is not None:
                notes.append(f"CT {ct['series_uid']} has unknown contrast phase; used as the "
                             "non-contrast CT")
        ce = _pick(cts[cts["ct_phase"] == CTPhase.CONTRAST.value])
        if ct is None:
            notes.append("no non-contrast CT")
        elif ct["ct_phase"] == CTPhase.NONCONTRAST.value:
            notes.append(f"ct: {ct['n_slices']} slices, non-contrast by {ct['phase_reason']}")
        if ce is None:
            notes.append("no contrast-enhanced CT")
        else:
            notes.append(f"ce_ct: {ce['n_slices']} slices, contrast by {ce['phase_reason']}")
        if ct is not None and len(cts) > 1 + (ce is not None):
            notes.append(f"{len(cts)} CT series; chose the one with most slices per phase")

        pets = g[g["modality"] == Modality.PT.value]
        known_nac = pets[pets["pet_corrected"].fillna(True) == False]  # noqa: E712
        pet_cands = pets[pets["pet_corrected"].fillna(True) == True]  # noqa: E712
        pet = _pick(pet_cands, lambda r: (1 if pd.isna(r["pet_corrected"]) else 0,))
        if len(known_nac):
            notes.append(f"{len(known_nac)} non-attenuation-corrected PET series not used")
        if pet is not None and pd.isna(pet["pet_corrected"]):
            notes.append(f"PET {pet['series_uid']}: attenuation correction unknown "
                         "(no CorrectedImage)")
        if pet is None:
            notes.append("no PET")
        else:
            notes.append(f"pet: {pet['n_slices']} slices")
        if ct is None and ce is None and pet is not None:
            notes.append("PET-only study: shape and SUV features from the PET grid; skin depth, "
                         "organ and CT features unavailable")
        elif pet is None and (ct is not None or ce is not None):
            notes.append("CT-only study: SUV features unavailable")

        study_series = set(g_all["series_uid"])
        skipped: dict[str, list[str]] = {}  # label -> why each candidate was unusable
        chosen_images = [r["series_uid"] for r in (ct, ce, pet) if r is not None]

        def candidates(kinds: set[str], label: str) -> dict[str, list[pd.Series]]:
            res: dict[str, list[pd.Series]] = {}
            for src in mask_source_priority:
                mod = {"seg": Modality.SEG.value, "rtstruct": Modality.RTSTRUCT.value,
                       "labelmap": Modality.LABELMAP.value}.get(src)
                if mod is None:
                    raise ConfigError(f"unknown mask source {src!r} in mask_source_priority",
                                      tag="mask_source_priority",
                                      hint="use seg, rtstruct and labelmap")
                ok = []
                for _, r in g[(g["modality"] == mod) & (g["segment_kind"].isin(kinds))].iterrows():
                    refs = [u for u in r["referenced_series_uids"].split(";") if u]
                    outside = [u for u in refs if u not in study_series]
                    name = r["first_path"] if mod == Modality.LABELMAP.value else r["series_uid"]
                    where = (f"{src} {name}" if mod == Modality.LABELMAP.value
                             else f"{src} {name} (file {r['first_path']})")
                    if outside:
                        absent = [u for u in outside if u not in archive_series]
                        other = [u for u in outside if u in archive_series]
                        why = ", ".join(
                            [f"referenced series {', '.join(absent)} not in the archive"]
                            * bool(absent)
                            + [f"referenced series {', '.join(other)} not in this study"]
                            * bool(other))
                        notes.append(f"{src} {name} skipped for {label}: {why}")
                        skipped.setdefault(label, []).append(f"{where}: {why}")
                        continue
                    blocking = blocking_reference_problems(r["reference_problem"])
                    if blocking:
                        notes.append(f"{src} {name} skipped for {label}: {'; '.join(blocking)}")
                        skipped.setdefault(label, []).append(f"{where}: {', '.join(blocking)}")
                        continue
                    if r["reference_problem"]:
                        notes.append(f"{src} {name}: {r['reference_problem']}")
                    ok.append(r)
                res[src] = ok
            return res

        def choose(kinds: set[str], label: str) -> tuple[str, str]:
            cands = candidates(kinds, label)
            for src in mask_source_priority:
                if not cands[src]:
                    continue

                def key(r: pd.Series) -> tuple:
                    refs = [u for u in r["referenced_series_uids"].split(";") if u]
                    rank = min((chosen_images.index(u) for u in refs if u in chosen_images),
                               default=len(chosen_images))
                    return (rank, -int(r["n_segments"]), r["series_uid"])

                best = sorted(cands[src], key=key)[0]
                if len(cands[src]) > 1:
                    notes.append(f"{len(cands[src])} {src} candidates for {label}; chose the one "
                                 "referencing the chosen images with most segments")
                refs = [u for u in best["referenced_series_uids"].split(";") if u]
                role = next((r for r, row_ in (("ct", ct), ("ce_ct", ce), ("pet", pet))
                             if row_ is not None and row_["series_uid"] in refs), "other series")
                notes.append(f"{label}: {src} with {best['n_segments']} segment(s) "
                             f"({best['segment_kind']}) drawn on {role}")
                ref = best["first_path"] if src == "labelmap" else best["series_uid"]
                return src, ref
            return "", ""

        les_src, les_ref = choose({"lesion", "mixed"}, "lesions")
        if not les_src:
            les_src, les_ref = choose({"unknown"}, "lesions")
            if les_src:
                notes.append(f"lesion mask {les_ref}: segment kind unknown (no lesion category "
                             "or name pattern matched); assumed to hold lesions")
            elif skipped.get("lesions"):
                notes.append(f"{NO_LESION_SEGMENTATION}: "
                             + " | ".join(dict.fromkeys(skipped["lesions"])))
            else:
                notes.append(NO_LESION_SEGMENTATION)
        org_src, org_ref = choose({"organ", "mixed"}, "organs")
        if not org_src:
            ts = [t for t in index.meta.get("totalseg_folders", []) if t.get("study_uid") == study]
            if ts:
                org_src, org_ref = "totalseg", ts[0]["path"]
                notes.append(f"organs: TotalSegmentator folder {org_ref}")
        if not org_src:
            notes.append("no organ segmentation")
        out.append({
            "patient_id": pid, "study_uid": study,
            "ct_series_uid": ct["series_uid"] if ct is not None else "",
            "ce_ct_series_uid": ce["series_uid"] if ce is not None else "",
            "pet_series_uid": pet["series_uid"] if pet is not None else "",
            "lesion_mask_source": les_src, "lesion_mask_ref": les_ref,
            "organ_mask_source": org_src, "organ_mask_ref": org_ref,
            "notes": "; ".join(dict.fromkeys(notes)),
            "study_date": dates.get(study, ""),
        })
    return pd.DataFrame(out, columns=[*STUDY_SHEET_COLUMNS, "study_date"]).astype(str)


def validate_study_sheet(
    df: pd.DataFrame, schema_path: Path = SCHEMA_PATH, *, index: ArchiveIndex | None = None
) -> pd.DataFrame:
    """Check a study sheet against ``configs/studies.schema.yaml`` and against the index.

    Parameters
    ----------
    df : DataFrame
        The sheet (e.g. from :func:`read_study_sheet`). Empty cells may be "" or NaN.
    schema_path : Path
        JSON Schema (in YAML) of one row; ``x-columns`` lists the column order. Default
        ``configs/studies.schema.yaml``.
    index : ArchiveIndex, optional
        When given, every referenced UID / path must exist in it with the right modality and
        belong to the row's patient and study.

    Returns
    -------
    DataFrame
        The sheet with all cells as strings.

    Raises
    ------
    ConfigError
        Naming the row (1-based data row, with patient and study) and the column.
    """
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text(encoding="utf-8"))
    sheet = _as_str(df)
    required_cols = list(schema.get("required", []))
    missing_cols = [c for c in required_cols if c not in sheet.columns]
    if missing_cols:
        raise ConfigError(f"study sheet lacks column(s) {missing_cols}", file=schema_path,
                          tag=missing_cols[0],
                          hint=f"the sheet needs the columns {list(STUDY_SHEET_COLUMNS)}")
    validator = jsonschema.Draft202012Validator(schema)

    def where(i: int, row: dict) -> str:
        return (f"row {i + 1} (patient {row.get('patient_id', '?')}, study "
                f"{row.get('study_uid', '?')})")

    records = sheet.to_dict(orient="records")
    for i, row in enumerate(records):
        errors = sorted(validator.iter_errors(row), key=lambda e: list(e.path))
        if errors:
            e = errors[0]
            if e.validator == "additionalProperties":
                col = ", ".join(sorted(set(row) - set(schema.get("properties", {}))))
                msg = f"unknown column(s) {col}"
            else:
                col = str(e.path[0]) if e.path else (
                    e.message.split("'")[1] if e.validator == "required" else "")
                msg = f"column {col}: {e.message}"
            raise ConfigError(f"study sheet {where(i, row)}: {msg}", tag=col or None,
                              hint="fix the cell; allowed values are in "
                              f"{Path(schema_path).name}")
        for src_col, ref_col in (("lesion_mask_source", "lesion_mask_ref"),
                                 ("organ_mask_source", "organ_mask_ref")):
            if bool(row[src_col]) != bool(row[ref_col]):
                raise ConfigError(
                    f"study sheet {where(i, row)}: column {ref_col} must be filled exactly when "
                    f"{src_col} is (found source {row[src_col]!r}, ref {row[ref_col]!r})",
                    tag=ref_col, hint="fill both cells or leave both empty")
    keys = Counter((r["patient_id"], r["study_uid"]) for r in records)
    dup = [k for k, n in keys.items() if n > 1]
    if dup:
        raise ConfigError(f"study sheet lists study {dup[0][1]} of patient {dup[0][0]} "
                          f"{keys[dup[0]]} times", tag="study_uid",
                          hint="keep one row per study")
    if "timepoint_role" in sheet.columns:
        baselines = Counter(r["patient_id"] for r in records if r["timepoint_role"] == "baseline")
        many = sorted(p for p, n in baselines.items() if n > 1)
        if many:
            raise ConfigError(
                f"study sheet: patient {many[0]} has {baselines[many[0]]} studies with "
                "timepoint_role baseline, expected at most one", tag="timepoint_role",
                hint="mark one baseline per patient (or none: the first study with lesion masks "
                "is then the baseline)")
        for i, row in enumerate(records):
            if row["timepoint_role"] == "baseline" and not row["lesion_mask_source"]:
                raise ConfigError(
                    f"study sheet {where(i, row)}: column timepoint_role: a baseline needs lesion "
                    "masks, found lesion_mask_source empty", tag="timepoint_role",
                    hint="choose a study with a lesion segmentation as baseline, or fill "
                    "lesion_mask_source / lesion_mask_ref")
    if index is not None:
        series = index.series.set_index("series_uid", drop=False)
        expect = {"ct_series_uid": {"CT"}, "ce_ct_series_uid": {"CT"},
                  "pet_series_uid": {"PT"}}
        for i, row in enumerate(records):
            for col, mods in expect.items():
                uid = row[col]
                if uid:
                    _check_ref(series, uid, mods, row, col, where(i, row))
            for src_col, ref_col in (("lesion_mask_source", "lesion_mask_ref"),
                                     ("organ_mask_source", "organ_mask_ref")):
                src, ref = row[src_col], row[ref_col]
                if not src:
                    continue
                if src == "totalseg":
                    if not (Path(index.root) / ref).is_dir():
                        raise ConfigError(
                            f"study sheet {where(i, row)}: column {ref_col}: TotalSegmentator "
                            f"folder {ref!r} does not exist under the archive root", tag=ref_col,
                            hint="give the folder path relative to the archive root")
                    continue
                if src == "labelmap":
                    uid = f"labelmap:{ref}"
                    if uid not in series.index:
                        raise ConfigError(
                            f"study sheet {where(i, row)}: column {ref_col}: label map {ref!r} "
                            "is not in the archive index", tag=ref_col,
                            hint="give the label map's path relative to the archive root, as "
                            "in files.csv")
                    _check_ref(series, uid, {"LABELMAP"}, row, ref_col, where(i, row))
                else:
                    _check_ref(series, ref, {src.upper()}, row, ref_col, where(i, row))
    return sheet


def _check_ref(series: pd.DataFrame, uid: str, modalities: set[str], row: dict, col: str,
               where: str) -> None:
    if uid not in series.index:
        raise ConfigError(f"study sheet {where}: column {col}: series {uid} is not in the "
                          "archive index", tag=col,
                          hint="copy the SeriesInstanceUID from series.csv of the index")
    r = series.loc[uid]
    if isinstance(r, pd.DataFrame):
        r = r.iloc[0]
    if r["modality"] not in modalities:
        raise ConfigError(f"study sheet {where}: column {col}: series {uid} has modality "
                          f"{r['modality']}, expected {'/'.join(sorted(modalities))}", tag=col,
                          hint="choose a series of the right modality from series.csv")
    if r["study_uid"] != row["study_uid"] or r["patient_id"] != row["patient_id"]:
        raise ConfigError(f"study sheet {where}: column {col}: series {uid} belongs to patient "
                          f"{r['patient_id']} study {r['study_uid']}", tag=col,
                          hint="choose a series of this study")
