"""safe_id: output path components from untrusted identifiers."""

from __future__ import annotations

import re
import string

import numpy as np
import pytest

from pipeline.io.sanitize import MAX_LEN, safe_id

SAFE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")


@pytest.mark.parametrize("raw", ["PAT001", "1.2.840.113619.2.55.3", "a_b-c.d", "X" * 64])
def test_safe_ids_unchanged(raw):
    assert safe_id(raw) == raw


@pytest.mark.parametrize("raw", ["../../x", "..", ".", "", "a/b", "a\\b", "Müller, Jörg",
                                 "患者", ".hidden", "x" * 200, " ", "a b", "\x00evil", None])
def test_unsafe_ids_sanitized(raw, tmp_path):
    out = safe_id(raw)
    assert SAFE.match(out), out
    assert 0 < len(out) <= MAX_LEN
    assert out not in {".", ".."}
    assert safe_id(raw) == out  # stable
    # stays inside the results folder
    assert (tmp_path / out).resolve().parent == tmp_path.resolve()


def test_transliteration_keeps_readability():
    assert safe_id("Müller").startswith("Muller-")


def test_no_collisions():
    rng = np.random.default_rng(0)
    alphabet = list(string.ascii_letters + string.digits + "._-/ \\:*?äöüé")
    raws = {"".join(rng.choice(alphabet, size=int(rng.integers(0, 12)))) for _ in range(5000)}
    raws |= {"a b", "a_b", "a/b", "a:b", "a_b-", "..a", ".a", "a"}
    outs = {safe_id(r) for r in raws}
    assert len(outs) == len(raws)
