"""``hitit`` command line.

Subcommands
-----------
run      the whole workflow (Snakemake) on an archive
demo     the workflow on the bundled sample cohort (data_samples/)
phantom  write ground-truth PET/CT phantom patients
index    header-only scan of an archive and the study sheet (a workflow step)
study    one study end to end (a workflow step)
cohort   concatenate per-study tables (a workflow step)

The Snakefile's rules call ``index``, ``study`` and ``cohort``, so a run through Snakemake and a
run through this CLI share one code path.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("pipeline.cli")

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_ARCHIVE = REPO_ROOT / "data_samples" / "archive"


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:  # highdicom logs every copied module at INFO: noise in job logs and progress
        logging.getLogger("highdicom").setLevel(logging.WARNING)


# --------------------------------------------------------------------------- steps
def cmd_index(args) -> int:
    from pipeline import config as cfgmod
    from pipeline.manifest import index_step
    from pipeline.runner import index_progress

    cfg = cfgmod.load_config(args.settings)
    s = index_step(cfg, Path(args.input), Path(args.output), progress=index_progress(),
                   use_cache=not getattr(args, "no_cache", False))
    print(f"index: {s['scanned']} files scanned in {s['scan_s']:.1f} s: {s['read']} read, "
          f"{s['cached']} from the cache ({s['cache'] or 'cache off'})", file=sys.stderr)
    print(f"index: {s['files']} files in {s['series']} series, {s['problems']} problem files, "
          f"{s['studies']} studies ({s['source']}), {s['manifests_written']} study manifests "
          f"written, {s['manifests_unchanged']} unchanged, {s['wall_s']:.1f} s -> {s['sheet']}",
          file=sys.stderr)
    return 0


def _load_sheet(results: Path):
    from pipeline.sheet import read_study_sheet, sheet_path

    return read_study_sheet(sheet_path(results))


def _load_sheet_and_files(results: Path):
    from pipeline.io import index as idx

    return _load_sheet(results), idx.read_index(results / "index")


#: Study-sheet columns naming a series of the archive (images and DICOM masks).
STUDY_SERIES_KEYS = ("ct_series_uid", "ce_ct_series_uid", "pet_series_uid", "lesion_mask_ref",
                     "organ_mask_ref")
#: The columns of the index's file table that a study job reads.
STUDY_FILE_COLUMNS = ("path", "series_uid", "sop_instance_uid")


def _study_files(results: Path, row: dict):
    """The index's file rows of the series one study-sheet row names, and the archive root.

    Only the three columns the study reads (:data:`STUDY_FILE_COLUMNS`), in file-table order;
    the series and problem tables are not read.
    """
    import pandas as pd

    from pipeline.errors import ConfigError

    folder = results / "index"
    root = Path(json.loads((folder / "index.json").read_text(encoding="utf-8"))["root"])
    try:
        files = pd.read_csv(folder / "files.csv", dtype=str, keep_default_na=False, na_values=[],
                            usecols=list(STUDY_FILE_COLUMNS))
    except ValueError as exc:
        raise ConfigError(f"index table lacks a column the study needs: {exc}",
                          file=folder / "files.csv", hint="re-run the index step") from exc
    uids = {str(row.get(k) or "") for k in STUDY_SERIES_KEYS} - {""}
    return files[files["series_uid"].isin(uids)].reset_index(drop=True), root


def cmd_study(args) -> int:
    from pipeline import config as cfgmod
    from pipeline.cohort import study_output_dir
    from pipeline.sheet import study_row
    from pipeline.study import run_study

    cfg = cfgmod.load_config(args.settings)
    results = Path(args.results)
    row = study_row(_load_sheet(results), args.patient_dir, args.study_dir)
    files, root = _study_files(results, row)  # this study's rows only, not the whole index
    out = study_output_dir(results, row)
    prov = run_study(row, files, root, cfg, out)
    print(f"study {args.patient_dir}/{args.study_dir}: {prov['status']}, {prov['n_lesions']} lesions, "
          f"{prov['total_wall_s']:.1f} s -> {out}", file=sys.stderr)
    return 0


def cmd_rank(args) -> int:
    from pipeline import config as cfgmod
    from pipeline.cohort import study_output_dir
    from pipeline.sheet import study_row
    from pipeline.study import run_ranking

    cfg = cfgmod.load_config(args.settings)
    results = Path(args.results)
    sheet = _load_sheet(results)  # ranking reads tables only, not the archive index
    row = study_row(sheet, args.patient_dir, args.study_dir)
    prov = run_ranking(results, row, sheet, cfg, study_output_dir(results, row))
    print(f"ranked {prov['n_lesions']} lesions of {args.patient_dir}/{args.study_dir} "
          f"(prior studies: {len(prov['inputs']['prior_studies'])})", file=sys.stderr)
    if getattr(args, "report", False):  # the workflow's rank rule: worksheet and SR in the same job
        from pipeline.report.run import report_study

        st = report_study(results, args.patient_dir, args.study_dir)
        print(f"worksheet {st['worksheet']}; SR {st['sr'] or 'not written: ' + st['sr_skipped']}",
              file=sys.stderr)
    return 0


def cmd_cohort(args) -> int:
    from pipeline.cohort import build_cohort

    results = Path(args.results)
    sheet, index = _load_sheet_and_files(results)
    summary = build_cohort(results, sheet, index.problems)
    print(json.dumps(summary, indent=2), file=sys.stderr)
    return 0


def cmd_phantom(args) -> int:
    from pipeline.testing.phantom.followup import generate_followup_cohort

    out = Path(args.outdir)
    t0 = time.perf_counter()

    def progress(i: int, n: int, folder=None) -> None:
        el = time.perf_counter() - t0
        left = el / i * (n - i) if i else float("nan")
        print(f"phantom patients {i}/{n} written ({el:.1f} s, ~{left:.0f} s left)", file=sys.stderr)

    shift = tuple(args.contrast_shift) if args.contrast_shift else None
    formats = tuple(args.organ_formats.split(",")) if args.organ_formats else None
    paths = generate_followup_cohort(out, n_patients=args.patients, size=args.size,
                                     seed=args.seed, timepoints=args.timepoints,
                                     progress=progress, variant=args.variant,
                                     organ_formats=formats, contrast_shift_mm=shift)
    studies = f" with {args.timepoints} studies each" if args.timepoints > 1 else ""
    print(f"wrote {len(paths)} phantom patient(s){studies} to {out} (truth in each truth.json)")
    return 0


# --------------------------------------------------------------------------- workflow
def cmd_run(args) -> int:
    from pipeline import config as cfgmod
    from pipeline.runner import clear_lock, run_workflow

    if args.unlock:
        return clear_lock(Path(args.output))
    return run_workflow(Path(args.input), Path(args.output), config_file=args.config,
                        cores=args.cores, dry_run=args.dry_run, profile=args.profile,
                        overrides=cfgmod.parse_overrides(args.set))


def cmd_demo(args) -> int:
    archive = SAMPLE_ARCHIVE
    if not archive.is_dir():
        print(f"sample archive missing at {archive}; regenerate it with scripts/make_data_samples.py",
              file=sys.stderr)
        return 2
    from pipeline.runner import run_workflow

    print(f"HIT-IT demo: running the workflow on the sample cohort in {archive}")
    rc = run_workflow(archive, Path(args.output), config_file=None, cores=args.cores)
    if rc == 0:
        import pandas as pd

        from pipeline.testing.validation import compare_with_truth

        rk = pd.read_csv(Path(args.output) / "cohort" / "ranking.csv", dtype=str,
                         keep_default_na=False)
        print("\n=== Injection and monitoring sets ===")
        for pid, g in rk.groupby("patient_id"):
            inj = g[g["role"] == "inject"]["lesion_label"].tolist()
            mon = g[g["role"] == "monitor"]["lesion_label"].tolist()
            print(f"{pid}: inject {', '.join(inj) or '-'}; monitor {', '.join(mon) or '-'}")
        print()
        print(compare_with_truth(Path(args.output), archive))
    return rc


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hitit", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run the workflow on a DICOM archive")
    r.add_argument("--input", required=True, help="archive root folder")
    r.add_argument("--output", required=True, help="results folder")
    r.add_argument("--config", help="YAML file overriding configs/config.yaml")
    r.add_argument("--cores", type=int, default=2)
    r.add_argument("--profile", help="Snakemake profile folder, e.g. configs/profiles/slurm")
    r.add_argument("--dry-run", action="store_true")
    r.add_argument("--unlock", action="store_true",
                   help="clear the lock left by an interrupted run of this --output and exit "
                        "(a new run also does this by itself)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set ranking.injections_per_session=1")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="run the workflow on the bundled sample cohort")
    d.add_argument("--output", default="demo_results")
    d.add_argument("--cores", type=int, default=2)
    d.set_defaults(func=cmd_demo)

    ph = sub.add_parser("phantom", help="write ground-truth PET/CT phantom patients")
    ph.add_argument("outdir")
    ph.add_argument("--patients", type=int, default=1)
    ph.add_argument("--size", choices=["small", "full"], default="small")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--variant", choices=["standard", "extended"], default="standard",
                    help="extended adds the encasing, exophytic, deep-lung and non-contrast-"
                         "invisible lesions and writes organs as SEG, RTSTRUCT and TotalSegmentator")
    ph.add_argument("--organ-formats", help="comma list of seg,rtstruct,totalseg")
    ph.add_argument("--contrast-shift", type=float, nargs=3, metavar=("DX", "DY", "DZ"),
                    help="write the contrast CT in a second frame of reference shifted by this (mm)")
    ph.add_argument("--timepoints", type=int, default=1,
                    help="studies per patient (standard variant): >1 adds follow-ups 8 weeks apart, "
                         "repositioned, with designed itRECIST changes (truth.json 'followup')")
    ph.set_defaults(func=cmd_phantom)

    i = sub.add_parser("index", help="(workflow step) header-only archive scan and study sheet")
    i.add_argument("--input", required=True)
    i.add_argument("--output", required=True)
    i.add_argument("--settings", help="validated configuration YAML")
    i.add_argument("--no-cache", action="store_true",
                   help="read every file (ignore and do not write "
                        "RESULTS/index/file_cache.parquet)")
    i.set_defaults(func=cmd_index)

    for name, func, text in (("study", cmd_study, "(workflow step) one study end to end"),
                             ("rank", cmd_rank, "(workflow step) rank one study's lesions from tables")):
        st = sub.add_parser(name, help=text)
        st.add_argument("--results", required=True)
        st.add_argument("--patient-dir", required=True)
        st.add_argument("--study-dir", required=True)
        st.add_argument("--settings", help="validated configuration YAML")
        if name == "rank":
            st.add_argument("--report", action="store_true",
                            help="also write the study's worksheet and DICOM SR (one workflow job)")
        st.set_defaults(func=func)

    from pipeline.ranking.train_cli import register as register_training

    register_training(sub)  # hitit train

    from pipeline.testing.cli import register as register_synthetic

    register_synthetic(sub)  # hitit synthetic (test tooling: SYNTHETIC training data)

    from pipeline.io.suv_cli import register as register_suv
    from pipeline.report.cli import register as register_report

    register_suv(sub)  # hitit suv PET_DIR [--mask FILE] [--label NAME]

    register_report(sub)  # hitit report, report-study, dashboard
    from pipeline.review.cli import register as register_review
    register_review(sub)  # hitit review RESULTS [--port P] [--reader NAME] [--export FILE --cutoff ISO]
    from pipeline.report.plan_rtstruct import register as register_plan
    register_plan(sub)  # hitit plan-export RESULTS

    c = sub.add_parser("cohort", help="(workflow step) concatenate per-study tables")
    c.add_argument("--results", required=True)
    c.set_defaults(func=cmd_cohort)
    return p


def main(argv: list[str] | None = None) -> int:
    from pipeline.errors import PipelineError

    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except PipelineError as exc:
        print(f"hitit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
