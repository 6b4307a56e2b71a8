"""``hitit train``: retrain the lesion ranking on the team's choices.

Wiring: in ``pipeline/cli.py``'s ``build_parser``, after the other subcommands::

    from pipeline.ranking.train_cli import register
    register(sub)

Each subcommand sets ``func`` (called with the parsed args, returns an exit code), like the other
subcommands; a :class:`~pipeline.errors.PipelineError` is reported by ``cli.main``.

``hitit train --lesions FILE --decisions FILE --out DIR [--config FILE]``
    Cross-validates (GroupKFold by patient) a pairwise ranking model against the rules, fits it
    on all data and writes ``DIR/model.joblib``, ``DIR/model_card.json``, ``DIR/model_card.md``
    and ``DIR/cv_results.csv``. Use it with ``ranking.model: DIR/model.joblib``. When the
    decisions carry the team's ``role`` (the review app's ``decisions.csv``), a second ranker
    learns the monitoring choice, the roles of both are compared with the rules' on held-out
    patients (``DIR/cv_roles.csv``), and the card and the output say how often the team chose a
    lesion the rules exclude, and which rules.

``hitit synthetic`` (SYNTHETIC training data for a demo of this command) is test tooling: it
lives in :mod:`pipeline.testing.cli`, registered by :mod:`pipeline.cli`.

The workflow's ranking step (``hitit rank``, one study with the patient's earlier studies) is
:func:`pipeline.study.run_ranking`, which calls
:func:`pipeline.ranking.longitudinal.rank_patient`.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def rules_roles(lesions: pd.DataFrame, cfg_ranking: dict) -> pd.DataFrame:
    """The rules' own choice per lesion: :func:`pipeline.ranking.select.rank_study` of each study
    without a model (``KEYS``, ``rules_role``, ``rules_measurable``)."""
    import pandas as pd

    from pipeline.ranking.model import KEYS, str_keys
    from pipeline.ranking.rules import as_bool
    from pipeline.ranking.select import rank_study

    cfg = {**cfg_ranking, "model": None}
    les = str_keys(lesions)
    parts = []
    for _, g in les.groupby(["patient_id", "study_uid"], sort=True):
        r = rank_study(g.reset_index(drop=True), cfg)
        part = r[KEYS].copy()
        part["rules_role"] = r["role"].astype(str).to_numpy()
        part["rules_measurable"] = [bool(as_bool(v)) for v in r["measurable"]]
        parts.append(part)
    cols = KEYS + ["rules_role", "rules_measurable"]
    return str_keys(pd.concat(parts, ignore_index=True)) if parts else pd.DataFrame(columns=cols)


def cmd_train(args) -> int:
    """Run ``hitit train``."""
    from pipeline.config import load_config
    from pipeline.ranking.model import train_files

    cfg = load_config(args.config)
    card = train_files(args.lesions, args.decisions, args.out, cfg["ranking"], rules_roles_of=rules_roles)
    m = card["cv"]["mean_of_folds"]
    k = cfg["ranking"]["training"]["ndcg_k"]
    label = "SYNTHETIC data: " if card["synthetic"] else ""
    print(f"{label}{card['data']['n_studies_used']} studies of {card['data']['n_patients_used']} "
          f"patients, {card['cv']['n_splits']}-fold GroupKFold by patient")
    print(f"  top-1 agreement  model {m['model_top1']:.3f}   rules {m['rules_top1']:.3f}")
    print(f"  NDCG@{k}           model {m[f'model_ndcg@{k}']:.3f}   rules {m[f'rules_ndcg@{k}']:.3f}")
    roles = card.get("roles")
    if roles:
        r = roles["cv"]["mean_of_folds"]
        print(f"  roles on held-out patients ({roles['n_studies']} studies with team roles):")
        for name, key, note in (("role agreement", "role_agreement", ""),
                                ("injected set  ", "inject_jaccard", "  (Jaccard)"),
                                ("monitored set ", "monitor_jaccard", "  (Jaccard)")):
            print(f"    {name}   model {r['model_' + key]:.3f}   rules {r['rules_' + key]:.3f}{note}")
    ex = card["rules_excluded"]["injection"]
    print(f"  team injected {ex['n_rules_exclude']} of {ex['n_team_injected']} lesions the rules exclude"
          + (": " + ", ".join(f"{c} {n}" for c, n in ex["by_rule"].items()) if ex["by_rule"] else ""))
    mon = card["rules_excluded"].get("monitoring")
    if mon:
        print(f"  team monitors {mon['n_not_measurable']} of {mon['n_team_monitored']} lesions RECIST calls "
              "not measurable")
    out = Path(args.out)
    print(f"model: {out / 'model.joblib'}  card: {out / 'model_card.md'}")
    print(f"use it with:  --set ranking.model={out / 'model.joblib'}")
    return 0


def register(subparsers) -> None:
    """Add ``train`` to the ``hitit`` subcommands.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The object returned by ``parser.add_subparsers()``.
    """
    t = subparsers.add_parser(
        "train", help="retrain the lesion ranking on the team's past choices (learning to rank)")
    t.add_argument("--lesions", required=True, help="cohort lesions.csv (or .parquet)")
    t.add_argument("--decisions", required=True,
                   help="CSV: patient_id, study_uid, lesion_id, chosen (0/1) and/or chosen_rank; with a "
                        "role column (inject/monitor/none, e.g. RESULTS/review/decisions.csv of "
                        "`hitit review`) the monitoring choice is learnt too")
    t.add_argument("--out", required=True, help="output folder for the model and its card")
    t.add_argument("--config", help="YAML file overriding configs/config.yaml")
    t.set_defaults(func=cmd_train)
