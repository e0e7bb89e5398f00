"""The benchmark scripts' building blocks: the JSON figures line, side-by-side timing, FLOP
counting, peak memory, the valid/same tile pairing, the serial stand-in for the background loader
and the inference benchmark's Dice."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bench.batch import SerialExecutor
from bench.inference import mean_foreground_dice
from bench.measure import count_flops, emit_figures, format_table, interleaved_seconds, peak_rss_gib
from bench.network import valid_and_same_tiles
from unet_med.networks import create_unet


def test_figures_are_one_json_line_with_rounded_floats(capsys: pytest.CaptureFixture[str]) -> None:
    emit_figures({"speedup": 1.234567, "size": "96x96x64", "n": 3, "nan": float("nan")})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    figures = json.loads(lines[-1].replace("NaN", "null"))
    assert figures["speedup"] == 1.235 and figures["size"] == "96x96x64" and figures["n"] == 3


def test_interleaved_timing_runs_repeats_in_rounds() -> None:
    calls: list[str] = []
    seconds = interleaved_seconds(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1
    )
    assert calls == ["a", "b"] * 4
    assert set(seconds) == {"a", "b"} and all(s >= 0 for s in seconds.values())


def test_flop_count_of_a_convolution_is_two_per_multiply_add() -> None:
    conv = torch.nn.Conv2d(3, 5, kernel_size=3, bias=False)
    x = torch.zeros(1, 3, 10, 10)
    assert count_flops(lambda: conv(x)) == 2 * 3 * 5 * 9 * 8 * 8


def test_table_has_a_header_separator_and_one_line_per_row() -> None:
    text = format_table([{"model": "unet", "s": 0.12345}, {"model": "BasicUNet", "s": 12345.0}])
    lines = text.splitlines()
    assert len(lines) == 4 and "0.123" in lines[2] and "12345" in lines[3]


@pytest.mark.parametrize("preset,dims,tile", [("paper", 2, 132), ("cicek3d", 3, 20)])
def test_same_tile_is_on_the_pooling_grid_and_covers_the_valid_input(
    preset: str, dims: int, tile: int
) -> None:
    with torch.device("meta"):
        net = create_unet(preset, base_width=4)
    in_valid, out_valid, same = valid_and_same_tiles(net, tile, dims)
    grid = 2**net.spec.poolings
    assert all(o >= tile for o in out_valid)
    assert net.output_size(in_valid) == out_valid
    assert all(s % grid == 0 and 0 <= s - i < grid for s, i in zip(same, in_valid))
    assert math.prod(in_valid) > math.prod(out_valid)


def test_serial_executor_runs_at_submit_and_delivers_errors_on_result() -> None:
    order: list[str] = []
    with SerialExecutor(max_workers=1) as pool:
        future = pool.submit(lambda: order.append("ran") or 7)
        order.append("after submit")
        failing = pool.submit(lambda: 1 / 0)
    assert order == ["ran", "after submit"] and future.result() == 7
    with pytest.raises(ZeroDivisionError):
        failing.result()


def test_peak_rss_grows_with_a_large_allocation() -> None:
    before = peak_rss_gib()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    assert block.sum() > 0
    assert 0 < before <= peak_rss_gib() and peak_rss_gib() >= 64 / 1024


def test_benchmark_dice_is_the_mean_over_foreground_classes_with_empty_classes_as_one() -> None:
    label = np.zeros((4, 4), np.int64)
    label[:2, :2] = 1
    pred = label.copy()
    assert mean_foreground_dice(pred, label) == pytest.approx(1.0)  # class 2 absent from both counts 1.0
    pred[0, 0] = 2
    assert mean_foreground_dice(pred, label) == pytest.approx((2 * 3 / 7 + 0.0) / 2)
