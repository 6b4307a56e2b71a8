"""The README's rule table is generated from configs/config.yaml (scripts/gen_rule_table.py)."""

import importlib.util
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _gen():
    spec = importlib.util.spec_from_file_location("gen_rule_table", ROOT / "scripts" / "gen_rule_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_rule_table_is_current():
    gen = _gen()
    rules = yaml.safe_load((ROOT / "configs" / "config.yaml").read_text())["ranking"]["rules"]
    readme = (ROOT / "README.md").read_text()
    assert gen.render_readme(readme, rules) == readme, \
        "README rule table is stale: run python scripts/gen_rule_table.py"
    for r in rules:
        assert f"| `{r['code']}` |" in readme


def test_rule_table_follows_a_threshold_change():
    gen = _gen()
    rules = yaml.safe_load((ROOT / "configs" / "config.yaml").read_text())["ranking"]["rules"]
    readme = (ROOT / "README.md").read_text()
    small = next(r for r in rules if r["code"] == "SIZE_SMALL")
    assert "`longest_diameter_mm` < 10.0" in gen.condition_text(small["when"])
    small["when"]["value"] = 8.0
    assert gen.render_readme(readme, rules) != readme
    assert gen.effect_text({"cap_tier": "not_suitable"}) == "tier at most not_suitable"
    assert gen.effect_text({"penalty": 0.2, "board": True}) == "board review, -0.2"
