# Review outputs (issue 7): per-study worksheet + DICOM SR, then the cohort dashboard.
#
# Include from the top-level Snakefile after its rules (it uses OUT, PY, SETTINGS and _sheet()):
#
#     include: "pipeline/report/report.smk"
#
# and add f"{OUT}/report/index.html" to `rule all`. `snakemake --report report.html` then
# shows the dashboard and every worksheet with the captions in pipeline/report/captions/.
from pipeline.report import CAPTIONS as _CAPTIONS


def report_worksheets(wildcards):
    """Every study's worksheet (the dashboard links them)."""
    return [f"{OUT}/studies/{r.patient_dir}/{r.study_dir}/worksheet.html" for r in _sheet().itertuples()]


rule report_study:
    input:
        ranking=f"{OUT}/studies/{{patient}}/{{study}}/ranking.csv",
        provenance=f"{OUT}/studies/{{patient}}/{{study}}/provenance.json",
    output:
        worksheet=report(
            f"{OUT}/studies/{{patient}}/{{study}}/worksheet.html",
            caption=f"{_CAPTIONS}/worksheet.rst",
            category="Worksheets",
            subcategory="{patient}",
            labels={"patient": "{patient}", "study": "{study}"},
        ),
        status=f"{OUT}/studies/{{patient}}/{{study}}/report.json",
    log:
        f"{OUT}/logs/report/{{patient}}/{{study}}.log",
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "{PY} -m pipeline.cli report-study --results {OUT:q} --patient-dir {wildcards.patient:q}"
        " --study-dir {wildcards.study:q} --settings {SETTINGS:q} > {log:q} 2>&1"


rule report_dashboard:
    input:
        ranking=f"{OUT}/cohort/ranking.csv",
        failures=f"{OUT}/cohort/failures.csv",
        worksheets=report_worksheets,
    output:
        report(
            f"{OUT}/report/index.html",
            caption=f"{_CAPTIONS}/dashboard.rst",
            category="Cohort",
            labels={"page": "dashboard"},
        ),
    log:
        f"{OUT}/logs/report/dashboard.log",
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "{PY} -m pipeline.cli dashboard --results {OUT:q} > {log:q} 2>&1"
