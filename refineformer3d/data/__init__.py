"""BraTS data: dataset discovery and datalists, label transforms, and realistic synthetic studies.

The names below are imported on first use (PEP 562): ``python -m refineformer3d.data.datalist`` then runs without
importing torch and MONAI first, and without runpy's warning about a module imported twice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "CHANNELS": "datalist",
    "LABEL_CONVENTIONS": "datalist",
    "LAYOUTS": "datalist",
    "DatasetError": "datalist",
    "build_datalist": "datalist",
    "detect_layout": "datalist",
    "find_studies": "datalist",
    "label_convention_of": "datalist",
    "load_datalist": "datalist",
    "write_datalist": "datalist",
    "DICOM_KEYWORDS": "modalities",
    "dicom_modality": "modalities",
    "modality_of_name": "modalities",
    "find_study_folders": "layouts",
    "read_study": "layouts",
    "LoadStudyd": "grids",
    "check_grids": "grids",
    "study_reference": "grids",
    "InputError": "errors",
    "write_studies": "studies",
    "check_study": "validation",
    "checked_datalist": "datalist",
    "verify_entries": "validation",
    "ensure_dataset": "synthetic",
    "make_case": "synthetic",
    "make_dataset": "synthetic",
    "SkullStripd": "brain_extraction",
    "BiasFieldCorrectiond": "transforms",
    "BratsLabelsFromPredictiond": "transforms",
    "FillMissingSequencesd": "transforms",
    "ConvertBratsLabelsd": "transforms",
    "PathSafeSpacingd": "transforms",
    "RandDropSequenced": "transforms",
    "RandThickSlicesd": "transforms",
    "RelabelSmallEnhancingd": "transforms",
    "with_augmentations": "transforms",
}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from .brain_extraction import SkullStripd  # noqa: F401
    from .datalist import (  # noqa: F401
        CHANNELS,
        LABEL_CONVENTIONS,
        LAYOUTS,
        DatasetError,
        build_datalist,
        checked_datalist,
        detect_layout,
        find_studies,
        label_convention_of,
        load_datalist,
        write_datalist,
    )
    from .errors import InputError  # noqa: F401
    from .grids import LoadStudyd, check_grids, study_reference  # noqa: F401
    from .layouts import find_study_folders, read_study  # noqa: F401
    from .modalities import DICOM_KEYWORDS, dicom_modality, modality_of_name  # noqa: F401
    from .studies import write_studies  # noqa: F401
    from .synthetic import ensure_dataset, make_case, make_dataset  # noqa: F401
    from .transforms import (  # noqa: F401
        BiasFieldCorrectiond,
        BratsLabelsFromPredictiond,
        ConvertBratsLabelsd,
        FillMissingSequencesd,
        PathSafeSpacingd,
        RandDropSequenced,
        RandThickSlicesd,
        RelabelSmallEnhancingd,
        with_augmentations,
    )
    from .validation import check_study, verify_entries  # noqa: F401


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
