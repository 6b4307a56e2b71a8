"""Shared fixtures of the ranking tests: configuration and synthetic lesion rows (no images)."""

import copy

import pytest

from pipeline.config import load_config


@pytest.fixture(scope="session")
def base_cfg():
    return load_config()


@pytest.fixture
def cfg(base_cfg):
    """The packaged ``ranking`` section, a fresh copy per test (tests may edit it)."""
    return copy.deepcopy(base_cfg["ranking"])
