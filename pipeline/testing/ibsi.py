"""IBSI 1 compliance of our pyradiomics extraction: the feature-name mapping and the comparison.

Where the mapping comes from
----------------------------
The IBSI feature tags (``morph_volume``, ``cm_joint_max_3D_avg`` ...) are the ``tag`` column of
the IBSI 1 reference-value tables (``ibsi_1_reference_values_*.csv``, theibsi/data_sets) and the
feature definitions of the IBSI 1 reference manual (Zwanenburg et al., chapter 3). The
pyradiomics names are those of pyradiomics 3.0.1 (``radiomics/<class>.py``,
``get<Name>FeatureValue``). Each pyradiomics feature was paired with the IBSI feature whose
formula it implements, reading both definitions; where pyradiomics' own documentation says a
feature equals another one (GLCM "Sum Variance = Cluster Tendency", "Dissimilarity =
Difference Average", GLDM "Grey Level Non-Uniformity Normalized = first-order Uniformity"), the
IBSI tag of the equal feature is mapped too. pyradiomics features without an IBSI counterpart
(``TotalEnergy``, ``StandardDeviation``, ``MCC``, the 2D maximum diameters) are not listed; IBSI
features without a pyradiomics implementation (morphological densities, Moran's I, local
intensity peaks, the intensity-volume histogram, the grey level distance zone matrix, median
absolute deviation, coefficient of variation ...) are "not implemented" and do not count.

Aggregation
-----------
IBSI texture tags end in the aggregation: ``_3D_avg`` (one matrix per direction, features
averaged: pyradiomics' default), ``_3D_comb`` (matrices merged before computing features:
pyradiomics ``weightingNorm: no_weighting``), ``_2_5D_avg`` / ``_2_5D_comb`` (in-plane
directions, matrices pooled over slices: pyradiomics ``force2D``), and ``_3D`` / ``_2_5D`` for
the size-zone, dependence and neighbourhood-difference matrices. pyradiomics cannot compute the
IBSI "2D" (per-slice) aggregations.

Pass criterion
--------------
``|ours - reference| <= tolerance + half a unit in the reference's third significant digit``:
IBSI reference values are given to three significant digits (the digital phantom's tolerance is
0: a match after rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

#: (pyradiomics class, pyradiomics feature, IBSI tag base, kind). kind: "plain" = no
#: aggregation suffix (morphology, statistics, histogram); "matrix" = GLCM/GLRLM (suffix
#: ``_<dim>_avg`` or ``_<dim>_comb``); "zone" = GLSZM/GLDM/NGTDM (suffix ``_<dim>``).
MAPPING: tuple[tuple[str, str, str, str], ...] = (
    # morphology (pyradiomics "shape"; Compactness1/2 and SphericalDisproportion are deprecated
    # in pyradiomics but still computed when enabled explicitly)
    ("shape", "MeshVolume", "morph_volume", "plain"),
    ("shape", "VoxelVolume", "morph_vol_approx", "plain"),
    ("shape", "SurfaceArea", "morph_area_mesh", "plain"),
    ("shape", "SurfaceVolumeRatio", "morph_av", "plain"),
    ("shape", "Compactness1", "morph_comp_1", "plain"),
    ("shape", "Compactness2", "morph_comp_2", "plain"),
    ("shape", "SphericalDisproportion", "morph_sph_dispr", "plain"),
    ("shape", "Sphericity", "morph_sphericity", "plain"),
    ("shape", "Maximum3DDiameter", "morph_diam", "plain"),
    ("shape", "MajorAxisLength", "morph_pca_maj_axis", "plain"),
    ("shape", "MinorAxisLength", "morph_pca_min_axis", "plain"),
    ("shape", "LeastAxisLength", "morph_pca_least_axis", "plain"),
    ("shape", "Elongation", "morph_pca_elongation", "plain"),
    ("shape", "Flatness", "morph_pca_flatness", "plain"),
    # intensity statistics (raw intensities) and intensity histogram (discretised)
    ("firstorder", "Mean", "stat_mean", "plain"),
    ("firstorder", "Variance", "stat_var", "plain"),
    ("firstorder", "Skewness", "stat_skew", "plain"),
    ("firstorder", "Kurtosis", "stat_kurt", "plain"),
    ("firstorder", "Median", "stat_median", "plain"),
    ("firstorder", "Minimum", "stat_min", "plain"),
    ("firstorder", "10Percentile", "stat_p10", "plain"),
    ("firstorder", "90Percentile", "stat_p90", "plain"),
    ("firstorder", "Maximum", "stat_max", "plain"),
    ("firstorder", "InterquartileRange", "stat_iqr", "plain"),
    ("firstorder", "Range", "stat_range", "plain"),
    ("firstorder", "MeanAbsoluteDeviation", "stat_mad", "plain"),
    ("firstorder", "RobustMeanAbsoluteDeviation", "stat_rmad", "plain"),
    ("firstorder", "Energy", "stat_energy", "plain"),
    ("firstorder", "RootMeanSquared", "stat_rms", "plain"),
    ("firstorder", "Entropy", "ih_entropy", "plain"),
    ("firstorder", "Uniformity", "ih_uniformity", "plain"),
    ("firstorder", "Uniformity", "ngl_glnu_norm", "zone"),
    # grey level co-occurrence matrix
    ("glcm", "MaximumProbability", "cm_joint_max", "matrix"),
    ("glcm", "JointAverage", "cm_joint_avg", "matrix"),
    ("glcm", "SumSquares", "cm_joint_var", "matrix"),
    ("glcm", "JointEntropy", "cm_joint_entr", "matrix"),
    ("glcm", "DifferenceAverage", "cm_diff_avg", "matrix"),
    ("glcm", "DifferenceVariance", "cm_diff_var", "matrix"),
    ("glcm", "DifferenceEntropy", "cm_diff_entr", "matrix"),
    ("glcm", "SumAverage", "cm_sum_avg", "matrix"),
    ("glcm", "ClusterTendency", "cm_sum_var", "matrix"),
    ("glcm", "SumEntropy", "cm_sum_entr", "matrix"),
    ("glcm", "JointEnergy", "cm_energy", "matrix"),
    ("glcm", "Contrast", "cm_contrast", "matrix"),
    ("glcm", "DifferenceAverage", "cm_dissimilarity", "matrix"),
    ("glcm", "Id", "cm_inv_diff", "matrix"),
    ("glcm", "Idn", "cm_inv_diff_norm", "matrix"),
    ("glcm", "Idm", "cm_inv_diff_mom", "matrix"),
    ("glcm", "Idmn", "cm_inv_diff_mom_norm", "matrix"),
    ("glcm", "InverseVariance", "cm_inv_var", "matrix"),
    ("glcm", "Correlation", "cm_corr", "matrix"),
    ("glcm", "Autocorrelation", "cm_auto_corr", "matrix"),
    ("glcm", "ClusterTendency", "cm_clust_tend", "matrix"),
    ("glcm", "ClusterShade", "cm_clust_shade", "matrix"),
    ("glcm", "ClusterProminence", "cm_clust_prom", "matrix"),
    ("glcm", "Imc1", "cm_info_corr1", "matrix"),
    ("glcm", "Imc2", "cm_info_corr2", "matrix"),
    # grey level run length matrix
    ("glrlm", "ShortRunEmphasis", "rlm_sre", "matrix"),
    ("glrlm", "LongRunEmphasis", "rlm_lre", "matrix"),
    ("glrlm", "LowGrayLevelRunEmphasis", "rlm_lgre", "matrix"),
    ("glrlm", "HighGrayLevelRunEmphasis", "rlm_hgre", "matrix"),
    ("glrlm", "ShortRunLowGrayLevelEmphasis", "rlm_srlge", "matrix"),
    ("glrlm", "ShortRunHighGrayLevelEmphasis", "rlm_srhge", "matrix"),
    ("glrlm", "LongRunLowGrayLevelEmphasis", "rlm_lrlge", "matrix"),
    ("glrlm", "LongRunHighGrayLevelEmphasis", "rlm_lrhge", "matrix"),
    ("glrlm", "GrayLevelNonUniformity", "rlm_glnu", "matrix"),
    ("glrlm", "GrayLevelNonUniformityNormalized", "rlm_glnu_norm", "matrix"),
    ("glrlm", "RunLengthNonUniformity", "rlm_rlnu", "matrix"),
    ("glrlm", "RunLengthNonUniformityNormalized", "rlm_rlnu_norm", "matrix"),
    ("glrlm", "RunPercentage", "rlm_r_perc", "matrix"),
    ("glrlm", "GrayLevelVariance", "rlm_gl_var", "matrix"),
    ("glrlm", "RunVariance", "rlm_rl_var", "matrix"),
    ("glrlm", "RunEntropy", "rlm_rl_entr", "matrix"),
    # grey level size zone matrix
    ("glszm", "SmallAreaEmphasis", "szm_sze", "zone"),
    ("glszm", "LargeAreaEmphasis", "szm_lze", "zone"),
    ("glszm", "LowGrayLevelZoneEmphasis", "szm_lgze", "zone"),
    ("glszm", "HighGrayLevelZoneEmphasis", "szm_hgze", "zone"),
    ("glszm", "SmallAreaLowGrayLevelEmphasis", "szm_szlge", "zone"),
    ("glszm", "SmallAreaHighGrayLevelEmphasis", "szm_szhge", "zone"),
    ("glszm", "LargeAreaLowGrayLevelEmphasis", "szm_lzlge", "zone"),
    ("glszm", "LargeAreaHighGrayLevelEmphasis", "szm_lzhge", "zone"),
    ("glszm", "GrayLevelNonUniformity", "szm_glnu", "zone"),
    ("glszm", "GrayLevelNonUniformityNormalized", "szm_glnu_norm", "zone"),
    ("glszm", "SizeZoneNonUniformity", "szm_zsnu", "zone"),
    ("glszm", "SizeZoneNonUniformityNormalized", "szm_zsnu_norm", "zone"),
    ("glszm", "ZonePercentage", "szm_z_perc", "zone"),
    ("glszm", "GrayLevelVariance", "szm_gl_var", "zone"),
    ("glszm", "ZoneVariance", "szm_zs_var", "zone"),
    ("glszm", "ZoneEntropy", "szm_zs_entr", "zone"),
    # neighbourhood grey tone difference matrix
    ("ngtdm", "Coarseness", "ngt_coarseness", "zone"),
    ("ngtdm", "Contrast", "ngt_contrast", "zone"),
    ("ngtdm", "Busyness", "ngt_busyness", "zone"),
    ("ngtdm", "Complexity", "ngt_complexity", "zone"),
    ("ngtdm", "Strength", "ngt_strength", "zone"),
    # grey level dependence matrix = IBSI NGLDM with coarseness alpha = 0 (gldm_a: 0)
    ("gldm", "SmallDependenceEmphasis", "ngl_lde", "zone"),
    ("gldm", "LargeDependenceEmphasis", "ngl_hde", "zone"),
    ("gldm", "LowGrayLevelEmphasis", "ngl_lgce", "zone"),
    ("gldm", "HighGrayLevelEmphasis", "ngl_hgce", "zone"),
    ("gldm", "SmallDependenceLowGrayLevelEmphasis", "ngl_ldlge", "zone"),
    ("gldm", "SmallDependenceHighGrayLevelEmphasis", "ngl_ldhge", "zone"),
    ("gldm", "LargeDependenceLowGrayLevelEmphasis", "ngl_hdlge", "zone"),
    ("gldm", "LargeDependenceHighGrayLevelEmphasis", "ngl_hdhge", "zone"),
    ("gldm", "GrayLevelNonUniformity", "ngl_glnu", "zone"),
    ("gldm", "DependenceNonUniformity", "ngl_dcnu", "zone"),
    ("gldm", "DependenceNonUniformityNormalized", "ngl_dcnu_norm", "zone"),
    ("gldm", "GrayLevelVariance", "ngl_gl_var", "zone"),
    ("gldm", "DependenceVariance", "ngl_dc_var", "zone"),
    ("gldm", "DependenceEntropy", "ngl_dc_entr", "zone"),
)

#: IBSI family of a tag prefix (for the per-family pass rates).
FAMILIES = {
    "morph": "morphology", "stat": "intensity statistics", "ih": "intensity histogram",
    "cm": "GLCM", "rlm": "GLRLM", "szm": "GLSZM", "ngt": "NGTDM", "ngl": "NGLDM (pyradiomics GLDM)",
}

#: pyradiomics feature classes that ``featureClass`` overrides enable for the IBSI check: every
#: mapped feature, deprecated shape ones included.
IBSI_FEATURE_CLASSES = {
    cls: sorted({f for c, f, _, _ in MAPPING if c == cls})
    for cls in ("shape", "firstorder", "glcm", "glrlm", "glszm", "ngtdm", "gldm")
}

#: Named differences between pyradiomics 3.0.1 and the IBSI definitions or processing.
DEVIATIONS = {
    "kurtosis": ("pyradiomics 'Kurtosis' is Pearson's kurtosis; IBSI stat_kurt is the excess "
                 "kurtosis (= pyradiomics - 3)."),
    "pca": ("pyradiomics computes the PCA axis lengths from the population covariance of the voxel "
            "centres (1/N); the IBSI consensus corresponds to the sample covariance (1/(N-1)): "
            "lengths are shorter by sqrt((N-1)/N) (0.7 % for the 74-voxel phantom, < 0.05 % above "
            "1,000 voxels; elongation and flatness, ratios, are unaffected)."),
    "interpolation": ("pyradiomics' resampling differs from IBSI image processing: the new grid "
                      "is aligned to the image origin instead of centred on the original grid, "
                      "interpolated intensities are not rounded to integers, and the mask is "
                      "resampled nearest-neighbour instead of trilinear with a 0.5 partial-volume "
                      "threshold; the ROI and every feature computed on it move slightly."),
    "bin_start": ("pyradiomics' fixed-bin-size discretisation starts at the lowest ROI intensity "
                  "rounded down to a multiple of the bin width; IBSI starts at the lower "
                  "re-segmentation bound (-1000 HU here). Grey levels are shifted by a constant, "
                  "so features that use grey level values (averages, emphases, variances, "
                  "autocorrelation, cluster features) differ; those using only matrix shapes or "
                  "differences agree."),
    "mesh": ("pyradiomics builds its mesh with its own marching-cubes variant; mesh-based values "
             "(volume, area and their ratios) can differ slightly from the consensus mesh."),
}


def round_sig_half_unit(value: float, digits: int = 3) -> float:
    """Half a unit in the ``digits``-th significant digit of ``value`` (0 for 0)."""
    if value == 0 or not math.isfinite(value):
        return 0.0
    exponent = math.floor(math.log10(abs(value)))
    return 0.5 * 10.0 ** (exponent - digits + 1)


def ibsi_tag(base: str, kind: str, dim: str, merged: bool) -> str:
    """The IBSI tag of a mapped feature for an aggregation (``dim`` "3D" or "2_5D")."""
    if kind == "plain":
        return base
    if kind == "matrix":
        return f"{base}_{dim}_{'comb' if merged else 'avg'}"
    return f"{base}_{dim}"


def family_of(tag: str) -> str:
    """IBSI family name of a tag, with the aggregation for texture tags."""
    prefix = tag.split("_")[0]
    fam = FAMILIES.get(prefix, prefix)
    for suf, name in (("_3D_avg", "3D averaged"), ("_3D_comb", "3D merged"),
                      ("_2_5D_avg", "2.5D direction-merged"), ("_2_5D_comb", "2.5D merged"),
                      ("_2_5D", "2.5D"), ("_3D", "3D")):
        if tag.endswith(suf):
            return f"{fam} ({name})"
    return fam


@dataclass(frozen=True)
class Run:
    """One pyradiomics run of an IBSI data set.

    Attributes
    ----------
    dataset : "digital phantom" or "configuration A" ...
    label : what the run covers (e.g. "3D averaged").
    overrides : pyradiomics parameter overrides on top of ``configs/radiomics/ct.yaml``.
    dim : "3D" or "2_5D" (aggregation suffix of texture tags).
    merged : texture matrices merged before computing features.
    texture_only : only texture tags are compared (a second aggregation of the same image; the
        morphology and statistics rows come from the first run).
    deviations : keys of :data:`DEVIATIONS` that apply to every feature of this run.
    resampling : "ibsi" (the pipeline's own IBSI resampling,
        :func:`pipeline.features.radiomics.resample_ibsi`, HU rounded) or "pyradiomics".
    """

    dataset: str
    label: str
    overrides: dict
    dim: str = "3D"
    merged: bool = False
    texture_only: bool = False
    deviations: tuple[str, ...] = ()
    resampling: str = "ibsi"


def _bin_offset(values: dict, run: Run) -> float | None:
    """Grey-level offset (bins) between pyradiomics' and IBSI's fixed-bin-size discretisation."""
    st = run.overrides.get("setting", {})
    rng, w = st.get("resegmentRange"), st.get("binWidth")
    vmin = values.get("original_firstorder_Minimum")
    if not rng or not w or vmin is None or st.get("resegmentMode", "absolute") != "absolute":
        return None
    low = vmin - (vmin % w)  # pyradiomics.imageoperations.getBinEdges
    return (low - float(rng[0])) / float(w)


def _explain(tag: str, ours: float, ref: float, tol: float, run: Run, n_voxels: int | None,
             bin_offset: float | None = None) -> tuple[str, str]:
    """Why a feature fails: (deviation keys of :data:`DEVIATIONS`, numeric check)."""
    allowed = tol + round_sig_half_unit(ref)
    if tag.startswith("stat_kurt"):
        ok = abs((ours - 3.0) - ref) <= allowed
        return "kurtosis", (f"ours - 3 = {ours - 3.0:.4g}: "
                            f"{'within' if ok else 'outside'} tolerance")
    if tag.startswith("morph_pca") and tag not in ("morph_pca_elongation", "morph_pca_flatness"):
        if n_voxels and n_voxels > 1:
            corr = ours * math.sqrt(n_voxels / (n_voxels - 1))
            ok = abs(corr - ref) <= allowed
            return "pca", (f"ours x sqrt(N/(N-1)) = {corr:.4g} (N = {n_voxels}): "
                           f"{'within' if ok else 'outside'} tolerance")
        return "pca", ""
    keys = list(run.deviations)
    check = ""
    if "bin_start" in keys and bin_offset:
        shift = {"cm_joint_avg": 1.0, "cm_sum_avg": 2.0}.get(tag.rsplit("_", 2)[0])
        check = f"grey levels offset by {bin_offset:g} bins"
        if shift is not None:
            corr = ours + shift * bin_offset
            check += (f": ours + {shift * bin_offset:g} = {corr:.4g}, "
                      f"{'within' if abs(corr - ref) <= allowed else 'outside'} tolerance")
    if tag.startswith("morph_") and not keys:
        keys.append("mesh")
    return (",".join(keys) if keys else "unexplained"), check


def compliance_rows(values: dict[str, float], reference: pd.DataFrame, run: Run,
                    n_voxels: int | None = None) -> list[dict]:
    """Compare one run's pyradiomics values with the IBSI reference table.

    Parameters
    ----------
    values : pyradiomics output (``original_<class>_<feature>`` -> value).
    reference : an IBSI 1 reference-value table (columns ``tag``, ``reference value``,
        ``tolerance``, ``family``, ``feature``).
    run : the run's description (aggregation, deviations).
    n_voxels : voxels in the morphological mask (for the PCA-length check).

    Returns
    -------
    list of dict (one per mapped tag with a reference value): ``dataset``, ``run``,
    ``family``, ``feature`` (IBSI name), ``ibsi_tag``, ``pyradiomics_feature``, ``reference``,
    ``tolerance``, ``ours``, ``difference``, ``pass``, ``deviation`` (keys of
    :data:`DEVIATIONS` explaining a failure, "unexplained" if none applies) and ``note`` (the
    numeric check of the explanation, where one exists).
    """
    ref = reference.set_index("tag")
    offset = _bin_offset(values, run) if "bin_start" in run.deviations else None
    rows = []
    for cls, feat, base, kind in MAPPING:
        if run.texture_only and kind == "plain":
            continue
        if run.merged and kind == "zone":
            continue  # no averaged / merged distinction: compared in the averaged run
        tag = ibsi_tag(base, kind, run.dim, run.merged)
        if tag not in ref.index:
            continue
        r = ref.loc[tag]
        refv, tol = r["reference value"], r["tolerance"]
        if pd.isna(refv):
            continue
        refv, tol = float(refv), float(tol) if not pd.isna(tol) else 0.0
        key = f"original_{cls}_{feat}"
        ours = values.get(key)
        row = {"dataset": run.dataset, "run": run.label, "family": family_of(tag),
               "feature": str(r["feature"]), "ibsi_tag": tag, "pyradiomics_feature": key,
               "reference": refv, "tolerance": tol, "ours": ours, "difference": None,
               "pass": False, "deviation": "", "note": ""}
        if ours is None or not math.isfinite(ours):
            row["note"] = "pyradiomics returned no value"
        else:
            row["difference"] = ours - refv
            row["pass"] = abs(ours - refv) <= tol + round_sig_half_unit(refv)
            if not row["pass"]:
                row["deviation"], row["note"] = _explain(tag, ours, refv, tol, run, n_voxels,
                                                         offset)
            elif cls == "firstorder" and base == "ngl_glnu_norm":
                row["note"] = "pyradiomics: GLDM GLN normalised equals first-order Uniformity"
        rows.append(row)
    return rows


def pass_rates(table: pd.DataFrame) -> pd.DataFrame:
    """Passed / compared per data set and family."""
    g = table.groupby(["dataset", "family"], sort=False)["pass"]
    out = pd.DataFrame({"passed": g.sum().astype(int), "compared": g.size()})
    out["pass_rate"] = out["passed"] / out["compared"]
    return out.reset_index()


# --------------------------------------------------------------------------- the IBSI runs
_NO_RESAMPLING = {"resampledPixelSpacing": None, "interpolator": None}
_IBSI_CLASSES = {"featureClass": IBSI_FEATURE_CLASSES}


def _ov(**setting) -> dict:
    return {"setting": dict(setting), **_IBSI_CLASSES}


#: Digital phantom (IBSI 1, "digital phantom" configuration): no image processing; fixed bin
#: size 1 leaves the grey levels 1..6 unchanged. Four aggregations of the same image.
DIGITAL_PHANTOM_RUNS: tuple[Run, ...] = (
    Run("digital phantom", "3D averaged (pipeline aggregation)",
        _ov(**_NO_RESAMPLING, binWidth=1.0)),
    Run("digital phantom", "3D merged", _ov(**_NO_RESAMPLING, binWidth=1.0,
                                            weightingNorm="no_weighting"),
        merged=True, texture_only=True),
    Run("digital phantom", "2.5D direction-merged",
        _ov(**_NO_RESAMPLING, binWidth=1.0, force2D=True, force2Ddimension=0),
        dim="2_5D", texture_only=True),
    Run("digital phantom", "2.5D merged",
        _ov(**_NO_RESAMPLING, binWidth=1.0, force2D=True, force2Ddimension=0,
            weightingNorm="no_weighting"),
        dim="2_5D", merged=True, texture_only=True),
)

def _ct_runs(resampling: str) -> tuple[Run, ...]:
    """Configurations A-D (05_Reference_data_sets.rst) as overrides of ``ct.yaml``.

    The IBSI "2D" configurations A and B compute texture slice by slice; pyradiomics' force2D
    gives the 2.5D aggregations of the same settings, which the reference tables also list.
    """
    suffix = "" if resampling == "ibsi" else " (pyradiomics resampling)"
    interp = ("interpolation",) if resampling == "pyradiomics" else ()
    a = dict(**_NO_RESAMPLING, resegmentRange=[-500.0, 400.0], binWidth=25.0, force2D=True,
             force2Ddimension=0)
    b = dict(resampledPixelSpacing=[2.0, 2.0, 0.0], interpolator="sitkLinear",
             resegmentRange=[-500.0, 400.0], binWidth=None, binCount=32, force2D=True,
             force2Ddimension=0)
    c = dict(resampledPixelSpacing=[2.0, 2.0, 2.0], interpolator="sitkLinear",
             resegmentRange=[-1000.0, 400.0], binWidth=25.0)
    d = dict(resampledPixelSpacing=[2.0, 2.0, 2.0], interpolator="sitkLinear",
             resegmentMode="sigma", resegmentRange=[-3.0, 3.0], binWidth=None, binCount=32)
    runs = []
    for name, sett, dim, dev, resampled in (("A", a, "2_5D", (), False),
                                             ("B", b, "2_5D", interp, True),
                                             ("C", c, "3D", interp + ("bin_start",), True),
                                             ("D", d, "3D", interp, True)):
        if resampling == "pyradiomics" and not resampled:
            continue  # no resampling: identical to the "ibsi" run
        ds = f"configuration {name}{suffix}"
        lab = "2.5D" if dim == "2_5D" else "3D"
        runs.append(Run(ds, f"{lab} {'direction-merged' if dim == '2_5D' else 'averaged'}",
                        _ov(**sett), dim=dim, deviations=dev, resampling=resampling))
        runs.append(Run(ds, f"{lab} merged", _ov(**sett, weightingNorm="no_weighting"), dim=dim,
                        merged=True, texture_only=True, deviations=dev, resampling=resampling))
    return tuple(runs)


#: The IBSI 1 CT phantom runs with the pipeline's (IBSI) resampling.
CT_PHANTOM_RUNS: tuple[Run, ...] = _ct_runs("ibsi")
#: The same configurations resampled by pyradiomics itself (for comparison: not compliant).
CT_PHANTOM_RUNS_PYRADIOMICS_RESAMPLING: tuple[Run, ...] = _ct_runs("pyradiomics")

#: Configurations pyradiomics cannot express, with the reason.
SKIPPED = {
    "configuration E": ("needs re-segmentation by a range ([-1000, 400] HU) and 3-sigma outlier "
                        "filtering together; pyradiomics applies one resegmentMode at a time "
                        "(absolute range or sigma). Its IVH discretisation (1000 bins) is not "
                        "implemented in pyradiomics either."),
    "configurations A, B (IBSI 2D aggregations)": (
        "pyradiomics cannot compute texture per slice and average over slices (IBSI '2D, "
        "averaged' and '2D, slice-merged'); the 2.5D aggregations of the same settings are "
        "compared instead."),
}


def run_pyradiomics(image, mask, base_params: dict, run: Run, *,
                    round_intensities: bool = True) -> tuple[dict, int | None]:
    """Extract the mapped features for one run; returns (values, voxels of the morph. mask).

    The parameters are ``base_params`` with the run's overrides
    (:func:`pipeline.features.radiomics.merge_params`); resampling goes through
    :func:`pipeline.features.radiomics.split_resampling` exactly as in the pipeline.
    """
    from pipeline.features.radiomics import (
        build_extractor,
        merge_params,
        resample_ibsi,
        split_resampling,
    )

    params = merge_params(base_params, run.overrides)
    px, spec = split_resampling(params, run.resampling)
    if spec is not None:
        image, mask = resample_ibsi(image, mask, spec[0], interpolator=spec[1],
                                    round_intensities=round_intensities)
    ex = build_extractor(px)
    res = ex.execute(image, mask, label=1)
    values = {k: float(v) for k, v in res.items() if not k.startswith("diagnostics_")}
    n = None
    if "original_shape_VoxelVolume" in values:
        s = params.get("setting") or {}
        sp = list(image.GetSpacing())
        if s.get("resampledPixelSpacing"):
            sp = [float(r) if r else float(o) for r, o in zip(s["resampledPixelSpacing"], sp)]
        n = int(round(values["original_shape_VoxelVolume"] / (sp[0] * sp[1] * sp[2])))
    return values, n


def dataset_table(image_path, mask_path, reference_csv, runs, base_params: dict,
                  *, round_image: bool = False) -> pd.DataFrame:
    """Compliance rows of every run of one IBSI data set.

    Parameters
    ----------
    image_path, mask_path : NIfTI image and mask (label 1).
    reference_csv : the data set's IBSI 1 reference-value table.
    runs : the :class:`Run` s to execute.
    base_params : the pipeline's CT parameter dict (``configs/radiomics/ct.yaml``).
    round_image : cast to float32 and round to integers first (IBSI instruction for the CT
        phantom's NIfTI copy).
    """
    import numpy as np
    import SimpleITK as sitk

    image = sitk.ReadImage(str(image_path))
    mask = sitk.ReadImage(str(mask_path))
    image = sitk.Cast(image, sitk.sitkFloat32)
    if round_image:
        arr = np.rint(sitk.GetArrayFromImage(image)).astype(np.float32)
        rounded = sitk.GetImageFromArray(arr)
        rounded.CopyInformation(image)
        image = rounded
    reference = pd.read_csv(reference_csv, encoding="utf-8-sig")
    rows = []
    for run in runs:
        values, n = run_pyradiomics(image, mask, base_params, run)
        rows.extend(compliance_rows(values, reference, run, n_voxels=n))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- whole checks
#: Default locations: the digital phantom copied into the tests (CC BY 4.0) and the shared IBSI
#: folder (the CT phantom is CC BY-NC 3.0 and is never copied into the repository).
def _repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[2]


DIGITAL_PHANTOM_DIR = _repo_root() / "tests" / "data" / "ibsi_digital_phantom"
SHARED_IBSI_DIR = _repo_root().parent / "shared" / "reference_data" / "ibsi"


def base_ct_params() -> dict:
    """The pipeline's CT parameter file (``configs/radiomics/ct.yaml``) as a dict."""
    from pipeline.config import load_config
    from pipeline.features.radiomics import load_params

    return load_params(load_config()["features"]["radiomics"]["ct_params"])


def digital_phantom_table(folder=None, base_params: dict | None = None) -> pd.DataFrame:
    """Compliance rows of the IBSI 1 digital phantom (``image.nii.gz``, ``mask.nii.gz`` and
    ``ibsi_1_reference_values_digital_phantom.csv`` in ``folder``)."""
    from pathlib import Path

    folder = Path(folder or DIGITAL_PHANTOM_DIR)
    return dataset_table(folder / "image.nii.gz", folder / "mask.nii.gz",
                         folder / "ibsi_1_reference_values_digital_phantom.csv",
                         DIGITAL_PHANTOM_RUNS, base_params or base_ct_params())


def ct_phantom_table(ibsi_dir=None, base_params: dict | None = None,
                     *, with_pyradiomics_resampling: bool = True) -> pd.DataFrame:
    """Compliance rows of the IBSI 1 CT phantom, configurations A-D (E: see :data:`SKIPPED`).

    ``ibsi_dir`` holds ``ibsi_1_ct_radiomics_phantom/nifti/{image,mask}`` and
    ``reference_values/``. The NIfTI image is cast to float32 and rounded to integers first, as
    the IBSI data set instructs.
    """
    from pathlib import Path

    d = Path(ibsi_dir or SHARED_IBSI_DIR)
    img = d / "ibsi_1_ct_radiomics_phantom" / "nifti" / "image" / "phantom.nii.gz"
    msk = d / "ibsi_1_ct_radiomics_phantom" / "nifti" / "mask" / "mask.nii.gz"
    base = base_params or base_ct_params()
    runs = CT_PHANTOM_RUNS + (CT_PHANTOM_RUNS_PYRADIOMICS_RESAMPLING
                              if with_pyradiomics_resampling else ())
    tables = []
    for letter in "ABCD":
        sel = tuple(r for r in runs if r.dataset.split()[1] == letter)
        ref = d / "reference_values" / f"ibsi_1_reference_values_config_{letter}.csv"
        tables.append(dataset_table(img, msk, ref, sel, base, round_image=True))
    return pd.concat(tables, ignore_index=True)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown_report(table: pd.DataFrame, *, notes: list[str] | None = None,
                    versions: dict | None = None) -> str:
    """``docs/ibsi_compliance.md``: summary, per-family pass rates, deviations, full table."""
    lines = ["# IBSI 1 compliance of the radiomics extraction", "",
             "Generated by `scripts/ibsi_check.py` (regenerate with "
             "`.venv/bin/python scripts/ibsi_check.py`); do not edit by hand. The extraction is "
             "the pipeline's own: `configs/radiomics/ct.yaml` built by "
             "`pipeline/features/radiomics.py`, with only each IBSI configuration's settings "
             "overridden (`pipeline/testing/ibsi.py`, which also holds the pyradiomics-to-IBSI "
             "name mapping and where it comes from). A feature passes when "
             "|ours - reference| <= tolerance + half a unit of the reference's third significant "
             "digit (IBSI values are given to three significant digits).", ""]
    if versions:
        lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    lines += ["## Summary", "", "| data set | passed | compared | pass rate |", "|---|---:|---:|---:|"]
    for ds, g in table.groupby("dataset", sort=False):
        lines.append(f"| {ds} | {int(g['pass'].sum())} | {len(g)} | {g['pass'].mean():.1%} |")
    lines.append("")
    for n in notes or []:
        lines += [n, ""]
    lines += ["", "## Pass rate per feature family", "",
              "| data set | family | passed | compared | pass rate |", "|---|---|---:|---:|---:|"]
    for _, r in pass_rates(table).iterrows():
        lines.append(f"| {r['dataset']} | {r['family']} | {r['passed']} | {r['compared']} | "
                     f"{r['pass_rate']:.0%} |")
    lines += ["", "## Named deviations of pyradiomics 3.0.1 (the `deviation` column)", ""]
    for k, v in DEVIATIONS.items():
        lines.append(f"* `{k}` -- {v}")
    lines += ["* `unexplained` -- no known deviation applies (none in the tables below).", "",
              "## Not compared", ""]
    for k, v in SKIPPED.items():
        lines.append(f"* {k}: {v}")
    lines += [
        "* IBSI features pyradiomics does not implement (not counted in any pass rate): "
        "asphericity, centre of mass shift, the AABB / OMBB / AEE / MVEE / convex-hull volume "
        "and area densities, integrated intensity, Moran's I, Geary's C, local and global "
        "intensity peaks, median absolute deviation, coefficient of variation, quartile "
        "coefficient of dispersion, intensity-histogram statistics other than entropy and "
        "uniformity (pyradiomics computes its statistics on raw intensities), histogram "
        "gradients, the intensity-volume histogram, the grey level distance zone matrix, "
        "NGLDM dependence count percentage and energy.", "",
        "## Full table", ""]
    cols = ["run", "feature", "ibsi_tag", "reference", "tolerance", "ours", "pass", "deviation",
            "note"]
    for ds, g in table.groupby("dataset", sort=False):
        lines += [f"### {ds}", "", "| " + " | ".join(cols) + " |",
                  "|" + "---|" * len(cols)]
        for _, r in g.iterrows():
            lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"
