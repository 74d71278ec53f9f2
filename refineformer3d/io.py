"""File helpers that data preparation and inference both use: atomic writes and an inter-process lock.

They sit below both (``refineformer3d.data`` never imports the inference writers) and import neither torch nor MONAI.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from filelock import FileLock

__all__ = ["file_lock", "partial_files", "settings_folder", "write_atomically"]


def write_atomically(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Calls ``write(tmp)`` on a temporary file beside ``path``, then renames it to ``path``.

    The file is complete or absent: an interrupted run leaves no truncated file that looks like a result, and a
    folder watcher (MONAI Label's datastore) never sees one half-written. Same folder, so ``os.replace`` is atomic.

    Args:
        path: the file to write.
        write: writes a file at the path it is given (the temporary name keeps ``path``'s extension, ``.nii.gz``
            included, for writers that choose the format by it).

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = _suffix(path.name)
    # A fresh name rather than mkstemp, which would make the file private (0600) instead of following the umask.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{suffix}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _suffix(name: str) -> str:
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def partial_files(folder: str | os.PathLike, names: Sequence[str] | None = None) -> list[Path]:
    """The temporary files in ``folder`` that :func:`write_atomically` leaves when its process is killed mid-write.

    A kill (SIGKILL, a job's time limit, a lost node) skips the cleanup that an exception runs; such a file is hidden
    and never looks like a result, but it holds disk space until removed.

    Args:
        folder: where to look.
        names: the files whose temporary files to find (``case_seg.nii.gz``); None for those of any file. A process
            that shares the folder with others passes its own files' names, so that it never removes a file that
            another process is writing.

    Returns:
        The temporary files found, sorted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    wanted = None if names is None else set(names)
    found = []
    for path in folder.glob(".*"):
        match = re.fullmatch(r"\.(.+)\.[0-9a-f]{12}(.*)", path.name)
        if match and match[2] == _suffix(match[1]) and (wanted is None or match[1] in wanted) and path.is_file():
            found.append(path)
    return sorted(found)


def file_lock(path: str | os.PathLike) -> FileLock:
    """An exclusive inter-process lock held on ``path`` (a context manager), on every platform ``filelock`` knows."""
    return FileLock(str(path))


def settings_folder(root: str | os.PathLike, **settings) -> Path:
    """``root`` / a folder named after ``settings``, for files that depend on them.

    MONAI's ``PersistentDataset`` keys its files by each study's entry and the classes of the transforms, not by their
    settings: one folder per label scheme, voxel size, crop size and N4 setting keeps a regions run from reading a
    classes run's labels.

    Example:
        >>> settings_folder("cache", label_scheme="regions", pixdim=[1.0, 1.0, 1.0]).as_posix()
        'cache/label_scheme-regions_pixdim-1.0x1.0x1.0'
    """

    def text(value) -> str:
        return "x".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)

    return Path(root) / "_".join(f"{key}-{text(value)}" for key, value in settings.items())
