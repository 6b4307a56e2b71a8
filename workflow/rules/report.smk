# The cohort dashboard (each study's worksheet and SR are written by the rank rule); it shows the
# team's decisions (RESULTS/review/decisions.csv, written only by `hitit review`) when present.
# `snakemake --report report.html` shows the dashboard and every worksheet with the captions in
# pipeline/report/captions/.

localrules: report_dashboard


def review_decisions(wildcards=None):
    """The review app's decisions (team decision beside tool proposal) when the file exists; the
    workflow only reads RESULTS/review/, never writes there."""
    p = Path(OUT) / "review" / "decisions.csv"
    return [str(p)] if p.is_file() else []


rule report_dashboard:
    input:
        ranking=f"{OUT}/cohort/ranking.csv",
        failures=f"{OUT}/cohort/failures.csv",
        status=f"{OUT}/cohort/status.csv",
        worksheets=all_studies("worksheet.html"),
        decisions=review_decisions,
    output:
        report(
            f"{OUT}/report/index.html",
            caption=f"{CAPTIONS}/dashboard.rst",
            category="Cohort",
            labels={"page": "dashboard"},
        ),
    log:
        f"{OUT}/logs/report/dashboard.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{PY} -m pipeline.cli dashboard --results {OUT:q} > {log:q} 2>&1"
