"""Early exit in the sliding window: background windows skip the network, the stitched logits do not change."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer

from refineformer3d.inferers import EarlyExitSlidingWindowInferer, SkipBackgroundWindows
from refineformer3d.networks import create_model
from tests.conftest import CONFIGS


@pytest.fixture(scope="module")
def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("refineformer3d_tiny", in_channels=4, out_channels=3).eval()


def _half_brain(shape=(1, 4, 96, 64, 32)) -> torch.Tensor:
    torch.manual_seed(1)
    image = torch.zeros(shape)
    image[:, :, 40:80, 10:50] = torch.randn(shape[0], shape[1], 40, 40, shape[4])
    return image


@pytest.mark.parametrize("sw_batch_size", [1, 3])
def test_skipping_empty_windows_leaves_the_logits_unchanged(tiny_net, sw_batch_size):
    image = _half_brain()
    kwargs = dict(roi_size=(32, 32, 32), sw_batch_size=sw_batch_size, overlap=0.5, mode="gaussian")
    early = EarlyExitSlidingWindowInferer(**kwargs, early_exit=True)
    with torch.no_grad():
        reference = SlidingWindowInferer(**kwargs)(image, tiny_net)
        skipped = early(image, tiny_net)
    assert 0 < early.skipped < early.windows
    torch.testing.assert_close(skipped, reference, rtol=1e-4, atol=1e-4)


def test_windows_below_the_brain_fraction_get_the_all_zero_window_logits(tiny_net):
    windows = torch.zeros(3, 4, 32, 32, 32)
    windows[1, :, :8] = 1.0  # a quarter of the window is brain
    windows[2] = 1.0
    predictor = SkipBackgroundWindows(tiny_net, min_brain_fraction=0.3)
    with torch.no_grad():
        out = predictor(windows)
        background = tiny_net(torch.zeros(1, 4, 32, 32, 32))
        full = tiny_net(windows[2:])
    assert (predictor.windows, predictor.skipped) == (3, 2)
    torch.testing.assert_close(out[:2], background.expand(2, -1, -1, -1, -1))
    torch.testing.assert_close(out[2:], full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_brain_fraction_outside_unit_interval_is_rejected(fraction):
    with pytest.raises(ValueError, match="min_brain_fraction"):
        SkipBackgroundWindows(torch.nn.Identity(), min_brain_fraction=fraction)
    with pytest.raises(ValueError, match="min_brain_fraction"):
        EarlyExitSlidingWindowInferer((32, 32, 32), min_brain_fraction=fraction)


def test_with_coord_and_early_exit_are_rejected():
    with pytest.raises(ValueError, match="with_coord"):
        EarlyExitSlidingWindowInferer((32, 32, 32), with_coord=True, early_exit=True)


def test_inference_config_switches_early_exit():
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    assert parser.get_parsed_content("inferer").early_exit is False
    parser["early_exit"] = True
    parser["min_brain_fraction"] = 0.05
    inferer = parser.get_parsed_content("inferer", lazy=False)
    assert isinstance(inferer, EarlyExitSlidingWindowInferer)
    assert (inferer.early_exit, inferer.min_brain_fraction, list(inferer.roi_size)) == (True, 0.05, [128, 128, 128])
