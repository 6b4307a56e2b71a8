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


# ---- rules, training features and sidecar columns name declared lesion-table columns

def _misspelled_rules():
    cfg = cfgmod.load_config()
    rules = [dict(r) for r in cfg["ranking"]["rules"]]
    for r in rules:
        if r["code"] == "VESSEL_ENCASE":
            r["when"] = {"column": "vesel_relation", "op": "==", "value": "encasing"}
    return rules


def test_rule_on_undeclared_column_is_rejected_naming_code_and_column():
    with pytest.raises(ConfigError) as err:
        cfgmod.load_config(overrides={"ranking": {"rules": _misspelled_rules()}})
    msg = str(err.value)
    assert "rule VESSEL_ENCASE" in msg
    assert "'vesel_relation'" in msg
    assert "did you mean 'vessel_relation'" in msg
    assert err.value.hint


def test_rule_message_on_undeclared_column_is_rejected():
    cfg = cfgmod.load_config()
    rules = cfg["ranking"]["rules"] + [
        {"code": "MSG_TYPO", "stage": "safety", "when": {"column": "organ", "op": "present"},
         "effect": {"info": True}, "message": "depth {skin_dept_mm:.0f} mm"}]
    with pytest.raises(ConfigError, match=r"rule MSG_TYPO \(message\).*'skin_dept_mm'.*skin_depth_mm"):
        cfgmod.load_config(overrides={"ranking": {"rules": rules}})


def test_rules_may_read_sidecar_followup_and_derived_columns():
    cfg = cfgmod.load_config()
    rules = cfg["ranking"]["rules"] + [
        {"code": f"R{i}", "stage": "safety", "when": {"column": c, "op": "present"},
         "effect": {"info": True}, "message": "m"}
        for i, c in enumerate(["biopsy_required", "new_or_growing", "needle_hit_probability",
                               "mask_referenced_series_uid"])]
    assert len(cfgmod.load_config(overrides={"ranking": {"rules": rules}})["ranking"]["rules"]) \
        == len(rules)


def test_rule_on_verdict_column_is_rejected():
    """Rules run before the verdict exists: a rule on rule_score could never be evaluated."""
    cfg = cfgmod.load_config()
    rules = cfg["ranking"]["rules"] + [
        {"code": "ON_SCORE", "stage": "safety", "when": {"column": "rule_score", "op": ">", "value": 0.5},
         "effect": {"info": True}, "message": "m"}]
    with pytest.raises(ConfigError, match="rule ON_SCORE"):
        cfgmod.load_config(overrides={"ranking": {"rules": rules}})


def test_undeclared_training_feature_is_rejected():
    ov = cfgmod.parse_overrides(["ranking.training.boolean_features=[us_windw, safe_path_found]"])
    with pytest.raises(ConfigError) as err:
        cfgmod.load_config(overrides=ov)
    assert "ranking.training.boolean_features" in str(err.value)
    assert "'us_windw'" in str(err.value) and "did you mean 'us_window'" in str(err.value)
    # verdict and follow-up columns are valid features
    feats = ["rule_score", "rule_rank", "longest_diameter_change_pct"]
    ok = {"ranking": {"training": {"numeric_features": feats}}}
    assert cfgmod.load_config(overrides=ok)["ranking"]["training"]["numeric_features"] == feats


def test_hitit_run_with_misspelled_rule_column_fails_before_any_job(tmp_path, monkeypatch, capsys):
    import subprocess

    from pipeline import cli

    def no_jobs(*a, **k):
        raise AssertionError("snakemake must not start")

    monkeypatch.setattr(subprocess, "call", no_jobs)
    archive = tmp_path / "archive"
    archive.mkdir()
    rule = ("ranking.rules=[{code: TYPO_RULE, stage: safety, effect: {info: true}, "
            "message: m, when: {column: vesel_relation, op: present}}]")
    rc = cli.main(["run", "--input", str(archive), "--output", str(tmp_path / "out"),
                   "--set", rule])
    err = capsys.readouterr().err
    assert rc == 2
    assert "rule TYPO_RULE" in err and "'vesel_relation'" in err and "vessel_relation" in err
    assert not (tmp_path / "out" / "logs" / "run_config.yaml").exists()
