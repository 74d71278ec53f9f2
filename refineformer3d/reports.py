"""Per-study reports of the bundle's inference: a PNG overview and a JSON summary beside each segmentation.

``StudyReportSaver`` is an Ignite handler for MONAI's ``SupervisedEvaluator``. It reads the postprocessed outputs of
an iteration (postprocessing runs on ``MODEL_COMPLETED``, before any ``ITERATION_COMPLETED`` handler), so it sees the
label map on the input grid and, with ``SaveImaged(..., savepath_in_metadict=True)``, where it was written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Timer
from monai.config import PathLike
from monai.data import MetaTensor
from monai.transforms import Invertd, InvertibleTransform, Orientation
from monai.utils import ImageMetaKey, MetaKeys, optional_import

from refineformer3d.io import write_atomically
from refineformer3d.labels import label_colours, label_names, region_labels
from refineformer3d.writers import study_name_formatter

Figure, has_matplotlib = optional_import("matplotlib.figure", name="Figure")
FigureCanvasAgg, _ = optional_import("matplotlib.backends.backend_agg", name="FigureCanvasAgg")
Patch, _ = optional_import("matplotlib.patches", name="Patch")
colormaps, _ = optional_import("matplotlib", name="colormaps")

__all__ = [
    "NOT_FOR_CLINICAL_USE",
    "StudyReportSaver",
    "intensity_window",
    "label_names",
    "label_volumes",
    "region_labels",
    "render_overview",
    "tumour_slices",
    "voxel_volume_ml",
]

logger = logging.getLogger(__name__)

NOT_FOR_CLINICAL_USE = "Research use only. Not a medical device; not for clinical use."
RUNTIME_COVERS = (
    "seconds from Ignite GET_BATCH_STARTED to ITERATION_COMPLETED of the study's batch: fetching the batch (loading "
    "and preprocessing, unless DataLoader workers prepared it earlier), sliding-window inference and postprocessing "
    "including writing the segmentation; not this report or the PNG; shared by all studies of a batch"
)
_FIGSIZE = (9.0, 6.6)  # inches: three views side by side, two rows, a title and a legend


def voxel_volume_ml(affine: np.ndarray | torch.Tensor) -> float:
    """Volume of one voxel in millilitres, from a 4x4 affine in millimetres (any orientation, oblique included)."""
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    return float(abs(np.linalg.det(linear))) / 1000.0


def label_volumes(label: np.ndarray, values: Iterable[int], voxel_ml: float) -> dict[int, float]:
    """Volume in millilitres of each label value in ``values``: its voxel count times ``voxel_ml``."""
    label = np.asarray(label)
    return {int(v): int(np.count_nonzero(label == v)) * voxel_ml for v in values}


def tumour_slices(label: np.ndarray) -> tuple[int, ...]:
    """Per axis, the index of the slice with the largest tumour cross-section.

    Args:
        label: a label map (X, Y, Z) (any rank), 0 background.

    Returns:
        one index per axis; the centre of the volume on every axis when nothing is segmented, so an empty result
        still shows the brain. Ties go to the lowest index.
    """
    mask = np.asarray(label) > 0
    if not mask.any():
        return tuple(size // 2 for size in mask.shape)
    axes = range(mask.ndim)
    return tuple(int(np.argmax(mask.sum(axis=tuple(a for a in axes if a != axis)))) for axis in axes)


def intensity_window(image: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)) -> tuple[float, float]:
    """Display range of one channel: ``percentiles`` of its brain voxels.

    The bundle z-scores brain voxels only (``NormalizeIntensityd(nonzero=True)``) and the background stays 0, so
    the non-zero voxels are the brain; including the background would put the lower bound at 0 and wash the brain out.
    """
    brain = np.asarray(image)[np.asarray(image) != 0]
    if brain.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(brain, percentiles))
    return (low, high) if high > low else (low, low + 1.0)


def _view(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """One slice of a RAS volume (X, Y, Z) or (X, Y, Z, RGBA) as an image in radiological convention.

    Axial and coronal: patient right on the left of the image; sagittal: anterior on the left. Rows run inferior to
    superior (posterior to anterior for axial), so the image is drawn with ``origin="lower"``.
    """
    plane = np.swapaxes(np.take(volume, index, axis=axis), 0, 1)  # rows: the later RAS axis; RGBA stays last
    return plane[:, ::-1]


# Per view: the RAS axis cut, the letters at the left, right, bottom and top edges, and the RAS axes along the
# image's rows and columns (for the pixel aspect ratio).
_VIEWS = (
    ("axial", 2, "RLPA", (1, 0)),
    ("coronal", 1, "RLIS", (2, 0)),
    ("sagittal", 0, "APIS", (2, 1)),
)


def render_overview(
    image: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float],
    rows: dict[str, int],
    names: dict[int, str],
    colours: dict[int, tuple[float, float, float]],
    title: str = "",
    volumes_ml: dict[int, float] | None = None,
    alpha: float = 0.4,
    percentiles: tuple[float, float] = (1.0, 99.0),
    dpi: int = 100,
):
    """Draws the overview: one row per channel in ``rows``, axial, coronal and sagittal slices through the tumour.

    Args:
        image: (C, X, Y, Z) in RAS orientation.
        label: (X, Y, Z) label map on the same grid.
        spacing: voxel sizes in mm along X, Y, Z, for the pixel aspect ratio.
        rows: row title -> channel index of ``image``.
        names: label value -> name, for the legend.
        colours: label value -> RGB in [0, 1].
        title: the figure's title.
        volumes_ml: label value -> volume, added to the legend when given.
        alpha: opacity of the segmentation.
        percentiles: intensity window of each channel, as percentiles of its brain voxels.
        dpi: dots per inch; the figure is ``_FIGSIZE`` inches.

    Returns:
        a matplotlib ``Figure`` on an Agg canvas (no pyplot, so no global state and no display needed).
    """
    if not has_matplotlib:
        raise RuntimeError("writing a PNG needs matplotlib; install it or set write_png to false")
    fig = Figure(figsize=_FIGSIZE, dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    slices = tumour_slices(label)
    overlay = np.zeros((*label.shape, 4), dtype=np.float32)
    for value, colour in colours.items():
        overlay[label == value] = (*colour, alpha)
    grey = colormaps["gray"].with_extremes(bad="black")
    axes = fig.subplots(len(rows), len(_VIEWS), squeeze=False)
    for r, (row_name, channel) in enumerate(rows.items()):
        low, high = intensity_window(image[channel], percentiles)
        for c, (view_name, axis, letters, (row_axis, col_axis)) in enumerate(_VIEWS):
            ax = axes[r, c]
            aspect = spacing[row_axis] / spacing[col_axis]
            # Masked, so the background (0, the mean brain intensity after z-scoring) is drawn black, not grey.
            plane = np.ma.masked_equal(_view(image[channel], axis, slices[axis]), 0)
            ax.imshow(plane, cmap=grey, vmin=low, vmax=high, origin="lower", aspect=aspect, interpolation="nearest")
            ax.imshow(_view(overlay, axis, slices[axis]), origin="lower", aspect=aspect, interpolation="nearest")
            ax.set_axis_off()
            # In data coordinates, so the letters stay at the image's edges whatever its aspect ratio.
            height, width = plane.shape
            edges = (
                (0, height / 2, "left", "center"),
                (width - 1, height / 2, "right", "center"),
                (width / 2, 0, "center", "bottom"),
                (width / 2, height - 1, "center", "top"),
            )
            for text, (x, y, ha, va) in zip(letters, edges):
                ax.text(x, y, text, color="white", fontsize=9, fontweight="bold", ha=ha, va=va)
            if r == 0:
                ax.set_title(f"{view_name} (slice {slices[axis]})", color="white", fontsize=10)
            if c == 0:
                ax.text(
                    -0.04,
                    0.5,
                    row_name,
                    transform=ax.transAxes,
                    color="white",
                    fontsize=10,
                    rotation=90,
                    ha="right",
                    va="center",
                )
    handles = [
        Patch(
            color=colours[v],
            alpha=min(1.0, 2 * alpha),
            label=f"{name} ({volumes_ml[v]:.1f} mL)" if volumes_ml is not None else name,
        )
        for v, name in names.items()
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, labelcolor="white", fontsize=9)
    fig.suptitle(f"{title}\n{NOT_FOR_CLINICAL_USE}" if title else NOT_FOR_CLINICAL_USE, color="white", fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.99, top=0.88, bottom=0.08, wspace=0.02, hspace=0.08)
    return fig


def _missing_warning(meta: Mapping) -> str:
    missing = [str(m) for m in meta.get("missing_sequences") or []]
    if not missing:
        return ""
    return (
        f"no {', '.join(missing)}: segmented with the value of a sequence dropped in training in their place; "
        "expect a lower Dice (see the model card)"
    )


class StudyReportSaver:
    """Writes ``<study>_seg.png`` and/or ``<study>_report.json`` beside each segmentation of an inference run.

    Attach to MONAI's ``SupervisedEvaluator`` (a bundle's ``val_handlers``) after postprocessing that ends with
    ``SaveImaged(..., savepath_in_metadict=True)``. For each study of an iteration it reads ``pred``, the label map
    (1, X, Y, Z) on the input grid, and ``image``, the preprocessed image (C, ...) with its ``applied_operations``.

    The report (JSON) holds the study name, the input files (modality -> file for a study loaded by
    :class:`~refineformer3d.data.LoadStudyd`, else the file ``LoadImage`` recorded), the reference modality and grid
    (shape, spacing, RAS affine) the segmentation is written on, the sequences the study lacks
    (``missing_sequences``), warnings (a study that looks not skull-stripped and was not stripped, a missing
    sequence), how it was skull-stripped (``skull_strip``: method, ``"none"`` or deepbet's version, and why),
    the segmentation's path, the label scheme and label names, the voxel volume and the
    volume of each label and each region in mL (voxel counts of the label map on the input grid, so of the written
    file), the run time (``runtime_s``, explained in ``runtime_covers``), the device, the model version and a line
    saying it is not for clinical use.

    The PNG shows rows of channels (FLAIR and T1ce by default) by columns of axial, coronal and sagittal slices
    through the largest tumour cross-section of each axis, with the segmentation overlaid and a legend. The image is
    brought onto the label map's grid by inverting ``transform`` (as ``Invertd`` does for the prediction), then both
    are reoriented to RAS and drawn in radiological convention with the voxel spacing's aspect ratio.

    Args:
        output_dir: folder to write to, normally ``SaveImaged``'s.
        transform: the preprocessing that produced ``image``, to invert for the PNG; not needed without it.
        write_png: write ``<study>_seg.png``.
        write_report: write ``<study>_report.json``.
        label_scheme: ``"classes"`` or ``"regions"``, as given to ``BratsLabelsFromPredictiond``.
        convention: label values of the ``regions`` scheme, as given to ``BratsLabelsFromPredictiond``.
        channel_names: names of the image channels, in order.
        png_channels: channels drawn in the PNG, one row each.
        model_version: recorded in the report, e.g. the bundle's ``_meta_`` version.
        image_key: key of the preprocessed image in the engine's output.
        pred_key: key of the label map in the engine's output.
        output_name_formatter: ``meta -> {"subject": ...}``, as ``SaveImaged``'s, to name the files after the study.
        percentiles: intensity window of each channel in the PNG, as percentiles of its brain voxels.
        dpi: resolution of the PNG; it is ``_FIGSIZE`` (9 x 6.6) inches.

    Raises:
        TypeError: for flags that are not ``bool``.
        ValueError: when neither file is to be written, for an unknown scheme, for ``png_channels`` not among
            ``channel_names``, or for a PNG without an invertible ``transform``; when called, for a prediction of
            more than one channel, or an image that the inverted
            ``transform`` does not bring onto the prediction's grid.
    """

    def __init__(
        self,
        output_dir: PathLike,
        transform: InvertibleTransform | None = None,
        write_png: bool = True,
        write_report: bool = True,
        label_scheme: str = "classes",
        convention: str = "brats",
        channel_names: Sequence[str] = ("FLAIR", "T1", "T1ce", "T2"),
        png_channels: Sequence[str] = ("FLAIR", "T1ce"),
        model_version: str | None = None,
        image_key: str = "image",
        pred_key: str = "pred",
        output_name_formatter: Callable[[dict, object], dict] = study_name_formatter,
        percentiles: tuple[float, float] = (1.0, 99.0),
        dpi: int = 100,
    ) -> None:
        for name, flag in (("write_png", write_png), ("write_report", write_report)):
            # The bundle CLI passes `--write_png false` as the string "false", which is true.
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}; on the command line write True or False")
        if not (write_png or write_report):
            raise ValueError("write_png and write_report are both false: nothing to write; leave the handler out")
        missing = [c for c in png_channels if c not in channel_names]
        if missing:
            raise ValueError(f"png_channels {missing} are not among channel_names {list(channel_names)}")
        if write_png and not has_matplotlib:
            raise RuntimeError("write_png needs matplotlib; install it or set write_png to false")
        self.output_dir = Path(output_dir)
        self.write_png = write_png
        self.write_report = write_report
        self.label_scheme = label_scheme
        self.names = label_names(label_scheme, convention)
        self.regions = region_labels(label_scheme, convention)
        self.colours = label_colours(label_scheme, convention)
        self.rows = {name: list(channel_names).index(name) for name in png_channels}
        self.model_version = model_version
        self.image_key = image_key
        self.pred_key = pred_key
        self.output_name_formatter = output_name_formatter
        self.percentiles = percentiles
        self.dpi = dpi
        # Bilinear as in preprocessing: nearest-neighbour would make the 1 mm image blocky on a finer input grid.
        self.invert = (
            Invertd(keys=image_key, transform=transform, orig_keys=image_key, nearest_interp=False)
            if write_png
            else None
        )
        # labels=None: read "RAS" in the MetaTensor's own space, so an LPS-space image (ITK) is displayed right too.
        self.to_ras = Orientation(axcodes="RAS", labels=None)
        self.timer = Timer()

    def attach(self, engine: Engine) -> None:
        # Paused on ITERATION_COMPLETED before this handler runs, so the time excludes writing the report and PNG.
        self.timer.attach(engine, start=Events.GET_BATCH_STARTED, pause=Events.ITERATION_COMPLETED)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        runtime = self.timer.value()
        device = torch.device(engine.state.device or "cpu")  # MONAI's engines keep it in state
        device_name = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for output in outputs:
            self.save(output[self.image_key], output[self.pred_key], runtime, device_name)

    def save(self, image: MetaTensor, pred: MetaTensor, runtime_s: float | None = None, device: str = "") -> dict:
        """Writes the files of one study.

        Args:
            image: the preprocessed image (C, ...) with the ``applied_operations`` of ``transform``.
            pred: the label map (1, X, Y, Z) on the input grid, with its affine.
            runtime_s: seconds spent on the study, for the report.
            device: where it ran, for the report.

        Returns:
            the report, also when it is not written.
        """
        if pred.shape[0] != 1:
            raise ValueError(f"expected a label map of one channel (1, X, Y, Z), got shape {tuple(pred.shape)}")
        study = self.output_name_formatter(pred.meta, None)["subject"]
        label = np.rint(pred[0].detach().cpu().numpy()).astype(np.int64)
        voxel_ml = voxel_volume_ml(pred.affine)
        volumes = label_volumes(label, self.names, voxel_ml)
        png = self.output_dir / f"{study}_seg.png"
        if self.write_png:
            self._write_png(png, image, pred, study, volumes)
        sources = pred.meta.get(ImageMetaKey.FILENAME_OR_OBJ)
        saved_to = pred.meta.get(MetaKeys.SAVED_TO)
        modality_files = pred.meta.get("modality_files")
        if isinstance(modality_files, Mapping):
            input_files = {str(m): str(f) for m, f in modality_files.items()}
        else:
            input_files = [str(s) for s in (sources if isinstance(sources, (list, tuple)) else [sources]) if s]
        affine = np.asarray(pred.affine, dtype=np.float64)
        skull_strip = {
            "method": str(pred.meta.get("skull_strip", "none")),
            "reason": str(pred.meta.get("skull_strip_reason", "")),
        }
        stripped = skull_strip["method"] != "none"
        report = {
            "study": study,
            "input_files": input_files,
            "reference_modality": pred.meta.get("reference_modality"),
            "reference_grid": {
                "shape": [int(s) for s in pred.shape[1:]],
                "spacing_mm": [float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)],
                "affine_ras": affine.tolist(),
            },
            "missing_sequences": [str(m) for m in pred.meta.get("missing_sequences") or []],
            # A study that was skull-stripped is no longer one that "looks not skull-stripped".
            "warnings": [
                w
                for w in [None if stripped else pred.meta.get("skull_strip_warning"), _missing_warning(pred.meta)]
                if w
            ],
            "skull_strip": skull_strip,
            "segmentation": str(saved_to) if saved_to else None,
            "png": str(png) if self.write_png else None,
            "label_scheme": self.label_scheme,
            "labels": {str(v): name for v, name in self.names.items()},
            "voxel_volume_ml": voxel_ml,
            "class_volumes_ml": {self.names[v]: ml for v, ml in volumes.items()},
            "region_volumes_ml": {r: sum(volumes[v] for v in values) for r, values in self.regions.items()},
            "runtime_s": runtime_s,
            "runtime_covers": RUNTIME_COVERS,
            "device": device,
            "model_version": self.model_version,
            "intended_use": NOT_FOR_CLINICAL_USE,
        }
        if self.write_report:
            text = json.dumps(report, indent=2) + "\n"
            path = write_atomically(self.output_dir / f"{study}_report.json", lambda f: Path(f).write_text(text))
            logger.info("wrote %s", path)
        return report

    def _write_png(self, path: Path, image: MetaTensor, pred: MetaTensor, study: str, volumes: dict) -> None:
        restored = self.invert({self.image_key: image})[self.image_key]
        if restored.shape[1:] != pred.shape[1:] or not np.allclose(restored.affine, pred.affine, atol=1e-3):
            raise ValueError(
                f"study {study}: inverting the preprocessing gives an image of shape {tuple(restored.shape[1:])} that "
                f"is not on the prediction's grid {tuple(pred.shape[1:])}; pass the preprocessing that made the image"
            )
        image_ras, pred_ras = self.to_ras(restored), self.to_ras(pred)
        fig = render_overview(
            image_ras.detach().cpu().numpy(),
            np.rint(pred_ras[0].detach().cpu().numpy()).astype(np.int64),
            spacing=pred_ras.pixdim.tolist(),
            rows=self.rows,
            names=self.names,
            colours=self.colours,
            title=study,
            volumes_ml=volumes,
            percentiles=self.percentiles,
            dpi=self.dpi,
        )
        write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=fig.dpi, facecolor=fig.get_facecolor()))
        logger.info("wrote %s", path)
