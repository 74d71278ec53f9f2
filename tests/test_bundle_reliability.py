"""The bundle's commands on bad and hostile input, interrupted and long runs: a bad study is named and skipped, every
other one written, the exit status non-zero; nothing half-written; a killed training resumes to the same weights;
memory stays flat."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, REPO
from corpus import CORPUS, case_name, copy_case, file_of, four_d_studies
from monai.bundle import ConfigWorkflow

from refineformer3d.data import InputError
from refineformer3d.handlers import StudyBatch

INFERENCE = str(CONFIGS / "inference.json")
TRAIN = str(CONFIGS / "train.json")
LOGGING = str(CONFIGS / "logging.conf")
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def good_case(tiny_brats) -> Path:
    return sorted((tiny_brats / "Brats17TrainingData" / "HGG").iterdir())[0]


def _bundle(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", "run", "--logging_file", LOGGING, *args]
    return subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_inference_over_the_corpus_writes_every_good_study_and_names_each_bad_one(good_case, tmp_path):
    folder = tmp_path / "studies" / "Brats17ValidationData"
    copy_case(good_case, folder, "Brats17_GOOD_1")
    expected = {}
    for corruption in CORPUS:
        if corruption.name == "unreadable_file" and os.geteuid() == 0:
            continue
        bad = copy_case(good_case, folder, case_name(corruption))
        pattern = corruption.apply(bad, tmp_path / "outside")
        if corruption.inference and pattern is not None:
            expected[bad.name] = pattern
    before = {p: p.lstat().st_mtime_ns for p in (tmp_path / "studies").rglob("*")}
    out = tmp_path / "out"
    result = _bundle(
        "--config_file", INFERENCE, "--dataset_dir", str(folder), "--output_dir", str(out),
        "--device", "cpu", "--num_workers", "0",
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 2, log[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    skipped = {m.group(1): line for line in log.splitlines() if (m := re.search(r"skipped case (\S+):", line))}
    assert set(skipped) == set(expected), log[-3000:]
    for name, pattern in expected.items():
        assert re.search(pattern, skipped[name]), (name, skipped[name])
        assert name in last
    assert last.startswith("error: ") and "studies written; skipped" in last
    good = {f"{case}_seg.nii.gz" for case in os.listdir(folder) if case not in expected}
    assert {p.name for p in out.iterdir()} == good  # every other study written; no partial or temporary file
    assert "Traceback" not in log
    assert {p: p.lstat().st_mtime_ns for p in (tmp_path / "studies").rglob("*")} == before  # inputs untouched


def test_studies_without_flair_nor_t1ce_are_skipped_at_listing_and_named_at_the_end(good_case, tmp_path):
    folder = tmp_path / "studies"
    copy_case(good_case, folder, "Brats17_GOOD_1")
    expected, lacking = {}, []
    for corruption in CORPUS:
        if corruption.name in ("missing_modality", "folder_in_place_of_file", "no_flair_nor_t1ce"):
            pattern = corruption.apply(copy_case(good_case, folder, case_name(corruption)), None)
            if corruption.inference:
                expected[case_name(corruption)] = pattern
            else:  # a T1ce missing: segmented without it
                lacking.append(case_name(corruption))
    plain = folder / "plain_study"
    plain.mkdir()
    for part, modality in (("flair", "flair"), ("t1", "t1"), ("t1ce", "t1ce"), ("t2", "t2"), ("t1ce", "t1gd")):
        os.symlink(file_of(good_case, part), plain / f"{modality}.nii.gz")  # two candidates for T1ce
    batch = StudyBatch(folder, tmp_path / "out")
    assert sorted(s["case"] for s in batch.studies) == sorted(["Brats17_GOOD_1", *lacking])
    for study in batch.studies:
        assert (study["image"][2] is None) == (study["case"] in lacking)
    for name, pattern in expected.items():
        assert re.search(pattern, batch.skipped[name])
    assert batch.skipped["plain_study"].startswith("study plain_study: 2 candidates for T1ce")
    with pytest.raises(InputError, match=r"0 of 5 studies written; skipped 2 \(") as failure:
        batch.finish()  # before any run: the usable studies are not written yet
    assert failure.value.code == 2 and all(name in str(failure.value) for name in [*expected, "plain_study"])
    assert not (tmp_path / "out").exists()
    # One study on its own is no batch: its one-line error, as before.
    (name,) = expected
    with pytest.raises(InputError, match=f"case {name}: neither .*_flair.nii.gz nor .*_t1ce.nii.gz"):
        StudyBatch(folder / name, tmp_path / "out")


def test_four_d_studies_are_checked_one_by_one(good_case, tmp_path):
    expected = four_d_studies(good_case, tmp_path / "studies")
    batch = StudyBatch(tmp_path / "studies", tmp_path / "out")
    assert [Path(s["image"]).name for s in batch.studies] == ["good.nii.gz"]
    for name, pattern in expected.items():
        if pattern is not None:
            assert re.search(pattern, batch.skipped[name.removesuffix(".nii.gz")])
    with pytest.raises(InputError, match=r"0 of 4 studies written; skipped 3 \(five_channels, one_volume, three_ch"):
        batch.finish()


def test_outputs_are_never_overwritten_nor_written_into_the_input_folder_unless_asked(good_case, tmp_path):
    folder = tmp_path / "studies"
    copy_case(good_case, folder, "Brats17_A_1")
    out = tmp_path / "out"
    out.mkdir()
    (out / "Brats17_A_1_seg.nii.gz").write_bytes(b"an earlier result")
    with pytest.raises(InputError, match=r"none of 1 studies is usable: .*Brats17_A_1_seg.nii.gz exists \(pass --ove"):
        StudyBatch(folder, out)
    assert len(StudyBatch(folder, out, overwrite=True).studies) == 1
    names = ["{study}_seg.nii.gz", "{study}_report.json"]
    (out / "Brats17_A_1_seg.nii.gz").unlink()
    (out / "Brats17_A_1_report.json").write_text("{}")
    with pytest.raises(InputError, match="Brats17_A_1_report.json exists"):
        StudyBatch(folder, out, output_names=names)
    for inside in (folder, folder / "Brats17_A_1", folder / "segmentations"):
        with pytest.raises(InputError, match="inside the input folder"):
            StudyBatch(folder, inside)
    assert len(StudyBatch(folder, folder / "segmentations", write_into_input=True).studies) == 1


def test_a_study_that_fails_during_the_run_is_named_and_nothing_is_half_written(good_case, tmp_path):
    folder = tmp_path / "studies"
    for name in ("Brats17_A_1", "Brats17_B_1", "Brats17_C_1"):
        copy_case(good_case, folder, name)
    out = tmp_path / "out"
    wf = ConfigWorkflow(
        config_file=INFERENCE, logging_file=LOGGING, workflow_type="infer", dataset_dir=str(folder),
        output_dir=str(out), device="cpu", num_workers=0,
    )  # fmt: skip
    wf.initialize()
    assert len(wf.parser.get_parsed_content("study_batch").studies) == 3
    file_of(folder / "Brats17_B_1", "t2").unlink()  # gone after the check, before the engine reads it
    with pytest.raises(InputError, match="case Brats17_B_1: .*Brats17_B_1_t2.nii.gz: failed during inference") as e:
        wf.run()
    assert str(e.value).startswith("2 of 3 studies written; skipped 1 (Brats17_B_1)")
    assert sorted(p.name for p in out.iterdir()) == ["Brats17_A_1_seg.nii.gz", "Brats17_C_1_seg.nii.gz"]  # goes on


@pytest.mark.slow  # a command-line start; the same check runs in-process for the whole corpus in test_data_validation
def test_training_on_a_bad_dataset_ends_with_one_line_naming_the_case_and_file(good_case, tmp_path):
    hgg = tmp_path / "data" / "Brats17TrainingData" / "HGG"
    for i in (1, 2, 3):
        copy_case(good_case, hgg, f"Brats17_GOOD_{i}")
    (corruption,) = [c for c in CORPUS if c.name == "nan_voxels"]
    pattern = corruption.apply(copy_case(good_case, hgg, case_name(corruption)), tmp_path / "outside")
    result = _bundle(
        "training", "--config_file", TRAIN, "--dataset_dir", str(tmp_path / "data"),
        "--bundle_root", str(tmp_path / "run"), "--device", "cpu", "--epochs", "1",
    )  # fmt: skip
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert re.search(pattern, last) and last.startswith("error: ")
    assert len((result.stdout + result.stderr).splitlines()) < 40 and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


# Interrupted training: SIGKILL in the middle of an epoch, resume, and the same weights as an uninterrupted run.

_TINY = [
    "--network_def#_target_", "refineformer3d.networks.create_model", "--network_def#name", "refineformer3d_tiny",
    "--roi_size", "[32,32,32]", "--num_samples", "1", "--num_workers", "0", "--sw_batch_size", "4",
    "--warmup_epochs", "1", "--device", "cpu", "--cache_rate", "1.0", "--epochs", "3",
]  # fmt: skip


def _train_command(dataset: Path, root: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, "--logging_file", LOGGING,
        "--dataset_dir", str(dataset), "--bundle_root", str(root), *_TINY, *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_training_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(tiny_brats, tmp_path):
    whole = subprocess.run(_train_command(tiny_brats, tmp_path / "whole"), cwd=REPO, env=ENV, capture_output=True)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _train_command(tiny_brats, killed), cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        for line in process.stdout:  # StatsHandler logs each iteration: "Epoch: 3/3, Iter: 2/6 -- train_loss: ..."
            if re.search(r"Epoch: 3/3, Iter: 2/", line):
                break
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert [p.name for p in (killed / "models").glob("checkpoint_epoch=*.pt")] == ["checkpoint_epoch=2.pt"]
    resumed = subprocess.run(
        _train_command(tiny_brats, killed, "--resume", "True"), cwd=REPO, env=ENV, capture_output=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "whole" / "models" / "checkpoint_epoch=3.pt", weights_only=True)
    b = torch.load(killed / "models" / "checkpoint_epoch=3.pt", weights_only=True)
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == 3 * a["trainer"]["epoch_length"]
    assert a["best_metric"]["best_metric_epoch"] == b["best_metric"]["best_metric_epoch"]
    assert a["best_metric"]["best_metric"] == pytest.approx(b["best_metric"]["best_metric"], abs=0)
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    best_a = torch.load(tmp_path / "whole" / "models" / "model.pt", weights_only=True)
    best_b = torch.load(killed / "models" / "model.pt", weights_only=True)
    for key in best_a:
        torch.testing.assert_close(best_a[key], best_b[key], rtol=0, atol=0, msg=key)


# Soak: many studies in one process, memory flat.


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


@pytest.mark.slow
def test_soak_inference_over_50_studies_keeps_memory_flat(good_case, tmp_path):
    folder = tmp_path / "studies"
    for i in range(50):
        copy_case(good_case, folder, f"Brats17_SOAK{i:02d}_1")
    rss = []
    wf = ConfigWorkflow(
        config_file=INFERENCE, logging_file=LOGGING, workflow_type="infer", dataset_dir=str(folder),
        output_dir=str(tmp_path / "out"), device="cpu", num_workers=0,
    )  # fmt: skip
    wf.initialize()
    evaluator = wf.parser.get_parsed_content("evaluator")
    from ignite.engine import Events

    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: rss.append(_rss_mb()))
    start = time.time()
    wf.run()
    print(f"\nsoak inference: 50 studies in {time.time() - start:.0f} s, RSS after study 5 {rss[4]:.0f} MB, "
          f"after study 50 {rss[-1]:.0f} MB")  # fmt: skip
    assert len(list((tmp_path / "out").iterdir())) == 50
    assert rss[-1] - rss[4] < 100, rss


@pytest.mark.slow
def test_soak_training_epochs_keep_memory_flat_beyond_the_cache(tiny_brats, tmp_path):
    rss = []
    wf = ConfigWorkflow(
        config_file=TRAIN, logging_file=LOGGING, workflow_type="train", dataset_dir=str(tiny_brats),
        bundle_root=str(tmp_path), network_def={"_target_": "refineformer3d.networks.create_model",
        "name": "refineformer3d_tiny", "in_channels": 4, "out_channels": 3}, roi_size=[32, 32, 32], num_samples=1,
        num_workers=0, sw_batch_size=4, warmup_epochs=1, device="cpu", epochs=8,
    )  # fmt: skip
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    from ignite.engine import Events

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: rss.append(_rss_mb()))
    wf.run()
    print(f"\nsoak training: RSS after each epoch (MB): {[round(r) for r in rss]}")
    assert rss[-1] - rss[1] < 100, rss  # after the first epoch (caches filled, allocator warmed up)
