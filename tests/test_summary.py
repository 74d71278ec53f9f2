"""Tests of ``python -m refineformer3d.experiments.summary`` (parameters and FLOPs, nothing timed) on small inputs."""

from __future__ import annotations

import pytest
import torch

from refineformer3d.experiments.summary import (
    NOT_BY_DEFAULT,
    SummaryRow,
    count_flops,
    count_windows,
    default_models,
    format_table,
    run,
    summary_rows,
)

ROI = (32, 32, 32)


def test_summary_rows_parameters_and_flops():
    rows = summary_rows(roi=ROI, models=["refineformer3d_tiny", "segformer3d"])
    assert [r.name for r in rows] == ["refineformer3d_tiny", "segformer3d"]
    tiny, segformer = rows
    assert tiny.params_m <= 1.0 and segformer.params_m == pytest.approx(4.51, rel=0.01)
    # the CPU count leaves out fused attention, the meta count does not
    assert 0 < tiny.gflop < tiny.gflop_attn
    assert segformer.gflop * 64 == pytest.approx(25.4, rel=0.01)  # 32^3 is 1/64 of 128^3


def test_full_size_counts_run_no_arithmetic():
    """128^3 counts of SegResNet (296 GFLOP: seconds of arithmetic on a CPU) on fake and meta tensors."""
    (row,) = summary_rows(models=["SegResNet (MONAI)"])
    assert row.source == "MONAI" and row.params_m == pytest.approx(4.70, rel=0.01)
    assert row.gflop == pytest.approx(296.02, abs=0.01) and row.gflop_attn == pytest.approx(row.gflop)


def test_data_dependent_forward_is_counted_for_real():
    """A forward that reads its data (e.g. an early exit) cannot run on fake tensors; it is counted in a real one."""

    class EarlyExit(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(8, 8)

        def forward(self, x):
            return x if x.abs().max().item() > 1 else self.linear(x)

    assert count_flops(EarlyExit(), (4, 8)) == (2 * 4 * 8 * 8, False)


def test_unknown_model_is_a_value_error():
    with pytest.raises(ValueError, match="segformer3d"):
        summary_rows(roi=ROI, models=["nnunet"])


def test_format_table_markdown_and_plain():
    rows = [SummaryRow("net", "refineformer3d", 1.23456, 2.5, None)]
    markdown = format_table(rows, markdown=True).splitlines()
    assert markdown[0] == "| model | params (M) | GFLOP | GFLOP+attn |"
    assert markdown[2] == "| net | 1.235 | 2.50 | - |"
    plain = format_table(rows, markdown=False).splitlines()
    assert plain[1].split() == ["net", "1.235", "2.50", "-"]


def test_command_line(capsys):
    text = run(["--roi", *map(str, ROI), "--markdown", "--models", "refineformer3d_tiny"])
    printed = capsys.readouterr().out
    assert "| refineformer3d_tiny |" in printed and printed.strip() == text.strip()
    assert "FlopCounterMode" in printed and "1x4x32x32x32" in printed


@pytest.mark.parametrize("option", [["--repeats", "3"], ["--no-time"], ["--threads=2"]])
def test_timing_options_point_at_the_benchmark(option, capsys):
    with pytest.raises(SystemExit):
        run(["--models", "refineformer3d_tiny", *option])
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert "python -m refineformer3d.experiments.benchmark" in line and option[0].split("=")[0] in line


def test_default_table_has_segformer2d_b0_and_b2_only():
    assert {"segformer2d_b0", "segformer2d_b2", "refineformer3d_small", "segformer3d"} <= set(default_models())
    assert not set(NOT_BY_DEFAULT) & set(default_models())


def test_windows_per_brats_study():
    # 3 x 3 x 2 windows of 128^3 at overlap 0.5; slice-wise: 3 x 3 in plane, every 8th slice once (155 -> 20)
    assert count_windows((1, 4, 240, 240, 155), (128, 128, 128)) == 18
    assert count_windows((1, 4, 240, 240, 155), (128, 128, 8), (0.5, 0.5, 0.0)) == 180


def test_flops_per_study_are_flops_per_window_times_windows(capsys):
    text = run(
        ["--roi", "32", "32", "4", "--overlap", "0.5", "0.5", "0", "--volume", "48", "32", "4"]
        + ["--markdown", "--models", "segformer2d_b0"]
    )
    header, _, row = text.splitlines()[:3]
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert header.split("|")[5].strip() == "GFLOP+attn per study"
    # 2 x 1 x 1 windows of 32 x 32 x 4
    assert float(cells[4]) == pytest.approx(2 * float(cells[3]), abs=0.06) and float(cells[4]) > 0
    assert "2 windows of 32x32x4, overlap 0.5 0.5 0" in text
