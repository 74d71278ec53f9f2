"""Study checks: every bad or hostile study of the corpus gives one clear error naming the case and the file, from the
datalist builder (and its command line) and from the training datalist check; a header is judged before any voxel is
allocated; the training check runs once per set of files."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from corpus import CORPUS, case_name, copy_case, dicom_two_series, file_of, four_d_studies

from refineformer3d.data import DatasetError, InputError, build_datalist, check_study, checked_datalist, verify_entries
from refineformer3d.data.datalist import find_studies, main


@pytest.fixture(autouse=True)
def verdict_cache(tmp_path, monkeypatch):
    """Passing verdicts go to the test's folder, not the user's cache."""
    monkeypatch.setenv("REFINEFORMER3D_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def good_case(tiny_brats) -> Path:
    return sorted((tiny_brats / "Brats17TrainingData" / "HGG").iterdir())[0]


def dataset_with(good_case: Path, root: Path, corruption) -> tuple[Path, str | None]:
    """Two good labelled cases and the corrupted one, in the BraTS 2017 layout."""
    hgg = root / "data" / "Brats17TrainingData" / "HGG"
    for i in (1, 2):
        copy_case(good_case, hgg, f"Brats17_GOOD_{i}")
    bad = copy_case(good_case, hgg, case_name(corruption))
    return root / "data", corruption.apply(bad, root / "outside")


@pytest.mark.parametrize("corruption", CORPUS, ids=lambda c: c.name)
def test_corpus_through_the_datalist_builder_and_the_training_check(good_case, tmp_path, capsys, corruption):
    if corruption.name == "unreadable_file" and os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions")
    data, expected = dataset_with(good_case, tmp_path, corruption)
    output = tmp_path / "datalist.json"
    code = main(["--dataset_dir", str(data), "--output", str(output)])
    err = capsys.readouterr().err
    if expected is None or not corruption.builder:
        assert code == 0 and output.exists()
        output.unlink()
    else:
        assert code == 2 and re.search(expected, err), err
        assert err.count("\n") == 1 and "Traceback" not in err
    if expected is None:  # accepted
        assert len(checked_datalist(data, val_fraction=0, test_fraction=0)["training"]) == 3
        return
    with pytest.raises(InputError, match=expected) as failure:
        checked_datalist(data, pixdim=(1.0, 1.0, 1.0))
    assert "\n" not in str(failure.value) and failure.value.code == 2  # one line, and exit status 2 from a command
    assert {p.name for p in tmp_path.iterdir()} <= {"data", "outside", "cache"}  # no datalist, no temporary file


def test_a_huge_header_is_refused_before_its_voxels_are_allocated(good_case, tmp_path):
    (corruption,) = [c for c in CORPUS if c.name == "huge_header"]
    bad = copy_case(good_case, tmp_path, case_name(corruption))
    corruption.apply(bad, tmp_path / "outside")
    entry = {"image": [str(file_of(bad, m)) for m in ("flair", "t1", "t1ce", "t2")], "case": bad.name}
    # 30000^3 int16 is 54 TB: were it allocated, the limit below would raise MemoryError instead of the check.
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, hard))
    try:
        problems = check_study(entry, tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert problems and "not loaded" in problems[0]


def test_datalist_paths_that_escape_the_dataset_folder_are_refused(good_case, tmp_path):
    data = tmp_path / "data"
    copy_case(good_case, data, "Brats17_GOOD_1")
    outside = copy_case(good_case, tmp_path, "Brats17_ELSEWHERE_1")
    entry = {
        "image": [f"../{outside.name}/{outside.name}_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")],
        "label": f"../{outside.name}/{outside.name}_seg.nii.gz",
    }
    (data / "datalist.json").write_text(json.dumps({"dataset_dir": ".", "training": [entry], "validation": []}))
    with pytest.raises(InputError, match=f"{outside.name}_flair.nii.gz: resolves to .* outside the dataset folder"):
        checked_datalist(data / "datalist.json")


def test_no_tumour_study_trains(good_case, tmp_path):
    """A study whose label is all background passes the checks and yields crops (the negative samples only)."""
    from conftest import CONFIGS
    from monai.bundle import ConfigParser

    (corruption,) = [c for c in CORPUS if c.name == "no_tumour"]
    data, _ = dataset_with(good_case, tmp_path, corruption)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"dataset_dir": str(data), "val_fraction": 0.0, "test_fraction": 0.0, "roi_size": [32, 32, 32]})
    datalist = parser.get_parsed_content("train_datalist")
    (entry,) = [e for e in datalist if e["case"] == case_name(corruption)]
    crops = parser.get_parsed_content("train#preprocessing")(entry)
    assert all(float(c["label"].sum()) == 0 for c in crops)


def test_four_d_studies_with_the_wrong_number_of_modalities(good_case, tmp_path):
    expected = four_d_studies(good_case, tmp_path / "studies")
    studies = find_studies(tmp_path / "studies")  # listing never fails for one bad file
    assert len(studies) == len(expected)
    for study in studies:
        problems = check_study(study, tmp_path / "studies")
        pattern = expected[Path(study["image"]).name]
        if pattern is None:
            assert problems == []
        else:
            assert len(problems) == 1 and re.search(pattern, problems[0]), problems


def test_a_dicom_folder_with_two_interleaved_series_is_refused(tmp_path):
    """A folder whose files alternate between two series is a file set: split by SeriesInstanceUID, and when no
    keyword names them, the error names the study and both series."""
    pytest.importorskip("SimpleITK")
    pytest.importorskip("pydicom")
    from refineformer3d.handlers import StudyBatch

    folder = dicom_two_series(tmp_path / "study" / "mixed")
    assert len(list(folder.glob("*.dcm"))) == 12
    expected = (
        r"study mixed: .*neither FLAIR nor T1ce file.*DICOM series taken for no modality: "
        r"IM0000.dcm \('', series 1.2.826.0.1.3680043.2.1125.1\), "
        r"IM0001.dcm \('', series 1.2.826.0.1.3680043.2.1125.2\)"
    )
    with pytest.raises(DatasetError, match=expected):
        find_studies(tmp_path / "study")
    with pytest.raises(InputError, match=expected):
        StudyBatch(tmp_path / "study", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_verification_runs_once_per_set_of_files(good_case, tmp_path):
    data = tmp_path / "data"
    for i in (1, 2):
        copy_case(good_case, data, f"Brats17_GOOD_{i}")
    entries = build_datalist(data, val_fraction=0, test_fraction=0, verify=False)["training"]
    entries = [{**e, "image": [str(data / p) for p in e["image"]], "label": str(data / e["label"])} for e in entries]
    cache = tmp_path / "cache"
    assert verify_entries(entries, data, "brats", cache_dir=cache) is True
    assert verify_entries(entries, data, "brats", cache_dir=cache) is False  # the cached verdict stands
    flair = Path(entries[0]["image"][0])
    flair.write_bytes(flair.read_bytes()[:300])  # a changed file (size and time) is checked again
    with pytest.raises(InputError, match="truncated"):
        verify_entries(entries, data, "brats", cache_dir=cache)
    os.environ["RANK"] = "1"  # under DDP only rank 0 reads the files
    try:
        assert verify_entries(entries, data, "brats", cache_dir=cache) is False
    finally:
        del os.environ["RANK"]


def test_check_study_accepts_a_good_case_and_reads_nothing_without_read(good_case, tmp_path):
    entry = {
        "image": [str(file_of(good_case, m)) for m in ("flair", "t1", "t1ce", "t2")],
        "label": str(file_of(good_case, "seg")),
        "case": good_case.name,
    }
    assert check_study(entry, good_case.parent, "brats", pixdim=(1.0, 1.0, 1.0)) == []
    copy = copy_case(good_case, tmp_path, "Brats17_COPY_1")
    nib.save(nib.Nifti1Image(np.full((64, 64, 48), np.nan, np.float32), np.eye(4)), file_of(copy, "t1"))
    shutil.copy(file_of(copy, "flair"), file_of(copy, "t2"))
    entry = {"image": [str(file_of(copy, m)) for m in ("flair", "t1", "t1ce", "t2")], "case": copy.name}
    assert check_study(entry, tmp_path, read=False) == []  # headers alone are fine
    assert any("NaN" in p for p in check_study(entry, tmp_path))
