# Cohort tables: concatenation of the studies in the sheet (a removed study leaves them; a
# study whose job was lost is listed as missing); the follow-up tables (response.csv,
# lesion_tracking.csv) from each patient's latest study. Cheap, so it runs on the submit host.

localrules: cohort


rule cohort:
    input:
        sheet=str(_SHEET_FILE),
        rankings=all_studies("ranking.csv"),
        followup=all_studies("followup_response.csv"),
        provenance=all_studies("provenance.json"),
    output:
        lesions=report(f"{OUT}/cohort/lesions.csv", caption=f"{CAPTIONS}/lesions.rst", category="Cohort tables"),
        parquet=f"{OUT}/cohort/lesions.parquet",
        ranking=report(f"{OUT}/cohort/ranking.csv", caption=f"{CAPTIONS}/ranking.rst", category="Cohort tables"),
        failures=report(f"{OUT}/cohort/failures.csv", caption=f"{CAPTIONS}/failures.rst", category="Cohort tables"),
        status=f"{OUT}/cohort/status.csv",
        response=f"{OUT}/cohort/response.csv",
        lesion_tracking=f"{OUT}/cohort/lesion_tracking.csv",
        summary=f"{OUT}/cohort/summary.json",
    log:
        f"{OUT}/logs/cohort.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{PY} -m pipeline.cli cohort --results {OUT:q} > {log:q} 2>&1"
