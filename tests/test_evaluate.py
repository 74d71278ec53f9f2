"""refineformer3d.evaluate against the BraTS challenge's own package, run as the challenge runs it."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from refineformer3d.evaluate import HD95_CAP_MM, evaluate, labelled_split, main, official_label_map
from refineformer3d.labels import CONVENTIONS, REGIONS, SCHEMES, region_labels

pytest.importorskip("brats_evaluation")

# BraTS's grid: 1 mm voxels, where the package's numbers are used unchanged (see refineformer3d.evaluate on spacing).
SPACING = (1.0, 1.0, 1.0)
ANISOTROPIC = (1.0, 1.25, 2.5)
SHAPE = (48, 40, 24)
# What the tests read from the package's own parser (brats-parse-metrics), by our column stems.
COMPARED = ("global_dsc", "global_hd95", "lesionwise_dsc_mean", "lesionwise_hd95_mean")
DETECTION = ("all_instance_prec", "all_instance_rec", "all_instance_f1")


def _ball(centre, radius) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) * sp for s, sp in zip(SHAPE, SPACING)], indexing="ij"), -1)
    return np.linalg.norm(grid - np.asarray(centre) * np.asarray(SPACING), axis=-1) <= radius


def _tumour(centre, radii, official: dict[str, int]) -> np.ndarray:
    """A label map (official parts -> values in ``official``): edema ball around a core ball around an ET ball."""
    out = np.zeros(SHAPE, np.uint8)
    for part, radius in zip(("edema", "necrosis", "enhancing"), radii):
        if radius:
            out[_ball(centre, radius)] = official[part]
    return out


def _cases(parts: dict[str, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reference and prediction label maps in the convention ``parts``: misses, islands, empty ET on either side."""
    cases = {}
    ref = _tumour((20, 20, 12), (12, 7, 4), parts)
    pred = _tumour((22, 19, 12), (11, 7, 3), parts)
    pred[_ball((42, 4, 3), 2.0)] = parts["edema"]  # a spurious island
    cases["00001-000"] = (ref, pred)
    ref = _tumour((24, 18, 10), (10, 6, 0), parts)  # no enhancing tumour in either: the BraTS empty rule
    pred = _tumour((24, 18, 11), (10, 5, 0), parts)
    cases["00002-000"] = (ref, pred)
    ref = _tumour((20, 20, 12), (12, 8, 5), parts)  # enhancing tumour missed entirely: Dice 0, HD95 capped
    pred = _tumour((20, 21, 12), (12, 8, 0), parts)
    pred[_ball((6, 34, 18), 3.0)] = parts["necrosis"]
    cases["00003-000"] = (ref, pred)
    return cases


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*SPACING, 1.0])), path)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """The package on BraTS 2023-named files, as ``brats-evaluate`` runs it, then its parser (``brats-parse-metrics``).

    ``brats-evaluate`` itself cannot write its summary here (0.0.10: ``json.dump`` of panoptica's numpy integers
    raises TypeError), so the test does what its ``main`` does, per file, and dumps numpy numbers as Python numbers.
    """
    from brats_evaluation import config_path, evaluate_single_exam, parse_seg_results
    from panoptica import Panoptica_Evaluator

    root = tmp_path_factory.mktemp("official")
    evaluator = Panoptica_Evaluator.load_from_config(str(config_path("gli")))
    metrics = []
    for case, (ref, pred) in _cases(CONVENTIONS["brats2023"]).items():
        name = f"BraTS-GLI-{case}.nii.gz"
        _save(ref, root / "ref" / name)
        _save(pred, root / "pred" / name)
        metrics.append(evaluate_single_exam(str(root / "pred" / name), str(root / "ref" / name), name, evaluator))
    summary = root / "summary.json"
    summary.write_text(json.dumps({"metrics": metrics, "missings": []}, default=lambda x: x.item()))
    parse_seg_results(str(summary), str(root / "parsed.csv"))
    with open(root / "parsed.csv") as handle:
        rows = {r["subject_id"]: r for r in csv.DictReader(handle)}
    return {f"BraTS-GLI-{case}": rows[f"BraTS-GLI-{case}.nii.gz"] for case in _cases(CONVENTIONS["brats2023"])}


@pytest.mark.parametrize("convention", ["brats", "msd"])
def test_numbers_equal_the_official_package(official, tmp_path, convention):
    """Our tables from files in another convention equal the package's on BraTS 2023 files (regions scheme)."""
    for case, (ref, pred) in _cases(CONVENTIONS[convention]).items():
        _save(ref, tmp_path / "ref" / f"BraTS-GLI-{case}_seg.nii.gz")
        _save(pred, tmp_path / "pred" / f"BraTS-GLI-{case}_seg.nii.gz")
    document = evaluate(
        tmp_path / "pred", tmp_path / "ref", tmp_path / "out", "regions", pred_convention=convention,
        ref_convention=convention,
    )  # fmt: skip
    rows = {r["case"]: r for r in document["cases"]}
    assert set(rows) == set(official)
    compared = 0
    for case, theirs in official.items():
        for region in ("wt", "tc", "et"):
            for stem in COMPARED + DETECTION:
                value = float(theirs[f"{stem}_{region}"] or "nan")
                ours = rows[case][f"{stem}_{region}"]
                if math.isnan(value) or math.isinf(value):
                    continue  # the empty-region rule and the lesion-wise cap: checked below
                tolerance = 0.01 if "hd95" in stem else 1e-3
                assert ours == pytest.approx(value, abs=tolerance), (case, region, stem)
                compared += 1
    assert compared >= 45
    # Dice and lesion detection move as the cases were built: an island lowers WT precision, a missed ET is 0 / 373.
    first, empty, missed = rows["BraTS-GLI-00001-000"], rows["BraTS-GLI-00002-000"], rows["BraTS-GLI-00003-000"]
    assert first["all_instance_fp_wt"] == 1 and first["all_instance_prec_wt"] == pytest.approx(0.5)
    assert 0.5 < first["global_dsc_wt"] < 1.0
    assert empty["global_dsc_et"] == 1.0 and empty["global_hd95_et"] == 0.0  # the package says NaN
    assert math.isnan(float(official["BraTS-GLI-00002-000"]["global_dsc_et"] or "nan"))
    assert missed["global_dsc_et"] == 0.0 and missed["global_hd95_et"] == HD95_CAP_MM
    assert missed["lesionwise_hd95_mean_et"] == HD95_CAP_MM
    for row in rows.values():
        assert all(math.isfinite(row[f"global_hd95_{r}"]) for r in ("wt", "tc", "et"))


def test_hd95_is_in_millimetres(tmp_path):
    """A box moved two voxels along the 2.5 mm axis: HD95 5 mm (volume- and lesion-wise), not 2; 2 mm at 1 mm."""
    ref = np.zeros(SHAPE, np.uint8)
    ref[10:30, 10:30, 8:12] = 2
    pred = np.roll(ref, 2, axis=2)
    results = {}
    for spacing in (ANISOTROPIC, (1.0, 1.0, 1.0)):
        folder = tmp_path / str(spacing[2])
        for name, array in (("ref", ref), ("pred", pred)):
            (folder / name).mkdir(parents=True)
            nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), folder / name / "case_seg.nii.gz")
        results[spacing[2]] = evaluate(folder / "pred", folder / "ref", folder / "out", "regions")["cases"][0]
    for stem in ("global_hd95", "lesionwise_hd95_mean"):
        assert results[2.5][f"{stem}_wt"] == pytest.approx(5.0, abs=0.01)
        assert results[1.0][f"{stem}_wt"] == pytest.approx(2.0, abs=0.01)


def test_classes_scheme_reports_enhancing_tumour_as_not_available(tmp_path):
    parts = CONVENTIONS["brats"]
    ref, _ = _cases(parts)["00001-000"]
    classes = np.select([np.isin(ref, [parts["necrosis"], parts["enhancing"]]), ref == parts["edema"]], [1, 2], 0)
    _save(ref, tmp_path / "ref" / "A_seg.nii.gz")
    _save(classes.astype(np.uint8), tmp_path / "pred" / "A_seg.nii.gz")
    document = evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", "classes")
    row = document["cases"][0]
    assert row["global_dsc_wt"] == pytest.approx(1.0) and row["global_dsc_tc"] == pytest.approx(1.0)
    assert all(row[f"{stem}_et"] is None for stem in COMPARED + DETECTION)
    assert document["regions"]["et"].startswith("n/a")
    with open(tmp_path / "out" / "brats_cases.csv") as handle:
        (written,) = list(csv.DictReader(handle))
    assert written["global_dsc_et"] == "n/a" and written["global_dsc_wt"] == "1"
    saved = json.loads((tmp_path / "out" / "brats.json").read_text())
    assert saved["cases"][0]["global_dsc_et"] is None and saved["summary"]["mean"]["global_dsc_et"] is None


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_regions_are_nested_and_non_empty(scheme, convention):
    """Mapped to the package's labels, every region a scheme can produce is non-empty, and ET within TC within WT."""
    from refineformer3d.data import BratsLabelsFromPredictiond

    torch.manual_seed(0)
    written = BratsLabelsFromPredictiond("pred", scheme, convention)({"pred": torch.rand(3, 12, 12, 12)})["pred"]
    mapping = official_label_map(scheme, convention)
    official = np.vectorize(mapping.get)(written.numpy()[0])
    package = CONVENTIONS["brats2023"]
    masks = {r: np.isin(official, [package[p] for p in parts]) for r, parts in REGIONS.items()}
    available = region_labels(scheme, convention, abbreviations=True)
    assert set(available) == ({"TC", "WT", "ET"} if scheme == "regions" else {"TC", "WT"})
    for region in available:
        assert masks[region].any(), region
    assert not (masks["ET"] & ~masks["TC"]).any() and not (masks["TC"] & ~masks["WT"]).any()


def test_model_selection_split_only_when_asked(tmp_path, tiny_brats, capsys):
    from refineformer3d.data import load_datalist

    datalist = load_datalist(tiny_brats)
    with pytest.raises(ValueError, match="validation studies chose the checkpoint"):
        labelled_split({**datalist, "testing": [e for e in datalist["testing"] if "label" not in e]}, "testing")
    pred = tmp_path / "pred"
    parts = CONVENTIONS["brats"]
    for entry in datalist["validation"]:  # perfect classes-scheme segmentations of the validation studies
        label = nib.load(entry["label"])
        data = np.asanyarray(label.dataobj)
        classes = np.select([np.isin(data, [parts["necrosis"], parts["enhancing"]]), data == parts["edema"]], [1, 2], 0)
        _save_like(classes, label, pred / Path(entry["label"]).name)
    # Scoring the default (testing) split finds no segmentation for its studies: one line, status 2, nothing written.
    assert main(["--pred", str(pred), "--ref", str(tiny_brats), "--output", str(tmp_path / "test")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no segmentation" in err and "case Brats17_" in err
    assert not (tmp_path / "test").exists()
    out = tmp_path / "val"
    assert main(["--pred", str(pred), "--ref", str(tiny_brats), "--output", str(out), "--split", "validation"]) == 0
    document = json.loads((out / "brats_validation.json").read_text())
    assert document["model_selection"] is True and document["split"] == "validation"
    assert len(document["cases"]) == len(datalist["validation"])
    assert document["summary"]["mean"]["global_dsc_wt"] == pytest.approx(1.0)
    assert sorted(p.name for p in out.iterdir()) == [
        "brats_validation.json",
        "brats_validation_cases.csv",
        "brats_validation_summary.csv",
    ]


def _save_like(array: np.ndarray, like: nib.Nifti1Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.uint8), like.affine), path)


def test_bad_label_value_is_one_line_naming_case_and_file(tmp_path, capsys):
    ref, pred = _cases(CONVENTIONS["brats"])["00001-000"]
    _save(ref, tmp_path / "ref" / "A_seg.nii.gz")
    _save(ref, tmp_path / "ref" / "B_seg.nii.gz")
    _save(pred, tmp_path / "pred" / "A_seg.nii.gz")
    pred = pred.copy()
    pred[0, 0, 0] = 7
    _save(pred, tmp_path / "pred" / "B_seg.nii.gz")
    out = tmp_path / "out"
    args = [
        "--pred",
        str(tmp_path / "pred"),
        "--ref",
        str(tmp_path / "ref"),
        "--output",
        str(out),
        "--scheme",
        "regions",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "case B" in err and str(tmp_path / "pred" / "B_seg.nii.gz") in err and "[7]" in err
    assert not out.exists(), "nothing half-written"


def test_training_metrics_follow_the_package(tmp_path):
    """train.json's Dice (DiceMetric, ignore_empty=False) and HD95 (BratsHausdorffDistanceMetric) against the package.

    Dice equals it, the empty-region rules included. HD95 takes MONAI's definition (the larger directed 95th
    percentile), so it is at least the package's pooled one: close to it without spurious islands, and far above it
    with one (an island's distances fill one direction's top 5 % but are diluted in the pooled set).
    """
    from monai.metrics import DiceMetric

    from refineformer3d.metrics import BratsHausdorffDistanceMetric

    parts = CONVENTIONS["brats2023"]
    for case, (ref, pred) in _cases(parts).items():
        _save(ref, tmp_path / "ref" / f"{case}_seg.nii.gz")
        _save(pred, tmp_path / "pred" / f"{case}_seg.nii.gz")
    document = evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", "regions", "brats2023", "brats2023")
    rows = {r["case"]: r for r in document["cases"]}
    dice = DiceMetric(include_background=True, ignore_empty=False)
    hd95 = BratsHausdorffDistanceMetric(spacing=SPACING, include_background=True)
    for case, (ref, pred) in _cases(parts).items():
        masks = {
            name: torch.stack(
                [torch.from_numpy(np.isin(a, [parts[p] for p in REGIONS[r]])) for r in ("WT", "TC", "ET")]
            )
            for name, a in (("ref", ref), ("pred", pred))
        }
        ours_dice = dice(masks["pred"][None].float(), masks["ref"][None].float())[0]
        ours_hd95 = hd95(masks["pred"][None].float(), masks["ref"][None].float())[0]
        for i, region in enumerate(("wt", "tc", "et")):
            package = rows[case]
            assert ours_dice[i].item() == pytest.approx(package[f"global_dsc_{region}"], abs=1e-4), (case, region)
            assert package[f"global_hd95_{region}"] - 1e-3 <= ours_hd95[i].item(), (case, region)
            if package[f"all_instance_fp_{region}"] == 0:
                assert ours_hd95[i].item() <= package[f"global_hd95_{region}"] + 1.5, (case, region)
