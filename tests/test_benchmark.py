"""Tests of ``python -m refineformer3d.experiments.benchmark`` on tiny windows and volumes; the full run is no test."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from refineformer3d.experiments.benchmark import (
    FP16_ON_CPU,
    ONNX_FP32,
    ONNX_INT8,
    PYTORCH,
    accelerator_rows,
    matmul_peak,
    run,
    train_steps,
)
from refineformer3d.experiments.summary import network_flops
from refineformer3d.networks import create_model

# One thread: on this shared 2-core machine two threads wait on each other's barriers whenever others run
TINY = ["--roi", "32", "32", "32", "--volume", "48", "32", "32", "--repeats", "2", "--volume_repeats", "1"]
TINY += ["--matmul_sizes", "256", "512", "--matmul_repeats", "2", "--threads", "1"]


@pytest.fixture
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    output = tmp_path_factory.mktemp("benchmark")
    args = [*TINY, "--models", "refineformer3d_tiny", "segformer3d", "--onnx", "refineformer3d_tiny"]
    return run([*args, "--output", str(output)]), output


def test_rows_measure_every_runtime(report):
    report, _ = report
    rows = {(r["name"], r["runtime"]): r for r in report["rows"]}
    assert list(rows) == [
        ("refineformer3d_tiny", PYTORCH),
        ("segformer3d", PYTORCH),
        ("refineformer3d_tiny", ONNX_FP32),
        ("refineformer3d_tiny", ONNX_INT8["dynamic"]),
        ("refineformer3d_tiny", ONNX_INT8["static"]),
    ]
    for row in rows.values():
        assert row["error"] is None
        assert len(row["forward_runs"]) == 2
        # timed at 1 and 2 windows per batch; the best median is the row's time
        assert {b: len(runs) for b, runs in row["volume_runs"].items()} == {"1": 1, "2": 1}
        best = str(row["volume_sw_batch_size"])
        assert row["volume_s"] == row["volume_runs"][best][0] == min(r[0] for r in row["volume_runs"].values())
        assert 0 < row["forward_peak_mib"] <= row["volume_peak_mib"]
        # 2 x 1 x 1 windows of 32^3 at overlap 0.5 over 48 x 32 x 32
        assert row["windows"] == 2 and row["volume_gflop"] == pytest.approx(2 * row["gflop"])
    tiny, segformer = rows["refineformer3d_tiny", PYTORCH], rows["segformer3d", PYTORCH]
    for row in (tiny, segformer):  # attention counted: the meta count
        factory = partial(create_model, row["name"], in_channels=4, out_channels=3)
        assert row["gflop"] * 1e9 == network_flops(factory, (1, 4, 32, 32, 32), cpu=False)[1]
    assert report["machine"]["threads"] == 1
    assert rows["refineformer3d_tiny", ONNX_INT8["static"]]["gflop"] == tiny["gflop"]


def test_ratios_fractions_and_limits(report):
    report, _ = report
    peak = report["matmul_peak"]
    assert set(peak["by_size"]) == {"256", "512"} or set(peak["by_size"]) == {256, 512}
    assert peak["gflops"] == max(peak["by_size"].values()) > 0
    rows = report["rows"]
    segformer = next(r for r in rows if r["name"] == "segformer3d")
    assert segformer["forward_ratio"] == 1.0 and segformer["volume_ratio"] == 1.0
    for row in rows:
        assert row["forward_ratio"] == pytest.approx(row["forward_s"] / segformer["forward_s"])
        assert row["volume_ratio"] == pytest.approx(row["volume_s"] / segformer["volume_s"])
        assert 0 < row["forward_fraction"] < 1.5 and 0 < row["volume_fraction"] < 1.5
        assert row["forward_fraction"] == pytest.approx(row["gflop"] / row["forward_s"] / peak["gflops"])
        assert row["limit_window_s"] == pytest.approx(row["gflop"] / peak["gflops"])
        assert row["limit_volume_s"] == pytest.approx(2 * row["limit_window_s"])


def test_markdown_and_json_written(report, capsys):
    report, output = report
    assert sorted(p.name for p in output.iterdir()) == ["benchmark.json", "benchmark.md"]  # no temporary left
    assert json.loads((output / "benchmark.json").read_text()) == json.loads(json.dumps(report))
    markdown = (output / "benchmark.md").read_text()
    assert "| refineformer3d_tiny | ONNX Runtime INT8 (dynamic) |" in markdown
    assert "FlopCounterMode" in markdown and "ru_maxrss" in markdown and "torch.mm of" in markdown
    assert "2 windows of 32x32x32, overlap 0.5, gaussian blending" in markdown
    assert "timed at 1 and 2 windows per batch" in markdown and report["settings"]["sw_batch_sizes"] == [1, 2]
    segformer = next(r for r in report["rows"] if r["name"] == "segformer3d")
    assert f"{segformer['volume_s']:.2f} ({segformer['volume_sw_batch_size']}) |" in markdown
    assert "as inference.json configures it" in markdown and report["settings"]["inferer"]["roi_size"] == [32] * 3
    if not torch.cuda.is_available():
        assert "no GPU in this run" in markdown and report["accelerator"]["rows"] == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--repeats", "0"], "at least 1"),
        (["--models", "nnunet"], "unknown models ['nnunet']"),
        (["--onnx", "nnunet"], "unknown models ['nnunet']"),
        (["--int8", "int4"], "invalid choice: 'int4'"),
        (["--volume", "64", "0", "48"], "sizes must be positive"),
        (["--sw_batch_sizes", "2", "0"], "windows per batch must be at least 1"),
    ],
)
def test_bad_arguments_are_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run([*TINY, *args])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert message in error[-1] and error[-1].startswith("python -m refineformer3d.experiments.benchmark: error:")


def test_matmul_peak_reports_the_best_size(one_thread):
    peak = matmul_peak(sizes=(64, 128), repeats=2)
    assert set(peak["by_size"]) == {64, 128} and peak["gflops"] == peak["by_size"][peak["size"]] > 0


def test_train_step_under_bfloat16_autocast_updates_the_weights(one_thread):
    torch.manual_seed(0)
    model = create_model("refineformer3d_tiny", in_channels=4, out_channels=3)
    before = [p.detach().clone() for p in model.parameters()]
    result = train_steps(model, "cpu", torch.bfloat16, (1, 4, 32, 32, 32), steps=1, warmup=1)
    assert result["steps_per_s"] > 0 and len(result["step_runs"]) == 1 and result["peak_mib"] is None
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_accelerator_rows_on_the_cpu_skip_float16(one_thread):
    rows = accelerator_rows(
        ["refineformer3d_tiny"],
        "cpu",
        compile_modes=(False,),
        roi=(32, 32, 32),
        volume=(32, 48, 32),
        train_batch=1,
        steps=1,
        repeats=1,
    )
    fp16, bf16 = rows
    assert fp16 == {"name": "refineformer3d_tiny", "amp": "float16", "compile": False, "skipped": FP16_ON_CPU}
    assert "error" not in bf16, bf16.get("error")
    assert bf16["amp"] == "bfloat16" and bf16["steps_per_s"] > 0 and bf16["window_ms"] > 0 and bf16["volume_ms"] > 0
    assert bf16["peak_mib"] is None and bf16["volume_peak_mib"] is None  # torch.cuda's counter: CUDA only


@pytest.mark.slow  # torch.compile on the CPU builds C++ kernels (a minute or more)
def test_accelerator_rows_compiled(one_thread):
    (row,) = accelerator_rows(
        ["refineformer3d_tiny"],
        "cpu",
        dtypes=(torch.bfloat16,),
        compile_modes=(True,),
        roi=(32, 32, 32),
        volume=None,
        train_batch=1,
        steps=1,
        repeats=1,
    )
    assert "error" not in row, row.get("error")
    assert row["compile"] and row["steps_per_s"] > 0 and row["window_ms"] > 0
