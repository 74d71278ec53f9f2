"""BraTS label transforms that MONAI lacks (convention-aware label schemes, prediction-to-label conversion), a
resampling transform that runs under MONAI Label, N4 bias field correction (ITK's, which MONAI does not wrap), and two
augmentations that MONAI's lack (a thick-slice acquisition, a dropped sequence) with, for inference, the sequences a
study lacks filled as a dropped one (:class:`FillMissingSequencesd`); and where ``augment.json`` puts its
augmentations in the training pipeline (:func:`with_augmentations`).

Label schemes:

* ``"classes"`` (default): one channel, 0 background, 1 tumour core (necrosis / non-enhancing + enhancing),
  2 edema; whole tumour = 1 + 2. For softmax outputs and DiceCE with ``to_onehot_y=True``.
* ``"regions"``: three overlapping channels TC, WT, ET (float32), the BraTS evaluation regions, for sigmoid outputs
  as in the MONAI model zoo and SegFormer3D.

The raw label values follow a convention of :mod:`refineformer3d.labels` (``"brats"`` 1/2/4, ``"brats2023"``
1/2/3, ``"msd"`` 1 edema / 2 non-enhancing / 3 enhancing); a datalist carries its convention as
``datalist["label_convention"]``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import (
    AsDiscrete,
    ConvertToMultiChannelBasedOnBratsClasses,
    MapLabelValue,
    MapTransform,
    NormalizeIntensityd,
    RandomizableTransform,
    Spacingd,
)
from monai.utils import PostFix, convert_to_dst_type

from refineformer3d.data.modalities import CHANNELS, DISPLAY
from refineformer3d.labels import CONVENTIONS, SCHEMES, check_convention, check_scheme

# MONAI 1.6's RemoveSmallObjects (the lesion clean-up of inference.json) still passes ``min_size`` to scikit-image,
# which since 0.26 warns once per call (once per study) that it will become ``max_size`` in 2.0; the threshold means
# the same until then, and the line says nothing a user can act on.
warnings.filterwarnings(
    "ignore", message="Parameter `min_size` is deprecated", category=FutureWarning, module="monai.transforms.utils"
)
logger = logging.getLogger(__name__)

__all__ = [
    "SCHEMES",
    "BiasFieldCorrectiond",
    "ConvertBratsLabelsd",
    "BratsLabelsFromPredictiond",
    "FillMissingSequencesd",
    "PathSafeSpacingd",
    "RandDropSequenced",
    "RandThickSlicesd",
    "RelabelSmallEnhancingd",
    "with_augmentations",
]


def _source_name(data: Mapping, key: Hashable, value) -> str:
    """The file a value was loaded from, for error messages."""
    meta = value.meta if isinstance(value, MetaTensor) else data.get(PostFix.meta(str(key)), {})
    filename = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    return f"{key!r} ({filename})" if filename else repr(key)


class ConvertBratsLabelsd(MapTransform):
    """Converts raw BraTS or MSD labels to the ``classes`` or ``regions`` scheme, checking every value.

    Args:
        keys: keys of the labels, each (1, D, H, W) (any spatial rank), numpy or torch (MetaTensor meta is kept).
        scheme: ``"classes"``: (1, D, H, W) with 0 background, 1 tumour core, 2 edema, in the input's dtype.
            ``"regions"``: (3, D, H, W) float32 channels TC, WT, ET.
        convention: meaning of the raw values: ``"brats"`` (1 necrosis/non-enhancing, 2 edema, 4 enhancing),
            ``"brats2023"`` (enhancing is 3) or ``"msd"`` (1 edema, 2 non-enhancing, 3 enhancing).
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: for an unknown scheme or convention; when called, for a label with more than one channel or a
            value outside the convention, naming the key and file.

    Example:
        >>> t = ConvertBratsLabelsd("label", scheme="regions", convention="msd")
        >>> t({"label": np.array([[[0, 1, 2, 3]]])})["label"][:, 0, 0]  # TC, WT, ET of each voxel
        array([[0., 0., 1., 1.],
               [0., 1., 1., 1.],
               [0., 0., 0., 1.]], dtype=float32)
    """

    backend = MapLabelValue.backend

    def __init__(
        self, keys: KeysCollection, scheme: str = "classes", convention: str = "brats", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        check_scheme(scheme)
        check_convention(convention)
        self.scheme = scheme
        self.convention = convention
        parts = CONVENTIONS[convention]
        self.values = (0, parts["necrosis"], parts["edema"], parts["enhancing"])
        # classes: core = necrosis + enhancing. regions: MONAI's BraTS transform wants 1 necrosis and 2 edema.
        self.targets = (0, 1, 2, 1) if scheme == "classes" else (0, 1, 2, parts["enhancing"])
        self.to_regions = ConvertToMultiChannelBasedOnBratsClasses(et_label=parts["enhancing"])

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._convert(d[key], _source_name(d, key, d[key]))
        return d

    def _convert(self, label: NdarrayOrTensor, name: str) -> NdarrayOrTensor:
        if label.ndim < 2 or label.shape[0] != 1:
            raise ValueError(f"label {name}: expected one channel first (1, D, H, W), got shape {tuple(label.shape)}")
        raw = label.as_tensor() if isinstance(label, MetaTensor) else label  # meta is copied back at the end
        present = torch.unique(raw) if isinstance(raw, torch.Tensor) else np.unique(raw)
        bad = [v for v in present.tolist() if v not in self.values]
        if bad:
            raise ValueError(
                f"label {name}: values {bad[:10]} outside the {self.convention} convention {sorted(self.values)}"
            )
        is_tensor = isinstance(raw, torch.Tensor)
        dtype = raw.dtype if self.scheme == "classes" else (torch.float32 if is_tensor else np.float32)
        out = MapLabelValue(self.values, self.targets, dtype=dtype)(raw)
        if self.scheme == "regions":
            out = self.to_regions(out)  # bool; cast below, as DiceLoss and the metrics need float
        out, *_ = convert_to_dst_type(out, dst=label, dtype=dtype)
        return out


class BratsLabelsFromPredictiond(MapTransform):
    """Turns network outputs into one label map, for writing predictions.

    ``classes``: (3, D, H, W) probabilities or logits -> argmax -> (1, D, H, W) with 0 background, 1 tumour core,
    2 edema. ``regions``: (3, D, H, W) TC, WT, ET probabilities -> threshold -> (1, D, H, W) with the
    ``convention``'s raw values (BraTS: 1 necrosis/non-enhancing, 2 edema, 4 enhancing). The regions are nested by
    union, as nnU-Net and the BraTS toolkits do: a voxel is enhancing where ET is predicted, otherwise necrosis where
    TC is, otherwise edema where WT is; so the written ET lies inside TC inside WT.

    Output keeps the input's type, dtype and MetaTensor meta, so ``Invertd`` and ``SaveImaged`` work afterwards.

    Args:
        keys: keys of the predictions, (3, D, H, W) (any spatial rank).
        scheme: ``"classes"`` or ``"regions"``.
        convention: raw label values to write for ``regions`` (``"brats"``, ``"brats2023"`` or ``"msd"``).
        threshold: probability threshold for ``regions``; apply the sigmoid first.
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: for an unknown scheme or convention; when called, for a prediction without three channels.
    """

    backend = AsDiscrete.backend

    def __init__(
        self,
        keys: KeysCollection,
        scheme: str = "classes",
        convention: str = "brats",
        threshold: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        check_scheme(scheme)
        check_convention(convention)
        self.scheme = scheme
        parts = CONVENTIONS[convention]
        # Written in this order, each over the last: WT, then TC, then ET.
        self.region_values = (parts["edema"], parts["necrosis"], parts["enhancing"])
        self.threshold = threshold
        self.argmax = AsDiscrete(argmax=True)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            if pred.ndim < 2 or pred.shape[0] != 3:
                raise ValueError(
                    f"prediction {_source_name(d, key, pred)}: expected 3 channels first, got shape {tuple(pred.shape)}"
                )
            d[key] = self.argmax(pred) if self.scheme == "classes" else self._from_regions(pred)
        return d

    def _from_regions(self, pred: NdarrayOrTensor) -> NdarrayOrTensor:
        raw = pred.as_tensor() if isinstance(pred, MetaTensor) else pred  # meta is copied back at the end
        tc, wt, et = raw >= self.threshold
        label = wt * self.region_values[0]  # bool times int: integer label
        label = label + tc * (self.region_values[1] - label)
        label = label + et * (self.region_values[2] - label)
        out, *_ = convert_to_dst_type(label[None], dst=pred)
        return out


class PathSafeSpacingd(Spacingd):
    """MONAI's ``Spacingd`` that leaves non-metadata entries named ``<key>_*`` alone.

    MONAI 1.6's ``Spacingd`` copies a NIfTI image's metadata into every entry whose name starts with ``<key>_``,
    expecting metadata dicts. MONAI Label puts the study's path in ``image_path`` (a string), so plain ``Spacingd``
    fails there with "'str' object has no attribute 'update'". This moves such entries aside for the call; the
    resampling, its metadata and its inverse are MONAI's.
    """

    def __call__(self, data, lazy: bool | None = None):
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {
            k: d.pop(k)
            for k in list(d)
            if isinstance(k, str) and k.startswith(prefixes) and not isinstance(d[k], Mapping)
        }
        d = super().__call__(d, lazy=lazy)
        d.update(aside)
        return d


class RelabelSmallEnhancingd(MapTransform):
    """Relabels a study's enhancing tumour as necrosis when its total volume is below ``min_ml``.

    BraTS teams do this (nnU-Net's BraTS 2020 entry among them) because a study without enhancing tumour scores ET
    Dice 1 only when nothing is predicted there: a few spurious enhancing voxels cost the whole study's ET score,
    while moving them to necrosis keeps tumour core and whole tumour unchanged. MONAI has no transform for it.

    Args:
        keys: keys of (1, D, H, W) label maps in ``convention``'s raw values (what ``BratsLabelsFromPredictiond``
            writes for the ``regions`` scheme), MetaTensors whose affine gives the voxel volume.
        min_ml: total enhancing volume (mL) below which it is relabelled; 0 leaves every study as it is.
        convention: the label values (``"brats"``: enhancing 4, necrosis 1).
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: for a negative ``min_ml`` or an unknown convention.
    """

    def __init__(
        self, keys: KeysCollection, min_ml: float, convention: str = "brats", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if min_ml < 0:
            raise ValueError(f"min_ml must be >= 0, got {min_ml}")
        parts = CONVENTIONS[check_convention(convention)]
        self.min_ml = float(min_ml)
        self.enhancing, self.necrosis = parts["enhancing"], parts["necrosis"]

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            affine = label.affine if isinstance(label, MetaTensor) else torch.eye(4)
            voxel_ml = float(abs(torch.det(torch.as_tensor(affine, dtype=torch.float64)[:3, :3]))) / 1000.0
            enhancing = label == self.enhancing
            if 0 < float(enhancing.sum()) * voxel_ml < self.min_ml:
                d[key] = (
                    torch.where(enhancing, self.necrosis, label)
                    if isinstance(label, torch.Tensor)
                    else (np.where(enhancing, self.necrosis, label).astype(label.dtype))
                )
        return d


class RandThickSlicesd(RandomizableTransform, MapTransform):
    """Simulates a 2-D acquisition: slices several voxels thick along one random axis, resampled back to the grid.

    Clinical studies are often 2-D sequences (FLAIR and T2 with 3-5 mm slices) resampled to 1 mm, so that one axis
    is blurred and the others are sharp. MONAI's ``RandSimulateLowResolutiond`` zooms every axis alike; this averages
    slabs of ``thickness`` voxels along one axis (each slice the mean of its slab; where the axis is no multiple of
    the thickness, ``ceil(n / thickness)`` slabs share it evenly) and fills the grid by linear interpolation between
    slice centres, as a scanner's reformat does. The axis and thickness are drawn once per call
    and shared by every key and channel (one acquisition geometry); voxels that were zero in every channel (outside
    the skull-stripped brain) stay zero.

    Args:
        keys: keys of (C, X, Y, Z) images.
        prob: probability of thick slices.
        thickness: (min, max) slice thickness in voxels, drawn as an integer in that range.
        axes: the spatial axes a slice direction is drawn from.
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: for a thickness below 1 or a reversed range, or no axes.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        thickness: tuple[int, int] = (2, 5),
        axes: tuple[int, ...] = (0, 1, 2),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        low, high = (int(t) for t in thickness)
        if not 1 <= low <= high:
            raise ValueError(f"thickness must be (min, max) with 1 <= min <= max voxels, got {tuple(thickness)}")
        if not axes:
            raise ValueError("axes must name at least one spatial axis")
        self.thickness, self.axes = (low, high), tuple(int(a) for a in axes)
        self._axis, self._slice = 0, 1

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._axis = self.axes[int(self.R.randint(len(self.axes)))]
        self._slice = int(self.R.randint(self.thickness[0], self.thickness[1] + 1))

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize()
        if not self._do_transform or self._slice == 1:
            return d
        for key in self.key_iterator(d):
            d[key] = self._thick(d[key])
        return d

    def _thick(self, image: NdarrayOrTensor) -> NdarrayOrTensor:
        x = torch.as_tensor(image, dtype=torch.float32)
        if x.ndim != 4:
            raise ValueError(f"RandThickSlicesd expects (C, X, Y, Z) images, got shape {tuple(x.shape)}")
        size = list(x.shape[1:])
        slices = list(size)
        slices[self._axis] = max(1, -(-size[self._axis] // self._slice))
        # "area" averages each slab; "trilinear" with the other axes' sizes unchanged interpolates along one axis only
        thick = F.interpolate(x[None], size=slices, mode="area")
        resampled = F.interpolate(thick, size=size, mode="trilinear", align_corners=False)[0]
        resampled = torch.where((x != 0).any(dim=0, keepdim=True), resampled, torch.zeros_like(resampled))
        out, *_ = convert_to_dst_type(resampled, image)
        return out


class RandDropSequenced(RandomizableTransform, MapTransform):
    """Blanks whole MRI sequences (image channels) at random, so that a network cannot lean on one sequence alone.

    A sequence that is missing, or whose contrast differs from the training data's, should cost a network the cue
    that sequence gave and nothing more: a network that separates tumour core from edema by one sequence's levels
    (FLAIR, say) fails when a scanner's FLAIR orders them differently, although T1, T1ce and T2 still tell them
    apart. With probability ``prob`` this fills ``num_sequences`` channels, drawn without replacement, with
    ``value``: after ``NormalizeIntensityd(nonzero=True)`` 0 is the brain's mean, a sequence with no contrast.
    Voxels that were zero in every channel (outside the skull-stripped brain) stay zero. The channels are drawn once
    per call and shared by every key. Put it after the crop, on normalised intensities.

    Args:
        keys: keys of (C, X, Y, Z) images (any spatial rank).
        prob: probability of dropping sequences.
        num_sequences: (min, max) sequences dropped, drawn as an integer in that range; at least one sequence of
            every image is always kept.
        value: the intensity a dropped sequence is filled with.
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: for a range below 1 or reversed, and in ``__call__`` for an image with no more channels than
            ``num_sequences``'s maximum, or keys whose channel counts differ.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        num_sequences: tuple[int, int] = (1, 1),
        value: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        low, high = (int(n) for n in num_sequences)
        if not 1 <= low <= high:
            raise ValueError(f"num_sequences must be (min, max) with 1 <= min <= max, got {tuple(num_sequences)}")
        self.num_sequences, self.value = (low, high), float(value)
        self._drawn: np.ndarray = np.zeros(0, dtype=np.int64)

    def randomize(self, channels: int) -> None:
        super().randomize(None)
        count = int(self.R.randint(self.num_sequences[0], self.num_sequences[1] + 1))
        self._drawn = self.R.choice(channels, size=count, replace=False)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        channels = int(d[keys[0]].shape[0])
        for key in keys:
            if d[key].shape[0] != channels or channels <= self.num_sequences[1]:
                raise ValueError(
                    f"RandDropSequenced drops up to {self.num_sequences[1]} sequences of {channels} and keeps one: "
                    f"{_source_name(d, key, d[key])} has {d[key].shape[0]} channels"
                )
        self.randomize(channels)
        if not self._do_transform:
            return d
        for key in keys:
            x = torch.as_tensor(d[key])
            dropped = x.clone()
            inside = (x != 0).any(dim=0)  # the brain: outside it every sequence stays zero
            dropped[torch.as_tensor(self._drawn)] = torch.where(inside, self.value, 0.0).to(x.dtype)
            d[key], *_ = convert_to_dst_type(dropped, d[key])
        return d


class FillMissingSequencesd(MapTransform):
    """Puts back the sequences a study lacks as all-zero channels: the value the network saw for a dropped sequence.

    Training drops whole sequences (:class:`RandDropSequenced`, ``value=0.0``) on normalised intensities: 0 inside the
    brain, the brain's mean, and 0 outside it, so a dropped channel is all zero. An all-zero channel put in before the
    normalisation stays all zero through it (``NormalizeIntensityd(nonzero=True)`` leaves a channel with no non-zero
    voxel as it is), and adds nothing to what the others share: ``CropForegroundd`` crops to the voxels non-zero in
    any channel, and bias field correction (:class:`BiasFieldCorrectiond`) and the normalisation work per channel
    and leave a blank one alone. So a study lacking T2 is preprocessed as the full study, with its T2 channel then
    dropped as training drops it.

    The missing sequences are read from the image's metadata, ``missing_sequences``, which
    :class:`~refineformer3d.data.grids.LoadStudyd` writes; each study's are named in the log. Put it right after the
    loader.

    Args:
        keys: keys of (C, X, Y, Z) images with ``C = len(channels) - len(missing_sequences)``.
        channels: the sequences the network takes, in its channel order.
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: in ``__call__``, for a missing sequence not among ``channels``, for every one of them missing,
            or for an image whose channel count does not match.
    """

    def __init__(
        self, keys: KeysCollection, channels: Sequence[str] = CHANNELS, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = tuple(channels)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            meta = image.meta if isinstance(image, MetaTensor) else {}
            missing = list(meta.get("missing_sequences") or [])
            if not missing:
                continue
            present = [c for c in self.channels if c not in missing]
            if set(missing) - set(self.channels) or not present or image.shape[0] != len(present):
                raise ValueError(
                    f"FillMissingSequencesd: {_source_name(d, key, image)} has {image.shape[0]} channels and lacks "
                    f"{missing}; expected one channel for each of {present} (of {list(self.channels)})"
                )
            x = image.as_tensor()
            blank = torch.zeros_like(x[:1])
            filled = torch.cat([blank if c in missing else x[present.index(c)][None] for c in self.channels])
            d[key] = MetaTensor(filled, meta=dict(meta), applied_operations=list(image.applied_operations))
            names = ", ".join(DISPLAY.get(c, c) for c in missing)
            logger.warning(
                "study %s: no %s; given the value of a sequence dropped in training (the brain's normalised mean)",
                meta.get("study", _source_name(d, key, image)),
                names,
            )
        return d


class BiasFieldCorrectiond(MapTransform):
    """N4 bias field correction (ITK's ``N4BiasFieldCorrectionImageFilter``) of every MRI sequence, inside the brain.

    A receive coil's sensitivity multiplies the signal by a smooth field that differs between scanners and sequences.
    A network that separates tumour core from edema by their levels reads that field as tissue: trained on one
    generator's mild fields, the equal-budget study's networks lost most of their tumour-core Dice on studies with
    another contrast table under a stronger field (bundle docs, "Where the out-of-distribution loss comes from").
    N4 estimates the field as a smooth B-spline of the log intensities and divides it out, a standard step of MRI
    preprocessing; MONAI has no such transform. For each channel the field is fitted on the image shrunk by
    ``shrink_factor`` (the field is smooth, and N4's time grows with the voxels), inside the mask of that channel's
    non-zero voxels (the skull-stripped brain), then evaluated on the full grid; voxels outside the mask stay as they
    were. A channel with fewer than ``min_voxels`` non-zero voxels (a blank sequence) is left alone.

    Put it before ``NormalizeIntensityd``, on the scanner's (positive) intensities, which a field multiplies, and
    after the crop to the brain (fewer voxels). The fit uses as many threads as torch (``torch.get_num_threads()``).

    Args:
        keys: keys of (C, X, Y, Z) images.
        shrink_factor: the fit runs on every ``shrink_factor``-th voxel along each axis.
        iterations: the most iterations at each of N4's fitting levels (one level per entry).
        convergence_threshold: N4 stops a level when the field changes less than this.
        min_voxels: the fewest non-zero voxels (after shrinking) a channel needs to be corrected.
        interpolate_field: evaluate the fitted field on the shrunk grid and interpolate it linearly onto the full
            grid, instead of evaluating the B-spline at every voxel; at a shrink factor of 8 the B-spline's
            evaluation on the full grid takes as long as the fit, and the field is smooth over many voxels.
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: for a shrink factor below 1 or no fitting levels, and in ``__call__`` for an image that is not
            (C, X, Y, Z).
    """

    def __init__(
        self,
        keys: KeysCollection,
        shrink_factor: int = 4,
        iterations: tuple[int, ...] = (50, 50, 50),
        convergence_threshold: float = 0.001,
        min_voxels: int = 100,
        interpolate_field: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(shrink_factor) < 1 or not len(iterations):
            raise ValueError(
                f"shrink_factor must be at least 1 and iterations name one level or more, got {shrink_factor} and "
                f"{list(iterations)}"
            )
        self.shrink_factor = int(shrink_factor)
        self.iterations = [int(n) for n in iterations]
        self.convergence_threshold = float(convergence_threshold)
        self.min_voxels = int(min_voxels)
        self.interpolate_field = bool(interpolate_field)

    def correct(self, volume: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
        """One (X, Y, Z) channel, corrected inside its non-zero voxels; float32."""
        import SimpleITK as sitk

        volume = np.asarray(volume, dtype=np.float32)
        mask = volume > 0
        shrink = [self.shrink_factor] * 3
        if np.count_nonzero(mask[:: shrink[0], :: shrink[1], :: shrink[2]]) < self.min_voxels:
            return volume
        # SimpleITK orders axes (Z, Y, X) in arrays; transposing keeps the spacing on the right axes
        image = sitk.GetImageFromArray(volume.transpose(2, 1, 0))
        image.SetSpacing([float(s) for s in spacing])
        brain = sitk.GetImageFromArray(mask.transpose(2, 1, 0).astype(np.uint8))
        brain.CopyInformation(image)
        n4 = sitk.N4BiasFieldCorrectionImageFilter()
        n4.SetMaximumNumberOfIterations(self.iterations)
        n4.SetConvergenceThreshold(self.convergence_threshold)
        n4.SetNumberOfThreads(max(1, torch.get_num_threads()))
        shrunk = sitk.Shrink(image, shrink)
        n4.Execute(shrunk, sitk.Shrink(brain, shrink))
        if self.interpolate_field:
            log_field = sitk.Resample(
                n4.GetLogBiasFieldAsImage(shrunk), image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32, True
            )
        else:
            log_field = n4.GetLogBiasFieldAsImage(image)
        log_field = sitk.GetArrayFromImage(log_field).transpose(2, 1, 0)
        return np.where(mask, volume * np.exp(-log_field), volume).astype(np.float32)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if image.ndim != 4:
                raise ValueError(
                    f"BiasFieldCorrectiond needs a (C, X, Y, Z) image: {_source_name(d, key, image)} has shape "
                    f"{tuple(image.shape)}"
                )
            spacing = tuple(float(s) for s in getattr(image, "pixdim", [1.0, 1.0, 1.0])[:3])
            array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
            corrected = np.stack([self.correct(channel, spacing) for channel in array])
            d[key], *_ = convert_to_dst_type(corrected, image, dtype=np.float32)
        return d


def with_augmentations(
    deterministic: Sequence, random: Sequence, acquisition: Sequence = (), augment: Sequence = ()
) -> list:
    """A training pipeline with augmentations put where each belongs (``augment.json`` over ``train.json``).

    Acquisition effects (a bias field per sequence) multiply the scanner's intensities, so they go before the
    intensity normalisation, which moves behind the other deterministic transforms; on normalised intensities a
    multiplicative field would only rescale each voxel's distance from the mean. Other augmentations go after the
    first random transform, the crop, so that each costs a patch rather than the study.

    Args:
        deterministic: ``train#deterministic_transforms`` (load to typed tensors, ``NormalizeIntensityd`` among them).
        random: ``train#random_transforms``, the crop first.
        acquisition: transforms before the normalisation; an item may be a list of transforms (one per sequence).
            Without any, the normalisation stays where it is, in the part a cache keeps.
        augment: transforms after the crop.

    Returns:
        The transforms in order, for a ``Compose``.
    """
    acquisition = [t for item in acquisition for t in (item if isinstance(item, (list, tuple)) else [item])]
    if not acquisition:  # the deterministic part stays as validation has it, so a persistent cache serves both
        return [*deterministic, *random[:1], *augment, *random[1:]]
    normalise = [t for t in deterministic if isinstance(t, NormalizeIntensityd)]
    before = [t for t in deterministic if not isinstance(t, NormalizeIntensityd)]
    return [*before, *acquisition, *normalise, *random[:1], *augment, *random[1:]]
