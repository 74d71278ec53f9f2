"""Writing whole synthetic datasets in the BraTS 2017 layout, and the process-safe cache that reuses them."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from refineformer3d.io import file_lock

from .phantom import BRATS_SHAPE, MODALITIES, _check_shape, check_recipe, make_case
from .preview import _save_preview

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 2
TRAINING_DIR = "Brats17TrainingData"
VALIDATION_DIR = "Brats17ValidationData"
MARKER_FILE = "synthetic.json"
# The marker file names the generator by its public module, so caches stay valid whichever file holds the code.
GENERATOR = "refineformer3d.data.synthetic"


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def _write_dataset(
    root: Path,
    cases: int,
    validation_cases: int,
    seed: int,
    shape: tuple,
    preview: bool,
    recipe: str = "default",
    contrast_jitter: float = 0.0,
) -> None:
    total, done = cases + validation_cases, 0
    logger.info(
        "making %d synthetic studies of %s voxels in %s (once; reused after)", total, "x".join(map(str, shape)), root
    )
    for validation, count in ((False, cases), (True, validation_cases)):
        for index in range(1, count + 1):
            case = make_case(seed, index, shape, validation, recipe, contrast_jitter)
            done += 1
            logger.info("synthetic study %d/%d: %s", done, total, case.name)
            folder = root / VALIDATION_DIR / case.name if validation else root / TRAINING_DIR / case.grade / case.name
            folder.mkdir(parents=True)
            for modality, volume in zip(MODALITIES, case.images, strict=True):
                _save_nifti(volume, case.affine, folder / f"{case.name}_{modality}.nii.gz")
            if not validation:
                _save_nifti(case.label, case.affine, folder / f"{case.name}_seg.nii.gz")
            if preview:
                (root / "preview").mkdir(exist_ok=True)
                _save_preview(case, root / "preview" / f"{case.name}.png")
    # Written last: a dataset with this file is complete.
    parameters = _parameters(cases, validation_cases, seed, shape, recipe, contrast_jitter)
    (root / MARKER_FILE).write_text(json.dumps(parameters, indent=2) + "\n")


def _parameters(
    cases: int, validation_cases: int, seed: int, shape: tuple, recipe: str = "default", contrast_jitter: float = 0.0
) -> dict:
    parameters = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "cases": cases,
        "validation_cases": validation_cases,
        "seed": seed,
        "shape": list(shape),
    }
    # Named only when not the default, so the default datasets made before these options stay valid caches.
    if recipe != "default":
        parameters["recipe"] = recipe
    if contrast_jitter:
        parameters["contrast_jitter"] = float(contrast_jitter)
    return parameters


def _variant(recipe: str, contrast_jitter: float) -> str:
    """The cache folder's suffix for a non-default recipe or jitter; empty for the default."""
    # "shifted:bias+slices" becomes "-shifted-bias-slices": a folder name any file system takes
    named = recipe.replace(":", "-").replace("+", "-")
    return ("" if recipe == "default" else f"-{named}") + (f"-j{contrast_jitter:g}" if contrast_jitter else "")


def _check_counts(cases: int, validation_cases: int, seed: int) -> None:
    if cases < 0 or validation_cases < 0 or cases + validation_cases < 1:
        raise ValueError(
            f"need cases >= 0, validation_cases >= 0 and at least one case, got {cases} and {validation_cases}"
        )
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def make_dataset(
    output_dir: str | os.PathLike,
    cases: int = 20,
    validation_cases: int = 5,
    seed: int = 0,
    shape: Sequence[int] = BRATS_SHAPE,
    preview: bool = False,
    overwrite: bool = False,
    recipe: str = "default",
    contrast_jitter: float = 0.0,
) -> Path:
    """Writes a synthetic dataset in the BraTS 2017 layout.

    The dataset is written into a temporary sibling folder and renamed into place, so a crash never leaves half a
    dataset at ``output_dir``.

    Args:
        output_dir: dataset root to create; it will contain ``Brats17TrainingData/{HGG,LGG}`` and
            ``Brats17ValidationData``.
        cases: labelled training cases (about one in four is LGG).
        validation_cases: unlabelled cases in the flat validation folder.
        seed: dataset seed; the same seed gives the same files.
        shape: grid size; smaller than 240x240x155 scales the brain down (fast test data).
        preview: also write ``preview/<case>.png`` slices (needs matplotlib).
        overwrite: replace an existing non-empty ``output_dir``.
        recipe: ``"default"``, ``"shifted"`` or parts of it such as ``"shifted:bias+slices"`` (out-of-distribution
            studies; see :func:`~refineformer3d.data.synthetic.make_case`).
        contrast_jitter: randomise the contrast table per study by ``exp(U(-j, j))`` per entry (training data).

    Returns:
        The dataset root.

    Raises:
        ValueError: for bad counts, seed, shape, recipe or jitter, or an existing non-empty ``output_dir`` without
            ``overwrite``.

    Example:
        >>> root = make_dataset("/tmp/brats_synthetic", cases=4, validation_cases=1, shape=(64, 64, 48))
    """
    shape = _check_shape(shape)
    _check_counts(cases, validation_cases, seed)
    check_recipe(recipe, contrast_jitter)
    output = Path(output_dir).expanduser().absolute()
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ValueError(f"{output} exists and is not empty; choose another folder or pass overwrite")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = _new_folder(output.parent, f".{output.name}.tmp")
    try:
        _write_dataset(staging, cases, validation_cases, seed, shape, preview, recipe, contrast_jitter)
        _move_into_place(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output


def _new_folder(parent: Path, prefix: str) -> Path:
    """A new uniquely named folder; unlike tempfile.mkdtemp's private one, it gets the usual permissions."""
    path = parent / f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir()
    return path


def _move_into_place(staging: Path, output: Path) -> None:
    if output.is_dir():
        old = _new_folder(output.parent, f".{output.name}.old")
        os.replace(output, old / "dataset")
        try:
            os.replace(staging, output)
        except OSError:
            os.replace(old / "dataset", output)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, output)


def _is_complete(root: Path, parameters: dict) -> bool:
    try:
        return json.loads((root / MARKER_FILE).read_text()) == parameters
    except (OSError, ValueError):
        return False


def ensure_dataset(
    cache_dir: str | os.PathLike | None = None,
    cases: int = 20,
    validation_cases: int = 5,
    seed: int = 0,
    shape: Sequence[int] = BRATS_SHAPE,
    recipe: str = "default",
    contrast_jitter: float = 0.0,
) -> str:
    """Returns the root of a cached synthetic dataset, generating it on first use.

    The built-in default data of the main job. The folder name encodes the parameters and the generator version, so a
    change of either makes a new dataset. Several processes (e.g. DDP ranks) may call this at once: one generates
    while the others wait on a lock file.

    Args:
        cache_dir: where datasets are kept; defaults to ``$REFINEFORMER3D_CACHE`` or ``~/.cache/refineformer3d``.
        cases: labelled training cases.
        validation_cases: unlabelled validation cases.
        seed: dataset seed.
        shape: grid size.
        recipe: ``"default"``, ``"shifted"`` or ``"shifted:PART+..."`` (see :func:`make_dataset`).
        contrast_jitter: per-study contrast randomisation (see :func:`make_dataset`).

    Returns:
        The dataset root, as a string (ready for the bundle config).

    Raises:
        ValueError: for bad counts, seed, shape, recipe or jitter.
    """
    shape = _check_shape(shape)
    _check_counts(cases, validation_cases, seed)
    check_recipe(recipe, contrast_jitter)
    if cache_dir is None:
        cache_dir = os.environ.get("REFINEFORMER3D_CACHE") or Path.home() / ".cache" / "refineformer3d"
    cache = Path(cache_dir).expanduser().absolute()
    name = f"brats17-synthetic-g{GENERATOR_VERSION}-c{cases}-v{validation_cases}-s{seed}-{'x'.join(map(str, shape))}"
    name += _variant(recipe, contrast_jitter)
    root = cache / name
    parameters = _parameters(cases, validation_cases, seed, shape, recipe, contrast_jitter)
    if _is_complete(root, parameters):
        return str(root)
    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache / f"{name}.lock"):
        if _is_complete(root, parameters):  # made by the process that held the lock before us
            return str(root)
        staging = _new_folder(cache, f".{name}.tmp")
        try:
            _write_dataset(staging, cases, validation_cases, seed, shape, False, recipe, contrast_jitter)
            # Where the file system refuses locks, another process may have finished meanwhile; its dataset is as good.
            if not _is_complete(root, parameters):
                if root.exists():  # an incomplete folder of this name, say copied by hand
                    shutil.rmtree(root)
                try:
                    os.replace(staging, root)
                except OSError:
                    if not _is_complete(root, parameters):
                        raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return str(root)
