"""Studies as the scanner gives them: a sequence missing, files named by the field's tools, folders of symbolic links,
``--modality`` paths, and the one-line input errors that come before torch and MONAI are imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _studies import PLAIN, named
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from refineformer3d.data import DatasetError, FillMissingSequencesd, InputError, find_studies, make_case
from refineformer3d.data.modalities import assign_modalities
from refineformer3d.handlers import StudyBatch
from refineformer3d.segment import main

REPO = Path(__file__).resolve().parents[1]
CHANNELS = ("flair", "t1", "t1ce", "t2")
# The BraTS Toolkit's names, as TCGA-FG-6692 is exported through it (file names only; the images are synthetic).
TOOLKIT = {
    "flair": "MRHR_FLAIR_AX_TCGA-FG-6692_MRHR_FLAIR_AX_SE_IR_5_tir2d1_21_fla.nii.gz",
    "t1": "T1_AX_TCGA-FG-6692_T1_AX_SE_10_se2d1_t1.nii.gz",
    "t1ce": "MRHR_T1_AX_POST_GAD_TCGA-FG-6692_MRHR_T1_AX_POST_GAD_SE_13_se2d1r_t1c.nii.gz",
    "t2": "MRHR_T2_AX_TCGA-FG-6692_MRHR_T2_AX_SE_2_tse2d1_11_t2.nii.gz",
}


@pytest.fixture(scope="module")
def small_case():
    return make_case(seed=0, index=1, shape=(48, 48, 40))


def _without(folder: Path, *modalities: str) -> Path:
    for modality in modalities:
        (folder / PLAIN[modality]).unlink()
    return folder


def test_any_subset_with_flair_or_t1ce_is_assigned_and_the_rest_is_none():
    files = {m: [f"/s/{m}.nii.gz"] for m in CHANNELS}
    assert assign_modalities({m: files[m] for m in ("flair", "t1ce")}, "s", allow_missing=True) == [
        "/s/flair.nii.gz",
        None,
        "/s/t1ce.nii.gz",
        None,
    ]
    assert assign_modalities({"flair": files["flair"]}, "s", allow_missing=True)[1:] == [None, None, None]
    with pytest.raises(DatasetError, match=r"^study s: neither FLAIR nor T1ce file; the network needs one") as caught:
        assign_modalities({m: files[m] for m in ("t1", "t2")}, "s", allow_missing=True)
    assert "\n" not in str(caught.value)
    # two FLAIR candidates and no T1ce: the ambiguity is the problem, not a missing FLAIR
    with pytest.raises(DatasetError, match=r"^study s: 2 candidates for FLAIR: a_flair.nii.gz, b_flair.nii.gz"):
        assign_modalities({"flair": ["/s/a_flair.nii.gz", "/s/b_flair.nii.gz"]}, "s", allow_missing=True)
    with pytest.raises(DatasetError, match="no T1 file"):  # training lists keep needing all four
        assign_modalities({m: files[m] for m in ("flair", "t1ce")}, "s")


def test_fill_missing_sequences_puts_all_zero_channels_back_in_place(caplog):
    present = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5) + 1
    image = MetaTensor(present, meta={"missing_sequences": ["t1", "t2"], "study": "s"})
    filled = FillMissingSequencesd("image")({"image": image})["image"]
    assert isinstance(filled, MetaTensor) and filled.shape == (4, 3, 4, 5)
    assert torch.equal(filled[0], present[0]) and torch.equal(filled[2], present[1])
    assert not filled[1].any() and not filled[3].any()
    assert filled.meta["missing_sequences"] == ["t1", "t2"]
    assert "study s: no T1, T2; given the value of a sequence dropped in training" in caplog.text
    complete = MetaTensor(torch.ones(4, 2, 2, 2))
    assert FillMissingSequencesd("image")({"image": complete})["image"] is complete
    with pytest.raises(ValueError, match=r"has 2 channels and lacks \['t2'\]; expected one channel for each of"):
        FillMissingSequencesd("image")(
            {"image": MetaTensor(torch.ones(2, 2, 2, 2), meta={"missing_sequences": ["t2"]})}
        )
    with pytest.raises(ValueError, match=r"lacks \['pd'\]"):
        FillMissingSequencesd("image")(
            {"image": MetaTensor(torch.ones(4, 2, 2, 2), meta={"missing_sequences": ["pd"]})}
        )


@pytest.mark.parametrize("missing", [("t2",), ("t1", "t2"), ("t1ce",), ("flair", "t1", "t2")])
def test_a_missing_sequence_is_preprocessed_as_training_drops_it_and_the_others_are_unchanged(
    small_case, tmp_path, missing
):
    """The inference preprocessing of a study lacking sequences equals the full study's with those channels zeroed:
    the crop, N4 and the normalisation of the other channels are untouched, and a missing one is 0 everywhere, as
    RandDropSequenced(value=0) leaves a dropped one after the non-zero normalisation."""
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundle" / "configs" / "inference.json"))
    preprocessing = parser.get_parsed_content("preprocessing")
    full = named(tmp_path / "full", PLAIN, small_case.images, small_case.affine)
    lacking = _without(named(tmp_path / "lacking", PLAIN, small_case.images, small_case.affine), *missing)
    (complete,) = find_studies(full)
    (study,) = find_studies(lacking)
    assert [m for m, f in zip(CHANNELS, study["image"]) if f is None] == list(missing)
    expected = preprocessing(complete)["image"]
    found = preprocessing(study)["image"]
    assert found.shape == expected.shape and np.allclose(found.affine, expected.affine)
    for index, modality in enumerate(CHANNELS):
        if modality in missing:
            assert not found[index].any()
        else:
            torch.testing.assert_close(found[index], expected[index], atol=1e-5, rtol=1e-5)
    assert found.meta["missing_sequences"] == list(missing)
    assert found.meta["reference_modality"] == ("flair" if "t1ce" in missing else "t1ce")


def test_a_study_with_flair_and_t1ce_only_is_segmented_and_the_report_names_what_it_lacks(small_case, tmp_path):
    study = _without(named(tmp_path / "brats2013", PLAIN, small_case.images, small_case.affine), "t1", "t2")
    out = tmp_path / "out"
    assert main(["-i", str(study), "-o", str(out), "--device", "cpu", "--report", "--no-bias_correction"]) == 0
    report = json.loads((out / "brats2013_report.json").read_text())
    assert report["missing_sequences"] == ["t1", "t2"]
    assert report["input_files"] == {m: str(study / PLAIN[m]) for m in ("flair", "t1ce")}
    assert any(w.startswith("no t1, t2: segmented with the value") for w in report["warnings"])
    assert report["reference_grid"]["shape"] == list(small_case.images.shape[1:])


def test_the_brats_toolkits_names_are_one_study(small_case, tmp_path):
    study = named(tmp_path / "TCGA-FG-6692", TOOLKIT, small_case.images, small_case.affine)
    (found,) = find_studies(study)
    assert found["image"] == [str(study / TOOLKIT[m]) for m in CHANNELS]


def test_a_study_of_symbolic_links_into_a_data_store_is_read(small_case, tmp_path):
    store = named(tmp_path / "store" / "0001", PLAIN, small_case.images, small_case.affine)
    study = tmp_path / "export" / "patient7"
    study.mkdir(parents=True)
    for name in PLAIN.values():
        (study / name).symlink_to(store / name)
    batch = StudyBatch(study, tmp_path / "out")
    assert [s["image"] for s in batch.studies] == [[str(study / PLAIN[m]) for m in CHANNELS]]


def test_modality_paths_are_taken_from_the_study_folder_or_as_absolute(small_case, tmp_path, monkeypatch):
    names = {**PLAIN, "flair": "AX_DARK_FLUID.nii.gz"}
    study = named(tmp_path / "study", names, small_case.images, small_case.affine)
    monkeypatch.chdir(tmp_path.parent)  # anywhere but the study folder
    from refineformer3d.segment import _parser, overrides

    values = overrides(
        _parser().parse_args(["-i", str(study), "-o", "out", "--modality", "flair=AX_DARK_FLUID.nii.gz"])
    )
    assert values["modality_files"] == {"flair": "AX_DARK_FLUID.nii.gz"}
    (found,) = find_studies(study, values["modality_files"])
    assert found["image"][0] == str(study / "AX_DARK_FLUID.nii.gz")
    (found,) = find_studies(study, {"flair": str(study / "AX_DARK_FLUID.nii.gz")})
    assert found["image"][0] == str(study / "AX_DARK_FLUID.nii.gz")
    with pytest.raises(DatasetError, match=f"flair file {study / 'nothere.nii.gz'} does not exist"):
        find_studies(study, {"flair": "nothere.nii.gz"})


_FRONT_DOOR = """
import sys
from refineformer3d.segment import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:  # --help
    code = stop.code
print("imported:", sorted(m for m in ("torch", "monai", "itk", "SimpleITK") if m in sys.modules))
sys.exit(code)
"""


def test_input_errors_and_help_come_before_torch_and_monai_are_imported(small_case, tmp_path):
    no_flair_nor_t1ce = _without(named(tmp_path / "t1t2", PLAIN, small_case.images, small_case.affine), "flair", "t1ce")
    two_d = tmp_path / "flat"
    named(two_d, PLAIN, small_case.images, small_case.affine)
    import nibabel as nib

    nib.save(nib.Nifti1Image(small_case.images[0, :, :, 0], small_case.affine), two_d / "flair.nii.gz")
    cases = {
        "missing folder": (["-i", str(tmp_path / "nothing")], "nothing does not exist; expected a dataset folder"),
        "no FLAIR nor T1ce": (["-i", str(no_flair_nor_t1ce)], "study t1t2: neither FLAIR nor T1ce file"),
        "bad --modality": (
            ["-i", str(no_flair_nor_t1ce), "--modality", "flair=gone.nii.gz"],
            "flair file " + str(no_flair_nor_t1ce / "gone.nii.gz") + " does not exist",
        ),
        "unknown --modality": (["-i", str(no_flair_nor_t1ce), "--modality", "pd=x.nii.gz"], "expected MODALITY=FILE"),
        "2-D header": (["-i", str(two_d)], "flair.nii.gz: a 2-D image of shape"),
    }
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for what, (args, problem) in cases.items():
        command = [sys.executable, "-c", _FRONT_DOOR, *args, "-o", str(tmp_path / "out")]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, (what, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and problem in lines[0], (what, lines)
        assert result.stdout.strip() == "imported: []", (what, result.stdout)
    result = subprocess.run([sys.executable, "-c", _FRONT_DOOR, "--help"], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "refineformer3d-segment" in result.stdout
    assert result.stdout.strip().endswith("imported: []")
    assert not (tmp_path / "out").exists()


def test_a_batch_with_some_usable_studies_passes_the_early_check(small_case, tmp_path):
    """The early check stops only what the bundle would stop whole; a batch's bad study is the bundle's to name."""
    from refineformer3d.segment import check_input

    batch = tmp_path / "batch"
    named(batch / "good", PLAIN, small_case.images, small_case.affine)
    _without(named(batch / "bad", PLAIN, small_case.images, small_case.affine), "flair", "t1ce")
    check_input({"dataset_dir": str(batch), "modality_files": {}})
    with pytest.raises(InputError, match="study bad: neither FLAIR nor T1ce"):
        check_input({"dataset_dir": str(batch / "bad"), "modality_files": {}})
