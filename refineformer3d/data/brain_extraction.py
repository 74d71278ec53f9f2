"""Skull stripping inside the pipeline, so that a study as the scanner exports it looks like BraTS-preprocessed data.

The shipped models were trained on BraTS, whose studies are skull-stripped (zero outside the brain); on a study with
skull, scalp and face they segment the scalp as edema. The BraTS preprocessing tools strip with HD-BET after atlas
registration; here the reference modality (T1ce by default) is stripped with deepbet (Fisch et al., 2024, "deepbet:
fast brain extraction of T1-weighted MRI using convolutional neural networks"; MIT licence, its weights ship inside
its wheel, so it runs offline), after every modality has been brought onto the reference's grid and the grid
resampled to the model's spacing, and every modality is masked with the brain mask. On TCGA-FG-6692 deepbet's mask
agrees with the BraTS toolkit's HD-BET mask with Dice 0.97 (docs/experiments/2026-12-07-raw-scanner-study.md).

deepbet is imported only when a study is stripped, and it runs on the CPU: the transform runs in the data loader's
worker processes, where CUDA cannot be initialised after a fork.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

from refineformer3d.data.grids import _reference_index, auto_bool, skull_strip_warning
from refineformer3d.data.modalities import CHANNELS, DISPLAY

__all__ = ["SkullStripd", "brain_mask", "deepbet_version"]

logger = logging.getLogger(__name__)

_RAS = np.array([[0, 1], [1, 1], [2, 1]])


@functools.lru_cache(maxsize=1)
def _extractor():
    """deepbet's two TorchScript networks (a coarse one for the head's bounding box, a fine one for the mask), once
    per process."""
    from deepbet import BrainExtraction  # imported late: only a study that is stripped needs it

    return BrainExtraction(no_gpu=True)


def deepbet_version() -> str:
    from importlib.metadata import version

    return f"deepbet {version('deepbet')}"


def brain_mask(image: np.ndarray | torch.Tensor, affine: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """deepbet's brain mask of a T1-weighted volume (X, Y, Z), as bool on the same voxels.

    deepbet reads its input in RAS orientation (it calls nibabel's ``as_closest_canonical``); the volume is turned
    to RAS by axis flips and permutations from ``affine`` and the mask turned back, so any orientation works.
    Its mask is the largest connected component with holes filled (deepbet's own post-processing).

    Raises:
        ValueError: when deepbet finds no head in the volume.
    """
    volume = np.asarray(image, dtype=np.float32)
    to_ras = io_orientation(np.asarray(affine, dtype=np.float64))
    canonical = np.ascontiguousarray(apply_orientation(volume, to_ras))
    bet = _extractor()
    try:
        probability = bet.run_model(canonical.copy())
    except AssertionError as error:  # deepbet asserts when its coarse network finds no head
        raise ValueError(f"deepbet found no brain: {error}") from None
    mask = bet.postprocess(probability > threshold)
    return np.ascontiguousarray(apply_orientation(mask.astype(bool), ornt_transform(_RAS, to_ras)))


class SkullStripd(MapTransform):
    """Skull-strips a study (C, X, Y, Z) with deepbet and records its brain mask under ``mask_key``.

    The brain mask of the reference channel masks every channel. Place it after the modalities are on one grid and
    resampled to the model's spacing (deepbet was trained on about 1 mm T1-weighted scans; a 5 mm stack resampled to
    1 mm works, the stack itself does not) and before the crop to the foreground, which then crops to the brain.

    ``skull_strip="auto"`` strips a study that looks not skull-stripped: the ``skull_strip_warning`` that
    :class:`~refineformer3d.data.LoadStudyd` recorded from the reference file, or the same test
    (:func:`~refineformer3d.data.grids.skull_strip_warning`) on the reference channel when it is missing. ``True``
    strips every study, ``False`` none, and then the warning is logged. A study that is not stripped gets the brain
    mask it already has, its voxels that are non-zero in any channel.

    Metadata added for the report: ``skull_strip`` (``"deepbet <version>"`` or ``"none"``) and ``skull_strip_reason``.

    Args:
        keys: the image key.
        skull_strip: ``"auto"`` (default), ``True`` or ``False`` (strings ``"true"``/``"false"`` too).
        reference_modality: the channel that is stripped, by name in FLAIR, T1, T1ce, T2 order.
        mask_key: where the brain mask (1, X, Y, Z) goes, a MetaTensor with the image's metadata and transforms, so
            later spatial transforms can apply to it and ``Invertd`` can bring it onto the output grid.
        threshold: deepbet's probability threshold.
        case_key: the entry's study name, for the log.
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: for an unknown ``skull_strip`` or reference modality; when called, if deepbet finds no brain.
    """

    def __init__(
        self,
        keys: KeysCollection,
        skull_strip: str | bool = "auto",
        reference_modality: str = "t1ce",
        mask_key: str = "brain_mask",
        threshold: float = 0.5,
        case_key: str = "case",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.skull_strip = auto_bool(skull_strip, "skull_strip")
        self.reference = _reference_index(reference_modality)
        self.reference_modality = reference_modality
        self.mask_key = mask_key
        self.threshold = float(threshold)
        self.case_key = case_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], d[self.mask_key] = self.strip(d[key], d.get(self.case_key))
        return d

    def strip(self, image: MetaTensor, study: str | None = None) -> tuple[MetaTensor, MetaTensor]:
        """The image, stripped or not as the mode decides, and its brain mask (1, X, Y, Z)."""
        if not isinstance(image, MetaTensor):
            image = MetaTensor(image)
        name = study or image.meta.get("study", "")
        # A study that lacks the reference modality was loaded on another's grid (LoadStudyd): strip that one, not
        # the blank channel that stands in for the missing sequence.
        used = image.meta.get("reference_modality", CHANNELS[self.reference])
        index = CHANNELS.index(used) if used in CHANNELS and image.shape[0] == len(CHANNELS) else self.reference
        reference = image.as_tensor()[min(index, image.shape[0] - 1)]
        warning = image.meta.get("skull_strip_warning")
        if warning is None:  # not loaded by LoadStudyd (a 4-D file): the same test, on the current grid
            warning = skull_strip_warning(reference.numpy(), image.affine.numpy())
        strip = self.skull_strip is True or (self.skull_strip == "auto" and bool(warning))
        modality = DISPLAY[CHANNELS[index]]
        if strip:
            reason = "skull_strip true" if self.skull_strip is True else f"auto: the {modality} {warning.split(':')[0]}"
            logger.info("study %s: skull-stripping the %s with deepbet (%s)", name, modality, reason)
            mask = torch.from_numpy(brain_mask(reference.numpy(), image.affine.numpy(), self.threshold))
            image = image * mask[None].to(image.dtype)
            method = deepbet_version()
        else:
            if warning:
                logger.warning("study %s: %s %s", name, modality, warning)
            reason = "skull_strip false" if self.skull_strip is False else "auto: looks skull-stripped"
            mask = (image.as_tensor() != 0).any(dim=0)
            method = "none"
        image.meta["skull_strip"] = method
        image.meta["skull_strip_reason"] = reason
        mask_image = MetaTensor(mask[None].to(torch.uint8), meta=dict(image.meta))
        mask_image.applied_operations = list(image.applied_operations)
        return image, mask_image
