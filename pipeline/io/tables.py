"""Write and read the result tables (CSV, Parquet), atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

#: ``severity`` is "error" (the study or file could not be used) or "warning" (the study was
#: processed, one value was refused, e.g. an implausible SUV)
FAILURE_COLUMNS = [
    "patient_id", "study_uid", "stage", "error_class", "message", "file", "series_uid", "tag",
    "hint", "severity",
]


def write_text_atomic(path: Path, text: str, *, only_if_changed: bool = True) -> bool:
    """Write ``text`` durably and atomically: temporary file in the same folder, fsync,
    ``os.replace``, fsync of the folder. A reader sees the old content or the new, never a
    partial file; on failure the temporary file is removed and the old file is left as it was.

    With ``only_if_changed``, a file that already holds ``text`` is not rewritten, so its
    modification time (a workflow rerun trigger) says when its content last changed.

    Returns
    -------
    bool
        True when the file was written.
    """
    path = Path(path)
    if only_if_changed and path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory file descriptors
        return True
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
    return True


def write_table(df: pd.DataFrame, path: Path, *, parquet: bool = False) -> None:
    """Write ``df`` as CSV (and Parquet next to it when asked); empty values stay empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)
    if parquet:
        pq = path.with_suffix(".parquet")
        tmpq = path.with_suffix(".parquet.tmp")
        df.to_parquet(tmpq, index=False)
        tmpq.replace(pq)


#: Text accepted for a boolean cell (case-insensitive); empty = unknown (None).
_TRUE = {"true", "yes", "1", "1.0"}
_FALSE = {"false", "no", "0", "0.0"}
_PANDAS_DTYPE = {"str": str, "float": "float64", "int": "Int64"}


def _parse_bool(v, *, column: str, path: Path):
    if v is None or (isinstance(v, float) and v != v):
        return None
    low = str(v).strip().lower()
    if low == "":
        return None
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    from pipeline.errors import InternalError

    raise InternalError(f"column '{column}' is declared boolean but holds {v!r}", file=path,
                        hint="the table was not written by this pipeline version; rerun the study")


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV written by :func:`write_table` with the declared column types.

    Columns declared in :mod:`pipeline.columns` get their type: text columns (identifiers,
    UIDs, reasons) stay strings (empty -> NaN), float columns are float64 (empty -> NaN), int
    columns the nullable ``Int64`` (empty -> <NA>), bool columns objects holding True / False /
    None (true/false/yes/no/1/0 accepted). Undeclared columns (e.g. ``series_uid`` of the failure
    table) are inferred by pandas, ``series_uid`` as text.
    """
    from pipeline.columns import dtype_map

    path = Path(path)
    declared = dtype_map()
    header = pd.read_csv(path, nrows=0).columns
    dtypes: dict = {"series_uid": str}
    bools = []
    for c in header:
        kind = declared.get(c)
        if kind == "bool":
            dtypes[c] = str
            bools.append(c)
        elif kind is not None:
            dtypes[c] = _PANDAS_DTYPE[kind]
    df = pd.read_csv(path, dtype=dtypes, keep_default_na=True)
    for c in bools:
        df[c] = df[c].map(lambda v, c=c: _parse_bool(v, column=c, path=path)).astype(object)
    return df


def read_table_if_present(path: Path) -> pd.DataFrame:
    """:func:`read_table`, or an empty frame when the file is missing or has no header."""
    p = Path(path)
    if not p.exists():
        return pd.DataFrame()
    try:
        return read_table(p)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def failures_frame(records: list[dict]) -> pd.DataFrame:
    """Failure records as a DataFrame with the fixed column order (header only when empty)."""
    df = pd.DataFrame(records, columns=FAILURE_COLUMNS)
    df["severity"] = df["severity"].fillna("error").replace("", "error")
    return df.fillna("")
