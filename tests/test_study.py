"""The equal-budget study runner: arms, the bundle commands it renders, resuming, and the summary's statistics."""

from __future__ import annotations

import json
import math

import pytest

from refineformer3d.experiments import study
from refineformer3d.networks import create_model, list_models


def test_default_arms_cover_the_compared_networks():
    names = [arm.name for arm in study.DEFAULT_ARMS]
    assert len(names) == len(set(names))
    for name in ("refineformer3d_tiny", "refineformer3d_small", "segformer3d", "segresnet"):
        assert name in names
    augmented = [arm for arm in study.DEFAULT_ARMS if "bundle/configs/augment.json" in arm.configs]
    assert [arm.name for arm in augmented] == ["refineformer3d_small_augment"]
    assert all((study.REPO / c).is_file() for arm in study.DEFAULT_ARMS for c in arm.configs)


def test_arms_file_is_parsed_and_checked(tmp_path):
    path = tmp_path / "arms.json"
    arm = {"name": "tiny_x", "overrides": {"network_def#ffn_rank_ratio": None}, "configs": [], "description": "d"}
    path.write_text(json.dumps([arm]))
    (loaded,) = study.load_arms(path)
    assert loaded == study.Arm("tiny_x", {"network_def#ffn_rank_ratio": None}, (), "d")
    for bad, message in (
        ({"overrides": {}}, "has no name"),
        ({"name": "a", "extra": 1}, "malformed"),
        ({"name": "a/b"}, "folder name"),
    ):
        path.write_text(json.dumps([bad]))
        with pytest.raises(ValueError, match=message):
            study.load_arms(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=str(path)):
        study.load_arms(path)


def test_overrides_render_as_python_literals_for_the_bundle_command_line(tmp_path):
    rendered = study.render_overrides(
        {"network_def#name": "refineformer3d_tiny", "network_def#ffn_rank_ratio": None, "amp": False, "r": [64, 64]}
    )
    assert rendered == [
        "--network_def#name",
        "refineformer3d_tiny",
        "--network_def#ffn_rank_ratio",
        "$None",
        "--amp",
        "False",
        "--r",
        "[64, 64]",
    ]
    settings = study.Settings(output=tmp_path, epochs=3, extra=("--sw_overlap", "0.25"))
    arm = study.DEFAULT_ARMS[2]
    ood_sets = {"shifted": tmp_path / "ood.json", "shifted:contrast": tmp_path / "ood_shifted-contrast.json"}
    commands = study.commands(arm, 1, tmp_path / "run", settings, (tmp_path / "d.json", ood_sets))
    assert list(commands) == ["train", "test", "ood", "ood_shifted-contrast"]
    train, ood = commands["train"], commands["ood"]
    part = commands["ood_shifted-contrast"]
    assert part[part.index("--dataset_dir") + 1].endswith("ood_shifted-contrast.json")
    assert part[part.index("--output_dir") + 1] == str(tmp_path / "run" / "ood_shifted-contrast")
    assert train[3:5] == ["run", "training"] and ood[4] == "evaluating"
    assert eval(train[6])[-1].endswith("bundle/configs/augment.json")  # the overlay after train.json
    assert eval(ood[6])[-1].endswith("bundle/configs/evaluate.json")
    for command in commands.values():
        assert command[command.index("--seed") + 1] == "1" and "--sw_overlap" in command
        assert command[command.index("--network_def#name") + 1] == "refineformer3d_small"
    assert train[train.index("--epochs") + 1] == "3" and "--epochs" not in ood
    assert ood[ood.index("--dataset_dir") + 1].endswith("ood.json")
    assert ood[ood.index("--ckpt_path") + 1] == str(tmp_path / "run" / "models" / "model.pt")


def test_finished_runs_are_skipped(tmp_path):
    arms = study.DEFAULT_ARMS[:2]
    assert len(study.plan(arms, [0, 1], tmp_path)) == 4
    done = tmp_path / "runs" / arms[1].name / "seed0"
    done.mkdir(parents=True)
    (done / study.RESULT_FILE).write_text("{}")
    (tmp_path / "runs" / arms[0].name / "seed1").mkdir(parents=True)  # started, not finished: done again
    todo = [(arm.name, seed) for arm, seed, _ in study.plan(arms, [0, 1], tmp_path)]
    assert todo == [(arms[0].name, 0), (arms[0].name, 1), (arms[1].name, 1)]  # seed-major
    fewer = study.plan(arms, [0, 1], tmp_path, {arms[0].name: [1, 2]})
    assert [(arm.name, seed) for arm, seed, _ in fewer] == [(arms[0].name, 1), (arms[1].name, 1), (arms[0].name, 2)]


def _result(arm, seed, tc, edema, ood_scale):
    scores = {"dice_wt": 0.9, "dice_tc": tc, "dice_et": None, "dice_edema": edema, "hd95_wt": 5.0, "hd95_tc": 8.0}
    ood = {k: None if v is None else v * ood_scale for k, v in scores.items()}
    return {
        "arm": arm,
        "seed": seed,
        "parameters": 2_000_000,
        "iterations": 100,
        "train_wall_s": 60.0 * (seed + 1),
        "score_wall_s": 9.0,
    }, {
        "test": scores,
        "ood": ood,
    }


def test_summary_means_stds_and_ratios(tmp_path):
    results = []
    for seed, tc in enumerate((0.6, 0.8)):
        head, scores = _result("a", seed, tc, 0.5, 0.5)
        results.append({**head, **scores})
    (row,) = study.summarise(results)
    assert row["seeds"] == [0, 1]
    mean, std, n = row["test_dice_tc"]
    assert n == 2 and mean == pytest.approx(0.7) and std == pytest.approx(math.sqrt(0.02))
    assert row["test_dice_et"][2] == 0 and math.isnan(row["test_dice_et"][0])
    assert row["ratio_dice_edema"][:2] == pytest.approx((0.5, 0.0))
    assert row["train_wall_s"][0] == pytest.approx(90.0)
    assert study.mean_std([1.0])[2] == 1 and math.isnan(study.mean_std([1.0])[1])
    text = study.markdown([row], "header")
    assert "| a | 2 | 0.900 +- 0.000 | 0.700 +- 0.141 | n/a |" in text and "| a | 2.00 | 100 | 0.50 +- 0.00 |" in text


def test_summary_files_read_the_finished_runs(tmp_path):
    arm = study.Arm("a")
    for seed in (0, 1):
        head, scores = _result("a", seed, 0.7, 0.6, 0.8)
        folder = tmp_path / "runs" / "a" / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / study.RESULT_FILE).write_text(json.dumps({**head, **scores}))
    rows = study.write_summary(tmp_path, [arm, study.Arm("b")], "header")
    assert rows[0]["seeds"] == [0, 1]
    assert (tmp_path / "study_runs.csv").read_text().count("\n") == 3
    assert json.loads((tmp_path / "study.json").read_text())[0]["test_dice_et"] == [None, None, 0]
    assert (tmp_path / "study.md").read_text().startswith("header\n")


def test_bad_command_line(tmp_path, capsys):
    assert study.main(["--output", str(tmp_path), "--only", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown arms ['nope']") and err.count("\n") == 1


@pytest.mark.slow
def test_tiny_study_end_to_end_and_resumes(tmp_path, capsys):
    arguments = ["--output", str(tmp_path), "--seeds", "0", "--epochs", "1", "--only", "refineformer3d_tiny"]
    arguments += ["--cases", "8", "--ood_cases", "2", "--shape", "64", "64", "48", "--roi_size", "32", "32", "32"]
    arguments += ["--val_fraction", "0.2", "--test_fraction", "0.2"]
    assert study.main(arguments) == 0
    result = json.loads((tmp_path / "runs" / "refineformer3d_tiny" / "seed0" / study.RESULT_FILE).read_text())
    assert result["iterations"] == 4 and result["parameters"] > 0  # 8 studies: 2 validation, 2 test, 4 training
    assert 0 <= result["test"]["dice_wt"] <= 1 and 0 <= result["ood"]["dice_edema"] <= 1
    assert result["test"]["dice_et"] is None  # the classes scheme cannot tell enhancing tumour
    assert (tmp_path / "runs" / "refineformer3d_tiny" / "seed0" / "ood" / "brats_testing.json").is_file()
    assert "| refineformer3d_tiny | 1 |" in (tmp_path / "study.md").read_text()
    capsys.readouterr()
    assert study.main(arguments) == 0
    assert "0 runs to do, 0 to score" in capsys.readouterr().out
    # more OOD sets later: the finished run is scored on them, not trained again
    model = tmp_path / "runs" / "refineformer3d_tiny" / "seed0" / "models" / "model.pt"
    trained = model.stat().st_mtime_ns
    assert study.main([*arguments, "--ood_recipes", "default", "shifted:noise"]) == 0
    assert "0 runs to do, 1 to score on more OOD sets" in capsys.readouterr().out
    rescored = json.loads((tmp_path / "runs" / "refineformer3d_tiny" / "seed0" / study.RESULT_FILE).read_text())
    assert (
        list(rescored["ood_recipes"]) == ["shifted", "default", "shifted:noise"] and model.stat().st_mtime_ns == trained
    )
    assert rescored["ood_recipes"]["shifted"] == rescored["ood"] == result["ood"]
    assert 0 <= rescored["ood_recipes"]["shifted:noise"]["dice_wt"] <= 1
    assert "| refineformer3d_tiny | shifted:noise | 1 |" in (tmp_path / "study.md").read_text()


def test_jittered_training_data_keeps_the_split_and_the_plain_test_studies(tmp_path):
    import nibabel as nib
    import numpy as np

    settings = study.Settings(tmp_path, cases=5, ood_cases=1, shape=(48, 48, 32), contrast_jitter=0.3)
    plain_path, _, sizes = study.prepare_data(study.Settings(tmp_path, cases=5, ood_cases=1, shape=(48, 48, 32)))
    jitter_path, _, jitter_sizes = study.prepare_data(settings)
    assert jitter_path.name == "datalist_j0.3.json" and plain_path.name == "datalist.json" and sizes == jitter_sizes
    plain, jittered = (json.loads(p.read_text()) for p in (plain_path, jitter_path))
    assert jittered["validation"] == plain["validation"] and jittered["testing"] == plain["testing"]
    root = plain_path.parent / plain["dataset_dir"]
    for before, after in zip(plain["training"], jittered["training"], strict=True):
        # the same study with other contrasts: the label is the same, the images are not
        assert before["case"] == after["case"] and "-j0.3" in after["label"]
        assert np.array_equal(nib.load(after["label"]).dataobj, nib.load(root / before["label"]).dataobj)
        assert not np.array_equal(nib.load(after["image"][0]).dataobj, nib.load(root / before["image"][0]).dataobj)


def test_the_efficiency_idea_arms_load():
    raw = json.loads(study.ARMS_FILE.read_text())
    arms = study.load_arms(study.ARMS_FILE)
    # the schema, whatever the arms: every field given, unique folder-safe names apart from the default arms',
    # a description, a registered network, overlays from bundle/configs, and overrides of keys those configs define
    assert arms and all(set(item) == {"name", "overrides", "configs", "description"} for item in raw)
    names = [a.name for a in arms]
    assert len(set(names)) == len(names) and not set(names) & {a.name for a in study.DEFAULT_ARMS}
    train = json.loads((study.CONFIGS / "train.json").read_text())
    for arm in arms:
        assert isinstance(arm.description, str) and arm.description, arm.name
        assert arm.overrides["network_def#_target_"] == "refineformer3d.networks.create_model", arm.name
        assert arm.overrides["network_def#name"] in list_models(), arm.name
        assert all(c.startswith("bundle/configs/") for c in arm.configs), arm.name
        defined = set(train).union(*(json.loads((study.REPO / c).read_text()) for c in arm.configs))
        unknown = [key for key in arm.overrides if key.split("#")[0] not in defined]
        assert not unknown, f"{arm.name} overrides keys no config of it defines: {unknown}"
    assert all((study.REPO / c).is_file() for arm in arms for c in arm.configs)
    by_name = {arm.name: arm for arm in arms}
    assert by_name["tiny_stem16"].overrides["network_def#refine_channels"] == [16, 16]
    # train.json's trainer already wraps its loss in DeepSupervisionLoss: the network's switch is the whole arm
    for name in ("tiny_deep_supervision", "small_deep_supervision"):
        assert by_name[name].overrides["network_def#deep_supervision"] is True and not by_name[name].configs
    (thick,) = by_name["small_acquisition"].overrides["augment_transforms"]
    assert thick["_target_"] == "refineformer3d.data.RandThickSlicesd"
    assert "bias_field_prob" not in by_name["small_acquisition"].overrides
    assert by_name["small_acquisition_strong"].overrides["bias_field_prob"] == 1.0
    assert by_name["tiny_lowrank_off"].overrides["network_def#ffn_rank_ratio"] is None
    bias_field = by_name["small_bias_field"].overrides
    rendered = study.render_overrides(bias_field)
    assert bias_field["augment_transforms"] == [] and rendered[rendered.index("--augment_transforms") + 1] == "[]"
    # the arms measured with MONAI's positive-only coefficients say so, since augment.json's default is signed
    augmented = (
        "small_bias_field",
        "small_acquisition",
        "small_acquisition_strong",
        "small_bias_field_signed",
        "tiny_bias_field_signed",
        "small_bias_field_signed_every",
        "small_bias_field_signed_wide",
        "small_drop_sequence",
        "small_drop_sequences",
    )
    assert [by_name[name].overrides.get("bias_field_coeff_range") for name in augmented] == [
        "$(0.0, 0.2)",
        "$(0.0, 0.2)",
        "$(0.0, 0.3)",
        "$(-0.2, 0.2)",
        "$(-0.2, 0.2)",
        "$(-0.2, 0.2)",
        "$(-0.3, 0.3)",
        "$(-0.2, 0.2)",
        "$(-0.2, 0.2)",
    ]
    drops = [
        by_name[name].overrides["augment_transforms"][0] for name in ("small_drop_sequence", "small_drop_sequences")
    ]
    assert {t["_target_"] for t in drops} == {"refineformer3d.data.RandDropSequenced"}
    assert [t["num_sequences"] for t in drops] == [[1, 1], [1, 2]]
    # the correction is one config key, read by training, validation and scoring alike
    for name in ("small_bias_correction", "tiny_bias_correction"):
        assert by_name[name].overrides["bias_correction"] is True and not by_name[name].configs
    # the width arms build tiny with small's encoder widths at the stages they name, and tiny's elsewhere
    small, tiny = create_model("refineformer3d_small"), create_model("refineformer3d_tiny")
    for name, stages in (("tiny_coarse_small", {2, 3}), ("tiny_stage1_small", {0}), ("tiny_stages12_small", {0, 1})):
        overrides = by_name[name].overrides
        kwargs = {k.split("#", 1)[1]: v for k, v in overrides.items() if k.split("#", 1)[1] not in ("_target_", "name")}
        widths = create_model(overrides["network_def#name"], **kwargs).encoder.embed_dims
        expected = [(small if i in stages else tiny).encoder.embed_dims[i] for i in range(4)]
        assert list(widths) == expected, name
    # the learning-rate arms change the rate alone, of the network their name starts with
    for name in ("tiny_lr1e-3", "tiny_lr2e-3", "tiny_lr4e-3", "small_lr1e-3", "small_lr2e-3", "small_lr4e-3"):
        overrides = by_name[name].overrides
        assert overrides["learning_rate"] == float(name.split("_lr")[1])
        assert overrides["network_def#name"] == "refineformer3d_" + name.split("_")[0] and len(overrides) == 3
    assert by_name["segformer3d_lr2e-3"].overrides["network_def#name"] == "segformer3d"


def test_ood_recipes_the_study_own_set_first_and_once():
    settings = study.Settings(output=None, ood_recipes=("default", "shifted", "shifted:bias+slices", "default"))
    assert study.ood_recipes(settings) == ["shifted", "default", "shifted:bias+slices"]
    assert [study.ood_folder(r) for r in study.ood_recipes(settings)] == [
        "ood",
        "ood_default",
        "ood_shifted-bias+slices",
    ]


def test_finished_runs_lacking_an_ood_recipe_are_scored_on_it(tmp_path):
    settings = study.Settings(output=tmp_path, ood_recipes=("default", "shifted:noise"))
    head, scores = _result("a", 0, 0.7, 0.6, 0.8)
    folder = tmp_path / "runs" / "a" / "seed0"
    folder.mkdir(parents=True)
    # a run from before ood_recipes: its "ood" is the study's own set
    (folder / study.RESULT_FILE).write_text(json.dumps({**head, **scores}))
    assert study.missing_ood(folder, settings) == ["default", "shifted:noise"]
    finished = study.plan([study.Arm("a"), study.Arm("b")], [0], tmp_path, finished=True)
    assert [(arm.name, seed) for arm, seed, _ in finished] == [("a", 0)]
    (folder / study.RESULT_FILE).write_text(
        json.dumps({**head, **scores, "ood_recipes": {"shifted": scores["ood"], "shifted:noise": scores["test"]}})
    )
    assert study.missing_ood(folder, settings) == ["default"]
    (row,) = study.summarise([json.loads((folder / study.RESULT_FILE).read_text())])
    assert list(row["ood_recipes"]) == ["shifted", "shifted:noise"]
    assert row["ood_recipes"]["shifted:noise"]["ratio_dice_tc"][0] == pytest.approx(1.0)
    assert row["ood_recipes"]["shifted"]["ratio_dice_tc"][0] == pytest.approx(0.8)
    text = study.markdown([row], "header")
    assert "| a | shifted:noise | 1 | 0.900 (1.00) | 0.700 (1.00) | 0.600 (1.00) |" in text


def test_an_unknown_ood_recipe_is_one_line(tmp_path, capsys):
    arguments = ["--output", str(tmp_path), "--only", "refineformer3d_tiny", "--ood_recipes", "shifted:colour"]
    assert study.main([*arguments, "--cases", "3", "--ood_cases", "1", "--shape", "32", "32", "32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown recipe 'shifted:colour'") and err.count("\n") == 1
