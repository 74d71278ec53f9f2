"""Dice when a study lacks sequences: each one missing, FLAIR + T1ce only, and all four, as inference runs them.

Each case goes once through the bundle's own inference preprocessing (``inference.json``'s ``preprocessing``: load,
1 mm RAS, crop to the brain, N4, normalisation); then, per subset, the channels it lacks are zeroed, which is what
:class:`~refineformer3d.data.transforms.FillMissingSequencesd` gives a study without those files (an all-zero
channel passes the crop, N4 and the normalisation unchanged, and the others are preprocessed as in the full study:
``tests/test_scanner_studies.py`` checks it, and ``--check_case`` compares against ``refineformer3d-segment`` on a
study folder without the file). The network, the sliding-window inferer and the postprocessing (inversion onto the
T1ce grid, labels, the lesion rules) are the bundle's, without writing files. Whole tumour and tumour core are scored
against the reference with MONAI's Dice (volume-wise, as the BraTS package's global Dice; a region empty in both
scores 1).

Usage::

    # cross-validation: each fold's test cases with that fold's weights
    python -m refineformer3d.experiments.missing_sequences --folds runs/cv/fold{0,1,2}.json \\
        --checkpoints runs/cv/f{0,1,2}/models/model.pt --output runs/missing/real.json
    # one set of weights on a dataset folder (BraTS layout), or on synthetic held-out studies
    python -m refineformer3d.experiments.missing_sequences --dataset /data/brats --checkpoints bundle/models/model.pt \\
        --output runs/missing/shipped.json
    python -m refineformer3d.experiments.missing_sequences --synthetic 8 --checkpoints bundle/models/model.pt \\
        --output runs/missing/synthetic.json

Writes a JSON of per-case rows and the mean per subset, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from refineformer3d.data.modalities import CHANNELS, DISPLAY
from refineformer3d.labels import region_labels

__all__ = ["SUBSETS", "main", "score_cases"]

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
# subset name -> the sequences it lacks
SUBSETS: dict[str, tuple[str, ...]] = {
    "all four": (),
    "no FLAIR": ("flair",),
    "no T1": ("t1",),
    "no T1ce": ("t1ce",),
    "no T2": ("t2",),
    "FLAIR + T1ce only": ("t1", "t2"),
}
REGIONS = ("WT", "TC")


def _bundle_parts(checkpoint: str | Path, device: torch.device):
    """The bundle's preprocessing, network (with ``checkpoint``), inferer and postprocessing without its writer."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose, SaveImaged

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "device": f"$torch.device({str(device)!r})"})
    network = parser.get_parsed_content("network")
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    network.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    network.eval()
    postprocessing = parser.get_parsed_content("postprocessing")
    kept = [t for t in postprocessing.transforms if not isinstance(t, SaveImaged)]
    return (
        parser.get_parsed_content("preprocessing"),
        network,
        parser.get_parsed_content("inferer"),
        Compose(kept),
    )


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    from monai.metrics import compute_dice

    p = torch.as_tensor(pred[None, None], dtype=torch.float32)
    t = torch.as_tensor(truth[None, None], dtype=torch.float32)
    return float(compute_dice(p, t, include_background=True, ignore_empty=False)[0, 0])


def segment_subsets(
    files: Sequence[str], case: str, parts, device: torch.device, subsets: dict[str, tuple[str, ...]] = SUBSETS
) -> dict[str, np.ndarray]:
    """The label map (X, Y, Z) on the T1ce grid per subset, from one pass of the preprocessing."""
    from monai.data import MetaTensor

    preprocessing, network, inferer, postprocessing = parts
    data = preprocessing({"image": list(files), "case": case})
    labels = {}
    for name, missing in subsets.items():
        image = data["image"].clone()
        for modality in missing:
            image[CHANNELS.index(modality)] = 0  # as FillMissingSequencesd leaves a missing sequence
        with torch.no_grad():
            logits = inferer(image[None].to(device), network)[0].cpu()
        pred = MetaTensor(logits.as_tensor(), meta=dict(image.meta))
        out = postprocessing({"image": image, "pred": pred, "brain_mask": data["brain_mask"].clone()})
        labels[name] = np.rint(out["pred"][0].numpy()).astype(np.uint8)
    return labels


def score_cases(
    cases: Sequence[dict],
    checkpoint: str | Path,
    device: torch.device,
    subsets: dict[str, tuple[str, ...]] = SUBSETS,
    convention: str = "brats",
    log: Path | None = None,
) -> list[dict]:
    """Rows ``{case, subset, checkpoint, WT, TC}`` for ``cases`` (``{"case", "image": four files, "label"}``), each
    also appended to the JSON-lines file ``log`` as soon as its case is done (a long run leaves what it measured)."""
    parts = _bundle_parts(checkpoint, device)
    predicted = region_labels("classes", abbreviations=True)
    truth_labels = region_labels("regions", convention, abbreviations=True)
    rows = []
    for entry in cases:
        start = time.perf_counter()
        labels = segment_subsets(entry["image"], entry["case"], parts, device, subsets)
        truth = np.asanyarray(nib.load(entry["label"]).dataobj)
        for name, label in labels.items():
            row = {"case": entry["case"], "subset": name, "checkpoint": str(checkpoint)}
            for region in REGIONS:
                row[region] = _dice(np.isin(label, predicted[region]), np.isin(truth, truth_labels[region]))
            rows.append(row)
        seconds = time.perf_counter() - start
        if log is not None:
            with open(log, "a") as handle:
                handle.writelines(json.dumps(r) + "\n" for r in rows[-len(labels) :])
        shown = "  ".join(f"{r['subset']}: {r['WT']:.3f}/{r['TC']:.3f}" for r in rows[-len(labels) :])
        print(f"{entry['case']} ({seconds:.0f} s) WT/TC  {shown}", flush=True)
    return rows


def summary(rows: Sequence[dict], subsets: Sequence[str] = tuple(SUBSETS)) -> dict[str, dict[str, float]]:
    """Mean, std and n of WT and TC Dice per subset, and the change from all four sequences."""
    table = {}
    for name in subsets:
        chosen = [r for r in rows if r["subset"] == name]
        if not chosen:
            continue
        table[name] = {"n": len(chosen)}
        for region in REGIONS:
            values = np.array([r[region] for r in chosen])
            table[name][f"{region}_mean"] = float(values.mean())
            table[name][f"{region}_std"] = float(values.std())
    base = table.get("all four")
    for values in table.values():
        for region in REGIONS:
            if base is not None:
                values[f"{region}_change"] = values[f"{region}_mean"] - base[f"{region}_mean"]
    return table


def markdown(table: dict[str, dict[str, float]]) -> str:
    lines = ["| sequences | WT Dice | TC Dice | n |", "|---|---|---|---|"]
    for name, v in table.items():
        shown = name != "all four"
        change = {r: f" ({v[f'{r}_change']:+.3f})" if shown and f"{r}_change" in v else "" for r in REGIONS}
        cells = [f"{v[f'{r}_mean']:.3f} +- {v[f'{r}_std']:.3f}{change[r]}" for r in REGIONS]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {v['n']} |")
    return "\n".join(lines)


def _fold_cases(path: Path) -> list[dict]:
    from refineformer3d.data.datalist import load_datalist

    return [e for e in load_datalist(path, "testing") if "label" in e]


def _dataset_cases(folder: Path) -> list[dict]:
    from refineformer3d.data.datalist import load_datalist

    datalist = load_datalist(folder, val_fraction=0.0, test_fraction=0.0, verify=False)  # absolute paths
    return [e for split in ("training", "validation", "testing") for e in datalist[split] if "label" in e]


def _synthetic_cases(count: int, folder: Path, seed: int, shape: Sequence[int] | None = None) -> list[dict]:
    """Held-out synthetic studies (the generator's validation stream, which training never draws), at ``shape``
    (default BraTS's 240 x 240 x 155)."""
    from refineformer3d.data import make_case

    cases = []
    for index in range(1, count + 1):
        case = make_case(seed=seed, index=index, validation=True, **({"shape": shape} if shape else {}))
        files = []
        for modality, image in zip(CHANNELS, case.images):
            path = folder / f"{case.name}_{modality}.nii.gz"
            nib.save(nib.Nifti1Image(image, case.affine), path)
            files.append(str(path))
        label = folder / f"{case.name}_seg.nii.gz"
        nib.save(nib.Nifti1Image(case.label, case.affine), label)
        cases.append({"case": case.name, "image": files, "label": str(label)})
    return cases


def check_case(entry: dict, checkpoint: str | Path, missing: str, output: Path) -> dict:
    """Compares this module's labels for a study lacking ``missing`` with ``refineformer3d-segment`` run on a study
    folder that lacks that file (links to the others): the fraction of voxels whose labels differ."""
    from refineformer3d.segment import main as segment

    device = torch.device("cpu")
    parts = _bundle_parts(checkpoint, device)
    labels = segment_subsets(entry["image"], entry["case"], parts, device, {"x": (missing,)})
    study = output / "study" / entry["case"]
    study.mkdir(parents=True, exist_ok=True)
    for modality, path in zip(CHANNELS, entry["image"]):
        if modality != missing:
            (study / Path(path).name).unlink(missing_ok=True)
            (study / Path(path).name).symlink_to(Path(path).absolute())
    out = output / "segment"
    code = segment(["-i", str(study), "-o", str(out), "--device", "cpu", "--model", str(checkpoint)])
    if code != 0:
        raise RuntimeError(f"refineformer3d-segment exited with {code}")
    written = np.asanyarray(nib.load(out / f"{entry['case']}_seg.nii.gz").dataobj)
    differ = float(np.mean(written != labels["x"]))
    return {"case": entry["case"], "missing": DISPLAY[missing], "voxels_differing": differ}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="refineformer3d-missing-sequences",
        description="Dice of a study lacking sequences: each one missing, FLAIR + T1ce only, and all four.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folds", nargs="+", help="datalist JSONs; each fold's testing cases with its checkpoint")
    source.add_argument("--dataset", help="a BraTS dataset folder; every labelled case with the one checkpoint")
    source.add_argument("--synthetic", type=int, help="this many held-out synthetic studies")
    parser.add_argument("--checkpoints", nargs="+", required=True, help="one per fold, or one")
    parser.add_argument("--output", required=True, help="JSON to write")
    parser.add_argument("--seed", type=int, default=0, help="synthetic: the generator's seed")
    parser.add_argument("--shape", type=int, nargs=3, help="synthetic: the grid (default BraTS's 240 240 155)")
    parser.add_argument("--limit", type=int, help="at most this many cases (per fold)")
    parser.add_argument("--check_case", choices=CHANNELS, help="only compare with refineformer3d-segment on one case")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip_done", action="store_true", help="leave out cases already in the JSON-lines log")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        if args.folds:
            if len(args.folds) != len(args.checkpoints):
                parser.error("--folds and --checkpoints must pair up")
            groups = [(_fold_cases(Path(f))[: args.limit], c) for f, c in zip(args.folds, args.checkpoints)]
        elif args.dataset:
            groups = [(_dataset_cases(Path(args.dataset))[: args.limit], args.checkpoints[0])]
        else:
            cases = _synthetic_cases(args.synthetic, Path(scratch), args.seed, args.shape)
            groups = [(cases, args.checkpoints[0])]
        if args.check_case:
            (entry, *_), checkpoint = groups[0]
            result = check_case(entry, checkpoint, args.check_case, output.parent / "check")
            output.write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps(result))
            return 0
        log = output.with_suffix(".jsonl")
        done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() and args.skip_done else []
        if not args.skip_done:
            log.unlink(missing_ok=True)
        rows = list(done)
        for cases, checkpoint in groups:
            todo = [c for c in cases if c["case"] not in {r["case"] for r in done}]
            rows += score_cases(todo, checkpoint, torch.device(args.device), log=log)
    table = summary(rows)
    output.write_text(json.dumps({"command": sys.argv, "summary": table, "cases": rows}, indent=2) + "\n")
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
