"""One 4-D NIfTI per study, in MONAI Label's datastore layout.

MONAI Label (and 3D Slicer through it) hands a model one image file per study, so a BraTS case's four modality files
have to become one 4-D file, channels last in FLAIR, T1, T1ce, T2 order. Labels go to ``labels/final/`` in the
model's label values (0 background, 1 tumour core, 2 edema: the names Slicer shows), which MONAI Label trains on::

    python -m refineformer3d.data.studies /data/Brats17TrainingData /data/monailabel-studies
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from ..io import write_atomically
from .datalist import CHANNELS, SPLITS, DatasetError, load_datalist

__all__ = ["write_studies", "main"]


def _classes(label: np.ndarray, convention: str) -> np.ndarray:
    """Raw label values to the model's: 1 tumour core, 2 edema."""
    from .transforms import ConvertBratsLabelsd

    converted = ConvertBratsLabelsd("label", scheme="classes", convention=convention)({"label": label[None]})["label"]
    return np.asarray(converted[0], dtype=np.uint8)


def write_studies(
    source: str | os.PathLike,
    output: str | os.PathLike,
    labels: bool = True,
    limit: int | None = None,
) -> list[Path]:
    """Writes each case as ``<output>/<case>.nii.gz`` (4-D) and its label as ``<output>/labels/final/<case>.nii.gz``.

    Args:
        source: a dataset folder in any layout :func:`~refineformer3d.data.load_datalist` knows, or a datalist JSON.
        output: the MONAI Label studies folder (created).
        labels: also write labels of labelled cases, in the model's values (1 tumour core, 2 edema).
        limit: at most this many cases (labelled first, each group by name), e.g. for a quick trial.

    Returns:
        The 4-D image files written.

    Raises:
        DatasetError: (a ``ValueError``) for what the datalist loader rejects.
    """
    # Every case: a dataset folder's labelled cases all land in "training" with no held-out fractions, the unlabelled
    # ones in "testing"; a datalist JSON keeps its own split, and all of its splits are taken.
    datalist = load_datalist(source, verify=False, val_fraction=0.0, test_fraction=0.0)
    entries = [e for split in SPLITS for e in datalist[split]][:limit]
    output = Path(output)
    (output / "labels" / "final").mkdir(parents=True, exist_ok=True)
    written = []
    for entry in entries:
        files = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        first = nib.load(files[0])
        if len(files) == 1:  # already one 4-D file (MSD layout)
            image = first
        else:
            volume = np.stack([np.asanyarray(nib.load(f).dataobj) for f in files], axis=-1)
            image = nib.Nifti1Image(volume, first.affine, first.header)
            image.header.set_data_dtype(volume.dtype)
        if image.ndim != 4 or image.shape[-1] != len(CHANNELS):
            raise DatasetError([f"{entry['case']}: expected {len(CHANNELS)} channels, got an image of {image.shape}"])
        path = output / f"{entry['case']}.nii.gz"
        write_atomically(path, lambda tmp, image=image: nib.save(image, tmp))
        written.append(path)
        if labels and "label" in entry:
            label = nib.load(entry["label"])
            values = _classes(np.asanyarray(label.dataobj), entry.get("convention", datalist["label_convention"]))
            target = nib.Nifti1Image(values, label.affine, label.header)
            target.header.set_data_dtype(np.uint8)
            write_atomically(output / "labels" / "final" / path.name, lambda tmp, target=target: nib.save(target, tmp))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 on bad input, with one line on stderr)."""
    parser = argparse.ArgumentParser(
        prog="python -m refineformer3d.data.studies",
        description="Write each study as one 4-D NIfTI (and its label) in MONAI Label's datastore layout.",
    )
    parser.add_argument("source", help="dataset folder (any known BraTS/MSD layout) or datalist JSON")
    parser.add_argument("output", help="MONAI Label studies folder to write")
    parser.add_argument("--no-labels", dest="labels", action="store_false", help="write images only")
    parser.add_argument("--limit", type=int, help="at most this many cases")
    args = parser.parse_args(argv)
    try:
        written = write_studies(args.source, args.output, labels=args.labels, limit=args.limit)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} studies to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
