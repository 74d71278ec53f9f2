"""Which file or DICOM series of one study is FLAIR, T1, T1ce or T2.

File names are matched case-insensitively on their last name part (after ``_``, ``-`` or ``.``), whatever comes
before it, in the naming schemes studies arrive in:

=================  =============  ==============  =============================================  ==========
naming             FLAIR          T1              T1ce                                           T2
=================  =============  ==============  =============================================  ==========
BraTS 2017-2021    ``_flair``     ``_t1``         ``_t1ce``                                      ``_t2``
BraTS 2023+        ``-t2f``       ``-t1n``        ``-t1c``                                       ``-t2w``
BraTS Toolkit      ``_fla``       ``_t1``         ``_t1c``                                       ``_t2``
BIDS               ``_FLAIR``     ``_T1w``        ``_T1w`` with a ``ce-<agent>`` entity          ``_T2w``
HD-GLIO            ``flair``      ``t1``          ``ct1``                                        ``t2``
plain              ``flair``,     ``t1``,         ``t1ce``, ``t1c``, ``t1gd``, ``t1post``,       ``t2``
                   ``fla``,       ``t1pre``,      ``t1_contrast`` (``_`` or ``-`` after ``t1``
                   ``t2flair``    ``t1native``    allowed, in T1's names too)
nnU-Net (Task01)   ``_0000``      ``_0001``       ``_0002``                                      ``_0003``
=================  =============  ==============  =============================================  ==========

A contrast-enhanced T1 is never taken for the plain T1: T1ce is matched first, and a BIDS ``_T1w`` carrying a
``ce-`` entity is T1ce only. Files named ``seg``, ``label`` or ``mask`` are not images.

DICOM series are named by their SeriesDescription through :data:`DICOM_KEYWORDS`, a table of phrases per modality
tried in the order FLAIR, T1ce, T2, T1 (the first with a phrase in the description wins), which callers may replace.
A series taken for T1 that carries a contrast agent (ContrastBolusAgent, tag (0018,0010)) is T1ce.

Everything here reads file names or DICOM headers only; no image data.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from refineformer3d.data.errors import DatasetError

__all__ = [
    "CHANNELS",
    "DICOM_KEYWORDS",
    "IMAGE_EXTENSIONS",
    "REQUIRED_ANY",
    "DicomSeries",
    "assign_modalities",
    "dicom_modality",
    "dicom_series",
    "is_dicom_file",
    "is_dicom_series",
    "series_files",
    "file_stem",
    "image_stem",
    "is_image_file",
    "modality_of_name",
    "study_name",
]

CHANNELS = ("flair", "t1", "t1ce", "t2")
# A study needs one of these to be segmented; the others may be missing (the network was trained with whole sequences
# dropped, and these two carry the tumour's extent and its enhancing core).
REQUIRED_ANY = ("flair", "t1ce")
DISPLAY = {"flair": "FLAIR", "t1": "T1", "t1ce": "T1ce", "t2": "T2"}
# Longest first, so ".nii.gz" is not taken for ".gz".
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# What a name drops besides: this package's segmentations (Slicer's ".seg.nrrd", before ".nrrd") and DICOM files.
NAME_EXTENSIONS = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")

_SEP = r"(?:^|[_.\-])"
# Tried in this order: T1ce before T1, so "t1ce" or "ce-gd_T1w" is never read as T1.
_NAME_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("t1ce", re.compile(_SEP + r"(?:t1[_\-]?(?:ce|c|gd|post|contrast)|ct1)$", re.IGNORECASE)),
    ("t1ce", re.compile(_SEP + r"ce-[a-z0-9]+(?:_[a-z]+-[a-z0-9]+)*_t1w$", re.IGNORECASE)),
    ("flair", re.compile(_SEP + r"(?:flair|fla|t2flair|t2f|0000)$", re.IGNORECASE)),
    ("t1", re.compile(_SEP + r"(?:t1|t1n|t1w|t1[_\-]?(?:pre|native)|0001)$", re.IGNORECASE)),
    ("t1ce", re.compile(_SEP + r"0002$", re.IGNORECASE)),
    ("t2", re.compile(_SEP + r"(?:t2|t2w|0003)$", re.IGNORECASE)),
)
_NOT_IMAGES = re.compile(_SEP + r"(?:seg|label|labels|mask|dseg)$", re.IGNORECASE)

# SeriesDescription phrases per modality, tried in this order; the first modality with a phrase in the description
# wins. Phrases match whole words of the description, lower-cased, with every run of other characters read as one
# space ("AX_T1_POST-GAD" reads "ax t1 post gad"). Override with your scanner's names (a mapping of the same form).
DICOM_KEYWORDS: dict[str, tuple[str, ...]] = {
    "flair": ("flair", "t2f", "dark fluid", "darkfluid", "tirm"),
    "t1ce": (
        "t1ce",
        "t1c",
        "t1gd",
        "t1post",
        "t1 ce",
        "t1 c",
        "t1 gd",
        "t1 post",
        "t1 contrast",
        "t1 +c",
        "t1+c",
        "+c",
        "post gad",
        "post gd",
        "post contrast",
        "postcontrast",
        "gad",
        "gd",
    ),
    "t2": ("t2", "t2w", "t2 tse", "t2 fse"),
    "t1": ("t1", "t1w", "t1n", "mprage", "spgr", "t1 tse", "t1 se"),
}


def file_stem(path: str | os.PathLike, extensions: Sequence[str] = NAME_EXTENSIONS) -> str:
    """A file's name without its image extension (any case): the one rule studies, cases and outputs are named by.

    Other names, a DICOM series folder's among them, stay whole.

    Example:
        >>> [file_stem(p) for p in ("/data/BRATS_001.nii.gz", "sub-01_T1w.NII", "IM0001.dcm", "dicom/AX T1")]
        ['BRATS_001', 'sub-01_T1w', 'IM0001', 'AX T1']
    """
    name = Path(path).name
    lower = name.lower()
    extension = next((e for e in extensions if lower.endswith(e)), "")
    return name[: len(name) - len(extension)]


def image_stem(name: str) -> str | None:
    """The name without its image extension, or ``None`` when it is not an image file (hidden files included)."""
    if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
        return None
    # only the image extensions: "flair.seg.nrrd" keeps ".seg" and so stays a segmentation, not FLAIR
    return file_stem(name, IMAGE_EXTENSIONS)


def is_image_file(name: str) -> bool:
    """``True`` for an image file name this project reads (NIfTI, NRRD, MetaImage)."""
    return image_stem(name) is not None


def modality_of_name(name: str) -> str | None:
    """The modality a file name stands for, one of :data:`CHANNELS`, or ``None``.

    Example:
        >>> [modality_of_name(n) for n in ("sub-01_ce-gadolinium_T1w.nii.gz", "sub-01_T1w.nii.gz", "x-t2f.nrrd")]
        ['t1ce', 't1', 'flair']
    """
    stem = image_stem(name)
    if stem is None or _NOT_IMAGES.search(stem):
        return None
    return next((modality for modality, pattern in _NAME_PATTERNS if pattern.search(stem)), None)


def study_name(files: Iterable[str | os.PathLike], folder: str | os.PathLike) -> str:
    """A study's name: the common start of its files' names (``sub-01``, ``BraTS-GLI-00001-000``), else the folder's."""
    stems = [file_stem(f) for f in files]
    prefix = os.path.commonprefix(stems) if stems else ""
    # Cut back to a separator, so "t1.nii.gz" and "t2.nii.gz" give no name rather than "t".
    cut = max(prefix.rfind(c) for c in "_-.")
    name = prefix[:cut].rstrip("_-.") if cut > 0 else ""
    folder = Path(folder)
    if not name:
        # BIDS keeps the images in sub-XX[/ses-YY]/anat; name the study after the subject, not "anat".
        name = folder.parent.name if folder.name == "anat" else folder.name
    return name


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series of a study: where it lies, the header fields that name its modality, and its files.

    ``path`` is the series' folder when the series fills it, else its first file: a series in a file set (a flat
    folder of several series, as PACS exports often are) is named by any one of its files, and
    :func:`series_files` finds the rest.
    """

    path: Path
    uid: str
    description: str
    contrast_agent: str
    files: tuple[Path, ...]

    @property
    def label(self) -> str:
        """How errors name the series: its folder or first file, description and SeriesInstanceUID."""
        return f"{self.path.name} ('{self.description}', series {self.uid})"


def is_dicom_file(path: str | os.PathLike) -> bool:
    """``True`` for a DICOM Part 10 file (``DICM`` after the 128-byte preamble), whatever its name."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_series(path: str | os.PathLike) -> bool:
    """``True`` for a path that names a DICOM series: a folder holding DICOM files, or one of its files."""
    path = Path(path)
    return bool(_dicom_files(path)) if path.is_dir() else is_dicom_file(path)


def _dicom_files(folder: Path) -> list[Path]:
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError:
        return []
    return [p for p in files if is_dicom_file(p)]


def _header(path: Path):
    import pydicom  # only for DICOM studies

    return pydicom.dcmread(
        path,
        stop_before_pixels=True,
        specific_tags=["SeriesInstanceUID", "SeriesDescription", "ContrastBolusAgent"],
    )


def dicom_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """The DICOM series whose files lie in ``folder`` (not below it), split by SeriesInstanceUID.

    Reads every file's header (pixel data skipped); needs pydicom. A folder of one series gives that series named
    by the folder; a file set gives each series named by its first file.

    Returns:
        The series in the order of their first files; empty when the folder holds no DICOM file.
    """
    folder = Path(folder)
    groups: dict[str, list[tuple[Path, object]]] = {}
    for path in _dicom_files(folder):
        header = _header(path)
        groups.setdefault(str(header.get("SeriesInstanceUID", "")), []).append((path, header))
    series = []
    for uid, members in groups.items():
        first = members[0][1]
        series.append(
            DicomSeries(
                path=folder if len(groups) == 1 else members[0][0],
                uid=uid,
                description=str(first.get("SeriesDescription", "")),
                contrast_agent=str(first.get("ContrastBolusAgent", "")).strip(),
                files=tuple(path for path, _ in members),
            )
        )
    return series


def series_files(path: str | os.PathLike) -> list[Path]:
    """The files of the DICOM series at ``path``: a folder's DICOM files, or the files beside a DICOM file that share
    its SeriesInstanceUID, sorted by name."""
    path = Path(path)
    if path.is_dir():
        return _dicom_files(path)
    uid = str(_header(path).get("SeriesInstanceUID", ""))
    return [p for p in _dicom_files(path.parent) if str(_header(p).get("SeriesInstanceUID", "")) == uid]


def dicom_modality(
    description: str, contrast_agent: str = "", keywords: Mapping[str, Sequence[str]] | None = None
) -> str | None:
    """The modality a DICOM series stands for, from its SeriesDescription and contrast agent (0018,0010).

    Args:
        description: the SeriesDescription.
        contrast_agent: the ContrastBolusAgent, empty when absent.
        keywords: modality -> phrases, tried in order (default :data:`DICOM_KEYWORDS`).

    Returns:
        One of :data:`CHANNELS`, or ``None`` (localisers, diffusion and other series).

    Example:
        >>> dicom_modality("AX T1 MPRAGE"), dicom_modality("AX T1 MPRAGE", "GADOVIST"), dicom_modality("t2_flair_tra")
        ('t1', 't1ce', 'flair')
    """
    table = DICOM_KEYWORDS if keywords is None else keywords
    unknown = sorted(set(table) - set(CHANNELS))
    if unknown:
        raise ValueError(f"DICOM keyword table names unknown modalities {unknown}; expected some of {list(CHANNELS)}")
    words = " " + " ".join(re.findall(r"[a-z0-9+]+", description.lower())) + " "
    found = next((m for m, phrases in table.items() if any(f" {p.lower()} " in words for p in phrases)), None)
    if found == "t1" and contrast_agent:
        return "t1ce"
    return found


def assign_modalities(
    candidates: Mapping[str, Sequence[str | os.PathLike]],
    study: str,
    given: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    allow_missing: bool = False,
) -> list[str | None]:
    """The four files of a study in :data:`CHANNELS` order, or one error naming every gap.

    Args:
        candidates: modality -> the files (or DICOM series folders) that look like it.
        study: the study's name, for the error.
        given: modality -> file chosen by the user; it wins over the candidates.
        labels: file -> how the error names it (DICOM series by description and UID); default its name.
        allow_missing: a modality with no candidate is ``None`` (inference fills it, see
            :class:`~refineformer3d.data.transforms.FillMissingSequencesd`) as long as one of :data:`REQUIRED_ANY`
            is there; else it is a problem.

    Returns:
        ``[flair, t1, t1ce, t2]`` as strings (``None`` for a missing modality with ``allow_missing``).

    Raises:
        DatasetError: one line naming the study and, per missing or ambiguous modality, the candidates; with
            ``allow_missing``, ambiguous modalities and a study with none of :data:`REQUIRED_ANY`.
    """
    given = dict(given or {})
    chosen: list[str | None] = []
    problems: list[tuple[str, bool]] = []  # (line, whether it is a missing modality), in CHANNELS order
    for modality in CHANNELS:
        if modality in given:
            chosen.append(str(given[modality]))
            continue
        found = [str(f) for f in candidates.get(modality, ()) if str(f) not in given.values()]
        chosen.append(found[0] if len(found) == 1 else None)
        if len(found) == 1:
            continue
        hint = f"map it with --modality {modality}=FILE, or --modality_files#{modality} FILE in the bundle"
        if not found:
            problems.append((f"no {DISPLAY[modality]} file ({hint})", True))
        else:
            names = ", ".join((labels or {}).get(f) or Path(f).name for f in found)
            problems.append((f"{len(found)} candidates for {DISPLAY[modality]}: {names} ({hint})", False))
    lines = [line for line, is_missing in problems if not (allow_missing and is_missing)]
    # An ambiguous FLAIR or T1ce is named as such, not as missing.
    found_any = {m for m, f in zip(CHANNELS, chosen) if f is not None} | {m for m in CHANNELS if candidates.get(m)}
    if allow_missing and not found_any & set(REQUIRED_ANY):
        either = " nor ".join(DISPLAY[m] for m in REQUIRED_ANY)
        maps = " or ".join(f"--modality {m}=FILE" for m in REQUIRED_ANY)
        lines.insert(0, f"neither {either} file; the network needs one of them (map one with {maps})")
    if lines:
        raise DatasetError(lines, where=f"study {study}")
    return chosen
