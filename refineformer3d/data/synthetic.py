"""Realistic synthetic brain-tumour studies in the BraTS 2017 layout.

Real BraTS cannot be downloaded everywhere, so the project makes its own studies from the MNI152 template that ships
inside ``nilearn`` (no network needed). Each case is a randomly deformed brain with a glioma-like tumour: a necrotic
core (BraTS label 1), an enhancing rim (label 4) and surrounding edema (label 2) that reaches further along white
matter, some mass effect, and four modalities (FLAIR, T1, T1ce, T2) with BraTS-like relative contrasts, a smooth bias
field, Rician noise and per-case intensity scaling. Images are int16, labels uint8, 1 mm spacing, zero background.

Command line::

    python -m refineformer3d.data.synthetic --output DIR --cases 20 --validation_cases 5 --seed 0 \\
        [--shape 240 240 155] [--preview] [--overwrite]

writes::

    DIR/Brats17TrainingData/{HGG,LGG}/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz
    DIR/Brats17ValidationData/<case>/<case>_{flair,t1,t1ce,t2}.nii.gz   (no labels)
    DIR/synthetic.json                                                  (generator parameters)
    DIR/preview/<case>.png                                              (with --preview; needs matplotlib)

The same seed gives the same bytes. Case ``i`` draws all its randomness from ``numpy.random.default_rng([seed, 0, i])``
(validation cases from ``[seed, 1, i]``), so a case does not depend on how many cases are made.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import secrets
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from refineformer3d.io import file_lock

__all__ = ["MODALITIES", "SyntheticCase", "make_case", "make_dataset", "ensure_dataset", "main"]

logger = logging.getLogger(__name__)

MODALITIES = ("flair", "t1", "t1ce", "t2")
GENERATOR_VERSION = 1
BRATS_SHAPE = (240, 240, 155)
TRAINING_DIR = "Brats17TrainingData"
VALIDATION_DIR = "Brats17ValidationData"
MARKER_FILE = "synthetic.json"

# nilearn's load_mni152_brain_mask is the template thresholded at 0.2, so thresholding the warped template gives the
# warped mask without interpolating a second volume.
_BRAIN_THRESHOLD = 0.2

# Mean intensity relative to white matter, one row per modality (MODALITIES order). Columns: the normal tissues that
# the template's T1 intensity is mapped through, then the tumour parts.
_TISSUES = ("csf", "gm", "wm", "necrosis", "enhancing", "edema", "non_enhancing")
_CONTRAST = np.array(
    [
        # csf   gm    wm    nec   enh   edema non-enh
        [0.30, 1.15, 1.00, 1.05, 1.45, 1.85, 1.70],  # FLAIR: CSF dark, edema bright
        [0.30, 0.72, 1.00, 0.40, 0.80, 0.78, 0.60],  # T1: tumour dark
        [0.32, 0.75, 1.00, 0.42, 2.10, 0.80, 0.62],  # T1ce: enhancing rim very bright
        [2.60, 1.40, 1.00, 2.40, 1.50, 2.00, 1.90],  # T2: CSF and edema bright
    ],
    dtype=np.float32,
)
# White-matter level in the written int16 images, per modality (per-case scaling is drawn from these ranges).
_WM_LEVEL = ((250.0, 600.0), (350.0, 900.0), (350.0, 1000.0), (150.0, 500.0))
_LGG_EVERY = 4  # cases 2, 6, 10, ... are LGG: 3 HGG to 1 LGG, as BraTS 2017's 210:75


@dataclass
class SyntheticCase:
    """One generated study, in memory.

    Attributes:
        name: case name, e.g. ``Brats17_SYN_0001_1``.
        grade: ``"HGG"`` or ``"LGG"``.
        images: (4, X, Y, Z) int16 in MODALITIES order (FLAIR, T1, T1ce, T2), zero outside the brain.
        label: (X, Y, Z) uint8 with BraTS values {0, 1 necrosis/non-enhancing, 2 edema, 4 enhancing}.
        tissue: (X, Y, Z) uint8 dominant normal tissue: 0 background, 1 CSF, 2 grey matter, 3 white matter.
        affine: 4x4 voxel-to-world matrix (1 mm spacing, LPS voxel axes as BraTS).
    """

    name: str
    grade: str
    images: np.ndarray
    label: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray


@dataclass(frozen=True)
class _Template:
    t1: np.ndarray  # skull-stripped T1 scaled to [0, 1]
    affine: np.ndarray
    levels: tuple[float, float, float]  # template T1 value of pure CSF, GM, WM
    centre: np.ndarray  # brain bounding-box centre, voxels
    size: np.ndarray  # brain bounding-box size, voxels
    distance: np.ndarray  # distance to the brain surface in mm, on a 2 mm grid
    candidates: np.ndarray  # 2 mm grid voxels where a tumour centre may go


@functools.lru_cache(maxsize=1)
def _template() -> _Template:
    """Loads the MNI152 1 mm template once per process (the files ship inside nilearn)."""
    from nilearn import datasets  # imported late: nilearn is slow to import and only needed here

    t1_img = datasets.load_mni152_template(resolution=1)
    t1 = np.asarray(t1_img.get_fdata(dtype=np.float32))
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32))
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32))
    brain = t1 > _BRAIN_THRESHOLD
    csf = brain & (gm + wm < 0.05)
    levels = (float(t1[csf].mean()), float(t1[gm > 0.9].mean()), float(t1[wm > 0.9].mean()))
    index = np.nonzero(brain)
    low, high = np.array([i.min() for i in index]), np.array([i.max() for i in index])
    coarse = brain[::2, ::2, ::2]
    distance = ndimage.distance_transform_edt(coarse, sampling=2.0).astype(np.float32)
    # Gliomas in BraTS are mostly supratentorial and grow from white matter, so centres are drawn there.
    z_world = t1_img.affine[2, 3] + t1_img.affine[2, 2] * 2.0 * np.arange(coarse.shape[2])  # MNI is axis-aligned
    above_tentorium = z_world > -10.0
    candidates = (wm[::2, ::2, ::2] > 0.6) & above_tentorium[None, None, :]
    return _Template(
        t1=t1,
        affine=np.asarray(t1_img.affine, dtype=np.float64),
        levels=levels,
        centre=(low + high) / 2.0,
        size=(high - low + 1).astype(np.float64),
        distance=distance,
        candidates=candidates,
    )


@functools.lru_cache(maxsize=2)
def _antialiased(sigma: float) -> np.ndarray:
    """The template T1 blurred before sampling it on a coarser grid (small ``shape``)."""
    t1 = _template().t1
    return ndimage.gaussian_filter(t1, sigma) if sigma > 0 else t1


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], scale: float, channels: int = 1) -> np.ndarray:
    """Smooth random fields with unit standard deviation and features about ``scale`` voxels across.

    Drawn on a coarse grid and upsampled, which is far cheaper than filtering white noise at full resolution.

    Returns:
        (channels, *shape) float32.
    """
    coarse = tuple(max(2, int(np.ceil(s / scale)) + 1) for s in shape)
    noise = ndimage.gaussian_filter(rng.standard_normal((channels, *coarse), dtype=np.float32), (0, 1, 1, 1))
    noise /= noise.reshape(channels, -1).std(axis=1).reshape(channels, 1, 1, 1) + 1e-6
    fine = torch.nn.functional.interpolate(
        torch.from_numpy(noise)[None], size=tuple(shape), mode="trilinear", align_corners=True
    )
    return fine[0].numpy()


def _output_affine(shape: Sequence[int]) -> np.ndarray:
    """1 mm voxels with BraTS's LPS voxel axes, placed so that the grid centre is the MNI brain centre."""
    template = _template()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    centre_world = template.affine[:3, :3] @ template.centre + template.affine[:3, 3]
    affine[:3, 3] = centre_world - affine[:3, :3] @ ((np.asarray(shape, dtype=np.float64) - 1) / 2)
    return affine


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 32:
        raise ValueError(f"shape must be three sizes of at least 32 voxels, got {shape}")
    return shape


def _box(low: np.ndarray, high: np.ndarray, origin: np.ndarray | None = None) -> tuple[slice, ...]:
    """Slices for the voxels ``low <= i < high``, relative to ``origin`` when given."""
    origin = np.zeros(3, dtype=int) if origin is None else origin
    return tuple(slice(int(lo - o), int(hi - o)) for lo, hi, o in zip(low, high, origin, strict=True))


def _around(centre: np.ndarray, half: float, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Corners of the box of half-size ``half`` around ``centre``, clipped to ``[low, high)``."""
    return (
        np.clip(np.floor(centre - half).astype(int), low, high),
        np.clip(np.ceil(centre + half).astype(int) + 1, low, high),
    )


@dataclass(frozen=True)
class _Tumour:
    enhancing: bool
    radius: float  # core radius, output voxels
    axes: np.ndarray  # core semi-axes, output voxels
    rotation: np.ndarray
    edema_reach: float  # how far edema goes beyond the core in white matter, output voxels
    necrosis_ratio: float  # necrosis radius over core radius
    mass_effect: float  # 0 (none) to 1


def _draw_tumour(rng: np.random.Generator, grade: str, brain_scale: float) -> _Tumour:
    """Sizes are drawn in mm for a full-size brain and scaled with the brain."""
    hgg = grade == "HGG"
    enhancing = bool(rng.random() < (0.95 if hgg else 0.3))
    radius = (rng.uniform(10.0, 24.0) if hgg else rng.uniform(8.0, 16.0)) * brain_scale
    axes = radius * rng.uniform(0.75, 1.25, size=3)
    rotation = Rotation.random(random_state=rng).as_matrix()
    edema_reach = (rng.uniform(6.0, 24.0) if hgg else rng.uniform(2.0, 12.0)) * brain_scale
    necrosis_ratio = rng.uniform(0.35, 0.75) if hgg else rng.uniform(0.2, 0.5)
    mass_effect = rng.uniform(0.25, 0.5) if hgg else rng.uniform(0.1, 0.3)
    return _Tumour(enhancing, radius, axes, rotation, edema_reach, necrosis_ratio, mass_effect)


def _draw_pose(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, float]:
    """A random brain size, rotation and shift.

    Returns:
        The 4x4 matrix from output voxel to template voxel, and the mean brain scale (output voxels per template mm).
    """
    template = _template()
    room = (np.asarray(shape) - 8.0) / template.size  # leave 4 voxels of background on each side
    fit = min(1.0, float(room.min()))
    scales = np.minimum(fit * rng.uniform(0.88, 0.97) * rng.uniform(0.97, 1.03, size=3), room)
    rotation = Rotation.from_euler("xyz", rng.uniform(-5.0, 5.0, size=3), degrees=True).as_matrix()
    shift = rng.uniform(-3.0, 3.0, size=3) * fit
    centre_world = template.affine[:3, :3] @ template.centre + template.affine[:3, 3]
    world_from_template = np.eye(4)
    world_from_template[:3, :3] = rotation @ np.diag(scales)
    world_from_template[:3, 3] = centre_world + shift - world_from_template[:3, :3] @ centre_world
    matrix = np.linalg.inv(template.affine) @ np.linalg.inv(world_from_template) @ _output_affine(shape)
    return matrix, float(np.mean(scales))


def _draw_centre(rng: np.random.Generator, tumour: _Tumour, brain_scale: float) -> np.ndarray:
    """A tumour centre in white matter, deep enough for the core. Returns template voxel coordinates."""
    template = _template()
    pool = np.argwhere(template.candidates & (template.distance > tumour.radius / brain_scale + 4.0))
    if len(pool) == 0:  # a very large tumour: take the deepest white matter
        pool = np.argwhere(template.candidates & (template.distance >= np.quantile(template.distance, 0.99)))
    return pool[rng.integers(len(pool))] * 2.0 + rng.uniform(0.0, 2.0, size=3)


def _sampling_coordinates(
    rng: np.random.Generator,
    matrix: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    centre: np.ndarray,
    tumour: _Tumour,
    brain_scale: float,
) -> np.ndarray:
    """Template voxel coordinates for the output voxels in ``[low, high)``: pose, smooth warp, mass effect.

    Returns:
        (3, *box_shape) float32.
    """
    linear, offset = matrix[:3, :3].astype(np.float32), matrix[:3, 3].astype(np.float32)
    grid = [g.astype(np.float32) for g in np.ogrid[_box(low, high)]]
    shape = tuple(high - low)
    coords = _smooth_noise(rng, shape, 24.0 * brain_scale, channels=3) * np.float32(2.0)  # about 2 mm of warp
    for a in range(3):
        coords[a] += linear[a, 0] * grid[0] + linear[a, 1] * grid[1] + linear[a, 2] * grid[2] + offset[a]
    # Sampling nearer the tumour centre than the output voxel pushes tissue outwards. The pull falls off as a
    # Gaussian; with a strength below 1 the map stays monotone (no folding).
    sigma = tumour.radius + 0.5 * tumour.edema_reach
    near_low, near_high = _around(centre, 3.0 * sigma, low, high)
    rel = [
        g.astype(np.float32) - np.float32(c) for g, c in zip(np.ogrid[_box(near_low, near_high)], centre, strict=True)
    ]
    pull = tumour.mass_effect * np.exp(-(rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2) / (2 * sigma**2))
    near = _box(near_low, near_high, low)
    for a in range(3):
        coords[a][near] -= pull * (linear[a, 0] * rel[0] + linear[a, 1] * rel[1] + linear[a, 2] * rel[2])
    return coords


def _tumour_parts(
    rng: np.random.Generator,
    tumour: _Tumour,
    centre: np.ndarray,
    low: np.ndarray,
    t1: np.ndarray,
    brain_scale: float,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Labels and soft masks of the tumour parts in a box whose first voxel is ``low``.

    Args:
        t1: warped template T1 in the box.

    Returns:
        The BraTS label of the box; per tumour tissue of ``_TISSUES``, a soft mask for blending intensities; and a
        smooth texture (around 1, +-10 %) for the tumour intensities, since tumour tissue is not uniform.
    """
    shape = t1.shape
    offsets = [
        g.astype(np.float32) - np.float32(c) for g, c in zip(np.ogrid[_box(low, low + shape)], centre, strict=True)
    ]
    local = [sum(tumour.rotation[b, a] * offsets[b] for b in range(3)) / tumour.axes[a] for a in range(3)]
    coarse = _smooth_noise(rng, shape, max(2.0, 0.7 * tumour.radius), channels=4)
    fine = _smooth_noise(rng, shape, max(1.5, 0.25 * tumour.radius), channels=2)
    rho = np.sqrt(local[0] ** 2 + local[1] ** 2 + local[2] ** 2)
    rho /= np.clip(1 + 0.25 * coarse[0] + 0.12 * fine[0], 0.5, 1.6)  # irregular outline
    brain = t1 > _BRAIN_THRESHOLD
    core = (rho < 1.0) & brain
    beyond = (rho - 1.0) * tumour.radius
    # Edema reaches far along white matter, little into grey matter, and stays out of the CSF spaces. The white
    # matter fraction follows from the template's T1 value, as in _modalities.
    levels = _template().levels
    wm = ndimage.gaussian_filter(np.clip((t1 - levels[1]) / (levels[2] - levels[1]), 0, 1), brain_scale)
    limit = tumour.edema_reach * np.minimum((0.1 + 1.3 * wm**2) * np.clip(1 + 0.4 * coarse[2], 0.3, 1.7), 1.5)
    edema = ~core & (beyond < limit) & brain & (t1 > (levels[0] + levels[1]) / 2)
    # Only edema connected to the core: white matter across a sulcus or the midline must not light up alone.
    components, _ = ndimage.label(edema | core)
    edema &= np.isin(components, np.unique(components[core]))
    label = np.zeros(shape, dtype=np.uint8)
    label[edema] = 2
    if tumour.enhancing:
        # An off-centre, irregular necrosis leaves a rim of uneven thickness, at least about a voxel.
        shift = rng.normal(0.0, 0.12, size=3).astype(np.float32)
        rho_necrosis = np.sqrt(sum((v - d) ** 2 for v, d in zip(local, shift, strict=True)))
        rho_necrosis /= np.clip(1 + 0.25 * coarse[1] + 0.15 * fine[1], 0.4, 1.6)
        necrosis = core & (rho_necrosis < tumour.necrosis_ratio) & (rho < 1.0 - 1.0 / tumour.radius)
        label[core] = 4
        label[necrosis] = 1
        hard = {"necrosis": necrosis, "enhancing": label == 4, "edema": edema}
    else:
        label[core] = 1
        hard = {"non_enhancing": core, "edema": edema}
    soft = {k: ndimage.gaussian_filter(v.astype(np.float32), 0.6) for k, v in hard.items()}
    soft["edema"] *= 1 - 0.5 * np.clip(beyond / np.maximum(limit, 1e-3), 0, 1)  # fades into normal tissue
    return label, soft, 1 + 0.1 * coarse[3]


def _modalities(
    rng: np.random.Generator,
    t1: np.ndarray,
    brain: np.ndarray,
    parts: dict[str, np.ndarray],
    texture: np.ndarray,
    part_box: tuple[slice, ...],
) -> np.ndarray:
    """Four int16 modalities for the brain box, zero outside the brain.

    Args:
        t1: warped template T1 of the box.
        brain: brain mask of the box.
        parts, texture: soft masks of the tumour tissues and their texture (see ``_tumour_parts``), for the voxels
            ``part_box`` of the box.

    Returns:
        (4, *box_shape) int16.
    """
    levels = np.array(_template().levels, dtype=np.float32)
    contrast = _CONTRAST * rng.uniform(0.93, 1.07, size=_CONTRAST.shape).astype(np.float32)
    wm_level = np.array([rng.uniform(*r) for r in _WM_LEVEL], dtype=np.float32)
    noise = np.float32(rng.uniform(0.015, 0.04))
    amount = np.clip(sum(parts.values()), 0, 1)
    xyz = [
        np.linspace(-1.0, 1.0, n, dtype=np.float32).reshape([-1 if i == a else 1 for i in range(3)])
        for a, n in enumerate(t1.shape)
    ]
    inside = np.nonzero(brain)
    images = np.zeros((4, *t1.shape), dtype=np.int16)
    for m in range(4):
        # Normal tissue is piecewise linear in the template's T1 value between pure CSF, GM and WM.
        signal = np.interp(t1, levels, contrast[m, :3]).astype(np.float32)
        tumour = sum(v * contrast[m, _TISSUES.index(k)] for k, v in parts.items()) * texture
        signal[part_box] = (1 - amount) * signal[part_box] + tumour
        # Bias field: exp of a random quadratic, different for each sequence.
        c = rng.normal(0.0, [0.08, 0.08, 0.08, 0.05, 0.05, 0.05, 0.04, 0.04, 0.04]).astype(np.float32)
        log_bias = (
            c[0] * xyz[0]
            + c[1] * xyz[1]
            + c[2] * xyz[2]
            + c[3] * xyz[0] ** 2
            + c[4] * xyz[1] ** 2
            + c[5] * xyz[2] ** 2
            + c[6] * xyz[0] * xyz[1]
            + c[7] * xyz[0] * xyz[2]
            + c[8] * xyz[1] * xyz[2]
        )
        values = signal[inside] * np.exp(log_bias[inside])
        # Rician noise: the magnitude of the signal plus complex Gaussian noise.
        real = values + noise * rng.standard_normal(values.shape, dtype=np.float32)
        imaginary = noise * rng.standard_normal(values.shape, dtype=np.float32)
        values = np.hypot(real, imaginary) * wm_level[m]
        # At least 1 inside the brain, so that the nonzero voxels are exactly the brain.
        images[m][inside] = np.clip(np.rint(values), 1, np.iinfo(np.int16).max)
    return images


def make_case(
    seed: int = 0, index: int = 1, shape: Sequence[int] = BRATS_SHAPE, validation: bool = False
) -> SyntheticCase:
    """Generates one study in memory.

    Args:
        seed: dataset seed (non-negative).
        index: case number, from 1.
        shape: grid size in voxels; below BraTS's 240x240x155 the whole brain is scaled down to fit.
        validation: draw from the validation stream (names ``Brats17_SYNVAL_*``) instead of the training one.

    Returns:
        The study; see :class:`SyntheticCase`.

    Raises:
        ValueError: for a negative seed or index below 1, or a shape smaller than 32 voxels.
    """
    shape = _check_shape(shape)
    if seed < 0 or index < 1:
        raise ValueError(f"seed must be >= 0 and index >= 1, got seed={seed}, index={index}")
    rng = np.random.default_rng([seed, int(validation), index])
    grade = "LGG" if index % _LGG_EVERY == 2 else "HGG"
    name = f"Brats17_{'SYNVAL' if validation else 'SYN'}_{index:04d}_1"
    template = _template()
    matrix, brain_scale = _draw_pose(rng, shape)
    tumour = _draw_tumour(rng, grade, brain_scale)
    centre = np.linalg.solve(matrix[:3, :3], _draw_centre(rng, tumour, brain_scale) - matrix[:3, 3])

    # Only the box that can hold the brain is computed: the template's bounding box mapped out, plus the warps.
    corners = template.centre + (template.size / 2 + 1) * np.array(
        [[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    )
    corners = (np.linalg.inv(matrix) @ np.c_[corners, np.ones(8)].T)[:3].T
    low = np.clip(np.floor(corners.min(axis=0) - 6), 0, None).astype(int)
    high = np.minimum(np.ceil(corners.max(axis=0) + 6).astype(int) + 1, shape)
    coords = _sampling_coordinates(rng, matrix, low, high, centre, tumour, brain_scale)
    # Sampling a finer template on a coarse grid aliases; blur it first (cached per blur).
    t1 = ndimage.map_coordinates(
        _antialiased(round(max(0.0, 0.45 / brain_scale - 0.45), 1)), coords, order=1, prefilter=False
    )
    brain = t1 > _BRAIN_THRESHOLD

    # The core reaches 2 radii (1.25 for the ellipsoid times 1.6 for the outline), edema 1.5 reach beyond, stretched
    # by the same factor 2.
    part_low, part_high = _around(centre, 2 * tumour.radius + 3 * tumour.edema_reach + 2, low, high)
    part_box = _box(part_low, part_high, low)
    part_label, parts, texture = _tumour_parts(rng, tumour, centre, part_low, t1[part_box], brain_scale)
    images = np.zeros((4, *shape), dtype=np.int16)
    images[(slice(None), *_box(low, high))] = _modalities(rng, t1, brain, parts, texture, part_box)
    label = np.zeros(shape, dtype=np.uint8)
    label[_box(part_low, part_high)] = part_label
    levels = _template().levels
    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[_box(low, high)] = np.where(
        brain, 1 + np.digitize(t1, [(levels[0] + levels[1]) / 2, (levels[1] + levels[2]) / 2]), 0
    )
    return SyntheticCase(
        name=name, grade=grade, images=images, label=label, tissue=tissue, affine=_output_affine(shape)
    )


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def _save_preview(case: SyntheticCase, path: Path) -> None:
    """Writes axial, coronal and sagittal slices through the tumour for the four modalities plus the label."""
    # matplotlib (pip install matplotlib) draws the previews; only --preview needs it. A bare Figure renders without
    # pyplot's global state or a display.
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    ornt = nib.orientations.io_orientation(case.affine)  # show in RAS, as viewers do
    volumes = [nib.orientations.apply_orientation(v, ornt) for v in (*case.images, case.label)]
    label = volumes[-1]
    centre = np.round(np.argwhere(label > 0).mean(axis=0)).astype(int) if label.any() else np.array(label.shape) // 2
    views = [
        ("axial", lambda v: v[:, :, centre[2]]),
        ("coronal", lambda v: v[:, centre[1], :]),
        ("sagittal", lambda v: v[centre[0], :, :]),
    ]
    colours = ListedColormap(["none", "tab:red", "tab:green", "none", "gold"])
    figure = Figure(figsize=(15, 9), facecolor="black")
    axes = figure.subplots(3, 5)
    for row, (view, cut) in enumerate(views):
        for col, title in enumerate((*(m.upper() for m in MODALITIES), "label on FLAIR")):
            ax = axes[row, col]
            volume = volumes[col % 4]  # the label column shows FLAIR underneath
            ax.imshow(cut(volume).T, cmap="gray", origin="lower", vmin=0, vmax=np.percentile(volume, 99.8))
            if col == 4:
                overlay = np.ma.masked_equal(cut(label).T, 0)
                ax.imshow(overlay, cmap=colours, vmin=0, vmax=4, origin="lower", alpha=0.5, interpolation="nearest")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title, color="white")
        axes[row, 0].text(2, 2, view, color="white", fontsize=9)
    figure.suptitle(f"{case.name} ({case.grade}): necrosis/non-enh red, edema green, enhancing gold", color="white")
    figure.tight_layout()
    figure.savefig(path, dpi=60, facecolor="black")


def _write_dataset(root: Path, cases: int, validation_cases: int, seed: int, shape: tuple, preview: bool) -> None:
    total, done = cases + validation_cases, 0
    logger.info(
        "making %d synthetic studies of %s voxels in %s (once; reused after)", total, "x".join(map(str, shape)), root
    )
    for validation, count in ((False, cases), (True, validation_cases)):
        for index in range(1, count + 1):
            case = make_case(seed, index, shape, validation=validation)
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
    (root / MARKER_FILE).write_text(json.dumps(_parameters(cases, validation_cases, seed, shape), indent=2) + "\n")


def _parameters(cases: int, validation_cases: int, seed: int, shape: tuple) -> dict:
    return {
        "generator": __name__,
        "version": GENERATOR_VERSION,
        "cases": cases,
        "validation_cases": validation_cases,
        "seed": seed,
        "shape": list(shape),
    }


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

    Returns:
        The dataset root.

    Raises:
        ValueError: for bad counts, seed or shape, or an existing non-empty ``output_dir`` without ``overwrite``.

    Example:
        >>> root = make_dataset("/tmp/brats_synthetic", cases=4, validation_cases=1, shape=(64, 64, 48))
    """
    shape = _check_shape(shape)
    _check_counts(cases, validation_cases, seed)
    output = Path(output_dir).expanduser().absolute()
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ValueError(f"{output} exists and is not empty; choose another folder or pass overwrite")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = _new_folder(output.parent, f".{output.name}.tmp")
    try:
        _write_dataset(staging, cases, validation_cases, seed, shape, preview)
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

    Returns:
        The dataset root, as a string (ready for the bundle config).

    Raises:
        ValueError: for bad counts, seed or shape.
    """
    shape = _check_shape(shape)
    _check_counts(cases, validation_cases, seed)
    if cache_dir is None:
        cache_dir = os.environ.get("REFINEFORMER3D_CACHE") or Path.home() / ".cache" / "refineformer3d"
    cache = Path(cache_dir).expanduser().absolute()
    name = f"brats17-synthetic-g{GENERATOR_VERSION}-c{cases}-v{validation_cases}-s{seed}-{'x'.join(map(str, shape))}"
    root = cache / name
    parameters = _parameters(cases, validation_cases, seed, shape)
    if _is_complete(root, parameters):
        return str(root)
    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache / f"{name}.lock"):
        if _is_complete(root, parameters):  # made by the process that held the lock before us
            return str(root)
        staging = _new_folder(cache, f".{name}.tmp")
        try:
            _write_dataset(staging, cases, validation_cases, seed, shape, preview=False)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 on bad input, with one line on stderr)."""
    parser = argparse.ArgumentParser(
        prog="python -m refineformer3d.data.synthetic",
        description="Write realistic synthetic brain-tumour studies in the BraTS 2017 layout.",
    )
    parser.add_argument("--output", required=True, help="dataset folder to create")
    parser.add_argument("--cases", type=int, default=20, help="labelled training cases (HGG and LGG)")
    parser.add_argument("--validation_cases", type=int, default=5, help="unlabelled cases (Brats17ValidationData)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs=3, default=list(BRATS_SHAPE), metavar=("X", "Y", "Z"))
    parser.add_argument("--preview", action="store_true", help="write preview/<case>.png (needs matplotlib)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    args = parser.parse_args(argv)
    try:
        root = make_dataset(
            args.output, args.cases, args.validation_cases, args.seed, args.shape, args.preview, args.overwrite
        )
    except (ValueError, OSError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
