"""HIT-IT lesion selection pipeline: CT/PET DICOM in, ranked injection and monitoring lesions out."""

__version__ = "0.1.0"
