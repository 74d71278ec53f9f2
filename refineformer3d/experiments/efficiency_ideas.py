"""Measure the efficiency ideas of docs/experiments/2026-11-23-efficiency-ideas.md: one part per idea.

Speed is compared A/B inside one process: the arms of a comparison run in turn, round after round, and the median of
each arm's forwards is divided by the baseline's, so load that other processes put on the machine hits every arm.

Usage: ``python -m refineformer3d.experiments.efficiency_ideas PART ...`` with PART one of::

    networks --rounds 5                   # params, GFLOP, forward-time ratios at 4 x 128^3
    variants --rounds 5                   # whole networks against SegFormer3D: a window, a cropped study
    early-exit --studies 5                # windows skipped on the real-size synthetic studies
    tumour-windows --studies 12           # at most how many hold no tumour (labels)
    window-threads --rounds 5             # one window on 2 threads, or 2 windows at once
    profile --model refineformer3d_tiny   # where one forward's time goes
    budget --speedup 5 --rounds 3         # the time a 5x study leaves tiny per window
    int8 --onnx model.onnx model_int8.onnx --studies 2   # time and Dice per runtime
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch

from refineformer3d.experiments.summary import count_flops
from refineformer3d.networks import create_model

FOURIER_1 = ("fourier", "attention", "attention", "attention")
FOURIER_2 = ("fourier", "fourier", "attention", "attention")
ARMS = {
    "default": {},
    "fourier stage 1": {"token_mixers": FOURIER_1},
    "fourier stages 1-2": {"token_mixers": FOURIER_2},
    "ghost off (conv)": {"patch_embed": "conv"},
    "low-rank off": {"ffn_rank_ratio": None},
    "ghost and low-rank off": {"patch_embed": "conv", "ffn_rank_ratio": None},
    # small's stem width on tiny (refine_channels sets small's stem too: run it on tiny); the decoder that upsampled
    # logits instead of features (final_upsampling="logits") was measured at daa1bba and removed
    "stem 16 channels": {"refine_channels": (16, 16)},
    # where tiny's gap to small lives (tiny's widths elsewhere: run these on tiny too)
    "small's widths at 1/16, 1/32": {"embed_dims": (16, 32, 128, 256), "num_heads": (1, 2, 4, 8)},
    "wider from 1/8": {"embed_dims": (16, 48, 96, 160), "num_heads": (1, 2, 4, 8)},
    "wider decoder": {"decoder_channels": (24, 32, 48, 64)},
    "small's width at 1/4": {"embed_dims": (32, 32, 80, 128)},
    "small's widths at 1/4, 1/8": {"embed_dims": (32, 64, 80, 128)},
    # issue 33's ideas on any variant, and back off on the variants built from them
    "axial stage 1": {"token_mixers": ("axial", "attention", "attention", "attention")},
    "attention stage 1": {"token_mixers": None},
    "(2+1)D kernels": {"kernels": "2+1d"},
    "3-D kernels": {"kernels": "3d"},
    # nano's widths against the ones it could have had (run these on refineformer3d_nano)
    "16 channels at full resolution": {"refine_channels": (16, 8)},
    "4 stem channels": {"refine_channels": (8, 4)},
    "one block per stage": {"depths": (1, 1, 1, 1)},
    "every width of small": {
        "embed_dims": (32, 64, 128, 256),
        "num_heads": (1, 2, 4, 8),
        "decoder_channels": (32, 48, 64, 96),
        "refine_channels": (16, 16),
    },
}


def interleaved_times(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Wall times (s) of each call, the calls run in turn ``rounds`` times after one untimed warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(rounds + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if r:
                times[name].append(time.perf_counter() - start)
    return times


def interleaved_medians(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median wall time (s) of each call over :func:`interleaved_times`."""
    return {name: statistics.median(t) for name, t in interleaved_times(calls, rounds).items()}


def ratios(times: dict[str, list[float]], baseline: str) -> dict[str, tuple[float, float]]:
    """Per arm: the median over rounds of (arm / baseline in the same round), and best arm / best baseline."""
    base = times[baseline]
    return {
        name: (statistics.median(t / b for t, b in zip(ts, base)), min(ts) / min(base)) for name, ts in times.items()
    }


def networks(models: Sequence[str], roi: int, rounds: int, arms: Sequence[str] = tuple(ARMS)) -> str:
    lines = [
        "| network | arm | params | GFLOP (meta, attention counted) | time / default, median of rounds | best / best |"
    ]
    lines.append("|---|---|---:|---:|---:|---:|")
    x = torch.randn(1, 4, roi, roi, roi)
    for model in models:
        calls, stats = {}, {}
        for arm in ("default", *(a for a in arms if a != "default")):
            overrides = ARMS[arm]
            torch.manual_seed(0)
            net = create_model(model, in_channels=4, out_channels=3, **overrides).eval()
            with torch.device("meta"):
                meta = create_model(model, in_channels=4, out_channels=3, **overrides).eval()
            stats[arm] = (sum(p.numel() for p in net.parameters()), count_flops(meta, x.shape, device="meta")[0])
            calls[arm] = lambda net=net: net(x)
        with torch.inference_mode():
            times = interleaved_times(calls, rounds)
        for arm, (params, flops) in stats.items():
            per_round, best = ratios(times, "default")[arm]
            lines.append(
                f"| {model} | {arm} | {params / 1e6:.3f}M | {flops / 1e9:.2f} | {per_round:.2f} | {best:.2f} |"
            )
    return "\n".join(lines)


def variants(
    models: Sequence[str],
    reference: str,
    roi: Sequence[int],
    study: Sequence[int],
    rounds: int,
    sw_batch_sizes: Sequence[int] = (1, 2),
) -> str:
    """Whole registered networks against ``reference``, each forward interleaved with the others.

    Three measures, each in its own interleaved rounds: one ``roi`` window (a forward at batch 1); the cropped study
    ``study`` in one pass (``inference.json``'s ``one_pass``); and the same study through ``inference.json``'s
    sliding window of ``roi`` windows, at each of ``sw_batch_sizes`` windows per batch, a network counted at its best
    (the medians over rounds). Ratios are the median over rounds of network / reference in the same round.
    """
    from refineformer3d.experiments.benchmark import inferer_settings, sliding_window
    from refineformer3d.experiments.summary import count_windows

    settings = inferer_settings()
    window, volume = torch.randn(1, 4, *roi), torch.randn(1, 4, *study)
    windows = count_windows(volume.shape, roi, settings["overlap"])
    inferers = {batch: sliding_window(roi, {**settings, "sw_batch_size": batch}) for batch in sw_batch_sizes}
    names = [reference, *(m for m in models if m != reference)]
    nets, stats = {}, {}
    for name in names:
        torch.manual_seed(0)
        nets[name] = create_model(name, in_channels=4, out_channels=3).eval()
        with torch.device("meta"):
            meta = create_model(name, in_channels=4, out_channels=3).eval()
        stats[name] = (sum(p.numel() for p in meta.parameters()), count_flops(meta, window.shape, device="meta")[0])
    with torch.inference_mode():
        per_window = interleaved_times({n: lambda net=nets[n]: net(window) for n in names}, rounds)
        one_pass = interleaved_times({n: lambda net=nets[n]: net(volume) for n in names}, rounds)
        calls = {(n, b): lambda net=nets[n], b=b: inferers[b](volume, net) for n in names for b in sw_batch_sizes}
        swept = interleaved_times(calls, rounds)  # type: ignore[arg-type]
    best = {n: min(sw_batch_sizes, key=lambda b, n=n: statistics.median(swept[(n, b)])) for n in names}
    studies = {n: swept[(n, best[n])] for n in names}
    window_ratio, pass_ratio, study_ratio = (ratios(t, reference) for t in (per_window, one_pass, studies))
    size, window_size = "x".join(map(str, study)), "x".join(map(str, roi))
    lines = [
        f"{torch.get_num_threads()} threads; {rounds} interleaved rounds after a warm-up; window 4x{window_size}; "
        f"study 4x{size} in one pass, and by the sliding window ({windows} windows, overlap {settings['overlap']}, "
        f"{', '.join(map(str, sw_batch_sizes))} per batch, the best counted); times are medians, / {reference} the "
        "median over rounds of the ratio in the same round",
        "",
        f"| network | params (M) | / {reference} | GFLOP per window | / {reference} | window (s) | / {reference} | "
        f"one pass (s) | / {reference} | sliding window (s) | windows per batch | / {reference} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    params_ref, flops_ref = stats[reference]
    for n in names:
        params, flops = stats[n]
        lines.append(
            f"| {n} | {params / 1e6:.3f} | {params / params_ref:.3f} | {flops / 1e9:.2f} | {flops / flops_ref:.3f} | "
            f"{statistics.median(per_window[n]):.3f} | {window_ratio[n][0]:.3f} | "
            f"{statistics.median(one_pass[n]):.3f} | {pass_ratio[n][0]:.3f} | "
            f"{statistics.median(studies[n]):.3f} | {best[n]} | {study_ratio[n][0]:.3f} |"
        )
    return "\n".join(lines)


def early_exit(studies: int, thresholds: Sequence[float], crop: bool = True) -> str:
    from monai.bundle import ConfigParser
    from monai.inferers import sliding_window_inference

    parser = ConfigParser()
    parser.read_config("bundle/configs/inference.json")
    if not crop:
        parser["preprocessing#transforms"] = [
            t for t in parser["preprocessing#transforms"] if t["_target_"] != "CropForegroundd"
        ]
    preprocessing = parser.get_parsed_content("preprocessing")
    roi, overlap = parser.get_parsed_content("roi_size"), parser.get_parsed_content("sw_overlap")
    lines = [
        "| study | preprocessed shape | windows | min brain fraction | "
        + " | ".join(f"skipped at {t}" for t in thresholds)
        + " |",
        "|---" * (4 + len(thresholds)) + "|",
    ]
    for item in parser.get_parsed_content("datalist")[:studies]:
        image = preprocessing(item)["image"]
        fractions: list[float] = []

        def record(windows: torch.Tensor, fractions: list[float] = fractions) -> torch.Tensor:
            fractions.extend((windows != 0).any(dim=1).flatten(1).float().mean(dim=1).tolist())
            return windows[:, :1]

        sliding_window_inference(image[None], roi, 1, record, overlap=overlap)
        skipped = [sum(f <= t for f in fractions) for t in thresholds]
        lines.append(
            f"| {item['case']} | {tuple(image.shape[1:])} | "
            f"{len(fractions)} | {min(fractions):.2f} | " + " | ".join(map(str, skipped)) + " |"
        )
    return "\n".join(lines)


def int8(onnx_models: Sequence[str], studies: int, rounds: int, threads: int) -> str:
    """Sliding-window time (A/B median) and Dice to the reference of PyTorch and each ONNX model (shipped weights)."""
    from monai.bundle import ConfigParser
    from monai.metrics import compute_dice

    from refineformer3d.labels import label_names, region_labels
    from refineformer3d.onnx import OnnxRuntimeNetwork

    torch.set_num_threads(threads)
    inference = ConfigParser()
    inference.read_config("bundle/configs/inference.json")
    inferer = inference.get_parsed_content("inferer")
    network = inference.get_parsed_content("network_def")
    network.load_state_dict(torch.load("bundle/models/model.pt", map_location="cpu", weights_only=True))
    models = {"pytorch fp32": network.eval()}
    models.update(
        {f"onnxruntime {m.rsplit('/', 1)[-1]}": OnnxRuntimeNetwork(m, num_threads=threads) for m in onnx_models}
    )
    train = ConfigParser()
    train.read_config("bundle/configs/train.json")
    train["verify_dataset"] = False
    preprocessing = train.get_parsed_content("validate#preprocessing")
    regions = region_labels("classes", abbreviations=True)
    classes = {"TC": regions["TC"], "edema": tuple(v for v, n in label_names("classes").items() if n == "edema")}
    classes["WT"] = regions["WT"]
    lines = ["| study | runtime | sliding window time / PyTorch (A/B median) | Dice TC | Dice edema | Dice WT |"]
    lines.append("|---|---|---:|---:|---:|---:|")
    for item in train.get_parsed_content("datalist")["testing"][:studies]:
        data = preprocessing(item)
        image, label = data["image"][None], data["label"][None]
        preds: dict[str, torch.Tensor] = {}

        def run(name: str, model=None, image=image, preds=preds) -> None:
            preds[name] = inferer(image, model).argmax(1, keepdim=True)

        with torch.no_grad():
            medians = interleaved_medians({n: (lambda n=n, m=m: run(n, m)) for n, m in models.items()}, rounds)
        for name, pred in preds.items():
            dice = []
            for values in classes.values():
                p, g = (torch.isin(x, torch.tensor(values)).float() for x in (pred, label))
                dice.append(float(compute_dice(p, g, include_background=True, ignore_empty=False)))
            ratio = medians[name] / medians["pytorch fp32"]
            lines.append(f"| {item['case']} | {name} | {ratio:.2f} | " + " | ".join(f"{d:.4f}" for d in dice) + " |")
    return "\n".join(lines)


def profile(model: str, roi: int, rows: int) -> str:
    """Self CPU time of one forward's operators, grouped by operator and input shapes, largest first."""
    net = create_model(model, in_channels=4, out_channels=3).eval()
    x = torch.randn(1, 4, roi, roi, roi)
    with torch.inference_mode():
        net(x)
        net(x)
        with torch.profiler.profile(record_shapes=True) as prof:
            net(x)
    groups = prof.key_averages(group_by_input_shape=True)
    total = sum(g.self_cpu_time_total for g in groups) / 1e3
    lines = [
        f"one forward: {total:.1f} ms of self CPU time",
        "| operator | input shapes | calls | ms |",
        "|---|---|---:|---:|",
    ]
    for g in sorted(groups, key=lambda g: -g.self_cpu_time_total)[:rows]:
        lines.append(f"| {g.key} | {g.input_shapes} | {g.count} | {g.self_cpu_time_total / 1e3:.1f} |")
    return "\n".join(lines)


def budget(speedup: float, rounds: int, volume: Sequence[int], model: str = "refineformer3d_tiny") -> str:
    """What a study ``speedup`` times faster than SegFormer3D's leaves ``model`` per window, against its parts.

    In one process, in interleaved rounds: SegFormer3D's whole volume at two windows per batch (its best on a CPU),
    ``model``'s at one (``inference.json``'s CPU setting), and the sliding window alone (a predictor that returns
    zeros: gathering windows, Gaussian weighting, stitching). The window budget is ``(SegFormer3D / speedup - sliding
    window) / windows``. Then ``model``'s forwards of one window are timed with timers on the token mixers of its
    first (1/4-resolution) stage and on its full-resolution step: the rest is what no change to those two can reach.
    """
    from refineformer3d.experiments.benchmark import inferer_settings, sliding_window
    from refineformer3d.experiments.summary import count_windows

    settings = inferer_settings()
    roi = tuple(settings["roi_size"])
    image = torch.randn(1, 4, *volume)
    windows = count_windows(image.shape, roi, settings["overlap"])
    inferer = {batch: sliding_window(roi, {**settings, "sw_batch_size": batch}) for batch in (1, 2)}
    segformer = create_model("segformer3d", in_channels=4, out_channels=3).eval()
    net = create_model(model, in_channels=4, out_channels=3).eval()

    def zeros(x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros((x.shape[0], 3, *x.shape[2:]))

    studies = {
        "SegFormer3D, 2 windows per batch": lambda: inferer[2](image, segformer),
        f"{model}, 1 window per batch": lambda: inferer[1](image, net),
        "the sliding window alone": lambda: inferer[1](image, zeros),
    }
    with torch.inference_mode():
        seg, own, alone = (statistics.median(t) for t in interleaved_times(studies, rounds).values())

    spent = {"first stage's token mixing": 0.0, "full-resolution step": 0.0}

    def timed(part: str, fn: Callable) -> Callable:
        def run(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            spent[part] += time.perf_counter() - start
            return out

        return run

    for block in net.encoder.stages[0].blocks:
        block.attn.forward = timed("first stage's token mixing", block.attn.forward)
    head = net.decode_head
    head._classify_full_resolution = timed("full-resolution step", head._classify_full_resolution)
    window = torch.randn(1, 4, *roi)
    forwards = 4 * rounds
    with torch.inference_mode():
        net(window)
        spent.update(dict.fromkeys(spent, 0.0))  # the warm-up's time out
        start = time.perf_counter()
        for _ in range(forwards):
            net(window)
        forward = (time.perf_counter() - start) / forwards
    target = seg / speedup
    window_budget = (target - alone) / windows
    rest = forward - sum(spent.values()) / forwards
    in_study = (own - alone) / windows
    ms = 1e3
    lines = [
        f"whole 4x{'x'.join(map(str, volume))} volume: {windows} windows of {'x'.join(map(str, roi))}, overlap "
        f"{settings['overlap']}, {torch.get_num_threads()} threads; studies: medians of {rounds} rounds; forwards: the "
        f"mean of {forwards}",
        "",
        "| | time |",
        "|---|---:|",
        f"| SegFormer3D's study (2 windows per batch) | {seg:.2f} s |",
        f"| {model}'s study (1 window per batch) | {own:.2f} s ({own / seg:.2f} of SegFormer3D's) |",
        f"| the sliding window alone | {alone:.2f} s |",
        f"| a study {speedup:g} times faster than SegFormer3D's | {target:.2f} s |",
        f"| what that leaves a window: (that - the sliding window) / {windows} | {window_budget * ms:.0f} ms |",
        f"| {model}'s window in its study: (study - the sliding window) / {windows} | {in_study * ms:.0f} ms |",
        f"| {model}'s forward of one window | {forward * ms:.0f} ms |",
    ]
    lines += [f"| of which the {part} | {seconds / forwards * ms:.0f} ms |" for part, seconds in spent.items()]
    lines.append(f"| of which the rest | {rest * ms:.0f} ms ({rest / window_budget:.2f} of the window budget) |")
    return "\n".join(lines)


def window_threads(model: str, roi: int, rounds: int, volume: Sequence[int] | None = None) -> str:
    """Windows per second on two cores: one window on two intra-op threads, or two windows at once, one per core.

    Two windows at once are a batch of two on two intra-op threads, or two single windows in two Python threads with
    one intra-op thread each (PyTorch releases the GIL inside its kernels). Medians over ``rounds`` after a warm-up.
    With ``volume``, also a whole ``4 x volume`` through MONAI's sliding window (overlap 0.5, Gaussian blending): one
    window per batch on two threads, against two per batch, each in its own thread.
    """
    from concurrent.futures import ThreadPoolExecutor

    from monai.inferers import SlidingWindowInferer

    net = create_model(model, in_channels=4, out_channels=3).eval()
    one, two = torch.randn(1, 4, roi, roi, roi), torch.randn(2, 4, roi, roi, roi)
    pool = ThreadPoolExecutor(2)

    def single(window: torch.Tensor) -> torch.Tensor:
        torch.set_num_threads(1)  # this worker's own intra-op threads
        with torch.inference_mode():  # a thread-local mode: each worker enters it itself
            return net(window)

    def split(windows: torch.Tensor) -> torch.Tensor:
        return torch.cat(list(pool.map(single, windows.split(1))))

    arms = (  # (name, intra-op threads, windows, call)
        ("one window, 2 threads", 2, 1, lambda: net(one)),
        ("one window, 1 thread", 1, 1, lambda: net(one)),
        ("batch of two, 2 threads", 2, 2, lambda: net(two)),
        ("two windows in 2 Python threads, 1 thread each", 2, 2, lambda: split(two)),
    )
    threads = torch.get_num_threads()

    def with_threads(intra_op: int, call: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            torch.set_num_threads(intra_op)
            return call()

        return run

    try:
        with torch.inference_mode():
            times = interleaved_times({name: with_threads(n, call) for name, n, _, call in arms}, rounds)
    finally:
        torch.set_num_threads(threads)
        if volume is None:
            pool.shutdown()
    per_window = {name: [t / windows for t in times[name]] for name, _, windows, _ in arms}
    relative = ratios(per_window, arms[0][0])
    lines = [
        f"| how | windows | median (s) | per window (s) | per window / {arms[0][0]}, median of rounds |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, _, windows, _ in arms:
        seconds = statistics.median(times[name])
        lines.append(f"| {name} | {windows} | {seconds:.3f} | {seconds / windows:.3f} | {relative[name][0]:.2f} |")
    if volume is None:
        return "\n".join(lines)

    image = torch.randn(1, 4, *volume)

    def inferer(batch: int) -> SlidingWindowInferer:
        return SlidingWindowInferer((roi,) * 3, sw_batch_size=batch, overlap=0.5, mode="gaussian")

    studies = {
        "one window per batch, 2 threads": lambda: inferer(1)(image, net),
        "two per batch, each in its own thread": lambda: inferer(2)(image, split),
    }
    try:
        torch.set_num_threads(2)
        with torch.inference_mode():
            times = interleaved_times(studies, rounds)
    finally:
        pool.shutdown()
        torch.set_num_threads(threads)
    relative = ratios(times, next(iter(studies)))
    lines += [
        "",
        f"| whole 4x{'x'.join(map(str, volume))} volume | median (s) | / one window per batch |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {statistics.median(t):.2f} | {relative[name][0]:.2f} |" for name, t in times.items()]
    return "\n".join(lines)


def tumour_windows(studies: int, margins: Sequence[int]) -> str:
    """The most that skipping *confidently background* windows could save: windows with no tumour near them.

    A first pass that judged windows by the network's own output could at best skip the windows whose region, grown
    by a margin (a coarse pass is blurred, and the blending reaches across window edges), holds no tumour voxel. The
    reference labels stand in for a perfect first pass. Studies are the labelled real-size ones, preprocessed by
    ``train.json``'s deterministic transforms (which crop to the brain as ``inference.json`` does), windows laid as
    ``inference.json``'s sliding window lays them.
    """
    import numpy as np
    from monai.bundle import ConfigParser
    from monai.inferers import sliding_window_inference
    from scipy import ndimage

    parser = ConfigParser()
    parser.read_config("bundle/configs/inference.json")
    roi, overlap = parser.get_parsed_content("roi_size"), parser.get_parsed_content("sw_overlap")
    train = ConfigParser()
    train.read_config("bundle/configs/train.json")
    preprocessing = train.get_parsed_content("validate#preprocessing")
    datalist = train.get_parsed_content("datalist")
    items = [item for split in ("training", "validation", "testing") for item in datalist.get(split, [])][:studies]
    lines = [
        "| study | preprocessed shape | tumour extent (voxels) | windows | "
        + " | ".join(f"tumour-free at margin {m}" for m in margins)
        + " |",
        "|---" * (4 + len(margins)) + "|",
    ]
    for item in items:
        tumour = np.asarray(preprocessing(item)["label"][0]) > 0
        voxels = np.argwhere(tumour)
        extent = tuple(int(e) for e in voxels.max(axis=0) - voxels.min(axis=0) + 1)
        free = []
        for m in margins:
            # a window grown by m holds tumour exactly when the window holds tumour dilated by a (2m + 1)^3 cube;
            # MONAI's own sliding window then lays (and pads) the windows as inference does
            grown = ndimage.maximum_filter(tumour, size=2 * m + 1) if m else tumour
            holds: list[bool] = []

            def record(windows: torch.Tensor, holds: list[bool] = holds) -> torch.Tensor:
                holds.extend(windows.flatten(1).any(dim=1).tolist())
                return windows

            sliding_window_inference(torch.from_numpy(grown)[None, None].float(), roi, 1, record, overlap=overlap)
            free.append(holds.count(False))
        lines.append(
            f"| {item['case']} | {tuple(tumour.shape)} | {extent} | {len(holds)} | " + " | ".join(map(str, free)) + " |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``refineformer3d-efficiency-ideas``); prints the part's table, returns the exit
    status."""
    description, _, usage = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(
        prog="python -m refineformer3d.experiments.efficiency_ideas",
        description=description,
        epilog=usage,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="part", required=True)
    net = sub.add_parser("networks")
    net.add_argument("--models", nargs="+", default=["refineformer3d_tiny", "refineformer3d_small"])
    net.add_argument("--roi", type=int, default=128)
    net.add_argument("--rounds", type=int, default=5)
    net.add_argument("--threads", type=int, default=2)
    net.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="arms besides the default")
    va = sub.add_parser("variants")
    va.add_argument(
        "--models",
        nargs="+",
        default=[
            "refineformer3d_tiny",
            "refineformer3d_tiny_axial",
            "refineformer3d_tiny_slices",
            "refineformer3d_nano",
        ],
    )
    va.add_argument("--reference", default="segformer3d")
    va.add_argument("--roi", type=int, nargs=3, default=[128, 128, 128], metavar=("D", "H", "W"))
    va.add_argument("--study", type=int, nargs=3, default=[160, 192, 160], metavar=("D", "H", "W"))
    va.add_argument("--rounds", type=int, default=5)
    va.add_argument("--threads", type=int, default=2)
    ee = sub.add_parser("early-exit")
    ee.add_argument("--studies", type=int, default=5)
    ee.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5])
    ee.add_argument("--no-crop", action="store_true", help="leave out CropForegroundd (the whole head grid)")
    tw = sub.add_parser("tumour-windows")
    tw.add_argument("--studies", type=int, default=12)
    tw.add_argument("--margins", type=int, nargs="+", default=[0, 8, 16])
    wt = sub.add_parser("window-threads")
    wt.add_argument("--model", default="refineformer3d_tiny")
    wt.add_argument("--roi", type=int, default=128)
    wt.add_argument("--rounds", type=int, default=5)
    wt.add_argument("--volume", type=int, nargs=3, default=None, metavar=("D", "H", "W"), help="also a whole volume")
    bu = sub.add_parser("budget")
    bu.add_argument("--speedup", type=float, default=5.0, help="the target: a study this many times faster")
    bu.add_argument("--model", default="refineformer3d_tiny")
    bu.add_argument("--rounds", type=int, default=3)
    bu.add_argument("--volume", type=int, nargs=3, default=[240, 240, 155], metavar=("D", "H", "W"))
    bu.add_argument("--threads", type=int, default=2)
    pr = sub.add_parser("profile")
    pr.add_argument("--model", default="refineformer3d_tiny")
    pr.add_argument("--roi", type=int, default=128)
    pr.add_argument("--rows", type=int, default=25)
    pr.add_argument("--threads", type=int, default=2)
    q = sub.add_parser("int8")
    q.add_argument(
        "--onnx", nargs="+", required=True, help="exported fp32 and INT8 models (python -m refineformer3d.onnx)"
    )
    q.add_argument("--studies", type=int, default=2)
    q.add_argument("--rounds", type=int, default=3)
    q.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.part == "networks":
        torch.set_num_threads(args.threads)
        print(networks(args.models, args.roi, args.rounds, args.arms))
    elif args.part == "variants":
        torch.set_num_threads(args.threads)
        print(variants(args.models, args.reference, args.roi, args.study, args.rounds))
    elif args.part == "early-exit":
        print(early_exit(args.studies, args.thresholds, crop=not args.no_crop))
    elif args.part == "budget":
        torch.set_num_threads(args.threads)
        print(budget(args.speedup, args.rounds, args.volume, args.model))
    elif args.part == "profile":
        torch.set_num_threads(args.threads)
        print(profile(args.model, args.roi, args.rows))
    elif args.part == "window-threads":
        print(window_threads(args.model, args.roi, args.rounds, args.volume))
    elif args.part == "tumour-windows":
        print(tumour_windows(args.studies, args.margins))
    else:
        print(int8(args.onnx, args.studies, args.rounds, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
