"""Load, merge and validate the workflow configuration.

Order of precedence (later wins): ``configs/config.yaml`` (packaged defaults) -> a user YAML
file -> command-line overrides. The merged result is validated against
``configs/config.schema.yaml`` (JSON Schema, ``additionalProperties: false`` everywhere), and
missing keys are filled from the schema's defaults. Validation happens before any job runs, and
errors name the offending key path.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators

from pipeline.errors import ConfigError
from pipeline.paths import CONFIG_DIR, REPO_ROOT, load_yaml  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

DEFAULT_CONFIG = CONFIG_DIR / "config.yaml"
SCHEMA = CONFIG_DIR / "config.schema.yaml"


def _with_defaults(cls):
    """Extend a jsonschema validator class so that validation fills ``default`` values."""
    validate_props = cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return validators.extend(cls, {"properties": set_defaults})


_FillingValidator = _with_defaults(Draft202012Validator)


def deep_merge(base: dict, override: dict) -> dict:
    """Recursively merge ``override`` into a copy of ``base`` (lists and scalars replace)."""
    out = copy.deepcopy(base)
    for key, val in (override or {}).items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], val)
        else:
            out[key] = copy.deepcopy(val)
    return out


def schema() -> dict:
    """The configuration JSON Schema as a dict."""
    return load_yaml(SCHEMA)


def validate(cfg: dict, *, source: str = "configuration") -> dict:
    """Validate ``cfg`` in place (filling defaults) and return it.

    Raises
    ------
    ConfigError
        Naming the key path (e.g. ``ranking.needle.base_error_mm``), what was expected and what
        was found. All problems are listed, not only the first.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, found {type(cfg).__name__}")
    validator = _FillingValidator(schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = []
        for err in errors:
            path = ".".join(str(p) for p in err.absolute_path) or "<top level>"
            if err.validator == "additionalProperties":
                extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
                allowed = ", ".join(sorted(err.schema.get("properties", {})))
                for key in extra:
                    full = f"{path}.{key}" if path != "<top level>" else key
                    lines.append(f"unknown key '{full}' (allowed here: {allowed})")
            elif err.validator == "oneOf" and "when" in path:
                lines.append(f"'{path}': not a valid rule condition: {json.dumps(err.instance)}")
            else:
                lines.append(f"'{path}': {err.message}")
        raise ConfigError(
            f"{source} is invalid: " + "; ".join(lines),
            hint="compare with configs/config.yaml and configs/config.schema.yaml",
        )
    _check_semantics(cfg, source)
    return cfg


def _check_semantics(cfg: dict, source: str) -> None:
    """Checks JSON Schema cannot express (ordering of thresholds, unique rule codes)."""
    r = cfg.get("ranking", {})
    t = r.get("tier_min_score")
    if t and not (t["recommended"] >= t["acceptable"] >= t["board_review"]):
        raise ConfigError(
            f"{source}: 'ranking.tier_min_score' must satisfy recommended >= acceptable >= "
            f"board_review, found {t}"
        )
    codes = [rule["code"] for rule in r.get("rules", [])]
    dup = sorted({c for c in codes if codes.count(c) > 1})
    if dup:
        raise ConfigError(f"{source}: duplicate rule codes in 'ranking.rules': {dup}")
    v = r.get("volume")
    if v and v["min_ml"] > v["max_ml"]:
        raise ConfigError(f"{source}: 'ranking.volume.min_ml' > 'ranking.volume.max_ml'")
    _check_columns(r, source)


def _check_columns(r: dict, source: str) -> None:
    """Rules, training features and sidecar columns name only declared lesion-table columns
    (:mod:`pipeline.columns`): a misspelled column would make a rule "not evaluated" for every
    lesion, silently. All problems are listed, each with a did-you-mean hint."""
    from pipeline.columns import (
        feature_readable_columns,
        rule_readable_columns,
        unknown_column_message,
    )
    from pipeline.ranking.model import undeclared_features
    from pipeline.ranking.rules import undeclared_rule_columns

    problems = []
    readable = rule_readable_columns()
    for code, where, col in undeclared_rule_columns(r):
        problems.append(f"rule {code} ({where}): {unknown_column_message(col, readable)}")
    for key, col in undeclared_features(r):
        problems.append(f"'ranking.training.{key}': "
                        f"{unknown_column_message(col, feature_readable_columns())}")
    if problems:
        raise ConfigError(
            f"{source}: " + "; ".join(problems),
            hint="use a column of the lesion table (README 'Lesion table columns', "
                 "pipeline/columns.py); a rule on an unknown column would never be evaluated",
        )
    if r.get("sidecar"):
        from pipeline.ranking.sidecar import check_declared

        check_declared()


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Packaged defaults, merged with a user file and overrides, validated.

    Parameters
    ----------
    path : optional user YAML file.
    overrides : optional dict (e.g. from ``--config input=... output=...``).
    """
    cfg = load_yaml(DEFAULT_CONFIG)
    sources = ["configs/config.yaml"]
    if path is not None:
        user = load_yaml(path) or {}
        if not isinstance(user, dict):
            raise ConfigError(f"expected a mapping at the top level of {path}", file=path)
        cfg = deep_merge(cfg, user)
        sources.append(str(path))
    if overrides:
        cfg = deep_merge(cfg, overrides)
        sources.append("command-line overrides")
    return validate(cfg, source="configuration (" + " + ".join(sources) + ")")


def config_hash(cfg: dict) -> str:
    """SHA-256 of the canonical JSON of the settings that affect results.

    ``input``, ``output`` and ``resources`` are excluded: moving an archive or giving a job more
    memory does not change any number.
    """
    relevant = {k: v for k, v in cfg.items() if k not in ("input", "output", "resources")}
    blob = json.dumps(relevant, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def section_hash(cfg: dict, sections: tuple[str, ...] | list[str]) -> str:
    """Short SHA-256 of the named top-level sections of ``cfg`` (canonical JSON).

    The workflow gives each rule the hash of exactly the sections its step reads as a
    ``params`` value, so that Snakemake reruns a step when, and only when, one of them changes.
    """
    missing = [s for s in sections if s not in cfg]
    if missing:
        raise ConfigError(f"unknown configuration section(s) {missing} for a rule's params hash",
                          hint="sections are the top-level keys of configs/config.yaml")
    blob = json.dumps({s: cfg[s] for s in sorted(sections)}, sort_keys=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parse_overrides(items: list[str]) -> dict:
    """Turn ``["a.b=1", "input=/x"]`` into a nested dict; values are parsed as YAML scalars."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not KEY=VALUE")
        key, raw = item.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else None
    return out
