"""``python -m refineformer3d.data.synthetic``: writes a synthetic dataset."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .dataset import make_dataset
from .phantom import BRATS_SHAPE, SHIFTS


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 on bad input, with one line on stderr)."""
    parser = argparse.ArgumentParser(
        prog="python -m refineformer3d.data.synthetic",
        description="Write realistic synthetic brain-tumour studies in the BraTS 2017 layout.",
    )
    parser.add_argument("--output", required=True, help="dataset folder to create")
    parser.add_argument("--cases", type=int, default=20, help="labelled training cases (HGG and LGG)")
    parser.add_argument("--validation_cases", type=int, default=5, help="unlabelled cases (Brats17ValidationData)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs=3, default=list(BRATS_SHAPE), metavar=("X", "Y", "Z"))
    parser.add_argument("--preview", action="store_true", help="write preview/<case>.png (needs matplotlib)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    parser.add_argument(
        "--recipe",
        default="default",
        help="default; shifted: other contrasts, lobed tumours, more noise and bias, thick slices (out-of-distribution "
        f"tests); shifted:PART+PART applies only those parts, of {', '.join(SHIFTS)}",
    )
    parser.add_argument(
        "--contrast_jitter",
        type=float,
        default=0.0,
        help="randomise the contrast table per study, each entry times exp(U(-j, j)) (training data; e.g. 0.3)",
    )
    args = parser.parse_args(argv)
    try:
        root = make_dataset(
            args.output,
            args.cases,
            args.validation_cases,
            args.seed,
            args.shape,
            args.preview,
            args.overwrite,
            args.recipe,
            args.contrast_jitter,
        )
    except (ValueError, OSError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(root)
    return 0
