"""Parameters and FLOPs of every registered network and of MONAI's reference networks, in seconds: nothing is timed.

Usage::

    python -m refineformer3d.experiments.summary                      # all models, 4 x 128^3, plain table
    python -m refineformer3d.experiments.summary --markdown --volume 240 240 155
    python -m refineformer3d.experiments.summary --roi 96 128 64 --models refineformer3d_small segformer3d
    python -m refineformer3d.experiments.summary --models segformer2d_b0 --roi 128 128 8 --overlap 0.5 0.5 0 \\
        --volume 240 240 155

Times, peak memory and the fraction of the machine's matmul peak are measured by ``python -m
refineformer3d.experiments.benchmark``.

The default table leaves out the slice-wise SegFormers B1, B3, B4 and B5 (B0 and B2 stand for the family; the big
ones take minutes per 128^3 window on a CPU); ``--models`` measures any registered name.

FLOP conventions (both columns count 2 FLOP per multiply-add with ``torch.utils.flop_counter.FlopCounterMode``,
batch 1; norms, activations and interpolation are not counted):

* ``GFLOP`` is the counter run during a CPU forward on fake tensors (``FakeTensorMode``: PyTorch chooses the CPU
  kernels, no arithmetic runs). PyTorch's CPU kernel of
  ``scaled_dot_product_attention`` has no FLOP formula, so attention inside SDPA is *not* counted; this is how the
  SegFormer3D reference figure (25.4 GFLOP at 4 x 128^3) was measured.
* ``GFLOP+attn`` is the counter run on the ``meta`` device, where SDPA decomposes into counted matrix products: the
  complete count. MONAI's UNETR and SwinUNETR compute attention with explicit matmuls, so both columns agree there.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
    UnsupportedOperatorException,
)
from torch.utils.flop_counter import FlopCounterMode

from refineformer3d.networks import create_model, list_models

__all__ = [
    "SummaryRow",
    "reference_models",
    "model_factories",
    "count_flops",
    "count_parameters",
    "network_flops",
    "count_windows",
    "NOT_BY_DEFAULT",
    "default_models",
    "summary_rows",
    "format_table",
    "main",
    "run",
]


#: registered variants that the default table leaves out (``--models`` measures them)
NOT_BY_DEFAULT = ("segformer2d_b1", "segformer2d_b3", "segformer2d_b4", "segformer2d_b5")

#: options of the former timed summary; the benchmark measures times now
_TIMING_OPTIONS = ("--repeats", "--no-time", "--threads")


@dataclass
class SummaryRow:
    """One line of the table; ``None`` where a value was not counted."""

    name: str
    source: str
    params_m: float
    gflop: float | None
    gflop_attn: float | None
    study_gflop: float | None = None


def default_models() -> list[str]:
    """The registered variants of the default table: all but :data:`NOT_BY_DEFAULT`."""
    return [name for name in list_models() if name not in NOT_BY_DEFAULT]


def reference_models(
    in_channels: int = 4, out_channels: int = 3, roi: Sequence[int] = (128, 128, 128)
) -> dict[str, Callable[[], nn.Module]]:
    """Factories of MONAI networks configured as in the model zoo / MONAI BraTS tutorials.

    SegResNet as in the ``brats_mri_segmentation`` bundle; UNETR with its defaults (ViT-B/16, feature size 16);
    SwinUNETR with feature size 48, as in the BraTS 2021 tutorial.
    """
    from monai.networks.nets import UNETR, SegResNet, SwinUNETR

    return {
        "SegResNet (MONAI)": lambda: SegResNet(
            blocks_down=(1, 2, 2, 4),
            blocks_up=(1, 1, 1),
            init_filters=16,
            in_channels=in_channels,
            out_channels=out_channels,
            dropout_prob=0.2,
        ),
        "UNETR (MONAI)": lambda: UNETR(
            in_channels=in_channels,
            out_channels=out_channels,
            img_size=tuple(roi),
            feature_size=16,
            norm_name="instance",
        ),
        "SwinUNETR (MONAI)": lambda: SwinUNETR(
            in_channels=in_channels, out_channels=out_channels, feature_size=48, use_checkpoint=False
        ),
    }


def model_factories(
    in_channels: int = 4, out_channels: int = 3, roi: Sequence[int] = (128, 128, 128)
) -> dict[str, tuple[str, Callable[[], nn.Module]]]:
    """Name -> (source, factory) of every registered variant (``"refineformer3d"``) and reference (``"MONAI"``)."""
    factories: dict[str, tuple[str, Callable[[], nn.Module]]] = {
        name: ("refineformer3d", lambda n=name: create_model(n, in_channels=in_channels, out_channels=out_channels))
        for name in list_models()
    }
    factories.update({name: ("MONAI", f) for name, f in reference_models(in_channels, out_channels, roi).items()})
    return factories


def count_flops(model: nn.Module, input_shape: Sequence[int], device: str | torch.device = "cpu") -> tuple[float, bool]:
    """FLOPs (2 per multiply-add) of one forward of a zero input, counted by ``FlopCounterMode``.

    No arithmetic runs: on ``"meta"`` none can, elsewhere the forward runs on fake tensors (``FakeTensorMode``) that
    still dispatch to ``device``'s kernels, so full-size counts take a second. A network whose forward depends on the
    data (``.item()``, data-dependent shapes) is counted in a real forward instead. ``model`` must live on ``device``.

    Returns:
        The FLOPs, and whether a fused attention kernel ran (whose FLOPs are missing from a CPU count).
    """
    fused: list[bool] = []

    def fused_cpu_attention(*args, **kwargs) -> int:
        # Counted as 0, as the SegFormer3D reference figure leaves it out; noting it says the count is partial.
        fused.append(True)
        return 0

    def inplace_addmm(self_shape, mat1_shape, mat2_shape, *args, **kwargs) -> int:
        # FlopCounterMode counts addmm but not its in-place form, which the refine head accumulates with
        return 2 * mat1_shape[0] * mat1_shape[1] * mat2_shape[1]

    mapping = {
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: fused_cpu_attention,
        torch.ops.aten.addmm_: inplace_addmm,
    }

    def count(fake: bool) -> float:
        fused.clear()
        mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
        with mode, torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            model(torch.zeros(tuple(input_shape), device=device))
        return float(counter.get_total_flops())

    if torch.device(device).type == "meta":
        return count(fake=False), bool(fused)
    try:
        flops = count(fake=True)
    except (DataDependentOutputException, DynamicOutputShapeException, UnsupportedOperatorException):
        flops = count(fake=False)
    return flops, bool(fused)


def count_parameters(factory: Callable[[], nn.Module]) -> int:
    """Parameters of the network ``factory`` builds: on the meta device (instant) where it can be built there."""
    try:
        with torch.device("meta"):
            model = factory()
    except (NotImplementedError, RuntimeError):  # e.g. SwinUNETR calls .item() while it builds
        model = factory()
    return sum(p.numel() for p in model.parameters())


def network_flops(
    factory: Callable[[], nn.Module], input_shape: Sequence[int], cpu: bool = True
) -> tuple[float | None, float | None]:
    """The two FLOP counts of the network ``factory`` builds, for one forward of ``input_shape``.

    Args:
        factory: builds the network (called once on the CPU if ``cpu``, once on ``meta``).
        input_shape: ``(B, C, D, H, W)``.
        cpu: also count the CPU forward (attention inside PyTorch's fused CPU kernel left out).

    Returns:
        ``(cpu_flops, flops_with_attention)``; ``None`` where not counted. Where the meta count is impossible (e.g.
        SwinUNETR calls ``.item()``) and no fused attention ran, the CPU count is already complete and stands for both.
    """
    counted: list[tuple[float, bool]] = []

    def cpu_count() -> tuple[float, bool]:
        if not counted:
            counted.append(count_flops(factory().eval(), input_shape))
        return counted[0]

    try:
        with torch.device("meta"):
            meta_model = factory().eval()
        with_attention: float | None = count_flops(meta_model, input_shape, device="meta")[0]
    except (NotImplementedError, RuntimeError):
        flops, fused_attention = cpu_count()
        with_attention = None if fused_attention else flops
    return (cpu_count()[0] if cpu else None), with_attention


def count_windows(volume_shape: Sequence[int], roi: Sequence[int], overlap: float | Sequence[float] = 0.5) -> int:
    """How many windows of ``roi`` MONAI's sliding window cuts from one ``(B, C, D, H, W)`` volume.

    Counted by running MONAI's own inferer with a predictor that only counts, so the figure follows its padding and
    window placement; a model's FLOPs per study are its FLOPs per window times this number.
    """
    from monai.inferers import SlidingWindowInferer

    counted = []

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        counted.append(windows.shape[0])
        return windows[:, :1]

    inferer = SlidingWindowInferer(roi_size=tuple(roi), sw_batch_size=16, overlap=overlap)
    with torch.inference_mode():
        inferer(torch.zeros((1, 1, *volume_shape[2:])), predictor)
    return sum(counted)


def summary_rows(
    roi: Sequence[int] = (128, 128, 128),
    in_channels: int = 4,
    out_channels: int = 3,
    models: Sequence[str] | None = None,
    include_references: bool = True,
    cpu_flops: bool = True,
    volume: Sequence[int] | None = None,
    overlap: float | Sequence[float] = 0.5,
) -> list[SummaryRow]:
    """Count parameters and FLOPs of every registered variant (and MONAI's references) for a ``(1, in_channels, *roi)``
    input; nothing runs real arithmetic, so the whole table takes seconds.

    Args:
        roi: spatial size of the input.
        in_channels: input channels.
        out_channels: classes.
        models: names to count (registry names or reference names); all of them by default.
        include_references: add SegResNet, UNETR and SwinUNETR when ``models`` is ``None``.
        cpu_flops: count FLOPs of a CPU forward (the ``GFLOP`` column); otherwise it is ``None``.
        volume: also count the FLOPs of a whole-volume sliding window (windows of ``roi``) over a volume of this
            spatial size, e.g. BraTS's ``(240, 240, 155)``: ``GFLOP+attn`` per window times the windows.
        overlap: the sliding window's overlap, one or one per axis.

    Returns:
        One :class:`SummaryRow` per model, registry variants first.

    Raises:
        ValueError: for a name that is neither registered nor a reference model.
    """
    factories = model_factories(in_channels, out_channels, roi)
    if models is None:
        references = [name for name, (source, _) in factories.items() if source == "MONAI"]
        names = default_models() + (references if include_references else [])
    else:
        unknown = [n for n in models if n not in factories]
        if unknown:
            raise ValueError(f"unknown models {unknown}; known: {', '.join(factories)}.")
        names = list(models)

    input_shape = (1, in_channels, *roi)
    windows = count_windows((1, in_channels, *volume), roi, overlap) if volume else None
    rows = []
    for name in names:
        source, factory = factories[name]
        try:
            params = count_parameters(factory) / 1e6
        except ImportError as err:  # UNETR and SwinUNETR need MONAI's optional einops
            warnings.warn(f"skipping {name}: {err}", stacklevel=2)
            continue
        flops, flops_attn = network_flops(factory, input_shape, cpu=cpu_flops)
        gflop = None if flops is None else flops / 1e9
        gflop_attn = None if flops_attn is None else flops_attn / 1e9
        per_window = gflop_attn if gflop_attn is not None else gflop
        study_gflop = per_window * windows if windows and per_window is not None else None
        rows.append(SummaryRow(name, source, params, gflop, gflop_attn, study_gflop))
    if models is None:  # variants from smallest to largest, references after them
        rows.sort(key=lambda r: (r.source != "refineformer3d", r.params_m if r.source == "refineformer3d" else 0))
    return rows


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def format_table(rows: Sequence[SummaryRow], markdown: bool = True) -> str:
    """Render rows as a markdown (or plain, aligned) table."""
    header = ["model", "params (M)", "GFLOP", "GFLOP+attn"]
    body = [[r.name, _fmt(r.params_m, 3), _fmt(r.gflop, 2), _fmt(r.gflop_attn, 2)] for r in rows]
    if any(r.study_gflop is not None for r in rows):
        header.append("GFLOP+attn per study")
        for cells, r in zip(body, rows):
            cells.append(_fmt(r.study_gflop, 1))
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))
        for cells in [header, *body]
    )


def run(argv: Sequence[str] | None = None) -> str:
    """The command line's work: prints and returns the table."""
    parser = argparse.ArgumentParser(
        prog="python -m refineformer3d.experiments.summary", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--roi", type=int, nargs=3, default=(128, 128, 128), metavar=("D", "H", "W"))
    parser.add_argument("--in_channels", type=int, default=4)
    parser.add_argument("--out_channels", type=int, default=3)
    parser.add_argument("--no-references", dest="references", action="store_false", help="skip MONAI's networks")
    parser.add_argument("--models", nargs="+", default=None, help="names to count (default: all)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument(
        "--volume",
        type=int,
        nargs=3,
        default=None,
        metavar=("D", "H", "W"),
        help="also count the FLOPs of a whole-volume sliding window (windows of --roi), e.g. 240 240 155",
    )
    parser.add_argument(
        "--overlap",
        type=float,
        nargs="+",
        default=[0.5],
        help="the sliding window's overlap: one value, or one per axis (0.5 0.5 0 for slice-wise models)",
    )
    args, unknown = parser.parse_known_args(argv)
    timing = [option for option in unknown if option.split("=")[0] in _TIMING_OPTIONS]
    if timing:
        parser.error(
            f"{timing[0].split('=')[0]}: nothing is timed here any more; "
            "python -m refineformer3d.experiments.benchmark times"
        )
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if len(args.overlap) not in (1, len(args.roi)):
        parser.error(f"--overlap takes one value or {len(args.roi)}, got {len(args.overlap)}")
    overlap = args.overlap[0] if len(args.overlap) == 1 else tuple(args.overlap)

    rows = summary_rows(
        roi=args.roi,
        in_channels=args.in_channels,
        out_channels=args.out_channels,
        models=args.models,
        include_references=args.references,
        volume=args.volume,
        overlap=overlap,
    )
    roi = "x".join(str(s) for s in args.roi)
    notes = (
        f"Input 1x{args.in_channels}x{roi}, {args.out_channels} classes, torch {torch.__version__}. "
        "FLOPs: torch.utils.flop_counter.FlopCounterMode, 2 FLOP per multiply-add; norms, activations and "
        "interpolation not counted. GFLOP: a CPU forward on fake tensors (PyTorch's CPU scaled_dot_product_attention "
        "is not counted, as in the SegFormer3D reference figure); GFLOP+attn: counted on the meta device, attention "
        "included. Times: python -m refineformer3d.experiments.benchmark."
    )
    if args.volume:
        windows = count_windows((1, args.in_channels, *args.volume), args.roi, overlap)
        notes += (
            f" Per study: one whole {'x'.join(map(str, args.volume))} volume, {windows} windows of {roi}, "
            f"overlap {' '.join(f'{o:g}' for o in args.overlap)}: GFLOP+attn per window times the windows."
        )
    table = format_table(rows, markdown=args.markdown)
    text = f"{table}\n\n{notes}"
    print(text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``refineformer3d-summary``); returns the exit status."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
