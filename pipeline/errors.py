"""Error hierarchy of the pipeline.

Every error raised on bad input says *what was expected*, *what was found*, *where* (file,
series, DICOM tag) and *how to fix it*. The batch runner catches :class:`PipelineError` per study
(or per file during indexing) and records it in ``failures.csv``; anything else is a bug and is
recorded as ``InternalError`` with the traceback in the job log.
"""

from __future__ import annotations

from pathlib import Path


class PipelineError(Exception):
    """Base class of all expected, user-facing pipeline errors.

    Parameters
    ----------
    message : str
        What was expected and what was found.
    file : str or Path, optional
        The file at fault.
    series_uid : str, optional
        SeriesInstanceUID of the series at fault.
    tag : str, optional
        The DICOM tag at fault, as keyword and number, e.g. ``"PatientWeight (0010,1030)"``.
    hint : str, optional
        How to fix it.
    """

    stage = "pipeline"

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        series_uid: str | None = None,
        tag: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.series_uid = series_uid
        self.tag = tag
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:  # noqa: D105
        parts = [self.message]
        where = []
        if self.file:
            where.append(f"file {self.file}")
        if self.series_uid:
            where.append(f"series {self.series_uid}")
        if self.tag:
            where.append(f"tag {self.tag}")
        if where:
            parts.append("(" + ", ".join(where) + ")")
        if self.hint:
            parts.append(f"Fix: {self.hint}")
        return " ".join(parts)

    def as_record(self) -> dict[str, str]:
        """Return the fields written to ``failures.csv``."""
        return {
            "error_class": type(self).__name__,
            "message": self.message,
            "file": self.file or "",
            "series_uid": self.series_uid or "",
            "tag": self.tag or "",
            "hint": self.hint or "",
        }


class ConfigError(PipelineError):
    """A configuration file or study sheet does not match its schema."""

    stage = "config"


class DicomReadError(PipelineError):
    """A file cannot be parsed as DICOM (truncated, not DICOM, unreadable pixels)."""

    stage = "ingest"


class MissingTagError(PipelineError):
    """A DICOM attribute that the pipeline needs is absent or empty."""

    stage = "ingest"


class GeometryError(PipelineError):
    """Slices do not form a regular volume (missing slices, mixed orientation, tilt ...)."""

    stage = "ingest"


class SegmentationError(PipelineError):
    """A segmentation cannot be mapped to its image (wrong reference, empty, bad encoding)."""

    stage = "segmentation"


class SUVError(PipelineError):
    """PET values cannot be converted to SUV (missing dose, weight, time or unknown units)."""

    stage = "suv"


class FeatureError(PipelineError):
    """A feature could not be computed for a lesion."""

    stage = "features"


class FollowupError(PipelineError):
    """A follow-up input (registration reference, earlier timepoint's tables) is unusable."""

    stage = "followup"


class InternalError(PipelineError):
    """An unexpected exception: a bug, recorded so that the rest of the batch goes on."""

    stage = "internal"
