"""Write and read the result tables (CSV, Parquet), atomically."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

FAILURE_COLUMNS = [
    "patient_id", "study_uid", "stage", "error_class", "message", "file", "series_uid", "tag",
    "hint",
]


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


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV written by :func:`write_table`; identifiers stay strings."""
    return pd.read_csv(
        path, dtype={"patient_id": str, "study_uid": str, "lesion_id": str, "lesion_label": str,
                     "series_uid": str},
        keep_default_na=True,
    )


def failures_frame(records: list[dict]) -> pd.DataFrame:
    """Failure records as a DataFrame with the fixed column order (header only when empty)."""
    return pd.DataFrame(records, columns=FAILURE_COLUMNS).fillna("")
