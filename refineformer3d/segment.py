"""``refineformer3d-segment``: segment studies from the command line; a thin layer over the bundle's inference.json.

Usage::

    refineformer3d-segment -i STUDY_OR_FOLDER -o OUT [--device cpu] [--regions] [--multifocal] [--model MODEL.pt]
        [--png] [--report] [--output_format nifti|nrrd|dicom-seg] [--reference_modality t1ce]
        [--coregister | --no-coregister] [--skull_strip | --no-skull_strip] [--write_brain_mask]
        [--bias_correction | --no-bias_correction] [--modality t1ce=FILE ...] [--num_parts N --part_id I]
        [--resume] [--summary] [--debug]

The input is anything ``inference.json``'s ``dataset_dir`` takes: one study folder in any naming (BraTS, BIDS, plain
names; NIfTI, NRRD, MetaImage or one sub-folder per DICOM series), a folder of studies, a dataset, a datalist JSON or
a 4-D NIfTI file. This script only turns its options into overrides of the bundle's own config and runs it with
``monai.bundle.run``: there is one pipeline, with two doors. Input problems print one line naming the study and file
and exit with status 2; ``--debug`` shows the traceback instead.

The studies are listed and their NIfTI headers read (the bundle's own checks, which need only nibabel) before torch
and MONAI are imported, which takes most of the start-up: an input that no study of can be used is refused at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["BUNDLE", "main", "overrides"]

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
OUTPUT_FORMATS = ("nifti", "nrrd", "dicom-seg")
MODALITIES = ("flair", "t1", "t1ce", "t2")


def _mapping(items: Sequence[str]) -> dict[str, str]:
    mapping = {}
    for item in items:
        modality, _, path = item.partition("=")
        if modality.lower() not in MODALITIES or not path:
            raise ValueError(
                f"--modality {item!r}: expected MODALITY=FILE with MODALITY one of {', '.join(MODALITIES)}"
            )
        # relative to the study folder, as the bundle's modality_files are (read_study resolves it), or absolute
        mapping[modality.lower()] = str(Path(path).expanduser())
    return mapping


def overrides(args: argparse.Namespace) -> dict:
    """The ``inference.json`` overrides that the parsed options stand for."""
    values = {
        "dataset_dir": str(Path(args.input).expanduser().absolute()),
        "output_dir": str(Path(args.output).expanduser().absolute()),
        "write_png": bool(args.png),
        "write_report": bool(args.report),
        "output_format": args.output_format,
        "reference_modality": args.reference_modality,
        "modality_files": _mapping(args.modality),
    }
    if args.write_brain_mask:
        values["write_brain_mask"] = True
    # Unset, these three keep the bundle's defaults (coregister and skull_strip: "auto", decided per study).
    for option in ("bias_correction", "coregister", "skull_strip"):
        if getattr(args, option) is not None:
            values[option] = getattr(args, option)
    if (args.num_parts is None) != (args.part_id is None):
        raise ValueError("--num_parts and --part_id go together (a job array: --num_parts N --part_id $TASK_ID)")
    if args.num_parts is not None:
        values["num_parts"], values["part_id"] = args.num_parts, args.part_id
    if args.resume:
        values["resume"] = True
    if args.summary:
        values["write_summary"] = True
    if args.device:
        values["device"] = f"$torch.device({args.device!r})"
    if args.multifocal:
        values["keep_largest_lesion"] = False
    if args.regions:
        values["label_scheme"] = "regions"
        values["ckpt_path"] = str(Path(args.bundle_dir, "models", "model_regions.pt").absolute())
    if args.model:
        values["ckpt_path"] = str(Path(args.model).expanduser().absolute())
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refineformer3d-segment",
        description="Segment brain tumours in multimodal MRI studies with the RefineFormer3D bundle "
        "(research use only; not for clinical use).",
    )
    parser.add_argument("-i", "--input", required=True, help="a study folder, a folder of studies, or a datalist JSON")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda:0 when available)")
    parser.add_argument("--model", help="checkpoint to load (default: the bundle's models/model.pt)")
    parser.add_argument(
        "--regions",
        action="store_true",
        help="segment the BraTS regions with the regions weights (models/model_regions.pt): labels 1 necrosis, "
        "2 edema, 4 enhancing tumour; without it, 1 tumour core, 2 edema",
    )
    parser.add_argument(
        "--multifocal",
        action="store_true",
        help="keep every whole-tumour component of at least 0.1 mL (default: only the largest)",
    )
    parser.add_argument("--png", action="store_true", help="write <study>_seg.png, an overview")
    parser.add_argument("--report", action="store_true", help="write <study>_report.json (inputs, grid, volumes)")
    parser.add_argument("--output_format", choices=OUTPUT_FORMATS, default="nifti")
    parser.add_argument("--reference_modality", choices=MODALITIES, default="t1ce", help="grid of the output")
    parser.add_argument(
        "--coregister",
        action=argparse.BooleanOptionalAction,
        help="rigidly register each modality to the reference (default: auto, each modality not on the reference's "
        "grid, as sequences straight from the scanner are)",
    )
    parser.add_argument(
        "--skull_strip",
        action=argparse.BooleanOptionalAction,
        help="skull-strip the reference modality with deepbet and mask every modality (default: auto, a study that "
        "looks not skull-stripped)",
    )
    parser.add_argument(
        "--write_brain_mask",
        action="store_true",
        help="write <study>_brain_mask.nii.gz beside the segmentation (the segmentation is always inside it)",
    )
    parser.add_argument(
        "--bias_correction",
        action=argparse.BooleanOptionalAction,
        help="N4 bias field correction of each sequence before normalising (default: the bundle's inference.json, "
        "on; the shipped weights were trained with it; about 5 s a study)",
    )
    parser.add_argument(
        "--modality", action="append", default=[], metavar="MODALITY=FILE", help="map a file to a modality (repeat)"
    )
    parser.add_argument(
        "--num_parts", type=int, help="share the studies among N jobs (a job array): this job segments one share"
    )
    parser.add_argument("--part_id", type=int, help="which share, 0 .. N-1 (with --num_parts)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="complete an earlier run: studies whose outputs exist are found done, not redone",
    )
    parser.add_argument(
        "--summary", action="store_true", help="write cohort_summary.csv and .json (one row per study) in the output"
    )
    parser.add_argument("--bundle_dir", default=str(BUNDLE), help="the bundle (configs/inference.json) to run")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def check_input(values: dict) -> None:
    """The checks of the bundle's ``StudyBatch`` that need no torch nor MONAI, run before those are imported.

    Lists the studies and reads the headers of the NIfTI ones (other formats are read through ITK, later); stops
    when no study is usable, with the line the bundle would print. A batch with some usable studies goes on, and the
    bundle names the others.

    Raises:
        InputError: after printing the one line.
    """
    from refineformer3d.data.datalist import find_studies
    from refineformer3d.data.errors import DatasetError, InputError
    from refineformer3d.data.validation import check_studies, study_files, study_name

    skipped: dict[str, str] = {}
    try:
        studies = find_studies(values["dataset_dir"], values["modality_files"], None, skipped=skipped)
    except DatasetError as error:
        raise InputError.printed([str(error)]) from None
    nifti = [s for s in studies if all(f.lower().endswith((".nii", ".nii.gz")) for f in study_files(s))]
    checked = check_studies(nifti, read=False, same_grid=False)
    bad = {study_name(s): found[0] for s, found in zip(nifti, checked) if found}
    if len(bad) == len(studies):
        problems = [*skipped.values(), *bad.values()]
        raise InputError.printed(problems, f"inference: none of {len(problems)} studies is usable")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the bundle's inference; returns the exit status (2 for input problems)."""
    args = _parser().parse_args(argv)
    bundle = Path(args.bundle_dir)
    from refineformer3d.data.errors import InputError

    try:
        values = overrides(args)
        check_input(values)
        from monai.bundle import run

        run(
            config_file=str(bundle / "configs" / "inference.json"),
            meta_file=str(bundle / "configs" / "metadata.json"),
            logging_file=str(bundle / "configs" / "logging.conf"),
            bundle_root=str(bundle),
            **values,
        )
    except InputError:
        if args.debug:
            raise
        return 2  # the config's study check printed the line already
    except ValueError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # the bundle wraps what goes wrong inside it; the cause is the line that matters
        if args.debug:
            raise
        cause = _root_cause(error)
        print(f"error: {type(cause).__name__}: {cause}".splitlines()[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
