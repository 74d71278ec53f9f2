"""The benchmark's study mode and the inference options it measures, on tiny synthetic studies with the tiny network."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import CONFIGS, bundle_workflow

from refineformer3d.experiments.study_benchmark import STAGES, format_markdown, measure_arm
from refineformer3d.networks import create_model

INFERENCE = CONFIGS / "inference.json"
# the tiny network at 32^3 windows keeps a CPU test short; N4 stays on, it is one of the stages measured
FAST = {
    "network_def#_target_": "refineformer3d.networks.create_model",
    "network_def#name": "refineformer3d_tiny",
    "roi_size": [32, 32, 32],
    "sw_batch_size": 4,
    "num_workers": 0,
    "device": "$torch.device('cpu')",
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(create_model("refineformer3d_tiny", in_channels=4, out_channels=3).state_dict(), path)
    return str(path)


def _segmentations(folder):
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(folder.glob("*_seg.nii.gz"))}


def test_study_mode_times_every_stage_and_writes_what_the_bundle_writes(tmp_path, tiny_brats, weights):
    source = tiny_brats / "Brats17ValidationData"
    threads = torch.get_num_threads()
    try:
        result = measure_arm(INFERENCE, str(source), str(tmp_path / "timed"), 2, 1, {**FAST, "ckpt_path": weights})
    finally:
        torch.set_num_threads(threads)
    assert [row["study"] for row in result["studies"]] == sorted(p.name for p in source.iterdir())
    for row in result["studies"]:
        assert all(row[stage] > 0 for stage in STAGES), row
        # the windows the inferer ran on the cropped brain (at most 64 x 64 x 48): 32^3 windows at overlap 0.5
        assert len(row["shape"]) == 3 and 1 <= row["windows"] <= 3 * 3 * 2, row
    assert set(result["start_up"]) >= {"import torch", "import monai", "config, network and checkpoint", "total"}

    wf = bundle_workflow(
        str(INFERENCE), CONFIGS.parent, source, "infer", output_dir=str(tmp_path / "bundle"), ckpt_path=weights, **FAST
    )
    wf.run()
    wf.finalize()
    timed, bundled = _segmentations(tmp_path / "timed"), _segmentations(tmp_path / "bundle")
    assert list(timed) == list(bundled) and len(timed) == 2
    for name in timed:
        np.testing.assert_array_equal(timed[name], bundled[name], err_msg=name)

    median = dict.fromkeys(STAGES, 1.0) | {"study": 6.0}
    arm = {**result, "config": str(INFERENCE), "median": median}
    machine = {"date": "today", "cpu": "a CPU", "logical_cpus": 2, "threads": 1, "torch": "2", "platform": "Linux"}
    markdown = format_markdown({"machine": machine, "source": str(source), "arms": {"before": arm, "after": arm}})
    assert "| N4 | 1.00 | 1.00 | 1.00 |" in markdown and "| **one study (sum of the stages)** | 6.00 |" in markdown


def test_one_pass_runs_the_cropped_brain_in_one_forward_and_lands_on_the_input_grid(tmp_path, tiny_brats, weights):
    source = tiny_brats / "Brats17ValidationData"
    study = sorted(source.iterdir())[0]
    wf = bundle_workflow(
        str(INFERENCE),
        CONFIGS.parent,
        study,
        "infer",
        output_dir=str(tmp_path),
        ckpt_path=weights,
        one_pass=True,
        bias_correction=False,
        **FAST,
    )
    shapes = []
    wf.parser.get_parsed_content("network").register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    wf.run()
    wf.finalize()
    assert len(shapes) == 1, "one forward"
    assert all(s % 32 == 0 for s in shapes[0][2:]) and shapes[0][2:] != (32, 32, 32), shapes
    seg = nib.load(tmp_path / f"{study.name}_seg.nii.gz")
    reference = nib.load(next(study.glob("*_t1ce.nii.gz")))
    assert seg.shape == reference.shape
    np.testing.assert_allclose(seg.affine, reference.affine, atol=1e-4)


def test_network_mode_times_each_network_at_each_batching_and_keeps_the_best(tmp_path, tiny_brats, weights):
    from refineformer3d.experiments.study_benchmark import format_network_markdown, network_benchmark
    from refineformer3d.experiments.summary import count_flops

    source = str(tiny_brats / "Brats17ValidationData")
    keys = {k: v for k, v in FAST.items() if not k.startswith("network_def") and k != "sw_batch_size"}
    report = network_benchmark(
        source,
        ["refineformer3d_tiny", "refineformer3d_nano"],
        sw_batch_sizes=[1, 4],
        studies=1,
        threads=1,
        checkpoints={"refineformer3d_tiny": weights},
        overrides=keys,
        matmul_sizes=[256],
        matmul_repeats=1,
        in_process=True,
    )
    peak = report["matmul_peak"]["gflops"]
    for name, entry in report["networks"].items():
        arms = entry["arms"]
        assert set(arms) == {"1", "4"}
        # batching changes how the windows are grouped, not how many there are
        assert arms["1"]["windows"] == arms["4"]["windows"] >= 1
        assert entry["network_s"] == min(arm["median"]["network"] for arm in arms.values())
        assert arms[str(entry["best_sw_batch_size"])]["median"]["network"] == entry["network_s"]
        with torch.device("meta"):
            network = create_model(name, in_channels=4, out_channels=3).eval()
        flops, _ = count_flops(network, (1, 4, 32, 32, 32), device="meta")  # attention counted
        assert entry["gflop_window"] == pytest.approx(flops / 1e9)
        assert entry["gflop_study"] == pytest.approx(entry["gflop_window"] * arms["1"]["windows"])
        assert entry["limit_s"] == pytest.approx(entry["gflop_study"] / peak)
        assert entry["network_ratio"] is None  # no SegFormer3D in this run
    assert report["networks"]["refineformer3d_nano"]["params_m"] < report["networks"]["refineformer3d_tiny"]["params_m"]
    markdown = format_network_markdown(report)
    rows = {line.split(" | ")[0][2:]: line for line in markdown.splitlines() if line.startswith("| refineformer3d")}
    assert set(rows) == {"refineformer3d_tiny", "refineformer3d_nano"}
    # only the network timed with its random initial weights is marked
    assert rows["refineformer3d_nano"].count(" *") == 1 and " *" not in rows["refineformer3d_tiny"]


def test_network_mode_names_what_it_cannot_time(tmp_path, tiny_brats, weights):
    from refineformer3d.experiments.benchmark import run
    from refineformer3d.experiments.study_benchmark import network_overrides

    assert network_overrides("segresnet")["network_def#_target_"] == "SegResNet"
    assert network_overrides("refineformer3d_nano")["network_def#name"] == "refineformer3d_nano"
    source = str(tiny_brats / "Brats17ValidationData")
    with pytest.raises(SystemExit) as exit_info:
        run(["--study", source, "--models", "refineformer3d_huge"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        run(["--study", source, "--models", "refineformer3d_tiny", "--checkpoint", f"segformer3d={weights}"])
    with pytest.raises(SystemExit):
        run(["--study", source, "--models", "refineformer3d_tiny", "--checkpoint", "refineformer3d_tiny=missing.pt"])
    with pytest.raises(SystemExit):
        run(["--study", source, "--models", "refineformer3d_tiny", "--checkpoint", weights])
    with pytest.raises(SystemExit):
        run(["--study", source, "--models", "refineformer3d_tiny", "--before_config", "old.json"])
