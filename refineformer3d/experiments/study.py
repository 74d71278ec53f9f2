"""An equal-budget accuracy study: several networks, several seeds or cross-validation folds, the bundle's own
training and scoring.

Every arm (a network, optionally with overlays such as ``augment.json``) is trained by ``python -m monai.bundle run
training`` with the same studies, split, crop, epochs and iterations; the checkpoint is chosen on the validation split
only (the bundle's key metric); the chosen checkpoint then segments the held-out test split and an out-of-distribution
test set (other seed, the generator's ``shifted`` recipe) through ``evaluate.json``, which scores with the BraTS
challenge's package (:mod:`refineformer3d.evaluate`). Per run it writes the tables of both; over the runs, a CSV of
every run and a Markdown summary with mean +- std over seeds per arm. ``--ood_recipes`` scores further
out-of-distribution sets of the same seed, e.g. each part of the shifted recipe alone (``shifted:contrast``) and the
default recipe itself (new studies, no shift), so that a loss out of distribution can be traced to its cause; a
finished run only gets the sets it lacks scored.

Command lines::

    python -m refineformer3d.experiments.study --output DIR [--seeds 0 1 2] [--epochs 8] [--arms FILE ...] \\
        [--only NAME ...] [--cases 40 --ood_cases 12 --shape 120 120 78 --roi_size 64 64 64] \\
        [--jobs 2 --threads 1] [--plan] [--ood_recipes default shifted:contrast shifted:bias+slices ...]
    python -m refineformer3d.experiments.study --output DIR --folds fold0.json fold1.json fold2.json \\
        [--pixdim 2 2 2 --roi_size 64 64 64 --epochs 8] [--configs bundle/configs/regions.json] [--time_studies 1]

**Real folds** (``--folds``): each datalist (``training``, ``validation``, ``testing`` lists, as
``refineformer3d-datalist --num_folds K --fold F`` writes them) takes the place of a seed: its runs are
``DIR/runs/<arm>/fold<k>``, all trained with one seed (``--seeds S``, default 0), and the summary gives mean +- std
over folds. No study is generated and no OOD set is scored. Training reads the studies through
``persistent_cache.json``, in ``DIR/cache/<key>``: the deterministic transforms (loading, resampling, brain crop, N4)
run once per study for every arm and fold, and only arms that change those transforms beyond the settings the
overlay keys its folders by get a cache of their own. The default arms are the networks of the real-data study:
RefineFormer3D tiny and small, SegFormer3D, SegResNet, SegFormer 2-D B0 (``segformer2d.json``, on the study's crops)
and the lighter variants ``refineformer3d_tiny_axial``, ``refineformer3d_tiny_slices`` and ``refineformer3d_nano``.

**Cost per run.** Besides the scores, each run records its parameters, its training wall time and, once every run
has trained (one at a time, at ``--time_threads`` threads, default 2), the time per study through the bundle's own
inference path: :mod:`~refineformer3d.experiments.study_benchmark` runs ``inference.json`` (brain crop, N4, its
sliding-window inferer; the arm's network, overlays, ``roi_size`` and ``pixdim``; the run's ``model.pt``) on the
first ``--time_studies`` test studies in a fresh process and times each stage. GFLOP per study is the network's FLOPs
for one window (counted on the meta device, attention included: :func:`~refineformer3d.experiments.summary.
network_flops`) times the windows the inferer ran on the study. ``--time_studies`` defaults to 1 with ``--folds``
and to 0 (not timed) for synthetic studies; a finished run without the timing gets it on a later invocation.

Arms are a JSON list of ``{"name", "overrides": {bundle key: value}, "configs": [overlay files relative to the
repository], "description"}``; each override goes to ``monai.bundle run`` as ``--key value``. ``--configs`` adds
overlays to every arm (after ``train.json``, before the arm's own), e.g. ``regions.json`` so that enhancing tumour is
scored. A finished run (``DIR/runs/<arm>/seed<S>/result.json`` or ``fold<k>/result.json``) is skipped on a re-run, so
an interrupted study resumes where it stopped.

Synthetic studies are made affordable on a CPU: half-size studies (the brain scaled to fit 120 x 120 x 78 voxels of
"1 mm", i.e. about 2 mm resolution of a real brain; HD95 is in those voxels' mm) and 64^3 crops. Real studies are
resampled to ``--pixdim`` (2 mm in the real study, for the same reason).
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import csv
import hashlib
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
    ("hd95_et", "ET HD95"),
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
# SegFormer 2-D B0 as segformer2d.json configures it (every axial slice of a crop through MiT-B0, from scratch); the
# study's --roi_size replaces the overlay's 128 x 128 x 8 windows, so that it trains on the same crops as the 3-D arms.
SEGFORMER2D = Arm("segformer2d_b0", {}, ("bundle/configs/segformer2d.json",), "SegFormer 2-D B0 on every axial slice")
# The networks of the study on real folds (--folds): the compared networks and the lighter registered variants.
FOLD_ARMS = (
    *(arm for arm in DEFAULT_ARMS if arm.name in ("refineformer3d_tiny", "refineformer3d_small", "segformer3d")),
    next(arm for arm in DEFAULT_ARMS if arm.name == "segresnet"),
    SEGFORMER2D,
    *(
        Arm(name, _create_model(name), (), f"the lighter registered variant {name} (issue 33)")
        for name in ("refineformer3d_tiny_axial", "refineformer3d_tiny_slices", "refineformer3d_nano")
    ),
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
    over: str = "seed",
) -> list[tuple[Arm, int, Path]]:
    """The runs still to do, seed-major (every arm's first seed first, so a cut-short study has whole seeds).

    Args:
        seeds: the seeds, or with ``over="fold"`` the fold indices (each run folder is ``<over><value>``).
        arm_seeds: seeds (or folds) for particular arms (a slow network given fewer), instead of ``seeds``.
        finished: the finished runs instead.
    """
    arm_seeds = arm_seeds or {}
    every = sorted(set(seeds).union(*arm_seeds.values()))
    return [
        (arm, seed, output / "runs" / arm.name / f"{over}{seed}")
        for seed in every
        for arm in arms
        if seed in arm_seeds.get(arm.name, seeds)
        and (output / "runs" / arm.name / f"{over}{seed}" / RESULT_FILE).is_file() == finished
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
    configs: tuple[str, ...] = ()  # overlays for every arm, after train.json, e.g. ("bundle/configs/regions.json",)
    folds: tuple[Path, ...] = ()  # real-data mode: one datalist per fold instead of synthetic studies and seeds
    seed: int = 0  # the training seed of every fold (real-data mode)
    time_studies: int = 0  # test studies timed through inference.json per run (0: not timed)
    time_threads: int = 2


OOD_RECIPE = "shifted"  # the study's own out-of-distribution set


def ood_recipes(settings: Settings) -> list[str]:
    """Every OOD recipe a run is scored on, the study's own first; none on real folds."""
    if settings.folds:
        return []
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


def read_folds(paths: Sequence[Path]) -> list[dict]:
    """The number of studies per split of each fold's datalist (testing: the labelled ones, which are scored),
    checking that it can be trained and scored.

    Raises:
        ValueError: one line naming the file, for an unreadable datalist, a missing file, or a fold without
            training, validation (model selection) or labelled testing studies.
    """
    from refineformer3d.data import load_datalist

    sizes = []
    for path in paths:
        datalist = load_datalist(path)  # a DatasetError (a ValueError) names the file
        datalist["testing"] = [entry for entry in datalist["testing"] if "label" in entry]
        empty = [split for split in ("training", "validation", "testing") if not datalist[split]]
        if empty:
            raise ValueError(
                f"fold {path}: no {' and no '.join(empty)} studies; a fold needs training, validation (model "
                "selection) and labelled testing studies"
            )
        sizes.append({split: len(datalist[split]) for split in ("training", "validation", "testing")})
    return sizes


# Keys that cannot change what persistent_cache.json stores: the network and optimisation, inference-only settings,
# and the settings whose values already name its folders (read from the overlay itself).
_CACHE_FREE = {"network_def", "pretrained", "learning_rate", "weight_decay", "warmup_epochs", "val_interval"}
_CACHE_FREE |= {"loss", "optimizer", "lr_scheduler", "sw_batch_size", "sw_overlap", "epochs", "seed", "num_workers"}


def cache_folder(arm: Arm, settings: Settings) -> Path:
    """The persistent cache of an arm's training in real-data mode: ``cache/common`` for every arm whose deterministic
    transforms are those of ``train.json``, a folder named by a digest of the rest for arms that may change them.

    ``persistent_cache.json`` names its own folders by label scheme, ``pixdim``, ``roi_size`` and N4, since MONAI
    keys the files by the transforms' classes only; any other override or overlay key (the arm's, ``--configs`` or
    ``--extra``) might change a deterministic transform, so it leads to a cache of its own rather than to stale data.
    """
    overlay = json.loads((CONFIGS / "persistent_cache.json").read_text(encoding="utf-8"))
    free = _CACHE_FREE | {k for k in overlay["persistent_cache_dir"] if not k.startswith("_") and k != "root"}
    keys = {}
    for config in (*settings.configs, *arm.configs):
        keys |= {f"{config}:{k}": v for k, v in json.loads((REPO / config).read_text(encoding="utf-8")).items()}
    keys |= dict(arm.overrides) | dict(zip(settings.extra[::2], settings.extra[1::2], strict=False))
    relevant = {k: v for k, v in keys.items() if k.rpartition(":")[2].lstrip("-").split("#")[0] not in free}
    if not relevant:
        return settings.output / "cache" / "common"
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return settings.output / "cache" / digest


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
    """The bundle commands of one run: training, scoring the test split, scoring each OOD set (``ood`` first).

    On real folds training reads the studies through ``persistent_cache.json`` (see :func:`cache_folder`); scoring
    reads the test studies as ``evaluate.json`` does.
    """
    configs = ["bundle/configs/train.json", *settings.configs, *arm.configs]
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
    train_configs = configs
    if settings.folds:
        train_configs = [*configs, "bundle/configs/persistent_cache.json"]
        train += ["--cache_dir", str(cache_folder(arm, settings))]

    def scoring(datalist: Path, name: str) -> list[str]:
        arguments = ["--dataset_dir", str(datalist), "--ckpt_path", str(run_dir / "models" / "model.pt")]
        arguments += ["--output_dir", str(run_dir / name), *shared]
        return _bundle_command("evaluating", [*configs, "bundle/configs/evaluate.json"], arguments)

    steps = {"train": _bundle_command("training", train_configs, train), "test": scoring(datalists[0], "test")}
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
    scores |= {f"hd95_{r}": value(f"global_hd95_{r}") for r in ("wt", "tc", "et")}
    scores["dice_edema"] = _edema_dice(folder)
    return scores


def _network_parser(arm: Arm, settings: Settings):
    """The training config of ``arm`` (``train.json``, ``--configs``, the arm's overlays and overrides), parsed."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO / c) for c in ("bundle/configs/train.json", *settings.configs, *arm.configs)])
    parser.update(dict(arm.overrides))
    return parser


def _parameters(arm: Arm, settings: Settings) -> int:
    network = _network_parser(arm, settings).get_parsed_content("network_def")
    return sum(p.numel() for p in network.parameters())


def window_gflop(arm: Arm, settings: Settings) -> float | None:
    """GFLOP of one forward of the arm's network on one ``roi_size`` window, attention included (None where it
    cannot be counted completely)."""
    from refineformer3d.experiments.summary import network_flops

    parser = _network_parser(arm, settings)
    channels = parser.get_parsed_content("network_def#in_channels")
    _, flops = network_flops(
        lambda: parser.get_parsed_content("network_def", lazy=False), (1, channels, *settings.roi_size), cpu=False
    )
    return None if flops is None else flops / 1e9


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a word, as monai.bundle run's parser (fire) keeps it


def inference_overrides(arm: Arm, settings: Settings, checkpoint: Path) -> dict:
    """``inference.json`` keys for timing a run as a user would segment with it: the arm's network and the keys of
    its overlays, overrides and ``--extra`` that ``inference.json`` has (or that ``train.json`` lacks, which the
    network may reference, e.g. ``pretrained``), the study's ``roi_size`` and ``pixdim``, and the run's weights."""
    inference = json.loads((CONFIGS / "inference.json").read_text(encoding="utf-8"))
    train = json.loads((CONFIGS / "train.json").read_text(encoding="utf-8"))

    def wanted(key: str) -> bool:
        top = key.split("#")[0]
        return top in inference or top not in train and "#" not in key

    overrides = {}
    for config in (*settings.configs, *arm.configs):
        content = json.loads((REPO / config).read_text(encoding="utf-8"))
        overrides |= {k: v for k, v in content.items() if wanted(k)}
    overrides |= {"roi_size": list(settings.roi_size), "pixdim": list(settings.pixdim)}
    extra = {k.lstrip("-"): _literal(v) for k, v in zip(settings.extra[::2], settings.extra[1::2], strict=False)}
    overrides |= {k: v for k, v in extra.items() if wanted(k)}
    overrides |= {k: v for k, v in arm.overrides.items() if wanted(k)}
    return overrides | {"ckpt_path": str(checkpoint)}


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


def unit(settings: Settings) -> str:
    """What a study repeats each arm over, and its run folders' prefix: ``seed`` or, on real folds, ``fold``."""
    return "fold" if settings.folds else "seed"


def run_one(
    arm: Arm, value: int, run_dir: Path, settings: Settings, datalists: tuple[Path, Mapping[str, Path]], sizes: dict
) -> dict:
    """Trains and scores one (arm, seed), or on real folds one (arm, fold) with ``settings.seed``; writes
    ``result.json`` last, so a run with it is complete.

    Raises:
        RuntimeError: when a bundle command fails, naming the log file.
    """
    if run_dir.exists():  # an interrupted run: start it again from scratch
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    seed = settings.seed if settings.folds else value
    steps = commands(arm, seed, run_dir, settings, datalists)
    wall = _run_steps(steps, run_dir, settings, f"{arm.name} {unit(settings)} {value}")
    result = {"arm": arm.name, "seed": seed}
    if settings.folds:
        result |= {"fold": value, "datalist": str(datalists[0]), "studies": sizes}
    result |= {
        "description": arm.description,
        "configs": [*settings.configs, *arm.configs],
        "overrides": dict(arm.overrides),
        "parameters": _parameters(arm, settings),
        "epochs": settings.epochs,
        "iterations": settings.epochs * sizes["training"],
        "roi_size": list(settings.roi_size),
        "pixdim": list(settings.pixdim),
        "train_wall_s": wall["train"],
        "score_wall_s": sum(v for k, v in wall.items() if k != "train"),
        "test": _scores(run_dir / "test"),
    }
    if not settings.folds:
        result |= {"ood": _scores(run_dir / "ood"), "ood_recipes": _ood_results(run_dir, settings)}
    result["commands"] = {k: " ".join(v) for k, v in steps.items()}
    _write_result(run_dir, result)
    return result


def untimed(run_dir: Path) -> bool:
    """Whether a finished run lacks the time per study through the bundle's inference."""
    return "inference" not in json.loads((run_dir / RESULT_FILE).read_text(encoding="utf-8"))


def time_run(arm: Arm, run_dir: Path, settings: Settings, datalist: Path) -> dict:
    """Times a finished run's weights per study through ``inference.json`` (see the module's notes); adds
    ``inference`` to its ``result.json``: the stage seconds and windows of each timed study, their medians, and
    GFLOP per window and per study.

    Raises:
        RuntimeError: when the timing fails, naming the run.
    """
    from refineformer3d.experiments import study_benchmark

    overrides = inference_overrides(arm, settings, run_dir / "models" / "model.pt")
    segmentations = run_dir / "timing"
    shutil.rmtree(segmentations, ignore_errors=True)
    try:
        report = study_benchmark.study_benchmark(
            str(datalist),
            studies=settings.time_studies,
            threads=settings.time_threads,
            bundle_runs=False,
            overrides=overrides,
            segmentation_dir=str(segmentations),
        )
    except subprocess.CalledProcessError as error:
        tail = (error.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{arm.name} in {run_dir}: timing failed: {tail[0]}") from None
    timed = report["arms"]["after"]
    per_window = window_gflop(arm, settings)
    studies = timed["studies"]
    gflop = [None if per_window is None else per_window * row["windows"] for row in studies]
    result = json.loads((run_dir / RESULT_FILE).read_text(encoding="utf-8"))
    result["inference"] = {
        "config": "bundle/configs/inference.json",
        "overrides": overrides,
        "threads": settings.time_threads,
        "machine": report["machine"],
        "studies": studies,
        "study_s": timed["median"]["study"],
        "network_s": timed["median"]["network"],
        "windows": statistics.median(row["windows"] for row in studies),
        "gflop_per_window": per_window,
        "gflop_per_study": None if per_window is None else statistics.fmean(gflop),
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
    return ({OOD_RECIPE: result["ood"]} if "ood" in result else {}) | result.get("ood_recipes", {})


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


# Cost columns of a run timed through inference.json: (key of result["inference"], heading, digits).
COSTS = (
    ("gflop_per_study", "GFLOP / study", 1),
    ("network_s", "network s / study", 1),
    ("study_s", "inference s / study", 1),
)


def summarise(results: Sequence[Mapping]) -> list[dict]:
    """Per arm (in the order first met): mean, std and n over seeds (or folds) of every score, ratio and cost."""
    arms: dict[str, list[Mapping]] = {}
    for r in results:
        arms.setdefault(r["arm"], []).append(r)
    rows = []
    for name, runs in arms.items():
        over = "fold" if "fold" in runs[0] else "seed"
        row = {"arm": name, f"{over}s": sorted(r[over] for r in runs), "parameters": runs[0]["parameters"]}
        row["iterations"] = runs[0]["iterations"]
        for key, _ in METRICS:
            row[f"test_{key}"] = mean_std([r["test"].get(key) for r in runs])
        if all("ood" in r for r in runs):
            for key, _ in METRICS:
                row[f"ood_{key}"] = mean_std([r["ood"].get(key) for r in runs])
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
        for key, _, _ in COSTS:
            row[key] = mean_std([r["inference"][key] for r in runs if "inference" in r])
        rows.append(row)
    return rows


def _pm(stat: tuple[float, float, int], digits: int = 3) -> str:
    mean, std, n = stat
    if n == 0:
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" +- {std:.{digits}f}")


def _replicates(row: Mapping) -> list[int]:
    return row["folds"] if "folds" in row else row["seeds"]


def markdown(rows: Sequence[Mapping], header: str) -> str:
    """The summary tables: held-out test, and for synthetic studies OOD and the OOD/in-distribution ratios; the
    cost."""
    over = "folds" if any("folds" in row for row in rows) else "seeds"
    names = [h for _, h in METRICS]
    lines = [header, ""]
    tables = [("test", "Held-out test split (in distribution)")]
    if over == "folds":
        tables = [("test", "Held-out test studies of each fold")]
    elif all("ood_dice_wt" in row for row in rows):
        tables.append(("ood", "Out of distribution"))
    for where, title in tables:
        lines += [f"**{title}** (mean +- std over {over}; HD95 in mm)", ""]
        lines += [f"| arm | {over} | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for row in rows:
            cells = [_pm(row[f"{where}_{k}"], 1 if k.startswith("hd95") else 3) for k, _ in METRICS]
            lines.append(f"| {row['arm']} | {len(_replicates(row))} | " + " | ".join(cells) + " |")
        lines.append("")
    timed = any(row[COSTS[0][0]][2] for row in rows)
    costs = [(k, h) for k, h, _ in COSTS] if timed else []
    ratios = over == "seeds" and all("ratio_dice_tc" in row for row in rows)
    heads = ["params (M)", "iterations"] + (["TC Dice ratio", "edema Dice ratio"] if ratios else [])
    heads += [h for _, h in costs] + ["training wall (min)"]
    lines += ["**OOD / in-distribution and cost**" if ratios else "**Cost**", ""]
    lines += ["| arm | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for row in rows:
        wall = row["train_wall_s"]
        cells = [f"{row['parameters'] / 1e6:.2f}", str(row["iterations"])]
        if ratios:
            cells += [_pm(row["ratio_dice_tc"], 2), _pm(row["ratio_dice_edema"], 2)]
        cells += [_pm(row[key], digits) for key, _, digits in COSTS if costs]
        cells.append(_pm((wall[0] / 60, wall[1] / 60, wall[2]), 1))
        lines.append(f"| {row['arm']} | " + " | ".join(cells) + " |")
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


REGIONS = ("wt", "tc", "et")


def paired_differences(
    cases: Mapping[str, Mapping[str, Mapping[str, float | None]]], resamples: int = 10000, seed: int = 0
) -> dict[str, dict]:
    """Each arm against the best arm of each region, paired over the cases every arm scored.

    With a few folds the mean over folds hides how far apart two networks are on the same cases; pairing each case
    with itself takes the cases' own spread out. Per region, the best arm is the one with the highest mean Dice over
    the common cases; every arm's per-case difference to it is summarised by its mean and a percentile bootstrap
    interval (95 %, :func:`scipy.stats.bootstrap` with ``resamples`` draws of the cases, ``seed``; none for a single
    case).

    Args:
        cases: ``{arm: {case: {"wt": dice, "tc": ..., "et": ...}}}``; a missing or NaN Dice drops that case from the
            region.

    Returns:
        ``{region: {"best": arm, "cases": n, "arms": {arm: {"mean": d, "low": lo, "high": hi}}}}``.
    """
    import numpy as np
    from scipy.stats import bootstrap

    arms = list(cases)
    out: dict[str, dict] = {}
    for region in REGIONS:
        common = sorted(set.intersection(*(set(cases[a]) for a in arms))) if arms else []
        common = [c for c in common if all(_finite(cases[a][c].get(region)) is not None for a in arms)]
        if not common:
            continue
        table = np.array([[cases[a][c][region] for c in common] for a in arms], dtype=float)
        best = int(np.argmax(table.mean(axis=1)))
        rows = {}
        for i, arm in enumerate(arms):
            difference = table[i] - table[best]
            mean = float(difference.mean())
            if len(common) < 2:  # one case has no spread to resample
                rows[arm] = {"mean": mean, "low": None, "high": None}
                continue
            interval = bootstrap(
                (difference,),
                np.mean,
                n_resamples=resamples,
                method="percentile",
                random_state=np.random.default_rng(seed),
            ).confidence_interval
            rows[arm] = {"mean": mean, "low": float(interval.low), "high": float(interval.high)}
        out[region] = {"best": arms[best], "cases": len(common), "arms": rows}
    return out


def _case_scores(run_dirs: Sequence[Path]) -> dict[str, dict[str, float | None]]:
    """Per-case global Dice of the held-out cases of ``run_dirs`` (their ``test/brats_testing.json``)."""
    scores: dict[str, dict[str, float | None]] = {}
    for run_dir in run_dirs:
        path = run_dir / "test" / "brats_testing.json"
        if path.is_file():
            for case in json.loads(path.read_text(encoding="utf-8"))["cases"]:
                scores[case["case"]] = {r: _finite(case.get(f"global_dsc_{r}")) for r in REGIONS}
    return scores


def paired_markdown(paired: Mapping[str, Mapping]) -> str:
    """The paired table: each arm's mean per-case Dice difference to the region's best arm, in points, with its
    95 % interval."""
    regions = [r for r in REGIONS if r in paired]
    if not regions:
        return ""
    counts = ", ".join(f"{r.upper()} {paired[r]['cases']}" for r in regions)
    lines = [
        f"**Paired over the held-out cases** (Dice points against the region's best arm, mean over cases with a 95 % "
        f"bootstrap interval; cases: {counts})",
        "",
        "| arm | " + " | ".join(f"{r.upper()} - best" for r in regions) + " |",
        "|---|" + "---|" * len(regions),
    ]
    for arm in paired[regions[0]]["arms"]:
        cells = []
        for r in regions:
            if arm == paired[r]["best"]:
                cells.append("best")
                continue
            d = paired[r]["arms"][arm]
            interval = "" if d["low"] is None else f" [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
            cells.append(f"{100 * d['mean']:+.1f}{interval}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _runs_csv(results: Sequence[Mapping]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    keys = [k for k, _ in METRICS]
    folds = any("fold" in r for r in results)
    header = ["arm", *(["fold"] if folds else []), "seed", "parameters", "iterations", "train_wall_s", "score_wall_s"]
    where = ["test"] if folds else ["test", "ood"]
    costs = [k for k, _, _ in COSTS] + ["windows", "gflop_per_window"]
    writer.writerow(header + [f"{w}_{k}" for w in where for k in keys] + costs)
    for r in results:
        values = [r[k] for k in header] + [r[w].get(k) for w in where for k in keys]
        values += [r.get("inference", {}).get(k) for k in costs]
        writer.writerow(["" if v is None else f"{v:.6g}" if isinstance(v, float) else v for v in values])
    return buffer.getvalue()


def write_summary(output: Path, arms: Sequence[Arm], header: str, over: str = "seed") -> list[dict]:
    """Collects every finished run of ``arms`` (any seed, or with ``over="fold"`` any fold, from this or earlier
    invocations); writes ``study_runs.csv``, ``study.json`` and ``study.md``, and over folds the paired comparison
    of the held-out cases (:func:`paired_differences`) in ``study.md`` and ``study_paired.json``."""
    results = []
    for arm in arms:
        paths = (output / "runs" / arm.name).glob(f"{over}*/{RESULT_FILE}")
        for path in sorted(paths, key=lambda p: int(p.parent.name.removeprefix(over))):
            results.append(json.loads(path.read_text(encoding="utf-8")))
    rows = summarise(results)
    summary = markdown(rows, header)
    files = {"study_runs.csv": _runs_csv(results), "study.json": json.dumps(_finite_rows(rows), indent=2) + "\n"}
    if over == "fold":
        cases = {}
        for arm in arms:
            scores = _case_scores(sorted((output / "runs" / arm.name).glob("fold*")))
            if scores:
                cases[arm.name] = scores
        paired = paired_differences(cases)
        if paired:
            summary += "\n" + paired_markdown(paired)
            files["study_paired.json"] = json.dumps(paired, indent=2) + "\n"
    files["study.md"] = summary
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


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _score(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def _synthetic_options(args: argparse.Namespace) -> list[str]:
    """The synthetic-study options given on the command line (None when not given)."""
    names = ("cases", "ood_cases", "shape", "contrast_jitter", "ood_recipes", "val_fraction", "test_fraction")
    return [f"--{name}" for name in names if getattr(args, name) is not None]


def _check_networks(arms: Sequence[Arm]) -> None:
    """Each arm built by ``create_model`` names a registered network (before hours of other arms' training)."""
    from refineformer3d.networks import list_models

    for arm in arms:
        name = arm.overrides.get("network_def#name")
        if arm.overrides.get("network_def#_target_", "").endswith("create_model") and name not in list_models():
            raise ValueError(f"arm {arm.name}: {name!r} is not a registered network; known: {list_models()}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refineformer3d.experiments.study",
        description="Train and score networks at an equal budget through the bundle's configs, over seeds on "
        "synthetic studies or over real cross-validation folds.",
    )
    parser.add_argument("--output", required=True, help="study folder (data, runs, tables); keep it out of git")
    parser.add_argument(
        "--folds",
        nargs="+",
        type=Path,
        default=[],
        metavar="FILE",
        help="real data: one datalist JSON per fold (training, validation, testing); each fold takes a seed's place",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="default 0 1 2; with --folds one training seed, default 0"
    )
    parser.add_argument("--epochs", type=int, default=8, help="epochs; an epoch is one pass over the training split")
    parser.add_argument("--arms", nargs="+", default=[], metavar="FILE", help="JSON files of extra arms")
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME", help="run only these arms")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=[],
        metavar="FILE",
        help="overlays for every arm after train.json, relative to the repository, e.g. bundle/configs/regions.json",
    )
    synthetic = parser.add_argument_group("synthetic studies (not with --folds)")
    synthetic.add_argument("--cases", type=int, help="labelled in-distribution studies, all splits (default 40)")
    synthetic.add_argument("--ood_cases", type=int, help="out-of-distribution test studies (default 12)")
    synthetic.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), help="default 120 120 78")
    synthetic.add_argument("--contrast_jitter", type=float, help="randomise the training data's contrasts")
    synthetic.add_argument(
        "--ood_recipes",
        nargs="+",
        metavar="RECIPE",
        help="further OOD sets to score (same seed), e.g. default shifted:contrast shifted:tumours; finished runs "
        "are scored on the ones they lack",
    )
    synthetic.add_argument("--val_fraction", type=float, help="default 0.15")
    synthetic.add_argument("--test_fraction", type=float, help="default 0.25")
    parser.add_argument("--roi_size", type=int, nargs=3, default=[64, 64, 64], metavar=("X", "Y", "Z"))
    parser.add_argument("--pixdim", type=float, nargs=3, default=[1.0, 1.0, 1.0], metavar=("X", "Y", "Z"))
    parser.add_argument(
        "--arm_seeds",
        nargs="+",
        default=[],
        metavar="NAME=S,S",
        help="other seeds (with --folds: folds, counted from 0) for an arm, e.g. segresnet=0 for a slow network",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument(
        "--time_studies",
        type=int,
        default=None,
        help="test studies per run timed through inference.json after training (default 1 with --folds, else 0)",
    )
    parser.add_argument("--time_threads", type=int, default=2, help="torch threads of the timing (runs one at a time)")
    parser.add_argument("--plan", action="store_true", help="print the runs still to do and exit")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further bundle --key value pairs")
    args = parser.parse_args(argv)
    folds = tuple(path.expanduser().absolute() for path in args.folds)
    over = "fold" if folds else "seed"
    try:
        if folds and _synthetic_options(args):
            raise ValueError(f"{', '.join(_synthetic_options(args))}: synthetic-study options; a fold fixes the split")
        if folds and args.seeds is not None and len(args.seeds) != 1:
            raise ValueError(f"--seeds {args.seeds}: with --folds the folds are the replicates; give one seed")
        seeds = args.seeds if args.seeds is not None else [0] if folds else [0, 1, 2]
        arms = list(FOLD_ARMS if folds else DEFAULT_ARMS) + [arm for path in args.arms for arm in load_arms(path)]
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
        missing = [c for c in args.configs if not (REPO / c).is_file()]
        if missing:
            raise ValueError(f"--configs {missing[0]}: no such file in {REPO}")
        values = list(range(len(folds))) if folds else seeds
        arm_seeds = {}
        for item in args.arm_seeds:
            name, _, given = item.partition("=")
            if name not in names or not given:
                raise ValueError(f"--arm_seeds {item!r}: expected NAME=S[,S...] with NAME one of {names}")
            arm_seeds[name] = [int(v) for v in given.split(",")]
            if folds and not set(arm_seeds[name]) <= set(values):
                raise ValueError(f"--arm_seeds {item!r}: folds are numbered {values}")
        settings = Settings(
            output=Path(args.output).expanduser().absolute(),
            epochs=args.epochs,
            roi_size=tuple(args.roi_size),
            pixdim=tuple(args.pixdim),
            threads=args.threads,
            extra=tuple(args.extra),
            configs=tuple(args.configs),
            folds=folds,
            seed=seeds[0],
            time_studies=args.time_studies if args.time_studies is not None else 1 if folds else 0,
            time_threads=args.time_threads,
            **{
                key: value if not isinstance(value, list) else tuple(value)
                for key in ("cases", "ood_cases", "shape", "contrast_jitter", "ood_recipes")
                + ("val_fraction", "test_fraction")
                if (value := getattr(args, key)) is not None
            },
        )
        if folds:
            fold_sizes = read_folds(folds)
        else:
            from refineformer3d.data.synthetic import check_recipe

            for recipe in settings.ood_recipes:
                check_recipe(recipe)
        todo = plan(arms, values, settings.output, arm_seeds, over=over)
        finished = plan(arms, values, settings.output, arm_seeds, finished=True, over=over)
        rescore = [(arm, seed, run_dir) for arm, seed, run_dir in finished if missing_ood(run_dir, settings)]
        retime = [run for run in finished if settings.time_studies and untimed(run[2])]
        if args.plan:
            for arm, value, run_dir in todo:
                print(f"{arm.name} {over} {value}: {run_dir}")
            for arm, value, run_dir in rescore:
                print(f"{arm.name} {over} {value}: score {missing_ood(run_dir, settings)} in {run_dir}")
            for arm, value, run_dir in retime:
                print(f"{arm.name} {over} {value}: time in {run_dir}")
            return 0
        _check_networks({arm.name: arm for arm, _, _ in todo + retime}.values())
        settings.output.mkdir(parents=True, exist_ok=True)
        if folds:
            datalists = {k: (path, {}) for k, path in enumerate(folds)}
            sizes = dict(enumerate(fold_sizes))
        else:
            in_path, ood_paths, study_sizes = prepare_data(settings)
            datalists = dict.fromkeys(values, (in_path, ood_paths))
            sizes = dict.fromkeys(values, study_sizes)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    what = _count(len(folds), "fold") if folds else f"studies per split: {sizes[values[0]]}"
    print(f"{what}; {len(todo)} runs to do, {len(rescore)} to score on more OOD sets", flush=True)
    failures = []
    trained = []
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = {
            pool.submit(step, arm, value, run_dir, settings, datalists[value], sizes[value]): (arm, value, run_dir)
            for step, runs in ((score_missing, rescore), (run_one, todo))
            for arm, value, run_dir in runs
        }
        for future in concurrent.futures.as_completed(futures):
            arm, value, run_dir = futures[future]
            try:
                result = future.result()
            except RuntimeError as error:
                failures.append(str(error))
                print(f"FAILED {error}", flush=True)
                continue
            trained.append((arm, value, run_dir))
            test = result["test"]
            scores = "test WT/TC/ET Dice " + "/".join(_score(test[f"dice_{r}"]) for r in ("wt", "tc", "et"))
            if "ood" in result:
                scores += (
                    f", OOD TC/edema Dice {_score(result['ood']['dice_tc'])}/{_score(result['ood']['dice_edema'])}"
                )
            print(f"done {arm.name} {over} {value}: {result['train_wall_s'] / 60:.1f} min; {scores}", flush=True)
    # timed one at a time after every training, so that no run shares the CPU with another
    timing = retime + [run for run in trained if settings.time_studies and untimed(run[2])]
    for arm, value, run_dir in timing:
        try:
            result = time_run(arm, run_dir, settings, datalists[value][0])
        except RuntimeError as error:
            failures.append(str(error))
            print(f"FAILED {error}", flush=True)
            continue
        cost = result["inference"]
        print(
            f"timed {arm.name} {over} {value}: {cost['study_s']:.1f} s per study ({cost['network_s']:.1f} s network, "
            f"{cost['windows']:g} windows)",
            flush=True,
        )
    command = f"`python -m refineformer3d.experiments.study {' '.join(sys.argv[1:] if argv is None else argv)}`"
    if folds:
        splits = ", ".join(
            f"{path.name} {s['training']}/{s['validation']}/{s['testing']}"
            for path, s in zip(folds, fold_sizes, strict=True)
        )
        header = (
            f"Real studies, {_count(len(folds), 'fold')} (training/validation/test studies: {splits}); resampled to "
            f"{'x'.join(f'{v:g}' for v in settings.pixdim)} mm, crop {'x'.join(map(str, settings.roi_size))}, "
            f"{_count(settings.epochs, 'epoch')} (one iteration per training study each), seed {settings.seed}; time "
            f"per study through inference.json at {_count(settings.time_threads, 'thread')} on the first "
            f"{_count(settings.time_studies, 'test study', 'test studies')} of each fold; command: {command}"
        )
    else:
        s = sizes[values[0]]
        header = (
            f"Studies: {s['training']} training, {s['validation']} validation (model selection), "
            f"{s['testing']} test, {s['ood']} OOD ({settings.shape[0]}x{settings.shape[1]}x{settings.shape[2]} "
            f"half-size synthetic studies); crop {settings.roi_size[0]}^3, {settings.epochs} epochs = "
            f"{settings.epochs * s['training']} iterations per arm; command: {command}"
        )
    write_summary(settings.output, known, header, over)
    print(f"summary: {settings.output / 'study.md'}")
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
