"""Anatomy: where a lesion sits, how a needle reaches it, and what is dangerous around it.

Modules: :mod:`~pipeline.anatomy.body` (body mask without the table, skin surface),
:mod:`~pipeline.anatomy.organs` (organ masks from SEG / RTSTRUCT / TotalSegmentator -> one
structure vocabulary), :mod:`~pipeline.anatomy.tissue` (study-wide bone / gas / lung / vessel
flags), :mod:`~pipeline.anatomy.site` (organ, site class, skin depth, capsule and pleura
distances), :mod:`~pipeline.anatomy.safety` (vessels, exophytic fraction, diaphragm, critical
structures), :mod:`~pipeline.anatomy.access` (straight needle path planner),
:mod:`~pipeline.anatomy.surfaces` (sub-voxel surfaces) and :mod:`~pipeline.anatomy.stage`
(the entry point the study calls: ``prepare`` once, ``lesion_columns`` per lesion).
"""
