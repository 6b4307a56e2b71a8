"""Colours, number formatting and the cohort plots of the review outputs.

Palette
-------
Okabe & Ito's colour-blind-safe palette (Okabe M, Ito K. *Color Universal Design*, 2008), used
everywhere in the worksheet, the dashboard and the key images. Colour is never the only carrier
of meaning: every coloured mark also has a text label (role, tier, lesion number).

Plots are drawn with matplotlib (Agg backend, nothing shown) and embedded as base64 PNG
``data:`` URLs, so the HTML pages stay self-contained.
"""

from __future__ import annotations

import base64
import io
import logging
import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: Okabe-Ito palette (hex).
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
    "grey": "#999999",
}

ROLE_COLOURS = {
    "inject": OKABE_ITO["vermillion"],
    "monitor": OKABE_ITO["blue"],
    "none": OKABE_ITO["grey"],
}
TIER_COLOURS = {
    "recommended": OKABE_ITO["bluish_green"],
    "acceptable": OKABE_ITO["sky_blue"],
    "board_review": OKABE_ITO["orange"],
    "not_suitable": OKABE_ITO["reddish_purple"],
}
TIER_ORDER = ["recommended", "acceptable", "board_review", "not_suitable"]
ROLE_ORDER = ["inject", "monitor", "none"]
ROLE_TEXT = {"inject": "inject (T-I)", "monitor": "monitor (T-NI)", "none": "none"}

#: Key-image overlay colours.
CONTOUR_CT = OKABE_ITO["yellow"]
CONTOUR_PET = OKABE_ITO["sky_blue"]
NEEDLE = OKABE_ITO["bluish_green"]
TARGET = OKABE_ITO["vermillion"]


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    """``"#RRGGBB"`` -> (r, g, b) ints."""
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def is_missing(v) -> bool:
    """True for None, NaN, pandas NA and empty strings."""
    if v is None:
        return True
    if isinstance(v, str):
        return v.strip() == "" or v.strip().lower() == "nan"
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def to_float(v) -> float | None:
    """``v`` as float, or None when missing or not a number."""
    if is_missing(v):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def to_bool(v) -> bool | None:
    """Booleans written by pandas ("True"/"False", 1/0) -> bool; missing -> None."""
    if is_missing(v):
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    s = str(v).strip().lower()
    if s in ("true", "1", "1.0", "yes"):
        return True
    if s in ("false", "0", "0.0", "no"):
        return False
    return None


def fmt(v, digits: int = 1, unit: str = "") -> str:
    """Format a number for a table cell; missing values become an en dash."""
    f = to_float(v)
    if f is None:
        return "–" if is_missing(v) else str(v)
    text = f"{f:.{digits}f}"
    return f"{text} {unit}".rstrip() if unit else text


def png_data_url(png: bytes) -> str:
    """``data:image/png;base64,...`` for an <img> tag."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure(w_in: float, h_in: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(w_in, h_in), dpi=100)


def fig_png(fig) -> bytes:
    """Render a matplotlib Figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


FEATURE_PLOTS = [
    ("volume_ml", "Volume (mL)", True),
    ("longest_diameter_mm", "Longest axial diameter (mm)", False),
    ("suv_max", "SUVmax (SUVbw, g/mL)", False),
    ("skin_depth_mm", "Skin depth (mm)", False),
]


def feature_histograms(table: pd.DataFrame) -> list[tuple[str, bytes, str]]:
    """One histogram per feature, stacked by role.

    Parameters
    ----------
    table : DataFrame
        The cohort lesion table joined with the ranking (columns of :data:`FEATURE_PLOTS` and
        ``role``; missing columns are skipped).

    Returns
    -------
    list of (title, png bytes, alt text)
    """
    out = []
    roles = table["role"].fillna("none").astype(str) if "role" in table else pd.Series(
        ["none"] * len(table), index=table.index)
    for col, title, logx in FEATURE_PLOTS:
        if col not in table:
            continue
        vals = pd.to_numeric(table[col], errors="coerce")
        ok = vals.notna() & np.isfinite(vals)
        if logx:
            ok &= vals > 0
        fig = _figure(4.2, 2.8)
        ax = fig.add_subplot(111)
        n_ok = int(ok.sum())
        if n_ok == 0:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            alt = f"Histogram of {title}: no lesion has a value."
        else:
            v = vals[ok].to_numpy(float)
            lo, hi = float(v.min()), float(v.max())
            if logx:
                edges = np.logspace(np.log10(lo * 0.9), np.log10(hi * 1.1 + 1e-9), 13)
                ax.set_xscale("log")
            else:
                pad = max((hi - lo) * 0.05, 0.5)
                edges = np.linspace(lo - pad, hi + pad, 13)
            data, colours, labels = [], [], []
            for role in ROLE_ORDER:
                sel = ok & (roles == role)
                if sel.any():
                    data.append(vals[sel].to_numpy(float))
                    colours.append(ROLE_COLOURS[role])
                    labels.append(ROLE_TEXT[role])
            other = ok & ~roles.isin(ROLE_ORDER)
            if other.any():
                data.append(vals[other].to_numpy(float))
                colours.append(OKABE_ITO["black"])
                labels.append("unranked")
            ax.hist(data, bins=edges, stacked=True, color=colours, label=labels,
                    edgecolor="white", linewidth=0.5)
            from matplotlib.ticker import MaxNLocator

            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("lesions")
            ax.legend(fontsize=7, frameon=False)
            med = float(np.median(v))
            alt = (f"Histogram of {title} over {n_ok} lesions, stacked by role: range "
                   f"{lo:.1f} to {hi:.1f}, median {med:.1f}.")
        ax.set_xlabel(title)
        ax.spines[["top", "right"]].set_visible(False)
        out.append((title, fig_png(fig), alt))
    return out


def tiers_per_organ(table: pd.DataFrame) -> tuple[bytes, str]:
    """Stacked horizontal bars: number of lesions of each tier per organ.

    Returns
    -------
    (png bytes, alt text)
    """
    fig = _figure(5.2, 3.0)
    ax = fig.add_subplot(111)
    if table.empty or "tier" not in table or "organ" not in table:
        ax.text(0.5, 0.5, "no ranked lesions", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return fig_png(fig), "Tiers per organ: no ranked lesions."
    organ = table["organ"].fillna("unknown").astype(str).replace("", "unknown")
    tier = table["tier"].fillna("unranked").astype(str)
    counts = pd.crosstab(organ, tier)
    organs = list(counts.index)
    left = np.zeros(len(organs))
    parts = []
    for t in TIER_ORDER + [c for c in counts.columns if c not in TIER_ORDER]:
        if t not in counts.columns:
            continue
        n = counts[t].to_numpy(float)
        ax.barh(organs, n, left=left, color=TIER_COLOURS.get(t, OKABE_ITO["black"]),
                label=t.replace("_", " "), edgecolor="white", linewidth=0.5)
        left += n
        parts.append(f"{t.replace('_', ' ')} {int(n.sum())}")
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("lesions")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.invert_yaxis()
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    fig.set_figheight(max(2.0, 0.45 * len(organs) + 1.0))
    alt = ("Stacked bar chart of lesion tiers per organ (" + ", ".join(
        f"{o}: {int(counts.loc[o].sum())}" for o in organs) + "); totals " + ", ".join(parts) + ".")
    return fig_png(fig), alt


def unique(seq: Iterable) -> list:
    """Order-preserving unique values."""
    seen, out = set(), []
    for s in seq:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


#: Line styles of the follow-up SOD timeline (colour never the only carrier: markers and labels).
SOD_SERIES = [
    ("T-I (injected targets)", ROLE_COLOURS["inject"], "o", "-"),
    ("T-NI (noninjected targets)", ROLE_COLOURS["monitor"], "s", "--"),
    ("all targets", OKABE_ITO["black"], "^", ":"),
]


def sod_timeline(labels: list[str], sod_ti_mm: list[float | None], sod_tni_mm: list[float | None],
                 sod_targets_mm: list[float | None], *, current: int | None = None) -> tuple[bytes, str]:
    """Line plot of the sums of diameters (itRECIST SOD) per timepoint.

    Parameters
    ----------
    labels : list of str
        One x-axis label per timepoint, in time order (e.g. ``"T0\\n2024-01-10"``).
    sod_ti_mm, sod_tni_mm, sod_targets_mm : list of float or None
        Sum of diameters (mm) of the injected targets (T-I), the noninjected targets (T-NI) and
        all targets at each timepoint, aligned with ``labels``; None where not evaluable (the
        line is broken there).
    current : int, optional
        Position (in ``labels``) of the worksheet's own timepoint, marked by a vertical line.

    Returns
    -------
    (png bytes, alt text)
    """
    n = len(labels)
    fig = _figure(max(4.2, 1.1 * n + 2.2), 3.0)
    ax = fig.add_subplot(111)
    x = np.arange(n, dtype=float)
    parts = []
    drawn = False
    for (name, colour, marker, style), vals in zip(SOD_SERIES, (sod_ti_mm, sod_tni_mm, sod_targets_mm)):
        y = np.array([np.nan if to_float(v) is None else float(v) for v in vals], float)
        if len(y) != n:
            raise ValueError(f"{name}: {len(y)} values for {n} timepoints")
        if np.isfinite(y).any():
            ax.plot(x, y, linestyle=style, marker=marker, color=colour, label=name, linewidth=1.6)
            drawn = True
        parts.append(name.split(" (")[0] + " " + ", ".join(
            "NE" if not math.isfinite(v) else f"{v:.1f}" for v in y) + " mm")
    if current is not None and 0 <= current < n:
        ax.axvline(current, color=OKABE_ITO["grey"], linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_xlim(-0.4, max(n - 0.6, 0.4))
    ax.set_ylabel("sum of diameters (mm)")
    ax.set_ylim(bottom=0)
    if drawn:
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(0.5, 0.5, "no evaluable sum", ha="center", va="center", transform=ax.transAxes)
    ax.spines[["top", "right"]].set_visible(False)
    alt = (f"Sum of diameters over {n} timepoint(s): " + "; ".join(parts) + ".")
    return fig_png(fig), alt
