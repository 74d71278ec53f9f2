"""Time per study through the bundle's own inference, by stage: what a user waits for, not a forward pass.

Usage::

    python -m refineformer3d.experiments.benchmark --study runs/cv/fold0.json --studies 3 \
        --before_config old_inference.json --output study_benchmark

Each arm (``after``: the bundle's ``inference.json``; ``before``: ``--before_config``, e.g. the file of the last
release) runs in its own fresh Python process, one after the other, at ``--threads`` threads:

* **start-up**: from launching the process to a network ready to run (imports, the config parsed, the checkpoint
  loaded), split into ``import torch``, ``import monai`` and the rest;
* **per study**, with the config's own objects in the order its evaluator uses them (``preprocessing`` transform by
  transform, the batch collated, ``inferer`` on ``network``, the output decollated, ``postprocessing`` transform by
  transform), each stage timed: loading and resampling, N4, the crop and normalisation, the network, the
  post-processing (activation, labels, inversion, lesion clean-up) and writing; with the shape of the network's input
  and the windows the inferer ran on it. The median over the studies is reported, and the segmentations are the ones
  the bundle writes (the test compares them); each study's row is also appended to ``stage_seconds.jsonl`` beside
  them as it finishes;
* **the bundle itself** (``--bundle_runs``): ``python -m monai.bundle run`` on one study and on all of them, each
  in a fresh process with the config's own ``num_workers``: the single study with its start-up as a user waits for
  it, and the marginal time of a study in a batch, ``(all - one) / (n - 1)``.

**Networks through the same path** (``--models``): one arm per network and per ``--sw_batch_sizes`` windows per batch,
each in its own fresh process with the bundle's ``inference.json`` and only the network (and its weights) swapped, as
the study harness swaps it (:func:`refineformer3d.experiments.study.inference_overrides`; SegResNet and SegFormer 2-D
by their arms' names). Per network: parameters, FLOPs of one window and of the windows the inferer ran per study,
the network stage at each batching (median over the studies) and the best, its achieved GFLOP/s beside the
machine's measured fp32 matmul peak and the physical limit FLOPs / peak, and the whole study at the best batching.
A network without ``--checkpoint NAME=PATH`` runs with its random initial weights: the network stage does not depend
on them, the post-processing (lesion clean-up) does, so its study total is marked.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "STAGES",
    "stage_of",
    "measure_arm",
    "bundle_wall",
    "study_benchmark",
    "format_markdown",
    "network_benchmark",
    "format_network_markdown",
    "run",
]

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"
STAGES = ("load and resample", "N4", "crop and normalise", "network", "post-processing", "writing")
_LOADING = {"LoadStudyd", "LoadImaged", "EnsureChannelFirstd", "Orientationd", "Spacingd", "PathSafeSpacingd"}


def stage_of(transform: object, postprocessing: bool) -> str:
    """The stage a transform of ``preprocessing`` or ``postprocessing`` belongs to."""
    name = type(transform).__name__
    if postprocessing:
        return "writing" if name == "SaveImaged" else "post-processing"
    if name == "BiasFieldCorrectiond":
        return "N4"
    return "load and resample" if name in _LOADING else "crop and normalise"


def _flat(transform: Any) -> list[Any]:
    from monai.transforms import Compose

    return transform.flatten().transforms if isinstance(transform, Compose) else [transform]


def measure_arm(
    config_file: str | os.PathLike,
    source: str,
    output_dir: str,
    studies: int,
    threads: int,
    overrides: dict[str, Any] | None = None,
    launched: float | None = None,
) -> dict[str, Any]:
    """Start-up and per-study stage times of one config in this process (see the module's notes)."""
    t0 = time.time()
    import torch

    t_torch = time.time()
    import monai
    from monai.bundle import ConfigParser

    t_monai = time.time()
    torch.set_num_threads(threads)
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.update(
        {"bundle_root": str(CONFIGS.parent), "dataset_dir": source, "output_dir": output_dir, "overwrite": True}
    )
    parser.update(overrides or {})
    datalist = parser.get_parsed_content("datalist")[:studies]
    evaluator = parser.get_parsed_content("evaluator")
    parser.get_parsed_content("checkpoint_loader")(evaluator)
    network, inferer = parser.get_parsed_content("network"), parser.get_parsed_content("inferer")
    preprocessing = _flat(parser.get_parsed_content("preprocessing"))
    postprocessing = _flat(parser.get_parsed_content("postprocessing"))
    device = parser.get_parsed_content("device")
    ready = time.time()

    from monai.data import decollate_batch, list_data_collate
    from monai.transforms import apply_transform

    # the windows the inferer hands the network (a batch of sw_batch_size windows is one call), for FLOPs per study
    windows: list[int] = []
    network.register_forward_pre_hook(lambda module, args: windows.append(args[0].shape[0]))
    rows = []
    for item in datalist:
        seconds = dict.fromkeys(STAGES, 0.0)
        windows.clear()
        data = dict(item)
        for transform in preprocessing:
            start = time.perf_counter()
            data = apply_transform(transform, data)
            seconds[stage_of(transform, False)] += time.perf_counter() - start
        start = time.perf_counter()
        batch = list_data_collate([data])
        inputs, _ = evaluator.prepare_batch(batch, device, evaluator.non_blocking)
        with evaluator.mode(network), torch.autocast("cuda", **evaluator.amp_kwargs, enabled=evaluator.amp):
            pred = inferer(inputs, network)
        seconds["network"] += time.perf_counter() - start
        # as the evaluator's ITERATION_COMPLETED does: the batch and the output decollated, then merged
        outputs = decollate_batch({"image": inputs, "label": None, "pred": pred}, detach=True)
        for sample, output in zip(decollate_batch(batch, detach=True), outputs):
            result = {**sample, **output}
            for transform in postprocessing:
                start = time.perf_counter()
                result = apply_transform(transform, result)
                seconds[stage_of(transform, True)] += time.perf_counter() - start
        study = str(item.get("case") or Path(str(item["image"][0])).parent.name)
        rows.append({"study": study, "shape": list(inputs.shape[2:]), "windows": sum(windows), **seconds})
        with open(Path(output_dir, "stage_seconds.jsonl"), "a") as log:  # kept when a long run is stopped
            log.write(json.dumps(rows[-1]) + "\n")
    start_up = {
        "process start": (t0 - launched) if launched is not None else None,
        "import torch": t_torch - t0,
        "import monai": t_monai - t_torch,
        "config, network and checkpoint": ready - t_monai,
    }
    start_up["total"] = (ready - launched) if launched is not None else ready - t0
    return {"monai": monai.__version__, "threads": threads, "start_up": start_up, "studies": rows}


def bundle_wall(
    config_file: str | os.PathLike, source: str, output_dir: str, threads: int, overrides: dict[str, Any] | None = None
) -> float:
    """Wall seconds of ``python -m monai.bundle run`` with ``config_file`` on ``source``, in a fresh process."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(config_file),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--logging_file",
        str(CONFIGS / "logging.conf"),
        "--bundle_root",
        str(CONFIGS.parent),
        "--dataset_dir",
        source,
        "--output_dir",
        output_dir,
        "--overwrite",
        "True",
    ]
    for key, value in (overrides or {}).items():
        command += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def _subset(source: str, studies: int, folder: Path) -> tuple[str, str]:
    """Datalists of the first study and of the first ``studies`` of ``source``, as the bundle lists them."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"dataset_dir": source, "output_dir": str(folder / "listing"), "overwrite": True})
    items = parser.get_parsed_content("datalist")[:studies]
    paths = []
    for name, subset in (("one", items[:1]), ("all", items)):
        path = folder / "lists" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        plain = [{k: v for k, v in item.items() if isinstance(v, (str, list, int, float))} for item in subset]
        files = [f for item in plain for f in (item["image"] if isinstance(item["image"], list) else [item["image"]])]
        root = os.path.commonpath([os.path.dirname(f) for f in files])  # a datalist's files lie under its dataset_dir
        path.write_text(json.dumps({"dataset_dir": root, "testing": plain}, indent=1))
        paths.append(str(path))
    return paths[0], paths[1]


def _with_medians(result: dict[str, Any], config: str) -> dict[str, Any]:
    result["config"] = config
    result["median"] = {s: statistics.median(r[s] for r in result["studies"]) for s in STAGES}
    result["median"]["study"] = statistics.median(sum(r[s] for s in STAGES) for r in result["studies"])
    return result


def _measure_in_process(
    config: str, source: str, output_dir: str, studies: int, threads: int, overrides: dict[str, Any] | None
) -> dict[str, Any]:
    """:func:`measure_arm` in a fresh Python process (its start-up is the user's), with the medians over studies."""
    launched = time.time()
    out = subprocess.run(
        [sys.executable, "-m", __name__, "--_arm", config, "--_source", source, "--studies", str(studies)]
        + ["--threads", str(threads), "--_output", output_dir, "--_launched", str(launched)]
        + ["--_overrides", json.dumps(overrides or {})],
        check=True,
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads)),
    )
    return _with_medians(json.loads(out.stdout.strip().splitlines()[-1]), config)


def study_benchmark(
    source: str,
    studies: int = 3,
    threads: int = 2,
    before_config: str | None = None,
    after_config: str | None = None,
    bundle_runs: bool = True,
    overrides: dict[str, Any] | None = None,
    segmentation_dir: str | None = None,
) -> dict[str, Any]:
    """Both arms measured one after the other, each in fresh processes; the report as a dict.

    ``overrides`` (config keys, e.g. ``ckpt_path``) apply to both arms; ``segmentation_dir`` keeps each arm's
    segmentations in ``segmentation_dir/<arm>`` (for scoring with ``refineformer3d-evaluate``).
    """
    from refineformer3d.experiments.benchmark import machine_facts

    arms = {"after": str(after_config or CONFIGS / "inference.json")}
    if before_config:
        arms = {"before": str(before_config), **arms}
    report: dict[str, Any] = {"machine": machine_facts(threads), "source": source, "arms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        one, everything = _subset(source, studies, folder)
        for arm, config in arms.items():
            written = Path(segmentation_dir, arm) if segmentation_dir else folder / arm / "stages"
            result = _measure_in_process(config, everything, str(written.absolute()), studies, threads, overrides)
            if bundle_runs:
                wall_one = bundle_wall(config, one, str(folder / arm / "one"), threads, overrides)
                wall_all = bundle_wall(config, everything, str(folder / arm / "all"), threads, overrides)
                n = len(result["studies"])
                result["bundle"] = {
                    "one study with start-up": wall_one,
                    f"{n} studies": wall_all,
                    "marginal per study": (wall_all - wall_one) / (n - 1) if n > 1 else None,
                }
            report["arms"][arm] = result
    return report


def network_overrides(name: str, overlays: Sequence[str] = ()) -> dict[str, Any]:
    """``inference.json`` keys that swap in network ``name``, as the study harness swaps it for timing its runs.

    ``name`` is an arm of the study harness (``segresnet``, ``segformer2d_b0``, ...) or a registered network.

    Raises:
        ValueError: for a name that is neither, listing the known ones.
    """
    from types import SimpleNamespace

    from refineformer3d.experiments import study
    from refineformer3d.networks import is_model, list_models

    arms = {arm.name: arm for arm in (*study.DEFAULT_ARMS, *study.FOLD_ARMS)}
    if name in arms:
        arm = arms[name]
    elif is_model(name):
        swap = {"network_def#_target_": "refineformer3d.networks.create_model", "network_def#name": name}
        arm = study.Arm(name, swap)
    else:
        known = sorted(set(arms) | set(list_models()))
        raise ValueError(f"--models {name}: not a registered network or study arm ({', '.join(known)})")
    inference = json.loads((CONFIGS / "inference.json").read_text(encoding="utf-8"))
    settings = SimpleNamespace(
        configs=tuple(overlays), roi_size=tuple(inference["roi_size"]), pixdim=tuple(inference["pixdim"]), extra=()
    )
    overrides = study.inference_overrides(arm, settings, Path("unused"))
    del overrides["ckpt_path"]
    return overrides


def _network_facts(overrides: dict[str, Any], weights: Path | None) -> dict[str, Any]:
    """Parameters and FLOPs of one window of the network ``overrides`` configure; saves its initial weights to
    ``weights`` when given (for a network timed without a checkpoint)."""
    from monai.bundle import ConfigParser

    from refineformer3d.experiments.summary import network_flops

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"bundle_root": str(CONFIGS.parent), "device": "$torch.device('cpu')", **overrides})
    network = parser.get_parsed_content("network_def").eval()
    if weights is not None:
        import torch

        torch.save(network.state_dict(), weights)
    roi = [int(v) for v in parser.get_parsed_content("roi_size")]
    shape = (1, int(parser.get_parsed_content("network_def#in_channels")), *roi)
    # counted on the meta device, where attention decomposes into counted products (the CPU's fused kernel would not)
    _, flops = network_flops(lambda: parser.get_parsed_content("network_def", lazy=False), shape, cpu=False)
    params = sum(p.numel() for p in network.parameters())
    return {"params_m": params / 1e6, "gflop_window": (flops or 0.0) / 1e9, "roi": roi}


def network_benchmark(
    source: str,
    models: Sequence[str],
    sw_batch_sizes: Sequence[int] = (1, 2),
    studies: int = 3,
    threads: int = 2,
    overlays: Sequence[str] = (),
    checkpoints: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
    matmul_sizes: Sequence[int] = (2048, 4096),
    matmul_repeats: int = 5,
    in_process: bool = False,
) -> dict[str, Any]:
    """Each network through the bundle's inference at each windows-per-batch (see the module's notes); the report.

    ``overrides`` apply to every arm after the network's own keys; ``in_process`` measures in this process (tests),
    not in a fresh one per arm.

    Raises:
        ValueError: for an unknown network, or a checkpoint of a network not measured or not a file.
    """
    import torch

    from refineformer3d.experiments.benchmark import machine_facts, matmul_peak

    checkpoints = dict(checkpoints or {})
    for name, path in checkpoints.items():
        if name not in models:
            raise ValueError(f"--checkpoint {name}={path}: {name} is not among --models")
        if not Path(path).is_file():
            raise ValueError(f"--checkpoint {name}={path}: no such file")
    swaps = {name: network_overrides(name, overlays) for name in models}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        peak = matmul_peak(matmul_sizes, matmul_repeats)
    finally:
        torch.set_num_threads(previous)
    report: dict[str, Any] = {
        "machine": machine_facts(threads),
        "matmul_peak": peak,
        "source": source,
        "studies": studies,
        "sw_batch_sizes": list(sw_batch_sizes),
        "overlays": list(overlays),
        "networks": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _, everything = _subset(source, studies, folder)
        for name in models:
            weights = None if name in checkpoints else folder / f"{name}-initial.pt"
            keys = {**swaps[name], **(overrides or {})}
            entry = _network_facts(keys, weights)
            entry["checkpoint"] = checkpoints.get(name)
            entry["arms"] = {}
            for batch in sw_batch_sizes:
                arm_keys = {**keys, "sw_batch_size": batch, "ckpt_path": str(checkpoints.get(name, weights))}
                written = str((folder / name / str(batch)).absolute())
                if in_process:
                    result = _with_medians(
                        measure_arm(CONFIGS / "inference.json", everything, written, studies, threads, arm_keys),
                        str(CONFIGS / "inference.json"),
                    )
                    torch.set_num_threads(previous)
                else:
                    result = _measure_in_process(
                        str(CONFIGS / "inference.json"), everything, written, studies, threads, arm_keys
                    )
                result["windows"] = statistics.median(r["windows"] for r in result["studies"])
                entry["arms"][str(batch)] = result
            best = min(entry["arms"], key=lambda b: entry["arms"][b]["median"]["network"])
            entry["best_sw_batch_size"] = int(best)
            network_s = entry["arms"][best]["median"]["network"]
            entry["network_s"] = network_s
            entry["study_s"] = entry["arms"][best]["median"]["study"]
            entry["gflop_study"] = entry["gflop_window"] * entry["arms"][best]["windows"]
            entry["gflops"] = entry["gflop_study"] / network_s if network_s else None
            entry["of_peak"] = entry["gflops"] / peak["gflops"] if entry["gflops"] else None
            entry["limit_s"] = entry["gflop_study"] / peak["gflops"]
            report["networks"][name] = entry
    reference = report["networks"].get("segformer3d")
    for entry in report["networks"].values():
        entry["network_ratio"] = entry["network_s"] / reference["network_s"] if reference else None
        entry["study_ratio"] = entry["study_s"] / reference["study_s"] if reference else None
    return report


def format_network_markdown(report: dict[str, Any]) -> str:
    """The network mode's table: one row per network at its best batching, with the times at each batching."""
    machine, peak, batches = report["machine"], report["matmul_peak"], report["sw_batch_sizes"]
    header = ["network", "params (M)", "GFLOP per window", "windows", "GFLOP per study"]
    header += [f"network, {b} per batch (s)" for b in batches]
    header += ["network, best (s)", "/ SegFormer3D", "GFLOP/s", "of peak", "limit FLOPs/peak (s)", "study (s)"]
    header += ["study / SegFormer3D"]
    lines = [
        f"{machine['date']}; {machine['cpu']} ({machine['logical_cpus']} logical CPUs); threads: "
        f"{machine['threads']}; torch {machine['torch']}; {machine['platform']}. Measured fp32 matmul peak: "
        f"{peak['gflops']:.1f} GFLOP/s (torch.mm of {peak['size']}^2 matrices).",
        "",
        f"Studies: the first {report['studies']} of `{report['source']}`, through the bundle's `inference.json` "
        "with the network swapped"
        + (f" (overlays: {', '.join(f'`{o}`' for o in report['overlays'])})" if report["overlays"] else "")
        + "; each network and batching in a fresh process; medians over the studies.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    random = False
    for name, e in report["networks"].items():
        windows = e["arms"][str(e["best_sw_batch_size"])]["windows"]
        cells = [f"{e['params_m']:.3f}", f"{e['gflop_window']:.2f}", f"{windows:g}", f"{e['gflop_study']:.1f}"]
        cells += [_fmt(e["arms"][str(b)]["median"]["network"]) for b in batches]
        cells.append(f"{e['network_s']:.2f} ({e['best_sw_batch_size']})")
        cells.append(_fmt(e["network_ratio"]))
        cells += [f"{e['gflops']:.1f}" if e["gflops"] else "", f"{100 * e['of_peak']:.0f} %" if e["of_peak"] else ""]
        cells += [_fmt(e["limit_s"]), _fmt(e["study_s"]) + ("" if e["checkpoint"] else " *"), _fmt(e["study_ratio"])]
        random = random or not e["checkpoint"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The network stage is the inferer's call on the cropped brain (all its windows); GFLOP per study counts those "
        "windows (attention included, norms and activations not); the limit is that work at the matmul peak. The "
        "study is the sum of the stages (loading, N4, crop, network, post-processing, writing) at the best batching.",
    ]
    if random:
        lines.append("\\* random initial weights: the post-processing, and so the study, may differ with trained ones.")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def format_markdown(report: dict[str, Any]) -> str:
    """The report's tables: stages (median over studies), start-up and the bundle's own runs, per arm."""
    arms = report["arms"]
    names = list(arms)
    machine = report["machine"]
    ratio = "before" in arms and "after" in arms
    header = ["stage", *[f"{a} (s)" for a in names]] + (["after / before"] if ratio else [])
    lines = [
        f"{machine['date']}; {machine['cpu']} ({machine['logical_cpus']} logical CPUs); threads: "
        f"{machine['threads']}; torch {machine['torch']}; MONAI {arms[names[-1]]['monai']}; {machine['platform']}.",
        "",
        f"Studies: {len(arms[names[-1]]['studies'])} of `{report['source']}`; each arm in a fresh process.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]

    def row(label: str, values: list[float | None]) -> None:
        cells = [_fmt(v) for v in values]
        if ratio:
            b, a = values[names.index("before")], values[names.index("after")]
            cells.append(f"{a / b:.2f}" if a is not None and b else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for stage in STAGES:
        row(stage, [arms[a]["median"][stage] for a in names])
    row("**one study (sum of the stages)**", [arms[a]["median"]["study"] for a in names])
    for part in arms[names[-1]]["start_up"]:
        row(f"start-up: {part}", [arms[a]["start_up"][part] for a in names])
    if all("bundle" in arms[a] for a in names):
        for part in arms[names[-1]]["bundle"]:
            row(f"`monai.bundle run`: {part}", [arms[a]["bundle"][part] for a in names])
    lines += ["", "Configs: " + "; ".join(f"{a}: `{arms[a]['config']}`" for a in names) + "."]
    lines += ["", "Per study (s, the stages summed):", ""]
    for a in names:
        per = ", ".join(f"{r['study']} {sum(r[s] for s in STAGES):.1f}" for r in arms[a]["studies"])
        lines.append(f"- {a}: {per}")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The study mode's options, shared with ``python -m refineformer3d.experiments.benchmark --study``."""
    parser.add_argument("--studies", type=int, default=3, help="studies measured (the first of the source's)")
    parser.add_argument("--before_config", help="the inference.json of the path being replaced (the before arm)")
    parser.add_argument("--after_config", help="default: the bundle's inference.json")
    parser.add_argument(
        "--no-bundle_runs", dest="bundle_runs", action="store_false", help="skip the `monai.bundle run` walls"
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for both arms, e.g. ckpt_path=fold0/model.pt (VALUE as JSON where it parses)",
    )
    parser.add_argument("--segmentation_dir", help="keep each arm's segmentations in SEGMENTATION_DIR/<arm>")
    parser.add_argument(
        "--checkpoint",
        nargs="+",
        default=[],
        metavar="NAME=PATH",
        help="with --models: the weights a network is timed with (default: its random initial weights)",
    )
    parser.add_argument(
        "--overlay",
        nargs="+",
        default=[],
        metavar="CONFIG",
        help="with --models: overlays every network's run takes, as the study's --configs (e.g. regions.json)",
    )


def _override(item: str) -> tuple[str, Any]:
    key, _, value = item.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measures ``args.study``, prints the Markdown and writes ``args.output``'s files; returns the report."""
    from refineformer3d.experiments.benchmark import write_tables

    if args.models:
        stage_only = [f"--{k}" for k in ("before_config", "after_config", "segmentation_dir") if getattr(args, k)]
        if stage_only:
            raise ValueError(f"{' and '.join(stage_only)}: compare two configs, not networks (leave out --models)")
        malformed = [item for item in args.checkpoint if "=" not in item]
        if malformed:
            raise ValueError(f"--checkpoint {malformed[0]}: give NAME=PATH")
        checkpoints = dict(item.partition("=")[::2] for item in args.checkpoint)
        report = network_benchmark(
            args.study,
            args.models,
            sw_batch_sizes=args.sw_batch_sizes,
            studies=args.studies,
            threads=args.threads or 2,
            overlays=args.overlay,
            checkpoints=checkpoints,
            overrides=dict(_override(item) for item in args.set),
            matmul_sizes=args.matmul_sizes,
            matmul_repeats=args.matmul_repeats,
        )
        stem, markdown = "network_benchmark", format_network_markdown(report)
    else:
        report = study_benchmark(
            args.study,
            studies=args.studies,
            threads=args.threads or 2,
            before_config=args.before_config,
            after_config=args.after_config,
            bundle_runs=args.bundle_runs,
            overrides=dict(_override(item) for item in args.set),
            segmentation_dir=args.segmentation_dir,
        )
        stem, markdown = "study_benchmark", format_markdown(report)
    print(markdown)
    if args.output:
        write_tables(Path(args.output), stem, markdown, report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="refineformer3d-study-benchmark",
        description="One arm of the study mode of refineformer3d-benchmark --study, run in its own process.",
    )
    parser.add_argument("--_arm", required=True)
    parser.add_argument("--_source", required=True)
    parser.add_argument("--_output", required=True)
    parser.add_argument("--_launched", type=float, default=None)
    parser.add_argument("--_overrides", default="{}")
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    overrides = json.loads(args._overrides)
    result = measure_arm(args._arm, args._source, args._output, args.studies, args.threads, overrides, args._launched)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
