# Ranking and review outputs of one study, from tables only (never images): ranking.csv, the
# worksheet and the DICOM SR. Waits for the patient's earlier studies (growth, new lesions);
# reruns when the ranking settings, the trained model or the clinical sidecar change. Grouped
# with the study rule: on a cluster, a study's jobs run as one submission.


def rank_inputs(wildcards):
    """This study's lesion table and those of the patient's earlier studies
    (pipeline.sheet.earlier_studies, the same list the rank step reads)."""
    earlier = earlier_studies(SHEET, wildcards.patient, wildcards.study)
    return [study_path(r["patient_dir"], r["study_dir"], "lesions.csv") for r in earlier] + [
        study_path(wildcards.patient, wildcards.study, "lesions.csv")]


rule rank:
    input:
        lesions=rank_inputs,
        provenance=f"{OUT}/studies/{{patient}}/{{study}}/provenance.json",
        settings_files=optional_files("model", "sidecar"),
    output:
        ranking=f"{OUT}/studies/{{patient}}/{{study}}/ranking.csv",
        provenance=f"{OUT}/studies/{{patient}}/{{study}}/ranking_provenance.json",
        worksheet=report(
            f"{OUT}/studies/{{patient}}/{{study}}/worksheet.html",
            caption=f"{CAPTIONS}/worksheet.rst",
            category="Worksheets",
            subcategory="{patient}",
            labels={"patient": "{patient}", "study": "{study}"},
        ),
        status=f"{OUT}/studies/{{patient}}/{{study}}/report.json",
    params:
        settings_hash=HASH["rank"],
    log:
        f"{OUT}/logs/rank/{{patient}}/{{study}}.log",
    group:
        "study_{patient}_{study}"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 1500 * attempt,
        runtime=lambda wildcards, attempt: 10 * attempt,
    shell:
        "{PY} -m pipeline.cli rank --report --results {OUT:q} --patient-dir {wildcards.patient:q}"
        " --study-dir {wildcards.study:q} --settings {SETTINGS:q} > {log:q} 2>&1"
