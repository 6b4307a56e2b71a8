"""Edges of the pipeline: read DICOM/NIfTI, write tables and provenance. No feature logic here."""
