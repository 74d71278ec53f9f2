"""Checks that a study is usable before anything loads it: one home for what the datalist builder, training and
inference refuse.

A study is checked in two passes. The header pass reads only NIfTI headers: a file that escapes the dataset folder,
cannot be read, is 2-D, has absurd voxel sizes, or whose header claims a volume too large to hold (before or after
resampling) is refused without allocating its voxels. The data pass then reads the voxels: truncated or corrupt
files, shapes and affines that disagree, NaN or infinite values, all-zero images and label values outside the
convention.

Every problem is one line that names the study and the file: ``case <name>: <file>: <reason>``.

Errors a user's input causes end a bundle run through :class:`~refineformer3d.data.errors.InputError`: one line on
stderr and exit status 2, where MONAI's config parser would wrap a ``ValueError`` in hundreds of lines of traceback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from refineformer3d.data.errors import InputError
from refineformer3d.data.modalities import file_stem
from refineformer3d.io import file_lock, write_atomically
from refineformer3d.labels import convention_values

__all__ = [
    "MAX_VOXELS",
    "VOXEL_SIZE_RANGE",
    "check_study",
    "display_path",
    "study_files",
    "study_name",
    "verify_entries",
]

logger = logging.getLogger(__name__)

CHANNELS = 4  # FLAIR, T1, T1ce, T2
# A BraTS volume is 240x240x155 (8.9 M voxels); 512^3 (134 M, 537 MB in float32 per channel) leaves room for fine
# clinical grids and still refuses a header that would take the machine's memory.
MAX_VOXELS = 512**3
VOXEL_SIZE_RANGE = (0.05, 50.0)  # mm: finer than any MRI, coarser than any usable brain scan
_AFFINE_TOLERANCE = 1e-3  # mm; BraTS modalities are co-registered, so their affines agree to rounding
_CHECK_VERSION = 1  # bump when the checks change, so cached verdicts are not reused
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def study_files(entry: Mapping) -> list[str]:
    """The image files of a datalist entry (not its missing modalities, ``None``), then its label file if any."""
    image = entry["image"]
    files = list(image) if isinstance(image, (list, tuple)) else [image]
    return [str(f) for f in files if f is not None] + ([str(entry["label"])] if entry.get("label") else [])


def study_name(entry: Mapping) -> str:
    """The entry's ``case``, or the name of its first file without the extension (:func:`file_stem`)."""
    if entry.get("case"):
        return str(entry["case"])
    return file_stem(study_files(entry)[0])


def display_path(path: str | os.PathLike, root: str | os.PathLike | None) -> str:
    """``path`` relative to ``root`` when it lies below it, else as given: short and still unambiguous."""
    if root is not None:
        try:
            return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
        except ValueError:
            pass
    return str(path)


def _outside(path: str, root: str | os.PathLike) -> str | None:
    """Where ``path`` as written lies when that is outside ``root`` (through ``..``), else None.

    Symbolic links are not followed: a study folder of links into a data store or a PACS export is read where the
    links point, as the user laid it out; only a datalist's path that climbs out of its dataset folder is refused.
    The root counts under its own name and where it really is (a datalist may name its files either way).
    """
    written = os.path.normpath(os.path.abspath(path))
    roots = {os.path.normpath(os.path.abspath(root)), os.path.realpath(root)}
    return None if any(os.path.commonpath([written, r]) == r for r in roots) else written


def _is_nifti(path: str) -> bool:
    return path.lower().endswith(_NIFTI_SUFFIXES)


def _read_header(path: str):
    """``(shape, affine, nibabel image or None)`` from a header only. NIfTI through nibabel; NRRD, MetaImage and
    DICOM series folders through ITK (:func:`refineformer3d.data.grids.read_geometry`, spatial shape only)."""
    if _is_nifti(path):
        image = nib.load(path)
        return tuple(int(s) for s in image.shape), image.affine, image
    from refineformer3d.data.grids import read_geometry  # imports ITK and MONAI: only for files that need them

    affine, shape = read_geometry(path)
    return shape, affine, None


def _header_problem(
    shape: tuple[int, ...], affine, expected_ndim: int, pixdim: Sequence[float] | None, max_voxels: int
) -> str | None:
    """What is wrong with a header (its shape and affine), judged without reading the voxels."""
    if len(shape) < 3:
        return f"a {len(shape)}-D image of shape {shape}; expected a 3-D volume"
    if expected_ndim == 4 and (len(shape) != 4 or shape[3] != CHANNELS):
        return f"expected a 4-D image with {CHANNELS} channels last (FLAIR, T1, T1ce, T2), got shape {shape}"
    if expected_ndim == 3 and len(shape) != 3:
        return f"expected a 3-D volume, got shape {shape}"
    if min(shape) < 1:
        return f"empty image of shape {shape}"
    voxels = int(np.prod(shape[:3], dtype=np.int64))
    if voxels > max_voxels:
        size = "x".join(map(str, shape[:3]))
        return f"header claims a {size} volume ({voxels:,} voxels, above {max_voxels:,}); not loaded"
    affine = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        return "affine has NaN or infinite entries"
    sizes = np.linalg.norm(affine[:3, :3], axis=0)  # voxel size per axis in mm, oblique grids included
    low, high = VOXEL_SIZE_RANGE
    if not ((sizes >= low) & (sizes <= high)).all():
        return f"voxel size {tuple(round(float(s), 6) for s in sizes)} mm outside {low}-{high} mm"
    if pixdim is not None:
        resampled = np.ceil(np.asarray(shape[:3]) * sizes / np.asarray(pixdim, dtype=np.float64))
        if float(np.prod(resampled)) > max_voxels:
            return (
                f"resampling to {tuple(pixdim)} mm would make a {'x'.join(str(int(r)) for r in resampled)} volume "
                f"(above {max_voxels:,} voxels)"
            )
    return None


def check_study(
    entry: Mapping,
    root: str | os.PathLike | None = None,
    convention: str | None = None,
    pixdim: Sequence[float] | None = None,
    max_voxels: int = MAX_VOXELS,
    read: bool = True,
    same_grid: bool = True,
) -> list[str]:
    """Problems that make a study unusable; empty when it can be loaded.

    Args:
        entry: a datalist entry: ``{"image": [flair, t1, t1ce, t2] or one 4-D file, "label"?: file, "case"?: name}``
            with absolute paths; a modality an inference study lacks is ``None`` and not checked.
        root: the dataset folder; files whose path as written leads outside it (``..`` in a datalist) are
            refused; symbolic links inside it may point anywhere. ``None`` skips that check.
        convention: the label convention of ``entry["label"]`` (see :mod:`refineformer3d.labels`); ``None`` accepts
            any label values.
        pixdim: the voxel size in mm that the pipeline resamples to; refuses a study whose resampled grid would
            exceed ``max_voxels``.
        max_voxels: the largest volume (voxels per channel) to load.
        read: also read the voxels of NIfTI files (corrupt data, NaN, all zero, shapes, affines, label values); else
            headers only.
        same_grid: the files must share one grid (shape and affine), as training stacks them; inference resamples
            each modality onto the reference's grid (:mod:`refineformer3d.data.grids`), so it passes False.

    Returns:
        One line per problem, each ``case <name>: <file>: <reason>``.
    """
    name = study_name(entry)
    image = entry["image"]
    images = [f and str(f) for f in image] if isinstance(image, (list, tuple)) else [str(image)]
    label = str(entry["label"]) if entry.get("label") else None
    expected_ndim = 4 if len(images) == 1 else 3
    if len(images) not in (1, CHANNELS):
        return [f"case {name}: {len(images)} image files; expected {CHANNELS} (FLAIR, T1, T1ce, T2) or one 4-D file"]
    problems: list[str] = []
    headers = {}
    for path in [*(f for f in images if f is not None), *([label] if label else [])]:
        shown = display_path(path, root)
        where = f"case {name}: {shown}"
        if not os.path.exists(path):
            link = f" (a symlink to {os.readlink(path)})" if os.path.islink(path) else ""
            problems.append(f"{where}: missing file{link}")
            continue
        escaped = _outside(path, root) if root is not None else None
        if escaped is not None:
            problems.append(f"{where}: resolves to {escaped}, outside the dataset folder {root}; refused")
            continue
        if os.path.isdir(path) and _is_nifti(path):
            problems.append(f"{where}: a folder, not a file")
            continue
        if not os.access(path, os.R_OK):
            problems.append(f"{where}: cannot be read (permission denied)")
            continue
        try:
            shape, affine, image = _read_header(path)
        except Exception as error:  # nibabel, gzip, zlib and ITK raise many types for a corrupt file; all mean the same
            reason = str(error).removeprefix(f"cannot read the header of {path} ")
            problems.append(f"case {name}: unreadable or truncated file {shown} ({type(error).__name__}: {reason})")
            continue
        problem = _header_problem(shape, affine, 3 if path == label else expected_ndim, pixdim, max_voxels)
        if problem is not None:
            problems.append(f"{where}: {problem}")
            continue
        if image is not None:  # the voxels of NIfTI files are checked below; other formats when they are loaded
            headers[path] = image
    if problems or not read:
        return problems
    reference = None
    for path, header in headers.items():
        shown = display_path(path, root)
        where = f"case {name}: {shown}"
        try:
            data = np.asanyarray(header.dataobj)  # reads everything: a truncated .gz fails only here
        except Exception as error:  # as above
            problems.append(f"case {name}: unreadable or truncated file {shown} ({type(error).__name__}: {error})")
            continue
        if reference is None:
            reference = (Path(path).name, data.shape[:3], header.affine)
        elif same_grid and data.shape[:3] != reference[1]:
            problems.append(f"{where}: shape {data.shape[:3]} differs from {reference[0]} {reference[1]}")
        elif same_grid and not np.allclose(header.affine, reference[2], atol=_AFFINE_TOLERANCE):
            problems.append(f"{where}: affine differs from {reference[0]} (not co-registered)")
        if path == label:
            if convention is not None:
                allowed = set(convention_values(convention))
                bad = [v for v in np.unique(data).tolist() if v not in allowed]
                if bad:
                    problems.append(
                        f"{where}: label values {bad[:10]} outside the {convention} convention {sorted(allowed)}"
                    )
            continue
        if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            problems.append(f"{where}: contains NaN or infinite values")
        channels = np.moveaxis(data, -1, 0) if data.ndim == 4 else data[None]
        names = ("flair", "t1", "t1ce", "t2") if data.ndim == 4 else (None,)
        for channel, values in zip(names, channels, strict=True):
            if not values.any():
                problems.append(f"{where}: {'channel ' + channel + ' is' if channel else 'image is'} all zero")
    return problems


def check_studies(entries: Sequence[Mapping], workers: int | None = None, **check_kwargs) -> list[list[str]]:
    """:func:`check_study` for each entry, in parallel threads (nibabel and zlib release the GIL)."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda e: check_study(e, **check_kwargs), entries))


def _cache_dir() -> Path:
    cache = os.environ.get("REFINEFORMER3D_CACHE") or Path.home() / ".cache" / "refineformer3d"
    return Path(cache).expanduser().absolute() / "verified"


def _fingerprint(entries: Iterable[Mapping], settings: Mapping) -> str:
    """A key that changes when any file of the entries changes (path, size, modification time) or the checks do."""
    digest = hashlib.sha256(json.dumps({"version": _CHECK_VERSION, **settings}, sort_keys=True).encode())
    for entry in entries:
        for path in study_files(entry):
            try:
                stat = os.stat(path)
                digest.update(f"{os.path.realpath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{path}\0missing\n".encode())  # never cached as good: the check will fail
    return digest.hexdigest()


def _rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def verify_entries(
    entries: Sequence[Mapping],
    root: str | os.PathLike | None = None,
    convention: str | None = None,
    pixdim: Sequence[float] | None = None,
    where: str = "",
    cache_dir: str | os.PathLike | None = None,
) -> bool:
    """Checks every entry once per set of files: a passing verdict is cached, keyed by file sizes and times.

    Large datasets are read in full only when a file changed since the last passing check. Under
    ``torch.distributed`` only rank 0 checks (the other ranks would read the same files); a failure there ends the
    whole job.

    Args:
        entries: datalist entries with absolute paths.
        root, convention, pixdim: as for :func:`check_study`.
        where: names the datalist in the error.
        cache_dir: where verdicts are kept; defaults to ``$REFINEFORMER3D_CACHE/verified`` (or
            ``~/.cache/refineformer3d/verified``).

    Returns:
        True when the check ran, False when a cached verdict (or another rank) stood for it.

    Raises:
        InputError: listing every problem, each naming the study and the file.
    """
    if _rank() != 0:
        return False
    settings = {"root": str(root), "convention": convention, "pixdim": list(pixdim) if pixdim else None}
    key = _fingerprint(entries, settings)
    folder = Path(cache_dir) if cache_dir is not None else _cache_dir()
    verdict = folder / f"{key}.json"
    if verdict.is_file():
        return False
    folder.mkdir(parents=True, exist_ok=True)
    # Processes that start together (several runs on one dataset) check once; the others find the verdict. One lock
    # file for all verdicts: removing a lock file that another process waits on would let two hold it.
    with file_lock(folder / ".lock"):
        if verdict.is_file():
            return False
        found = check_studies(entries, root=root, convention=convention, pixdim=pixdim)
        problems = [p for per_study in found for p in per_study]
        if problems:
            raise InputError.printed(problems, where)
        text = json.dumps({"studies": len(entries), "checks": _CHECK_VERSION}) + "\n"
        write_atomically(verdict, lambda tmp: Path(tmp).write_text(text))
    return True
