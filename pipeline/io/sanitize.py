"""Safe identifiers for output paths.

Every folder or file name the pipeline derives from DICOM content (PatientID, StudyInstanceUID,
segment labels ...) goes through :func:`safe_id`, so that an identifier such as ``../../x``,
``"PAT 01/ä"`` or an empty string can never escape the results folder or clash with another one.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

#: Longest identifier returned by :func:`safe_id` (characters).
MAX_LEN = 64
_HASH_LEN = 8
_ALLOWED = re.compile(r"[^A-Za-z0-9._-]+")


def safe_id(raw: str) -> str:
    """Return a filesystem-safe, stable version of ``raw``.

    Rules
    -----
    * Only ASCII ``[A-Za-z0-9._-]``; accented letters are transliterated (NFKD, ``é`` -> ``e``),
      every other run of characters becomes ``_``.
    * No leading dots (so never ``.``, ``..`` or a hidden file), never empty, at most 64
      characters.
    * An identifier that is already safe is returned unchanged. When anything had to be changed
      (characters replaced, dots stripped, truncated, empty), leading dots/underscores are
      trimmed and a suffix ``-`` + the first 8 hex digits of the SHA-1 of the UTF-8 ``raw`` string is appended, so two different raw
      identifiers map to different results (barring a 32-bit hash collision) and the same raw
      identifier always maps to the same result.

    Parameters
    ----------
    raw : str
        Any identifier (``None`` is treated as ``""``; non-strings are converted with ``str``).

    Returns
    -------
    str
        The safe identifier.

    Examples
    --------
    >>> safe_id("PAT001")
    'PAT001'
    >>> safe_id("../../x")
    'x-9bdbf20b'
    """
    text = "" if raw is None else str(raw)
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    cleaned = _ALLOWED.sub("_", ascii_text).lstrip(".")
    if cleaned == text and 0 < len(cleaned) <= MAX_LEN:
        return cleaned
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]
    stem = re.sub(r"^[._]+", "", cleaned)[: MAX_LEN - _HASH_LEN - 1].rstrip("_") or "id"
    return f"{stem}-{digest}"
