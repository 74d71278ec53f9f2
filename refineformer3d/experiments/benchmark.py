"""Speed, memory and the machine's limit of every network on the scoreboard, measured in one run.

Usage::

    python -m refineformer3d.experiments.benchmark --output benchmark   # benchmark/benchmark.md and .json; prints it
    python -m refineformer3d.experiments.benchmark --no-references \
        --models refineformer3d_tiny refineformer3d_small segformer3d
    python -m refineformer3d.experiments.benchmark --study STUDIES --before_config OLD_inference.json  # per study
    python -m refineformer3d.experiments.benchmark --study STUDIES --models refineformer3d_nano segformer3d \
        --sw_batch_sizes 1 2 4   # each network per study through the bundle's inference, at its best batching
    python -m refineformer3d.experiments.benchmark --roi 32 32 32 --volume 64 64 48 --repeats 1 --volume_repeats 1 \
        --onnx

One run measures, and states in the Markdown's notes:

* the machine: CPU model, threads, torch version, date, and its measured fp32 matmul peak: the best GFLOP/s of
  ``torch.mm`` over the square sizes ``--matmul_sizes`` at the benchmark's thread count;
* per network: parameters; FLOPs of one window counted on the meta device, attention included
  (:func:`refineformer3d.experiments.summary.count_flops`: 2 FLOP per multiply-add, norms, activations and
  interpolation not counted); the CPU forward of one window (median of ``--repeats`` after one warm-up,
  ``torch.inference_mode``); one whole-volume sliding window as ``bundle/configs/inference.json``'s inferer runs it,
  at each of ``--sw_batch_sizes`` windows per batch (median of ``--volume_repeats`` after one warm-up; the best
  counts); the peak memory of each; times over SegFormer3D's; achieved GFLOP/s and their fraction of the matmul peak;
  and the physical limit, FLOPs / peak, per window and per volume;
* the ONNX Runtime fp32 and INT8 (dynamic, static) paths of ``--onnx`` networks, exported as the bundle exports them;
* on CUDA: AMP float16 and bfloat16 training steps per second at 2 x 4 x 128^3 (forward, DiceCE, backward, AdamW),
  inference ms per window and per volume and peak GPU memory, each with and without ``torch.compile``.

Every network is measured in a fresh child process forked from a server that has only imported the libraries, so one
network's allocator never holds memory for the next, and ``ru_maxrss`` is that network's own peak.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.benchmark.utils.timer import timer as clock  # synchronises CUDA

from refineformer3d.experiments import study_benchmark
from refineformer3d.experiments.summary import count_parameters, count_windows, model_factories, network_flops
from refineformer3d.io import write_atomically
from refineformer3d.networks import list_models

__all__ = [
    "BenchmarkRow",
    "cpu_model",
    "machine_facts",
    "measure_seconds",
    "matmul_peak",
    "inferer_settings",
    "sliding_window",
    "export_onnx",
    "train_steps",
    "inference_times",
    "accelerator_rows",
    "benchmark",
    "format_markdown",
    "main",
    "run",
]

# Each child re-imports the main module by name (multiprocessing's "prepare"); under ``python -m`` the server's
# preload has imported it already, which runpy reports once per child. The children inherit this filter.
warnings.filterwarnings(
    "ignore", message="'refineformer3d.experiments.benchmark' found in sys.modules", category=RuntimeWarning
)

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"
#: the reference every time is divided by
REFERENCE = "segformer3d"
#: MONAI's networks, heavy on a CPU (minutes per volume); ``--no-references`` skips them
REFERENCES = ("SegResNet (MONAI)", "UNETR (MONAI)", "SwinUNETR (MONAI)")
PYTORCH, ONNX_FP32 = "PyTorch", "ONNX Runtime fp32"
#: INT8 mode of refineformer3d.onnx.quantize -> runtime name
ONNX_INT8 = {"dynamic": "ONNX Runtime INT8 (dynamic)", "static": "ONNX Runtime INT8 (static)"}
FP16_ON_CPU = (
    "float16 AMP skipped on the CPU: autocast to float16 has no fast CPU kernels (bfloat16 is the CPU's AMP type)"
)


def default_models() -> list[str]:
    """Every registered RefineFormer3D variant, SegFormer3D, SegFormer 2-D B0 and MONAI's references."""
    return [*list_models("refineformer3d_*"), REFERENCE, "segformer2d_b0", *REFERENCES]


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_facts(threads: int) -> dict[str, Any]:
    """CPU, threads, library versions and the date of this run."""
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def measure_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones.

    The clock is ``torch.utils.benchmark``'s, which synchronises CUDA before reading the time, so GPU work queued by
    ``fn`` is inside its own interval.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return times


def matmul_peak(sizes: Sequence[int] = (2048, 4096), repeats: int = 5) -> dict[str, Any]:
    """The machine's fp32 matmul peak: the best GFLOP/s of ``torch.mm`` of square matrices, at the current threads.

    Args:
        sizes: matrix sizes tried; the one with the highest figure is reported.
        repeats: timed products per size (after one warm-up); the fastest counts.

    Returns:
        ``{"gflops": best, "size": its size, "by_size": {size: GFLOP/s}}``.
    """
    by_size = {}
    for n in sizes:
        a, b, c = (torch.randn(n, n) for _ in range(3))
        best = min(measure_seconds(lambda a=a, b=b, c=c: torch.mm(a, b, out=c), repeats))
        by_size[int(n)] = 2 * n**3 / best / 1e9
    size = max(by_size, key=by_size.get)
    return {"gflops": by_size[size], "size": size, "by_size": by_size}


def inferer_settings(config_file: str | os.PathLike = CONFIGS / "inference.json") -> dict[str, Any]:
    """The inferer of an inference config: its ``_target_`` and resolved arguments (``roi_size``, ``sw_batch_size``,
    ``overlap``, ``mode`` and whatever else it sets), for :func:`sliding_window` to rebuild in another process.

    Raises:
        ValueError: if the inferer is not a sliding window.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file))
    config = parser["inferer"]
    if not str(config["_target_"]).endswith("SlidingWindowInferer"):
        raise ValueError(f"{config_file}: the inferer is {config['_target_']}, not a sliding window")
    keys = [k for k in config if not k.startswith("_")]
    return {"_target_": config["_target_"], **{k: parser.get_parsed_content(f"inferer#{k}") for k in keys}}


def sliding_window(roi: Sequence[int], settings: dict[str, Any]):
    """The inferer of :func:`inferer_settings` with windows of ``roi``, built as MONAI's config parser builds it."""
    from monai.bundle import ConfigParser

    return ConfigParser({"inferer": {**settings, "roi_size": list(roi)}}).get_parsed_content("inferer")


def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape: Sequence[int]) -> Path:
    """Export ``model`` as ``python -m monai.bundle onnx_export`` does in the bundle docs (traced, opset 17, dynamic
    batch, input ``image``, output ``pred``), with MONAI's ``convert_to_onnx``."""
    from monai.networks.utils import convert_to_onnx

    convert_to_onnx(
        model.eval(),
        [torch.randn(tuple(input_shape))],
        input_names=["image"],
        output_names=["pred"],
        opset_version=17,
        dynamic_axes={"image": {0: "batch"}, "pred": {0: "batch"}},
        filename=str(path),
        use_trace=True,
        dynamo=False,
    )
    return Path(path)


@dataclass
class BenchmarkRow:
    """One network on one runtime. Times in seconds, memory in MiB, ``None`` where not measured."""

    name: str
    runtime: str
    source: str
    params_m: float
    gflop: float | None  # one window, attention counted
    forward_s: float | None = None
    forward_runs: list[float] = field(default_factory=list)
    forward_peak_mib: float | None = None
    windows: int | None = None
    volume_gflop: float | None = None
    volume_s: float | None = None  # the best median over the windows-per-batch tried
    volume_sw_batch_size: int | None = None  # the windows per batch of volume_s
    volume_runs: dict[str, list[float]] = field(default_factory=dict)  # per windows-per-batch, as a string (JSON)
    volume_peak_mib: float | None = None
    forward_ratio: float | None = None  # forward_s / SegFormer3D's
    volume_ratio: float | None = None
    forward_gflops: float | None = None
    forward_fraction: float | None = None  # of the matmul peak
    volume_gflops: float | None = None
    volume_fraction: float | None = None
    limit_window_s: float | None = None  # FLOPs / peak
    limit_volume_s: float | None = None
    error: str | None = None

    def derive(self, peak_gflops: float, reference: BenchmarkRow | None) -> None:
        """Fill the ratios, achieved GFLOP/s, fractions of ``peak_gflops`` and the FLOPs / peak limits."""

        def ratio(a: float | None, b: float | None) -> float | None:
            return a / b if a is not None and b else None

        if reference is not None:
            self.forward_ratio = ratio(self.forward_s, reference.forward_s)
            self.volume_ratio = ratio(self.volume_s, reference.volume_s)
        self.forward_gflops = ratio(self.gflop, self.forward_s)
        self.volume_gflops = ratio(self.volume_gflop, self.volume_s)
        self.forward_fraction = ratio(self.forward_gflops, peak_gflops)
        self.volume_fraction = ratio(self.volume_gflops, peak_gflops)
        self.limit_window_s = ratio(self.gflop, peak_gflops)
        self.limit_volume_s = ratio(self.volume_gflop, peak_gflops)


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _measure_cpu(task: dict[str, Any]) -> dict[str, Any]:
    """In a fresh child: time and measure the memory of one network's forward and sliding window."""
    torch.set_num_threads(task["threads"])
    torch.manual_seed(0)
    baseline = _max_rss_mib()  # imports only: before the network, its inputs and outputs exist
    if task["runtime"] == PYTORCH:
        _, factory = model_factories(task["in_channels"], task["out_channels"], task["roi"])[task["name"]]
        model = factory().eval()
    else:
        from refineformer3d.onnx import OnnxRuntimeNetwork

        model = OnnxRuntimeNetwork(task["onnx"], num_threads=task["threads"])
    result: dict[str, Any] = {}
    with torch.inference_mode():
        x = torch.randn(1, task["in_channels"], *task["roi"])
        result["forward_runs"] = measure_seconds(lambda: model(x), task["repeats"])
        result["forward_peak_mib"] = _max_rss_mib() - baseline
        if task["volume"]:
            volume = torch.randn(1, task["in_channels"], *task["volume"])
            result["volume_runs"] = {}
            for batch in task["sw_batch_sizes"]:
                inferer = sliding_window(task["roi"], task["inferer"] | {"sw_batch_size": batch})
                run = functools.partial(inferer, volume, model)
                result["volume_runs"][str(batch)] = measure_seconds(run, task["volume_repeats"])
            # the peak since the baseline: a sliding window runs forwards of sw_batch_size windows, so its peak is
            # the forward's or above
            result["volume_peak_mib"] = _max_rss_mib() - baseline
    return result


def _amp(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def train_steps(
    model: nn.Module,
    device: str | torch.device,
    dtype: torch.dtype | None,
    input_shape: Sequence[int] = (2, 4, 128, 128, 128),
    out_channels: int = 3,
    steps: int = 5,
    warmup: int = 2,
    compile: bool = False,
) -> dict[str, Any]:
    """Training steps per second: forward under AMP, ``train.json``'s DiceCE loss, backward, AdamW step.

    float16 scales the loss (``torch.amp.GradScaler``); bfloat16 needs no scaling.

    Args:
        model: the network (moved to ``device``).
        device: ``"cuda"``, or ``"cpu"`` for bfloat16 (and for tests).
        dtype: the autocast dtype; ``None`` trains in float32.
        input_shape: ``(B, C, D, H, W)`` of the batch.
        out_channels: the network's classes (labels are drawn from them).
        steps: timed steps (their median counts), after ``warmup`` untimed ones (compilation happens there).
        compile: wrap the network in ``torch.compile``.

    Returns:
        ``{"steps_per_s", "step_runs", "peak_mib"}``; ``peak_mib`` (``torch.cuda.max_memory_allocated``) is ``None``
        off CUDA.
    """
    from monai.bundle import ConfigParser

    device = torch.device(device)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    loss_function = parser.get_parsed_content("loss")
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=parser["learning_rate"], weight_decay=parser["weight_decay"])
    network = torch.compile(model) if compile else model
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    x = torch.randn(tuple(input_shape), device=device)
    y = torch.randint(0, out_channels, (input_shape[0], 1, *input_shape[2:]), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _amp(device, dtype):
            loss = loss_function(network(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    _reset_peak(device)
    runs = measure_seconds(step, steps, warmup)
    return {"steps_per_s": 1 / statistics.median(runs), "step_runs": runs, "peak_mib": _peak_mib(device)}


def inference_times(
    model: nn.Module,
    device: str | torch.device,
    dtype: torch.dtype | None,
    roi: Sequence[int] = (128, 128, 128),
    volume: Sequence[int] | None = (240, 240, 155),
    settings: dict[str, Any] | None = None,
    in_channels: int = 4,
    repeats: int = 5,
    compile: bool = False,
) -> dict[str, Any]:
    """Milliseconds per window and per whole-volume sliding window under AMP, and the peak memory of each.

    Args:
        model: the network (moved to ``device``, evaluation mode).
        device: where it runs; the volume lives there too.
        dtype: the autocast dtype; ``None`` runs in float32.
        roi: the window.
        volume: the volume's spatial size; ``None`` skips it.
        settings: the sliding window's (:func:`inferer_settings`); ``inference.json``'s by default.
        in_channels: input channels.
        repeats: timed runs of each (median), after one warm-up.
        compile: wrap the network in ``torch.compile``.

    Returns:
        ``{"window_ms", "window_peak_mib", "volume_ms", "volume_peak_mib"}``; peaks are ``None`` off CUDA.
    """
    device = torch.device(device)
    network = model.to(device).eval()
    network = torch.compile(network) if compile else network
    result: dict[str, Any] = {}
    with torch.inference_mode(), _amp(device, dtype):
        x = torch.randn(1, in_channels, *roi, device=device)
        _reset_peak(device)
        result["window_ms"] = 1e3 * statistics.median(measure_seconds(lambda: network(x), repeats))
        result["window_peak_mib"] = _peak_mib(device)
        if volume:
            inferer = sliding_window(roi, settings or inferer_settings())
            v = torch.randn(1, in_channels, *volume, device=device)
            _reset_peak(device)
            result["volume_ms"] = 1e3 * statistics.median(measure_seconds(lambda: inferer(v, network), repeats))
            result["volume_peak_mib"] = _peak_mib(device)
    return result


def accelerator_rows(
    names: Sequence[str],
    device: str | torch.device = "cuda",
    dtypes: Sequence[torch.dtype] = (torch.float16, torch.bfloat16),
    compile_modes: Sequence[bool] = (False, True),
    roi: Sequence[int] = (128, 128, 128),
    volume: Sequence[int] | None = (240, 240, 155),
    settings: dict[str, Any] | None = None,
    train_batch: int = 2,
    in_channels: int = 4,
    out_channels: int = 3,
    steps: int = 5,
    repeats: int = 5,
) -> list[dict[str, Any]]:
    """:func:`train_steps` and :func:`inference_times` of each network, AMP type and compile mode.

    On the CPU the float16 rows are skipped with :data:`FP16_ON_CPU` as their reason; a combination that fails
    (e.g. ``torch.compile`` without a compiler) is a row with its one-line error, so the other rows still come.

    Returns:
        One dict per network, dtype and compile mode.
    """
    device = torch.device(device)
    factories = model_factories(in_channels, out_channels, roi)
    rows = []
    for name in names:
        for dtype in dtypes:
            for compiled in compile_modes:
                row: dict[str, Any] = {"name": name, "amp": str(dtype).removeprefix("torch."), "compile": compiled}
                rows.append(row)
                if device.type == "cpu" and dtype == torch.float16:
                    row["skipped"] = FP16_ON_CPU
                    continue
                try:
                    torch.manual_seed(0)
                    row |= train_steps(
                        factories[name][1](),
                        device,
                        dtype,
                        (train_batch, in_channels, *roi),
                        out_channels,
                        steps,
                        compile=compiled,
                    )
                    row |= inference_times(
                        factories[name][1](), device, dtype, roi, volume, settings, in_channels, repeats, compiled
                    )
                except Exception as err:  # one failed combination must not lose the others
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                finally:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    torch._dynamo.reset()
    return rows


def benchmark(
    models: Sequence[str] | None = None,
    onnx: Sequence[str] = ("refineformer3d_small", "refineformer3d_tiny"),
    int8: Sequence[str] = ("dynamic", "static"),
    references: bool = True,
    roi: Sequence[int] | None = None,
    volume: Sequence[int] | None = (240, 240, 155),
    sw_batch_sizes: Sequence[int] = (1, 2),
    repeats: int = 5,
    volume_repeats: int = 3,
    reference_volume_repeats: int = 1,
    threads: int | None = None,
    matmul_sizes: Sequence[int] = (2048, 4096),
    matmul_repeats: int = 5,
    in_channels: int = 4,
    out_channels: int = 3,
    config_file: str | os.PathLike = CONFIGS / "inference.json",
    accelerator: bool = True,
    train_batch: int = 2,
    steps: int = 5,
) -> dict[str, Any]:
    """Measure the machine and every network; the report :func:`format_markdown` renders and ``main`` saves.

    Args:
        models: networks (registry or reference names; default :func:`default_models`).
        onnx: networks whose ONNX Runtime fp32 and INT8 paths are measured too.
        int8: the INT8 modes of :func:`refineformer3d.onnx.quantize` measured for them.
        references: keep MONAI's SegResNet, UNETR and SwinUNETR (each takes minutes per volume on a CPU).
        roi: the window; ``inference.json``'s ``roi_size`` by default.
        volume: the whole volume's spatial size; ``None`` skips the sliding window.
        sw_batch_sizes: windows per batch at which each network's sliding window is timed; a network's volume time
            is its best, so that no network is judged at a batch size that does not suit it (on this project's
            2-core CPU SegFormer3D takes twice as long per volume with one window per batch as with two, and
            RefineFormer3D small about 30 % longer with two than with one).
        repeats: timed forwards per network, after one warm-up.
        volume_repeats: timed sliding windows per network, after one warm-up.
        reference_volume_repeats: the same for MONAI's references.
        threads: torch (and ONNX Runtime) CPU threads; the current ``torch.get_num_threads()`` by default.
        matmul_sizes: square sizes tried for the matmul peak.
        matmul_repeats: timed products per size.
        in_channels: input channels.
        out_channels: classes.
        config_file: the inference config whose sliding window is run.
        accelerator: measure the GPU section (where CUDA is available).
        train_batch: the GPU section's training batch.
        steps: the GPU section's timed training steps.

    Returns:
        ``{"machine", "matmul_peak", "settings", "rows", "skipped", "accelerator"}``, JSON-ready.

    Raises:
        ValueError: for unknown names, non-positive repeats or sizes.
    """
    settings = inferer_settings(config_file)
    roi = tuple(roi or settings["roi_size"])
    factories = model_factories(in_channels, out_channels, roi)
    names = list(models) if models is not None else default_models()
    unknown = [n for n in [*names, *onnx] if n not in factories]
    if unknown:
        raise ValueError(f"unknown models {unknown}; known: {', '.join(factories)}")
    counts = {"repeats": repeats, "volume_repeats": volume_repeats, "matmul_repeats": matmul_repeats}
    counts |= {"reference_volume_repeats": reference_volume_repeats, "steps": steps, "train_batch": train_batch}
    if set(int8) - set(ONNX_INT8):
        raise ValueError(f"INT8 modes are {', '.join(ONNX_INT8)}, got {', '.join(int8)}")
    if any(v < 1 for v in counts.values()):
        raise ValueError(f"repeats, steps and batches must be at least 1, got {counts}")
    if any(s < 1 for s in [*roi, *(volume or ()), *matmul_sizes]):
        raise ValueError(f"sizes must be positive: roi {roi}, volume {volume}, matmul {tuple(matmul_sizes)}")
    sw_batch_sizes = sorted(set(sw_batch_sizes))
    if not sw_batch_sizes or sw_batch_sizes[0] < 1:
        raise ValueError(f"windows per batch must be at least 1, got {sw_batch_sizes}")
    skipped = []
    if not references:
        skipped += [f"{n}: --no-references" for n in names if n in REFERENCES]
        names = [n for n in names if n not in REFERENCES]
    threads = threads or torch.get_num_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        machine = machine_facts(threads)
        peak = matmul_peak(matmul_sizes, matmul_repeats)
        input_shape = (1, in_channels, *roi)
        windows = count_windows((1, in_channels, *volume), roi, settings["overlap"]) if volume else None
        rows: list[BenchmarkRow] = []
        tasks = []
        with tempfile.TemporaryDirectory(prefix="refineformer3d-benchmark-") as tmp:
            runtimes = [(n, PYTORCH) for n in names]
            runtimes += [(n, r) for n in onnx for r in (ONNX_FP32, *(ONNX_INT8[m] for m in int8))]
            for name, runtime in runtimes:
                source, factory = factories[name]
                flops = network_flops(factory, input_shape, cpu=False)[1]
                gflop = None if flops is None else flops / 1e9
                row = BenchmarkRow(name, runtime, source, count_parameters(factory) / 1e6, gflop, windows=windows)
                row.volume_gflop = gflop * windows if gflop is not None and windows else None
                task = {
                    "name": name,
                    "runtime": runtime,
                    "roi": roi,
                    "volume": tuple(volume) if volume else None,
                    "inferer": settings,
                    "sw_batch_sizes": sw_batch_sizes,
                    "in_channels": in_channels,
                    "out_channels": out_channels,
                    "threads": threads,
                    "repeats": repeats,
                    "volume_repeats": reference_volume_repeats if name in REFERENCES else volume_repeats,
                }
                if runtime != PYTORCH:
                    task["onnx"] = str(_onnx_file(name, runtime, factory, Path(tmp), input_shape))
                rows.append(row)
                tasks.append(task)
            _run_isolated(rows, tasks)
        reference = next((r for r in rows if r.name == REFERENCE and r.runtime == PYTORCH and r.forward_s), None)
        for row in rows:
            row.derive(peak["gflops"], reference)
        gpu: dict[str, Any] = {"device": None, "rows": [], "skipped": "no GPU in this run"}
        if not accelerator:
            gpu["skipped"] = "--no-gpu"
        elif torch.cuda.is_available():
            gpu = {
                "device": torch.cuda.get_device_name(),
                "rows": accelerator_rows(
                    names,
                    "cuda",
                    roi=roi,
                    volume=volume,
                    settings=settings,
                    train_batch=train_batch,
                    in_channels=in_channels,
                    out_channels=out_channels,
                    steps=steps,
                    repeats=repeats,
                ),
                "skipped": None,
            }
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "machine": machine,
        "matmul_peak": peak,
        "settings": {
            "roi": list(roi),
            "volume": list(volume) if volume else None,
            "sw_batch_sizes": sw_batch_sizes,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "inferer": settings | {"roi_size": list(roi)},
            "config_file": str(config_file),
            **counts,
        },
        "rows": [asdict(r) for r in rows],
        "skipped": skipped,
        "accelerator": gpu,
    }


def _onnx_file(name: str, runtime: str, factory: Callable[[], nn.Module], folder: Path, input_shape) -> Path:
    """The ONNX file of ``runtime``: fp32 exported first, INT8 quantised from it (its rows follow fp32's)."""
    from refineformer3d.onnx import calibration_windows, quantize

    fp32 = folder / f"{name}.onnx"
    if runtime == ONNX_FP32:
        torch.manual_seed(0)  # random weights: speed does not depend on them
        return export_onnx(factory(), fp32, input_shape)
    mode = next(m for m, r in ONNX_INT8.items() if r == runtime)
    calibration = None
    if mode == "static":  # activation ranges from noise: the ranges set scales, not the work done
        generator = torch.Generator().manual_seed(0)
        images = [torch.randn(tuple(input_shape[1:]), generator=generator) for _ in range(2)]
        with warnings.catch_warnings():  # MONAI's crop warns that noise has no background to balance against
            warnings.filterwarnings("ignore", message="Num foregrounds")
            calibration = calibration_windows(images, input_shape[2:], per_image=1)
    return quantize(fp32, folder / f"{name}_int8_{mode}.onnx", mode=mode, calibration=calibration)


def _run_isolated(rows: Sequence[BenchmarkRow], tasks: Sequence[dict[str, Any]]) -> None:
    """Run :func:`_measure_cpu` for each task in its own fresh process, one after the other; fill the rows."""
    context = multiprocessing.get_context("forkserver")
    # the server imports once; each child is a fork of it with the libraries loaded and no tensors made yet
    context.set_forkserver_preload(["refineformer3d.experiments.benchmark", "refineformer3d.onnx", "monai.inferers"])
    for row, task in zip(rows, tasks):
        try:
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                result = pool.submit(_measure_cpu, task).result()
        except Exception as err:  # a network that fails is reported, the others still run
            row.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            continue
        row.forward_runs = result["forward_runs"]
        row.forward_s = statistics.median(row.forward_runs)
        row.forward_peak_mib = result["forward_peak_mib"]
        if "volume_runs" in result:
            row.volume_runs = result["volume_runs"]
            medians = {int(batch): statistics.median(runs) for batch, runs in row.volume_runs.items()}
            row.volume_sw_batch_size = min(medians, key=medians.get)
            row.volume_s = medians[row.volume_sw_batch_size]
            row.volume_peak_mib = result["volume_peak_mib"]


def _median(runs: Sequence[float] | None) -> float | None:
    return statistics.median(runs) if runs else None


def _fmt(value: float | None, digits: int, suffix: str = "") -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}{suffix}"


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def format_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: machine, one table per window and per volume, the GPU section, the conventions."""
    machine, peak, settings = report["machine"], report["matmul_peak"], report["settings"]
    rows = [BenchmarkRow(**r) for r in report["rows"]]
    roi = "x".join(map(str, settings["roi"]))
    tried = ", ".join(f"{n}^2: {g:.1f}" for n, g in peak["by_size"].items())
    lines = [
        "# RefineFormer3D benchmark",
        "",
        f"{machine['date']}; {machine['cpu']} ({machine['logical_cpus']} logical CPUs); torch threads: "
        f"{machine['threads']}; torch {machine['torch']}; {machine['platform']}.",
        f"Measured fp32 matmul peak: **{peak['gflops']:.1f} GFLOP/s** (torch.mm of {peak['size']}^2 matrices, the "
        f"best of {settings['matmul_repeats']} runs at each size tried: {tried} GFLOP/s).",
        "",
        f"## One {settings['in_channels']}x{roi} window (CPU forward)",
        "",
    ]
    header = ["model", "runtime", "params (M)", "GFLOP", "forward (s)", "/ SegFormer3D", "GFLOP/s", "of peak"]
    header += ["limit FLOPs/peak (s)", "peak memory (MiB)"]
    body = [
        [
            r.name,
            r.runtime,
            _fmt(r.params_m, 3),
            _fmt(r.gflop, 2),
            _fmt(r.forward_s, 3),
            _fmt(r.forward_ratio, 2),
            _fmt(r.forward_gflops, 1),
            _fmt(None if r.forward_fraction is None else 100 * r.forward_fraction, 0, " %"),
            _fmt(r.limit_window_s, 3),
            _fmt(r.forward_peak_mib, 0),
        ]
        for r in rows
    ]
    lines += _table(header, body)
    if settings["volume"]:
        volume = "x".join(map(str, settings["volume"]))
        inferer = settings["inferer"]
        batches = settings["sw_batch_sizes"]
        lines += [
            "",
            f"## One whole {settings['in_channels']}x{volume} volume (CPU sliding window)",
            "",
            f"{rows[0].windows if rows else '-'} windows of {roi}, overlap {inferer['overlap']}, {inferer['mode']} "
            f"blending: {inferer['_target_']} as {Path(settings['config_file']).name} configures it ("
            + ", ".join(f"{k} {v}" for k, v in inferer.items() if k not in ("_target_", "roi_size", "sw_batch_size"))
            + f"), timed at {' and '.join(map(str, batches))} windows per batch. A network's time is its best of "
            "these (the windows per batch in brackets); / SegFormer3D sets it against SegFormer3D's best. GFLOP: "
            "per window times the windows.",
            "",
        ]
        header = ["model", "runtime", "GFLOP", *(f"{b} per batch (s)" for b in batches), "best (s)", "/ SegFormer3D"]
        header += ["GFLOP/s", "of peak", "limit FLOPs/peak (s)", "peak memory (MiB)"]
        body = [
            [
                r.name,
                r.runtime,
                _fmt(r.volume_gflop, 1),
                *(_fmt(_median(r.volume_runs.get(str(b))), 2) for b in batches),
                _fmt(r.volume_s, 2) + (f" ({r.volume_sw_batch_size})" if r.volume_sw_batch_size else ""),
                _fmt(r.volume_ratio, 2),
                _fmt(r.volume_gflops, 1),
                _fmt(None if r.volume_fraction is None else 100 * r.volume_fraction, 0, " %"),
                _fmt(r.limit_volume_s, 2),
                _fmt(r.volume_peak_mib, 0),
            ]
            for r in rows
        ]
        lines += _table(header, body)
    lines += ["", "## GPU", ""]
    gpu = report["accelerator"]
    if gpu["skipped"]:
        lines.append(f"Not measured: {gpu['skipped']}.")
    else:
        lines += [
            f"{gpu['device']}. Training: batch {settings['train_batch']}x{settings['in_channels']}x{roi}, forward "
            f"under AMP, train.json's DiceCE loss, backward, AdamW step; median of {settings['steps']} steps after "
            f"two warm-up steps. Inference: median of {settings['repeats']} after one warm-up. Peak memory: "
            "torch.cuda.max_memory_allocated.",
            "",
        ]
        header = ["model", "AMP", "torch.compile", "train steps/s", "train peak (MiB)", "window (ms)"]
        header += ["window peak (MiB)", "volume (ms)", "volume peak (MiB)"]
        body = [
            [
                r["name"],
                r["amp"],
                "yes" if r["compile"] else "no",
                *(
                    [r.get("skipped") or r["error"], "", "", "", "", ""]
                    if r.get("skipped") or r.get("error")
                    else [
                        _fmt(r["steps_per_s"], 2),
                        _fmt(r["peak_mib"], 0),
                        _fmt(r["window_ms"], 1),
                        _fmt(r["window_peak_mib"], 0),
                        _fmt(r.get("volume_ms"), 0),
                        _fmt(r.get("volume_peak_mib"), 0),
                    ]
                ),
            ]
            for r in gpu["rows"]
        ]
        lines += _table(header, body)
    notes = [
        "",
        "## How it was measured",
        "",
        "- FLOPs: torch.utils.flop_counter.FlopCounterMode on the meta device, 2 FLOP per multiply-add, attention "
        "included; norms, activations and interpolation not counted (as "
        "`python -m refineformer3d.experiments.summary`). The ONNX rows repeat their network's FLOPs; INT8 figures "
        "are set against the fp32 peak.",
        f"- CPU forward: one 1x{settings['in_channels']}x{roi} input, torch.inference_mode, median of "
        f"{settings['repeats']} runs after one warm-up."
        + (
            f" Sliding window: median of {settings['volume_repeats']} ({settings['reference_volume_repeats']} for "
            "MONAI's references) after one warm-up."
            if settings["volume"]
            else ""
        ),
        "- Peak memory: each network runs in a fresh child process (forked from a server that only imported the "
        "libraries); its peak resident memory (ru_maxrss) minus the level before the network was built: weights, "
        "inputs, outputs and activations. The sliding-window figure is the peak over the forward and the "
        "sliding window.",
        "- / SegFormer3D: time over SegFormer3D's in this run (below 1 is faster). of peak: achieved GFLOP/s over the "
        "measured matmul peak. limit: FLOPs / peak, the time at the matmul peak.",
    ]
    if any(r.runtime != PYTORCH for r in rows):
        notes.append(
            "- ONNX rows: the network with random weights (speed does not depend on them), exported as the bundle "
            "docs export it (MONAI convert_to_onnx, traced, opset 17) and run by "
            "refineformer3d.onnx.OnnxRuntimeNetwork; INT8: refineformer3d.onnx.quantize, dynamic (MatMul weights "
            "INT8) and static (QDQ Conv and MatMul, "
            "activation ranges calibrated on two windows of Gaussian noise: the ranges set the scales, not the work)."
        )
    if report["skipped"]:
        notes.append(f"- Skipped: {'; '.join(report['skipped'])}.")
    failed = [f"{r.name} ({r.runtime}): {r.error}" for r in rows if r.error]
    if failed:
        notes.append(f"- Failed: {'; '.join(failed)}.")
    return "\n".join(lines + notes) + "\n"


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command line's work: measures, prints the Markdown, writes ``--output``'s files; returns the report."""
    parser = argparse.ArgumentParser(
        prog="python -m refineformer3d.experiments.benchmark", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--output", help="folder for benchmark.md and benchmark.json (default: print only)")
    parser.add_argument("--models", nargs="+", default=None, help="networks to measure (default: all of the table)")
    parser.add_argument(
        "--onnx",
        nargs="*",
        default=["refineformer3d_small", "refineformer3d_tiny"],
        help="networks whose ONNX Runtime fp32 and INT8 paths are measured (none if given without names)",
    )
    parser.add_argument(
        "--int8", nargs="*", default=list(ONNX_INT8), choices=list(ONNX_INT8), help="INT8 modes of the ONNX rows"
    )
    parser.add_argument(
        "--no-references", dest="references", action="store_false", help="skip " + ", ".join(REFERENCES)
    )
    parser.add_argument(
        "--roi", type=int, nargs=3, default=None, metavar=("D", "H", "W"), help="default: inference.json"
    )
    parser.add_argument("--volume", type=int, nargs=3, default=(240, 240, 155), metavar=("D", "H", "W"))
    parser.add_argument("--no-volume", dest="volume", action="store_const", const=None, help="skip the sliding window")
    parser.add_argument(
        "--sw_batch_sizes", type=int, nargs="+", default=[1, 2], help="windows per batch tried (each network's best)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per network (median)")
    parser.add_argument("--volume_repeats", type=int, default=3, help="timed sliding windows per network (median)")
    parser.add_argument("--reference_volume_repeats", type=int, default=1, help="the same for MONAI's references")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--matmul_sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--matmul_repeats", type=int, default=5)
    parser.add_argument("--config_file", default=str(CONFIGS / "inference.json"), help="its sliding window is run")
    parser.add_argument(
        "--no-gpu", dest="accelerator", action="store_false", help="skip the GPU section where CUDA is available"
    )
    parser.add_argument("--steps", type=int, default=5, help="GPU section: timed training steps")
    parser.add_argument("--train_batch", type=int, default=2, help="GPU section: training batch")
    parser.add_argument(
        "--study",
        help="study mode: time per study through the bundle's inference, by stage, on this source (a study, a "
        "folder of studies or a datalist; see refineformer3d.experiments.study_benchmark)",
    )
    study_benchmark.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.study:
        try:
            return study_benchmark.run(args)
        except ValueError as err:
            parser.error(str(err))
    try:
        report = benchmark(
            models=args.models,
            onnx=args.onnx,
            int8=args.int8,
            references=args.references,
            roi=args.roi,
            volume=args.volume,
            sw_batch_sizes=args.sw_batch_sizes,
            repeats=args.repeats,
            volume_repeats=args.volume_repeats,
            reference_volume_repeats=args.reference_volume_repeats,
            threads=args.threads,
            matmul_sizes=args.matmul_sizes,
            matmul_repeats=args.matmul_repeats,
            config_file=args.config_file,
            accelerator=args.accelerator,
            steps=args.steps,
            train_batch=args.train_batch,
        )
    except ValueError as err:
        parser.error(str(err))
    markdown = format_markdown(report)
    print(markdown)
    if args.output:
        write_tables(Path(args.output), "benchmark", markdown, report)
    return report


def write_tables(output: Path, stem: str, markdown: str, report: dict) -> None:
    """Writes ``<stem>.md`` and ``<stem>.json`` into ``output``, each atomically."""
    write_atomically(output / f"{stem}.md", lambda tmp: Path(tmp).write_text(markdown))
    text = json.dumps(report, indent=2) + "\n"
    write_atomically(output / f"{stem}.json", lambda tmp: Path(tmp).write_text(text))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``refineformer3d-benchmark``); returns the exit status."""
    run(argv)
    return 0


if __name__ == "__main__":
    # through the module's own name, so the children unpickle this module's functions, not __main__'s
    from refineformer3d.experiments.benchmark import main as _main

    sys.exit(_main())
