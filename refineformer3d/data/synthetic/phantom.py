"""The phantom maths: a deformed brain, a glioma-like tumour and four MRI contrasts for one case, in memory."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .template import _BRAIN_THRESHOLD, _template

MODALITIES = ("flair", "t1", "t1ce", "t2")
BRATS_SHAPE = (240, 240, 155)

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
# The "shifted" recipe's table, for out-of-distribution tests: the same tissues and the same signs of contrast
# against white matter, other values. Edema is dimmer than the non-enhancing core on FLAIR and closer to necrosis
# on T2, the rim enhances less, necrosis is less dark on T1: a network that learnt the default table's levels
# rather than the anatomy (a bright rim around a dark core, edema spreading along white matter) is caught out.
_CONTRAST_SHIFTED = np.array(
    [
        # csf   gm    wm    nec   enh   edema non-enh
        [0.22, 1.08, 1.00, 1.30, 1.35, 1.50, 1.80],  # FLAIR
        [0.38, 0.80, 1.00, 0.58, 0.92, 0.86, 0.70],  # T1
        [0.40, 0.84, 1.00, 0.58, 1.65, 0.90, 0.72],  # T1ce
        [2.20, 1.30, 1.00, 2.05, 1.35, 1.75, 1.55],  # T2
    ],
    dtype=np.float32,
)
RECIPES = ("default", "shifted")
# The parts of the "shifted" recipe; "shifted:bias+slices" applies only those (the rest as in the default recipe), so
# that a drop in Dice out of distribution can be traced to what causes it.
SHIFTS = ("contrast", "tumours", "noise", "bias", "slices")
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


def _shifts(recipe: str) -> frozenset[str]:
    """The parts of the shifted recipe that ``recipe`` applies: none, all (``"shifted"``) or those it names.

    Raises:
        ValueError: for an unknown recipe or part, or ``"shifted:"`` naming none.
    """
    if recipe in RECIPES:
        return frozenset(SHIFTS if recipe == "shifted" else ())
    base, _, named = recipe.partition(":")
    parts = named.split("+") if named else []
    unknown = [p for p in parts if p not in SHIFTS]
    if base != "shifted" or not parts or unknown:
        raise ValueError(
            f"unknown recipe {recipe!r}; expected one of {list(RECIPES)}, or 'shifted:' and parts of {list(SHIFTS)} "
            "joined by '+'"
        )
    return frozenset(parts)


def check_recipe(recipe: str, contrast_jitter: float = 0.0) -> None:
    """Raises ``ValueError`` for an unknown recipe or part (see ``make_case``) or a negative jitter."""
    _shifts(recipe)
    if not contrast_jitter >= 0:
        raise ValueError(f"contrast_jitter must be >= 0, got {contrast_jitter}")


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
    # Extra ellipsoidal lobes of the core (the "shifted" recipe): centre offsets and semi-axes in the core's rotated
    # frame, output voxels, each (3,).
    lobes: tuple[tuple[np.ndarray, np.ndarray], ...] = ()


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


def _draw_shifted_tumour(rng: np.random.Generator, grade: str, brain_scale: float) -> _Tumour:
    """The "shifted" recipe's tumour: two to four lobes, other core, necrosis and edema proportions.

    Every lobe stays within 2 core radii of the centre (the reach ``make_case`` allows the core).
    """
    hgg = grade == "HGG"
    enhancing = bool(rng.random() < (0.8 if hgg else 0.4))
    radius = (rng.uniform(8.0, 20.0) if hgg else rng.uniform(7.0, 14.0)) * brain_scale
    axes = radius * rng.uniform(0.6, 1.0, size=3)
    rotation = Rotation.random(random_state=rng).as_matrix()
    edema_reach = rng.uniform(3.0, 32.0) * brain_scale
    necrosis_ratio = rng.uniform(0.2, 0.6)
    mass_effect = rng.uniform(0.1, 0.45)
    lobes = []
    for _ in range(rng.integers(1, 4)):
        direction = rng.standard_normal(3)
        offset = direction / np.linalg.norm(direction) * radius * rng.uniform(0.4, 0.7)
        lobes.append((offset.astype(np.float32), (radius * rng.uniform(0.4, 0.75, size=3)).astype(np.float32)))
    return _Tumour(enhancing, radius, axes, rotation, edema_reach, necrosis_ratio, mass_effect, tuple(lobes))


def _room(shape: Sequence[int]) -> np.ndarray:
    """Per axis, the largest brain scale that leaves 4 voxels of background on each side."""
    return (np.asarray(shape) - 8.0) / _template().size


def _fit(shape: Sequence[int]) -> float:
    """The scale at which the whole template brain fits the grid (at most 1: it is never enlarged)."""
    return min(1.0, float(_room(shape).min()))


def grid_scale(shape: Sequence[int]) -> float:
    """Voxels of ``shape`` per voxel of BraTS's 1 mm grid: 1 at 240x240x155, about 0.5 at half size.

    Below BraTS's grid the brain is scaled down to fit, so a voxel there stands for ``1 / grid_scale`` mm of anatomy;
    sizes meant in mm (a thick slice) are converted with it, so that a half-size study is a 2 mm study of the same
    acquisition rather than one with slices twice as thick.
    """
    return _fit(shape) / _fit(BRATS_SHAPE)


def _draw_pose(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, float]:
    """A random brain size, rotation and shift.

    Returns:
        The 4x4 matrix from output voxel to template voxel, and the mean brain scale (output voxels per template mm).
    """
    template = _template()
    room = _room(shape)
    fit = _fit(shape)
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
    rotated = [sum(tumour.rotation[b, a] * offsets[b] for b in range(3)) for a in range(3)]
    local = [rotated[a] / tumour.axes[a] for a in range(3)]
    coarse = _smooth_noise(rng, shape, max(2.0, 0.7 * tumour.radius), channels=4)
    fine = _smooth_noise(rng, shape, max(1.5, 0.25 * tumour.radius), channels=2)
    rho = np.sqrt(local[0] ** 2 + local[1] ** 2 + local[2] ** 2)
    for offset, semi_axes in tumour.lobes:  # the union of the lobes: the least normalised radius
        lobe = sum(((rotated[a] - offset[a]) / semi_axes[a]) ** 2 for a in range(3))
        rho = np.minimum(rho, np.sqrt(lobe))
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
    recipe: str = "default",
    contrast_jitter: float = 0.0,
    jitter_rng: np.random.Generator | None = None,
    slice_scale: float = 1.0,
) -> np.ndarray:
    """Four int16 modalities for the brain box, zero outside the brain.

    Args:
        t1: warped template T1 of the box.
        brain: brain mask of the box.
        parts, texture: soft masks of the tumour tissues and their texture (see ``_tumour_parts``), for the voxels
            ``part_box`` of the box.
        recipe: ``"default"``, ``"shifted"`` (its contrast table, more noise, a stronger bias field and thick
            slices along a random axis), or ``"shifted:"`` with some of those parts (see ``make_case``).
        contrast_jitter: each entry of the contrast table is scaled by ``exp(U(-j, j))`` drawn from ``jitter_rng``,
            so that a network cannot learn one table's levels; 0 leaves the case as it was.
        slice_scale: voxels per mm of the shifted recipe's slice thickness (:func:`grid_scale` of the grid).

    Returns:
        (4, *box_shape) int16.
    """
    shifts = _shifts(recipe)
    shifted = bool(shifts)
    table = _CONTRAST_SHIFTED if "contrast" in shifts else _CONTRAST
    levels = np.array(_template().levels, dtype=np.float32)
    contrast = table * rng.uniform(0.93, 1.07, size=table.shape).astype(np.float32)
    if contrast_jitter > 0:
        # A stream of its own: the rest of the case stays what it is without jitter.
        contrast *= np.exp(jitter_rng.uniform(-contrast_jitter, contrast_jitter, size=table.shape)).astype(np.float32)
    wm_level = np.array([rng.uniform(*r) for r in _WM_LEVEL], dtype=np.float32)
    noise = np.float32(rng.uniform(0.04, 0.08) if "noise" in shifts else rng.uniform(0.015, 0.04))
    bias_std = np.array([0.08, 0.08, 0.08, 0.05, 0.05, 0.05, 0.04, 0.04, 0.04]) * (2.5 if "bias" in shifts else 1.0)
    if shifted:  # a 2D acquisition: slices 3 to 5 mm thick along one axis (drawn for every part: same streams)
        slice_axis, slice_thickness = int(rng.integers(3)), int(rng.integers(3, 6)) * slice_scale
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
        c = rng.normal(0.0, bias_std).astype(np.float32)
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
        if "slices" in shifts:
            values = _thick_slices(signal * np.exp(log_bias), slice_axis, slice_thickness)[inside]
        else:
            values = signal[inside] * np.exp(log_bias[inside])
        # Rician noise: the magnitude of the signal plus complex Gaussian noise.
        real = values + noise * rng.standard_normal(values.shape, dtype=np.float32)
        imaginary = noise * rng.standard_normal(values.shape, dtype=np.float32)
        values = np.hypot(real, imaginary) * wm_level[m]
        # At least 1 inside the brain, so that the nonzero voxels are exactly the brain.
        images[m][inside] = np.clip(np.rint(values), 1, np.iinfo(np.int16).max)
    return images


def _thick_slices(volume: np.ndarray, axis: int, thickness: float) -> np.ndarray:
    """Simulates an acquisition with slices ``thickness`` voxels thick along ``axis``, resampled back to the grid.

    Each slice averages its slab (a Gaussian slice profile whose FWHM is the thickness); the grid is then filled by
    linear interpolation between slice centres, as a scanner's reformat would. The thickness need not be a whole
    number of voxels (a 5 mm slice of a 2 mm study): a slice centred between two voxels is read between them.

    Args:
        volume: (X, Y, Z) float32.

    Returns:
        (X, Y, Z), float64 (the interpolation weights are).
    """
    blurred = ndimage.gaussian_filter1d(volume, thickness / 2.355, axis=axis, mode="nearest")
    centres = np.arange(0, volume.shape[axis], thickness, dtype=np.float32)
    first = np.floor(centres).astype(int)
    second = np.minimum(first + 1, volume.shape[axis] - 1)
    # whole-voxel centres get weight 0 exactly, so whole thicknesses give the slices they always gave
    fraction = (centres - first).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(volume.ndim)])
    slices = (1 - fraction) * np.take(blurred, first, axis=axis) + fraction * np.take(blurred, second, axis=axis)
    position = np.arange(volume.shape[axis], dtype=np.float32) / thickness
    below = np.minimum(np.floor(position).astype(int), len(centres) - 1)
    above = np.minimum(below + 1, len(centres) - 1)
    weight = np.clip(position - below, 0, 1).reshape([-1 if a == axis else 1 for a in range(volume.ndim)])
    return (1 - weight) * np.take(slices, below, axis=axis) + weight * np.take(slices, above, axis=axis)


def make_case(
    seed: int = 0,
    index: int = 1,
    shape: Sequence[int] = BRATS_SHAPE,
    validation: bool = False,
    recipe: str = "default",
    contrast_jitter: float = 0.0,
) -> SyntheticCase:
    """Generates one study in memory.

    Args:
        seed: dataset seed (non-negative).
        index: case number, from 1.
        shape: grid size in voxels; below BraTS's 240x240x155 the whole brain is scaled down to fit.
        validation: draw from the validation stream (names ``Brats17_SYNVAL_*``) instead of the training one.
        recipe: ``"default"``, or ``"shifted"`` for out-of-distribution tests: another contrast table, tumours of two
            to four lobes with other core, necrosis and edema proportions, more noise, a stronger bias field and
            slices 3 to 5 mm thick along a random axis (in voxels of a smaller grid, times :func:`grid_scale`).
            ``"shifted:bias+slices"`` applies only the parts it names, out of ``SHIFTS``: ``contrast`` (the
            table), ``tumours``, ``noise``, ``bias``, ``slices``; the others stay as in the default recipe.
        contrast_jitter: randomises the contrast table per study, each entry scaled by ``exp(U(-j, j))`` (training
            data that does not teach one table's levels; 0.3 is about +-35 %). 0 gives the same case as before.

    Returns:
        The study; see :class:`SyntheticCase`.

    Raises:
        ValueError: for a negative seed or index below 1, a shape smaller than 32 voxels, an unknown recipe or a
            negative contrast jitter.
    """
    shape = _check_shape(shape)
    if seed < 0 or index < 1:
        raise ValueError(f"seed must be >= 0 and index >= 1, got seed={seed}, index={index}")
    check_recipe(recipe, contrast_jitter)
    rng = np.random.default_rng([seed, int(validation), index])
    grade = "LGG" if index % _LGG_EVERY == 2 else "HGG"
    name = f"Brats17_{'SYNVAL' if validation else 'SYN'}_{index:04d}_1"
    template = _template()
    matrix, brain_scale = _draw_pose(rng, shape)
    tumour = (_draw_shifted_tumour if "tumours" in _shifts(recipe) else _draw_tumour)(rng, grade, brain_scale)
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
    jitter_rng = np.random.default_rng([seed, int(validation), index, 1])
    images[(slice(None), *_box(low, high))] = _modalities(
        rng, t1, brain, parts, texture, part_box, recipe, contrast_jitter, jitter_rng, grid_scale(shape)
    )
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


# The layers of a head outside the brain, inside out: (outer edge in mm from the brain surface, signal relative to
# white matter in FLAIR, T1, T1ce, T2). Cerebrospinal fluid, the skull's inner table (cortical bone: no signal), the
# diploe (fatty marrow: bright on T1), the outer table, then the scalp (fat and muscle). Rough 1.5 T spin-echo levels;
# what matters for skull stripping is bright tissue outside a dark ring, as on a real scan.
_HEAD_LAYERS = (
    (2.5, (0.30, 0.30, 0.32, 2.60)),
    (4.5, (0.04, 0.04, 0.04, 0.04)),
    (8.0, (1.05, 1.30, 1.30, 0.95)),
    (10.0, (0.04, 0.04, 0.04, 0.04)),
    (16.0, (1.10, 1.25, 1.30, 1.05)),
)
_BACKGROUND_NOISE = 0.02  # relative to white matter: the air around a head is noise, not zero


def add_head(case: SyntheticCase, seed: int = 0) -> SyntheticCase:
    """``case`` with cerebrospinal fluid, skull and scalp around its brain and noise in the air, as a scanner exports
    a study before skull stripping, on a grid padded by the head's thickness (the affine moves to match).

    The layers (:data:`_HEAD_LAYERS`) follow the brain's outline at fixed distances in mm of anatomy (times
    :func:`grid_scale`, as the brain is scaled down on small grids); each modality's level is scaled by its own
    white-matter level. Label and tissue maps are padded with zeros: the brain is still ``tissue > 0`` or
    ``label > 0``.

    Args:
        case: a study from :func:`make_case` (zero outside the brain).
        seed: the noise's seed.

    Returns:
        A new :class:`SyntheticCase` with the same name.
    """
    rng = np.random.default_rng([seed, 2])
    brain_shape = case.images.shape[1:]
    scale = grid_scale(brain_shape)
    pad = int(np.ceil(_HEAD_LAYERS[-1][0] * scale)) + 2
    brain = np.pad(case.images[2] > 0, pad)
    outside_mm = ndimage.distance_transform_edt(~brain) / scale
    white = (case.tissue == 3) & (case.label == 0)
    images = np.pad(case.images, ((0, 0), (pad, pad), (pad, pad), (pad, pad))).astype(np.float32)
    inner = 0.0
    for outer, levels in _HEAD_LAYERS:
        layer = ~brain & (outside_mm > inner) & (outside_mm <= outer)
        for m in range(4):
            images[m][layer] = levels[m] * float(np.median(case.images[m][white]))
        inner = outer
    for m in range(4):
        wm = float(np.median(case.images[m][white]))
        outside = ~brain
        # Rician noise over everything outside the brain: magnitude of the signal plus complex Gaussian noise.
        sigma = _BACKGROUND_NOISE * wm
        real = images[m][outside] + sigma * rng.standard_normal(int(outside.sum()), dtype=np.float32)
        imaginary = sigma * rng.standard_normal(real.shape, dtype=np.float32)
        images[m][outside] = np.hypot(real, imaginary)
    affine = case.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, float(pad))
    return SyntheticCase(
        name=case.name,
        grade=case.grade,
        images=np.clip(np.rint(images), 0, np.iinfo(np.int16).max).astype(np.int16),
        label=np.pad(case.label, pad),
        tissue=np.pad(case.tissue, pad),
        affine=affine,
    )
