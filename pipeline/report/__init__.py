"""Review outputs built from the tables: key images, per-study worksheet, cohort dashboard, DICOM SR.

Modules
-------
keyimages   per-lesion key images and compact slice crops (written by the study job), PET MIP
worksheet   per-study self-contained HTML worksheet (after the ranking)
dashboard   ``RESULTS/report/index.html`` (after the cohort step)
sr          DICOM SR, TID 1500 measurement report per study (highdicom)
figures     Okabe-Ito palette, number formatting, cohort plots
run / cli   one call per study or for the whole results folder; ``hitit report`` / ``report-study`` / ``dashboard``
"""

from pathlib import Path

#: Folder of the Snakemake report captions (``report(..., caption=f"{CAPTIONS}/worksheet.rst")``).
CAPTIONS = Path(__file__).resolve().parent / "captions"
