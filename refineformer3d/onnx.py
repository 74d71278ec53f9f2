"""ONNX Runtime inference and INT8 quantisation of an exported network.

MONAI exports (``python -m monai.bundle onnx_export``) and ONNX Runtime runs the graph; what neither provides is a
``torch.nn.Module`` that runs an ONNX graph, so that MONAI's ``SlidingWindowInferer`` and engines can drive it, and a
quantisation step fed with windows of real studies. Both are here.

Quantise an exported model (see ``docs/exports.md`` for the export command), and time the sliding window of
``inference.json`` on one study with PyTorch and with ONNX Runtime::

    python -m refineformer3d.onnx quantize bundle/models/model.onnx bundle/models/model_int8.onnx
    python -m refineformer3d.onnx benchmark STUDY --onnx bundle/models/model.onnx bundle/models/model_int8.onnx
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["OnnxRuntimeNetwork", "quantize", "calibration_windows", "benchmark"]

logger = logging.getLogger(__name__)

EXPORT_HINT = (
    "export it first: python -m monai.bundle onnx_export --net_id network_def --filepath bundle/models/model.onnx "
    "--ckpt_file bundle/models/model.pt --config_file bundle/configs/inference.json "
    '--meta_file bundle/configs/metadata.json --input_shape "[1,4,128,128,128]" --use_trace true '
    "--converter_kwargs \"{'input_names':['image'],'output_names':['pred'],"
    "'dynamic_axes':{'image':{0:'batch'},'pred':{0:'batch'}},'opset_version':17,'dynamo':False}\""
)


class OnnxRuntimeNetwork(nn.Module):
    """An ONNX graph behind the ``nn.Module`` interface, for MONAI inferers and engines.

    Tensors cross to NumPy and back on every call; the graph runs on ONNX Runtime's CPU provider unless other
    providers are given. The graph's spatial input shape is fixed at export, so it must equal the inferer's
    ``roi_size`` (a sliding window always feeds windows of that size).

    Args:
        path: the ``.onnx`` file.
        providers: ONNX Runtime execution providers, in order of preference.
        num_threads: intra-op threads; 0 lets ONNX Runtime choose (one per physical core).
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None, num_threads: int = 0):
        super().__init__()
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX model at {self.path}; {EXPORT_HINT}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(num_threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(self.path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
        )
        (model_input,) = self.session.get_inputs()
        self.input_name = model_input.name
        self.input_shape = tuple(model_input.shape)
        self.output_name = self.session.get_outputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = self.input_shape[1:]
        if all(isinstance(s, int) for s in expected) and tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{self.path.name} was exported for inputs (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}; "
                "set roi_size to the exported window or export again with the new --input_shape."
            )
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(out).to(x.device)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, providers={self.session.get_providers()}"


def calibration_windows(
    images: Iterable[torch.Tensor | np.ndarray], roi_size: Sequence[int], per_image: int = 2, seed: int = 0
) -> list[np.ndarray]:
    """Windows of ``roi_size`` cut from preprocessed images, for static-quantisation calibration.

    Windows are centred on random brain voxels (non-zero in any channel), so the calibration sees the intensity
    ranges of tissue and tumour rather than of the padding around the head.

    Args:
        images: channel-first preprocessed images (C, D, H, W), e.g. from the inference config's ``preprocessing``.
        roi_size: the exported window size.
        per_image: windows per image.
        seed: for the window centres.

    Returns:
        Arrays of shape (1, C, *roi_size), float32.
    """
    from monai.transforms import RandCropByPosNegLabel, SpatialPad

    crop = RandCropByPosNegLabel(roi_size, pos=1.0, neg=0.0, num_samples=per_image)
    crop.set_random_state(seed)
    windows = []
    for image in images:
        image = SpatialPad(roi_size)(torch.as_tensor(np.asarray(image)).float())  # as the sliding window pads
        brain = image.abs().sum(0, keepdim=True) > 0
        crops = crop(image, label=brain if brain.any() else torch.ones_like(brain))
        windows += [np.ascontiguousarray(np.asarray(c)[None], dtype=np.float32) for c in crops]
    return windows


def quantize(
    model: str | os.PathLike,
    output: str | os.PathLike,
    mode: str = "dynamic",
    calibration: Sequence[np.ndarray] | None = None,
    op_types: Sequence[str] | None = None,
) -> Path:
    """Writes an INT8 version of an exported model with ONNX Runtime's quantisation tools.

    ``dynamic`` stores INT8 weights of the matrix multiplications (the attention and Mix-FFN projections) and
    quantises their activations on the fly: no data needed. ``static`` also quantises convolutions, with activation
    ranges calibrated on ``calibration`` windows, in the QDQ format.

    Args:
        model: the fp32 ``.onnx`` file.
        output: where to write the INT8 model.
        mode: ``"dynamic"`` or ``"static"``.
        calibration: input windows (1, C, *roi) for ``static``.
        op_types: operator types to quantise; defaults to ``MatMul`` (dynamic) or ``Conv`` and ``MatMul`` (static).

    Returns:
        The path written.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Shape inference and graph folding first, as ONNX Runtime recommends: quantisation needs known tensor shapes.
    prepared = output.with_name(f".{output.stem}.prepared.onnx")
    quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
    try:
        if mode == "dynamic":
            quantize_dynamic(
                str(prepared),
                str(output),
                op_types_to_quantize=list(op_types or ["MatMul"]),
                weight_type=QuantType.QInt8,
            )
        elif mode == "static":
            if not calibration:
                raise ValueError("static quantisation needs calibration windows")

            class _Reader(CalibrationDataReader):
                def __init__(self, name: str, windows: Sequence[np.ndarray]):
                    self._items = iter([{name: w} for w in windows])

                def get_next(self):
                    return next(self._items, None)

            import onnxruntime as ort

            input_name = ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"]).get_inputs()[0].name
            quantize_static(
                str(prepared),
                str(output),
                _Reader(input_name, calibration),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types or ["Conv", "MatMul"]),
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
        else:
            raise ValueError(f"mode must be 'dynamic' or 'static', got {mode!r}")
    finally:
        prepared.unlink(missing_ok=True)
    logger.info("wrote %s (%s INT8)", output, mode)
    return output


def benchmark(
    study: str | os.PathLike,
    checkpoint: str | os.PathLike | None,
    onnx_models: Sequence[str | os.PathLike] = (),
    config_file: str | os.PathLike = "bundle/configs/inference.json",
    repeats: int = 5,
    threads: int = 2,
) -> dict[str, list[float]]:
    """Seconds of ``config_file``'s sliding window over one preprocessed study, per runtime.

    Preprocessing is done once and not timed. Runs are interleaved (each round runs every model once), so a change
    of machine load falls on all models alike; one untimed run per model comes first.

    Args:
        study: anything :func:`~refineformer3d.data.find_studies` takes; its first study is used.
        checkpoint: PyTorch state dict for the config's ``network_def`` (``None``: no PyTorch run).
        onnx_models: ONNX files to run with :class:`OnnxRuntimeNetwork`.
        config_file: the inference config (preprocessing, inferer, network).
        repeats: timed runs per model.
        threads: PyTorch and ONNX Runtime intra-op threads.

    Returns:
        Model name -> run times in seconds.
    """
    import time

    from monai.bundle import ConfigParser

    from refineformer3d.data import find_studies

    parser = ConfigParser()
    parser.read_config(str(config_file))
    image = parser.get_parsed_content("preprocessing")({"image": find_studies(study)[0]["image"]})["image"][None]
    inferer = parser.get_parsed_content("inferer")
    torch.set_num_threads(threads)
    models: dict[str, nn.Module] = {}
    if checkpoint is not None:
        network = parser.get_parsed_content("network_def")
        network.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        models[f"pytorch {Path(checkpoint).name}"] = network.eval()
    for path in onnx_models:
        models[f"onnxruntime {Path(path).name}"] = OnnxRuntimeNetwork(path, num_threads=threads)
    times: dict[str, list[float]] = {name: [] for name in models}
    logger.info("study %s, preprocessed to %s", study, tuple(image.shape))
    with torch.no_grad():
        for model in models.values():
            inferer(image, model)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                inferer(image, model)
                times[name].append(time.perf_counter() - start)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refineformer3d.onnx",
        description="Quantise an exported ONNX network to INT8, or time its sliding window against PyTorch's.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    q = commands.add_parser("quantize", help="write an INT8 model")
    q.add_argument("model", help="exported fp32 .onnx")
    q.add_argument("output", help="INT8 .onnx to write")
    q.add_argument("--mode", choices=["dynamic", "static"], default="dynamic")
    q.add_argument(
        "--dataset_dir", help="static: BraTS-style dataset whose training studies calibrate (default: built-in data)"
    )
    q.add_argument("--studies", type=int, default=4, help="static: studies to calibrate on")
    q.add_argument("--config_file", default="bundle/configs/inference.json", help="static: preprocessing source")
    b = commands.add_parser("benchmark", help="time the sliding window on one study per runtime")
    b.add_argument("study", help="a case folder, a 4-D NIfTI, or anything the inference config's dataset_dir takes")
    b.add_argument("--checkpoint", default="bundle/models/model.pt", help="PyTorch weights ('' to skip)")
    b.add_argument("--onnx", nargs="*", default=[], help="ONNX models to time")
    b.add_argument("--config_file", default="bundle/configs/inference.json")
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.command == "benchmark":
        times = benchmark(args.study, args.checkpoint or None, args.onnx, args.config_file, args.repeats, args.threads)
        for name, runs in times.items():
            print(f"{name}: median {float(np.median(runs)):.2f} s, best {min(runs):.2f} s over {len(runs)} runs")
        return 0
    calibration = None
    if args.mode == "static":
        calibration = _calibration_from_config(args.model, args.config_file, args.dataset_dir, args.studies)
    quantize(args.model, args.output, mode=args.mode, calibration=calibration)
    return 0


def _calibration_from_config(model: str, config_file: str, dataset_dir: str | None, studies: int) -> list[np.ndarray]:
    import onnxruntime as ort
    from monai.bundle import ConfigParser

    from refineformer3d.data import ensure_dataset, load_datalist

    parser = ConfigParser()
    parser.read_config(config_file)
    preprocessing = parser.get_parsed_content("preprocessing")
    datalist = load_datalist(dataset_dir or ensure_dataset(), verify=False)["training"][:studies]
    shape = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    images = [preprocessing({"image": item["image"]})["image"] for item in datalist]
    return calibration_windows(images, shape[2:])


if __name__ == "__main__":
    raise SystemExit(main())
