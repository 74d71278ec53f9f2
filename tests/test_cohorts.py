"""A cohort over several processes (``multi_gpu_inference.json`` under torchrun, gloo on CPU) or jobs (``num_parts``,
``part_id``): shares without overlap, the same segmentations as one process, a summary of every study, a killed run
resumed without redoing what it finished, and a study that fails mid-run skipped while the batch goes on."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import CONFIGS, REPO, bundle_workflow
from corpus import copy_case

from refineformer3d.data import InputError
from refineformer3d.handlers import cohort_part
from refineformer3d.io import write_atomically

INFERENCE = str(CONFIGS / "inference.json")
MULTI_GPU_INFERENCE = str(CONFIGS / "multi_gpu_inference.json")
TRAIN = str(CONFIGS / "train.json")
EVALUATE = str(CONFIGS / "evaluate.json")
MULTI_GPU_EVALUATE = str(CONFIGS / "multi_gpu_evaluate.json")
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """Random weights of the tiny variant: the cohort machinery, not the model, is under test."""
    from refineformer3d.networks import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(create_model("refineformer3d_tiny", in_channels=4, out_channels=3).state_dict(), path)
    return path


def _fast(weights: Path) -> dict:
    return {
        "network_def#_target_": "refineformer3d.networks.create_model",
        "network_def#name": "refineformer3d_tiny",
        "ckpt_path": str(weights),
        "roi_size": [32, 32, 32],
        "sw_batch_size": 4,
        "num_workers": 0,
        "device": "cpu",
        "bias_correction": False,
    }


def _cohort(tiny_brats: Path, folder: Path, count: int) -> Path:
    cases = sorted((tiny_brats / "Brats17TrainingData" / "HGG").iterdir())
    for i in range(count):
        copy_case(cases[i % len(cases)], folder, f"Brats17_C{i:02d}_1")
    return folder


def _infer(folder: Path, out: Path, weights: Path, **override):
    wf = bundle_workflow(
        INFERENCE, REPO / "bundle", folder, "infer", output_dir=str(out), **{**_fast(weights), **override}
    )
    wf.run()
    return wf


def _torchrun(folder: Path, out: Path, weights: Path, nproc: int = 2, **popen) -> list[str]:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", str(nproc),
        "-m", "monai.bundle", "run", "--config_file", f"['{INFERENCE}','{MULTI_GPU_INFERENCE}']",
        "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"),
        "--dataset_dir", str(folder), "--output_dir", str(out),
    ]  # fmt: skip
    for key, value in _fast(weights).items():
        command += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    return command


def _descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _summary(out: Path) -> list[dict]:
    with open(out / "cohort_summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert json.loads((out / "cohort_summary.json").read_text())["studies"][0]["study"] == rows[0]["study"]
    return rows


def _labels(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(out.glob("*_seg.nii.gz"))}


def test_cohort_parts_cover_the_sorted_studies_once_without_padding():
    names = [f"case{i:02d}" for i in (7, 3, 9, 0, 4, 1, 8)]
    parts = [cohort_part(names, 3, r) for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(names)  # every study once: no overlap, no padding
    assert [len(p) for p in parts] == [3, 2, 2]
    assert parts == [cohort_part(list(reversed(names)), 3, r) for r in range(3)]  # whatever the listing order
    assert cohort_part(names, 1, 0) == sorted(names)
    assert cohort_part(names[:1], 3, 2) == []  # more processes than studies: an empty share
    for num_parts, part_id in ((0, 0), (2, 2), (2, -1), (1.5, 0)):
        with pytest.raises(ValueError, match="num_parts|part_id"):
            cohort_part(names, num_parts, part_id)


def test_job_array_parts_write_the_cohort_once_and_resume_finds_done_studies(tiny_brats, tiny_weights, tmp_path):
    folder = _cohort(tiny_brats, tmp_path / "studies", 3)
    out = tmp_path / "out"
    for part_id in (0, 1):
        _infer(folder, out, tiny_weights, num_parts=2, part_id=part_id, write_summary=True)
    assert sorted(_labels(out)) == [f"Brats17_C{i:02d}_1_seg.nii.gz" for i in range(3)]
    parts = {}
    for part_id in (0, 1):
        with open(out / f"cohort_summary_part-{part_id}-of-2.csv", newline="") as f:
            parts[part_id] = {row["study"]: row for row in csv.DictReader(f)}
    assert sorted(parts[0]) == ["Brats17_C00_1", "Brats17_C02_1"] and sorted(parts[1]) == ["Brats17_C01_1"]
    assert all(row["status"] == "written" and float(row["seconds"]) > 0 for p in parts.values() for row in p.values())

    # A killed run: one segmentation gone, another's temporary file left behind; the rerun redoes only the first.
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*_seg.nii.gz")}
    (out / "Brats17_C01_1_seg.nii.gz").unlink()
    stale = out / ".Brats17_C01_1_seg.nii.gz.0123456789ab.nii.gz"
    stale.write_bytes(b"half a segmentation")
    _infer(folder, out, tiny_weights, resume=True, write_summary=True)
    rows = {row["study"]: row for row in _summary(out)}
    assert {name: row["status"] for name, row in rows.items()} == {
        "Brats17_C00_1": "found done",
        "Brats17_C01_1": "written",
        "Brats17_C02_1": "found done",
    }
    assert not stale.exists() and not [p for p in out.iterdir() if p.name.startswith(".")]
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*_seg.nii.gz")}
    assert {k: v for k, v in after.items() if k != "Brats17_C01_1_seg.nii.gz"} == {
        k: v for k, v in before.items() if k != "Brats17_C01_1_seg.nii.gz"
    }
    _infer(folder, out, tiny_weights, resume=True, write_summary=True)  # all done: nothing to do, and no error
    assert {row["status"] for row in _summary(out)} == {"found done"}
    with pytest.raises(InputError, match="exists"):  # without resume, existing outputs are still refused
        _infer(folder, out, tiny_weights)


def test_a_study_that_fails_mid_run_is_counted_and_the_batch_goes_on(tiny_brats, tiny_weights, tmp_path):
    folder = _cohort(tiny_brats, tmp_path / "studies", 4)
    out = tmp_path / "out"
    wf = bundle_workflow(
        INFERENCE, REPO / "bundle", folder, "infer", output_dir=str(out), write_summary=True, **_fast(tiny_weights)
    )
    (folder / "Brats17_C01_1" / "Brats17_C01_1_t2.nii.gz").unlink()  # gone after the checks, before the engine
    flair = folder / "Brats17_C02_1" / "Brats17_C02_1_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:2000])  # truncated after the checks: a reader error
    with pytest.raises(InputError) as failure:
        wf.run()
    assert failure.value.code == 2
    message = str(failure.value)
    assert message.startswith("2 of 4 studies written; skipped 2 (Brats17_C01_1, Brats17_C02_1)")
    assert "case Brats17_C01_1: " in message and "Brats17_C01_1_t2.nii.gz: failed during inference" in message
    assert "case Brats17_C02_1: " in message and "Brats17_C02_1_flair.nii.gz: failed during inference" in message
    assert sorted(_labels(out)) == ["Brats17_C00_1_seg.nii.gz", "Brats17_C03_1_seg.nii.gz"]
    rows = {row["study"]: row for row in _summary(out)}
    assert [rows[f"Brats17_C{i:02d}_1"]["status"] for i in range(4)] == ["written", "failed", "failed", "written"]
    assert "t2.nii.gz: failed during inference" in rows["Brats17_C01_1"]["reason"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_ctrl_c_stops_the_batch(tiny_brats, tiny_weights, tmp_path):
    folder = _cohort(tiny_brats, tmp_path / "studies", 2)
    wf = bundle_workflow(INFERENCE, REPO / "bundle", folder, "infer", output_dir=str(tmp_path / "out"),
                         **_fast(tiny_weights))  # fmt: skip
    evaluator = wf.parser.get_parsed_content("evaluator")

    def interrupt(engine):
        raise KeyboardInterrupt

    from ignite.engine import Events

    evaluator.add_event_handler(Events.ITERATION_STARTED, interrupt)
    with pytest.raises(KeyboardInterrupt):
        wf.run()
    assert not list((tmp_path / "out").glob("*_seg.nii.gz"))


def _rank(rank: int, world_size: int, port: int, configs: list[str], root: Path, data: Path, **override) -> None:
    """One process of a ``torch.distributed`` run as torchrun starts it (its environment), in a forked child."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    wf = bundle_workflow(configs, root, data, "infer" if configs[0] == INFERENCE else "eval", **override)
    try:
        wf.run()
    finally:
        wf.finalize()


def _forked_ranks(*args, **override) -> list[int]:
    """Runs :func:`_rank` in two forked processes (they inherit the imports: no 10 s start each); their exit codes."""
    import multiprocessing
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = multiprocessing.get_context("fork")
    ranks = [context.Process(target=_rank, args=(r, 2, port, *args), kwargs=override) for r in (0, 1)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(300)
    return [process.exitcode for process in ranks]


def test_two_gloo_processes_share_a_cohort_and_the_first_writes_its_summary(tiny_brats, tiny_weights, tmp_path):
    """The fast check of multi_gpu_inference.json (forked processes; the slow test below launches torchrun)."""
    folder = _cohort(tiny_brats, tmp_path / "studies", 3)
    configs = [INFERENCE, MULTI_GPU_INFERENCE]
    codes = _forked_ranks(configs, REPO / "bundle", folder, output_dir=str(tmp_path / "two"), **_fast(tiny_weights))
    assert codes == [0, 0]
    _infer(folder, tmp_path / "one", tiny_weights)
    one, two = _labels(tmp_path / "one"), _labels(tmp_path / "two")
    assert sorted(two) == sorted(one) and all(np.array_equal(one[name], two[name]) for name in one)
    rows = _summary(tmp_path / "two")
    assert [(row["study"], row["status"], row["part"]) for row in rows] == [
        ("Brats17_C00_1", "written", "0"),
        ("Brats17_C01_1", "written", "1"),
        ("Brats17_C02_1", "written", "0"),
    ]


@pytest.mark.slow  # three torchrun launches (two processes each) and a one-process run: about 90 s on 2 CPUs
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds torchrun's workers in /proc to kill them")
def test_two_gloo_processes_write_what_one_process_writes_and_a_killed_run_resumes(tiny_brats, tiny_weights, tmp_path):
    folder = _cohort(tiny_brats, tmp_path / "studies", 5)
    _infer(folder, tmp_path / "one", tiny_weights)
    one = _labels(tmp_path / "one")
    assert len(one) == 5

    out = tmp_path / "two"
    result = subprocess.run(_torchrun(folder, out, tiny_weights), cwd=tmp_path, env=ENV, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    two = _labels(out)
    assert sorted(two) == sorted(one)
    assert all(np.array_equal(one[name], two[name]) for name in one)
    rows = _summary(out)
    assert [row["study"] for row in rows] == [f"Brats17_C{i:02d}_1" for i in range(5)]
    assert {row["status"] for row in rows} == {"written"} and {row["part"] for row in rows} == {"0", "1"}

    # Killed (SIGKILL, torchrun and its workers) once a study is written, then the same command again.
    killed = tmp_path / "killed"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    process = subprocess.Popen(
        _torchrun(folder, killed, tiny_weights), cwd=tmp_path, env=ENV, start_new_session=True, **quiet
    )
    try:
        deadline = time.monotonic() + 300
        while not list(killed.glob("*_seg.nii.gz")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for pid in [process.pid, *_descendants(process.pid)]:  # torchrun's workers do not share its process group
            os.kill(pid, signal.SIGKILL)
        process.wait()
    done = {p.name: p.stat().st_mtime_ns for p in killed.glob("*_seg.nii.gz")}
    assert done and not (killed / "cohort_summary.csv").exists()
    result = subprocess.run(_torchrun(folder, killed, tiny_weights), cwd=tmp_path, env=ENV, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    rows = {row["study"]: row["status"] for row in _summary(killed)}
    assert sorted(rows) == [f"Brats17_C{i:02d}_1" for i in range(5)]
    assert {n for n, s in rows.items() if s == "found done"} == {n.removesuffix("_seg.nii.gz") for n in done}
    assert {p.name: p.stat().st_mtime_ns for p in killed.glob("*_seg.nii.gz") if p.name in done} == done
    resumed = _labels(killed)
    assert sorted(resumed) == sorted(one) and all(np.array_equal(one[n], resumed[n]) for n in one)
    assert not [p for p in killed.iterdir() if p.name.startswith(".")]


def test_partial_files_of_a_killed_write_are_found_by_name(tmp_path):
    from refineformer3d.io import partial_files

    write_atomically(tmp_path / "a_seg.nii.gz", lambda tmp: Path(tmp).write_bytes(b"done"))
    stale = [tmp_path / ".a_seg.nii.gz.0123456789ab.nii.gz", tmp_path / ".checkpoint_epoch=2.pt.abcdef012345.pt"]
    for path in stale:
        path.write_bytes(b"half")
    (tmp_path / ".hidden_by_the_user.nii.gz").write_bytes(b"not ours")
    assert partial_files(tmp_path) == sorted(stale)
    assert partial_files(tmp_path, ["a_seg.nii.gz"]) == stale[:1]
    assert partial_files(tmp_path / "absent") == []


@pytest.mark.slow  # two evaluations of the train.json pipeline: 10-30 s on 2 shared CPUs
def test_two_gloo_processes_evaluate_a_labelled_cohort_and_score_it_once(tiny_brats, tiny_weights, tmp_path):
    """multi_gpu_evaluate.json: each process segments its share, the first scores all with the BraTS package."""
    fast = {k: v for k, v in _fast(tiny_weights).items() if k != "ckpt_path"}
    fast.update(num_samples=1, cache_rate=0.0, test_fraction=0.4)  # three labelled test studies of eight
    results = {}
    for name in ("one", "two"):
        root = tmp_path / name
        (root / "models").mkdir(parents=True)
        (root / "models" / "model.pt").write_bytes(tiny_weights.read_bytes())
        if name == "one":
            bundle_workflow([TRAIN, EVALUATE], root, tiny_brats, "eval", **fast).run()
        else:
            assert _forked_ranks([TRAIN, EVALUATE, MULTI_GPU_EVALUATE], root, tiny_brats, **fast) == [0, 0]
        results[name] = json.loads((root / "eval" / "brats_testing.json").read_text())
    scores = {  # every number of every case; the files' paths differ by the root
        name: {c["case"]: {k: v for k, v in c.items() if not isinstance(v, str)} for c in result["cases"]}
        for name, result in results.items()
    }
    assert len(scores["one"]) == 3 and scores["two"] == scores["one"]
    segmentations = {p.name for p in (tmp_path / "two" / "eval" / "segmentations").iterdir()}
    assert segmentations == {p.name for p in (tmp_path / "one" / "eval" / "segmentations").iterdir()}
