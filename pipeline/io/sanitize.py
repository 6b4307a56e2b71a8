"""Safe identifiers for output paths, valid UIDs, and text that is safe to show.

Every folder or file name the pipeline derives from DICOM content (PatientID, StudyInstanceUID,
segment labels ...) goes through :func:`safe_id`, so that an identifier such as ``../../x``,
``"PAT 01/ä"`` or an empty string can never escape the results folder or clash with another one.

UIDs (value representation UI) are checked at ingestion with :func:`is_valid_uid`; an invalid
StudyInstanceUID (``;rm -rf /``, 10,000 characters ...) is replaced by :func:`replacement_uid`, a
deterministic ``2.25.`` UID derived from the raw value, so that no invalid UID reaches a DICOM
object the pipeline writes. Every text shown in a page goes through :func:`clean_text`, which
removes control characters (NUL, escape sequences ...).
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
import uuid

log = logging.getLogger(__name__)

#: Longest identifier returned by :func:`safe_id` (characters).
MAX_LEN = 64
_HASH_LEN = 8
_ALLOWED = re.compile(r"[^A-Za-z0-9._-]+")
#: Longest UID (PS3.5 section 9.1: value representation UI, 64 bytes).
MAX_UID_LEN = 64
_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
#: Namespace of :func:`replacement_uid` (a fixed UUID, so replacements are reproducible).
_UID_NAMESPACE = uuid.UUID("6f1c3d2a-8a47-5f0e-9c1b-2d4e6a8b0c13")
#: C0 controls except TAB, LF, CR; DEL; C1 controls.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def is_valid_uid(value: str) -> bool:
    """True when ``value`` is a valid DICOM UID (value representation UI).

    Rules (PS3.5 sections 9 and 6.2): 1-64 characters; only digits and dots; components
    separated by single dots, none empty; no leading zero in a component except the component
    "0" itself.

    Examples
    --------
    >>> is_valid_uid("1.2.840.10008.1.2")
    True
    >>> is_valid_uid("1.02.3"), is_valid_uid(";rm -rf /"), is_valid_uid("1." + "1" * 63)
    (False, False, False)
    """
    return (isinstance(value, str) and 0 < len(value) <= MAX_UID_LEN
            and _UID_RE.fullmatch(value) is not None)


def replacement_uid(raw: str) -> str:
    """A valid UID standing in for an invalid one: ``2.25.`` + the decimal of the UUID (version
    5, fixed namespace) of ``raw``.

    The same raw value always gives the same replacement (every file of a study keeps one study
    UID), different raw values give different ones; at most 44 characters (PS3.5 B.2).
    """
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, str(raw)).int}"


_REPORTED: set[str] = set()


def checked_uid(raw: str, *, tag: str, where: str = "") -> str:
    """``raw`` when it is a valid UID (or empty), else its :func:`replacement_uid`, logged as a
    warning naming the tag, the place (first file) and the (cleaned, shortened) raw value, once
    per raw value and process."""
    if not raw or is_valid_uid(raw):
        return raw
    new = replacement_uid(raw)
    if new in _REPORTED:  # one warning per invalid value and process, not one per file
        log.debug("invalid %s in %s replaced by %s", tag, where, new)
        return new
    _REPORTED.add(new)
    shown = clean_text(raw)
    shown = shown if len(shown) <= 80 else f"{shown[:80]}... ({len(raw)} characters)"
    log.warning("invalid %s %r%s replaced by the generated UID %s (a UID is at most %d "
                "characters, digits and dots, no leading zeros)", tag, shown,
                f" in {where}" if where else "", new, MAX_UID_LEN)
    return new


def clean_text(value) -> str:
    r"""``value`` as text without control characters (C0 except tab / newline / carriage return,
    DEL, C1), for anything shown to a user (pages, tables).

    Examples
    --------
    >>> clean_text("PAT\x0001\x1b[31m")
    'PAT01[31m'
    """
    text = "" if value is None else str(value)
    return _CONTROL.sub("", text)


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
