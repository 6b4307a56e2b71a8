# Shared by every rule file: the validated configuration, the study sheet, params hashes.
import hashlib
import sys
from pathlib import Path

import yaml

from pipeline.config import load_config, section_hash
from pipeline.errors import ConfigError
from pipeline.report import CAPTIONS
from pipeline.sheet import earlier_studies, read_study_sheet, sheet_path

CFG = load_config(overrides=config)  # raises ConfigError naming the key on a bad config
if not CFG["input"]:
    raise ConfigError("no input archive", hint="run with --config input=ARCHIVE output=RESULTS")
IN = str(Path(CFG["input"]).resolve())
OUT = str(Path(CFG["output"]).resolve())
PY = sys.executable
RES = CFG["resources"]

# The validated configuration every job reads: content-addressed, written once by `onstart`
# (never at parse time), so a job always reads the settings it was scheduled with.
_SETTINGS_TEXT = yaml.safe_dump(CFG, sort_keys=True)
SETTINGS = f"{OUT}/logs/config/{hashlib.sha256(_SETTINGS_TEXT.encode()).hexdigest()[:16]}.yaml"

#: configuration sections each step reads (its params hash)
SECTIONS = {
    "study": ("index", "features", "anatomy", "suv"),
    "rank": ("ranking", "followup"),
}
HASH = {step: section_hash(CFG, secs) for step, secs in SECTIONS.items()}

_SHEET_FILE = sheet_path(OUT)
if not _SHEET_FILE.is_file():
    raise ConfigError(
        f"no study sheet at {_SHEET_FILE}",
        hint=f"run `hitit run --input {IN} --output {OUT}` (it indexes the archive first), or "
             f"`hitit index --input {IN} --output {OUT}` before snakemake",
    )
SHEET = read_study_sheet(_SHEET_FILE)
STUDIES = [(r["patient_dir"], r["study_dir"]) for r in SHEET.to_dict(orient="records")]

wildcard_constraints:
    patient=r"[A-Za-z0-9._-]+",
    study=r"[A-Za-z0-9._-]+",


onstart:
    _p = Path(SETTINGS)
    if not _p.is_file() or _p.read_text() != _SETTINGS_TEXT:
        _p.parent.mkdir(parents=True, exist_ok=True)
        _tmp = _p.with_suffix(".tmp")
        _tmp.write_text(_SETTINGS_TEXT)
        _tmp.replace(_p)


def study_path(patient, study, name):
    return f"{OUT}/studies/{patient}/{study}/{name}"


def all_studies(name):
    """``name`` in every study folder of the sheet."""
    return [study_path(p, s, name) for p, s in STUDIES]


def optional_files(*keys):
    """Files named in the ranking settings (model, sidecar) that exist: inputs of the steps
    that read them, so that a changed file reruns them."""
    out = []
    for k in keys:
        v = CFG["ranking"].get(k)
        if v:
            out.append(str(Path(v).resolve()))
    return out
