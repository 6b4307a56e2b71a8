"""Where the packaged settings live, and how a YAML settings file is read.

The lowest layer for settings files: :mod:`pipeline.config` (which validates the workflow
configuration, and so knows the ranking rules' grammar) and the ranking's clinical sidecar both
read their YAML through :func:`load_yaml`, so neither has to import the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
#: libyaml's safe loader when PyYAML was built with it (same documents, ~10x faster to parse).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file, raising :class:`ConfigError` with the file name on failure."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"configuration file not found: expected a YAML file at {p}", file=p,
            hint="check the path given with --config / --configfile",
        )
    try:
        with open(p, encoding="utf-8") as fh:
            return yaml.load(fh, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=p) from exc
