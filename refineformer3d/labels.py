"""The label vocabulary: conventions, schemes, names, regions and colours, in one place.

Everything that reads or writes a label value asks this module: the label transforms, the datalist checks, the
reports and PNG overviews, the writers, the evaluation, and the bundle metadata's ``channel_def`` (a test checks it).

* A **convention** says what the raw values of a label file mean. BraTS 2017-2021 ``"brats"`` (1 necrosis /
  non-enhancing tumour, 2 edema, 4 enhancing tumour), BraTS 2023+ ``"brats2023"`` (enhancing is 3) and MSD Task01
  ``"msd"`` (1 edema, 2 non-enhancing, 3 enhancing).
* A **scheme** says what a network predicts. ``"classes"`` (the default): one softmax map with 0 background,
  1 tumour core (necrosis + enhancing) and 2 edema; it cannot tell enhancing tumour from necrosis. ``"regions"``:
  three sigmoid channels TC, WT, ET, the BraTS evaluation regions; written back as a convention's raw values.
* A **region** is a union of tumour parts: tumour core (TC) = necrosis + enhancing, whole tumour (WT) = all three,
  enhancing tumour (ET). :func:`region_labels` says which label values make each region in what a scheme writes, and
  leaves out the regions a scheme cannot produce.

This module imports neither torch nor MONAI, so command-line tools and the data checks stay light.
"""

from __future__ import annotations

__all__ = [
    "CLASSES",
    "COLOURS",
    "CONVENTIONS",
    "PART_NAMES",
    "PARTS",
    "REGIONS",
    "REGION_NAMES",
    "SCHEMES",
    "channel_def",
    "check_convention",
    "check_scheme",
    "convention_values",
    "label_colours",
    "label_names",
    "region_labels",
    "to_convention",
]

PARTS = ("necrosis", "edema", "enhancing")
PART_NAMES = {"necrosis": "necrosis / non-enhancing tumour", "edema": "edema", "enhancing": "enhancing tumour"}

# Raw label value of each tumour part, per convention.
CONVENTIONS: dict[str, dict[str, int]] = {
    "brats": {"necrosis": 1, "edema": 2, "enhancing": 4},
    "brats2023": {"necrosis": 1, "edema": 2, "enhancing": 3},
    "msd": {"necrosis": 2, "edema": 1, "enhancing": 3},
}

SCHEMES = ("classes", "regions")

# The "classes" scheme: label value -> (name, the tumour parts it holds).
CLASSES: dict[int, tuple[str, tuple[str, ...]]] = {
    1: ("tumour core", ("necrosis", "enhancing")),
    2: ("edema", ("edema",)),
}

# The BraTS evaluation regions, in the order of the "regions" scheme's channels: abbreviation -> tumour parts.
REGIONS: dict[str, tuple[str, ...]] = {
    "TC": ("necrosis", "enhancing"),
    "WT": ("necrosis", "edema", "enhancing"),
    "ET": ("enhancing",),
}
REGION_NAMES = {"TC": "tumour core", "WT": "whole tumour", "ET": "enhancing tumour"}

# One colour per tumour part (RGB in [0, 1]), so a part looks the same in both schemes; a class takes the colour of
# its first part (tumour core: necrosis red).
COLOURS: dict[str, tuple[float, float, float]] = {
    "necrosis": (0.9, 0.1, 0.1),
    "edema": (0.1, 0.8, 0.2),
    "enhancing": (1.0, 0.85, 0.0),
}


def check_scheme(scheme: str) -> str:
    """Returns ``scheme``; raises ``ValueError`` naming the known schemes for any other value."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown label scheme {scheme!r}; expected one of {sorted(SCHEMES)}")
    return scheme


def check_convention(convention: str) -> str:
    """Returns ``convention``; raises ``ValueError`` naming the known conventions for any other value."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown label convention {convention!r}; expected one of {sorted(CONVENTIONS)}")
    return convention


def convention_values(convention: str) -> tuple[int, ...]:
    """Every value a label file of ``convention`` may hold, background included, sorted."""
    return tuple(sorted({0, *CONVENTIONS[check_convention(convention)].values()}))


def _parts_of(scheme: str, convention: str) -> dict[int, tuple[str, ...]]:
    """Label value written by ``scheme`` -> the tumour parts it holds."""
    if check_scheme(scheme) == "classes":
        return {value: parts for value, (_, parts) in CLASSES.items()}
    return {value: (part,) for part, value in sorted(CONVENTIONS[check_convention(convention)].items(), key=_value)}


def _value(item: tuple[str, int]) -> int:
    return item[1]


def label_names(scheme: str = "classes", convention: str = "brats") -> dict[int, str]:
    """Label value -> name, for the label maps that ``scheme`` writes (``regions``: in ``convention``'s values)."""
    if check_scheme(scheme) == "classes":
        return {value: name for value, (name, _) in CLASSES.items()}
    return {value: PART_NAMES[parts[0]] for value, parts in sorted(_parts_of(scheme, convention).items())}


def region_labels(scheme: str = "classes", convention: str = "brats", abbreviations: bool = False) -> dict:
    """Region -> the label values it is made of, for the label maps that ``scheme`` writes.

    A region is listed only when the scheme's values add up to exactly its tumour parts: the ``classes`` scheme gives
    tumour core and whole tumour but no enhancing tumour (its class 1 holds necrosis and enhancing together).

    Args:
        scheme: ``"classes"`` or ``"regions"``.
        convention: the raw values ``regions`` writes in.
        abbreviations: key by ``TC``/``WT``/``ET`` instead of the full names.

    Returns:
        ``{"tumour core": (1,), "whole tumour": (1, 2)}`` for ``classes``; for ``regions`` with ``"brats"``
        ``{"tumour core": (1, 4), "whole tumour": (1, 2, 4), "enhancing tumour": (4,)}``.
    """
    parts_of = _parts_of(scheme, convention)
    regions = {}
    for region, wanted in REGIONS.items():
        values = tuple(sorted(v for v, parts in parts_of.items() if set(parts) <= set(wanted)))
        covered = {p for v in values for p in parts_of[v]}
        if covered == set(wanted):
            regions[region if abbreviations else REGION_NAMES[region]] = values
    return regions


def to_convention(scheme: str = "classes", convention: str = "brats", target: str = "brats2023") -> dict[int, int]:
    """Label value written by ``scheme`` (in ``convention``) -> the ``target`` convention's value for it.

    A value holding several tumour parts (``classes``' tumour core: necrosis + enhancing) takes its first part's value
    (necrosis), so tumour core and whole tumour keep their voxels and enhancing tumour stays empty; the caller reports
    only the regions :func:`region_labels` lists for ``scheme``. Background (0) maps to 0.

    Args:
        scheme: ``"classes"`` or ``"regions"`` (for a reference label file: ``"regions"``, its raw tumour parts).
        convention: the raw values ``scheme`` is written in (``regions`` only; ``classes`` writes 1 and 2 always).
        target: the convention to map to; the BraTS 2023+ challenges (and their evaluation package) use
            ``"brats2023"``: 1 necrosis / non-enhancing, 2 edema, 3 enhancing.

    Returns:
        ``{0: 0, 1: 1, 2: 2}`` for ``classes``; ``{0: 0, 1: 1, 2: 2, 4: 3}`` for ``regions`` from ``"brats"``.
    """
    values = CONVENTIONS[check_convention(target)]
    return {0: 0, **{value: values[parts[0]] for value, parts in _parts_of(scheme, convention).items()}}


def label_colours(scheme: str = "classes", convention: str = "brats") -> dict[int, tuple[float, float, float]]:
    """Label value -> RGB colour in [0, 1], for the label maps that ``scheme`` writes."""
    return {value: COLOURS[parts[0]] for value, parts in _parts_of(scheme, convention).items()}


def channel_def(scheme: str = "classes", convention: str = "brats") -> dict[str, str]:
    """The bundle metadata's output ``channel_def``: label value (as a string) -> name, background included."""
    return {"0": "background", **{str(v): name for v, name in label_names(scheme, convention).items()}}
