"""A study as the scanner exports it against its BraTS-preprocessed version: brain masks and whole-tumour volumes.

Reproduces the figures of docs/experiments/2026-12-07-raw-scanner-study.md on TCGA-FG-6692 (the BraTS toolkit's
example study; public in BrainLesion/preprocessing). The preprocessed version lies in the SRI24 atlas space, so it is
brought onto the raw study's grid by registering its skull-stripped T1ce rigidly onto the raw T1ce stripped by
deepbet (the same ITK registration as ``coregister``); its HD-BET mask and its segmentation follow by the same
transform (nearest neighbour).

Usage::

    python -m refineformer3d.experiments.raw_scanner_study --raw RAW_STUDY_DIR --brainles BRAINLES_DIR \\
        [--raw_seg RAW_SEG --preprocessed_seg PREPROCESSED_SEG [--raw_brain_mask MASK]] [--out result.json]

``BRAINLES_DIR`` is the BraTS toolkit's output folder (``raw_bet/*_t1c_bet_raw.nii.gz`` and
``brain-extraction/atlas_bet_t1c_mask.nii.gz``). The two segmentations are ``refineformer3d-segment``'s of the raw
folder and of the four ``raw_bet`` files; without them only the masks are compared.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, Orientation, Spacing
from scipy import ndimage

from refineformer3d.data.brain_extraction import brain_mask
from refineformer3d.data.grids import register_rigid

__all__ = ["dice", "main", "otsu_brain_mask"]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else 1.0


def otsu_brain_mask(image: np.ndarray, spacing_mm: float = 1.0, radius_mm: float = 6.0) -> np.ndarray:
    """The classical alternative: Otsu's threshold, an opening-like erosion that cuts the brain from the scalp at
    the skull, the largest component, the dilation back and holes filled."""
    import SimpleITK as sitk

    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetMaskValue(1)
    otsu.Execute(sitk.GetImageFromArray(image), sitk.GetImageFromArray((image > 0).astype(np.uint8)))
    foreground = image > otsu.GetThreshold()
    ball = _ball(max(1, round(radius_mm / spacing_mm)))
    core = ndimage.binary_erosion(foreground, structure=ball)
    labels, count = ndimage.label(core)
    if count == 0:
        return core
    largest = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    return ndimage.binary_fill_holes(ndimage.binary_dilation(largest, structure=ball) & foreground)


def _ball(radius: int) -> np.ndarray:
    grid = np.mgrid[(slice(-radius, radius + 1),) * 3]
    return (grid**2).sum(axis=0) <= radius**2


def _on_grid(image: MetaTensor, reference: MetaTensor, transform, nearest: bool) -> np.ndarray:
    """``image`` resampled onto ``reference``'s grid through an ITK transform (reference world -> image world)."""
    import itk
    from monai.data.itk_torch_bridge import metatensor_to_itk_image

    moving = metatensor_to_itk_image(image, channel_dim=0, dtype=np.float32)
    fixed = metatensor_to_itk_image(reference, channel_dim=0, dtype=np.float32)
    interpolator = (
        itk.NearestNeighborInterpolateImageFunction.New(moving)
        if nearest
        else itk.LinearInterpolateImageFunction.New(moving)
    )
    out = itk.resample_image_filter(
        moving,
        transform=transform,
        interpolator=interpolator,
        use_reference_image=True,
        reference_image=fixed,
        default_pixel_value=0.0,
    )
    return itk.array_view_from_image(out).transpose(2, 1, 0).copy()  # ITK arrays are z, y, x


def _load(path: Path) -> MetaTensor:
    return LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)(str(path))


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"expected one {pattern} in {folder}, found {len(found)}")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="refineformer3d-raw-scanner-study",
        description="A raw scanner study against its BraTS-preprocessed version: brain masks and whole-tumour volumes.",
    )
    parser.add_argument("--raw", required=True, type=Path, help="the raw study folder (T1ce file name ends _t1c)")
    parser.add_argument("--brainles", required=True, type=Path, help="the BraTS toolkit's output folder")
    parser.add_argument("--raw_seg", type=Path, help="segmentation of the raw study (its T1ce grid)")
    parser.add_argument("--preprocessed_seg", type=Path, help="segmentation of the preprocessed study (atlas grid)")
    parser.add_argument("--raw_brain_mask", type=Path, help="the raw study's brain mask (--write_brain_mask)")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)

    native = _load(_one(args.raw, "*_t1c.nii*"))
    # As inference sees it: RAS at the model's 1 mm spacing.
    t1ce = Spacing(pixdim=(1.0, 1.0, 1.0), mode="bilinear")(Orientation(axcodes="RAS", labels=None)(native))
    volume = t1ce[0].numpy()
    start = time.perf_counter()
    deepbet = brain_mask(volume, t1ce.affine.numpy())
    deepbet_s = time.perf_counter() - start
    start = time.perf_counter()
    otsu = otsu_brain_mask(volume)
    otsu_s = time.perf_counter() - start

    atlas_t1ce = _load(_one(args.brainles / "raw_bet", "*_t1c_bet_raw.nii*"))
    atlas_mask = _load(args.brainles / "brain-extraction" / "atlas_bet_t1c_mask.nii.gz")
    stripped = MetaTensor(t1ce.as_tensor() * torch.from_numpy(deepbet)[None], meta=dict(t1ce.meta))
    start = time.perf_counter()
    _, transform = register_rigid(stripped, atlas_t1ce, return_transform=True)
    registration_s = time.perf_counter() - start
    hd_bet = _on_grid(atlas_mask, t1ce, transform, nearest=True) > 0
    voxel_ml = abs(float(np.linalg.det(t1ce.affine.numpy()[:3, :3]))) / 1000.0
    result = {
        "grid": {"shape": list(volume.shape), "spacing_mm": 1.0, "native_spacing_mm": native.pixdim.tolist()},
        "brain_ml": {
            "hd_bet_brainles_atlas": float((atlas_mask.numpy() > 0).sum()) / 1000.0,
            "hd_bet_brainles_mapped": float(hd_bet.sum()) * voxel_ml,
            "deepbet": float(deepbet.sum()) * voxel_ml,
            "otsu_morphology": float(otsu.sum()) * voxel_ml,
        },
        "dice_vs_hd_bet": {"deepbet": dice(deepbet, hd_bet), "otsu_morphology": dice(otsu, hd_bet)},
        "seconds": {"deepbet": deepbet_s, "otsu_morphology": otsu_s, "atlas_registration": registration_s},
        "threads": torch.get_num_threads(),
    }
    if args.raw_seg and args.preprocessed_seg:
        raw_seg = _load(args.raw_seg)
        mapped = _on_grid(_load(args.preprocessed_seg), raw_seg, transform, nearest=True)
        raw_ml = abs(float(np.linalg.det(raw_seg.affine.numpy()[:3, :3]))) / 1000.0
        pre = _load(args.preprocessed_seg)
        pre_ml = abs(float(np.linalg.det(pre.affine.numpy()[:3, :3]))) / 1000.0
        raw_wt, mapped_wt = raw_seg[0].numpy() > 0, mapped > 0
        labels = [int(v) for v in np.unique(pre[0].numpy()) if v]
        result["whole_tumour"] = {
            "raw_ml": float(raw_wt.sum()) * raw_ml,
            "preprocessed_ml": float((pre[0].numpy() > 0).sum()) * pre_ml,
            "preprocessed_on_raw_grid_ml": float(mapped_wt.sum()) * raw_ml,
            "dice_on_raw_grid": dice(raw_wt, mapped_wt),
            "per_label_ml": {
                str(v): {
                    "raw": float((raw_seg[0].numpy() == v).sum()) * raw_ml,
                    "preprocessed": float((pre[0].numpy() == v).sum()) * pre_ml,
                    "dice_on_raw_grid": dice(raw_seg[0].numpy() == v, mapped == v),
                }
                for v in labels
            },
        }
        if args.raw_brain_mask:
            brain = _load(args.raw_brain_mask)[0].numpy() > 0
            result["whole_tumour"]["raw_outside_brain_mask_ml"] = float((raw_wt & ~brain).sum()) * raw_ml
            result["whole_tumour"]["preprocessed_outside_raw_brain_mask_ml"] = (
                float((mapped_wt & ~brain).sum()) * raw_ml
            )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    main()
