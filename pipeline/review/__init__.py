"""Review app of issue 14: radiologists look at a study, decide per lesion and sign off.

Modules
-------
store      decisions store: ``RESULTS/review/decisions.csv`` (the format ``hitit train`` reads) and
           the append-only ``RESULTS/review/audit.jsonl``, under a file lock; the tool's proposal
           per lesion read from the study's ``ranking.csv``
cache      per-study image cache (``<study dir>/review_cache/``: raw int16 CT, float16 PET,
           contours): ``write_study_cache`` called by the study job (``review.image_cache``),
           ``ImageCache`` (memory-mapped, PET fused per slice) for the app
backfill   write that cache from the archive for results made before the study job wrote it
agreement  team decision beside tool proposal and agreement figures (worksheet, dashboard)
tracks     follow-up tracks (``followup_tracking.csv``) linking one lesion across the side-by-side
           viewers
app        the Flask app (token-protected, CSRF-checked, bound to 127.0.0.1 by default)
templates  its Jinja2 templates, CSS and viewer script
cli        ``hitit review RESULTS [--port P] [--reader NAME] [--export FILE --cutoff ISO]``

No workflow step writes under ``RESULTS/review/``.
"""
