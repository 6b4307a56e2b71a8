# Ranking and review outputs of one study, from tables only (never images): ranking.csv, the
# worksheet and the DICOM SR, and the follow-up step (pipeline.followup: tracks, responses,
# re-planning). Waits for the patient's earlier studies (growth, new lesions) and for the
# previous study's tracks; reruns when the ranking or follow-up settings, the trained model, the
# clinical sidecar or the team's decisions (RESULTS/review/decisions.csv, written by the review
# app: a sign-off reruns the rank steps, never the study job) change. Grouped with the study
# rule: on a cluster, a study's jobs run as one submission.
from pipeline.followup.timepoints import patient_timepoints

_TIMEPOINTS = {}


def timepoints_of(patient):
    """The patient's timepoints (pipeline.followup.timepoints), from the sheet only."""
    if patient not in _TIMEPOINTS:
        _TIMEPOINTS[patient] = patient_timepoints(SHEET, patient)
    return _TIMEPOINTS[patient]


def followup_inputs(wildcards):
    """The previous study's tracks (when the study comes after the baseline), and at a
    follow-up timepoint the baseline's and its own registration references."""
    tps = timepoints_of(wildcards.patient)
    me = tps.of(wildcards.study)
    out = []
    prev = tps.previous(wildcards.study)
    if prev is not None:
        out.append(study_path(wildcards.patient, prev.row["study_dir"], "followup_tracking.csv"))
    if me.index is not None and me.index > 0:
        out.append(study_path(wildcards.patient, tps.baseline.row["study_dir"],
                              "registration_ref.npz"))
        out.append(study_path(wildcards.patient, wildcards.study, "registration_ref.npz"))
    return out


DECISIONS = [f"{OUT}/review/decisions.csv"] if Path(f"{OUT}/review/decisions.csv").is_file() else []


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
        followup=followup_inputs,
        decisions=DECISIONS,
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
        tracking=f"{OUT}/studies/{{patient}}/{{study}}/followup_tracking.csv",
        response=f"{OUT}/studies/{{patient}}/{{study}}/followup_response.csv",
        followup=f"{OUT}/studies/{{patient}}/{{study}}/followup.json",
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
