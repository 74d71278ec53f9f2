"""Dataset layouts: where the cases of a BraTS or MSD dataset are, and what each case's files are.

Layouts, detected automatically (channel order is always FLAIR, T1, T1ce, T2):

* ``brats2017``: ``Brats17TrainingData/{HGG,LGG}/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz`` and the flat,
  unlabelled ``Brats17ValidationData/<case>/...``.
* ``brats2018-2020``: the same naming with ``Brats18_``, ``BraTS19_`` or ``BraTS20_`` cases (2020 has no grade folders;
  its ``name_mapping.csv`` gives the grade when present).
* ``brats2021``: ``BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz``, and any other case naming of the
  ``<case>/<case>_<modality>`` pattern.
* ``brats2023``: ``<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz`` (BraTS 2023 and later).
* ``msd``: Medical Segmentation Decathlon Task01_BrainTumour, ``imagesTr/BRATS_XXX.nii.gz`` (4-D, channels FLAIR,
  T1w, T1gd, T2w), ``labelsTr/``, ``imagesTs/``.

For inference, :func:`find_study_folders` also finds studies in any naming :mod:`~refineformer3d.data.modalities`
knows (BIDS, plain names, any prefix), in NIfTI, NRRD or MetaImage files or as DICOM series, one study per folder.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from refineformer3d.data.errors import DatasetError
from refineformer3d.data.modalities import (
    CHANNELS,
    REQUIRED_ANY,
    assign_modalities,
    dicom_modality,
    dicom_series,
    file_stem,
    is_dicom_file,
    is_image_file,
    modality_of_name,
    study_name,
)

__all__ = [
    "CHANNELS",
    "LAYOUTS",
    "DatasetError",
    "UnknownLayoutError",
    "detect_layout",
    "discover",
    "find_study_folders",
    "read_study",
]

LAYOUTS = ("brats2017", "brats2018-2020", "brats2021", "brats2023", "msd")
# File suffixes in CHANNELS order, then the label, for each separator between case name and modality.
_SUFFIXES = {"_": ("flair", "t1", "t1ce", "t2", "seg"), "-": ("t2f", "t1n", "t1c", "t2w", "seg")}
_YEARS = (
    ("brats2017", re.compile(r"^brats17_", re.IGNORECASE)),
    ("brats2018-2020", re.compile(r"^(brats18|brats19|brats20)_", re.IGNORECASE)),
    ("brats2021", re.compile(r"^brats2021_", re.IGNORECASE)),
)
_MSD_IMAGE = re.compile(r"^BRATS_\d+\.nii(\.gz)?$")
_NIFTI = re.compile(r"\.nii(\.gz)?$")
_GRADES = ("HGG", "LGG")


class UnknownLayoutError(DatasetError):
    """No dataset layout fits (no NIfTI, an unknown naming, or several layouts mixed); studies may still be found."""


@dataclass
class _Case:
    name: str
    layout: str
    image: list[Path | None] | Path  # four files (None: missing, for inference), or one 4-D file (MSD)
    label: Path | None
    grade: str | None


def _is_nifti(name: str) -> bool:
    # macOS archives (the MSD tarball included) carry "._" resource forks next to every file.
    return bool(_NIFTI.search(name)) and not name.startswith(".")


def _nifti_file(folder: Path, stem: str, names: set[str]) -> Path | None:
    for extension in (".nii.gz", ".nii"):
        if stem + extension in names:
            return folder / (stem + extension)
    return None


def _name_mapping_grades(folder: Path) -> dict[str, str]:
    """Grades from BraTS 2020's ``name_mapping.csv`` (columns ``Grade`` and ``BraTS_2020_subject_ID``), if any."""
    path = folder / "name_mapping.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {
        r["BraTS_2020_subject_ID"]: r["Grade"]
        for r in rows
        if r.get("Grade") in _GRADES and r.get("BraTS_2020_subject_ID")
    }


def _brats_case(
    folder: Path,
    names: set[str],
    root: Path,
    grades: dict[str, str],
    need_labels: bool,
    problems: list[str],
    allow_missing: bool = False,
) -> _Case | None:
    """The case in ``folder`` if its files are named ``<folder><separator><modality>.nii[.gz]``; with
    ``allow_missing`` a missing modality is ``None`` when FLAIR or T1ce is there (see
    :func:`~refineformer3d.data.modalities.assign_modalities`)."""
    case = folder.name
    for separator, suffixes in _SUFFIXES.items():
        found = [_nifti_file(folder, f"{case}{separator}{s}", names) for s in suffixes]
        if any(found[:4]):
            break
    else:
        return None
    relative = folder.relative_to(root)
    required = [CHANNELS.index(m) for m in REQUIRED_ANY]
    if allow_missing and not any(found[i] for i in required):
        files = " nor ".join(str(relative / f"{case}{separator}{suffixes[i]}.nii.gz") for i in required)
        problems.append(f"case {case}: neither {files}; the network needs one of them")
    for suffix, path in zip(suffixes[:4], found[:4], strict=True):
        if path is None and not allow_missing:
            problems.append(f"case {case}: missing {suffix} file {(relative / f'{case}{separator}{suffix}.nii.gz')}")
    label = found[4]
    if label is None:
        # BraTS 2020's case 355 ships its label as "W39_1998.09.19_Segm.nii": accept one odd "seg" file.
        others = [n for n in names if _is_nifti(n) and "seg" in n.lower() and not n.startswith(case)]
        label = folder / others[0] if len(others) == 1 else None
    parts = (root.name, *relative.parts[:-1])
    folder_grade = next((p for p in parts if p in _GRADES), None)
    # Cases in a training folder or a grade folder must have a label; elsewhere no label means inference only.
    training = folder_grade is not None or any("training" in p.lower() for p in parts)
    if label is None and training and need_labels:
        problems.append(f"case {case}: missing label file {relative / f'{case}{separator}seg.nii.gz'}")
    if separator == "-":
        layout = "brats2023"
    else:
        layout = next((year for year, pattern in _YEARS if pattern.match(case)), "brats2021")
    return _Case(case, layout, found[:4], label, folder_grade or grades.get(case))


def _msd_cases(folder: Path, names: set[str], need_labels: bool, problems: list[str]) -> list[_Case]:
    labels = folder.parent / "labelsTr"
    cases = []
    for name in sorted(n for n in names if _MSD_IMAGE.match(n)):
        label = None
        if folder.name == "imagesTr":
            label = labels / name
            if not label.is_file():
                label = None
                if need_labels:
                    problems.append(f"case {file_stem(name)}: missing label file labelsTr/{name}")
        cases.append(_Case(file_stem(name), "msd", folder / name, label, None))
    return cases


def discover(
    dataset_dir: str | os.PathLike,
    need_labels: bool = True,
    skipped: dict[str, str] | None = None,
    allow_missing: bool = False,
) -> tuple[Path, str, list[_Case]]:
    """Finds every case below ``dataset_dir``.

    Args:
        dataset_dir: any folder above the case folders.
        need_labels: report a missing label file for cases in training (or grade) folders and MSD ``imagesTr``.
        skipped: for a batch (inference): a case with missing files is left out and its one-line problem recorded
            here under its name, instead of refusing the dataset; the dataset is still refused when no case is left.
        allow_missing: for inference: a case may lack modalities other than FLAIR or T1ce (``None`` in its image).

    Returns:
        The absolute dataset root, the layout, and the cases sorted by name.

    Raises:
        DatasetError: no folder, no cases, mixed layouts, or cases with missing files (without ``skipped``).
    """
    root = Path(dataset_dir).expanduser().absolute()
    if not root.is_dir():
        raise DatasetError([f"dataset folder {root} does not exist"])
    problems: list[str] = []
    cases: list[_Case] = []
    niftis: list[str] = []
    grade_tables: dict[Path, dict[str, str]] = {}
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        folder = Path(folder)
        names = {f for f in files if _is_nifti(f)}
        if not names:
            continue
        niftis.extend(str((folder / f).relative_to(root)) for f in sorted(names)[:2])
        if folder.name in ("imagesTr", "imagesTs"):
            cases.extend(_msd_cases(folder, names, need_labels, problems))
        else:
            if folder.parent not in grade_tables:
                grade_tables[folder.parent] = _name_mapping_grades(folder.parent)
            found = len(problems)
            case = _brats_case(folder, names, root, grade_tables[folder.parent], need_labels, problems, allow_missing)
            if case is not None and skipped is not None and len(problems) > found:
                skipped[case.name] = "; ".join(problems[found:])
                del problems[found:]
            elif case is not None:
                cases.append(case)
    if not cases and skipped:
        raise DatasetError(list(skipped.values()), where=str(root))
    if not cases:
        expected = (
            "BraTS case folders <case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz (2017-2021) or "
            "<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz (2023+), or MSD Task01 imagesTr/BRATS_XXX.nii.gz"
        )
        if not niftis:
            raise UnknownLayoutError([f"no NIfTI files in {root}; expected {expected}"])
        raise UnknownLayoutError(
            [f"unknown layout in {root}: found NIfTI files such as {', '.join(niftis[:3])} but expected {expected}"]
        )
    layouts = sorted({c.layout for c in cases})
    if len(layouts) > 1:
        counts = ", ".join(f"{sum(c.layout == lay for c in cases)} {lay}" for lay in layouts)
        raise UnknownLayoutError([f"mixed layouts in {root} ({counts} cases); point at one dataset"])
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    problems.extend(f"case {n}: found more than once" for n in duplicates)
    if problems:
        raise DatasetError(problems, where=str(root))
    return root, layouts[0], sorted(cases, key=lambda c: c.name)


def detect_layout(dataset_dir: str | os.PathLike) -> str:
    """Returns the dataset's layout, one of :data:`LAYOUTS`.

    Raises:
        DatasetError: (a ``ValueError``) for a missing or empty folder, an unknown or mixed layout, or a case missing
            a modality.
    """
    return discover(dataset_dir, need_labels=False)[1]


def _dicom_candidates(
    folder: Path, keywords: Mapping[str, Sequence[str]] | None
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Modality (``None`` for series no keyword names) -> DICOM series paths, from the file set in ``folder`` and one
    series folder per sub-folder; and each path's label for errors."""
    candidates: dict[str, list[str]] = {}
    labels: dict[str, str] = {}
    for where in (folder, *_subfolders(folder)):
        for series in dicom_series(where):
            modality = dicom_modality(series.description, series.contrast_agent, keywords)
            candidates.setdefault(modality, []).append(str(series.path))
            labels[str(series.path)] = series.label
    return candidates, labels


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_study(
    folder: str | os.PathLike,
    given: Mapping[str, str | os.PathLike] | None = None,
    dicom_keywords: Mapping[str, Sequence[str]] | None = None,
    allow_missing: bool = False,
) -> dict:
    """The four modality files of the study in ``folder``, by their names or DICOM series descriptions.

    Args:
        folder: one study: image files named as :mod:`~refineformer3d.data.modalities` describes, one sub-folder
            per DICOM series, or the DICOM files of several series together (a file set, split by
            SeriesInstanceUID; each series is then named by its first file).
        given: modality -> file (or DICOM folder) chosen by the user, relative to ``folder`` or absolute; it wins
            over what the names say, and the rest are still found by name.
        dicom_keywords: SeriesDescription phrases per modality (default
            :data:`~refineformer3d.data.modalities.DICOM_KEYWORDS`).
        allow_missing: a modality no file stands for is ``None``, as long as FLAIR or T1ce is there.

    Returns:
        ``{"image": [flair, t1, t1ce, t2], "case": name}`` with absolute paths (``None`` for a missing modality).

    Raises:
        DatasetError: one line naming the study and each missing or ambiguous modality with its candidates, or a
            given file that does not exist or a modality that is not one of FLAIR, T1, T1ce, T2.
    """
    folder = Path(folder).expanduser().absolute()
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p.name))
    candidates: dict[str, list[str]] = {}
    for path in files:
        modality = modality_of_name(path.name)
        if modality is not None:
            candidates.setdefault(modality, []).append(str(path))
    dicom, labels = _dicom_candidates(folder, dicom_keywords)
    unnamed = dicom.pop(None, [])
    named = [f for found in candidates.values() for f in found]
    for modality, found in dicom.items():
        candidates.setdefault(modality, []).extend(found)
    name = study_name(named, folder) if named else folder.name
    chosen = {}
    for modality, path in (given or {}).items():
        if modality not in CHANNELS:
            raise DatasetError(
                [f"unknown modality {modality!r} in the mapping; expected one of {list(CHANNELS)}"],
                where=f"study {name}",
            )
        path = Path(path).expanduser()
        path = path if path.is_absolute() else folder / path
        if not path.exists():
            raise DatasetError(
                [f"{modality} file {path} does not exist (a relative path is taken from the study folder)"],
                where=f"study {name}",
            )
        chosen[modality] = str(path.absolute())
    try:
        image = assign_modalities(candidates, name, chosen, labels, allow_missing)
    except DatasetError as error:
        if not unnamed:
            raise
        # The series no keyword names (localisers, or a scanner's own names) tell the user what to map.
        seen = ", ".join(labels[s] for s in unnamed)
        problems = [*error.problems, f"DICOM series taken for no modality: {seen}"]
        raise DatasetError(problems, where=f"study {name}") from None
    return {"image": image, "case": name}


def _is_study(folder: Path, files: Sequence[str], subfolders: Sequence[str]) -> bool:
    if any(modality_of_name(f) or is_dicom_file(folder / f) for f in files):
        return True
    # Sub-folders of one series each; a sub-folder holding several series is a study (file set) of its own.
    return any(len(dicom_series(folder / s)) == 1 for s in subfolders)


def find_study_folders(source: str | os.PathLike) -> list[Path]:
    """Folders below ``source`` (itself included) that hold one study each, in any naming or as DICOM series.

    A folder is a study when it holds an image file named after a modality, DICOM files (a file set), or sub-folders
    of one DICOM series each; the search does not go below a study. BIDS subjects are found in their ``anat`` folders.

    Returns:
        The study folders, sorted; empty when there are none.
    """
    root = Path(source).expanduser().absolute()
    studies = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        if _is_study(Path(folder), files, subfolders):
            studies.append(Path(folder))
            subfolders[:] = []
    return sorted(studies)
