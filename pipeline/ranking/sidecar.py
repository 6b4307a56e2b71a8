"""Clinical sidecar: what the images cannot tell (prior local therapy, growth status, biopsy,
critical-structure compression, whether the tumour type is FDG-avid, per-trial limits), as an
optional CSV.

The CSV is validated row by row against ``configs/sidecar.schema.yaml``; an error names the CSV
line and the column. Empty cells are "unknown" and never override a value. The configuration key
``ranking.sidecar`` points to the file (:func:`load_sidecar_from_config`).

Matching (:func:`merge_sidecar`): a row applies to the lesions of its ``patient_id`` (and of its
``study_uid`` when given) whose ``lesion_id`` equals the row's ``lesion_id``, else whose
``lesion_label`` equals the row's ``lesion_label`` (compared after stripping blanks,
case-insensitively). Rows naming no lesion apply to the patient (``max_injections``,
``histology_fdg_avid``; a lesion row's value overrides the patient row's). Sidecar
values override values already in the lesion table (for example a computed ``new_or_growing``);
``<column>_source`` says "sidecar" for the values taken from it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from jsonschema import Draft202012Validator

from pipeline.paths import CONFIG_DIR, load_yaml
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

SIDECAR_SCHEMA = CONFIG_DIR / "sidecar.schema.yaml"
#: Lesion-level boolean columns of the sidecar.
BOOL_COLUMNS = ("prior_locoregional_therapy", "new_or_growing", "biopsy_required",
                "critical_compression", "histology_fdg_avid")
#: Columns a row that names no lesion may carry.
PATIENT_COLUMNS = ("patient_id", "study_uid", "max_injections", "histology_fdg_avid", "notes")
#: Boolean columns a row that names no lesion may set for every lesion of the patient.
PATIENT_BOOL_COLUMNS = ("histology_fdg_avid",)
_TRUE = {"true", "yes", "1", "y", "t"}
_FALSE = {"false", "no", "0", "n", "f"}


def _schema() -> dict:
    return load_yaml(SIDECAR_SCHEMA)


#: Sidecar columns that only name the lesion (matched against the table, never merged).
KEY_COLUMNS = ("patient_id", "study_uid", "lesion_id", "lesion_label")
#: Sidecar column -> lesion-table column it is merged into (others keep their name).
MERGED_AS = {"notes": "sidecar_notes"}


def merged_columns(schema: dict | None = None) -> list[str]:
    """Lesion-table columns the sidecar merges (:func:`merge_sidecar`): every schema column but
    the keys, renamed by :data:`MERGED_AS`, plus ``<bool column>_source``."""
    props = (schema or _schema())["properties"]
    out = [MERGED_AS.get(c, c) for c in props if c not in KEY_COLUMNS]
    return out + [f"{c}_source" for c in BOOL_COLUMNS]


def check_declared(schema: dict | None = None) -> None:
    """Every column the sidecar merges into the lesion table is declared in
    :mod:`pipeline.columns` (a sidecar column the rules cannot be checked against is a bug).

    Raises
    ------
    ConfigError
        Naming the sidecar schema column, with a did-you-mean hint.
    """
    from pipeline.columns import ALL_COLUMNS, is_declared, unknown_column_message

    bad = [c for c in merged_columns(schema) if not is_declared(c)]
    if bad:
        names = [c.name for c in ALL_COLUMNS]
        raise ConfigError(
            "clinical sidecar schema: merged column(s) "
            + "; ".join(unknown_column_message(c, names) for c in bad),
            file=SIDECAR_SCHEMA,
            hint="declare the column in pipeline.columns.SIDECAR_COLUMNS (producer 'sidecar') "
                 "or fix its name in configs/sidecar.schema.yaml",
        )


def _convert(col: str, raw: str, spec: dict):
    """CSV text -> typed value per the schema (unconvertible text is returned as is, so that the
    schema reports it with its type)."""
    kind = spec.get("type")
    if kind == "boolean":
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        return raw
    if kind == "integer":
        try:
            f = float(raw)
        except ValueError:
            return raw
        return int(f) if f.is_integer() else f
    return raw.strip() if col != "notes" else raw


def load_sidecar(path: str | Path) -> pd.DataFrame:
    """Read and validate a clinical sidecar CSV.

    Parameters
    ----------
    path : str or Path
        CSV with a header row; columns from configs/sidecar.schema.yaml.

    Returns
    -------
    DataFrame
        One row per CSV row with every schema column (missing ones empty); booleans as
        ``True``/``False``/``None``, ``max_injections`` as a nullable integer, text columns as
        str (""), plus ``sidecar_line`` (the CSV line number, header = 1).

    Raises
    ------
    ConfigError
        File missing or unreadable, unknown column, a value of the wrong type, a row without a
        lesion carrying lesion-level columns, or two rows for the same lesion. The message names
        the line and the column.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"clinical sidecar not found: expected a CSV file at {p}", file=p,
                          hint="fix ranking.sidecar in the configuration")
    try:
        raw = pd.read_csv(p, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"clinical sidecar is not a readable CSV: {exc}", file=p) from exc
    schema = _schema()
    check_declared(schema)
    props = schema["properties"]
    raw.columns = [str(c).strip() for c in raw.columns]
    unknown = [c for c in raw.columns if c not in props]
    if unknown:
        raise ConfigError(
            f"clinical sidecar: unknown column(s) {unknown} (allowed: {', '.join(props)})", file=p,
            hint="rename the column to one of the allowed names (see configs/sidecar.schema.yaml)",
        )
    if "patient_id" not in raw.columns:
        raise ConfigError("clinical sidecar: column 'patient_id' is required", file=p)
    if "lesion_id" not in raw.columns and "lesion_label" not in raw.columns:
        raise ConfigError("clinical sidecar: needs a 'lesion_id' or a 'lesion_label' column", file=p)
    validator = Draft202012Validator(schema)
    rows, problems = [], []
    for i, rec in enumerate(raw.to_dict(orient="records")):
        line = i + 2
        typed = {c: _convert(c, v, props[c]) for c, v in rec.items() if str(v).strip() != ""}
        for err in sorted(validator.iter_errors(typed), key=lambda e: list(e.absolute_path)):
            col = ".".join(str(x) for x in err.absolute_path)
            if not col and err.validator == "required":
                col = ", ".join(err.validator_value)
            problems.append(f"line {line}, column '{col}': {err.message}")
        if not typed.get("lesion_id") and not typed.get("lesion_label"):
            bad = [c for c in typed if c not in PATIENT_COLUMNS]
            if bad:
                problems.append(
                    f"line {line}, column '{bad[0]}': a row naming no lesion (lesion_id and "
                    f"lesion_label empty) may only carry {', '.join(PATIENT_COLUMNS[2:])}")
        rows.append({**typed, "sidecar_line": line})
    if problems:
        raise ConfigError("clinical sidecar is invalid: " + "; ".join(problems), file=p,
                          hint="see configs/sidecar.schema.yaml for the columns and their types")
    df = pd.DataFrame(rows)
    for c in props:
        if c not in df.columns:
            df[c] = None
    for c in ("patient_id", "study_uid", "lesion_id", "lesion_label", "notes"):
        df[c] = df[c].map(lambda v: "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
    for c in BOOL_COLUMNS:
        df[c] = df[c].map(lambda v: None if v is None or (isinstance(v, float) and pd.isna(v)) else bool(v))
        df[c] = df[c].astype(object)
    df["max_injections"] = pd.to_numeric(df["max_injections"], errors="coerce").astype("Int64")
    key = df["lesion_id"].where(df["lesion_id"] != "", "label:" + df["lesion_label"].str.lower())
    lesion_rows = (df["lesion_id"] != "") | (df["lesion_label"] != "")
    dup = df[lesion_rows].assign(_k=key).duplicated(["patient_id", "study_uid", "_k"], keep=False)
    if dup.any():
        lines = df.loc[dup[dup].index, "sidecar_line"].tolist()
        raise ConfigError(f"clinical sidecar: lines {lines} describe the same lesion twice", file=p,
                          hint="keep one row per lesion (and study)")
    cols = list(props) + ["sidecar_line"]
    return df[cols].reset_index(drop=True)


def load_sidecar_from_config(cfg_ranking: dict) -> pd.DataFrame | None:
    """The sidecar named by ``ranking.sidecar``, or None when it is null."""
    path = cfg_ranking.get("sidecar")
    return None if not path else load_sidecar(path)


def _norm(s) -> str:
    return str(s).strip().lower()


def merge_sidecar(lesions: pd.DataFrame, sidecar: pd.DataFrame | None) -> pd.DataFrame:
    """Lesion table with the sidecar's values applied.

    Parameters
    ----------
    lesions : DataFrame
        Lesion table (one or several studies) with ``patient_id``, ``study_uid``, ``lesion_id``,
        ``lesion_label``.
    sidecar : DataFrame or None
        From :func:`load_sidecar`.

    Returns
    -------
    DataFrame
        A copy of ``lesions`` with the sidecar columns (``prior_locoregional_therapy``,
        ``new_or_growing``, ``biopsy_required``, ``critical_compression``, ``histology_fdg_avid``,
        ``max_injections``,
        ``sidecar_notes``) set where the sidecar says so, ``<column>_source`` = "sidecar" for
        the booleans taken from it, and ``attrs["warnings"]`` naming sidecar lines of this
        table's patients that matched no lesion.
    """
    df = lesions.copy()
    if sidecar is None or sidecar.empty or df.empty:
        return df
    df = df.reset_index(drop=True)
    for c in BOOL_COLUMNS:
        if c not in df.columns:
            df[c] = None
        df[c] = df[c].astype(object)
        src = f"{c}_source"
        if src not in df.columns:
            df[src] = df[c].map(lambda v: "" if v is None or (isinstance(v, float) and pd.isna(v)) else "table")
    if "max_injections" not in df.columns:
        df["max_injections"] = pd.Series(pd.NA, index=df.index, dtype="Int64")
    if "sidecar_notes" not in df.columns:
        df["sidecar_notes"] = ""
    pid = df["patient_id"].astype(str)
    sid = df["study_uid"].astype(str) if "study_uid" in df.columns else pd.Series("", index=df.index)
    lid = df["lesion_id"].astype(str)
    lab = df["lesion_label"].map(_norm) if "lesion_label" in df.columns else pd.Series("", index=df.index)
    warnings = list(df.attrs.get("warnings", []))
    patients = set(pid)
    recs = sidecar.to_dict(orient="records")
    # patient rows first, so that a lesion row overrides them
    recs.sort(key=lambda r: bool(r.get("lesion_id") or r.get("lesion_label")))
    for rec in recs:
        if rec["patient_id"] not in patients:
            continue
        sel = pid.eq(rec["patient_id"])
        if rec.get("study_uid"):
            sel &= sid.eq(rec["study_uid"])
            if not sel.any():
                continue
        if rec.get("lesion_id"):
            sel &= lid.eq(rec["lesion_id"])
        elif rec.get("lesion_label"):
            sel &= lab.eq(_norm(rec["lesion_label"]))
        else:  # patient-level row
            for c in PATIENT_BOOL_COLUMNS:
                v = rec.get(c)
                if v is not None and not (isinstance(v, float) and pd.isna(v)):
                    df.loc[sel, c] = bool(v)
                    df.loc[sel, f"{c}_source"] = "sidecar"
            mi = rec.get("max_injections")
            if mi is not None and not pd.isna(mi):
                cur = pd.to_numeric(df.loc[sel, "max_injections"], errors="coerce")
                df.loc[sel, "max_injections"] = cur.fillna(int(mi)).clip(upper=int(mi)).astype("Int64")
            continue
        if not sel.any():
            what = rec.get("lesion_id") or rec.get("lesion_label")
            warnings.append(f"clinical sidecar line {rec['sidecar_line']}: lesion {what!r} of "
                            f"patient {rec['patient_id']} not found")
            continue
        for c in BOOL_COLUMNS:
            v = rec.get(c)
            if v is not None and not (isinstance(v, float) and pd.isna(v)):
                df.loc[sel, c] = bool(v)
                df.loc[sel, f"{c}_source"] = "sidecar"
        mi = rec.get("max_injections")
        if mi is not None and not pd.isna(mi):
            cur = pd.to_numeric(df.loc[sel, "max_injections"], errors="coerce")
            df.loc[sel, "max_injections"] = cur.fillna(int(mi)).clip(upper=int(mi)).astype("Int64")
        if rec.get("notes"):
            df.loc[sel, "sidecar_notes"] = rec["notes"]
    for w in warnings:
        log.warning(w)
    df.attrs["warnings"] = warnings
    return df
