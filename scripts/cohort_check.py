"""The cohort check of docs/cohorts.md: synthetic studies through one process and through ``torchrun`` with
``multi_gpu_inference.json``, compared voxel for voxel; then a torchrun run killed (SIGKILL) midway and rerun.

Run from the repository root (Linux: it finds torchrun's workers in /proc to kill them)::

    PYTHONPATH=$PWD nice -n 10 python scripts/cohort_check.py --studies 20 --shape 64 64 48 --nproc 2 --work /tmp/cohort

Prints the wall time of each run (studies per minute follow), whether the segmentations are identical, the summary,
and what the resumed run found done. Logs go to ``--work``.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

CONFIGS = "bundle/configs"


def _descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            pass
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _labels(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(out.glob("*_seg.nii.gz"))}


def _summary(out: Path) -> dict[str, str]:
    with open(out / "cohort_summary.csv", newline="") as f:
        return {row["study"]: row["status"] for row in csv.DictReader(f)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 48])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--kill_after", type=int, default=8, help="segmentations written before the SIGKILL")
    parser.add_argument("--work", default="/tmp/cohort")
    args = parser.parse_args()
    from refineformer3d.data import make_dataset

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    make_dataset(work / "data", cases=0, validation_cases=args.studies, seed=0, shape=tuple(args.shape))
    data = work / "data" / "Brats17ValidationData"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [f"--meta_file={CONFIGS}/metadata.json", f"--logging_file={CONFIGS}/logging.conf",
              f"--dataset_dir={data}", "--device=cpu"]  # fmt: skip
    one = [sys.executable, "-m", "monai.bundle", "run", f"--config_file={CONFIGS}/inference.json", *common,
           f"--output_dir={work / 'one'}", "--write_summary=True"]  # fmt: skip

    def torchrun(out: Path) -> list[str]:
        configs = f"['{CONFIGS}/inference.json','{CONFIGS}/multi_gpu_inference.json']"
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                f"--nproc_per_node={args.nproc}", "-m", "monai.bundle", "run", f"--config_file={configs}", *common,
                f"--output_dir={out}"]  # fmt: skip

    def timed(command: list[str], log: str) -> float:
        start = time.monotonic()
        with open(work / log, "w") as f:
            code = subprocess.run(command, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        seconds = time.monotonic() - start
        print(f"{log}: exit {code}, {seconds:.0f} s, {args.studies / seconds * 60:.2f} studies per minute", flush=True)
        return seconds

    timed(one, "one.log")
    timed(torchrun(work / "shared"), "shared.log")
    single, shared = _labels(work / "one"), _labels(work / "shared")
    same = sorted(single) == sorted(shared) and all(np.array_equal(single[n], shared[n]) for n in single)
    rows = _summary(work / "shared")
    print(f"{len(shared)} segmentations, identical to one process: {same}; summary: {len(rows)} rows, "
          f"statuses {sorted(set(rows.values()))}", flush=True)  # fmt: skip

    killed = work / "killed"
    with open(work / "killed.log", "w") as log:
        process = subprocess.Popen(torchrun(killed), env=env, stdout=log, stderr=subprocess.STDOUT)
        while len(list(killed.glob("*_seg.nii.gz"))) < args.kill_after and process.poll() is None:
            time.sleep(0.2)
        for pid in [process.pid, *_descendants(process.pid)]:
            os.kill(pid, signal.SIGKILL)
        process.wait()
    done = {p.name: p.stat().st_mtime_ns for p in killed.glob("*_seg.nii.gz")}
    print(f"killed with {len(done)} segmentations written", flush=True)
    timed(torchrun(killed), "resumed.log")
    rows = _summary(killed)
    found = {name for name, status in rows.items() if status == "found done"}
    resumed = _labels(killed)
    identical = sorted(resumed) == sorted(single) and all(np.array_equal(single[n], resumed[n]) for n in single)
    untouched = all((killed / name).stat().st_mtime_ns == mtime for name, mtime in done.items())
    hidden = [p.name for p in killed.iterdir() if p.name.startswith(".")]
    print(f"resumed: {len(rows)} rows, {len(found)} found done (= those written before the kill: "
          f"{found == {n.removesuffix('_seg.nii.gz') for n in done}}), untouched: {untouched}; {len(resumed)} "
          f"segmentations, identical to one process: {identical}; hidden files left: {hidden}")  # fmt: skip


if __name__ == "__main__":
    main()
