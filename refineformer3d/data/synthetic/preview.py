"""A PNG per case: three planes through the tumour, four modalities and the label (``--preview``)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from .phantom import MODALITIES, SyntheticCase


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
