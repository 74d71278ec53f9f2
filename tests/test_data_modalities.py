"""Which file or DICOM series is which modality: every naming scheme, and the one-line errors."""

from __future__ import annotations

import pytest

from refineformer3d.data import DICOM_KEYWORDS, DatasetError, dicom_modality, modality_of_name
from refineformer3d.data.modalities import assign_modalities, study_name

NAMES = {
    # BraTS 2017-2021
    "Brats17_2013_10_1_flair.nii.gz": "flair",
    "BraTS2021_00000_t1.nii.gz": "t1",
    "BraTS2021_00000_t1ce.nii.gz": "t1ce",
    "BraTS20_Training_001_t2.nii": "t2",
    # BraTS 2023+
    "BraTS-GLI-00000-000-t2f.nii.gz": "flair",
    "BraTS-GLI-00000-000-t1n.nii.gz": "t1",
    "BraTS-GLI-00000-000-t1c.nii.gz": "t1ce",
    "BraTS-GLI-00000-000-t2w.nii.gz": "t2",
    # BIDS: the ce- entity makes a T1w the contrast-enhanced T1, whatever other entities stand between
    "sub-01_FLAIR.nii.gz": "flair",
    "sub-01_T1w.nii.gz": "t1",
    "sub-01_ce-gadolinium_T1w.nii.gz": "t1ce",
    "sub-01_ses-2_ce-Gd_run-1_T1w.nii.gz": "t1ce",
    "sub-01_ses-2_run-1_T1w.nii.gz": "t1",
    "sub-01_T2w.nii.gz": "t2",
    # plain names, any case, any prefix, NRRD and MetaImage too
    "FLAIR.nrrd": "flair",
    "t1.mha": "t1",
    "T1CE.nii.gz": "t1ce",
    "patient7_T1Gd.nrrd": "t1ce",
    "x.t1post.mhd": "t1ce",
    "t1_contrast.nii.gz": "t1ce",
    "t1-c.nii.gz": "t1ce",
    "t2.nhdr": "t2",
    # the BraTS Toolkit's (BrainLes preprocessing) names, as a TCIA study exported through it carries them
    "MRHR_FLAIR_AX_TCGA-FG-6692_MRHR_FLAIR_AX_SE_IR_5_tir2d1_21_fla.nii.gz": "flair",
    "T1_AX_TCGA-FG-6692_T1_AX_SE_10_se2d1_t1.nii.gz": "t1",
    "MRHR_T1_AX_POST_GAD_TCGA-FG-6692_MRHR_T1_AX_POST_GAD_SE_13_se2d1r_t1c.nii.gz": "t1ce",
    "MRHR_T2_AX_TCGA-FG-6692_MRHR_T2_AX_SE_2_tse2d1_11_t2.nii.gz": "t2",
    "case_fla_bet_raw.nii.gz": None,  # a derivative named after its step, not a modality
    # HD-GLIO's and other tools' names
    "patient_ct1.nii.gz": "t1ce",
    "t2flair.nii.gz": "flair",
    "T1_pre.nii.gz": "t1",
    "t1native.nrrd": "t1",
    # nnU-Net's Task01 channel order
    "BRATS_001_0000.nii.gz": "flair",
    "BRATS_001_0002.nii.gz": "t1ce",
    # not modalities
    "BraTS2021_00000_seg.nii.gz": None,
    "sub-01_T1w.json": None,
    "t1_mask.nii.gz": None,
    "pt2.nii.gz": None,
    "flat.nii.gz": None,
    "act1.nii.gz": None,
    "t1_fla.nii.gz": "flair",
    "._t1.nii.gz": None,
    "notes.txt": None,
}


@pytest.mark.parametrize("name, modality", NAMES.items())
def test_modality_of_name(name, modality):
    assert modality_of_name(name) == modality


@pytest.mark.parametrize(
    "description, agent, modality",
    [
        ("AX T2 FLAIR", "", "flair"),
        ("t2_tirm_tra_dark-fluid", "", "flair"),
        ("T1 MPRAGE", "", "t1"),
        ("T1 MPRAGE", "Gadobutrol", "t1ce"),  # the contrast agent tag (0018,0010)
        ("AX_T1_POST-GAD", "", "t1ce"),
        ("T1 +C", "", "t1ce"),
        ("t1_se_tra_Gd", "", "t1ce"),
        ("AX T2 TSE", "", "t2"),
        ("3-plane localizer", "", None),
        ("DWI b1000", "", None),
    ],
)
def test_dicom_modality_from_description_and_contrast_tag(description, agent, modality):
    assert dicom_modality(description, agent) == modality


def test_dicom_keyword_table_can_be_replaced():
    table = {**DICOM_KEYWORDS, "t1ce": ("kontrast",), "t1": ("t1",)}
    assert dicom_modality("T1 kontrast", keywords=table) == "t1ce"
    assert dicom_modality("T1 post gad", keywords=table) == "t1"
    with pytest.raises(ValueError, match="unknown modalities \\['pd'\\]"):
        dicom_modality("PD", keywords={"pd": ("pd",)})


def test_missing_and_ambiguous_modalities_give_one_line_naming_study_modality_and_candidates():
    candidates = {"flair": ["/s/a_flair.nii.gz"], "t1": ["/s/t1.nii.gz"], "t1ce": ["/s/t1c.nii.gz", "/s/t1gd.nii.gz"]}
    with pytest.raises(DatasetError) as caught:
        assign_modalities(candidates, "study7")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("study study7: 2 problems:")
    assert "2 candidates for T1ce: t1c.nii.gz, t1gd.nii.gz" in message
    assert "no T2 file" in message
    chosen = assign_modalities({**candidates, "t2": ["/s/t2.nii.gz"]}, "study7", given={"t1ce": "/s/t1gd.nii.gz"})
    assert chosen == ["/s/a_flair.nii.gz", "/s/t1.nii.gz", "/s/t1gd.nii.gz", "/s/t2.nii.gz"]


@pytest.mark.parametrize(
    "files, folder, name",
    [
        (["sub-01_FLAIR.nii.gz", "sub-01_ce-gd_T1w.nii.gz"], "anat", "sub-01"),
        (["BraTS-GLI-00001-000-t2f.nii.gz", "BraTS-GLI-00001-000-t1c.nii.gz"], "x", "BraTS-GLI-00001-000"),
        (["flair.nii.gz", "t1.nii.gz"], "mystudy", "mystudy"),
        (["t1.nii.gz", "t2.nii.gz"], "sub-02/anat", "sub-02"),
    ],
)
def test_study_name(files, folder, name):
    assert study_name(files, folder) == name
