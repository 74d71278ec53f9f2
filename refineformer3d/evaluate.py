"""Scores segmentations with the BraTS challenge's own evaluation package, as BraTS scores them.

Any tool's segmentations, this project's or another's, are scored by ``brats-evaluation`` (the BraTS challenge's
package; it runs ``panoptica`` with its ``gli`` configuration): volume-wise ("global") Dice and HD95, lesion-wise Dice
and HD95 (over matched lesions), and instance precision, recall and F1 (lesion detection), for whole tumour (WT),
tumour core (TC) and enhancing tumour (ET). The numbers are the package's; this module only maps labels, applies two
rules the package leaves to its callers, and writes tables.

Label mapping. The package's ``gli`` configuration reads BraTS 2023+ labels: 1 necrosis / non-enhancing tumour
(NETC), 2 edema (SNFH), 3 enhancing tumour (ET), with tc = {1, 3} and wt = {1, 2, 3}. Every file is mapped to them
first (:func:`refineformer3d.labels.to_convention`):

=====================  ===============================  =====================================
file                    raw values                       official labels
=====================  ===============================  =====================================
reference, ``brats``     1 NCR/NET, 2 ED, 4 ET            1, 2, 3
reference, ``brats2023``  1, 2, 3                          1, 2, 3
reference, ``msd``       1 edema, 2 non-enhancing, 3 ET   2, 1, 3
``regions`` prediction   the convention's raw values      as for a reference
``classes`` prediction   1 tumour core, 2 edema           1, 2 (ET: not available)
=====================  ===============================  =====================================

A ``classes`` segmentation cannot tell enhancing tumour from necrosis: its tumour core goes to label 1 so TC and WT
keep their voxels, and ET is reported as not available (``n/a`` in the CSV, ``null`` in the JSON), never as 0.

Rules applied on top of the package's numbers (the package's own parser, ``brats-parse-metrics``, does the first):

* **HD95 cap**: an infinite HD95 (a region predicted where there is none, or missed entirely) becomes 373 mm, the
  diagonal of the 240 x 240 x 155 SRI-24 grid, as the package's parser does for global HD95; here lesion-wise too.
* **Empty region** (BraTS rule): a region absent from both reference and prediction scores Dice 1 and HD95 0 (global
  and lesion-wise); the package leaves these NaN. Precision, recall and F1 stay undefined (empty in the CSV).
  A region absent from only one of them scores Dice 0 and HD95 373 mm (the package's own answer, capped).

HD95 is in mm, anisotropic voxels included. The package (panoptica 2.1.7) computes its volume-wise HD95 without the
voxel spacing, i.e. in voxels, and reads file paths with SimpleITK, whose spacing comes in (x, y, z) order against an
array in (z, y, x), which scales the lesion-wise HD95 along the wrong axes. So this module hands the package
nibabel images (spacing and array in one order: lesion-wise HD95 in mm) and, where the voxels are not 1 mm cubes,
replaces the volume-wise HD95 by the package's own HD95 metric given the spacing. On BraTS's 1 mm grid nothing is
replaced and every number is the package's (the parity test checks both). The package pools the surface distances
of both directions before the 95th percentile; MONAI's ``HausdorffDistance`` takes the larger of the two directed
95th percentiles, so the training metric can be a little higher.

The model-selection split: with a dataset folder as reference, only its labelled ``testing`` studies are scored by
default (the split :func:`refineformer3d.data.load_datalist` makes with the training configuration's fractions and
seed). The ``validation`` studies chose the checkpoint; they are scored only when asked (``--split validation``), and
their tables say so (``brats_validation_*``, ``"model_selection": true``).

Command line::

    python -m refineformer3d.evaluate --pred DIR --ref DIR_OR_DATASET --output DIR \\
        [--scheme classes|regions] [--pred_convention brats] [--ref_convention brats] [--split testing]

Outputs in ``--output``, written once every case is scored (each complete or absent): ``brats_<split>_cases.csv``
(one row per case), ``brats_<split>_summary.csv`` (mean, std, median, n per column) and ``brats_<split>.json`` (all
of it with the label mapping); ``brats_cases.csv`` and so on for a folder of label files, which has no split. On bad
input it prints one line naming the case and the file to stderr, exits with status 2 and writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import re
import statistics
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from refineformer3d.data.modalities import file_stem
from refineformer3d.io import write_atomically
from refineformer3d.labels import CONVENTIONS, REGION_NAMES, REGIONS, SCHEMES, region_labels, to_convention

__all__ = [
    "HD95_CAP_MM",
    "METRICS",
    "OFFICIAL_CONVENTION",
    "evaluate",
    "labelled_split",
    "main",
    "official_label_map",
    "score_case",
]

OFFICIAL_CONFIG = "gli"
OFFICIAL_CONVENTION = "brats2023"  # the labels of the package's gli configuration: 1 NETC, 2 SNFH, 3 ET
HD95_CAP_MM = 373.0  # the package parser's replacement for an infinite HD95: the SRI-24 grid's diagonal
# Column stem (the package parser's name) -> panoptica's result key.
METRICS = {
    "global_dsc": "global_bin_dsc",
    "global_hd95": "global_bin_hd95",
    "lesionwise_dsc_mean": "sq_dsc",
    "lesionwise_hd95_mean": "sq_hd95",
    "all_instance_prec": "prec",
    "all_instance_rec": "rec",
    "all_instance_f1": "rq",
    "all_instance_tp": "tp",
    "all_instance_fp": "fp",
    "all_instance_fn": "fn",
}
_EMPTY_RULE = {
    "global_dsc": 1.0,
    "global_hd95": 0.0,
    "lesionwise_dsc_mean": 1.0,
    "lesionwise_hd95_mean": 0.0,
}
_SUFFIX = re.compile(r"([_-]seg)?\.nii(\.gz)?$", re.IGNORECASE)  # a label file's name ends so
_SEG = re.compile(r"[_-]seg$", re.IGNORECASE)
_NOT_AVAILABLE = "n/a"


def case_name(path: str | Path) -> str:
    """The study a label file belongs to: its name without the extension and a trailing ``_seg`` / ``-seg``."""
    return _SEG.sub("", file_stem(path))


def official_label_map(scheme: str, convention: str) -> dict[int, int]:
    """Label value of a file -> the package's label (1 NETC, 2 SNFH, 3 ET); see the module's table."""
    return to_convention(scheme, convention, target=OFFICIAL_CONVENTION)


def labelled_split(datalist: Mapping, split: str = "testing") -> list[dict]:
    """The labelled entries of one split of a datalist, refusing to fall back to the model-selection split.

    Args:
        datalist: a datalist dict (:func:`refineformer3d.data.load_datalist`).
        split: ``"testing"`` (default), ``"validation"`` (the split that chose the checkpoint: only when asked) or
            ``"training"``.

    Returns:
        The entries of ``split`` that have a ``label``.

    Raises:
        ValueError: for an unknown split, or a split without labelled studies.
    """
    if split not in ("training", "validation", "testing"):
        raise ValueError(f"unknown split {split!r}; expected 'testing', 'validation' or 'training'")
    entries = [dict(e) for e in datalist.get(split, []) if "label" in e]
    if not entries:
        hint = (
            "; the validation studies chose the checkpoint, so they are scored only when asked explicitly "
            "(split 'validation', and the tables say so)"
            if split == "testing"
            else ""
        )
        raise ValueError(f"no labelled {split} studies in {datalist.get('dataset_dir', 'the datalist')}{hint}")
    return entries


def _load_labels(path: Path, case: str, allowed: Mapping[int, int], what: str) -> nib.Nifti1Image:
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel, gzip and zlib raise many types for a bad file; all mean the same here
        raise ValueError(f"case {case}: cannot read {what} {path} ({type(error).__name__}: {error})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"case {case}: {what} {path} is not a 3-D label map (shape {data.shape})")
    values = np.unique(data)
    unknown = [v.item() for v in values if v not in allowed]
    if unknown:
        raise ValueError(
            f"case {case}: {what} {path} holds label values {unknown}; expected only {sorted(allowed)} "
            "(check --scheme and the conventions)"
        )
    lookup = np.zeros(max(allowed) + 1, dtype=np.uint8)
    for value, official in allowed.items():
        lookup[value] = official
    return nib.Nifti1Image(lookup[data.astype(np.int64)], image.affine, image.header)


def score_case(
    pred_path: str | Path,
    ref_path: str | Path,
    case: str,
    scheme: str = "classes",
    pred_convention: str = "brats",
    ref_convention: str = "brats",
    evaluator=None,
) -> dict:
    """Scores one segmentation against its reference with the BraTS package.

    Args:
        pred_path: the segmentation, (D, H, W) label values of ``scheme`` (``regions``: in ``pred_convention``).
        ref_path: the reference, (D, H, W) raw values of ``ref_convention``, on the same grid.
        case: the study's name, for the table and the error messages.
        scheme: ``"classes"`` or ``"regions"``: what the segmentation holds.
        pred_convention: the raw values of a ``regions`` segmentation (``classes`` writes 1 and 2 always).
        ref_convention: the reference's convention.
        evaluator: a ``panoptica.Panoptica_Evaluator`` from the package's ``gli`` config (made when ``None``).

    Returns:
        ``{"case": ..., "<metric>_<region>": value}`` for every :data:`METRICS` stem and region ``wt``, ``tc``,
        ``et``; ``None`` for a region ``scheme`` cannot produce, ``nan`` where a value is undefined.

    Raises:
        ValueError: naming the case and the file, for an unreadable file, unknown label values or another grid.
    """
    from brats_evaluation import evaluate_single_exam

    evaluator = evaluator if evaluator is not None else _official_evaluator()
    pred_path, ref_path = Path(pred_path), Path(ref_path)
    ref = _load_labels(ref_path, case, official_label_map("regions", ref_convention), "reference")
    pred = _load_labels(pred_path, case, official_label_map(scheme, pred_convention), "segmentation")
    if pred.shape != ref.shape or not np.allclose(pred.affine, ref.affine, atol=1e-3):
        raise ValueError(
            f"case {case}: segmentation {pred_path} is on another grid than its reference {ref_path} "
            f"(shape {pred.shape} vs {ref.shape}, or a different affine); write it on the reference's grid"
        )
    # The reference's header for both: the package compares affines, and reads the voxel spacing (mm) from it.
    pred = nib.Nifti1Image(np.asanyarray(pred.dataobj), ref.affine, ref.header)
    # panoptica warns on every case about its default NSD threshold and prints notes (a citation request, which the
    # bundle docs honour) on stdout; failures come back in result["error"].
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        result = evaluate_single_exam(pred, ref, case, evaluator)
    if "error" in result:
        raise ValueError(f"case {case}: the BraTS package failed on {pred_path}: {result['error']}")
    available = region_labels(scheme, pred_convention, abbreviations=True)
    reference = np.asanyarray(ref.dataobj)
    predicted = np.asanyarray(pred.dataobj)
    spacing = tuple(float(z) for z in ref.header.get_zooms()[:3])
    official = CONVENTIONS[OFFICIAL_CONVENTION]
    row: dict = {"case": case}
    for region in ("WT", "TC", "ET"):
        key = region.lower()
        values = [official[part] for part in REGIONS[region]]
        in_ref, in_pred = np.isin(reference, values), np.isin(predicted, values)
        for stem, field in METRICS.items():
            if region not in available:
                row[f"{stem}_{key}"] = None
                continue
            value = float(result[key].get(field, math.nan))
            if not in_ref.any() and not in_pred.any() and stem in _EMPTY_RULE:
                value = _EMPTY_RULE[stem]
            elif stem == "global_hd95" and in_ref.any() and in_pred.any() and spacing != (1.0, 1.0, 1.0):
                value = float(_hd95(in_ref, in_pred, spacing))
            if "hd95" in stem and math.isinf(value):
                value = HD95_CAP_MM
            row[f"{stem}_{key}"] = value
    return row


def _hd95(reference: np.ndarray, prediction: np.ndarray, spacing: tuple[float, ...]) -> float:
    """The package's own HD95 (pooled directions), given the voxel spacing it leaves out of its volume-wise HD95."""
    from panoptica.metrics import Metric

    return Metric.HD95(reference_arr=reference, prediction_arr=prediction, voxelspacing=spacing)


def _official_evaluator():
    from brats_evaluation import config_path
    from panoptica import Panoptica_Evaluator

    with contextlib.redirect_stdout(io.StringIO()):  # a note that its gli groups share labels, as intended
        return Panoptica_Evaluator.load_from_config(str(config_path(OFFICIAL_CONFIG)))


def _references(
    reference, split: str | None, ref_convention: str | None, val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[tuple[str, Path, str]], str | None, str]:
    """(case, label file, convention) for each study to score, the split's name, and where they came from."""
    from refineformer3d.data.datalist import DatasetError, label_convention_of, load_datalist

    if not isinstance(reference, (str, Path)):  # datalist entries, as the bundle hands them over
        entries = [e for e in reference if "label" in e]
        if not entries:
            raise ValueError("no labelled studies to score in the datalist given")
        convention = ref_convention or label_convention_of(entries)
        return [(case_name(e["label"]), Path(e["label"]), convention) for e in entries], split, "datalist"
    path = Path(reference).expanduser().absolute()
    try:
        datalist = load_datalist(path, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    except DatasetError:
        top = sorted(p for p in path.glob("*.nii*") if _SUFFIX.search(p.name)) if path.is_dir() else []
        if not top:
            raise
        # A folder of label files (the package's own layout): every file is a reference, there is no split.
        convention = ref_convention or "brats"
        return [(case_name(p), p, convention) for p in top], None, str(path)
    entries = labelled_split(datalist, split or "testing")
    convention = ref_convention or label_convention_of(entries)
    return [(case_name(e["label"]), Path(e["label"]), convention) for e in entries], split or "testing", str(path)


def _prediction(pred_dir: Path, case: str) -> Path:
    names = [f"{case}{tail}{ext}" for tail in ("_seg", "-seg", "") for ext in (".nii.gz", ".nii")]
    for name in names:
        if (pred_dir / name).is_file():
            return pred_dir / name
    raise ValueError(f"case {case}: no segmentation in {pred_dir} (looked for {', '.join(names[::2])})")


def _columns() -> list[str]:
    return [f"{stem}_{region.lower()}" for region in ("WT", "TC", "ET") for stem in METRICS]


def _summary(rows: Sequence[Mapping]) -> dict[str, dict]:
    """Mean, std, median and n per column over the cases, leaving out undefined values (as pandas does)."""
    summary: dict[str, dict] = {"mean": {}, "std": {}, "median": {}, "n": {}}
    for column in _columns():
        values = [r[column] for r in rows]
        if any(v is None for v in values):
            for stat in summary:
                summary[stat][column] = None
            continue
        defined = [v for v in values if not math.isnan(v)]
        summary["mean"][column] = statistics.fmean(defined) if defined else math.nan
        summary["std"][column] = statistics.stdev(defined) if len(defined) > 1 else math.nan
        summary["median"][column] = statistics.median(defined) if defined else math.nan
        summary["n"][column] = len(defined)
    return summary


def _cell(value) -> str:
    if value is None:
        return _NOT_AVAILABLE
    if isinstance(value, float) and math.isnan(value):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _csv(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[_cell(v) for v in row] for row in rows])
    return buffer.getvalue()


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def evaluate(
    pred_dir: str | Path,
    reference,
    output_dir: str | Path,
    scheme: str = "classes",
    pred_convention: str = "brats",
    ref_convention: str | None = None,
    split: str | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> dict:
    """Scores every reference study's segmentation with the BraTS package and writes the tables.

    Args:
        pred_dir: a folder of segmentations named ``<case>_seg.nii.gz`` (what the bundle's inference writes),
            ``<case>-seg.nii.gz`` or ``<case>.nii.gz``, on their references' grids.
        reference: a dataset folder or datalist JSON (its labelled ``split`` studies), a folder of label files
            (``<case>[_seg].nii.gz``, all scored), or datalist entries with ``label`` (as the bundle passes them).
        output_dir: where the tables go.
        scheme: what the segmentations hold, ``"classes"`` or ``"regions"``.
        pred_convention: the raw values of ``regions`` segmentations.
        ref_convention: the references' convention; by default the dataset's, or ``"brats"`` for a label folder.
        split: which split of a dataset to score: ``"testing"`` by default; ``"validation"`` (the model-selection
            split) only when asked; for datalist entries, the name their tables carry.
        val_fraction: the dataset split's validation fraction (the training configuration's).
        test_fraction: the dataset split's test fraction.
        seed: the dataset split's seed.

    Returns:
        The JSON document written: settings, label mapping, per-case rows and the summary.

    Raises:
        ValueError: for an unknown scheme or convention, no studies, or any case's problem (naming case and file);
            nothing is written then.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {list(SCHEMES)}")
    for convention in (pred_convention, ref_convention):
        if convention is not None and convention not in CONVENTIONS:
            raise ValueError(f"unknown label convention {convention!r}; expected one of {sorted(CONVENTIONS)}")
    pred_dir = Path(pred_dir).expanduser().absolute()
    if not pred_dir.is_dir():
        raise ValueError(f"segmentation folder {pred_dir} does not exist")
    studies, split, source = _references(reference, split, ref_convention, val_fraction, test_fraction, seed)
    pairs = [(case, _prediction(pred_dir, case), ref_path, convention) for case, ref_path, convention in studies]
    evaluator = _official_evaluator()
    rows = []
    for case, pred_path, ref_path, convention in pairs:
        row = score_case(pred_path, ref_path, case, scheme, pred_convention, convention, evaluator)
        rows.append({"case": case, "split": split, **{k: v for k, v in row.items() if k != "case"}})
        rows[-1].update(segmentation=str(pred_path), reference=str(ref_path))
    available = region_labels(scheme, pred_convention, abbreviations=True)
    summary = _summary(rows)
    from importlib.metadata import version

    document = {
        "package": f"brats-evaluation {version('brats-evaluation')} (panoptica {version('panoptica')}), "
        f"config {OFFICIAL_CONFIG}",
        "split": split,
        "model_selection": split == "validation",
        "reference": source,
        "segmentations": str(pred_dir),
        "scheme": scheme,
        "prediction_convention": pred_convention if scheme == "regions" else None,
        "reference_convention": studies[0][2],
        "label_mapping": {
            "official": {str(v): k for k, v in CONVENTIONS[OFFICIAL_CONVENTION].items()},
            "segmentation": {str(k): v for k, v in official_label_map(scheme, pred_convention).items()},
            "reference": {str(k): v for k, v in official_label_map("regions", studies[0][2]).items()},
        },
        "regions": {
            r.lower(): REGION_NAMES[r] if r in available else f"{_NOT_AVAILABLE}: the {scheme} scheme cannot produce it"
            for r in ("WT", "TC", "ET")
        },
        "hd95_cap_mm": HD95_CAP_MM,
        "empty_region_rule": "absent from reference and segmentation: Dice 1, HD95 0 mm (global and lesion-wise)",
        "cases": rows,
        "summary": summary,
    }
    stem = f"brats_{split}" if split else "brats"
    columns = ["case", "split", *_columns(), "segmentation", "reference"]
    cases_csv = _csv(columns, [[r[c] for c in columns] for r in rows])
    summary_csv = _csv(["statistic", *_columns()], [[s, *summary[s].values()] for s in summary])
    text = json.dumps(_json_safe(document), indent=2) + "\n"
    output_dir = Path(output_dir)
    for name, content in (
        (f"{stem}_cases.csv", cases_csv),
        (f"{stem}_summary.csv", summary_csv),
        (f"{stem}.json", text),
    ):
        write_atomically(output_dir / name, lambda tmp, content=content: Path(tmp).write_text(content))
    return document


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refineformer3d.evaluate",
        description="Score segmentations with the BraTS challenge's evaluation package (brats-evaluation).",
    )
    parser.add_argument("--pred", required=True, help="folder of segmentations (<case>_seg.nii.gz or <case>.nii.gz)")
    parser.add_argument("--ref", required=True, help="dataset folder, datalist JSON, or folder of label files")
    parser.add_argument("--output", required=True, help="folder for the CSV and JSON tables")
    parser.add_argument("--scheme", default="classes", choices=SCHEMES, help="what the segmentations hold")
    parser.add_argument("--pred_convention", default="brats", choices=sorted(CONVENTIONS), help="regions' values")
    parser.add_argument("--ref_convention", choices=sorted(CONVENTIONS), help="default: the dataset's, or brats")
    parser.add_argument(
        "--split",
        choices=("testing", "validation", "training"),
        help="a dataset's split to score (default testing; validation chose the checkpoint: only when asked)",
    )
    parser.add_argument("--val_fraction", type=float, default=0.2)
    parser.add_argument("--test_fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        document = evaluate(
            args.pred,
            args.ref,
            args.output,
            scheme=args.scheme,
            pred_convention=args.pred_convention,
            ref_convention=args.ref_convention,
            split=args.split,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
        )
    except ValueError as error:  # DatasetError included: one line, naming the case and the file
        print(f"error: {error}", file=sys.stderr)
        return 2
    mean = document["summary"]["mean"]
    label = document["split"] or "all"
    print(f"{len(document['cases'])} studies ({label}) scored by {document['package']}; written to {args.output}")
    for region in ("wt", "tc", "et"):
        values = [mean[f"{stem}_{region}"] for stem in ("global_dsc", "global_hd95", "all_instance_f1")]
        shown = ", ".join(_NOT_AVAILABLE if v is None else f"{v:.4f}" for v in values)
        print(f"  {region}: Dice, HD95 (mm), lesion F1 = {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
