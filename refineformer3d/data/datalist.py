"""Decathlon-style datalists of BraTS datasets, and the studies inference runs on.

Layouts (BraTS 2017-2023+, MSD Task01) are detected by :mod:`refineformer3d.data.layouts`; :func:`find_studies` also
takes single studies in any naming :mod:`refineformer3d.data.modalities` knows. Channel order is always FLAIR, T1,
T1ce, T2.

Label conventions (raw values of the label files):

* ``brats`` (2017-2021): 1 necrosis / non-enhancing tumour, 2 edema, 4 enhancing tumour.
* ``brats2023``: 1 necrosis / non-enhancing tumour, 2 edema, 3 enhancing tumour.
* ``msd``: 1 edema, 2 non-enhancing tumour, 3 enhancing tumour.

Labelled cases are split into training, validation and testing; cases without a label file (validation-data folders,
``imagesTs``) go to testing, after the labelled test cases, for inference only.

Command line::

    python -m refineformer3d.data.datalist --dataset_dir DIR --output datalist.json \\
        [--val_fraction 0.2 --test_fraction 0.1 --seed 0] [--num_folds K --fold F] [--no_verify]

On bad input it prints one line to stderr, exits with status 2 and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from refineformer3d.data.errors import DatasetError, InputError
from refineformer3d.data.layouts import (
    LAYOUTS,
    UnknownLayoutError,
    _Case,
    _is_nifti,
    detect_layout,
    discover,
    find_study_folders,
    read_study,
)
from refineformer3d.data.modalities import CHANNELS, file_stem, is_image_file, study_name
from refineformer3d.data.validation import check_study, verify_entries
from refineformer3d.data.validation import study_name as entry_study_name
from refineformer3d.io import write_atomically
from refineformer3d.labels import CONVENTIONS

__all__ = [
    "CHANNELS",
    "LABEL_CONVENTIONS",
    "LAYOUTS",
    "SPLITS",
    "DatasetError",
    "detect_layout",
    "build_datalist",
    "write_datalist",
    "load_datalist",
    "checked_datalist",
    "find_studies",
    "label_convention_of",
    "main",
]

SPLITS = ("training", "validation", "testing")
LABEL_CONVENTIONS = CONVENTIONS
_CONVENTION_OF_LAYOUT = {"brats2023": "brats2023", "msd": "msd"}  # the others: "brats"


def _check_case(case: _Case, root: Path, convention: str) -> list[str]:
    """Problems with one case's files (see :func:`refineformer3d.data.validation.check_study`)."""
    return check_study(_entry(case, root, absolute=True), root, convention)


def _split(
    cases: list[_Case], val_fraction: float, test_fraction: float, seed: int, num_folds: int = 0, fold: int = 0
) -> dict[str, list[_Case]]:
    """Deterministic split that keeps each grade's share in every split.

    Each grade's cases are shuffled and spread evenly over [0, 1); sorting all cases by that position interleaves
    the grades, so any prefix holds them in proportion. Testing takes the first cases, validation the next. With
    ``num_folds``, the ordered cases are dealt to the folds in turn (every fold again holds the grades in proportion),
    testing is fold ``fold`` and validation is taken from the other folds' cases, so that the checkpoint is chosen on
    cases the fold's test never sees.
    """
    rng = np.random.default_rng(seed)
    positions = []
    for grade in sorted({str(c.grade) for c in cases}):
        members = [c for c in cases if str(c.grade) == grade]
        order = rng.permutation(len(members))
        positions += [((rank + 0.5) / len(members), grade, members[i].name, members[i]) for rank, i in enumerate(order)]
    ordered = [p[-1] for p in sorted(positions, key=lambda p: p[:3])]
    total = len(ordered)
    n_val = max(1, round(total * val_fraction)) if val_fraction > 0 else 0
    if num_folds:
        if total < num_folds:
            raise DatasetError([f"{total} labelled cases are too few for {num_folds} folds"])
        testing = ordered[fold::num_folds]
        rest = [c for i, c in enumerate(ordered) if i % num_folds != fold]
    else:
        n_test = max(1, round(total * test_fraction)) if test_fraction > 0 else 0
        testing, rest = ordered[:n_test], ordered[n_test:]
    if total and n_val >= len(rest):
        raise DatasetError(
            [
                f"{total} labelled cases are too few for val_fraction {val_fraction} and "
                + (f"{num_folds} folds" if num_folds else f"test_fraction {test_fraction}")
                + ": no training cases would be left"
            ]
        )
    validation, training = rest[:n_val], rest[n_val:]
    return {
        "training": sorted(training, key=lambda c: c.name),
        "validation": sorted(validation, key=lambda c: c.name),
        "testing": sorted(testing, key=lambda c: c.name),
    }


def _entry(case: _Case, root: Path, absolute: bool = False) -> dict:
    def relative(path: Path) -> str:
        return str(path) if absolute else path.relative_to(root).as_posix()

    entry: dict = {"image": [relative(p) for p in case.image] if isinstance(case.image, list) else relative(case.image)}
    if case.label is not None:
        entry["label"] = relative(case.label)
    entry["case"] = case.name
    return entry


def build_datalist(
    dataset_dir: str | os.PathLike,
    val_fraction: float = 0.2,
    test_fraction: float = 0.1,
    seed: int = 0,
    verify: bool = True,
    num_folds: int = 0,
    fold: int = 0,
) -> dict:
    """Discovers a BraTS or MSD dataset and splits it into a Decathlon-style datalist.

    Args:
        dataset_dir: dataset root (any folder above the case folders).
        val_fraction: share of the labelled cases for validation (at least one case when above 0).
        test_fraction: share of the labelled cases for testing (at least one case when above 0); ignored with
            ``num_folds``.
        seed: split seed; the same seed and dataset give the same split (and the same folds).
        verify: read every file and check it (readable, shapes and affines agree, no NaN, no empty image, label values
            within the layout's convention). Reads the whole dataset, in parallel threads.
        num_folds: for cross-validation, the number of folds the labelled cases are dealt to (0: no folds). Testing
            is then fold ``fold``; validation, ``val_fraction`` of all labelled cases, comes from the other folds.
        fold: the test fold, in ``[0, num_folds)``.

    Returns:
        ``{"layout", "label_convention", "channels", "dataset_dir", "training", "validation", "testing"}``, and
        ``"num_folds"``, ``"fold"`` and ``"seed"`` with folds. Each entry is ``{"image": [flair, t1, t1ce, t2] or
        one 4-D file, "label": file, "case": name}`` with paths relative to ``dataset_dir``. Testing lists the
        labelled held-out cases, then the unlabelled ones (validation-data folders, MSD ``imagesTs``), which have
        no ``"label"``.

    Raises:
        DatasetError: (a ``ValueError``) listing every problem found, each naming the case and file; or for bad
            fractions or a negative seed.

    Example:
        >>> datalist = build_datalist("/data/BraTS2017", seed=0)
        >>> datalist["training"][0]["image"][0]
        'Brats17TrainingData/HGG/Brats17_2013_10_1/Brats17_2013_10_1_flair.nii.gz'
    """
    if seed < 0:
        raise DatasetError([f"seed must be >= 0, got {seed}"])
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DatasetError(
            [
                f"val_fraction and test_fraction must be in [0, 1) with a sum below 1, got "
                f"{val_fraction} and {test_fraction}"
            ]
        )
    if num_folds < 0 or num_folds == 1 or not (num_folds == 0 or 0 <= fold < num_folds):
        raise DatasetError([f"num_folds must be 0 or at least 2, and fold in [0, num_folds); got {num_folds}, {fold}"])
    root, layout, cases = discover(dataset_dir)
    convention = _CONVENTION_OF_LAYOUT.get(layout, "brats")
    if verify:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            problems = [p for found in pool.map(lambda c: _check_case(c, root, convention), cases) for p in found]
        if problems:
            raise DatasetError(problems, where=str(root))
    labelled = [c for c in cases if c.label is not None]
    splits = _split(labelled, val_fraction, test_fraction, seed, num_folds, fold)
    datalist: dict = {
        "layout": layout,
        "label_convention": convention,
        "channels": list(CHANNELS),
        "dataset_dir": str(root),
    }
    if num_folds:
        datalist.update(num_folds=num_folds, fold=fold, seed=seed)
    for split in SPLITS:
        datalist[split] = [_entry(c, root) for c in splits[split]]
    datalist["testing"] += [_entry(c, root) for c in cases if c.label is None]
    return datalist


def write_datalist(datalist: Mapping, output: str | os.PathLike) -> Path:
    """Writes a datalist as JSON, atomically: the file appears complete or not at all.

    ``dataset_dir`` is written relative to the file's folder, so the two can move together.

    Returns:
        The path written.

    Raises:
        ValueError: for a datalist without the three splits, or an output folder that does not exist.
    """
    missing = [s for s in SPLITS if not isinstance(datalist.get(s), list)]
    if missing:
        raise ValueError(f"datalist has no {', '.join(missing)} list")
    output = Path(output).expanduser().absolute()
    if not output.parent.is_dir():
        raise ValueError(f"folder {output.parent} does not exist")
    content = dict(datalist)
    if "dataset_dir" in content:
        content["dataset_dir"] = os.path.relpath(content["dataset_dir"], output.parent)
    text = json.dumps(content, indent=2) + "\n"
    write_atomically(output, lambda tmp: Path(tmp).write_text(text))
    return output


def _absolute(value, base: Path, where: str):
    if isinstance(value, Mapping):
        # The explicit form {"flair": ..., "t1": ..., "t1ce": ..., "t2": ...}: stored in channel order.
        missing = [c for c in CHANNELS if c not in value]
        unknown = sorted(set(value) - set(CHANNELS))
        if missing or unknown:
            raise DatasetError(
                [f"{where}: a modality mapping needs the keys {list(CHANNELS)}; missing {missing}, unknown {unknown}"]
            )
        value = [value[c] for c in CHANNELS]
    if isinstance(value, str):
        return os.path.normpath(os.path.join(base, value))
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [_absolute(v, base, where) for v in value]
    raise DatasetError([f"{where}: expected a path, a list of paths or a modality mapping, got {value!r}"])


def _convention_of(content: Mapping, where: str) -> str:
    convention = content.get("label_convention")
    if convention is None:
        # MSD's dataset.json names its labels; "1": "edema" is the MSD meaning.
        labels = content.get("labels")
        convention = "msd" if isinstance(labels, Mapping) and "edema" in str(labels.get("1", "")).lower() else "brats"
    if convention not in LABEL_CONVENTIONS:
        raise DatasetError(
            [f"{where}: unknown label_convention {convention!r}; expected one of {sorted(LABEL_CONVENTIONS)}"]
        )
    return convention


def _load_json(path: Path) -> dict:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DatasetError([f"cannot read datalist {path}: {error}"]) from None
    if not isinstance(content, dict):
        raise DatasetError([f"datalist {path} is not a JSON object with training/validation/testing lists"])
    base = path.parent
    if "dataset_dir" in content:
        base = Path(os.path.normpath(path.parent / content["dataset_dir"]))
    datalist = {
        "layout": content.get("layout"),
        "label_convention": _convention_of(content, str(path)),
        "channels": content.get("channels", list(CHANNELS)),
        "dataset_dir": str(base),
    }
    # MONAI's load_decathlon_datalist is not used: it turns any other string value (such as "case") into a path
    # when a file of that name happens to exist.
    problems = []
    for split, keys in (("training", ("training",)), ("validation", ("validation",)), ("testing", ("testing", "test"))):
        entries = next((content[k] for k in keys if k in content), [])
        if not isinstance(entries, list):
            raise DatasetError([f"datalist {path}: {split} is not a list"])
        resolved = []
        for i, entry in enumerate(entries):
            entry = {"image": entry} if isinstance(entry, str) else entry  # MSD lists test images as strings
            if not isinstance(entry, Mapping) or "image" not in entry:
                raise DatasetError([f"datalist {path}: {split}[{i}] has no image"])
            entry = dict(entry)
            for key in ("image", "label"):
                if key in entry:
                    entry[key] = _absolute(entry[key], base, f"datalist {path}: {split}[{i}].{key}")
                    files = entry[key] if isinstance(entry[key], list) else [entry[key]]
                    # An image may be a DICOM series folder.
                    exists = os.path.exists if key == "image" else os.path.isfile
                    problems += [f"{split}[{i}]: missing file {f}" for f in files if not exists(f)]
            resolved.append(entry)
        datalist[split] = resolved
    if problems:
        raise DatasetError(problems, where=f"datalist {path}")
    return datalist


def load_datalist(source: str | os.PathLike, split: str | None = None, **build_kwargs):
    """Loads a datalist with absolute paths, from a dataset folder or a datalist JSON.

    Args:
        source: a dataset folder (built with :func:`build_datalist`, verified by default), or a datalist JSON: ours,
            or MONAI Decathlon ``dataset.json`` style (``training`` and ``test`` lists). Relative paths in a JSON
            are resolved against its ``dataset_dir`` (itself relative to the JSON's folder) or else its folder.
        split: ``"training"``, ``"validation"`` or ``"testing"`` to get that list only.
        build_kwargs: ``val_fraction``, ``test_fraction``, ``seed``, ``verify`` for a dataset folder; ignored for a
            JSON, whose split is fixed.

    Returns:
        The datalist dict (see :func:`build_datalist`) with absolute paths, or the list for ``split``.

    Raises:
        DatasetError: (a ``ValueError``) for a missing source, a bad JSON, missing files, or any problem
            :func:`build_datalist` finds.
        ValueError: for an unknown ``split``.

    Example:
        >>> training = load_datalist("/data/BraTS2017", seed=0)["training"]
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    path = Path(source).expanduser().absolute()
    if path.is_dir():
        datalist = build_datalist(path, **build_kwargs)
        base = Path(datalist["dataset_dir"])
        for name in SPLITS:
            datalist[name] = [
                {k: _absolute(v, base, name) if k in ("image", "label") else v for k, v in e.items()}
                for e in datalist[name]
            ]
    elif path.is_file():
        datalist = _load_json(path)
    else:
        raise DatasetError([f"{path} does not exist; expected a dataset folder or a datalist JSON"])
    # Each labelled entry names its convention too, so a config can take the convention from the entries it trains
    # on (see label_convention_of) and a caller that swaps the entries (MONAI Label) needs no dataset folder. The key
    # is not "label_convention": MONAI's Spacingd treats every "label_*" entry as the label's metadata dict.
    for name in SPLITS:
        for entry in datalist[name]:
            if "label" in entry:
                entry.setdefault("convention", datalist["label_convention"])
    return datalist if split is None else datalist[split]


def checked_datalist(
    source: str | os.PathLike,
    splits: Sequence[str] = ("training", "validation", "testing"),
    verify: bool = True,
    pixdim: Sequence[float] | None = None,
    **build_kwargs,
) -> dict:
    """:func:`load_datalist` for a bundle: any input error ends the run with one line.

    Args:
        source: a dataset folder or a datalist JSON.
        splits: the splits whose studies are verified (read in full once, then cached; see :func:`verify_entries`);
            all three by default, as the evaluation reads the labelled test cases.
        verify: check the studies of ``splits``; False only resolves the datalist (files must exist).
        pixdim: the voxel size the pipeline resamples to (see :func:`~refineformer3d.data.validation.check_study`).
        build_kwargs: ``val_fraction``, ``test_fraction``, ``seed`` for a dataset folder.

    Returns:
        The datalist with absolute paths (see :func:`build_datalist`).

    Raises:
        InputError: for a missing source, a bad datalist, or any study that fails the checks.
    """
    try:
        datalist = load_datalist(source, verify=False, **build_kwargs)
    except DatasetError as error:
        raise InputError.printed(str(error)) from None
    if verify:
        entries = [e for split in splits for e in datalist[split]]
        verify_entries(
            entries, datalist["dataset_dir"], datalist["label_convention"], pixdim, where=str(datalist["dataset_dir"])
        )
    return datalist


def label_convention_of(entries: Sequence[Mapping], default: str = "brats") -> str:
    """The label convention shared by datalist entries.

    Entries from :func:`load_datalist` carry ``convention``; entries without it (as MONAI Label's datastore hands
    them over) follow ``default``.

    Args:
        entries: datalist entries (dicts with ``image`` and ``label``).
        default: the convention of entries that do not name one.

    Returns:
        The convention.

    Raises:
        DatasetError: when entries name different conventions or an unknown one.
    """
    conventions = {str(e.get("convention", default)) for e in entries} or {default}
    unknown = sorted(conventions - set(LABEL_CONVENTIONS))
    if unknown:
        raise DatasetError([f"unknown label_convention {unknown}; expected one of {sorted(LABEL_CONVENTIONS)}"])
    if len(conventions) > 1:
        raise DatasetError([f"entries mix label conventions {sorted(conventions)}; train on one convention at a time"])
    return conventions.pop()


def _study_file(path: Path, check: bool = True) -> dict:
    """A 4-D study file as an entry; ``check=False`` leaves reading it to the caller (a batch skips bad files)."""
    if not check:
        return {"image": str(path), "case": file_stem(path)}
    try:
        shape = nib.load(path).shape
    except Exception as error:  # as in _read: many exception types, one meaning
        raise DatasetError([f"cannot read {path} ({type(error).__name__}: {error})"]) from None
    if len(shape) != 4 or shape[3] != len(CHANNELS):
        raise DatasetError(
            [f"{path}: expected a 4-D NIfTI with 4 channels last (FLAIR, T1, T1ce, T2), got shape {shape}"]
        )
    return {"image": str(path), "case": file_stem(path)}


def find_studies(
    source: str | os.PathLike,
    modality_files: Mapping[str, str | os.PathLike] | None = None,
    dicom_keywords: Mapping[str, Sequence[str]] | None = None,
    skipped: dict[str, str] | None = None,
) -> list[dict]:
    """Lists studies for inference.

    Args:
        source: one of
            * a dataset folder in any layout: every case, labelled or not;
            * one study folder, or a folder of study folders, in any naming
              :mod:`~refineformer3d.data.modalities` knows (BraTS, BIDS, plain names, any prefix; NIfTI, NRRD or
              MetaImage files, or one sub-folder per DICOM series);
            * a datalist JSON: its ``testing`` list (``test`` for MSD ``dataset.json``);
            * a single 4-D NIfTI file with channels FLAIR, T1, T1ce, T2 last;
            * a folder of such 4-D files (not searched recursively).
        modality_files: for one study folder, modality -> file (or DICOM series folder), relative to the study or
            absolute: these files are taken as they are, the other modalities are found by name.
        dicom_keywords: SeriesDescription phrases per modality, replacing
            :data:`~refineformer3d.data.modalities.DICOM_KEYWORDS`.
        skipped: for a folder of several studies: a study that lacks a modality or has two candidates for one is
            left out and its one-line problem recorded here under the study's name, so one bad study does not stop
            the batch. Without it, or when no study is left, such a study is an error.

    A study may lack any modality but FLAIR or T1ce: the missing ones are ``None`` in its image list (inference
    fills them as training dropped sequences, see :class:`~refineformer3d.data.transforms.FillMissingSequencesd`).

    Returns:
        ``[{"image": path or [flair, t1, t1ce, t2], "case": name}]`` with absolute paths, sorted by case; never empty.

    Raises:
        DatasetError: (a ``ValueError``) when nothing usable is found, or a study lacks a modality or has two
            candidates for one (see ``skipped``); one line naming the study, the modality and the candidates.
    """
    path = Path(source).expanduser().absolute()
    bad: dict[str, str] | None = None if skipped is None else {}
    if modality_files:
        folders = find_study_folders(path) if path.is_dir() else []
        if len(folders) > 1:
            raise DatasetError([f"{path} holds {len(folders)} studies; a modality mapping applies to one study folder"])
        studies = [read_study(folders[0] if folders else path, modality_files, dicom_keywords, allow_missing=True)]
    elif path.is_file() and path.suffix == ".json":
        entries = load_datalist(path, "testing")
        if not entries:
            raise DatasetError([f"datalist {path} has no testing entries to run inference on"])
        studies = [{"image": e["image"], "case": entry_study_name(e)} for e in entries]
    elif path.is_file() and _is_nifti(path.name):
        studies = [_study_file(path)]
    elif path.is_dir():
        try:
            root, _, cases = discover(path, need_labels=False, skipped=bad, allow_missing=True)
        except UnknownLayoutError as error:
            # A recognised layout with a bad case keeps discover's error, which names the missing file.
            bad = None if skipped is None else {}  # mixed layouts: the folders are read again below
            folders = find_study_folders(path)
            files = sorted(f for f in path.iterdir() if f.is_file() and _is_nifti(f.name))
            if folders:
                studies = _read_studies(folders, dicom_keywords, bad)
            elif files:
                # Checked per study by refineformer3d.data.validation: one bad file must not hide the others.
                studies = [_study_file(f, check=False) for f in files]
            else:
                raise error from None
        else:
            studies = [
                {
                    "image": [p and str(p) for p in c.image] if isinstance(c.image, list) else str(c.image),
                    "case": c.name,
                }
                for c in cases
            ]
            # Studies in other namings beside BraTS-layout cases are part of the batch too.
            covered = {next(p for p in c.image if p).parent for c in cases if isinstance(c.image, list)}
            # A BraTS case is named after its folder: a skipped one is not read again in another naming.
            others = [f for f in find_study_folders(path) if f not in covered and f.name not in (bad or {})]
            studies += _read_studies(others, dicom_keywords, bad)
    else:
        raise DatasetError(
            [
                f"{path} does not exist; expected a dataset folder, a study folder, a datalist JSON, a 4-D NIfTI "
                "file or a folder of them"
            ]
        )
    if bad:
        if not studies:
            raise DatasetError(list(bad.values()))
        skipped.update(bad)
    return sorted(studies, key=lambda s: (s["case"], str(s["image"])))


def _read_studies(folders: Sequence[Path], dicom_keywords, skipped: dict[str, str] | None = None) -> list[dict]:
    """:func:`read_study` of each folder; a bad study goes into ``skipped`` by name, or else all in one error."""
    studies, problems = [], {}
    for folder in folders:
        try:
            studies.append(read_study(folder, dicom_keywords=dicom_keywords, allow_missing=True))
        except DatasetError as bad:
            images = [p for p in folder.iterdir() if p.is_file() and is_image_file(p.name)]
            problems[study_name(images, folder)] = str(bad)
    if problems and skipped is None:
        raise DatasetError(list(problems.values()))
    if skipped is not None:
        skipped.update(problems)
    return studies


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 on bad input, with one line on stderr)."""
    parser = argparse.ArgumentParser(
        prog="python -m refineformer3d.data.datalist",
        description="Write a Decathlon-style datalist for a BraTS (2017-2023+) or MSD Task01 dataset.",
    )
    parser.add_argument("--dataset_dir", required=True, help="dataset root")
    parser.add_argument("--output", required=True, help="datalist JSON to write")
    parser.add_argument("--val_fraction", type=float, default=0.2)
    parser.add_argument("--test_fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_folds", type=int, default=0, help="cross-validation: number of folds (0: none)")
    parser.add_argument("--fold", type=int, default=0, help="cross-validation: the fold that is tested")
    parser.add_argument("--no_verify", action="store_true", help="skip reading and checking every file")
    args = parser.parse_args(argv)
    try:
        datalist = build_datalist(
            args.dataset_dir,
            args.val_fraction,
            args.test_fraction,
            args.seed,
            verify=not args.no_verify,
            num_folds=args.num_folds,
            fold=args.fold,
        )
        output = write_datalist(datalist, args.output)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{len(datalist[s])} {s}" for s in SPLITS)
    print(f"{output}: {datalist['layout']} layout, {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
