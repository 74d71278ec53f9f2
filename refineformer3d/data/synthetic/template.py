"""The MNI152 template the synthetic studies are deformed from: tissue levels, brain extent, tumour sites."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# nilearn's load_mni152_brain_mask is the template thresholded at 0.2, so thresholding the warped template gives the
# warped mask without interpolating a second volume.
_BRAIN_THRESHOLD = 0.2


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
