"""Shared phantom fixtures of the anatomy tests (arrays only, no files, built once per session)."""

from __future__ import annotations

import pytest
from anatomy_phantom import PhantomStudy


@pytest.fixture(scope="session")
def extended() -> PhantomStudy:
    return PhantomStudy("extended")


@pytest.fixture(scope="session")
def standard() -> PhantomStudy:
    return PhantomStudy("standard")
