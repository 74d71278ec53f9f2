"""Tests of ``python -m refineformer3d.summary`` on small inputs and a few models."""

from __future__ import annotations

import time

import pytest

from refineformer3d.summary import (
    NOT_BY_DEFAULT,
    SummaryRow,
    count_windows,
    default_models,
    format_table,
    main,
    summary_rows,
)

ROI = (32, 32, 32)


def test_summary_rows_parameters_and_flops():
    rows = summary_rows(roi=ROI, models=["refineformer3d_tiny", "segformer3d"], measure_time=False)
    assert [r.name for r in rows] == ["refineformer3d_tiny", "segformer3d"]
    tiny, segformer = rows
    assert tiny.params_m <= 1.0 and segformer.params_m == pytest.approx(4.51, rel=0.01)
    # the CPU count leaves out fused attention, the meta count does not
    assert 0 < tiny.gflop < tiny.gflop_attn
    assert segformer.gflop * 64 == pytest.approx(25.4, rel=0.01)  # 32^3 is 1/64 of 128^3
    assert tiny.cpu_s is None


def test_summary_rows_time_and_reference_model():
    start = time.perf_counter()
    rows = summary_rows(roi=(64, 64, 64), models=["SegResNet (MONAI)"], repeats=1, cpu_flops=False)
    elapsed = time.perf_counter() - start
    (row,) = rows
    assert row.source == "MONAI" and row.params_m == pytest.approx(4.70, rel=0.01)
    assert row.gflop is None and row.gflop_attn > 0
    assert 0 < row.cpu_s < elapsed  # seconds of one forward, within the call that measured it


def test_unknown_model_is_a_value_error():
    with pytest.raises(ValueError, match="segformer3d"):
        summary_rows(roi=ROI, models=["nnunet"], measure_time=False)


def test_format_table_markdown_and_plain():
    rows = [SummaryRow("net", "refineformer3d", 1.23456, 2.5, None, 0.1)]
    markdown = format_table(rows, markdown=True).splitlines()
    assert markdown[0].startswith("| model | params (M) | GFLOP")
    assert markdown[2] == "| net | 1.235 | 2.50 | - | 0.100 |"
    plain = format_table(rows, markdown=False).splitlines()
    assert plain[1].split() == ["net", "1.235", "2.50", "-", "0.100"]


def test_command_line(capsys):
    text = main(["--roi", *map(str, ROI), "--no-time", "--markdown", "--models", "refineformer3d_tiny"])
    printed = capsys.readouterr().out
    assert "| refineformer3d_tiny |" in printed and printed.strip() == text.strip()
    assert "FlopCounterMode" in printed and "1x4x32x32x32" in printed


def test_sliding_window_column(capsys):
    start = time.perf_counter()
    text = main(
        [
            "--roi",
            *map(str, ROI),
            "--no-time",
            "--markdown",
            "--models",
            "refineformer3d_tiny",
            "--volume",
            "48",
            "40",
            "36",
        ]
    )
    elapsed = time.perf_counter() - start
    header, _, row = text.splitlines()[:3]
    assert header.endswith("| CPU sliding window (s) |")
    assert 0 < float(row.split("|")[-2]) < elapsed
    assert "one whole 48x40x36 volume" in text


def test_default_table_has_segformer2d_b0_and_b2_only():
    assert {"segformer2d_b0", "segformer2d_b2", "refineformer3d_small", "segformer3d"} <= set(default_models())
    assert not set(NOT_BY_DEFAULT) & set(default_models())


def test_windows_per_brats_study():
    # 3 x 3 x 2 windows of 128^3 at overlap 0.5; slice-wise: 3 x 3 in plane, every 8th slice once (155 -> 20)
    assert count_windows((1, 4, 240, 240, 155), (128, 128, 128)) == 18
    assert count_windows((1, 4, 240, 240, 155), (128, 128, 8), (0.5, 0.5, 0.0)) == 180


def test_flops_per_study_are_flops_per_window_times_windows(capsys):
    text = main(
        ["--roi", "32", "32", "4", "--overlap", "0.5", "0.5", "0", "--volume", "48", "32", "4"]
        + ["--no-time", "--markdown", "--models", "segformer2d_b0"]
    )
    header, _, row = text.splitlines()[:3]
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert header.split("|")[6].strip() == "GFLOP+attn per study"
    # 2 x 1 x 1 windows of 32 x 32 x 4
    assert float(cells[5]) == pytest.approx(2 * float(cells[3]), abs=0.06) and float(cells[5]) > 0
    assert "2 windows of 32x32x4, overlap 0.5 0.5 0" in text
