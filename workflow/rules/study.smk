# One study end to end (images are loaded once, per-lesion work on crops): lesions.csv,
# failures.csv, provenance.json and the key images. Depends on the study's own input manifest
# only, so it reruns when that study's files or choice of series change, or when a setting it
# reads changes (params), and never because another study changed.


rule study:
    input:
        manifest=f"{OUT}/studies/{{patient}}/{{study}}/inputs.json",
    output:
        lesions=f"{OUT}/studies/{{patient}}/{{study}}/lesions.csv",
        failures=f"{OUT}/studies/{{patient}}/{{study}}/failures.csv",
        provenance=f"{OUT}/studies/{{patient}}/{{study}}/provenance.json",
        registration_ref=f"{OUT}/studies/{{patient}}/{{study}}/registration_ref.npz",
    params:
        settings_hash=HASH["study"],
        registration_ref_mm=CFG["followup"]["registration"]["resample_mm"],
    log:
        f"{OUT}/logs/studies/{{patient}}/{{study}}.log",
    group:
        "study_{patient}_{study}"
    threads: RES["study_threads"]
    resources:
        mem_mb=lambda wildcards, attempt: RES["study_mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: RES["study_runtime_min"] * attempt,
    shell:
        "OMP_NUM_THREADS={threads} OPENBLAS_NUM_THREADS={threads} ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS={threads}"
        " {PY} -m pipeline.cli study --results {OUT:q} --patient-dir {wildcards.patient:q}"
        " --study-dir {wildcards.study:q} --settings {SETTINGS:q} > {log:q} 2>&1"
