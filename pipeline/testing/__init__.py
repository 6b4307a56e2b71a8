"""Test and validation tooling shipped with the package (not product code).

Product modules never import this package; only the CLI entry point (:mod:`pipeline.cli`)
does, lazily, inside the commands that offer it (``hitit phantom``, the ground-truth check of
``hitit demo``, ``hitit synthetic``). Modules here may import product code.

phantom      ground-truth PET/CT phantom patients (design, truth, voxel arrays, DICOM writers)
corpus       malformed-input corpus generated from the phantom
decisions    synthetic lesion tables and synthetic team decisions (labelled synthetic)
validation   comparison of a run on phantom data with the phantom's truth.json
ibsi         IBSI 1 compliance runs of the radiomics configuration
contours     dicompyler-convention RTSTRUCT contour volumes (a validation reference)
"""
