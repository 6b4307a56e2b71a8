"""Ground-truth PET/CT phantom: analytic anatomy and lesions, written as real DICOM.

The phantom ships with the package (users validate an installation with ``hitit phantom``) but
is test tooling, not product code: product modules never import it. Every test of the package
is built on it. Everything in it is analytic, so the truth is exact.

Frames and units
----------------
* Coordinates are millimetres in DICOM LPS (x to the patient's left, y posterior, z superior).
  The patient lies supine on the table, so the table is posterior (+y).
* Arrays are indexed ``(z, y, x)`` (see :mod:`pipeline.geometry`); grids are axial and axis
  aligned (ImageOrientationPatient 1,0,0,0,1,0).
* CT values are HU, PET values SUVbw (body weight) in the arrays and Bq/mL in the DICOM files.
* A voxel belongs to a structure when its *centre* lies inside (or on) the structure's analytic
  surface; CT and PET are sampled at their own voxel centres, with no blur. The CT has Gaussian
  noise (sigma 8 HU), the PET has none.

Anatomy (analytic, LPS mm; the body axis is z)
----------------------------------------------
============================ ================================================ ========== =======
structure                    shape                                            HU nc / ce SUV
============================ ================================================ ========== =======
air                          outside everything                               -1000      0
table                        slab y in [130, 140], x in [-200, 200]           300        0
body (subcutaneous fat)      elliptic cylinder, semi-axes 170 (x), 120 (y);   -100       0.5
                             the outer 12 mm (exact in-plane offset of the
                             ellipse)
soft tissue / muscle         body deeper than 12 mm                           40         1.0
lungs                        ellipsoids centre (+-80, 10, 50), semi-axes      -850       0.4
                             (55, 75, 50); +x is ``lung_left``
liver                        ellipsoid centre (-70, 0, -30), semi-axes        55 / 110   2.0
                             (80, 70, 60); wins over lung (diaphragm)
spleen                       ellipsoid centre (95, 40, -30), semi-axes        45 / 120   1.8
                             (35, 30, 45); wins over lung
aorta                        cylinder radius 12 at (x=20, y=40)               40 / 250   1.6
vertebral column             cylinder radius 18 at (x=0, y=75)                700        1.2
============================ ================================================ ========== =======

Later rows win where structures overlap (the aorta crosses the medial edge of the left lung:
the aorta wins). Organ masks do not depend on lesions: a liver lesion lies inside the liver mask.

Lesions (canonical design, patient 1)
-------------------------------------
=================== ======================= =============== ========== ============= =============
name                centre LPS mm           semi-axes mm    SUV        HU nc / ce    purpose
=================== ======================= =============== ========== ============= =============
soft_tissue_flank   (120, -60, -45)         12 (sphere)     8.0        45 / 95       superficial
                                                                                     soft tissue
node_axillary_R     (-124, -64, 55)         (10, 8, 10)     7.0        40 / 80       superficial
                                                                                     lymph node
liver_deep          (-70, 0, -30)           15              6.0        45 / 140      deep liver
liver_subcapsular   (-139.985713, 0, -31)   10              6.0        45 / 140      touches the
                                                                                     capsule
lung_nodule_tiny    (80, 10, 55)            3.5             1.5        30 / 40       < 10 mm
necrotic_mass       (70, -40, -50)          30, core r 20   5.0 / 0.8  40 / 80,      > 50 mm,
                                                                       core 15 / 15  necrotic core
node_paraaortic     (44, 40, -10)           12              6.5        40 / 85       abuts the
                                                                                     aorta
lung_subpleural     (-124, 10, 50)          8               4.0        30 / 50       3 mm from the
                                                                                     pleura
=================== ======================= =============== ========== ============= =============

Changes from the first draft of the design, and why:

* ``node_axillary_R`` moved from (-130, -70, 55) to (-124, -64, 55): at the drafted centre it
  stuck 3.4 mm out of the skin. Its analytic skin depth is now 5.05 mm (jittered patients are
  re-anchored to 5.0 mm).
* ``liver_subcapsular`` moved from (-140, 0, -30) to z = -31 with x re-solved so that it stays
  internally tangent to the liver capsule (distance 0): at the drafted centre every CT voxel
  centre sat on a half-voxel offset and the voxelised volume was 7.4 % above the analytic
  volume; it is now 2.1 % above.

The test-suite checks that lesions do not overlap each other, the spine or the table, that each
lies in its intended tissue, that ``node_paraaortic`` touches the aorta (surface distance 0),
that ``liver_subcapsular`` touches the liver capsule (distance 0) and that ``lung_subpleural`` is
3.0 mm from the lung surface. Analytic skin depths: ``soft_tissue_flank`` 7.65 mm,
``node_axillary_R`` 5.05 mm (both reach into the 12 mm subcutaneous fat, as superficial
targets do).

Patients 2..N jitter every lesion centre by up to +-3 mm per axis and its SUV by up to +-10 %
(seeded); lesions that must touch a structure (``anchor``) are then slid back along one axis until
the designed distance holds again. Weight, height, dose and times also vary. Patient 1 is always
the canonical design; the seed then only changes the CT noise and the UIDs.

Extended variant (``variant="extended"``)
-----------------------------------------
The 8 lesions above (labels 1-8, identical) plus, as labels 9-12:

===================== ====================== ============ ===== ========== ===================
name                  centre LPS mm          semi-axes mm SUV   HU nc / ce purpose
===================== ====================== ============ ===== ========== ===================
aorta_encasing        (25, 27.5, -67.5)      (23, 23, 11) 6.0   30 / 70    wraps the aorta:
                                                                           ellipsoid minus the
                                                                           aortic lumen; 258
                                                                           deg of the wall
                                                                           (voxels: 243 deg)
liver_exophytic       (-70, -67.491162, -40) 12           7.0   45 / 130   centre 1.5 mm inside
                                                                           the anterior
                                                                           capsule: 44 %
                                                                           outside the liver
lung_deep             (-73.75, -3.75, 67.5)  10           4.5   30 / 50    20.6 mm below the
                                                                           pleura; 46.1 mm of
                                                                           aerated lung on the
                                                                           shortest skin path
noncontrast_invisible (-95, 25, -50)         12           5.0   55 / 140   isodense to the
                                                                           liver without
                                                                           contrast
===================== ====================== ============ ===== ========== ===================

* ``aorta_encasing`` has ``exclude_aorta``: a point belongs to it when inside its ellipsoid and
  outside the aortic cylinder, so the lesion never covers the lumen. Its ``centre_lps_mm`` (the
  ellipsoid centre) lies in the lesion only 1.5 mm from the aortic wall; its voxelized centroid
  is (26.6, 23.4, -67.5). It is 12.7 mm from the vertebral column and 9.3 mm from the liver
  (at least 5 mm in jittered patients), and covers > 195 degrees of the wall for any jitter.
* ``liver_exophytic`` is anchored to the depth of its *centre* below the liver surface
  (``"liver@centre"``, :data:`EXOPHYTIC_CENTRE_DEPTH_MM`), so jittered patients keep 40-50 %
  outside. The liver organ mask is not extended to the exophytic part.
* ``lung_deep``: the nearest skin point to its centre is anterolateral, (-139.4, -68.7, 67.5);
  the straight path crosses fat, chest wall soft tissue and 46.1 mm of right lung.
* Host tissue (for the designed CNR) is a lesion's first ``host_tissues`` entry. Note that in
  the standard design several soft-tissue lesions (node_axillary_R, necrotic_mass rim,
  node_paraaortic) have the soft-tissue HU (40) without contrast: their designed non-contrast
  CNR is 0 too.
* Jittered extended patients draw the standard lesions first from the same random stream, so
  their first 8 lesions and demographics equal the standard patient's.

Organ masks in other formats (``organ_formats``)
------------------------------------------------
``"seg"``: ``SEG_organs.dcm`` (default for both variants). ``"rtstruct"``:
``RTSTRUCT_organs.dcm`` on the non-contrast CT, ROIs :data:`ORGAN_ROI_NAMES` (Liver, Spleen,
Lung_L, Lung_R, Aorta, Spine), RTROIInterpretedType ORGAN, contours traced from the organ masks
(every outline and hole a separate CLOSED_PLANAR contour; an even-odd fill at voxel centres gives
the masks back exactly). ``"totalseg"``: ``totalseg/`` with one binary uint8 NIfTI per
:data:`TOTALSEG_STRUCTURES` entry (TotalSegmentator v2 names; lobes and vertebrae are axial slabs),
non-contrast CT grid, RAS affine, plus ``README.txt``. Default: ``("seg",)`` for the standard
variant (the archive then holds exactly one RTSTRUCT), all three for the extended one.

Shifted contrast CT (``contrast_shift_mm``)
-------------------------------------------
The contrast CT keeps its grid but shows the patient translated by (dx, dy, dz) mm, in a second
FrameOfReferenceUID. ``SEG_lesions.dcm``, ``RTSTRUCT_lesions.dcm`` and ``labelmap/`` are drawn
on the contrast CT, so they are shifted and in that frame; ``SEG_lesions_noncontrast.dcm`` holds
the unshifted lesions on the non-contrast CT, in the frame of the PET and the organ masks. All
``centre_lps_mm`` and voxel counts in truth are in the non-contrast frame
(``centre_lps_mm_contrast``, ``voxel_count_contrast`` for the contrast CT).

Timepoints (``timepoints``, ``hitit phantom OUT --timepoints T``; :mod:`.followup`)
----------------------------------------------------------------------------------
``T = 1`` is the single study above, byte for byte (the SEGs up to the creation time and random
dimension UIDs highdicom stamps on every write). ``T > 1`` (standard variant only) writes
``OUT/PHANTOM00i/<YYYYMMDD>_t<k>/`` per study and one ``OUT/PHANTOM00i/truth.json``: the
baseline truth plus ``"followup"`` (``scenario`` and per timepoint ``index``, ``study_uid``,
``study_date``, ``study_folder``, ``frame_of_reference_uid``, ``patient_to_scanner`` (16 floats,
row-major 4x4, canonical patient LPS mm -> that study's scanner LPS mm), ``lesions`` (track_id,
segment_label, segment_number, tracking_uid, status, category, measure_kind, measure_mm,
centre_lps_mm in the study's frame, semi_axes_mm, voxel_count), ``sod_ti_mm``, ``sod_tni_mm``,
``sod_targets_mm``, ``sod_new_mm``, ``new_lesions``, ``response_overall`` / ``_injected`` /
``_noninjected`` and ``response_reasons`` (the arithmetic)).

* The baseline (t = 0) is the single-study patient. Study t > 0 keeps the PatientID, gets a new
  StudyInstanceUID, StudyDate = baseline + 8 weeks x t, its own FrameOfReferenceUID (both CT
  phases, the PET and both SEGs share it) and its own UIDs (``PatientDesign.timepoint_index``
  salts them).
* Repositioning: the whole scene, *table included* (the scanner frame moved, so the patient
  never intersects the table), is moved by ``patient_to_scanner = [Rz Rx | t]`` (rotations
  about axes through the origin): t1 (12, -8, 4) mm and 4 deg about z, t2 (-10, 8, 6) mm, 3 deg
  about z and 2 deg about x (t > 2 alternate); patients >= 2 add seeded jitter (x, y +-3 mm,
  z +-1 mm, rotations +0..1 deg). z shifts stay small so every lesion stays in the CT field of
  view (z +-84 mm). Each voxel centre is mapped back to the canonical frame and the analytic
  anatomy is evaluated there (no interpolation).
* Designed changes by scenario (patient index mod 3): ``confirmed_progression`` (1, 4, ...):
  injected targets shrink (iPR), liver_deep r 15 -> 19, necrotic_mass in-plane 30 -> 33 and a
  new liver lesion ``liver_new`` (r 5 at (-40, 35, -10)) at t1 (iUPD), which grows to r 8 at t2
  (iCPD); ``reset`` (2, 5, ...): T-NI +22.7 % at t1 (noninjected iUPD), baseline sizes at t2
  (iSD); ``nodal_complete_response`` (3, 6, ...): flank r 5.5 and node short axis 12 at t1,
  flank gone (a zero-voxel segment) and node short axis 9 at t2 (injected iCR). necrotic_mass
  grows in-plane only (z semi-axis 30), or its lower pole would leave the field of view.
* Follow-up segments are labelled ``Lesion N`` (odd t) / ``target X`` (even t) in a shuffled
  order. TrackingUIDs: patient 1 keeps the baseline ones (longitudinal); other patients get
  fresh ones per study, except a disappeared lesion's empty segment (baseline TrackingUID). A
  zero-voxel segment is a SegmentSequence item no frame references (pydicom reads it; dciodvfy
  reports no error for it).
* Follow-up studies hold CT_noncontrast/, CT_contrast/, PET/, SEG_lesions.dcm and
  SEG_organs.dcm (no lesion RTSTRUCT or label map).
* Every study is checked: no lesion overlap (CT and PET grids), every lesion in its host
  tissue, the body off the in-plane edge and no lesion on the edge of the grid, and a new lesion
  >= 5 mm from every other lesion and from the liver capsule.

truth.json keys added for the anatomy and biomarker work (every lesion, both variants)
---------------------------------------------------------------------------------------
``uniform``, ``excludes_aortic_lumen``, ``necrotic_core_fraction_voxelized``,
``suv_mean_voxelized``, ``mtv41_ml_voxelized`` (PET voxels with centre in the lesion and SUV >=
41 % of the lesion's SUVmax, x 0.064 mL; the PET has no blur, so background never counts),
``mtv25_ml_voxelized`` (same with SUV >= 2.5), ``designed_enhancement_hu``,
``designed_core_enhancement_hu``, ``host_tissue``, ``host_hu_noncontrast``, ``host_hu_contrast``,
``designed_cnr_noncontrast`` / ``designed_cnr_contrast`` (|lesion HU - host HU| / 8),
``aorta_contact_angle_deg`` (analytic, :func:`aorta_contact_angle_analytic`: the arc of the
aorta inside the lesion's widest cross-section; 0 for a tangent lesion),
``aorta_contact_angle_deg_within_voxel`` (the arc within one in-plane CT voxel of the lesion, the
most a voxel image can show as contact), ``relation_to_aorta`` (``encasing`` / ``abutting`` / ``none``, :func:`aorta_relation`),
``exophytic_fraction`` (voxelized, fraction of lesion voxels outside the liver mask) and
``exophytic_fraction_analytic`` (liver lesions, else null), the straight skin path to the centre
(:func:`skin_path`): ``path_entry_lps_mm``, ``path_direction_lps``, ``path_length_analytic_mm``
(entry to centre; skin depth + radius for a sphere), ``path_length_to_surface_mm``,
``path_surface_point_lps_mm``, ``aerated_lung_path_mm_analytic`` (lung along entry -> lesion
surface, :func:`aerated_lung_length_mm`), ``path_tissues``, ``path_lesions_crossed``; and
``centre_lps_mm_contrast``, ``voxel_count_contrast``. ``aorta_distance_mm`` is the analytic
surface-to-surface distance (0 when touching, and for ``aorta_encasing``);
``liver_capsule_distance_mm`` is 0 for a lesion crossing the capsule. Top level: ``variant``,
``organ_formats``, ``contrast_shift_mm``, ``contrast_frame_of_reference_uid`` and ``files``
(what each file is, which series it references, in which frame).

Public API
----------
:func:`generate_patient`, :func:`generate_cohort`, :func:`lesion_designs`,
:func:`patient_design`, :func:`phantom_arrays` (arrays without files), :func:`truth_dict`;
follow-ups: :func:`generate_followup_cohort`, :func:`generate_followup_patient`,
:func:`timepoint_arrays`, :func:`timepoint_lesions`, :func:`patient_to_scanner`.

Modules (dependencies run one way: design -> render / truth -> dicom -> this package)
------------------------------------------------------------------------------------
:mod:`.design`  constants, organ and lesion designs, patient designs, analytic geometry
:mod:`.render`  voxel arrays in memory (:class:`PhantomArrays`, :func:`phantom_arrays`)
:mod:`.truth`   analytic and voxelized ground truth, ``truth.json`` (:func:`truth_dict`)
:mod:`.dicom`   DICOM / NIfTI / JSON writers and :func:`generate_patient` / :func:`generate_cohort`
:mod:`.followup` timepoints: designed changes, repositioned studies, itRECIST truth
"""

from __future__ import annotations

from pipeline.testing.phantom.design import (  # noqa: F401
    AORTA_CENTRE_XY_MM,
    AORTA_RADIUS_MM,
    BODY_SEMI_AXES_XY_MM,
    CT_NOISE_SIGMA_HU,
    CT_RESCALE_INTERCEPT,
    DEFAULT_ORGAN_FORMATS,
    EXOPHYTIC_CENTRE_DEPTH_MM,
    FAT_THICKNESS_MM,
    GENERATOR,
    HALF_LIFE_F18_S,
    LIVER,
    LUNG_LEFT,
    LUNG_RIGHT,
    MAX_CONTRAST_SHIFT_MM,
    ORGAN_FORMATS,
    ORGAN_NAMES,
    ORGAN_ROI_NAMES,
    ORGANS,
    PET_STORED_MAX,
    SIZES,
    SPINE_CENTRE_XY_MM,
    SPINE_RADIUS_MM,
    SPLEEN,
    TABLE_X_RANGE_MM,
    TABLE_Y_RANGE_MM,
    TISSUE_VALUES,
    TOTALSEG_STRUCTURES,
    VARIANTS,
    body_skin_depth,
    classify_tissue,
    ct_grid,
    Ellipsoid,
    ellipsoid_signed_distance,
    grid_axes,
    grid_dict,
    label_lesions,
    lesion_designs,
    LesionDesign,
    min_over_surface,
    patient_design,
    PatientDesign,
    pet_grid,
    structure_distance,
    Tissue,
)
from pipeline.testing.phantom.render import (  # noqa: F401
    phantom_arrays,
    PhantomArrays,
    quantize_pet_slices,
)
from pipeline.testing.phantom.truth import (  # noqa: F401
    aerated_lung_length_mm,
    aorta_contact_angle_analytic,
    aorta_relation,
    ellipse_closest_point,
    exophytic_fraction_analytic,
    lesion_truth,
    path_crossings,
    skin_path,
    truth_dict,
)
from pipeline.testing.phantom.dicom import (  # noqa: F401
    CONTOUR_VERTICES,
    DETACHED_STUDY_MANAGEMENT,
    PET_ACQUISITION_DELAY_S,
    PET_FRAME_DURATION_S,
    generate_cohort,
    generate_patient,
    mask_contours,
    patient_uids,
    write_ct_series,
    write_labelmap,
    write_pet_series,
    write_rtstruct,
    write_rtstruct_organs,
    write_seg,
    write_totalseg,
)
from pipeline.testing.phantom.followup import (  # noqa: F401
    SCENARIOS,
    generate_followup_cohort,
    generate_followup_patient,
    patient_to_scanner,
    scenario_of,
    timepoint_arrays,
    timepoint_lesions,
)

__all__ = [
    "AORTA_CENTRE_XY_MM",
    "AORTA_RADIUS_MM",
    "BODY_SEMI_AXES_XY_MM",
    "CT_NOISE_SIGMA_HU",
    "CT_RESCALE_INTERCEPT",
    "DEFAULT_ORGAN_FORMATS",
    "EXOPHYTIC_CENTRE_DEPTH_MM",
    "FAT_THICKNESS_MM",
    "GENERATOR",
    "HALF_LIFE_F18_S",
    "LIVER",
    "LUNG_LEFT",
    "LUNG_RIGHT",
    "MAX_CONTRAST_SHIFT_MM",
    "ORGAN_FORMATS",
    "ORGAN_NAMES",
    "ORGAN_ROI_NAMES",
    "ORGANS",
    "PET_STORED_MAX",
    "SIZES",
    "SPINE_CENTRE_XY_MM",
    "SPINE_RADIUS_MM",
    "SPLEEN",
    "TABLE_X_RANGE_MM",
    "TABLE_Y_RANGE_MM",
    "TISSUE_VALUES",
    "TOTALSEG_STRUCTURES",
    "VARIANTS",
    "body_skin_depth",
    "classify_tissue",
    "ct_grid",
    "Ellipsoid",
    "ellipsoid_signed_distance",
    "grid_axes",
    "grid_dict",
    "label_lesions",
    "lesion_designs",
    "LesionDesign",
    "min_over_surface",
    "patient_design",
    "PatientDesign",
    "pet_grid",
    "structure_distance",
    "Tissue",
    "phantom_arrays",
    "PhantomArrays",
    "quantize_pet_slices",
    "aerated_lung_length_mm",
    "aorta_contact_angle_analytic",
    "aorta_relation",
    "ellipse_closest_point",
    "exophytic_fraction_analytic",
    "lesion_truth",
    "path_crossings",
    "skin_path",
    "truth_dict",
    "CONTOUR_VERTICES",
    "DETACHED_STUDY_MANAGEMENT",
    "PET_ACQUISITION_DELAY_S",
    "PET_FRAME_DURATION_S",
    "generate_cohort",
    "generate_patient",
    "mask_contours",
    "patient_uids",
    "write_ct_series",
    "write_labelmap",
    "write_pet_series",
    "write_rtstruct",
    "write_rtstruct_organs",
    "write_seg",
    "write_totalseg",
    "SCENARIOS",
    "generate_followup_cohort",
    "generate_followup_patient",
    "patient_to_scanner",
    "scenario_of",
    "timepoint_arrays",
    "timepoint_lesions",
]
