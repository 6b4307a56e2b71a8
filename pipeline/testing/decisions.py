"""Synthetic lesion tables and synthetic team decisions, for the demo and the tests.

**Everything made here is synthetic**: every row carries ``synthetic = True`` and the decisions
name their ``policy``; the model card of a model trained on them says so. Nothing here describes
real patients or real team behaviour.

Lesion tables (:func:`synthetic_lesions`): many patients, ``lesions_per_patient`` lesions each,
with the columns of the cohort ``lesions.csv`` and of the needle-path, safety, biomarker and
sidecar producers (issues 3-5), drawn from plausible distributions (:data:`DISTRIBUTIONS`):
organ mix of metastatic disease (nodes, liver, soft tissue, lung; few adrenal, kidney, spleen,
bone, bowel, brain), log-normal longest diameters (median ~22 mm), short axis 60-100 % of it,
ellipsoid volume, skin depth by site, log-normal SUVmax with a non-avid fraction, some studies
without PET, capsule/pleura/vessel/diaphragm distances for the organs where they matter, and a
needle-path planner output for a fraction of the lesions (the rest fall back to skin depth).
These are simulation parameters, not decision thresholds; the site class (superficial vs deep)
uses the configuration's ``anatomy.superficial_depth_mm`` like the real pipeline.

Decisions (:func:`synthetic_decisions`), two policies:

* ``"expert"``: a hidden linear utility that differs from the rules: it favours FDG uptake and a
  short needle path, ``u = w_suv * SUVmax - w_depth * path_length_mm (+ w_size * longest
  diameter)``, plus Gaussian noise of SD ``noise``. Lesions without SUV use SUV 0 in the utility.
* ``"rules"``: the rules' own first choice (``rule_rank == 1``).

Both choose only among the lesions the rules call eligible (tier not not_suitable): a team does
not inject what the safety rules exclude, and the trained model is only asked to order eligible
lesions. ``chosen`` marks the first ``n_chosen`` lesions of the policy's order, ``chosen_rank``
numbers them 1..n_chosen.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.ranking.rules import rule_frame

#: Simulation parameters of :func:`synthetic_lesions` (probabilities, distribution parameters).
DISTRIBUTIONS: dict = {
    "organ_p": {
        "lymph_node": 0.27, "liver": 0.25, "soft_tissue": 0.18, "lung": 0.15, "adrenal": 0.03,
        "kidney": 0.03, "spleen": 0.02, "bone": 0.03, "bowel": 0.02, "brain": 0.02,
    },
    "longest_diameter_log_median_mm": 22.0,
    "longest_diameter_log_sd": 0.5,
    "short_axis_fraction": (0.6, 1.0),
    "skin_depth_mm": {  # uniform ranges by organ (soft tissue / node: mixture superficial/deep)
        "soft_tissue": (3.0, 70.0), "lymph_node": (4.0, 110.0), "liver": (25.0, 140.0),
        "lung": (15.0, 110.0), "adrenal": (70.0, 140.0), "kidney": (50.0, 120.0),
        "spleen": (40.0, 100.0), "bone": (15.0, 100.0), "bowel": (40.0, 120.0),
        "brain": (20.0, 70.0),
    },
    "suv_log_median": 6.0, "suv_log_sd": 0.5, "nonavid_p": 0.15, "nonavid_range": (1.0, 2.4),
    "no_pet_study_p": 0.1,
    "enhancement_hu": (40.0, 20.0),          # normal mean, sd
    "necrosis_beta": (1.5, 6.0),
    "noncontrast_cnr_log_median": 2.5, "noncontrast_cnr_log_sd": 0.6,
    "planner_p": 0.7,                        # lesions with a planned path from issue 4
    "safe_path_p": 0.95,
    "vessel_distance_mean_mm": 20.0,
    "vessel_caliber_mm": (2.0, 25.0),
    "intravascular_p_liver": 0.03,
    "exophytic_p_liver": 0.05,
    "sidecar_p": {"new_or_growing": 0.3, "biopsy_required": 0.1, "critical_compression": 0.05,
                  "prior_locoregional_therapy": 0.05},
}

_VESSELS = {
    "liver": ["portal_vein", "inferior_vena_cava", "hepatic_vein"],
    "lymph_node": ["aorta", "inferior_vena_cava", "iliac_artery", "small_branch"],
    "lung": ["pulmonary_artery", "small_branch"],
    "soft_tissue": ["small_branch", "femoral_artery"],
}


def synthetic_lesions(n_patients: int, *, seed: int = 0, lesions_per_patient: tuple[int, int] = (3, 10),
                      superficial_depth_mm: float | None = None,
                      distributions: dict | None = None) -> pd.DataFrame:
    """A synthetic cohort lesion table (one study per patient).

    Parameters
    ----------
    n_patients : int
    seed : int
        Seed of :func:`numpy.random.default_rng`; the table is a pure function of the arguments.
    lesions_per_patient : (int, int)
        Inclusive range of lesions per patient.
    superficial_depth_mm : float, optional
        Site-class split; default ``anatomy.superficial_depth_mm`` of the packaged configuration.
    distributions : dict, optional
        Overrides of :data:`DISTRIBUTIONS`.

    Returns
    -------
    DataFrame
        One row per lesion; ``synthetic`` is True everywhere.
    """
    if superficial_depth_mm is None:
        from pipeline.config import load_config

        superficial_depth_mm = float(load_config()["anatomy"]["superficial_depth_mm"])
    D = {**DISTRIBUTIONS, **(distributions or {})}
    rng = np.random.default_rng(seed)
    organs = list(D["organ_p"])
    p = np.array([D["organ_p"][o] for o in organs], dtype=float)
    p /= p.sum()
    rows = []
    for k in range(n_patients):
        pid = f"SYN{k + 1:04d}"
        study = f"2.25.{seed}.{k + 1}"
        has_pet = rng.random() >= D["no_pet_study_p"]
        n = int(rng.integers(lesions_per_patient[0], lesions_per_patient[1] + 1))
        for j in range(n):
            organ = str(rng.choice(organs, p=p))
            ld = float(np.exp(np.log(D["longest_diameter_log_median_mm"])
                              + D["longest_diameter_log_sd"] * rng.standard_normal()))
            ld = float(np.clip(ld, 4.0, 120.0))
            sa = ld * float(rng.uniform(*D["short_axis_fraction"]))
            third = sa * float(rng.uniform(0.8, 1.0))
            vol = np.pi / 6.0 * ld * sa * third / 1000.0
            lo, hi = D["skin_depth_mm"][organ]
            depth = float(rng.uniform(lo, hi))
            if organ in ("soft_tissue", "lymph_node", "muscle"):
                stem = "node" if organ == "lymph_node" else "soft_tissue"
                site = ("superficial_" if depth <= superficial_depth_mm else "deep_") + stem
            else:
                site = f"visceral:{organ}"
            if not has_pet:
                suv = np.nan
            elif rng.random() < D["nonavid_p"]:
                suv = float(rng.uniform(*D["nonavid_range"]))
            else:
                suv = float(np.exp(np.log(D["suv_log_median"]) + D["suv_log_sd"] * rng.standard_normal()))
            cx, cy, cz = rng.uniform(-150, 150), rng.uniform(-100, 100), rng.uniform(-300, 300)
            off = rng.normal(0.0, 0.15 * sa, size=3)
            nec = float(rng.beta(*D["necrosis_beta"])) * (1.0 + ld / 60.0)
            row = {
                "patient_id": pid, "study_uid": study, "study_date": "20240101",
                "lesion_id": f"{organ}_{j + 1}", "lesion_label": f"{organ}_{j + 1}",
                "tracking_uid": f"2.25.{seed}.{k + 1}.{j + 1}",
                "organ": organ, "site": site,
                "longest_diameter_mm": round(ld, 2), "short_axis_mm": round(sa, 2),
                "max_3d_diameter_mm": round(ld * 1.05, 2), "volume_ml": round(vol, 3),
                "centroid_x_mm": round(cx, 1), "centroid_y_mm": round(cy, 1),
                "centroid_z_mm": round(cz, 1), "skin_depth_mm": round(depth, 1),
                "suv_max": round(suv, 2) if np.isfinite(suv) else np.nan,
                "suv_peak": round(suv * float(rng.uniform(0.6, 0.95)), 2) if np.isfinite(suv) else np.nan,
                "suv_peak_x_mm": round(cx + off[0], 1) if np.isfinite(suv) else np.nan,
                "suv_peak_y_mm": round(cy + off[1], 1) if np.isfinite(suv) else np.nan,
                "suv_peak_z_mm": round(cz + off[2], 1) if np.isfinite(suv) else np.nan,
                "enhancement_hu": round(float(max(-5.0, rng.normal(*D["enhancement_hu"]))), 1),
                "necrosis_fraction": round(float(min(nec, 0.95)), 3),
                "noncontrast_cnr": round(float(np.exp(np.log(D["noncontrast_cnr_log_median"])
                                                      + D["noncontrast_cnr_log_sd"] * rng.standard_normal())), 2),
            }
            # organ-specific distances
            row["liver_capsule_distance_mm"] = round(float(rng.uniform(0, 50)), 1) if organ == "liver" else np.nan
            row["exophytic_fraction"] = (round(float(rng.uniform(0.15, 0.5)), 2)
                                         if organ == "liver" and rng.random() < D["exophytic_p_liver"]
                                         else (0.0 if organ == "liver" else np.nan))
            row["lung_pleura_distance_mm"] = round(float(rng.uniform(0, 50)), 1) if organ == "lung" else np.nan
            row["diaphragm_distance_mm"] = (round(float(rng.uniform(0, 90)), 1)
                                            if organ in ("liver", "lung", "spleen") else np.nan)
            vd = float(rng.exponential(D["vessel_distance_mean_mm"]))
            vd = 0.0 if vd < 1.0 else vd
            vname = str(rng.choice(_VESSELS.get(organ, ["small_branch"])))
            row["vessel_distance_mm"] = round(vd, 1)
            row["vessel_name"] = vname
            row["vessel_caliber_mm"] = round(float(rng.uniform(*D["vessel_caliber_mm"])), 1) \
                if vname != "small_branch" else round(float(rng.uniform(1.0, 3.0)), 1)
            row["vessel_relation"] = ("encasing" if vd == 0.0 and rng.random() < 0.3 else
                                      "abutting" if vd <= 2.0 else "none")
            row["intravascular_fraction"] = (round(float(rng.uniform(0.1, 0.3)), 2)
                                             if organ == "liver" and rng.random() < D["intravascular_p_liver"]
                                             else 0.0)
            # needle-path planner (issue 4) for part of the lesions
            if rng.random() < D["planner_p"]:
                row["path_length_mm"] = round(depth * float(rng.uniform(1.0, 1.4)), 1)
                row["safe_path_found"] = bool(rng.random() < D["safe_path_p"])
                row["us_window"] = bool(site.startswith("superficial") or
                                        (organ == "liver" and rng.random() < 0.5))
                row["aerated_lung_path_mm"] = (round(row["lung_pleura_distance_mm"] * float(rng.uniform(1.0, 1.3)), 1)
                                               if organ == "lung" else 0.0)
            else:
                row["path_length_mm"] = np.nan
                row["safe_path_found"] = None
                row["us_window"] = None
                row["aerated_lung_path_mm"] = np.nan
            for c, pc in D["sidecar_p"].items():
                row[c] = bool(rng.random() < pc)
            row["organ_reason"] = "synthetic"
            row["synthetic"] = True
            rows.append(row)
    df = pd.DataFrame(rows)
    for c in ("safe_path_found", "us_window"):
        df[c] = df[c].astype(object)
    return df


def expert_utility(frame: pd.DataFrame, *, w_suv: float = 0.6, w_depth: float = 0.05,
                   w_size: float = 0.0) -> np.ndarray:
    """The hidden linear utility of the synthetic expert (before noise).

    ``frame`` is a :func:`pipeline.ranking.rules.rule_frame` (``path_length_mm`` derived).
    """
    suv = pd.to_numeric(frame["suv_max"], errors="coerce").fillna(0.0).to_numpy()
    depth = pd.to_numeric(frame["path_length_mm"], errors="coerce").fillna(150.0).to_numpy()
    size = pd.to_numeric(frame["longest_diameter_mm"], errors="coerce").fillna(0.0).to_numpy()
    return w_suv * suv - w_depth * depth + w_size * size


def synthetic_decisions(lesions: pd.DataFrame, cfg_ranking: dict, *, policy: str = "expert",
                        noise: float = 0.2, n_chosen: int = 1, seed: int = 0,
                        weights: dict | None = None) -> pd.DataFrame:
    """Synthetic team decisions on a lesion table.

    Parameters
    ----------
    lesions : DataFrame
        E.g. from :func:`synthetic_lesions`.
    cfg_ranking : dict
        ``ranking`` configuration (eligibility and the rules policy).
    policy : {"expert", "rules"}
        See the module docstring.
    noise : float
        SD of the Gaussian noise added to the expert utility (ignored for "rules").
    n_chosen : int
        Lesions chosen per study (``chosen`` = 1, ``chosen_rank`` 1..n_chosen).
    seed : int
    weights : dict, optional
        ``w_suv``, ``w_depth``, ``w_size`` of :func:`expert_utility`.

    Returns
    -------
    DataFrame
        ``patient_id``, ``study_uid``, ``lesion_id``, ``chosen`` (0/1), ``chosen_rank``
        (nullable int), ``policy``, ``synthetic`` (True). Studies without an eligible lesion
        have no chosen lesion.
    """
    if policy not in ("expert", "rules"):
        raise ValueError(f"unknown policy {policy!r}: expected 'expert' or 'rules'")
    rng = np.random.default_rng(seed)
    fr = rule_frame(lesions, cfg_ranking)
    if policy == "expert":
        u = expert_utility(fr, **(weights or {})) + noise * rng.standard_normal(len(fr))
    else:
        u = -pd.to_numeric(fr["rule_rank"], errors="coerce").fillna(1e9).to_numpy(dtype=float)
    fr["_u"] = u
    fr["chosen"] = 0
    fr["chosen_rank"] = pd.Series(pd.NA, index=fr.index, dtype="Int64")
    for _, g in fr.groupby(["patient_id", "study_uid"], sort=False):
        elig = g[g["eligible"]].sort_values(["_u", "lesion_id"], ascending=[False, True])
        for r, i in enumerate(elig.index[:n_chosen], start=1):
            fr.at[i, "chosen"] = 1
            fr.at[i, "chosen_rank"] = r
    out = fr[["patient_id", "study_uid", "lesion_id", "chosen", "chosen_rank"]].copy()
    out["policy"] = policy
    out["synthetic"] = True
    return out.reset_index(drop=True)


def synthetic_role_decisions(lesions: pd.DataFrame, cfg_ranking: dict, *, policy: str = "expert",
                             noise: float = 0.2, n_monitor: int = 2, seed: int = 0) -> pd.DataFrame:
    """Synthetic team roles (inject / monitor / none), as the review app's ``decisions.csv``.

    ``"rules"``: the rules' own roles (:func:`pipeline.ranking.select.rank_study` of each study).
    ``"expert"``: inject the first choice of :func:`synthetic_decisions` (expert policy); monitor,
    among the other lesions of at least 10 mm, the ``n_monitor`` of highest hidden utility
    ``SUVmax (0 without PET) + 0.05 x longest diameter (mm)`` plus Gaussian noise of SD
    ``noise`` (the rules instead prefer other organs than the injected one, then size).

    Returns
    -------
    DataFrame
        ``patient_id``, ``study_uid``, ``lesion_id``, ``chosen`` (1 = inject), ``role``,
        ``policy``, ``synthetic`` (True); one row per lesion.
    """
    from pipeline.ranking.train_cli import rules_roles

    if policy == "rules":
        out = rules_roles(lesions, cfg_ranking).rename(columns={"rules_role": "role"})
        out = out[["patient_id", "study_uid", "lesion_id", "role"]].copy()
    elif policy == "expert":
        rng = np.random.default_rng(seed)
        inj = synthetic_decisions(lesions, cfg_ranking, policy="expert", noise=noise, seed=seed)
        fr = lesions[["patient_id", "study_uid", "lesion_id"]].astype(str).copy()
        fr["chosen"] = inj["chosen"].to_numpy()
        suv = pd.to_numeric(lesions["suv_max"], errors="coerce").fillna(0.0).to_numpy()
        ld = pd.to_numeric(lesions["longest_diameter_mm"], errors="coerce").fillna(0.0).to_numpy()
        fr["_u"] = suv + 0.05 * ld + noise * rng.standard_normal(len(fr))
        fr["_ok"] = (ld >= 10.0) & (fr["chosen"].to_numpy() == 0)
        fr["role"] = np.where(fr["chosen"] == 1, "inject", "none")
        for _, g in fr.groupby(["patient_id", "study_uid"], sort=False):
            cand = g[g["_ok"]].sort_values(["_u", "lesion_id"], ascending=[False, True])
            fr.loc[cand.index[:n_monitor], "role"] = "monitor"
        out = fr[["patient_id", "study_uid", "lesion_id", "role"]].copy()
    else:
        raise ValueError(f"unknown policy {policy!r}: expected 'expert' or 'rules'")
    out["chosen"] = (out["role"] == "inject").astype(int)
    out["policy"] = policy
    out["synthetic"] = True
    return out.reset_index(drop=True)
