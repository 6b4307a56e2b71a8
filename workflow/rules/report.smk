# The cohort dashboard (each study's worksheet and SR are written by the rank rule).
# `snakemake --report report.html` shows the dashboard and every worksheet with the captions in
# pipeline/report/captions/.

localrules: report_dashboard


rule report_dashboard:
    input:
        ranking=f"{OUT}/cohort/ranking.csv",
        failures=f"{OUT}/cohort/failures.csv",
        status=f"{OUT}/cohort/status.csv",
        worksheets=all_studies("worksheet.html"),
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
