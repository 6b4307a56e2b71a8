"""IBSI 1 evidence: the digital phantom (copied into tests/data, CC BY 4.0) and, when the shared
folder is present, the CT phantom (CC BY-NC 3.0, never copied)."""

from __future__ import annotations

import pytest

from pipeline.testing import ibsi


@pytest.fixture(scope="module")
def digital():
    return ibsi.digital_phantom_table()


def test_mapping_names_exist_in_pyradiomics():
    from radiomics import getFeatureClasses

    classes = getFeatureClasses()
    for cls, feat, tag, kind in ibsi.MAPPING:
        assert feat in classes[cls].getFeatureNames(), (cls, feat)
        assert kind in ("plain", "matrix", "zone")
    tags = [ibsi.ibsi_tag(t, k, "3D", False) for _, _, t, k in ibsi.MAPPING]
    assert len(tags) == len(set(tags))


def test_digital_phantom_at_least_90_percent_and_every_failure_explained(digital):
    assert len(digital) > 250
    rate = digital["pass"].mean()
    assert rate >= 0.90, rate
    failed = digital[~digital["pass"]]
    assert (failed["deviation"] != "unexplained").all(), failed[["ibsi_tag", "ours"]]
    assert (failed["deviation"] != "").all()
    # the pipeline's own aggregation alone also passes
    own = digital[digital["run"].str.startswith("3D averaged")]
    assert own["pass"].mean() >= 0.90
    # the known pyradiomics deviations are the failures, and their numeric checks hold
    assert set(failed["ibsi_tag"]) <= {"stat_kurt", "morph_pca_min_axis", "morph_pca_least_axis"}
    assert failed["note"].str.contains("within tolerance").all()


def test_pass_criterion_rounds_to_three_significant_digits():
    assert ibsi.round_sig_half_unit(0.503) == pytest.approx(0.0005)
    assert ibsi.round_sig_half_unit(145.0) == pytest.approx(0.5)
    assert ibsi.round_sig_half_unit(0.0) == 0.0


def test_markdown_report_lists_rates_and_deviations(digital):
    md = ibsi.markdown_report(digital)
    assert "| digital phantom |" in md and "kurtosis" in md and "## Full table" in md


@pytest.mark.skipif(not (ibsi.SHARED_IBSI_DIR / "ibsi_1_ct_radiomics_phantom").is_dir(),
                    reason="IBSI CT phantom (CC BY-NC 3.0) not available: it stays in "
                           "../shared/reference_data/ibsi and is never copied into the project")
def test_ct_phantom_configuration_d_with_our_resampling():
    base = ibsi.base_ct_params()
    runs = tuple(r for r in ibsi.CT_PHANTOM_RUNS if r.dataset == "configuration D")
    d = ibsi.SHARED_IBSI_DIR
    t = ibsi.dataset_table(d / "ibsi_1_ct_radiomics_phantom/nifti/image/phantom.nii.gz",
                           d / "ibsi_1_ct_radiomics_phantom/nifti/mask/mask.nii.gz",
                           d / "reference_values/ibsi_1_reference_values_config_D.csv",
                           runs, base, round_image=True)
    assert t["pass"].mean() >= 0.95
    assert set(t.loc[~t["pass"], "ibsi_tag"]) == {"stat_kurt"}
