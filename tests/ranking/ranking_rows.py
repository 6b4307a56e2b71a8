"""Synthetic lesion rows for the ranking tests (no images)."""


def lesion(lid, **kw):
    """A neutral lesion row (deep soft tissue, 25 mm, 30 mm deep, avid) with overrides."""
    base = dict(
        patient_id="P1", study_uid="1.2.3", lesion_id=lid, lesion_label=lid,
        organ="soft_tissue", site="deep_soft_tissue", longest_diameter_mm=25.0,
        short_axis_mm=22.0, volume_ml=6.0, skin_depth_mm=30.0, suv_max=6.0, suv_peak=5.0,
        centroid_x_mm=10.0, centroid_y_mm=20.0, centroid_z_mm=30.0,
        suv_peak_x_mm=11.0, suv_peak_y_mm=21.0, suv_peak_z_mm=29.0,
    )
    base.update(kw)
    return base


# The lesions of phantom patient PHANTOM001 as the pipeline measured them (demo run of the
# committed sample cohort), with the biomarker the biomarker issue will add to the necrotic mass.
PHANTOM001 = [
    lesion("soft_tissue_flank", organ="soft_tissue", site="superficial_soft_tissue",
           longest_diameter_mm=26.1, short_axis_mm=26.1, volume_ml=7.35, skin_depth_mm=7.07,
           suv_max=8.0, suv_peak=8.0, centroid_x_mm=120.0, centroid_y_mm=-60.0,
           centroid_z_mm=-45.0, suv_peak_x_mm=118.0, suv_peak_y_mm=-62.0, suv_peak_z_mm=-46.0),
    lesion("node_axillary_r", lesion_label="node_axillary_R", organ="lymph_node",
           site="superficial_node", longest_diameter_mm=20.6, short_axis_mm=16.7, volume_ml=3.26,
           skin_depth_mm=5.3, suv_max=7.0, suv_peak=7.0),
    lesion("liver_deep", organ="liver", site="visceral:liver", longest_diameter_mm=30.9,
           short_axis_mm=30.9, volume_ml=14.55, skin_depth_mm=81.6, suv_max=6.0, suv_peak=6.0,
           liver_capsule_distance_mm=None),
    lesion("liver_subcapsular", organ="liver", site="visceral:liver", longest_diameter_mm=21.4,
           short_axis_mm=21.4, volume_ml=4.28, skin_depth_mm=20.0, suv_max=6.0, suv_peak=6.0,
           liver_capsule_distance_mm=0.0),
    lesion("lung_nodule_tiny", organ="lung", site="visceral:lung", longest_diameter_mm=5.6,
           short_axis_mm=5.6, volume_ml=0.15, skin_depth_mm=80.0, suv_max=1.5, suv_peak=0.52),
    lesion("necrotic_mass", organ="soft_tissue", site="deep_soft_tissue",
           longest_diameter_mm=61.5, short_axis_mm=61.5, volume_ml=112.6, skin_depth_mm=33.4,
           suv_max=5.0, suv_peak=5.0, necrosis_fraction=0.7),
    lesion("node_paraaortic", organ="lymph_node", site="deep_node", longest_diameter_mm=25.5,
           short_axis_mm=23.0, volume_ml=7.28, skin_depth_mm=60.1, suv_max=6.5, suv_peak=6.5,
           vessel_distance_mm=0.0, vessel_name="aorta"),
    lesion("lung_subpleural", organ="lung", site="visceral:lung", longest_diameter_mm=17.7,
           short_axis_mm=15.6, volume_ml=2.14, skin_depth_mm=35.4, suv_max=4.0, suv_peak=4.0,
           lung_pleura_distance_mm=2.5),
]
