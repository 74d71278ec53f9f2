"""The equal-budget study on cross-validation folds: the folds read and checked, runs per fold, one persistent cache
for the arms that preprocess alike, inference timed with each arm's own network and windows, mean +- std over folds.
"""

from __future__ import annotations

import json
import math

import pytest
from monai.bundle import ConfigParser

from refineformer3d.data import build_datalist, write_datalist
from refineformer3d.experiments import study

LIGHTER = ("refineformer3d_tiny_axial", "refineformer3d_tiny_slices", "refineformer3d_nano")


@pytest.fixture(scope="module")
def folds(tiny_brats, tmp_path_factory):
    """Two folds of the 8 labelled tiny synthetic studies (4 test, 1 validation, 3 training each); the 2 unlabelled
    studies are listed in testing too, as refineformer3d-datalist lists them."""
    folder = tmp_path_factory.mktemp("folds")
    return [
        write_datalist(
            build_datalist(tiny_brats, val_fraction=0.1, num_folds=2, fold=k, verify=False), folder / f"fold{k}.json"
        )
        for k in range(2)
    ]


def test_fold_mode_plans_every_arm_of_the_real_study_per_fold(tmp_path, folds, capsys):
    assert study.main(["--output", str(tmp_path), "--folds", *map(str, folds), "--plan"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [arm.name for arm in study.FOLD_ARMS]
    assert len(names) == len(set(names)) == 8
    for name in ("refineformer3d_tiny", "refineformer3d_small", "segformer3d", "segresnet", "segformer2d_b0", *LIGHTER):
        assert name in names
    assert study.SEGFORMER2D.configs == ("bundle/configs/segformer2d.json",)
    # fold-major, as seeds are: a study cut short has whole folds
    assert lines == [f"{n} fold {k}: {tmp_path / 'runs' / n / f'fold{k}'}" for k in (0, 1) for n in names]
    arguments = ["--output", str(tmp_path), "--folds", *map(str, folds), "--plan", "--only", "segresnet", "nano_x"]
    arms = tmp_path / "arms.json"
    arms.write_text(json.dumps([{"name": "nano_x", "overrides": {"learning_rate": 0.001}}]))
    assert study.main([*arguments, "--arms", str(arms), "--arm_seeds", "segresnet=1"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"nano_x fold 0: {tmp_path / 'runs' / 'nano_x' / 'fold0'}",
        f"segresnet fold 1: {tmp_path / 'runs' / 'segresnet' / 'fold1'}",
        f"nano_x fold 1: {tmp_path / 'runs' / 'nano_x' / 'fold1'}",
    ]


def test_folds_are_read_and_a_fold_without_a_split_is_one_line(tmp_path, folds, capsys):
    sizes = study.read_folds(folds)
    assert [s["testing"] for s in sizes] == [4, 4]  # the labelled test studies, the ones scored
    assert all(s["training"] + s["validation"] + s["testing"] == 8 and s["validation"] >= 1 for s in sizes)
    fold = json.loads(folds[0].read_text())
    fold["dataset_dir"] = str((folds[0].parent / fold["dataset_dir"]).resolve())
    for split in ("training", "testing", "validation"):
        bad = tmp_path / f"no_{split}.json"
        bad.write_text(json.dumps({**fold, split: []}))
        assert study.main(["--output", str(tmp_path / "out"), "--folds", str(folds[1]), str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: fold {bad}: no {split} studies") and err.count("\n") == 1
    unlabelled = tmp_path / "unlabelled.json"
    unlabelled.write_text(json.dumps({**fold, "testing": [e for e in fold["testing"] if "label" not in e]}))
    assert study.main(["--output", str(tmp_path / "out"), "--folds", str(unlabelled)]) == 2
    assert "no testing studies" in capsys.readouterr().err
    assert study.main(["--output", str(tmp_path / "out"), "--folds", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "missing.json") in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_synthetic_options_and_several_seeds_are_refused_with_folds(tmp_path, folds, capsys):
    base = ["--output", str(tmp_path), "--folds", str(folds[0]), "--plan"]
    for extra, message in (
        (["--cases", "8", "--ood_recipes", "default"], "error: --cases, --ood_recipes: synthetic-study options"),
        (["--seeds", "0", "1"], "error: --seeds [0, 1]: with --folds"),
        (["--arm_seeds", "segresnet=2"], "error: --arm_seeds 'segresnet=2': folds are numbered [0]"),
        (["--configs", "bundle/configs/nope.json"], "error: --configs bundle/configs/nope.json: no such file"),
    ):
        assert study.main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err


def test_fold_runs_train_through_a_persistent_cache_the_arms_share(tmp_path, folds):
    settings = study.Settings(
        output=tmp_path, folds=tuple(folds), seed=3, roi_size=(32, 32, 32), configs=("bundle/configs/regions.json",)
    )
    by_name = {arm.name: arm for arm in study.FOLD_ARMS}
    steps = study.commands(by_name["segformer2d_b0"], 3, tmp_path / "run", settings, (folds[1], {}))
    assert list(steps) == ["train", "test"]  # no out-of-distribution set on real folds
    train, test = steps["train"], steps["test"]
    assert [c.rsplit("/", 1)[1] for c in eval(train[6])] == [
        "train.json",
        "regions.json",  # --configs: every arm, before its own overlays
        "segformer2d.json",
        "persistent_cache.json",
    ]
    assert [c.rsplit("/", 1)[1] for c in eval(test[6])] == [
        "train.json",
        "regions.json",
        "segformer2d.json",
        "evaluate.json",
    ]
    assert train[train.index("--dataset_dir") + 1] == test[test.index("--dataset_dir") + 1] == str(folds[1])
    assert train[train.index("--seed") + 1] == "3" and train[train.index("--roi_size") + 1] == "[32, 32, 32]"
    # one cache for the arms that differ in their network (and inference-only settings); regions.json's loss and
    # validation keys name another folder than the plain study's, which every arm of that study shares
    caches = {name: study.cache_folder(arm, settings) for name, arm in by_name.items()}
    assert train[train.index("--cache_dir") + 1] == str(caches["segformer2d_b0"])
    assert len(set(caches.values())) == 1 and caches["segresnet"].parent == tmp_path / "cache"
    plain = study.Settings(output=tmp_path, folds=tuple(folds))
    assert study.cache_folder(by_name["segresnet"], plain) == tmp_path / "cache" / "common"
    assert study.cache_folder(study.Arm("lr", {"learning_rate": 0.001}), plain) == tmp_path / "cache" / "common"
    assert study.cache_folder(study.Arm("n4", {"bias_correction": False}), plain) == tmp_path / "cache" / "common"
    augmented = study.Arm("aug", {"augment_transforms": []}, ("bundle/configs/augment.json",))
    assert study.cache_folder(augmented, plain) not in (tmp_path / "cache" / "common", caches["segresnet"])
    extra = study.Settings(output=tmp_path, folds=tuple(folds), extra=("--noise_prob", "0"))
    assert study.cache_folder(by_name["segresnet"], extra) not in (tmp_path / "cache" / "common", caches["segresnet"])
    assert "--cache_dir" not in study.commands(
        by_name["segresnet"], 0, tmp_path, study.Settings(tmp_path), (folds[0], {})
    )


def test_inference_is_timed_with_the_arm_network_windows_and_weights(tmp_path):
    settings = study.Settings(
        output=tmp_path,
        folds=(tmp_path / "f.json",),
        roi_size=(64, 64, 32),
        pixdim=(2.0, 2.0, 2.0),
        configs=("bundle/configs/regions.json",),
        extra=("--learning_rate", "0.001", "--bias_correction", "False", "--sw_overlap", "[0.25, 0.25, 0.0]"),
    )
    overrides = study.inference_overrides(study.SEGFORMER2D, settings, tmp_path / "model.pt")
    segformer2d = json.loads((study.CONFIGS / "segformer2d.json").read_text())
    assert overrides["network_def"] == segformer2d["network_def"] and overrides["pretrained"] == "none"
    assert overrides["roi_size"] == [64, 64, 32] and overrides["pixdim"] == [2.0, 2.0, 2.0]
    assert overrides["sw_overlap"] == [0.25, 0.25, 0.0] and overrides["sw_batch_size"] == 4
    assert overrides["label_scheme"] == "regions" and overrides["bias_correction"] is False
    assert overrides["ckpt_path"] == str(tmp_path / "model.pt")
    assert not {"learning_rate", "loss"} & set(overrides) and not any("#" in k for k in overrides if k != "ckpt_path")
    parser = ConfigParser()
    parser.read_config(str(study.CONFIGS / "inference.json"))
    parser.update(study.inference_overrides(study.FOLD_ARMS[3], settings, tmp_path / "model.pt"))  # SegResNet
    assert type(parser.get_parsed_content("network_def")).__name__ == "SegResNet"
    inferer = parser.get_parsed_content("inferer")
    assert list(inferer.roi_size) == [64, 64, 32] and inferer.overlap == [0.25, 0.25, 0.0]
    # GFLOP of one window of the arm's network, as trained: tiny at 64^3 is a few GFLOP
    tiny = study.window_gflop(study.FOLD_ARMS[0], study.Settings(tmp_path))
    assert 0.5 < tiny < study.window_gflop(study.FOLD_ARMS[1], study.Settings(tmp_path))


def _fold_result(fold, wt, seconds):
    scores = {"dice_wt": wt, "dice_tc": 0.6, "dice_et": 0.5, "dice_edema": 0.4}
    scores |= {"hd95_wt": 10.0, "hd95_tc": 12.0, "hd95_et": None}
    inference = {"gflop_per_study": 100.0 + fold, "network_s": seconds, "study_s": 2 * seconds, "windows": 8}
    return {
        "arm": "a",
        "fold": fold,
        "seed": 0,
        "parameters": 800_000,
        "iterations": 96,
        "train_wall_s": 600.0,
        "score_wall_s": 60.0,
        "test": scores,
        "inference": inference | {"gflop_per_window": 12.5},
    }


def test_summary_gives_mean_and_std_over_folds_and_the_cost(tmp_path):
    for fold, wt in enumerate((0.7, 0.8, 0.9)):
        folder = tmp_path / "runs" / "a" / f"fold{fold}"
        folder.mkdir(parents=True)
        (folder / study.RESULT_FILE).write_text(json.dumps(_fold_result(fold, wt, 3.0 + fold)))
    (row,) = study.write_summary(tmp_path, [study.Arm("a"), study.Arm("b")], "header", "fold")
    assert row["folds"] == [0, 1, 2] and "seeds" not in row and "ood_dice_wt" not in row
    mean, std, n = row["test_dice_wt"]
    assert n == 3 and mean == pytest.approx(0.8) and std == pytest.approx(0.1)
    assert row["test_hd95_et"][2] == 0 and math.isnan(row["test_hd95_et"][0])
    assert row["gflop_per_study"][:2] == pytest.approx((101.0, 1.0)) and row["study_s"][0] == pytest.approx(8.0)
    text = (tmp_path / "study.md").read_text()
    assert "Held-out test studies of each fold** (mean +- std over folds" in text and "Out of distribution" not in text
    assert "| a | 3 | 0.800 +- 0.100 | 0.600 +- 0.000 | 0.500 +- 0.000 | 0.400 +- 0.000 | 10.0 +- 0.0 |" in text
    assert "| arm | params (M) | iterations | GFLOP / study | network s / study | inference s / study |" in text
    assert "| a | 0.80 | 96 | 101.0 +- 1.0 | 4.0 +- 1.0 | 8.0 +- 2.0 | 10.0 +- 0.0 |" in text
    lines = (tmp_path / "study_runs.csv").read_text().splitlines()
    assert lines[0].startswith("arm,fold,seed,parameters") and lines[0].endswith("windows,gflop_per_window")
    assert len(lines) == 4 and "ood_" not in lines[0] and lines[1].endswith(",8,12.5")


@pytest.mark.slow
def test_two_tiny_folds_end_to_end_timed_and_resumed(tmp_path, folds, capsys):
    arguments = ["--output", str(tmp_path), "--folds", *map(str, folds), "--only", "refineformer3d_tiny"]
    arguments += ["--epochs", "1", "--roi_size", "32", "32", "32", "--pixdim", "2", "2", "2", "--time_threads", "1"]
    assert study.main(arguments) == 0
    sizes = study.read_folds(folds)
    for fold in (0, 1):
        run = tmp_path / "runs" / "refineformer3d_tiny" / f"fold{fold}"
        result = json.loads((run / study.RESULT_FILE).read_text())
        assert (result["fold"], result["seed"], result["studies"]) == (fold, 0, sizes[fold])
        assert result["iterations"] == sizes[fold]["training"] and "ood" not in result
        assert 0 <= result["test"]["dice_wt"] <= 1 and result["test"]["dice_et"] is None
        cost = result["inference"]
        (timed,) = cost["studies"]  # --time_studies defaults to 1 with --folds
        assert timed["windows"] >= 1 and all(0 < n <= 32 for n in timed["shape"])  # 64x64x48 "1 mm" at 2 mm
        assert cost["gflop_per_study"] == pytest.approx(cost["gflop_per_window"] * timed["windows"])
        assert cost["study_s"] > cost["network_s"] > 0 and cost["overrides"]["pixdim"] == [2.0, 2.0, 2.0]
        assert len(list((run / "timing").rglob("*_seg.nii.gz"))) == 1
    # both folds trained from one cache of preprocessed studies
    (cache,) = (tmp_path / "cache" / "common").iterdir()
    assert "pixdim-2.0x2.0x2.0" in cache.name and len(list(cache.glob("*.pt"))) == 8
    text = (tmp_path / "study.md").read_text()
    assert text.startswith("Real studies, 2 folds") and "| refineformer3d_tiny | 2 |" in text
    capsys.readouterr()
    assert study.main(arguments) == 0
    out = capsys.readouterr().out
    assert "2 folds; 0 runs to do" in out and "timed" not in out


def _brats_document(folder, scores):
    (folder / "test").mkdir(parents=True)
    cases = [{"case": c, **{f"global_dsc_{r}": v for r, v in regions.items()}} for c, regions in scores.items()]
    (folder / "test" / "brats_testing.json").write_text(json.dumps({"cases": cases}))


def test_paired_differences_pair_each_held_out_case_with_itself(tmp_path):
    # arm b is a: 0.05 lower on every case for WT (a constant difference has no spread), mixed for TC
    a = {f"c{i}": {"wt": 0.8 + 0.01 * i, "tc": 0.6 + 0.02 * i, "et": 0.5} for i in range(6)}
    b = {
        c: {"wt": s["wt"] - 0.05, "tc": s["tc"] + (0.1 if i % 2 else -0.1), "et": 0.6}
        for i, (c, s) in enumerate(a.items())
    }
    b["c5"]["et"] = math.nan  # no ET Dice for this case: dropped from ET only
    b["extra"] = {"wt": 1.0, "tc": 1.0, "et": 1.0}  # scored by one arm only: never paired
    for arm, scores in (("a", a), ("b", b)):
        _brats_document(tmp_path / arm / "fold0", dict(list(scores.items())[:3]))
        _brats_document(tmp_path / arm / "fold1", dict(list(scores.items())[3:]))
    cases = {arm: study._case_scores(sorted((tmp_path / arm).glob("fold*"))) for arm in ("a", "b")}
    assert cases["a"] == a  # JSON keeps the floats exactly
    assert cases["b"]["c5"]["et"] is None and "extra" in cases["b"]

    paired = study.paired_differences(cases, resamples=2000)
    assert paired["wt"]["best"] == "a" and paired["wt"]["cases"] == 6
    wt = paired["wt"]["arms"]["b"]
    assert (
        wt["mean"] == pytest.approx(-0.05) and wt["low"] == pytest.approx(-0.05) and wt["high"] == pytest.approx(-0.05)
    )
    assert paired["wt"]["arms"]["a"] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    tc = paired["tc"]["arms"][next(a for a in ("a", "b") if a != paired["tc"]["best"])]
    assert tc["low"] < tc["mean"] < tc["high"] and tc["low"] < 0
    assert paired["et"]["best"] == "b" and paired["et"]["cases"] == 5
    assert paired["et"]["arms"]["a"]["mean"] == pytest.approx(-0.1)

    single = study.paired_differences({arm: {"c0": cases[arm]["c0"]} for arm in cases})
    assert single["wt"]["arms"]["b"] == {"mean": pytest.approx(-0.05), "low": None, "high": None}
    assert "| b | -5.0 |" in study.paired_markdown(single)

    table = study.paired_markdown(paired)
    assert "cases: WT 6, TC 6, ET 5" in table
    assert "| b | -5.0 [-5.0, -5.0] |" in table and "| a | best |" in table
