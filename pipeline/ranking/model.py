"""Learning to rank on the team's past choices, compared with the rules on the same folds.

Inputs
------
* A lesion table (the cohort ``lesions.csv``: one row per lesion, ``patient_id``,
  ``study_uid``, ``lesion_id`` and the feature columns).
* A decisions table (CSV): ``patient_id``, ``study_uid``, ``lesion_id`` and ``chosen`` (0/1)
  and/or ``chosen_rank`` (1 = first choice, 2 ..., empty = not chosen). A study is used when at
  least one of its lesions was chosen; lesions of a used study without a decision row count as
  not chosen. Relevance: with ``chosen_rank``, ``max_rank + 1 - rank`` for ranked lesions and 0
  otherwise; else ``chosen``.

Features (``ranking.training`` in the configuration, documented there)
----------------------------------------------------------------------
``numeric_features``: lesion measurements and the rules' own outputs (``rule_score``, the stage
scores, ``tier_order``, ``rule_utility``, ``needle_hit_probability`` and ``rule_rank``, the
lesion's position in the rules' order within its study), so that a team that follows the rules is
learnt from one feature and the model only has to learn where the team departs from them.
``boolean_features`` (as 1/0) and ``categorical_features`` (one-hot ``organ`` and ``site``,
unseen categories ignored). Missing values are imputed with the training median and an indicator
column is added for every feature that had missing values in training (so "not measured" can
carry information). Numeric features are standardised. Features absent from the whole training
table are dropped and listed in the model card.

Model and why
-------------
Pairwise logistic regression (RankSVM-style, with a logistic loss) with an L1 penalty
(``training.C``, ``training.l1_ratio``): for every pair of eligible lesions of one study whose
relevance differs, the difference of their feature vectors is a training example labelled by
which one the team preferred (both orientations, no intercept). The learnt weight vector is a
utility whose order within a study is the ranking. Chosen over pointwise gradient boosting
because (a) only the relative preference inside a study is meaningful: a pointwise model must also
explain why some studies have several good candidates, the pairwise one does not; (b) teams
provide tens to hundreds of studies, where a regularised linear model is stable and boosting
overfits; (c) the L1 penalty keeps only the few features that carry the team's preference (on
synthetic data with ~60 transformed features it raised held-out top-1 from ~0.84 to ~0.93 over
L2), and the coefficients are readable in the model card; (d) it is deterministic (liblinear,
fixed random_state, no shuffling).

Eligibility and safety
----------------------
The model only orders lesions the rules call eligible (tier not not_suitable: hard exclusions,
``cap_tier: not_suitable`` and a rule score below the board_review threshold). Training pairs use
eligible lesions only; in evaluation the ordering ranks eligible lesions only, so a chosen
lesion the rules exclude is a miss for both the model and the rule baseline (counted in the card
as ``n_chosen_not_eligible``). In :func:`pipeline.ranking.select.rank_study` the tiers, board
flags, explanations and set rules stay those of the rules.

Injection and monitoring (decisions with a ``role`` column)
-----------------------------------------------------------
Two rankers, not one with the role as target: the injection ranker above (eligible lesions,
relevance = injected) and a monitoring ranker of the same kind and features trained on the
lesions the team did not inject (relevance = monitored). Why two: injection and monitoring are
different preferences (injection: reachable, safe, viable, big enough for the needle; monitoring:
measurable and representative of the non-injected disease); an ordinal target inject > monitor >
none would force a good monitoring lesion to be "half a good injection target", which it is not
(a large deep liver metastasis is a poor target and an ideal lesion to monitor). The monitoring
choice is conditional on the injection one, as in the workflow (:mod:`pipeline.ranking.select`
monitors among the non-injected lesions). Evaluation on held-out patients (GroupKFold by patient
over the studies with team roles): per study the roles predicted by the two rankers, given the
rules' numbers of injected and monitored lesions (equal set sizes), and the rules' own roles
(:func:`pipeline.ranking.select.rank_study` without a model, computed by
:func:`pipeline.ranking.train_cli.rules_roles` and passed in, since the selection imports this
module) are compared with the team's: role
agreement (share of lesions), Jaccard of the injected and of the monitored sets. The workflow's
rank step uses the injection ranker; the monitoring ranker is saved with it
(``ranker.monitor_ranker``) and reported, the monitoring set of the worksheet stays the rules'.
:func:`rules_excluded_choices` counts the team's choices the rules exclude, per rule.

Evaluation
----------
Grouped cross-validation by patient (:class:`sklearn.model_selection.GroupKFold`, no shuffling:
deterministic) over the used studies. Per fold: **top-1 agreement** (the first eligible lesion of
the ordering is a lesion of the highest relevance, i.e. the team's first choice) and **NDCG@k**
(gain ``2^rel - 1``, only ranked (eligible) lesions contribute, ideal DCG over all lesions of the
study), for the model and for the rule baseline (``rule_rank``) on the same test studies. The
final model is then fitted on all used studies.

Security: a model file is a pickle (joblib); load only model files you trust.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError
from pipeline.ranking.rules import as_bool, rule_frame

log = logging.getLogger(__name__)

MODEL_FORMAT = 1
KEYS = ["patient_id", "study_uid", "lesion_id"]


#: Keys of ``ranking.training`` that list lesion-table columns.
FEATURE_KEYS = ("numeric_features", "boolean_features", "categorical_features")


def undeclared_features(cfg_ranking: dict) -> list[tuple[str, str]]:
    """(``training.<key>``, column) for each configured feature that no producer writes
    (:func:`pipeline.columns.feature_readable_columns`); :mod:`pipeline.config` rejects them."""
    from pipeline.columns import feature_readable_columns

    ok = set(feature_readable_columns())
    t = cfg_ranking.get("training") or {}
    return [(k, f) for k in FEATURE_KEYS for f in (t.get(k) or []) if f not in ok]


def rules_hash(cfg_ranking: dict) -> str:
    """SHA-256 of the settings the rule features depend on (rules, scores, needle, target)."""
    keys = ("rules", "stage_base_score", "stage_weights", "tier_min_score", "needle", "target_point")
    blob = json.dumps({k: cfg_ranking.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("hitit-pipeline", "scikit-learn", "numpy", "pandas", "scipy", "joblib"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class PairwiseRanker:
    """Pairwise logistic-regression ranker (see the module docstring).

    Parameters
    ----------
    numeric, boolean, categorical : list of str
        Feature columns (``ranking.training``).
    C : float
        Inverse L2 regularisation strength of :class:`sklearn.linear_model.LogisticRegression`.
    """

    name = "pairwise-logistic"

    def __init__(self, numeric: list[str], boolean: list[str], categorical: list[str],
                 C: float = 1.0, l1_ratio: float = 1.0) -> None:
        self.numeric = list(numeric)
        self.l1_ratio = float(l1_ratio)
        self.boolean = list(boolean)
        self.categorical = list(categorical)
        self.C = float(C)
        self.card: dict = {}

    # ------------------------------------------------------------------ features
    def _frame(self, X: pd.DataFrame, numeric: list[str], boolean: list[str],
               categorical: list[str]) -> pd.DataFrame:
        out = pd.DataFrame(index=X.index)
        for c in numeric:
            out[c] = pd.to_numeric(X[c], errors="coerce") if c in X.columns else np.nan
        for c in boolean:
            if c in X.columns:
                out[c] = [np.nan if (b := as_bool(v)) is None else float(b) for v in X[c]]
            else:
                out[c] = np.nan
        for c in categorical:
            out[c] = (X[c].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v))
                               else str(v)) if c in X.columns else "")
        return out

    def fit(self, X: pd.DataFrame, group: np.ndarray, relevance: np.ndarray) -> PairwiseRanker:
        """Fit on lesion rows (already restricted to eligible lesions).

        Parameters
        ----------
        X : DataFrame
            Lesion rows with the feature columns (a :func:`rule_frame`).
        group : array
            Study key per row; pairs are formed within a group.
        relevance : array
            Relevance per row (higher = preferred).
        """
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        full = self._frame(X, self.numeric, self.boolean, self.categorical)
        self.numeric_used_ = [c for c in self.numeric if full[c].notna().any()]
        self.boolean_used_ = [c for c in self.boolean if full[c].notna().any()]
        self.categorical_used_ = [c for c in self.categorical if (full[c] != "").any()]
        self.unused_ = sorted(set(self.numeric + self.boolean + self.categorical)
                              - set(self.numeric_used_ + self.boolean_used_ + self.categorical_used_))
        num = self.numeric_used_ + self.boolean_used_
        transformers = []
        if num:
            transformers.append(("num", make_pipeline(
                SimpleImputer(strategy="median", add_indicator=True),
                StandardScaler()), num))
        if self.categorical_used_:
            transformers.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                                 self.categorical_used_))
        if not transformers:
            raise ConfigError("no usable feature: every configured training feature is absent or empty",
                              hint="check ranking.training.*_features against the lesion table")
        self.pre_ = ColumnTransformer(transformers, remainder="drop")
        Z = self.pre_.fit_transform(full[num + self.categorical_used_])
        diffs = []
        rel = np.asarray(relevance, dtype=float)
        grp = np.asarray(group)
        order = pd.Series(np.arange(len(grp))).groupby(grp, sort=True).indices
        for _, idx in sorted(order.items(), key=lambda kv: str(kv[0])):
            for a in range(len(idx)):
                for b in range(a + 1, len(idx)):
                    i, j = idx[a], idx[b]
                    if rel[i] > rel[j]:
                        diffs.append(Z[i] - Z[j])
                    elif rel[j] > rel[i]:
                        diffs.append(Z[j] - Z[i])
        if not diffs:
            raise ConfigError("no training pair: no study has eligible lesions with different "
                              "choices", hint="check the decisions file (chosen / chosen_rank)")
        D = np.vstack(diffs)
        Xp = np.vstack([D, -D])
        yp = np.r_[np.ones(len(D)), np.zeros(len(D))]
        solver = "liblinear" if self.l1_ratio in (0.0, 1.0) else "saga"
        self.lr_ = LogisticRegression(C=self.C, l1_ratio=self.l1_ratio, solver=solver,
                                      fit_intercept=False, max_iter=5000, random_state=0)
        self.lr_.fit(Xp, yp)
        self.n_pairs_ = len(D)
        return self

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        """Utility per lesion row (higher = preferred); only the order within a study matters."""
        num = self.numeric_used_ + self.boolean_used_
        f = self._frame(X, self.numeric_used_, self.boolean_used_, self.categorical_used_)
        Z = self.pre_.transform(f[num + self.categorical_used_])
        return np.asarray(Z @ self.lr_.coef_.ravel(), dtype=float)

    def feature_names(self) -> list[str]:
        """Names of the transformed features (after imputation indicators and one-hot)."""
        return [str(n) for n in self.pre_.get_feature_names_out()]

    def coefficients(self) -> dict[str, float]:
        """Transformed feature -> weight, largest magnitude first."""
        pairs = zip(self.feature_names(), self.lr_.coef_.ravel())
        return {k: round(float(v), 6) for k, v in sorted(pairs, key=lambda kv: -abs(kv[1]))}


# ---------------------------------------------------------------------------- data
def str_keys(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with the key columns (:data:`KEYS`) as strings ("" when missing)."""
    df = df.copy()
    for k in KEYS:
        df[k] = df[k].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    return df


def training_table(lesions: pd.DataFrame, decisions: pd.DataFrame, cfg_ranking: dict) -> pd.DataFrame:
    """Rule frame of the lesions with the decisions' relevance.

    Returns
    -------
    DataFrame
        :func:`pipeline.ranking.rules.rule_frame` columns plus ``study_key``, ``relevance``,
        ``used`` (the study has a chosen lesion). ``attrs`` holds ``unmatched_decisions``.

    Raises
    ------
    ConfigError
        Missing key columns, or neither ``chosen`` nor ``chosen_rank``.
    """
    for name, df, need in (("lesions", lesions, KEYS), ("decisions", decisions, KEYS)):
        miss = [c for c in need if c not in df.columns]
        if miss:
            raise ConfigError(f"{name} table lacks column(s) {miss}")
    if "chosen" not in decisions.columns and "chosen_rank" not in decisions.columns:
        raise ConfigError("decisions table needs a 'chosen' (0/1) or a 'chosen_rank' column")
    les = str_keys(lesions)
    dec = str_keys(decisions)
    if les.duplicated(KEYS).any():
        first = les[les.duplicated(KEYS)].iloc[0]
        raise ConfigError(f"lesions table has several rows for lesion {first['lesion_id']} of "
                          f"study {first['study_uid']}")
    if dec.duplicated(KEYS).any():
        first = dec[dec.duplicated(KEYS)].iloc[0]
        raise ConfigError(f"decisions table has several rows for lesion {first['lesion_id']} of "
                          f"study {first['study_uid']}")
    fr = rule_frame(les, cfg_ranking)
    keep = [c for c in ("chosen", "chosen_rank") if c in dec.columns]
    d = dec[KEYS + keep].copy()
    if "role" in dec.columns:  # decisions.csv of the review app: inject / monitor / none
        d["team_role"] = dec["role"].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v))
                                         else str(v).strip())
    d["_has_decision"] = True
    fr = fr.merge(d, on=KEYS, how="left", validate="one_to_one")
    fr["_has_decision"] = fr["_has_decision"].eq(True)
    unmatched = len(dec) - int(fr["_has_decision"].sum())
    fr["study_key"] = fr["patient_id"] + "|" + fr["study_uid"]
    chosen = pd.to_numeric(fr["chosen"], errors="coerce") if "chosen" in fr else pd.Series(np.nan, index=fr.index)
    rank = pd.to_numeric(fr["chosen_rank"], errors="coerce") if "chosen_rank" in fr else pd.Series(np.nan, index=fr.index)
    rel = pd.Series(0.0, index=fr.index)
    used = pd.Series(False, index=fr.index)
    for idx in fr.groupby("study_key", sort=False).groups.values():
        if not fr.loc[idx, "_has_decision"].any():
            continue
        r = rank.loc[idx]
        if r.notna().any():
            rel.loc[idx] = np.where(r.notna(), r.max() + 1 - r, 0.0)
        else:
            rel.loc[idx] = chosen.loc[idx].fillna(0.0).clip(lower=0.0)
        used.loc[idx] = bool((rel.loc[idx] > 0).any())
    fr["relevance"] = rel.astype(float)
    fr["used"] = used
    if "team_role" in fr.columns:
        fr["team_role"] = fr["team_role"].fillna("").astype(str)
    fr.attrs["unmatched_decisions"] = unmatched
    return fr


# ---------------------------------------------------------------------------- metrics
def ranked_order(eligible: np.ndarray, score: np.ndarray, lesion_ids: np.ndarray, *,
                 higher_first: bool) -> np.ndarray:
    """Positions of the eligible lesions of one study in ranked order (ties by lesion_id)."""
    pos = np.flatnonzero(np.asarray(eligible, dtype=bool))
    if not len(pos):
        return pos
    s = np.asarray(score, dtype=float)[pos]
    key = -s if higher_first else s
    order = np.lexsort((np.asarray(lesion_ids)[pos].astype(str), key))
    return pos[order]


def study_metrics(relevance: np.ndarray, order: np.ndarray, k: int) -> tuple[float, float]:
    """(top-1 agreement, NDCG@k) of one study.

    Parameters
    ----------
    relevance : array
        Relevance of every lesion of the study.
    order : array
        Positions of the ranked (eligible) lesions, best first.
    k : int
    """
    rel = np.asarray(relevance, dtype=float)
    best = rel.max() if len(rel) else 0.0
    top1 = float(len(order) > 0 and best > 0 and rel[order[0]] == best)
    gains = 2.0 ** rel[order[:k]] - 1.0
    dcg = float(np.sum(gains / np.log2(np.arange(2, len(gains) + 2))))
    ideal = np.sort(rel)[::-1][:k]
    idcg = float(np.sum((2.0 ** ideal - 1.0) / np.log2(np.arange(2, len(ideal) + 2))))
    return top1, (dcg / idcg if idcg > 0 else 0.0)


def cross_validate(fr: pd.DataFrame, cfg_ranking: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Grouped CV by patient: model vs rule baseline on the same folds.

    Returns
    -------
    per_study : DataFrame
        fold, patient_id, study_uid, model_top1, rules_top1, model_ndcg, rules_ndcg.
    per_fold : DataFrame
        fold, n_patients, n_studies, and the four means.
    """
    from sklearn.model_selection import GroupKFold

    t = cfg_ranking["training"]
    k = int(t["ndcg_k"])
    data = fr[fr["used"]].copy()
    patients = sorted(data["patient_id"].unique())
    n_splits = min(int(t["n_splits"]), len(patients))
    if n_splits < 2:
        raise ConfigError(f"cross-validation needs decisions for at least 2 patients, found {len(patients)}")
    # deterministic fold assignment independent of row order: sort by patient then study
    data = data.sort_values(["patient_id", "study_uid", "lesion_id"]).reset_index(drop=True)
    rows, folds = [], []
    gkf = GroupKFold(n_splits=n_splits)
    for fold, (tr, te) in enumerate(gkf.split(data, groups=data["patient_id"]), start=1):
        train, test = data.iloc[tr], data.iloc[te]
        tr_el = train[train["eligible"]]
        ranker = PairwiseRanker(t["numeric_features"], t["boolean_features"],
                                t["categorical_features"], C=t["C"], l1_ratio=t["l1_ratio"])
        ranker.fit(tr_el, tr_el["study_key"].to_numpy(), tr_el["relevance"].to_numpy())
        score = pd.Series(np.nan, index=test.index)
        el = test[test["eligible"]]
        if len(el):
            score.loc[el.index] = ranker.decision_function(el)
        rule_rank = pd.to_numeric(test["rule_rank"], errors="coerce").to_numpy(dtype=float)
        sc = score.to_numpy(dtype=float)
        elig = test["eligible"].to_numpy(dtype=bool)
        rel = test["relevance"].to_numpy(dtype=float)
        lids = test["lesion_id"].to_numpy()
        fold_rows = []
        for key, idx in sorted(test.groupby("study_key", sort=False).indices.items()):
            m1, mn = study_metrics(rel[idx], ranked_order(elig[idx], sc[idx], lids[idx],
                                                          higher_first=True), k)
            r1, rn = study_metrics(rel[idx], ranked_order(elig[idx], rule_rank[idx], lids[idx],
                                                          higher_first=False), k)
            fold_rows.append({"fold": fold, "patient_id": test["patient_id"].iat[idx[0]],
                              "study_uid": test["study_uid"].iat[idx[0]], "model_top1": m1,
                              "rules_top1": r1, f"model_ndcg@{k}": mn, f"rules_ndcg@{k}": rn})
        fr_df = pd.DataFrame(fold_rows)
        rows += fold_rows
        folds.append({
            "fold": fold, "n_patients": int(test["patient_id"].nunique()),
            "n_studies": len(fr_df),
            "model_top1": round(float(fr_df["model_top1"].mean()), 4),
            "rules_top1": round(float(fr_df["rules_top1"].mean()), 4),
            f"model_ndcg@{k}": round(float(fr_df[f"model_ndcg@{k}"].mean()), 4),
            f"rules_ndcg@{k}": round(float(fr_df[f"rules_ndcg@{k}"].mean()), 4),
        })
    return pd.DataFrame(rows), pd.DataFrame(folds)


# ---------------------------------------------------------------------------- roles
ROLE_METRICS = ("role_agreement", "inject_jaccard", "monitor_jaccard")


def exclusion_codes(cfg_ranking: dict) -> set[str]:
    """Codes of the rules that make a lesion not_suitable (``exclude`` or ``cap_tier:
    not_suitable``)."""
    out = set()
    for r in cfg_ranking.get("rules") or []:
        e = r.get("effect") or {}
        if e.get("exclude") or e.get("cap_tier") == "not_suitable":
            out.add(str(r["code"]))
    return out


def role_table(fr: pd.DataFrame, roles: pd.DataFrame) -> pd.DataFrame:
    """Lesions of the studies in which the team decided at least one role, with ``team_role``
    (an undecided lesion of such a study counts as ``none``), ``rules_role`` and
    ``monitor_relevance`` (1 = the team monitors it)."""
    if "team_role" not in fr.columns:
        return fr.iloc[0:0].assign(rules_role="", monitor_relevance=0.0)
    decided = fr.groupby("study_key")["team_role"].transform(lambda s: (s != "").any())
    t = fr[decided].merge(roles, on=KEYS, how="left")
    t["team_role"] = t["team_role"].replace("", "none")
    t["rules_role"] = t["rules_role"].fillna("none")
    t["monitor_relevance"] = (t["team_role"] == "monitor").astype(float)
    return t.reset_index(drop=True)


def _ranker(t: dict) -> PairwiseRanker:
    return PairwiseRanker(t["numeric_features"], t["boolean_features"], t["categorical_features"],
                          C=t["C"], l1_ratio=t["l1_ratio"])


def fit_monitor(data: pd.DataFrame, t: dict) -> PairwiseRanker | None:
    """Pairwise ranker of the team's monitoring choice among the lesions it did not inject
    (None when no study has both a monitored and an unmonitored candidate)."""
    cand = data[data["team_role"] != "inject"]
    try:
        return _ranker(t).fit(cand, cand["study_key"].to_numpy(), cand["monitor_relevance"].to_numpy())
    except ConfigError:
        return None


def _jaccard(a: set, b: set) -> float:
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def predict_roles(study: pd.DataFrame, inj: PairwiseRanker | None, mon: PairwiseRanker | None) -> np.ndarray:
    """Roles of one study's lesions by the two rankers, with the rules' numbers of injected and
    monitored lesions (so that model and rules are compared at the same set sizes): inject the
    eligible lesions first in the injection ranker's order, then monitor the remaining lesions
    first in the monitoring ranker's order (the rules' own choice when a ranker is missing)."""
    n_inj = int((study["rules_role"] == "inject").sum())
    n_mon = int((study["rules_role"] == "monitor").sum())
    role = np.array(["none"] * len(study), dtype=object)
    lids = study["lesion_id"].to_numpy()
    elig = study["eligible"].to_numpy(dtype=bool)
    if inj is None:
        role[(study["rules_role"] == "inject").to_numpy()] = "inject"
    elif n_inj and elig.any():
        sc = np.full(len(study), np.nan)
        sc[elig] = inj.decision_function(study[elig])
        role[ranked_order(elig, sc, lids, higher_first=True)[:n_inj]] = "inject"
    rest = role != "inject"
    if mon is None:
        role[rest & (study["rules_role"] == "monitor").to_numpy()] = "monitor"
    elif n_mon and rest.any():
        sc = np.full(len(study), np.nan)
        sc[rest] = mon.decision_function(study[rest])
        role[ranked_order(rest, sc, lids, higher_first=True)[:n_mon]] = "monitor"
    return role


def role_metrics(team: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Per study: share of lesions with the team's role, Jaccard of the injected and of the
    monitored sets (1 when both are empty)."""
    team, pred = np.asarray(team), np.asarray(pred)
    out = {"role_agreement": float(np.mean(team == pred)) if len(team) else 1.0}
    for r in ("inject", "monitor"):
        out[f"{r}_jaccard"] = _jaccard(set(np.flatnonzero(team == r)), set(np.flatnonzero(pred == r)))
    return out


def cross_validate_roles(rt: pd.DataFrame, cfg_ranking: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """GroupKFold by patient over the studies with team roles: per held-out study, the roles of
    the two rankers (fitted on the other patients) and the rules' roles against the team's.

    Returns
    -------
    per_study, per_fold : DataFrame
        ``model_<metric>`` and ``rules_<metric>`` for each of :data:`ROLE_METRICS`.
    """
    from sklearn.model_selection import GroupKFold

    t = cfg_ranking["training"]
    data = rt.sort_values(["patient_id", "study_uid", "lesion_id"]).reset_index(drop=True)
    patients = data["patient_id"].nunique()
    n_splits = min(int(t["n_splits"]), patients)
    if n_splits < 2:
        raise ConfigError(f"role cross-validation needs decisions for at least 2 patients, found {patients}")
    rows, folds = [], []
    for fold, (tr, te) in enumerate(GroupKFold(n_splits=n_splits).split(data, groups=data["patient_id"]), 1):
        train, test = data.iloc[tr], data.iloc[te]
        tr_el = train[train["eligible"] & train["used"]]
        try:
            inj = _ranker(t).fit(tr_el, tr_el["study_key"].to_numpy(), tr_el["relevance"].to_numpy())
        except ConfigError:
            inj = None
        mon = fit_monitor(train, t)
        fold_rows = []
        for _, st in test.groupby("study_key", sort=True):
            team = st["team_role"].to_numpy()
            m = role_metrics(team, predict_roles(st, inj, mon))
            r = role_metrics(team, st["rules_role"].to_numpy())
            fold_rows.append({"fold": fold, "patient_id": st["patient_id"].iat[0],
                              "study_uid": st["study_uid"].iat[0],
                              **{f"model_{k}": v for k, v in m.items()},
                              **{f"rules_{k}": v for k, v in r.items()},
                              "injection_ranker": inj is not None, "monitoring_ranker": mon is not None})
        df = pd.DataFrame(fold_rows)
        rows += fold_rows
        folds.append({"fold": fold, "n_patients": int(test["patient_id"].nunique()), "n_studies": len(df),
                      **{f"{w}_{k}": round(float(df[f"{w}_{k}"].mean()), 4)
                         for k in ROLE_METRICS for w in ("model", "rules")}})
    return pd.DataFrame(rows), pd.DataFrame(folds)


def rules_excluded_choices(fr: pd.DataFrame, rt: pd.DataFrame | None, cfg_ranking: dict) -> dict:
    """How often the team chose a lesion the rules exclude, and which rules.

    Injection: a lesion the team injects (``team_role`` inject, else ``chosen`` / ``chosen_rank``)
    whose rule tier is not_suitable, counted per exclusion rule fired (``exclude`` or ``cap_tier:
    not_suitable``; ``score below the board_review threshold`` when none fired). Monitoring: a
    lesion the team monitors that RECIST 1.1 calls not measurable (the rules never monitor it).
    """
    if "team_role" in fr.columns and (fr["team_role"] != "").any():
        inj = fr[fr["team_role"] == "inject"]
    else:
        inj = fr[fr["relevance"] > 0]
    excl = exclusion_codes(cfg_ranking)
    bad = inj[~inj["eligible"].astype(bool)]
    by_rule: dict[str, int] = {}
    lesions = []
    for r in bad.itertuples():
        codes = [c for c in str(r.fired or "").split(";") if c in excl] or ["score below the board_review threshold"]
        for c in codes:
            by_rule[c] = by_rule.get(c, 0) + 1
        lesions.append({"patient_id": r.patient_id, "study_uid": r.study_uid, "lesion_id": r.lesion_id,
                        "tier": r.tier, "rules": codes})
    out = {"injection": {"n_team_injected": len(inj), "n_rules_exclude": len(bad),
                         "pct": round(100.0 * len(bad) / len(inj), 2) if len(inj) else None,
                         "by_rule": dict(sorted(by_rule.items(), key=lambda kv: (-kv[1], kv[0]))),
                         "lesions": lesions}}
    if rt is not None and len(rt):
        mon = rt[rt["team_role"] == "monitor"]
        nm = mon[~mon["rules_measurable"].fillna(False).astype(bool)]
        out["monitoring"] = {"n_team_monitored": len(mon), "n_not_measurable": len(nm),
                             "pct": round(100.0 * len(nm) / len(mon), 2) if len(mon) else None,
                             "lesions": nm[KEYS].to_dict(orient="records")}
    return out


# ---------------------------------------------------------------------------- training
def _sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _frame_sha256(df: pd.DataFrame) -> str:
    return _sha256_bytes(df.to_csv(index=False).encode())


def _is_synthetic(*dfs: pd.DataFrame) -> bool:
    for df in dfs:
        if "synthetic" in df.columns and any(as_bool(v) for v in df["synthetic"]):
            return True
    return False


def train(lesions: pd.DataFrame, decisions: pd.DataFrame, cfg_ranking: dict, *,
          input_hashes: dict | None = None,
          rules_roles: pd.DataFrame | None = None) -> tuple[PairwiseRanker, dict, pd.DataFrame]:
    """Cross-validate, then fit the final model on all used studies.

    Parameters
    ----------
    lesions, decisions : DataFrame
        See the module docstring.
    cfg_ranking : dict
        Validated ``ranking`` section (``training`` and the rules for the baseline/features).
    input_hashes : dict, optional
        ``{"lesions": {...}, "decisions": {...}}`` file descriptions with ``sha256``; default:
        SHA-256 of the tables' CSV text.
    rules_roles : DataFrame, optional
        The rules' own roles (``patient_id``, ``study_uid``, ``lesion_id``, ``rules_role``,
        ``rules_measurable``: :func:`pipeline.ranking.train_cli.rules_roles`, which runs the
        workflow's selection). With it and decisions carrying a ``role`` column, the monitoring
        ranker is trained and both roles are evaluated against the rules (card ``roles``).

    Returns
    -------
    (ranker, card, per_study_cv)
        The fitted :class:`PairwiseRanker` (with ``ranker.card`` = card), the model card dict,
        and the per-study cross-validation results.
    """
    t = cfg_ranking["training"]
    k = int(t["ndcg_k"])
    fr = training_table(lesions, decisions, cfg_ranking)
    per_study, per_fold = cross_validate(fr, cfg_ranking)
    data = fr[fr["used"] & fr["eligible"]]
    ranker = PairwiseRanker(t["numeric_features"], t["boolean_features"], t["categorical_features"],
                            C=t["C"], l1_ratio=t["l1_ratio"])
    ranker.fit(data, data["study_key"].to_numpy(), data["relevance"].to_numpy())
    ranker.monitor_ranker = None
    rt, roles_card, per_study_roles = None, None, None
    if rules_roles is not None and "team_role" in fr.columns and (fr["team_role"] != "").any():
        rt = role_table(fr, str_keys(rules_roles))
        per_study_roles, per_fold_roles = cross_validate_roles(rt, cfg_ranking)
        mon = fit_monitor(rt, t)
        ranker.monitor_ranker = mon
        roles_card = {
            "design": "two pairwise rankers with the same features: injection (eligible lesions, "
                      "relevance = chosen) and monitoring (lesions the team did not inject, "
                      "relevance = monitored); roles predicted with the rules' numbers of injected "
                      "and monitored lesions, so model and rules are compared at equal set sizes",
            "n_studies": int(rt["study_key"].nunique()), "n_patients": int(rt["patient_id"].nunique()),
            "n_lesions": len(rt),
            "team_roles": {k: int(v) for k, v in rt["team_role"].value_counts().sort_index().items()},
            "rules_roles": {k: int(v) for k, v in rt["rules_role"].value_counts().sort_index().items()},
            "monitoring_model": ({"trained": True, "n_pairs": mon.n_pairs_, "coefficients":
                                  dict(list(mon.coefficients().items())[:15])} if mon is not None else
                                 {"trained": False, "reason": "no study with both a monitored and an "
                                                              "unmonitored non-injected lesion"}),
            "cv": {"method": "GroupKFold by patient_id (no shuffle), held-out patients",
                   "metrics": {"role_agreement": "share of lesions whose role equals the team's",
                               "inject_jaccard": "|A & B| / |A | B| of the injected sets",
                               "monitor_jaccard": "same for the monitored sets"},
                   "folds": per_fold_roles.to_dict(orient="records"),
                   "mean_of_folds": {f"{w}_{k}": round(float(per_fold_roles[f"{w}_{k}"].mean()), 4)
                                     for k in ROLE_METRICS for w in ("model", "rules")}},
        }
    ranker.role_cv_ = per_study_roles  # written as cv_roles.csv by save_model, not pickled
    used = fr[fr["used"]]
    best = used.groupby("study_key")["relevance"].transform("max")
    n_not_elig = int(((used["relevance"] == best) & (used["relevance"] > 0) & ~used["eligible"]).sum())
    if input_hashes is None:
        input_hashes = {"lesions": {"sha256": _frame_sha256(lesions), "rows": len(lesions)},
                        "decisions": {"sha256": _frame_sha256(decisions), "rows": len(decisions)}}
    combined = _sha256_bytes((input_hashes["lesions"]["sha256"]
                              + input_hashes["decisions"]["sha256"]).encode())
    synthetic = _is_synthetic(lesions, decisions)
    policies = sorted({str(p) for p in decisions.get("policy", pd.Series(dtype=str)).dropna()})
    mean_cols = ["model_top1", "rules_top1", f"model_ndcg@{k}", f"rules_ndcg@{k}"]
    card = {
        "title": ("SYNTHETIC - " if synthetic else "") + "HIT-IT lesion ranking model",
        "synthetic": synthetic,
        "synthetic_note": ("trained on synthetic decisions generated by pipeline.testing.decisions"
                           f" (policy: {', '.join(policies) or 'unknown'}); not a clinical model"
                           if synthetic else ""),
        "model": {"name": ranker.name, "class": "pipeline.ranking.model.PairwiseRanker",
                  "estimator": "sklearn.linear_model.LogisticRegression on within-study pair "
                               "differences (no intercept)",
                  "C": ranker.C, "n_pairs": ranker.n_pairs_, "format": MODEL_FORMAT},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": {**input_hashes, "combined_sha256": combined},
        "data": {
            "n_patients": int(fr["patient_id"].nunique()),
            "n_studies": int(fr["study_key"].nunique()),
            "n_lesions": len(fr),
            "n_studies_used": int(used["study_key"].nunique()),
            "n_patients_used": int(used["patient_id"].nunique()),
            "n_unmatched_decision_rows": int(fr.attrs.get("unmatched_decisions", 0)),
            "n_chosen_not_eligible": n_not_elig,
        },
        "features": {
            "numeric": ranker.numeric_used_, "boolean": ranker.boolean_used_,
            "categorical": ranker.categorical_used_, "unused_absent_in_data": ranker.unused_,
            "transformed": ranker.feature_names(),
            "missing_values": "median imputation + indicator columns; numeric standardised; "
                              "one-hot categories (unseen ignored)",
        },
        "coefficients": ranker.coefficients(),
        "eligibility": "the model orders only lesions whose rule tier is not not_suitable; hard "
                       "exclusions and tiers stay those of the rules",
        "cv": {
            "method": "GroupKFold by patient_id (no shuffle)",
            "n_splits": int(per_fold["fold"].nunique()),
            "metrics": {"top1": "first eligible lesion of the ordering is the team's first choice",
                        f"ndcg@{k}": "gain 2^rel-1, ranked (eligible) lesions only"},
            "folds": per_fold.to_dict(orient="records"),
            "mean_of_folds": {c: round(float(per_fold[c].mean()), 4) for c in mean_cols},
            "pooled": {c: round(float(per_study[c].mean()), 4) for c in mean_cols},
        },
        "roles": roles_card,
        "rules_excluded": rules_excluded_choices(fr, rt, cfg_ranking),
        "rules_config_sha256": rules_hash(cfg_ranking),
        "training_config": t,
        "versions": _versions(),
    }
    ranker.card = card
    return ranker, card, per_study


def model_card_markdown(card: dict) -> str:
    """Human-readable model card."""
    cv = card["cv"]
    lines = [f"# {card['title']}", ""]
    if card["synthetic"]:
        lines += [f"> **SYNTHETIC**: {card['synthetic_note']}.", ""]
    lines += [
        f"- Created: {card['created']}",
        f"- Model: {card['model']['name']} ({card['model']['estimator']}), C={card['model']['C']}, "
        f"{card['model']['n_pairs']} training pairs",
        f"- Data: {card['data']['n_patients_used']} patients / {card['data']['n_studies_used']} "
        f"studies with decisions ({card['data']['n_lesions']} lesions); chosen lesions not "
        f"eligible under the rules: {card['data']['n_chosen_not_eligible']}",
        f"- Inputs sha256: lesions `{card['inputs']['lesions']['sha256']}`, decisions "
        f"`{card['inputs']['decisions']['sha256']}`",
        f"- Rules config sha256: `{card['rules_config_sha256']}`",
        f"- Eligibility: {card['eligibility']}",
        "", f"## Cross-validation ({cv['method']}, {cv['n_splits']} folds)", "",
    ]
    folds = cv["folds"]
    cols = [c for c in folds[0] if c != "fold"] if folds else []
    lines.append("| fold | " + " | ".join(cols) + " |")
    lines.append("|---" * (len(cols) + 1) + "|")
    for f in folds:
        lines.append(f"| {f['fold']} | " + " | ".join(str(f[c]) for c in cols) + " |")
    m = cv["mean_of_folds"]
    lines.append("| **mean** | | | " + " | ".join(str(m[c]) for c in m) + " |")
    roles = card.get("roles")
    if roles:
        rm = roles["cv"]["mean_of_folds"]
        lines += ["", f"## Injection and monitoring choices on held-out patients ({roles['cv']['method']})", "",
                  f"{roles['n_studies']} studies of {roles['n_patients']} patients with team roles "
                  f"(team: {roles['team_roles']}; rules: {roles['rules_roles']}). {roles['design']}.", "",
                  "| agreement with the team | model | rules |", "|---|---|---|"]
        for k in ROLE_METRICS:
            lines.append(f"| {k.replace('_', ' ')} | {rm[f'model_{k}']} | {rm[f'rules_{k}']} |")
        mm = roles["monitoring_model"]
        how = f"trained on {mm['n_pairs']} pairs" if mm["trained"] else f"not trained ({mm['reason']})"
        lines += ["", f"- monitoring ranker: {how}"]
    ex = card.get("rules_excluded") or {}
    if ex:
        i = ex["injection"]
        lines += ["", "## Team choices the rules exclude", "",
                  f"- injected: {i['n_rules_exclude']} of {i['n_team_injected']} lesions the team injected are "
                  f"not_suitable under the rules ({'–' if i['pct'] is None else str(i['pct']) + ' %'})"]
        for code, n in i["by_rule"].items():
            lines.append(f"  - {code}: {n}")
        if "monitoring" in ex:
            m = ex["monitoring"]
            lines.append(f"- monitored: {m['n_not_measurable']} of {m['n_team_monitored']} lesions the team "
                         f"monitors are not measurable under RECIST 1.1 (the rules never monitor them)")
    lines += ["", "## Features", "",
              f"- numeric: {', '.join(card['features']['numeric'])}",
              f"- boolean: {', '.join(card['features']['boolean'])}",
              f"- categorical (one-hot): {', '.join(card['features']['categorical'])}",
              f"- absent from the data (dropped): {', '.join(card['features']['unused_absent_in_data']) or 'none'}",
              f"- missing values: {card['features']['missing_values']}",
              "", "## Largest coefficients (standardised features)", ""]
    for name, w in list(card["coefficients"].items())[:15]:
        lines.append(f"- `{name}`: {w:+.3f}")
    lines += ["", "## Versions", ""] + [f"- {k}: {v}" for k, v in card["versions"].items()]
    return "\n".join(lines) + "\n"


def save_model(ranker: PairwiseRanker, card: dict, out_dir: str | Path,
               per_study: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write ``model.joblib``, ``model_card.json``, ``model_card.md`` (and ``cv_results.csv``)."""
    import joblib

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"model": out / "model.joblib", "card_json": out / "model_card.json",
             "card_md": out / "model_card.md"}
    role_cv = ranker.__dict__.pop("role_cv_", None)
    joblib.dump({"format": MODEL_FORMAT, "ranker": ranker, "card": card,
                 "versions": card["versions"]}, paths["model"])
    paths["card_json"].write_text(json.dumps(card, indent=2, default=str) + "\n")
    paths["card_md"].write_text(model_card_markdown(card))
    if per_study is not None:
        paths["cv"] = out / "cv_results.csv"
        per_study.to_csv(paths["cv"], index=False)
    if role_cv is not None:
        paths["cv_roles"] = out / "cv_roles.csv"
        role_cv.to_csv(paths["cv_roles"], index=False)
    return paths


def load_model(path: str | Path, cfg_ranking: dict | None = None) -> PairwiseRanker:
    """Load a model written by :func:`save_model` (a pickle: only load files you trust).

    Warns when the scikit-learn version differs from training or when the rules (whose outputs
    are features) changed since training.
    """
    import joblib
    import sklearn

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"ranking model not found: expected a file at {p}", file=p,
                          hint="fix ranking.model or train one with `hitit train`")
    blob = joblib.load(p)
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT or "ranker" not in blob:
        raise ConfigError("not a ranking model written by `hitit train`", file=p)
    ranker: PairwiseRanker = blob["ranker"]
    trained = blob.get("versions", {}).get("scikit-learn")
    if trained and trained != sklearn.__version__:
        log.warning("ranking model %s was trained with scikit-learn %s, running %s", p, trained,
                    sklearn.__version__)
    if cfg_ranking is not None and ranker.card.get("rules_config_sha256") not in (None, rules_hash(cfg_ranking)):
        log.warning("ranking model %s was trained with other rule settings; its rule features "
                    "may be shifted: retrain it", p)
    return ranker


@functools.lru_cache(maxsize=8)
def _cached(path: str, mtime: float, rules_sha: str) -> PairwiseRanker:
    return load_model(path)


def load_model_cached(path: str | Path, cfg_ranking: dict) -> PairwiseRanker:
    """:func:`load_model` once per (path, modification time); warns on a rules mismatch."""
    p = Path(path).resolve()
    if not p.is_file():
        return load_model(p)
    ranker = _cached(str(p), p.stat().st_mtime, rules_hash(cfg_ranking))
    if ranker.card.get("rules_config_sha256") not in (None, rules_hash(cfg_ranking)):
        log.warning("ranking model %s was trained with other rule settings: retrain it", p)
    return ranker


def train_files(lesions_path: str | Path, decisions_path: str | Path, out_dir: str | Path,
                cfg_ranking: dict, *, rules_roles_of=None) -> dict:
    """``hitit train``: read the CSV/Parquet inputs, train, write the model and its card.

    ``rules_roles_of(lesions, cfg_ranking)`` gives the rules' own roles (see :func:`train`), called
    when the decisions have a ``role`` column. Returns the model card.
    """
    from pipeline.io.tables import read_table

    def read(p: Path) -> pd.DataFrame:
        if not p.is_file():
            raise ConfigError(f"input not found: {p}", file=p)
        if p.suffix == ".parquet":
            return pd.read_parquet(p)
        return read_table(p)

    lp, dp = Path(lesions_path), Path(decisions_path)
    lesions, decisions = read(lp), read(dp)
    hashes = {
        "lesions": {"path": str(lp), "sha256": _sha256_bytes(lp.read_bytes()), "rows": len(lesions)},
        "decisions": {"path": str(dp), "sha256": _sha256_bytes(dp.read_bytes()), "rows": len(decisions)},
    }
    rr = None
    if rules_roles_of is not None and "role" in decisions.columns:
        rr = rules_roles_of(lesions, cfg_ranking)
    ranker, card, per_study = train(lesions, decisions, cfg_ranking, input_hashes=hashes, rules_roles=rr)
    save_model(ranker, card, out_dir, per_study)
    return card
