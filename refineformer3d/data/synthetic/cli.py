"""``python -m refineformer3d.data.synthetic``: writes a synthetic dataset."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .dataset import make_dataset
from .phantom import BRATS_SHAPE


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
    args = parser.parse_args(argv)
    try:
        root = make_dataset(
            args.output, args.cases, args.validation_cases, args.seed, args.shape, args.preview, args.overwrite
        )
    except (ValueError, OSError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(root)
    return 0
