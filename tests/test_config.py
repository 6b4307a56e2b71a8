"""Configuration loading and validation (pipeline/config.py)."""

import pytest
import yaml

from pipeline import config as cfgmod
from pipeline.errors import ConfigError


def test_packaged_defaults_validate():
    cfg = cfgmod.load_config()
    assert cfg["ranking"]["injections_per_session"] == 2
    assert {r["code"] for r in cfg["ranking"]["rules"]} >= {
        "SIZE_SMALL", "SIZE_LARGE", "SIZE_DEPTH", "LIVER_SUBCAPSULAR", "VESSEL_ABUT"}


def _scalar_defaults(schema, prefix=""):
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        if "default" in sub and not isinstance(sub["default"], dict):
            yield path, sub["default"]
        if sub.get("type") == "object":
            yield from _scalar_defaults(sub, path + ".")


def test_schema_defaults_match_config_yaml():
    """The schema's defaults and configs/config.yaml must not drift apart."""
    schema = cfgmod.schema()
    cfg = yaml.safe_load(open(cfgmod.DEFAULT_CONFIG))
    checked = 0
    for path, default in _scalar_defaults(schema):
        node = cfg
        for part in path.split("."):
            node = node[part]
        assert node == default, f"{path}: config.yaml has {node!r}, schema default {default!r}"
        checked += 1
    assert checked > 20


def test_partial_user_config_gets_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("ranking:\n  injections_per_session: 1\n")
    cfg = cfgmod.load_config(p)
    assert cfg["ranking"]["injections_per_session"] == 1
    assert cfg["ranking"]["needle"]["base_error_mm"] == 2.0


@pytest.mark.parametrize(
    "override,needle",
    [
        ({"bogus_key": 1}, "bogus_key"),
        ({"ranking": {"needlez": {}}}, "ranking.needlez"),
        ({"ranking": {"needle": {"base_error_mm": "two"}}}, "ranking.needle.base_error_mm"),
        ({"features": {"pet": {"min_coverage": 2}}}, "features.pet.min_coverage"),
        ({"ranking": {"injections_per_session": 1.5}}, "ranking.injections_per_session"),
    ],
)
def test_bad_keys_and_types_are_named(override, needle):
    with pytest.raises(ConfigError) as err:
        cfgmod.load_config(overrides=override)
    assert needle in str(err.value)


def test_bad_rule_is_rejected():
    cfg = cfgmod.load_config()
    rules = cfg["ranking"]["rules"] + [
        {"code": "X_RULE", "stage": "safety", "when": {"column": "a", "op": "~"},
         "effect": {"bonus": 0.1}, "message": "m"}]
    with pytest.raises(ConfigError, match="ranking.rules"):
        cfgmod.load_config(overrides={"ranking": {"rules": rules}})


def test_duplicate_rule_codes_rejected():
    cfg = cfgmod.load_config()
    rules = cfg["ranking"]["rules"] + [cfg["ranking"]["rules"][0]]
    with pytest.raises(ConfigError, match="duplicate rule codes"):
        cfgmod.load_config(overrides={"ranking": {"rules": rules}})


def test_config_hash_ignores_paths_but_not_thresholds():
    a = cfgmod.load_config(overrides={"input": "/a", "output": "/b"})
    b = cfgmod.load_config(overrides={"input": "/c", "output": "/d"})
    c = cfgmod.load_config(overrides={"ranking": {"needle": {"base_error_mm": 3.0}}})
    assert cfgmod.config_hash(a) == cfgmod.config_hash(b)
    assert cfgmod.config_hash(a) != cfgmod.config_hash(c)


def test_parse_overrides():
    assert cfgmod.parse_overrides(["ranking.injections_per_session=1", "input=/x"]) == {
        "ranking": {"injections_per_session": 1}, "input": "/x"}
    with pytest.raises(ConfigError):
        cfgmod.parse_overrides(["novalue"])
