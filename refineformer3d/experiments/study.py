"""An equal-budget accuracy study: several networks, several seeds, the bundle's own training and scoring.

Every arm (a network, optionally with overlays such as ``augment.json``) is trained by ``python -m monai.bundle run
training`` with the same studies, split, crop, epochs and iterations; the checkpoint is chosen on the validation split
only (the bundle's key metric); the chosen checkpoint then segments the held-out test split and an out-of-distribution
test set (other seed, the generator's ``shifted`` recipe) through ``evaluate.json``, which scores with the BraTS
challenge's package (:mod:`refineformer3d.evaluate`). Per run it writes the tables of both; over the runs, a CSV of
every run and a Markdown summary with mean +- std over seeds per arm. ``--ood_recipes`` scores further
out-of-distribution sets of the same seed, e.g. each part of the shifted recipe alone (``shifted:contrast``) and the
default recipe itself (new studies, no shift), so that a loss out of distribution can be traced to its cause; a
finished run only gets the sets it lacks scored.

Command line::

    python -m refineformer3d.experiments.study --output DIR [--seeds 0 1 2] [--epochs 8] [--arms FILE ...] \\
        [--only NAME ...] [--cases 40 --ood_cases 12 --shape 120 120 78 --roi_size 64 64 64] \\
        [--jobs 2 --threads 1] [--plan] [--ood_recipes default shifted:contrast shifted:bias+slices ...]

Arms are a JSON list of ``{"name", "overrides": {bundle key: value}, "configs": [overlay files relative to the
repository], "description"}``; each override goes to ``monai.bundle run`` as ``--key value``. A finished run
(``DIR/runs/<arm>/seed<S>/result.json``) is skipped on a re-run, so an interrupted study resumes where it stopped.

Made affordable on a CPU: half-size studies (the brain scaled to fit 120 x 120 x 78 voxels of "1 mm", i.e. about
2 mm resolution of a real brain; HD95 is in those voxels' mm) and 64^3 crops.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from refineformer3d.io import write_atomically

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundle" / "configs"
# The arms of the efficiency-idea, augmentation and learning-rate studies (``--arms``), beside this module.
ARMS_FILE = Path(__file__).resolve().with_name("study_arms.json")
RESULT_FILE = "result.json"
# Columns of the summary: (run key, heading). Dice and HD95 from the BraTS package; edema (label 2) from the
# segmentations, since the package scores regions (WT, TC, ET) and edema is none of them.
METRICS = (
    ("dice_wt", "WT Dice"),
    ("dice_tc", "TC Dice"),
    ("dice_et", "ET Dice"),
    ("dice_edema", "edema Dice"),
    ("hd95_wt", "WT HD95"),
    ("hd95_tc", "TC HD95"),
)
RECIPE_METRICS = (("dice_wt", "WT"), ("dice_tc", "TC"), ("dice_edema", "edema"))


@dataclass(frozen=True)
class Arm:
    """One network (and recipe) of the study.

    Attributes:
        name: short name; the run folders are named after it.
        overrides: bundle keys and values, passed to ``monai.bundle run`` as ``--key value``.
        configs: extra overlay files after ``train.json``, relative to the repository root.
        description: what the arm is, for the summary.
    """

    name: str
    overrides: Mapping = field(default_factory=dict)
    configs: tuple[str, ...] = ()
    description: str = ""


def _create_model(name: str) -> dict:
    return {"network_def#_target_": "refineformer3d.networks.create_model", "network_def#name": name}


SEGRESNET = {
    # The model zoo's brats_mri_segmentation configuration (see refineformer3d.experiments.summary.reference_models).
    "network_def#_target_": "SegResNet",
    "network_def#blocks_down": [1, 2, 2, 4],
    "network_def#blocks_up": [1, 1, 1],
    "network_def#init_filters": 16,
    "network_def#dropout_prob": 0.2,
}
DEFAULT_ARMS = (
    Arm("refineformer3d_tiny", _create_model("refineformer3d_tiny"), (), "RefineFormer3D tiny"),
    Arm("refineformer3d_small", _create_model("refineformer3d_small"), (), "RefineFormer3D small"),
    Arm(
        "refineformer3d_small_augment",
        _create_model("refineformer3d_small"),
        ("bundle/configs/augment.json",),
        "RefineFormer3D small, trained with augment.json",
    ),
    Arm("refineformer3d_base", _create_model("refineformer3d_base"), (), "RefineFormer3D base"),
    Arm("segformer3d", _create_model("segformer3d"), (), "SegFormer3D (the published configuration)"),
    Arm("segresnet", SEGRESNET, (), "MONAI SegResNet, model zoo BraTS configuration"),
)


def load_arms(path: str | os.PathLike) -> list[Arm]:
    """Arms from a JSON list of ``{"name", "overrides", "configs", "description"}``.

    Raises:
        ValueError: for an unreadable file or a malformed arm, naming the file.
    """
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"arms file {path}: {error}") from None
    if not isinstance(items, list):
        raise ValueError(f"arms file {path}: expected a JSON list of arms")
    arms = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise ValueError(f"arms file {path}: arm {i} has no name")
        unknown = sorted(set(item) - {"name", "overrides", "configs", "description"})
        if unknown or not isinstance(item.get("overrides", {}), dict) or not isinstance(item.get("configs", []), list):
            raise ValueError(f"arms file {path}: arm {item['name']!r} is malformed (unknown keys {unknown})")
        if any(c in item["name"] for c in "/\\ ") or item["name"].startswith("."):
            raise ValueError(f"arms file {path}: arm name {item['name']!r} must be usable as a folder name")
        arms.append(
            Arm(
                item["name"],
                dict(item.get("overrides", {})),
                tuple(item.get("configs", [])),
                item.get("description", ""),
            )
        )
    return arms


def render_overrides(overrides: Mapping) -> list[str]:
    """``--key value`` arguments for ``monai.bundle run``, whose parser (fire) reads Python literals.

    Strings go as they are (fire keeps a word a string); ``None`` as the expression ``$None``, since ``monai.bundle
    run`` drops an override whose value is None (``--key None`` would leave the config's value in place); anything
    else as its Python literal: ``True``, ``[64, 64, 64]``.
    """
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", value if isinstance(value, str) else "$None" if value is None else repr(value)]
    return args


def plan(
    arms: Sequence[Arm],
    seeds: Sequence[int],
    output: Path,
    arm_seeds: Mapping[str, Sequence[int]] | None = None,
    finished: bool = False,
) -> list[tuple[Arm, int, Path]]:
    """The runs still to do, seed-major (every arm's first seed first, so a cut-short study has whole seeds).

    Args:
        arm_seeds: seeds for particular arms (a slow network given fewer), instead of ``seeds``.
        finished: the finished runs instead.
    """
    arm_seeds = arm_seeds or {}
    every = sorted(set(seeds).union(*arm_seeds.values()))
    return [
        (arm, seed, output / "runs" / arm.name / f"seed{seed}")
        for seed in every
        for arm in arms
        if seed in arm_seeds.get(arm.name, seeds)
        and (output / "runs" / arm.name / f"seed{seed}" / RESULT_FILE).is_file() == finished
    ]


@dataclass(frozen=True)
class Settings:
    """What every arm shares: the budget, the crop, the data and the machine's share per run."""

    output: Path
    epochs: int = 8
    roi_size: tuple[int, int, int] = (64, 64, 64)
    pixdim: tuple[float, float, float] = (1.0, 1.0, 1.0)
    cases: int = 40
    ood_cases: int = 12
    shape: tuple[int, int, int] = (120, 120, 78)
    data_seed: int = 0
    ood_seed: int = 1000
    contrast_jitter: float = 0.0
    # OOD sets scored besides the study's own (``shifted``, in ``ood``), e.g. ("default", "shifted:contrast")
    ood_recipes: tuple[str, ...] = ()
    val_fraction: float = 0.15
    test_fraction: float = 0.25
    threads: int = 1
    extra: tuple[str, ...] = ()  # further --key value arguments for every arm, e.g. ("--learning_rate", "0.001")


OOD_RECIPE = "shifted"  # the study's own out-of-distribution set


def ood_recipes(settings: Settings) -> list[str]:
    """Every OOD recipe a run is scored on, the study's own first."""
    return [OOD_RECIPE, *(r for r in dict.fromkeys(settings.ood_recipes) if r != OOD_RECIPE)]


def ood_folder(recipe: str) -> str:
    """The run's folder (and step) name for scoring the OOD set of ``recipe``: ``ood`` for the study's own set."""
    return "ood" if recipe == OOD_RECIPE else "ood_" + recipe.replace(":", "-")


def prepare_data(settings: Settings) -> tuple[Path, dict[str, Path], dict]:
    """Makes (or reuses) the studies and writes the datalists the runs read.

    Returns:
        The in-distribution datalist (training, validation, testing), the out-of-distribution ones per recipe (all
        in testing; the same seed for every recipe), and the number of studies per split.
    """
    from refineformer3d.data import build_datalist, ensure_dataset, load_datalist, write_datalist

    data = settings.output / "data"
    common = {"cache_dir": data, "validation_cases": 0, "shape": settings.shape}
    in_root = ensure_dataset(cases=settings.cases, seed=settings.data_seed, **common)
    splitting = {
        "val_fraction": settings.val_fraction,
        "test_fraction": settings.test_fraction,
        "seed": settings.data_seed,
    }
    datalist = build_datalist(in_root, **splitting)
    if settings.contrast_jitter:
        # the same studies with randomised contrasts (the jitter has its own random stream, so anatomy and labels are
        # unchanged) and the same split: training reads them, model selection and the test split the plain studies
        jittered_root = ensure_dataset(
            cases=settings.cases, seed=settings.data_seed, contrast_jitter=settings.contrast_jitter, **common
        )
        training = load_datalist(jittered_root, **splitting)["training"]  # absolute paths: another root than the rest
        if [e["case"] for e in training] != [e["case"] for e in datalist["training"]]:
            raise RuntimeError(f"{jittered_root} does not hold the studies of {in_root}")
        datalist["training"] = training
    ood_paths = {}
    for recipe in ood_recipes(settings):
        root = ensure_dataset(cases=settings.ood_cases, seed=settings.ood_seed, recipe=recipe, **common)
        ood = build_datalist(root, val_fraction=0.0, test_fraction=0.0)
        ood = {**ood, "training": [], "validation": [], "testing": ood["training"] + ood["testing"]}
        ood_paths[recipe] = write_datalist(ood, data / f"{ood_folder(recipe)}.json")
    # a study with jittered training data names its datalist apart: one output folder can hold both kinds of run
    name = f"datalist_j{settings.contrast_jitter:g}.json" if settings.contrast_jitter else "datalist.json"
    in_path = write_datalist(datalist, data / name)
    sizes = {split: len(datalist[split]) for split in ("training", "validation", "testing")}
    return in_path, ood_paths, {**sizes, "ood": settings.ood_cases}


def _bundle_command(workflow: str, configs: Sequence[str], arguments: Sequence[str]) -> list[str]:
    files = [str(REPO / c) for c in configs]
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        workflow,
        "--config_file",
        repr(files),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--logging_file",
        str(CONFIGS / "logging.conf"),
        *arguments,
    ]


def commands(
    arm: Arm, seed: int, run_dir: Path, settings: Settings, datalists: tuple[Path, Mapping[str, Path]]
) -> dict:
    """The bundle commands of one run: training, scoring the test split, scoring each OOD set (``ood`` first)."""
    configs = ["bundle/configs/train.json", *arm.configs]
    shared = [
        "--bundle_root",
        str(run_dir),
        "--seed",
        str(seed),
        "--roi_size",
        repr(list(settings.roi_size)),
        "--pixdim",
        repr(list(settings.pixdim)),
        "--verify_dataset",
        "False",
        "--num_workers",
        "0",
        *settings.extra,
        *render_overrides(arm.overrides),
    ]
    train = [
        "--dataset_dir",
        str(datalists[0]),
        "--ckpt_dir",
        str(run_dir / "models"),
        "--output_dir",
        str(run_dir / "train"),
        "--epochs",
        str(settings.epochs),
        *shared,
    ]

    def scoring(datalist: Path, name: str) -> list[str]:
        arguments = ["--dataset_dir", str(datalist), "--ckpt_path", str(run_dir / "models" / "model.pt")]
        arguments += ["--output_dir", str(run_dir / name), *shared]
        return _bundle_command("evaluating", [*configs, "bundle/configs/evaluate.json"], arguments)

    steps = {"train": _bundle_command("training", configs, train), "test": scoring(datalists[0], "test")}
    for recipe, path in datalists[1].items():
        steps[ood_folder(recipe)] = scoring(path, ood_folder(recipe))
    return steps


def _edema_dice(folder: Path) -> float:
    """Mean volume-wise Dice of edema (label 2 in both the segmentations and the BraTS-convention references)."""
    import nibabel as nib
    import numpy as np

    document = json.loads((folder / "brats_testing.json").read_text(encoding="utf-8"))
    scores = []
    for case in document["cases"]:
        prediction = np.asarray(nib.load(case["segmentation"]).dataobj) == 2
        reference = np.asarray(nib.load(case["reference"]).dataobj) == 2
        total = prediction.sum() + reference.sum()
        scores.append(1.0 if total == 0 else 2.0 * float((prediction & reference).sum()) / float(total))
    return statistics.fmean(scores)


def _scores(folder: Path) -> dict:
    mean = json.loads((folder / "brats_testing.json").read_text(encoding="utf-8"))["summary"]["mean"]

    def value(key):
        return math.nan if mean.get(key) is None else mean[key]

    scores = {f"dice_{r}": value(f"global_dsc_{r}") for r in ("wt", "tc", "et")}
    scores |= {f"hd95_{r}": value(f"global_hd95_{r}") for r in ("wt", "tc")}
    scores["dice_edema"] = _edema_dice(folder)
    return scores


def _parameters(arm: Arm) -> int:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO / c) for c in ("bundle/configs/train.json", *arm.configs)])
    parser.update(dict(arm.overrides))
    network = parser.get_parsed_content("network_def")
    return sum(p.numel() for p in network.parameters())


def _run_steps(steps: Mapping[str, list[str]], run_dir: Path, settings: Settings, what: str) -> dict[str, float]:
    """Runs bundle commands one after the other, each logged to ``run_dir/<step>.log``; their wall times.

    Raises:
        RuntimeError: when a command fails, naming the log file.
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": str(settings.threads),
        "MKL_NUM_THREADS": str(settings.threads),
    }
    wall = {}
    for step, command in steps.items():
        log = run_dir / f"{step}.log"
        start = time.perf_counter()
        with open(log, "w") as stream:
            stream.write(" ".join(command) + "\n\n")
            stream.flush()
            proc = subprocess.run(command, cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT)
        wall[step] = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{what}: {step} failed (exit {proc.returncode}); see {log}")
    return wall


def _ood_results(run_dir: Path, settings: Settings) -> dict[str, dict]:
    return {recipe: _scores(run_dir / ood_folder(recipe)) for recipe in ood_recipes(settings)}


def run_one(
    arm: Arm, seed: int, run_dir: Path, settings: Settings, datalists: tuple[Path, Mapping[str, Path]], sizes: dict
) -> dict:
    """Trains and scores one (arm, seed); writes ``result.json`` last, so a run with it is complete.

    Raises:
        RuntimeError: when a bundle command fails, naming the log file.
    """
    if run_dir.exists():  # an interrupted run: start it again from scratch
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    steps = commands(arm, seed, run_dir, settings, datalists)
    wall = _run_steps(steps, run_dir, settings, f"{arm.name} seed {seed}")
    result = {
        "arm": arm.name,
        "seed": seed,
        "description": arm.description,
        "configs": list(arm.configs),
        "overrides": dict(arm.overrides),
        "parameters": _parameters(arm),
        "epochs": settings.epochs,
        "iterations": settings.epochs * sizes["training"],
        "train_wall_s": wall["train"],
        "score_wall_s": sum(v for k, v in wall.items() if k != "train"),
        "test": _scores(run_dir / "test"),
        "ood": _scores(run_dir / "ood"),
        "ood_recipes": _ood_results(run_dir, settings),
        "commands": {k: " ".join(v) for k, v in steps.items()},
    }
    _write_result(run_dir, result)
    return result


def _write_result(run_dir: Path, result: Mapping) -> None:
    text = json.dumps(_finite(result), indent=2) + "\n"
    write_atomically(run_dir / RESULT_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def missing_ood(run_dir: Path, settings: Settings) -> list[str]:
    """The OOD recipes that a finished run has not been scored on (a study re-run with more ``ood_recipes``)."""
    return _missing(json.loads((run_dir / RESULT_FILE).read_text(encoding="utf-8")), settings)


def _missing(result: Mapping, settings: Settings) -> list[str]:
    return [r for r in ood_recipes(settings) if r not in _scored(result)]


def _scored(result: Mapping) -> dict:
    """A result's scores per OOD recipe (runs from before ``ood_recipes`` have the study's own set only)."""
    return {OOD_RECIPE: result["ood"], **result.get("ood_recipes", {})}


def score_missing(
    arm: Arm, seed: int, run_dir: Path, settings: Settings, datalists: tuple[Path, Mapping[str, Path]], sizes: dict
) -> dict:
    """Scores a finished run's checkpoint on the OOD sets it lacks; rewrites ``result.json`` with them added.

    Raises:
        RuntimeError: when a bundle command fails, naming the log file.
    """
    result = json.loads((run_dir / RESULT_FILE).read_text(encoding="utf-8"))
    recipes = _missing(result, settings)
    every = commands(arm, seed, run_dir, settings, datalists)
    steps = {ood_folder(r): every[ood_folder(r)] for r in recipes}
    for step in steps:
        shutil.rmtree(run_dir / step, ignore_errors=True)  # an interrupted scoring: its folder starts empty
    wall = _run_steps(steps, run_dir, settings, f"{arm.name} seed {seed}")
    result["ood_recipes"] = _scored(result) | {r: _scores(run_dir / ood_folder(r)) for r in recipes}
    result["score_wall_s"] += sum(wall.values())
    result["commands"] = {**result["commands"], **{k: " ".join(v) for k, v in steps.items()}}
    _write_result(run_dir, result)
    return result


def _finite(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (NaN below two values) and count of the defined values."""
    defined = [v for v in values if v is not None and not math.isnan(v)]
    if not defined:
        return math.nan, math.nan, 0
    return statistics.fmean(defined), statistics.stdev(defined) if len(defined) > 1 else math.nan, len(defined)


def _ratio(ood: float | None, test: float | None) -> float | None:
    return None if ood is None or test is None or test == 0 else ood / test


def summarise(results: Sequence[Mapping]) -> list[dict]:
    """Per arm (in the order first met): mean, std and n over seeds of every score, ratio and cost."""
    arms: dict[str, list[Mapping]] = {}
    for r in results:
        arms.setdefault(r["arm"], []).append(r)
    rows = []
    for name, runs in arms.items():
        row = {"arm": name, "seeds": sorted(r["seed"] for r in runs), "parameters": runs[0]["parameters"]}
        row["iterations"] = runs[0]["iterations"]
        for where in ("test", "ood"):
            for key, _ in METRICS:
                row[f"{where}_{key}"] = mean_std([r[where].get(key) for r in runs])
        for key in ("dice_tc", "dice_edema"):
            row[f"ratio_{key}"] = mean_std([_ratio(r["ood"].get(key), r["test"].get(key)) for r in runs])
        # per OOD recipe, over the seeds scored on it: Dice, and Dice as a fraction of the same run's test split
        by_run = [(_scored(r), r["test"]) for r in runs]
        row["ood_recipes"] = {}
        for recipe in dict.fromkeys(recipe for scored, _ in by_run for recipe in scored):
            pairs = [(scored[recipe], test) for scored, test in by_run if recipe in scored]
            cells = {key: mean_std([ood.get(key) for ood, _ in pairs]) for key, _ in RECIPE_METRICS}
            for key, _ in RECIPE_METRICS:
                cells[f"ratio_{key}"] = mean_std([_ratio(ood.get(key), test.get(key)) for ood, test in pairs])
            row["ood_recipes"][recipe] = cells
        row["train_wall_s"] = mean_std([r["train_wall_s"] for r in runs])
        rows.append(row)
    return rows


def _pm(stat: tuple[float, float, int], digits: int = 3) -> str:
    mean, std, n = stat
    if n == 0:
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" +- {std:.{digits}f}")


def markdown(rows: Sequence[Mapping], header: str) -> str:
    """The summary tables: in-distribution test, OOD, and the OOD/in-distribution ratios with the cost."""
    names = [h for _, h in METRICS]
    lines = [header, ""]
    for where, title in (("test", "Held-out test split (in distribution)"), ("ood", "Out of distribution")):
        lines += [f"**{title}** (mean +- std over seeds; HD95 in mm)", ""]
        lines += ["| arm | seeds | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for row in rows:
            cells = [_pm(row[f"{where}_{k}"], 1 if k.startswith("hd95") else 3) for k, _ in METRICS]
            lines.append(f"| {row['arm']} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["**OOD / in-distribution and cost**", ""]
    lines += ["| arm | params (M) | iterations | TC Dice ratio | edema Dice ratio | training wall (min) |"]
    lines += ["|---|---|---|---|---|---|"]
    for row in rows:
        wall = row["train_wall_s"]
        minutes = (wall[0] / 60, wall[1] / 60, wall[2])
        lines.append(
            f"| {row['arm']} | {row['parameters'] / 1e6:.2f} | {row['iterations']} | {_pm(row['ratio_dice_tc'], 2)} "
            f"| {_pm(row['ratio_dice_edema'], 2)} | {_pm(minutes, 1)} |"
        )
    if any(len(row["ood_recipes"]) > 1 for row in rows):
        lines += ["", "**Out of distribution by recipe** (Dice; in brackets, as a fraction of the test split's)", ""]
        names = [h for _, h in RECIPE_METRICS]
        lines += ["| arm | recipe | seeds | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
        for row in rows:
            for recipe, cells in row["ood_recipes"].items():
                values = [f"{_pm(cells[k])} ({_pm(cells[f'ratio_{k}'], 2)})" for k, _ in RECIPE_METRICS]
                seeds = cells[RECIPE_METRICS[0][0]][2]
                lines.append(f"| {row['arm']} | {recipe} | {seeds} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def _runs_csv(results: Sequence[Mapping]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    keys = [k for k, _ in METRICS]
    header = ["arm", "seed", "parameters", "iterations", "train_wall_s", "score_wall_s"]
    writer.writerow(header + [f"test_{k}" for k in keys] + [f"ood_{k}" for k in keys])
    for r in results:
        values = [r[k] for k in header] + [r["test"].get(k) for k in keys] + [r["ood"].get(k) for k in keys]
        writer.writerow(["" if v is None else f"{v:.6g}" if isinstance(v, float) else v for v in values])
    return buffer.getvalue()


def write_summary(output: Path, arms: Sequence[Arm], header: str) -> list[dict]:
    """Collects every finished run of ``arms`` (any seed, from this or earlier invocations); writes
    ``study_runs.csv``, ``study.json`` and ``study.md``."""
    results = []
    for arm in arms:
        paths = (output / "runs" / arm.name).glob(f"seed*/{RESULT_FILE}")
        for path in sorted(paths, key=lambda p: int(p.parent.name.removeprefix("seed"))):
            results.append(json.loads(path.read_text(encoding="utf-8")))
    rows = summarise(results)
    files = {
        "study_runs.csv": _runs_csv(results),
        "study.json": json.dumps(_finite_rows(rows), indent=2) + "\n",
        "study.md": markdown(rows, header),
    }
    for name, text in files.items():
        write_atomically(output / name, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
    return rows


def _finite_rows(value):
    if isinstance(value, tuple):
        return [None if isinstance(x, float) and math.isnan(x) else x for x in value]
    if isinstance(value, dict):
        return {k: _finite_rows(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_rows(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refineformer3d.experiments.study",
        description="Train and score several networks at an equal budget over several seeds, in and out of "
        "distribution, through the bundle's own configs.",
    )
    parser.add_argument("--output", required=True, help="study folder (data, runs, tables); keep it out of git")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8, help="epochs; an epoch is one pass over the training split")
    parser.add_argument("--arms", nargs="+", default=[], metavar="FILE", help="JSON files of extra arms")
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME", help="run only these arms")
    parser.add_argument("--cases", type=int, default=40, help="labelled in-distribution studies (all splits)")
    parser.add_argument("--ood_cases", type=int, default=12, help="out-of-distribution test studies")
    parser.add_argument("--shape", type=int, nargs=3, default=[120, 120, 78], metavar=("X", "Y", "Z"))
    parser.add_argument("--roi_size", type=int, nargs=3, default=[64, 64, 64], metavar=("X", "Y", "Z"))
    parser.add_argument("--pixdim", type=float, nargs=3, default=[1.0, 1.0, 1.0], metavar=("X", "Y", "Z"))
    parser.add_argument("--contrast_jitter", type=float, default=0.0, help="randomise the training data's contrasts")
    parser.add_argument(
        "--ood_recipes",
        nargs="+",
        default=[],
        metavar="RECIPE",
        help="further OOD sets to score (same seed), e.g. default shifted:contrast shifted:tumours; finished runs "
        "are scored on the ones they lack",
    )
    parser.add_argument("--val_fraction", type=float, default=0.15)
    parser.add_argument("--test_fraction", type=float, default=0.25)
    parser.add_argument(
        "--arm_seeds",
        nargs="+",
        default=[],
        metavar="NAME=S,S",
        help="other seeds for an arm, e.g. segresnet=0 for a network too slow for all seeds",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--plan", action="store_true", help="print the runs still to do and exit")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further bundle --key value pairs")
    args = parser.parse_args(argv)
    try:
        arms = list(DEFAULT_ARMS) + [arm for path in args.arms for arm in load_arms(path)]
        names = [arm.name for arm in arms]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"arm names appear twice: {duplicates}")
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise ValueError(f"unknown arms {unknown}; known: {names}")
        known = arms
        if args.only:
            arms = [arm for arm in arms if arm.name in args.only]
        arm_seeds = {}
        for item in args.arm_seeds:
            name, _, values = item.partition("=")
            if name not in names or not values:
                raise ValueError(f"--arm_seeds {item!r}: expected NAME=S[,S...] with NAME one of {names}")
            arm_seeds[name] = [int(v) for v in values.split(",")]
        settings = Settings(
            output=Path(args.output).expanduser().absolute(),
            epochs=args.epochs,
            roi_size=tuple(args.roi_size),
            pixdim=tuple(args.pixdim),
            cases=args.cases,
            ood_cases=args.ood_cases,
            shape=tuple(args.shape),
            contrast_jitter=args.contrast_jitter,
            ood_recipes=tuple(args.ood_recipes),
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            threads=args.threads,
            extra=tuple(args.extra),
        )
        from refineformer3d.data.synthetic import check_recipe

        for recipe in settings.ood_recipes:
            check_recipe(recipe)
        todo = plan(arms, args.seeds, settings.output, arm_seeds)
        rescore = [
            (arm, seed, run_dir)
            for arm, seed, run_dir in plan(arms, args.seeds, settings.output, arm_seeds, finished=True)
            if missing_ood(run_dir, settings)
        ]
        if args.plan:
            for arm, seed, run_dir in todo:
                print(f"{arm.name} seed {seed}: {run_dir}")
            for arm, seed, run_dir in rescore:
                print(f"{arm.name} seed {seed}: score {missing_ood(run_dir, settings)} in {run_dir}")
            return 0
        settings.output.mkdir(parents=True, exist_ok=True)
        in_path, ood_paths, sizes = prepare_data(settings)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"studies per split: {sizes}; {len(todo)} runs to do, {len(rescore)} to score on more OOD sets", flush=True)
    failures = []
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = {
            pool.submit(step, arm, seed, run_dir, settings, (in_path, ood_paths), sizes): (arm, seed)
            for step, runs in ((score_missing, rescore), (run_one, todo))
            for arm, seed, run_dir in runs
        }
        for future in concurrent.futures.as_completed(futures):
            arm, seed = futures[future]
            try:
                result = future.result()
            except RuntimeError as error:
                failures.append(str(error))
                print(f"FAILED {error}", flush=True)
                continue
            print(
                f"done {arm.name} seed {seed}: {result['train_wall_s'] / 60:.1f} min; test TC/edema Dice "
                f"{result['test']['dice_tc']:.3f}/{result['test']['dice_edema']:.3f}, OOD "
                f"{result['ood']['dice_tc']:.3f}/{result['ood']['dice_edema']:.3f}",
                flush=True,
            )
    header = (
        f"Studies: {sizes['training']} training, {sizes['validation']} validation (model selection), "
        f"{sizes['testing']} test, {sizes['ood']} OOD ({settings.shape[0]}x{settings.shape[1]}x{settings.shape[2]} "
        f"half-size synthetic studies); crop {settings.roi_size[0]}^3, {settings.epochs} epochs = "
        f"{settings.epochs * sizes['training']} iterations per arm; command: "
        f"`python -m refineformer3d.experiments.study {' '.join(sys.argv[1:] if argv is None else argv)}`"
    )
    write_summary(settings.output, known, header)
    print(f"summary: {settings.output / 'study.md'}")
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
