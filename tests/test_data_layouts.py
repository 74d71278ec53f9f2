"""Studies in the namings and formats they arrive in: discovery, batches, explicit mappings and the one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from _studies import BIDS, BRATS2023, DICOM_DESCRIPTIONS, MIXED, PLAIN, dicom, named, save_nifti

from refineformer3d.data import DatasetError, find_studies, find_study_folders, read_study

SIZE = (8, 8, 6)
# One constant per modality, so a test can tell which file went to which channel.
LEVELS = np.stack([np.full(SIZE, level, dtype=np.int16) for level in (10, 20, 30, 40)])
AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])


def names_of(study: dict) -> list[str]:
    return [Path(p).name for p in study["image"]]


@pytest.mark.parametrize(
    "layout, names, folder, case",
    [
        ("bids", BIDS, "sub-01/anat", "sub-01"),
        ("plain", PLAIN, "mystudy", "mystudy"),
        ("brats2023", BRATS2023, "BraTS-GLI-00001-000", "BraTS-GLI-00001-000"),
        ("nrrd-mha", MIXED, "Patient7", "Patient7"),
    ],
)
def test_one_study_in_each_naming(tmp_path, layout, names, folder, case):
    named(tmp_path / folder, names, LEVELS, AFFINE)
    # The study's own folder, its parent, and (BIDS) the subject folder all find the same study.
    for source in {tmp_path, tmp_path / folder, tmp_path / Path(folder).parts[0]}:
        (study,) = find_studies(source)
        assert study["case"] == case
        assert names_of(study) == [names[m] for m in ("flair", "t1", "t1ce", "t2")]


def test_a_folder_of_studies_is_a_batch(tmp_path):
    named(tmp_path / "sub-01" / "anat", BIDS, LEVELS, AFFINE)
    named(tmp_path / "sub-02" / "anat", {m: f.replace("sub-01", "sub-02") for m, f in BIDS.items()}, LEVELS, AFFINE)
    named(tmp_path / "mystudy", PLAIN, LEVELS, AFFINE)
    assert [s["case"] for s in find_studies(tmp_path)] == ["mystudy", "sub-01", "sub-02"]


def test_brats_cases_and_other_namings_in_one_batch(tmp_path):
    from _studies import brats

    brats(tmp_path, "Brats17_X_1", LEVELS, AFFINE)
    named(tmp_path / "sub-01" / "anat", BIDS, LEVELS, AFFINE)
    assert [s["case"] for s in find_studies(tmp_path)] == ["Brats17_X_1", "sub-01"]
    # A BraTS-layout case may lack a sequence but FLAIR and T1ce both (inference fills it)...
    (tmp_path / "Brats17_X_1" / "Brats17_X_1_t1ce.nii.gz").unlink()
    assert find_studies(tmp_path)[0]["image"][2] is None
    # ...and lacking both it keeps the layout's error, which names the files.
    (tmp_path / "Brats17_X_1" / "Brats17_X_1_flair.nii.gz").unlink()
    with pytest.raises(DatasetError, match="case Brats17_X_1: neither Brats17_X_1/Brats17_X_1_flair.nii.gz nor Brats1"):
        find_studies(tmp_path)


def test_a_batch_lists_its_bad_studies_apart_when_asked(tmp_path):
    from _studies import brats

    for case in ("Brats17_X_1", "Brats17_Y_1"):
        brats(tmp_path / "brats", case, LEVELS, AFFINE)
    for modality in ("flair", "t1ce"):
        (tmp_path / "brats" / "Brats17_Y_1" / f"Brats17_Y_1_{modality}.nii.gz").unlink()
    named(tmp_path / "brats" / "sub-01" / "anat", BIDS, LEVELS, AFFINE)
    named(tmp_path / "plain" / "good", PLAIN, LEVELS, AFFINE)
    save_nifti(named(tmp_path / "plain" / "twice", PLAIN, LEVELS, AFFINE) / "t1gd.nii.gz", LEVELS[2], AFFINE)
    short = named(tmp_path / "plain" / "short", PLAIN, LEVELS, AFFINE)
    for name in ("flair.nii.gz", "t1ce.nii.gz"):
        (short / name).unlink()
    (named(tmp_path / "plain" / "no_t2", PLAIN, LEVELS, AFFINE) / "t2.nii.gz").unlink()
    skipped: dict[str, str] = {}
    assert [s["case"] for s in find_studies(tmp_path / "brats", skipped=skipped)] == ["Brats17_X_1", "sub-01"]
    assert skipped == {
        "Brats17_Y_1": "case Brats17_Y_1: neither Brats17_Y_1/Brats17_Y_1_flair.nii.gz nor "
        "Brats17_Y_1/Brats17_Y_1_t1ce.nii.gz; the network needs one of them"
    }
    skipped = {}
    assert [s["case"] for s in find_studies(tmp_path / "plain", skipped=skipped)] == ["good", "no_t2"]
    assert sorted(skipped) == ["short", "twice"]
    assert skipped["twice"].startswith("study twice: 2 candidates for T1ce: t1ce.nii.gz, t1gd.nii.gz")
    assert skipped["short"].startswith("study short: neither FLAIR nor T1ce file")
    # Without a good study there is no batch: the one study's error, as without ``skipped``.
    for study in (tmp_path / "brats" / "Brats17_Y_1", tmp_path / "plain" / "short"):
        skipped = {}
        with pytest.raises(DatasetError, match="neither"):
            find_studies(study, skipped=skipped)


def test_dicom_study_one_series_per_folder(tmp_path):
    study = dicom(tmp_path / "Study1", LEVELS, AFFINE, DICOM_DESCRIPTIONS, agent="Gadobutrol")
    (found,) = find_studies(study)
    assert found["case"] == "Study1"
    # T1 and T1ce share a description; the contrast agent tag tells them apart; the localiser is left out.
    assert names_of(found) == ["series01", "series02", "series03", "series04"]
    assert find_study_folders(tmp_path) == [study]
    with pytest.raises(
        DatasetError,
        match=r"study NoTag: 2 problems: 2 candidates for T1: series02 \('T1 MPRAGE', series [\d.]+\), series03",
    ):
        find_studies(dicom(tmp_path / "NoTag", LEVELS, AFFINE, DICOM_DESCRIPTIONS))
    # The keyword table is the user's to replace.
    renamed = dicom(tmp_path / "Local", LEVELS, AFFINE, {**DICOM_DESCRIPTIONS, "t1ce": "KM T1"})
    keywords = {"flair": ("flair",), "t1ce": ("km",), "t2": ("t2",), "t1": ("t1",)}
    assert names_of(find_studies(renamed, dicom_keywords=keywords)[0])[2] == "series03"


def test_dicom_study_as_one_file_set(tmp_path):
    """Every series' files in one folder, interleaved: split by SeriesInstanceUID, each named by its first file."""
    study = dicom(tmp_path / "Study1", LEVELS, AFFINE, DICOM_DESCRIPTIONS, agent="Gadobutrol", flat=True)
    assert not any(p.is_dir() for p in study.iterdir())
    (found,) = find_studies(tmp_path)
    assert found["case"] == "Study1"
    assert names_of(found) == ["IM000001", "IM000002", "IM000003", "IM000004"]
    assert find_study_folders(tmp_path) == [study]
    # Two series of one modality in one file set: one line naming the study, the modality and both series.
    same = dicom(tmp_path / "NoTag", LEVELS, AFFINE, DICOM_DESCRIPTIONS, flat=True)
    with pytest.raises(DatasetError) as caught:
        find_studies(same)
    message = str(caught.value)
    assert "\n" not in message
    assert re.search(
        r"^study NoTag: .*2 candidates for T1: IM000002 \('T1 MPRAGE', series [\d.]+\), "
        r"IM000003 \('T1 MPRAGE', series [\d.]+\)",
        message,
    ), message
    # A folder of file-set studies is a batch, not one study of series folders.
    assert find_study_folders(tmp_path) == [same, study]


def test_ambiguous_and_missing_modalities_are_one_line_naming_study_modality_and_candidates(tmp_path):
    study = named(tmp_path / "mystudy", PLAIN, LEVELS, AFFINE)
    save_nifti(study / "t1gd.nii.gz", LEVELS[2], AFFINE)
    (study / "t2.nii.gz").unlink()
    with pytest.raises(DatasetError) as caught:
        find_studies(study)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("study mystudy: 2 candidates for T1ce: t1ce.nii.gz, t1gd.nii.gz")
    assert "T2" not in message  # inference fills a missing T2
    # In a batch, every bad study is named, each on the same line.
    named(tmp_path / "other", {**PLAIN, "flair": "dark_fluid.nii.gz", "t1ce": "post.nii.gz"}, LEVELS, AFFINE)
    with pytest.raises(DatasetError, match="study mystudy: .*; study other: neither FLAIR nor T1ce file"):
        find_studies(tmp_path)


def test_explicit_mapping_wins_over_names(tmp_path):
    study = named(tmp_path / "mystudy", PLAIN, LEVELS, AFFINE)
    extra = save_nifti(study / "t1gd.nii.gz", LEVELS[2], AFFINE)
    (found,) = find_studies(study, modality_files={"t1ce": "t1gd.nii.gz"})  # relative to the study
    assert names_of(found) == ["flair.nii.gz", "t1.nii.gz", "t1gd.nii.gz", "t2.nii.gz"]
    oddly_named = {m: save_nifti(tmp_path / "odd" / f"scan{i}.nii.gz", LEVELS[i], AFFINE) for i, m in enumerate(PLAIN)}
    (found,) = find_studies(tmp_path / "odd", modality_files={m: str(p) for m, p in oddly_named.items()})
    assert found["image"] == [str(p) for p in oddly_named.values()]
    with pytest.raises(DatasetError, match="study mystudy: t2 file .*nope.nii.gz does not exist"):
        read_study(study, {"t2": "nope.nii.gz"})
    with pytest.raises(DatasetError, match="unknown modality 'pd'"):
        read_study(study, {"pd": str(extra)})
    with pytest.raises(DatasetError, match="holds 2 studies; a modality mapping applies to one study folder"):
        named(tmp_path / "second", PLAIN, LEVELS, AFFINE)
        find_studies(tmp_path, modality_files={"t1ce": str(extra)})


def test_datalist_json_names_each_modality(tmp_path):
    """The README's copy-paste example: a datalist with one explicit study."""
    named(
        tmp_path / "scans", {"flair": "a.nii.gz", "t1": "b.nii.gz", "t1ce": "c.nii.gz", "t2": "d.mha"}, LEVELS, AFFINE
    )
    datalist = {
        "testing": [
            {
                "case": "patient7",
                "image": {
                    "flair": "scans/a.nii.gz",
                    "t1": "scans/b.nii.gz",
                    "t1ce": "scans/c.nii.gz",
                    "t2": "scans/d.mha",
                },
            }
        ]
    }
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(datalist))
    (study,) = find_studies(path)
    assert study["case"] == "patient7"
    assert study["image"] == [str(tmp_path / "scans" / n) for n in ("a.nii.gz", "b.nii.gz", "c.nii.gz", "d.mha")]
    datalist["testing"][0]["image"].pop("t2")
    path.write_text(json.dumps(datalist))
    with pytest.raises(
        DatasetError, match=r"testing\[0\].image: a modality mapping needs the keys .* missing \['t2'\]"
    ):
        find_studies(path)
