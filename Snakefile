# HIT-IT lesion selection: study manifests -> one job per study -> cohort tables and reports.
#
#   hitit run --input ARCHIVE --output RESULTS            (indexes, then runs this workflow)
#
# or, by hand, the same two steps:
#
#   hitit index --input ARCHIVE --output RESULTS
#   snakemake --cores 2 --directory RESULTS --config input=ARCHIVE output=RESULTS
#
# The index step runs before Snakemake, on the archive as it is now: it writes the study sheet
# (RESULTS/cohort/studies.csv) and one input manifest per study (studies/<p>/<s>/inputs.json),
# each rewritten only when it changes. Every rule's params carry the hash of exactly the
# configuration sections its step reads, so Snakemake's default rerun triggers (mtime, params,
# input, software-env, code) rerun what changed and nothing else. Nothing is written at parse
# time. Rules call the `hitit` step commands, the same code the CLI runs.
include: "workflow/rules/common.smk"


rule all:
    input:
        dashboard=f"{OUT}/report/index.html",
        lesions=f"{OUT}/cohort/lesions.csv",
        ranking=f"{OUT}/cohort/ranking.csv",
        failures=f"{OUT}/cohort/failures.csv",


include: "workflow/rules/study.smk"
include: "workflow/rules/rank.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/report.smk"
