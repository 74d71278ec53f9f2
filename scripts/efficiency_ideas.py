"""Measurements behind bundle/docs/README.md, "Efficiency ideas, measured".

Speed is compared A/B inside one process: the arms of a comparison run in turn, round after round, and the median of
each arm's forwards is divided by the baseline's, so load that other processes put on the machine hits every arm.

Usage::

    python scripts/efficiency_ideas.py networks --rounds 5      # params, GFLOP, forward-time ratios at 4 x 128^3
    python scripts/efficiency_ideas.py early-exit --studies 5   # windows skipped on the real-size synthetic studies
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from refineformer3d.networks import create_model
from refineformer3d.summary import count_flops

FOURIER_1 = ("fourier", "attention", "attention", "attention")
FOURIER_2 = ("fourier", "fourier", "attention", "attention")
ARMS = {
    "default": {},
    "fourier stage 1": {"token_mixers": FOURIER_1},
    "fourier stages 1-2": {"token_mixers": FOURIER_2},
    "ghost off (conv)": {"patch_embed": "conv"},
    "low-rank off": {"ffn_rank_ratio": None},
    "ghost and low-rank off": {"patch_embed": "conv", "ffn_rank_ratio": None},
}


def interleaved_medians(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median wall time (s) of each call, the calls run in turn ``rounds`` times after one warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(rounds + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if r:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def networks(models: Sequence[str], roi: int, rounds: int) -> str:
    lines = ["| network | arm | params | GFLOP (meta, attention counted) | forward time / default (A/B median) |"]
    lines.append("|---|---|---:|---:|---:|")
    x = torch.randn(1, 4, roi, roi, roi)
    for model in models:
        calls, stats = {}, {}
        for arm, overrides in ARMS.items():
            torch.manual_seed(0)
            net = create_model(model, in_channels=4, out_channels=3, **overrides).eval()
            with torch.device("meta"):
                meta = create_model(model, in_channels=4, out_channels=3, **overrides).eval()
            stats[arm] = (sum(p.numel() for p in net.parameters()), count_flops(meta, x.shape, device="meta")[0])
            calls[arm] = lambda net=net: net(x)
        with torch.inference_mode():
            medians = interleaved_medians(calls, rounds)
        for arm, (params, flops) in stats.items():
            ratio = medians[arm] / medians["default"]
            lines.append(f"| {model} | {arm} | {params / 1e6:.3f}M | {flops / 1e9:.2f} | {ratio:.2f} |")
    return "\n".join(lines)


def early_exit(studies: int, thresholds: Sequence[float]) -> str:
    from monai.bundle import ConfigParser
    from monai.inferers import sliding_window_inference

    parser = ConfigParser()
    parser.read_config("bundle/configs/inference.json")
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
            f"| {item['study'] if 'study' in item else len(lines) - 1} | {tuple(image.shape[1:])} | "
            f"{len(fractions)} | {min(fractions):.2f} | " + " | ".join(map(str, skipped)) + " |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    net = sub.add_parser("networks")
    net.add_argument("--models", nargs="+", default=["refineformer3d_tiny", "refineformer3d_small"])
    net.add_argument("--roi", type=int, default=128)
    net.add_argument("--rounds", type=int, default=5)
    ee = sub.add_parser("early-exit")
    ee.add_argument("--studies", type=int, default=5)
    ee.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5])
    args = parser.parse_args(argv)
    if args.part == "networks":
        print(networks(args.models, args.roi, args.rounds))
    else:
        print(early_exit(args.studies, args.thresholds))


if __name__ == "__main__":
    main()
