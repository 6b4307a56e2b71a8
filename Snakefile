# HIT-IT lesion selection: archive index -> one job per study -> cohort tables.
#
#   snakemake --cores 2 --config input=ARCHIVE output=RESULTS [--configfile my.yaml]
#   hitit run --input ARCHIVE --output RESULTS          (same thing, with progress and a summary)
#
# The configuration is validated against configs/config.schema.yaml before any job runs. Every
# rule calls the `hitit` step commands (python -m pipeline.cli), the same code the CLI runs.
import sys
from pathlib import Path

import yaml

from pipeline.config import load_config
from pipeline.report import CAPTIONS as _CAPTIONS
from pipeline.sheet import earlier_studies, read_study_sheet

CFG = load_config(overrides=config)  # raises ConfigError naming the key on a bad config
if not CFG["input"]:
    raise ValueError("no input archive: run with --config input=ARCHIVE output=RESULTS")
IN = str(Path(CFG["input"]).resolve())
OUT = str(Path(CFG["output"]).resolve())
PY = sys.executable
SETTINGS = f"{OUT}/logs/config.validated.yaml"
# The validated configuration every job reads (rewritten only when it changes).
Path(SETTINGS).parent.mkdir(parents=True, exist_ok=True)
_text = yaml.safe_dump(CFG, sort_keys=True)
if not Path(SETTINGS).exists() or Path(SETTINGS).read_text() != _text:
    Path(SETTINGS).write_text(_text)
RES = CFG["resources"]

wildcard_constraints:
    patient=r"[A-Za-z0-9._-]+",
    study=r"[A-Za-z0-9._-]+",


def _sheet():
    return read_study_sheet(checkpoints.index.get().output.sheet)


def study_outputs(wildcards):
    return [f"{OUT}/studies/{r.patient_dir}/{r.study_dir}/ranking.csv" for r in _sheet().itertuples()]


def rank_inputs(wildcards):
    """This study's lesion table and those of the patient's earlier studies (growth).

    The earlier studies are pipeline.sheet.earlier_studies, the same list the rank step reads.
    """
    earlier = earlier_studies(_sheet(), wildcards.patient, wildcards.study)
    return [f"{OUT}/studies/{r['patient_dir']}/{r['study_dir']}/lesions.csv" for r in earlier] + [
        f"{OUT}/studies/{wildcards.patient}/{wildcards.study}/lesions.csv"]


rule all:
    input:
        dashboard=f"{OUT}/report/index.html",
        lesions=f"{OUT}/cohort/lesions.csv",
        ranking=f"{OUT}/cohort/ranking.csv",
        failures=f"{OUT}/cohort/failures.csv",


checkpoint index:
    output:
        sheet=report(f"{OUT}/cohort/studies.csv", caption=f"{_CAPTIONS}/studies.rst", category="Cohort tables"),
        series=f"{OUT}/index/series.csv",
    log:
        f"{OUT}/logs/index.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=RES["study_runtime_min"],
    shell:
        "{PY} -m pipeline.cli index --input {IN:q} --output {OUT:q} --settings {SETTINGS:q} > {log:q} 2>&1"


rule study:
    input:
        sheet=f"{OUT}/cohort/studies.csv",
    output:
        lesions=f"{OUT}/studies/{{patient}}/{{study}}/lesions.csv",
        failures=f"{OUT}/studies/{{patient}}/{{study}}/failures.csv",
        provenance=f"{OUT}/studies/{{patient}}/{{study}}/provenance.json",
    log:
        f"{OUT}/logs/studies/{{patient}}/{{study}}.log",
    threads: RES["study_threads"]
    resources:
        mem_mb=RES["study_mem_mb"],
        runtime=RES["study_runtime_min"],
    shell:
        "OMP_NUM_THREADS={threads} OPENBLAS_NUM_THREADS={threads} ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS={threads}"
        " {PY} -m pipeline.cli study --results {OUT:q} --patient-dir {wildcards.patient:q}"
        " --study-dir {wildcards.study:q} --settings {SETTINGS:q} > {log:q} 2>&1"


rule rank:
    input:
        sheet=f"{OUT}/cohort/studies.csv",
        lesions=rank_inputs,
    output:
        ranking=f"{OUT}/studies/{{patient}}/{{study}}/ranking.csv",
        provenance=f"{OUT}/studies/{{patient}}/{{study}}/ranking_provenance.json",
    log:
        f"{OUT}/logs/rank/{{patient}}/{{study}}.log",
    threads: 1
    resources:
        mem_mb=1000,
    shell:
        "{PY} -m pipeline.cli rank --results {OUT:q} --patient-dir {wildcards.patient:q}"
        " --study-dir {wildcards.study:q} --settings {SETTINGS:q} > {log:q} 2>&1"


rule cohort:
    input:
        sheet=f"{OUT}/cohort/studies.csv",
        studies=study_outputs,
    output:
        lesions=report(f"{OUT}/cohort/lesions.csv", caption=f"{_CAPTIONS}/lesions.rst", category="Cohort tables"),
        parquet=f"{OUT}/cohort/lesions.parquet",
        ranking=report(f"{OUT}/cohort/ranking.csv", caption=f"{_CAPTIONS}/ranking.rst", category="Cohort tables"),
        failures=report(f"{OUT}/cohort/failures.csv", caption=f"{_CAPTIONS}/failures.rst", category="Cohort tables"),
    log:
        f"{OUT}/logs/cohort.log",
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "{PY} -m pipeline.cli cohort --results {OUT:q} > {log:q} 2>&1"


include: "pipeline/report/report.smk"
