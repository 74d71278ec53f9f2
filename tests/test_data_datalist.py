"""Dataset discovery, datalists and bad input, on tiny hand-made NIfTI trees of every layout."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from refineformer3d.data import (
    CHANNELS,
    DatasetError,
    build_datalist,
    detect_layout,
    find_studies,
    load_datalist,
    write_datalist,
)
from refineformer3d.data.datalist import main

REPO = Path(__file__).resolve().parents[1]
SIZE = (8, 8, 8)
# Each modality gets its own constant so tests can tell the channels apart: FLAIR 10, T1 20, T1ce 30, T2 40.
LEVEL = {"flair": 10, "t1": 20, "t1ce": 30, "t2": 40}
SUFFIXES_2023 = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}


def save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def tumour_label(values=(1, 2, 4)) -> np.ndarray:
    label = np.zeros(SIZE, dtype=np.uint8)
    label[2:6, 2:6, 2:6] = values[1]
    label[3:5, 3:5, 3:5] = values[0]
    label[4, 4, 4] = values[2]
    return label


def brats_case(folder: Path, separator: str = "_", label: np.ndarray | None = None, skip: str | None = None) -> Path:
    """Writes ``folder/<case><separator><modality>.nii.gz`` for the four modalities and, if given, the label."""
    case = folder.name
    for modality, level in LEVEL.items():
        if modality != skip:
            suffix = SUFFIXES_2023[modality] if separator == "-" else modality
            save(folder / f"{case}{separator}{suffix}.nii.gz", np.full(SIZE, level, dtype=np.int16))
    if label is not None:
        save(folder / f"{case}{separator}seg.nii.gz", label)
    return folder


def make_brats2017(root: Path, hgg: int = 6, lgg: int = 2, validation: int = 2) -> Path:
    for i in range(hgg):
        brats_case(root / "Brats17TrainingData" / "HGG" / f"Brats17_TCIA_{i:03d}_1", label=tumour_label())
    for i in range(lgg):
        brats_case(root / "Brats17TrainingData" / "LGG" / f"Brats17_2013_{i}_1", label=tumour_label())
    for i in range(validation):
        brats_case(root / "Brats17ValidationData" / f"Brats17_CBICA_A{i:02d}_1")
    return root


def make_brats2018(root: Path) -> Path:
    base = root / "MICCAI_BraTS_2018_Data_Training"
    for i in range(4):
        brats_case(base / "HGG" / f"Brats18_CBICA_A{i:02d}_1", label=tumour_label())
    brats_case(base / "LGG" / "Brats18_TCIA10_100_1", label=tumour_label())
    brats_case(root / "MICCAI_BraTS_2018_Data_Validation" / "Brats18_CBICA_ZZZ_1")
    return root


def make_brats2020(root: Path) -> Path:
    base = root / "MICCAI_BraTS2020_TrainingData"
    names = [f"BraTS20_Training_{i:03d}" for i in range(1, 9)]
    for name in names:
        brats_case(base / name, label=tumour_label())
    with open(base / "name_mapping.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Grade", "BraTS_2017_subject_ID", "BraTS_2020_subject_ID"])
        writer.writerows([("LGG" if i < 2 else "HGG", "NA", n) for i, n in enumerate(names)])
    brats_case(root / "MICCAI_BraTS2020_ValidationData" / "BraTS20_Validation_001")
    return root


def make_brats2021(root: Path, cases: int = 5) -> Path:
    for i in range(cases):
        brats_case(root / f"BraTS2021_{i:05d}", label=tumour_label())
    return root


def make_brats2023(root: Path) -> Path:
    base = root / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
    for i in range(4):
        brats_case(base / f"BraTS-GLI-{i:05d}-000", separator="-", label=tumour_label((1, 2, 3)))
    brats_case(root / "ASNR-MICCAI-BraTS2023-GLI-Challenge-ValidationData" / "BraTS-GLI-09999-000", separator="-")
    return root


def make_msd(root: Path, training: int = 4, test: int = 2) -> Path:
    task = root / "Task01_BrainTumour"
    image = np.stack([np.full(SIZE, LEVEL[c], dtype=np.float32) for c in CHANNELS], axis=-1)
    for i in range(1, training + 1):
        save(task / "imagesTr" / f"BRATS_{i:03d}.nii.gz", image)
        save(task / "labelsTr" / f"BRATS_{i:03d}.nii.gz", tumour_label((2, 1, 3)))  # MSD: 2 non-enh, 1 edema
        (task / "imagesTr" / f"._BRATS_{i:03d}.nii.gz").write_bytes(b"macOS resource fork")
    for i in range(training + 1, training + test + 1):
        save(task / "imagesTs" / f"BRATS_{i:03d}.nii.gz", image)
    description = {
        "name": "BRATS",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "training": [
            {"image": f"./imagesTr/BRATS_{i:03d}.nii.gz", "label": f"./labelsTr/BRATS_{i:03d}.nii.gz"}
            for i in range(1, training + 1)
        ],
        "test": [f"./imagesTs/BRATS_{i:03d}.nii.gz" for i in range(training + 1, training + test + 1)],
    }
    (task / "dataset.json").write_text(json.dumps(description))
    return task


LAYOUT_MAKERS = {
    "brats2017": (make_brats2017, "brats", ("flair", "t1", "t1ce", "t2")),
    "brats2018-2020": (make_brats2018, "brats", ("flair", "t1", "t1ce", "t2")),
    "brats2021": (make_brats2021, "brats", ("flair", "t1", "t1ce", "t2")),
    "brats2023": (make_brats2023, "brats2023", ("t2f", "t1n", "t1c", "t2w")),
}


def all_entries(datalist: dict) -> list[dict]:
    return [e for split in ("training", "validation", "testing") for e in datalist[split]]


@pytest.mark.parametrize("layout", sorted(LAYOUT_MAKERS))
def test_brats_layouts(tmp_path, layout):
    make, convention, suffixes = LAYOUT_MAKERS[layout]
    root = make(tmp_path)
    assert detect_layout(root) == layout
    datalist = build_datalist(root, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert datalist["layout"] == layout
    assert datalist["label_convention"] == convention
    assert datalist["channels"] == ["flair", "t1", "t1ce", "t2"]
    for entry in all_entries(datalist):
        assert len(entry["image"]) == 4
        # Same channel order in every layout, paths relative to the dataset folder.
        for path, suffix in zip(entry["image"], suffixes, strict=True):
            assert path.endswith(f"{entry['case']}{'-' if layout == 'brats2023' else '_'}{suffix}.nii.gz")
            assert (root / path).is_file() and not Path(path).is_absolute()
        if "label" in entry:
            assert (root / entry["label"]).is_file()


def test_brats2017_split_merges_grades_and_keeps_validation_data_for_testing(tmp_path):
    root = make_brats2017(tmp_path, hgg=12, lgg=4, validation=3)
    datalist = build_datalist(root, val_fraction=0.25, test_fraction=0.25, seed=0)
    cases = {s: [e["case"] for e in datalist[s]] for s in ("training", "validation", "testing")}
    everything = sum(cases.values(), [])
    assert len(everything) == len(set(everything)) == 19  # no case in two splits, none lost
    # Labelled: 16 cases -> 4 validation and 4 testing, each with HGG:LGG kept at 3:1.
    for split in ("validation", "testing"):
        labelled = [e for e in datalist[split] if "label" in e]
        assert len(labelled) == 4
        assert sum("2013" in e["case"] for e in labelled) == 1  # the LGG cases are Brats17_2013_*
    unlabelled = [e for e in datalist["testing"] if "label" not in e]
    assert sorted(e["case"] for e in unlabelled) == [f"Brats17_CBICA_A{i:02d}_1" for i in range(3)]
    assert all(e["image"][0].startswith("Brats17ValidationData/") for e in unlabelled)


def test_split_is_deterministic_for_a_seed(tmp_path):
    root = make_brats2021(tmp_path, cases=20)
    first = build_datalist(root, seed=3, verify=False)
    assert build_datalist(root, seed=3, verify=False) == first
    assert build_datalist(root, seed=4, verify=False)["validation"] != first["validation"]


def test_brats2020_grades_from_name_mapping(tmp_path):
    root = make_brats2020(tmp_path)
    assert detect_layout(root) == "brats2018-2020"
    datalist = build_datalist(root, val_fraction=0.5, test_fraction=0.0, seed=1)
    # 2 LGG of 8 labelled: half of each grade goes to validation.
    lgg = {"BraTS20_Training_001", "BraTS20_Training_002"}
    assert sum(e["case"] in lgg for e in datalist["validation"]) == 1
    assert [e["case"] for e in datalist["testing"]] == ["BraTS20_Validation_001"]


def test_too_few_cases_for_the_fractions(tmp_path):
    with pytest.raises(ValueError, match="too few"):
        build_datalist(make_brats2021(tmp_path, cases=2))


@pytest.mark.parametrize("fractions", [(1.0, 0.0), (-0.1, 0.1), (0.6, 0.5)])
def test_bad_fractions(tmp_path, fractions):
    with pytest.raises(ValueError, match="val_fraction"):
        build_datalist(make_brats2021(tmp_path), *fractions)


def test_msd_layout_4d_images_and_label_meaning(tmp_path):
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    from refineformer3d.data import ConvertBratsLabelsd

    root = make_msd(tmp_path)
    assert detect_layout(root) == detect_layout(tmp_path) == "msd"
    datalist = load_datalist(root, val_fraction=0.25, test_fraction=0.25, seed=0)
    assert datalist["label_convention"] == "msd"
    assert [len(datalist[s]) for s in ("training", "validation", "testing")] == [2, 1, 1 + 2]
    assert sum("label" not in e for e in datalist["testing"]) == 2  # imagesTs
    entry = datalist["training"][0]
    assert isinstance(entry["image"], str) and "/imagesTr/" in entry["image"]
    load = Compose(
        [
            LoadImaged(["image", "label"]),
            EnsureChannelFirstd(["image", "label"]),
            ConvertBratsLabelsd("label", convention=datalist["label_convention"]),
        ]
    )
    data = load(entry)
    # The 4-D file's last axis becomes channels, already FLAIR, T1, T1ce, T2.
    assert data["image"].shape == (4, *SIZE)
    assert data["image"][:, 0, 0, 0].tolist() == [LEVEL[c] for c in CHANNELS]
    # MSD 1 is edema (class 2), 2 non-enhancing and 3 enhancing are tumour core (class 1).
    expected = ConvertBratsLabelsd("label")({"label": tumour_label()[None]})["label"]
    np.testing.assert_array_equal(np.asarray(data["label"]), expected)


def test_msd_dataset_json_is_a_datalist(tmp_path):
    task = make_msd(tmp_path)
    datalist = load_datalist(task / "dataset.json")
    assert datalist["label_convention"] == "msd"
    assert len(datalist["training"]) == 4 and datalist["validation"] == []
    assert [Path(e["image"]).name for e in datalist["testing"]] == ["BRATS_005.nii.gz", "BRATS_006.nii.gz"]
    assert all(Path(e["image"]).is_absolute() and Path(e["image"]).is_file() for e in all_entries(datalist))


def test_write_and_load_round_trip(tmp_path):
    root = make_brats2017(tmp_path / "data")
    datalist = build_datalist(root, seed=0)
    (tmp_path / "lists").mkdir()
    output = write_datalist(datalist, tmp_path / "lists" / "datalist.json")
    written = json.loads(output.read_text())
    assert written["dataset_dir"] == "../data"  # relative: the JSON and the data can move together
    assert written["training"] == datalist["training"]
    loaded = load_datalist(output)
    assert loaded["label_convention"] == "brats" and loaded["layout"] == "brats2017"
    for entry in all_entries(loaded):
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in entry["image"])
    assert loaded["training"] == load_datalist(root, "training", seed=0)
    assert [e["case"] for e in loaded["validation"]] == [e["case"] for e in datalist["validation"]]


def test_load_datalist_without_dataset_dir_resolves_against_its_folder(tmp_path):
    root = make_brats2021(tmp_path)
    datalist = build_datalist(root, val_fraction=0.2, test_fraction=0.0)
    del datalist["dataset_dir"]
    (root / "list.json").write_text(json.dumps(datalist))
    training = load_datalist(root / "list.json", split="training")
    assert training[0]["image"][0] == str(root / training[0]["case"] / f"{training[0]['case']}_flair.nii.gz")
    with pytest.raises(ValueError, match="unknown split"):
        load_datalist(root / "list.json", split="train")


def test_load_datalist_reports_missing_files(tmp_path):
    root = make_brats2021(tmp_path)
    output = write_datalist(build_datalist(root, val_fraction=0.2, test_fraction=0.0), tmp_path / "list.json")
    case = json.loads(output.read_text())["training"][0]["case"]
    (root / case / f"{case}_t2.nii.gz").unlink()
    with pytest.raises(ValueError, match=f"missing file .*{case}_t2.nii.gz"):
        load_datalist(output)


def test_find_studies(tmp_path):
    root = make_brats2017(tmp_path / "brats", hgg=2, lgg=1, validation=1)
    studies = find_studies(root)
    assert [s["case"] for s in studies] == sorted(
        ["Brats17_TCIA_000_1", "Brats17_TCIA_001_1", "Brats17_2013_0_1", "Brats17_CBICA_A00_1"]
    )
    assert all(len(s["image"]) == 4 and "label" not in s for s in studies)
    task = make_msd(tmp_path / "msd")
    single = find_studies(task / "imagesTs" / "BRATS_005.nii.gz")
    assert single == [{"image": str(task / "imagesTs" / "BRATS_005.nii.gz"), "case": "BRATS_005"}]
    folder = tmp_path / "studies"
    for name in ("b", "a"):
        save(folder / f"{name}.nii.gz", np.zeros((*SIZE, 4), dtype=np.float32))
    assert [s["case"] for s in find_studies(folder)] == ["a", "b"]
    output = write_datalist(build_datalist(root, val_fraction=0.0, test_fraction=0.0), tmp_path / "list.json")
    assert [s["case"] for s in find_studies(output)] == ["Brats17_CBICA_A00_1"]  # the testing list


def test_find_studies_rejects_what_it_cannot_use(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        find_studies(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no NIfTI files"):
        find_studies(tmp_path / "empty")
    three_d = save(tmp_path / "t1.nii.gz", np.zeros(SIZE, dtype=np.int16))
    with pytest.raises(ValueError, match="4-D NIfTI with 4 channels"):
        find_studies(three_d)


# Bad input: one clear error naming the case and file.


def first_case(root: Path) -> Path:
    return root / "Brats17TrainingData" / "HGG" / "Brats17_TCIA_000_1"


def corrupt_missing_modality(root):
    (first_case(root) / "Brats17_TCIA_000_1_t1ce.nii.gz").unlink()
    return "Brats17_TCIA_000_1.*t1ce.*Brats17_TCIA_000_1_t1ce.nii.gz"


def corrupt_missing_label(root):
    (first_case(root) / "Brats17_TCIA_000_1_seg.nii.gz").unlink()
    return "Brats17_TCIA_000_1: missing label file .*Brats17_TCIA_000_1_seg.nii.gz"


def corrupt_shape(root):
    save(first_case(root) / "Brats17_TCIA_000_1_t2.nii.gz", np.ones((8, 8, 7), dtype=np.int16))
    return r"Brats17_TCIA_000_1.*_t2.nii.gz: shape \(8, 8, 7\) differs"


def corrupt_affine(root):
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    save(first_case(root) / "Brats17_TCIA_000_1_t1.nii.gz", np.ones(SIZE, dtype=np.int16), shifted)
    return "Brats17_TCIA_000_1.*_t1.nii.gz: affine differs"


def corrupt_label_value(root):
    save(first_case(root) / "Brats17_TCIA_000_1_seg.nii.gz", tumour_label((1, 2, 3)))
    return r"Brats17_TCIA_000_1.*_seg.nii.gz: label values \[3\] outside the brats convention"


def corrupt_nan(root):
    image = np.ones(SIZE, dtype=np.float32)
    image[1, 2, 3] = np.nan
    save(first_case(root) / "Brats17_TCIA_000_1_flair.nii.gz", image)
    return "Brats17_TCIA_000_1.*_flair.nii.gz: contains NaN"


def corrupt_all_zero(root):
    save(first_case(root) / "Brats17_TCIA_000_1_t1.nii.gz", np.zeros(SIZE, dtype=np.int16))
    return "Brats17_TCIA_000_1.*_t1.nii.gz: image is all zero"


def corrupt_truncated(root):
    path = first_case(root) / "Brats17_TCIA_000_1_flair.nii.gz"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    return "Brats17_TCIA_000_1: unreadable or truncated file .*_flair.nii.gz"


def corrupt_not_gzip(root):
    (first_case(root) / "Brats17_TCIA_000_1_t2.nii.gz").write_bytes(b"not a nifti file")
    return "Brats17_TCIA_000_1: unreadable or truncated file .*_t2.nii.gz"


CORRUPTIONS = [
    corrupt_missing_modality,
    corrupt_missing_label,
    corrupt_shape,
    corrupt_affine,
    corrupt_label_value,
    corrupt_nan,
    corrupt_all_zero,
    corrupt_truncated,
    corrupt_not_gzip,
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.removeprefix("corrupt_"))
def test_bad_case_gives_one_clear_error_and_the_cli_writes_nothing(tmp_path, capsys, corrupt):
    root = make_brats2017(tmp_path / "data", hgg=3, lgg=1, validation=0)
    expected = corrupt(root)
    with pytest.raises(DatasetError, match=expected):
        build_datalist(root)
    output = tmp_path / "datalist.json"
    assert main(["--dataset_dir", str(root), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not output.exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "data"]  # no temporary file left either


def test_all_problems_in_one_error(tmp_path):
    root = make_brats2017(tmp_path, hgg=3, lgg=1, validation=0)
    corrupt_nan(root)
    lgg = root / "Brats17TrainingData" / "LGG" / "Brats17_2013_0_1"
    save(lgg / "Brats17_2013_0_1_seg.nii.gz", np.full(SIZE, 7, dtype=np.uint8))
    with pytest.raises(DatasetError, match="2 problems: .*Brats17_2013_0_1.*Brats17_TCIA_000_1") as caught:
        build_datalist(root)
    assert len(caught.value.problems) == 2


def test_missing_files_are_found_without_verify(tmp_path):
    root = make_brats2017(tmp_path, hgg=3, lgg=1, validation=0)
    corrupt_missing_modality(root)
    with pytest.raises(DatasetError, match="missing t1ce file"):
        build_datalist(root, verify=False)


def test_empty_unknown_and_missing_dataset_folders(tmp_path):
    with pytest.raises(ValueError, match="no NIfTI files in .*expected BraTS case folders"):
        detect_layout(tmp_path)
    save(tmp_path / "scans" / "patient1.nii.gz", np.ones(SIZE, dtype=np.int16))
    with pytest.raises(ValueError, match="unknown layout in .*scans/patient1.nii.gz"):
        detect_layout(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        build_datalist(tmp_path / "missing")


def test_mixed_layouts(tmp_path):
    make_brats2021(tmp_path / "a", cases=2)
    make_brats2023(tmp_path / "b")
    with pytest.raises(ValueError, match="mixed layouts"):
        detect_layout(tmp_path)


def test_cli(tmp_path):
    root = make_brats2017(tmp_path / "data")
    output = tmp_path / "datalist.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "refineformer3d.data.datalist",
            "--dataset_dir",
            str(root),
            "--output",
            str(output),
            "--val_fraction",
            "0.25",
            "--test_fraction",
            "0.125",
            "--seed",
            "0",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    written = json.loads(output.read_text())
    assert [len(written[s]) for s in ("training", "validation", "testing")] == [5, 2, 1 + 2]
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "refineformer3d.data.datalist",
            "--dataset_dir",
            str(empty),
            "--output",
            str(tmp_path / "none.json"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: no NIfTI files") and result.stderr.count("\n") == 1
    assert not (tmp_path / "none.json").exists()


def test_truncated_gzip_is_really_truncated(tmp_path):
    # Guards corrupt_truncated: the half file must fail in gzip, not pass by accident.
    root = make_brats2017(tmp_path, hgg=1, lgg=0, validation=0)
    corrupt_truncated(root)
    with pytest.raises(EOFError), gzip.open(first_case(root) / "Brats17_TCIA_000_1_flair.nii.gz") as handle:
        handle.read()


def test_entries_carry_their_convention_for_configs_that_swap_the_entries(tmp_path):
    from refineformer3d.data import label_convention_of

    datalist = load_datalist(make_msd(tmp_path), val_fraction=0.25, test_fraction=0.25, seed=0)
    assert {e["convention"] for e in datalist["training"] + datalist["validation"]} == {"msd"}
    assert all("convention" not in e for e in datalist["testing"] if "label" not in e)
    assert label_convention_of(datalist["training"]) == "msd"
    # MONAI Label hands over bare {"image", "label"} entries: the BraTS convention, which also reads 0/1/2 labels.
    assert label_convention_of([{"image": "a", "label": "b"}]) == "brats"
    assert label_convention_of([], default="brats2023") == "brats2023"
    with pytest.raises(ValueError, match="mix label conventions"):
        label_convention_of([{"convention": "msd"}, {"convention": "brats"}])
    with pytest.raises(ValueError, match="unknown label_convention"):
        label_convention_of([{"convention": "nnunet"}])


def make_flat_brats2018(root: Path, cases: int = 7) -> Path:
    """A BraTS 2018 training folder as redistributed (koriavinash1/BioExp's sample_vol/brats): the case folders
    directly under the root, one extra file in each that is not a sequence."""
    for i in range(cases):
        folder = brats_case(root / f"Brats18_CBICA_A{i:02d}_1", label=tumour_label())
        save(folder / "mask.nii.gz", np.ones((8, 8, 8), np.uint8))
    return root


def test_folds_test_every_case_once_and_select_on_other_folds(tmp_path):
    root = make_flat_brats2018(tmp_path, cases=7)
    folds = [build_datalist(root, val_fraction=0.15, seed=2, num_folds=3, fold=f) for f in range(3)]
    tested = [e["case"] for d in folds for e in d["testing"]]
    assert sorted(tested) == sorted(f"Brats18_CBICA_A{i:02d}_1" for i in range(7))  # each case tested once
    assert sorted(len(d["testing"]) for d in folds) == [2, 2, 3]
    for d in folds:
        splits = [{e["case"] for e in d[s]} for s in ("training", "validation", "testing")]
        assert sum(len(s) for s in splits) == 7 and not (splits[0] & splits[1] or splits[1] & splits[2])
        assert len(splits[1]) == 1  # 0.15 of 7 labelled cases
        assert all(len(e["image"]) == 4 and not e["image"][0].endswith("mask.nii.gz") for e in d["training"])
        assert (d["num_folds"], d["seed"]) == (3, 2)
    assert build_datalist(root, val_fraction=0.15, seed=2, num_folds=3, fold=1) == folds[1]
    other_seed = [build_datalist(root, val_fraction=0.15, seed=5, num_folds=3, fold=f)["testing"] for f in range(3)]
    assert other_seed != [d["testing"] for d in folds]


@pytest.mark.parametrize("num_folds, fold", [(1, 0), (3, 3), (3, -1), (-2, 0)])
def test_bad_folds(tmp_path, num_folds, fold):
    with pytest.raises(ValueError, match="num_folds"):
        build_datalist(make_flat_brats2018(tmp_path, cases=4), verify=False, num_folds=num_folds, fold=fold)


def test_more_folds_than_cases(tmp_path):
    with pytest.raises(ValueError, match="too few for 5 folds"):
        build_datalist(make_flat_brats2018(tmp_path, cases=4), verify=False, num_folds=5, fold=0)


def test_cli_writes_a_fold(tmp_path):
    root = make_flat_brats2018(tmp_path / "data", cases=6)
    output = tmp_path / "fold1.json"
    assert main(["--dataset_dir", str(root), "--output", str(output), "--num_folds", "3", "--fold", "1"]) == 0
    written = json.loads(output.read_text())
    assert (written["num_folds"], written["fold"], len(written["testing"])) == (3, 1, 2)
    assert load_datalist(output, "testing") == load_datalist(root, "testing", num_folds=3, fold=1)
