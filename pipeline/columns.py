"""The lesion table's columns, declared once.

``lesions.csv`` is the contract between the study job, the ranking, the reports, the DICOM SR and
the user's own rules. Its columns come from several producers (the study job's identifiers, the
feature stage, the anatomy stage); the ranking adds follow-up, sidecar, derived and verdict
columns. Every one of them is declared here, with its type, unit, producer, the ``*_reason``
column that says why it is empty, and one line of meaning. The README's column table is
generated from this module (``scripts/gen_column_table.py``).

Who uses the declaration
------------------------
* :func:`pipeline.study.run_study` writes exactly :func:`lesion_column_names` in that order (with
  the radiomics columns, whose names depend on the pyradiomics parameter files, at the place of
  :data:`RADIOMICS_FAMILIES`); a produced column that is not declared is a bug
  (:func:`order_lesion_columns` raises :class:`~pipeline.errors.InternalError`).
* :func:`pipeline.io.tables.read_table` reads each declared column with its :func:`dtype_map`
  type (identifiers stay text, empty numbers stay NaN, booleans parsed).
* :mod:`pipeline.config` rejects ranking rules, training features and sidecar columns that name
  a column no producer writes (:func:`unknown_column_message` gives the did-you-mean hint).

Types: ``str`` (text, empty = unknown), ``float`` (empty = NaN), ``int`` (nullable integer),
``bool`` (true/false, empty = unknown). Units are UCUM codes ("" for text, flags and counts;
"1" for fractions and ratios). Coordinates are DICOM patient LPS in mm.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from pipeline.errors import InternalError

DTYPES = ("str", "float", "int", "bool")


@dataclass(frozen=True)
class Column:
    """One declared column.

    Attributes
    ----------
    name : str
        Column name (units in the name where there are any: ``volume_ml``).
    dtype : {"str", "float", "int", "bool"}
    unit : str
        UCUM-ish unit ("mm", "mL", "[hnsf'U]", "{SUVbw}g/mL", "1" for fractions) or "".
    producer : str
        Module (relative to ``pipeline``) that writes it: "study", "features.pet", "sidecar" ...
    reason_column : str
        The ``*_reason`` column that says why the value is empty, or "".
    meaning : str
        One line.
    """

    name: str
    dtype: str
    unit: str
    producer: str
    reason_column: str
    meaning: str


@dataclass(frozen=True)
class ColumnFamily:
    """Columns whose names come from a configuration file (one entry for many columns).

    Attributes
    ----------
    name : str
        Readable pattern, e.g. ``ct_<image type>_<class>_<feature>``.
    pattern : str
        Regular expression every member's name matches in full.
    dtype, unit, producer, reason_column, meaning : as for :class:`Column`.
    """

    name: str
    pattern: str
    dtype: str
    unit: str
    producer: str
    reason_column: str
    meaning: str

    def matches(self, column: str) -> bool:
        """True when ``column`` is a member of this family."""
        return re.fullmatch(self.pattern, column) is not None


def _c(name, dtype, unit, producer, reason, meaning) -> Column:
    return Column(name, dtype, unit, producer, reason, meaning)


_SUV = "{SUVbw}g/mL"
_SUL = "{SULlbm}g/mL"
_HU = "[hnsf'U]"

#: Columns of ``lesions.csv``, in the order the study job writes them (radiomics columns, see
#: :data:`RADIOMICS_FAMILIES`, are inserted before ``radiomics_reason``).
LESION_COLUMNS: tuple[Column, ...] = (
    # ---- identifiers (pipeline.study)
    _c("patient_id", "str", "", "study", "", "PatientID of the study (as in the archive)"),
    _c("study_uid", "str", "", "study", "", "StudyInstanceUID"),
    _c("lesion_id", "str", "", "study", "",
       "stable lesion identifier: slug of the lesion label, -2, -3 ... for repeated labels"),
    _c("lesion_label", "str", "", "study", "",
       "SEG SegmentLabel / RTSTRUCT ROIName / label-map name of the lesion"),
    _c("mask_source", "str", "", "study", "", "kind of segmentation object: seg, rtstruct, labelmap"),
    _c("mask_series_uid", "str", "", "study", "",
       "SeriesInstanceUID of the segmentation (SEG or RTSTRUCT series; the label-map file name for label maps)"),
    _c("mask_referenced_series_uid", "str", "", "study", "",
       "SeriesInstanceUID of the image series the mask was drawn on / mapped to"),
    _c("ct_slice_spacing_mm", "float", "mm", "study", "",
       "slice spacing of the CT the lesion was measured on (RECIST: minimum size 2 x this)"),
    _c("segment_number", "int", "", "study", "", "SEG segment number / RTSTRUCT ROI number / label value"),
    _c("tracking_uid", "str", "", "study", "",
       "SEG TrackingUID of the finding (same finding across studies), or empty; in ranking.csv "
       "the lesion track's stable TrackingUID at a follow-up (pipeline.followup)"),
    _c("lesion_empty", "bool", "", "study", "", "the lesion segment / ROI holds no voxel (resolved lesion or drawing error): a row of zeros and reasons"),
    # ---- shape (pipeline.features.shape, mask grid)
    _c("volume_ml", "float", "mL", "features.shape", "", "lesion volume: voxel count x voxel volume"),
    _c("voxel_count", "int", "", "features.shape", "", "lesion voxels on the mask grid"),
    _c("longest_diameter_mm", "float", "mm", "features.shape", "",
       "RECIST longest diameter in an axial (acquisition) plane"),
    _c("short_axis_mm", "float", "mm", "features.shape", "",
       "longest diameter perpendicular to the longest diameter, same plane"),
    _c("max_3d_diameter_mm", "float", "mm", "features.shape", "", "largest 3D extent of the lesion"),
    _c("centroid_x_mm", "float", "mm", "features.shape", "", "lesion centroid, LPS x"),
    _c("centroid_y_mm", "float", "mm", "features.shape", "", "lesion centroid, LPS y"),
    _c("centroid_z_mm", "float", "mm", "features.shape", "", "lesion centroid, LPS z"),
    # ---- PET (pipeline.features.pet, PET grid)
    _c("suv_max", "float", _SUV, "features.pet", "suv_reason", "highest SUVbw of the lesion's PET voxels"),
    _c("suv_mean", "float", _SUV, "features.pet", "suv_reason", "mean SUVbw of the lesion's PET voxels"),
    _c("suv_peak", "float", _SUV, "features.pet", "suv_reason",
       "PERCIST SUVpeak: highest mean SUV in a 1 mL sphere within the lesion"),
    _c("suv_peak_x_mm", "float", "mm", "features.pet", "suv_reason", "SUVpeak sphere centre, LPS x"),
    _c("suv_peak_y_mm", "float", "mm", "features.pet", "suv_reason", "SUVpeak sphere centre, LPS y"),
    _c("suv_peak_z_mm", "float", "mm", "features.pet", "suv_reason", "SUVpeak sphere centre, LPS z"),
    _c("pet_voxel_count", "int", "", "features.pet", "suv_reason",
       "PET voxels covered by the lesion to at least features.pet.min_coverage"),
    _c("activity_max_bqml", "float", "Bq/mL", "features.pet", "suv_reason",
       "highest activity concentration of the lesion's PET voxels"),
    _c("suv_reason", "str", "", "features.pet", "", "why the SUV columns are empty"),
    _c("suv_kind", "str", "", "features.pet", "suv_reason",
       "kind of the PET's SUV: bw (SUVbw, compared with the rules' thresholds), or lbm / ibw / "
       "bsa for a stored SUV that could not be converted (then the SUVbw columns stay empty)"),
    _c("mtv41_ml", "float", "mL", "features.pet", "suv_reason",
       "metabolic tumour volume: PET voxels touched by the lesion with SUV >= 41 % of SUVmax"),
    _c("suv_mean41", "float", _SUV, "features.pet", "suv_reason", "mean SUV of the MTV41 voxels"),
    _c("tlg41_g", "float", "g", "features.pet", "suv_reason",
       "total lesion glycolysis: suv_mean41 x mtv41_ml"),
    _c("mtv25_ml", "float", "mL", "features.pet", "suv_reason",
       "metabolic tumour volume with the absolute threshold SUV >= 2.5"),
    _c("sul_max", "float", _SUL, "features.pet", "sul_reason",
       "SUVmax normalised to lean body mass (Janmahasatian)"),
    _c("sul_peak", "float", _SUL, "features.pet", "sul_reason",
       "SUVpeak normalised to lean body mass (Janmahasatian)"),
    _c("sul_reason", "str", "", "features.pet", "", "why the SUL columns are empty"),
    _c("liver_reference_suv_mean", "float", _SUV, "features.pet", "liver_reference_reason",
       "PERCIST liver reference: mean SUV in a 3 cm sphere in the right liver lobe"),
    _c("liver_reference_suv_sd", "float", _SUV, "features.pet", "liver_reference_reason",
       "sample standard deviation of SUVbw in the liver reference sphere (PERCIST 2 SD term)"),
    _c("liver_reference_sul_mean", "float", _SUL, "features.pet", "liver_reference_reason",
       "liver reference mean in SUL"),
    _c("liver_reference_x_mm", "float", "mm", "features.pet", "liver_reference_reason",
       "liver reference sphere centre, LPS x"),
    _c("liver_reference_y_mm", "float", "mm", "features.pet", "liver_reference_reason",
       "liver reference sphere centre, LPS y"),
    _c("liver_reference_z_mm", "float", "mm", "features.pet", "liver_reference_reason",
       "liver reference sphere centre, LPS z"),
    _c("liver_reference_reason", "str", "", "features.pet", "", "why the liver reference is empty"),
    _c("lesion_to_liver_suvpeak_ratio", "float", "1", "features.pet", "liver_reference_reason",
       "suv_peak / liver_reference_suv_mean"),
    # ---- CT (pipeline.features.ct, crops of the lesion grid)
    _c("ct_nc_hu_mean", "float", _HU, "features.ct", "ct_hu_reason",
       "mean HU of the lesion interior on the non-contrast CT"),
    _c("ct_nc_hu_std", "float", _HU, "features.ct", "ct_hu_reason",
       "standard deviation of HU of the lesion interior, non-contrast CT"),
    _c("ct_nc_hu_median", "float", _HU, "features.ct", "ct_hu_reason",
       "median HU of the lesion interior, non-contrast CT"),
    _c("ct_ce_hu_mean", "float", _HU, "features.ct", "ct_hu_reason",
       "mean HU of the lesion interior on the contrast-enhanced CT"),
    _c("ct_ce_hu_std", "float", _HU, "features.ct", "ct_hu_reason",
       "standard deviation of HU of the lesion interior, contrast CT"),
    _c("ct_ce_hu_median", "float", _HU, "features.ct", "ct_hu_reason",
       "median HU of the lesion interior, contrast CT"),
    _c("ct_hu_reason", "str", "", "features.ct", "", "why CT HU statistics are empty, or notes"),
    _c("enhancement_hu", "float", _HU, "features.ct", "enhancement_reason",
       "mean (contrast - non-contrast) HU over the lesion interior"),
    _c("enhancement_viable_hu", "float", _HU, "features.ct", "enhancement_reason",
       "enhancement over the interior voxels not necrotic by the CT criterion"),
    _c("enhancement_reason", "str", "", "features.ct", "", "how the phases were aligned, or why enhancement is empty"),
    _c("registration_status", "str", "", "features.ct", "",
       "the study's CT phase alignment (pipeline.features.registration.STATUSES)"),
    _c("noncontrast_cnr", "float", "1", "features.ct", "noncontrast_cnr_reason",
       "|interior HU - ring HU| / std(ring HU) on the non-contrast CT"),
    _c("contrast_cnr", "float", "1", "features.ct", "noncontrast_cnr_reason",
       "the same contrast-to-noise ratio on the contrast CT"),
    _c("cnr_ring_region", "str", "", "features.ct", "", "region of the CNR ring: organ:<name> or body"),
    _c("noncontrast_cnr_reason", "str", "", "features.ct", "", "why the CNR columns are empty"),
    _c("necrosis_fraction", "float", "1", "features.ct", "necrosis_reason",
       "fraction of lesion voxels necrotic (non-enhancing or fluid, and PET-cold when PET is there)"),
    _c("necrosis_fraction_ct", "float", "1", "features.ct", "necrosis_reason",
       "necrotic fraction by the CT criterion alone"),
    _c("necrosis_fraction_pet", "float", "1", "features.ct", "necrosis_reason",
       "necrotic fraction by the PET-cold criterion alone"),
    _c("necrosis_reason", "str", "", "features.ct", "", "criteria used, or why necrosis is empty"),
    _c("radiomics_reason", "str", "", "features.radiomics", "",
       "why radiomics columns are empty (per image)"),
    # ---- site (pipeline.anatomy.site)
    _c("organ", "str", "", "anatomy.site", "organ_reason",
       "organ holding the lesion (liver, lung, lymph_node, soft_tissue ... or unknown)"),
    _c("organ_reason", "str", "", "anatomy.site", "", "how the organ was decided"),
    _c("organ_overlap_fraction", "float", "1", "anatomy.site", "organ_reason",
       "fraction of the lesion inside the organ mask"),
    _c("site", "str", "", "anatomy.site", "",
       "site category: superficial_soft_tissue, superficial_node, visceral:<organ> ..."),
    _c("skin_depth_mm", "float", "mm", "anatomy.site", "skin_depth_reason",
       "shortest distance from the lesion surface to the skin"),
    _c("skin_depth_reason", "str", "", "anatomy.site", "", "why skin depth is empty"),
    _c("liver_capsule_distance_mm", "float", "mm", "anatomy.site", "anatomy_reason",
       "lesion surface to liver capsule (within anatomy.distance_margin_mm)"),
    _c("vessel_distance_mm", "float", "mm", "anatomy.safety", "vessel_reason",
       "lesion surface to the relevant vessel's surface, 0 when touching"),
    _c("vessel_name", "str", "", "anatomy.safety", "vessel_reason", "name of the relevant vessel mask"),
    _c("lung_pleura_distance_mm", "float", "mm", "anatomy.site", "anatomy_reason",
       "lesion surface to the pleura (lung surface), within the margin"),
    _c("anatomy_reason", "str", "", "anatomy.site", "", "why capsule / pleura distances are empty"),
    _c("liver_capsule_distance_min_mm", "float", "mm", "anatomy.site", "anatomy_reason",
       "lower bound: the distance when measured, the search margin when beyond it"),
    _c("lung_pleura_distance_min_mm", "float", "mm", "anatomy.site", "anatomy_reason",
       "lower bound of the pleura distance (as liver_capsule_distance_min_mm)"),
    _c("vessel_distance_min_mm", "float", "mm", "anatomy.safety", "vessel_reason",
       "lower bound of the vessel distance (as liver_capsule_distance_min_mm)"),
    # ---- safety (pipeline.anatomy.safety)
    _c("exophytic_fraction", "float", "1", "anatomy.safety", "exophytic_reason",
       "fraction of a liver lesion outside the liver's envelope"),
    _c("exophytic_reason", "str", "", "anatomy.safety", "", "why exophytic_fraction is empty"),
    _c("vessel_caliber_mm", "float", "mm", "anatomy.safety", "vessel_reason",
       "equivalent diameter of the vessel's cross-section nearest the lesion"),
    _c("vessel_contact_angle_deg", "float", "deg", "anatomy.safety", "vessel_reason",
       "largest angle of the vessel circumference in contact with the lesion"),
    _c("vessel_relation", "str", "", "anatomy.safety", "vessel_reason",
       "encasing, abutting or none"),
    _c("vessel_abut_threshold_mm", "float", "mm", "anatomy.safety", "vessel_reason",
       "gap counted as abutting: the larger of the configured fat-plane width and the voxel "
       "diagonal (a thinner fat plane is not resolved)"),
    _c("vessel_abut_basis", "str", "", "anatomy.safety", "vessel_reason",
       "which threshold applied, with the voxel size"),
    _c("intravascular_fraction", "float", "1", "anatomy.safety", "vessel_reason",
       "fraction of the lesion inside any vessel mask"),
    _c("vessel_reason", "str", "", "anatomy.safety", "", "why the vessel columns are empty"),
    _c("diaphragm_distance_mm", "float", "mm", "anatomy.safety", "diaphragm_reason",
       "lesion surface to the lung base (respiratory mobility proxy)"),
    _c("diaphragm_reason", "str", "", "anatomy.safety", "", "why diaphragm_distance_mm is empty"),
    _c("critical_structure_distance_mm", "float", "mm", "anatomy.safety", "critical_structure_reason",
       "lesion surface to the nearest of anatomy.critical_structures"),
    _c("critical_structure_name", "str", "", "anatomy.safety", "critical_structure_reason",
       "name of that critical structure"),
    _c("critical_structure_reason", "str", "", "anatomy.safety", "",
       "why the critical structure columns are empty"),
    # ---- target point (pipeline.anatomy.stage)
    _c("target_x_mm", "float", "mm", "anatomy.stage", "", "needle target point, LPS x"),
    _c("target_y_mm", "float", "mm", "anatomy.stage", "", "needle target point, LPS y"),
    _c("target_z_mm", "float", "mm", "anatomy.stage", "", "needle target point, LPS z"),
    _c("target_point_source", "str", "", "anatomy.stage", "",
       "source of the target point: suv_peak or centroid"),
    _c("target_point_note", "str", "", "anatomy.stage", "", "why a later source was used, or empty"),
    # ---- needle path (pipeline.anatomy.access)
    _c("path_length_mm", "float", "mm", "anatomy.access", "access_reason",
       "planned straight needle path, skin entry to target point"),
    _c("path_length_to_surface_mm", "float", "mm", "anatomy.access", "access_reason",
       "planned path, skin entry to the lesion surface"),
    _c("entry_x_mm", "float", "mm", "anatomy.access", "access_reason", "skin entry point, LPS x"),
    _c("entry_y_mm", "float", "mm", "anatomy.access", "access_reason", "skin entry point, LPS y"),
    _c("entry_z_mm", "float", "mm", "anatomy.access", "access_reason", "skin entry point, LPS z"),
    _c("path_direction_x", "float", "1", "anatomy.access", "access_reason",
       "unit needle direction entry -> target, LPS x"),
    _c("path_direction_y", "float", "1", "anatomy.access", "access_reason",
       "unit needle direction entry -> target, LPS y"),
    _c("path_direction_z", "float", "1", "anatomy.access", "access_reason",
       "unit needle direction entry -> target, LPS z"),
    _c("path_angle_from_axial_deg", "float", "deg", "anatomy.access", "access_reason",
       "craniocaudal angulation of the path"),
    _c("aerated_lung_path_mm", "float", "mm", "anatomy.access", "access_reason",
       "aerated lung crossed between skin and lesion surface"),
    _c("liver_parenchyma_path_mm", "float", "mm", "anatomy.access", "access_reason",
       "normal liver crossed between capsule and lesion on the planned path (liver targets)"),
    _c("pleura_crossings", "int", "", "anatomy.access", "access_reason",
       "entries into the lung between skin and lesion"),
    _c("target_organ_entries", "int", "", "anatomy.access", "access_reason",
       "entries into the target organ (capsule crossings) between skin and lesion"),
    _c("vessel_clearance_mm", "float", "mm", "anatomy.access", "vessel_clearance_reason",
       "minimum distance from the needle axis to a vessel mask"),
    _c("us_window", "bool", "", "anatomy.access", "access_reason",
       "a safe path without gas or bone, short enough for ultrasound guidance"),
    _c("safe_direction_fraction", "float", "1", "anatomy.access", "access_reason",
       "fraction of the candidate directions that are safe"),
    _c("safe_path_found", "bool", "", "anatomy.access", "access_reason",
       "a straight path avoids bone, large vessels, forbidden structures ..."),
    _c("vessel_clearance_reason", "str", "", "anatomy.access", "", "why vessel_clearance_mm is empty"),
    _c("access_reason", "str", "", "anatomy.access", "", "why no path was planned or none is safe"),
)

_RAD_NAME = r"[A-Za-z0-9.-]+_(?:firstorder|shape|shape2D|glcm|glrlm|glszm|gldm|ngtdm)_[A-Za-z0-9]+"

#: Radiomics columns: names from the pyradiomics parameter files (configs/radiomics/*.yaml),
#: ``<image type>_<feature class>_<feature>`` after the ``ct_`` / ``pet_`` prefix.
RADIOMICS_FAMILIES: tuple[ColumnFamily, ...] = (
    ColumnFamily("ct_<image type>_<class>_<feature>", r"ct_" + _RAD_NAME, "float", "",
                 "features.radiomics", "radiomics_reason",
                 "pyradiomics feature on the CT crop (units per feature, IBSI)"),
    ColumnFamily("pet_<image type>_<class>_<feature>", r"pet_" + _RAD_NAME, "float", "",
                 "features.radiomics", "radiomics_reason",
                 "pyradiomics feature on the PET (SUV) crop (units per feature, IBSI)"),
)
#: The radiomics columns are written just before this column.
RADIOMICS_BEFORE = "radiomics_reason"

#: Columns the clinical sidecar (configs/sidecar.schema.yaml) merges into the lesion table.
SIDECAR_COLUMNS: tuple[Column, ...] = (
    _c("prior_locoregional_therapy", "bool", "", "sidecar", "",
       "the lesion was treated locally before (radiotherapy, ablation, embolization, injection)"),
    _c("prior_locoregional_therapy_source", "str", "", "sidecar", "",
       "where prior_locoregional_therapy came from: sidecar or table"),
    _c("biopsy_required", "bool", "", "sidecar", "",
       "a biopsy is required with the injection"),
    _c("biopsy_required_source", "str", "", "sidecar", "", "sidecar or table"),
    _c("critical_compression", "bool", "", "sidecar", "",
       "growth threatens a critical structure (bile duct, urinary tract, neural structures)"),
    _c("critical_compression_source", "str", "", "sidecar", "", "sidecar or table"),
    _c("histology_fdg_avid", "bool", "", "sidecar", "",
       "false for tumour types that are not FDG-avid: the PET rules are silent, enhancement decides"),
    _c("histology_fdg_avid_source", "str", "", "sidecar", "", "sidecar or table"),
    _c("max_injections", "int", "", "sidecar", "", "per-trial limit of injected lesions per session"),
    _c("sidecar_notes", "str", "", "sidecar", "", "free text from the sidecar's notes column"),
)

#: Columns the follow-up comparison (pipeline.ranking.longitudinal) adds before ranking.
FOLLOWUP_COLUMNS: tuple[Column, ...] = (
    _c("new_or_growing", "bool", "", "ranking.longitudinal", "",
       "new or grown since the prior study (RECIST-like thresholds); the sidecar overrides"),
    _c("new_or_growing_source", "str", "", "ranking.longitudinal", "",
       "prior_study, sidecar or table"),
    _c("prior_study_uid", "str", "", "ranking.longitudinal", "", "StudyInstanceUID of the prior study"),
    _c("prior_lesion_id", "str", "", "ranking.longitudinal", "", "matched lesion of the prior study"),
    _c("match_method", "str", "", "ranking.longitudinal", "", "tracking_uid or centroid"),
    _c("longest_diameter_change_pct", "float", "%", "ranking.longitudinal", "",
       "change of the longest diameter since the prior study"),
    _c("volume_change_pct", "float", "%", "ranking.longitudinal", "",
       "change of the volume since the prior study"),
)

#: Columns :func:`pipeline.ranking.rules.derive_columns` computes (rules may read them).
DERIVED_COLUMNS: tuple[Column, ...] = (
    _c("path_length_source", "str", "", "ranking.rules", "",
       "planner (path_length_mm from the needle-path planner) or skin_depth proxy"),
    _c("needle_hit_probability", "float", "1", "ranking.rules", "",
       "probability that the needle tip lands within half the short axis (size-depth model)"),
    _c("is_nodal", "bool", "", "ranking.rules", "", "the lesion is a lymph node"),
    _c("target_point_label", "str", "", "ranking.rules", "", "readable name of the target point source"),
    _c("pet_liver_threshold_suv", "float", _SUV, "ranking.rules", "",
       "PERCIST-style viability threshold: liver_mean_factor x liver mean + liver_sd_factor x SD"),
    _c("pet_viability_ratio", "float", "1", "ranking.rules", "",
       "suv_peak / pet_liver_threshold_suv (or suv_max / absolute threshold without liver)"),
    _c("pet_uptake_text", "str", "", "ranking.rules", "", "the PET uptake in words for messages"),
    _c("vessel_gap_text", "str", "", "ranking.rules", "",
       "the measured vessel gap and the voxel size in words for messages"),
)

#: The rules' verdict (:func:`pipeline.ranking.rules.add_rule_columns`, ``rule_frame``): model
#: features may read them, rules may not.
VERDICT_COLUMNS: tuple[Column, ...] = (
    _c("rule_score", "float", "1", "ranking.rules", "", "weighted mean of the stage scores"),
    _c("score_characterization", "float", "1", "ranking.rules", "", "tumour characterization stage score"),
    _c("score_access", "float", "1", "ranking.rules", "",
       "visibility and accessibility stage score (x needle-hit probability)"),
    _c("score_safety", "float", "1", "ranking.rules", "", "procedural safety stage score"),
    _c("tier", "str", "", "ranking.rules", "",
       "recommended, acceptable, board_review or not_suitable"),
    _c("tier_order", "int", "", "ranking.rules", "", "0 = best tier"),
    _c("hard_excluded", "bool", "", "ranking.rules", "", "an exclude or cap-at-not_suitable rule fired"),
    _c("eligible", "bool", "", "ranking.rules", "", "tier is not not_suitable"),
    _c("rule_utility", "float", "1", "ranking.rules", "", "3 - tier_order + rule_score"),
    _c("fired", "str", "", "ranking.rules", "", "codes of the rules that fired, joined by ;"),
    _c("rule_rank", "int", "", "ranking.rules", "", "position in the rules' order among eligible lesions"),
)

#: Columns ``ranking.csv`` adds (pipeline.ranking.select) besides lesion and verdict columns.
RANKING_COLUMNS: tuple[Column, ...] = (
    _c("role", "str", "", "ranking.select", "", "inject, monitor or none"),
    _c("rank", "int", "", "ranking.select", "", "1 = first lesion to inject; empty = not ranked"),
    _c("score", "float", "1", "ranking.select", "", "score that ordered the lesion (rules or model)"),
    _c("reasons", "str", "", "ranking.select", "", "codes of the rules that fired"),
    _c("explanation", "str", "", "ranking.select", "", "the rules' messages for the reader"),
    _c("score_source", "str", "", "ranking.select", "", "rules or model"),
    _c("measurable", "bool", "", "ranking.select", "", "RECIST 1.1 measurable"),
    _c("recist_category", "str", "", "ranking.select", "",
       "target, non_target, pathological_node, normal_node or unknown (RECIST 1.1)"),
    _c("measurable_min_mm", "float", "mm", "ranking.select", "", "RECIST minimum size that applied"),
    _c("diversity_site", "str", "", "ranking.select", "",
       "site used for organ diversity: the organ, or lymph_node:<station>"),
    _c("planned_volume_ml", "float", "mL", "ranking.select", "", "planned injection volume"),
    _c("volume_warning", "str", "", "ranking.select", "", "warning about the planned volume"),
    _c("syringe_note", "str", "", "ranking.select", "", "syringe handling note"),
    _c("rules_not_evaluated", "str", "", "ranking.select", "",
       "codes of rules whose columns were missing or empty"),
    _c("track_id", "str", "", "followup.replan", "",
       "follow-up lesion track (the baseline lesion_id, or new<i>-<lesion_id> for a new lesion)"),
    _c("itrecist_category", "str", "", "followup.replan", "",
       "T-I, T-NI, NT-I, NT-NI (locked at baseline) or NEW, in force at this timepoint"),
    _c("injected_since", "str", "", "followup.replan", "",
       "StudyInstanceUID of the study from which the track is injected (baseline or a "
       "recorded NI -> I reclassification); empty = not injected"),
)

#: Every declared column, lesion table first.
ALL_COLUMNS: tuple[Column, ...] = (LESION_COLUMNS + SIDECAR_COLUMNS + FOLLOWUP_COLUMNS
                                   + DERIVED_COLUMNS + VERDICT_COLUMNS + RANKING_COLUMNS)
_BY_NAME = {c.name: c for c in ALL_COLUMNS}


def lesion_column_names() -> list[str]:
    """Names of :data:`LESION_COLUMNS` in the order the study job writes them."""
    return [c.name for c in LESION_COLUMNS]


def column(name: str) -> Column:
    """The declaration of ``name`` (KeyError when undeclared or a radiomics family member)."""
    return _BY_NAME[name]


def family_of(name: str) -> ColumnFamily | None:
    """The radiomics family ``name`` belongs to, or None."""
    for fam in RADIOMICS_FAMILIES:
        if fam.matches(name):
            return fam
    return None


def is_declared(name: str) -> bool:
    """True for a declared column of any table, including radiomics family members."""
    return name in _BY_NAME or family_of(name) is not None


def dtype_map() -> dict[str, str]:
    """Column name -> declared dtype ("str", "float", "int", "bool") of every declared column."""
    return {c.name: c.dtype for c in ALL_COLUMNS}


def rule_readable_columns() -> list[str]:
    """Columns a ranking rule may read: lesion, sidecar, follow-up and derived columns."""
    return [c.name for c in LESION_COLUMNS + SIDECAR_COLUMNS + FOLLOWUP_COLUMNS + DERIVED_COLUMNS]


def feature_readable_columns() -> list[str]:
    """Columns a ranking-model feature may read: rule inputs plus the rules' verdict."""
    return rule_readable_columns() + [c.name for c in VERDICT_COLUMNS]


def did_you_mean(name: str, candidates: list[str] | tuple[str, ...]) -> str:
    """" (did you mean 'x'?)" for the closest candidate names, or ""."""
    close = difflib.get_close_matches(name, list(candidates), n=2, cutoff=0.7)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def unknown_column_message(name: str, candidates: list[str] | tuple[str, ...]) -> str:
    """``'name' is not a declared column (did you mean ...?)``."""
    return f"'{name}' is not a declared column{did_you_mean(name, candidates)}"


def order_lesion_columns(columns: list[str]) -> list[str]:
    """The column order of ``lesions.csv`` for a table whose producers wrote ``columns``.

    Every declared lesion column, in declaration order, with the produced radiomics columns
    (in their produced order) just before :data:`RADIOMICS_BEFORE`.

    Raises
    ------
    InternalError
        A produced column is not declared in :data:`LESION_COLUMNS` nor a radiomics family
        member: a producer writes a column the contract does not know (a bug).
    """
    names = lesion_column_names()
    declared = set(names)
    radiomics, unknown = [], []
    for c in columns:
        if c in declared:
            continue
        if family_of(c) is not None:
            radiomics.append(c)
        else:
            unknown.append(c)
    if unknown:
        raise InternalError(
            f"the study produced lesion column(s) {unknown} that pipeline/columns.py does not "
            "declare",
            hint="declare the column in pipeline.columns.LESION_COLUMNS (name, dtype, unit, "
                 "producer, reason column, meaning) and regenerate the README column table",
        )
    i = names.index(RADIOMICS_BEFORE)
    return names[:i] + radiomics + names[i:]


# --------------------------------------------------------------------------- documentation
README_START = "<!-- columns:start -->"
README_END = "<!-- columns:end -->"

_TABLES = (
    ("`lesions.csv` (written by the study job, in this order)", LESION_COLUMNS),
    ("Clinical sidecar columns merged before ranking (`configs/sidecar.schema.yaml`)", SIDECAR_COLUMNS),
    ("Follow-up columns added before ranking", FOLLOWUP_COLUMNS),
    ("Columns derived for the rules", DERIVED_COLUMNS),
    ("The rules' verdict (model features may read it, rules may not)", VERDICT_COLUMNS),
    ("Columns `ranking.csv` adds", RANKING_COLUMNS),
)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _row(name: str, dtype: str, unit: str, producer: str, reason: str, meaning: str) -> str:
    return (f"| `{name}` | {dtype} | {f'`{unit}`' if unit else ''} | {producer} | "
            f"{f'`{reason}`' if reason else ''} | {_md(meaning)} |")


def markdown_table() -> str:
    """The README's column tables (between :data:`README_START` and :data:`README_END`)."""
    head = ["| column | type | unit | producer (`pipeline.`) | why empty | meaning |",
            "|---|---|---|---|---|---|"]
    out = ["<!-- generated by scripts/gen_column_table.py from pipeline/columns.py; do not edit -->"]
    for title, cols in _TABLES:
        out += ["", f"**{title}**", ""] + head
        for c in cols:
            if c.name == RADIOMICS_BEFORE and cols is LESION_COLUMNS:
                out += [_row(f.name, f.dtype, f.unit, f.producer, f.reason_column, f.meaning)
                        for f in RADIOMICS_FAMILIES]
            out.append(_row(c.name, c.dtype, c.unit, c.producer, c.reason_column, c.meaning))
    return "\n".join(out) + "\n"


def replace_readme_section(text: str) -> str:
    """``text`` (README.md) with the part between the column markers regenerated.

    Raises
    ------
    ValueError
        The markers are missing or out of order.
    """
    i, j = text.find(README_START), text.find(README_END)
    if i < 0 or j < i:
        raise ValueError(f"README has no {README_START} ... {README_END} section")
    return text[: i + len(README_START)] + "\n" + markdown_table() + text[j:]
