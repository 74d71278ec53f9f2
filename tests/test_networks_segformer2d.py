"""Tests of refineformer3d.networks.segformer2d: the MiT sizes, slice-wise shapes, errors and pretrained encoders.

Sizes are checked on the ``meta`` device; forwards use a narrow MiT so that they take milliseconds. Pretrained weights
come from folders the tests write with ``save_pretrained``, never from the hub.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from refineformer3d.networks import SEGFORMER2D_VARIANTS, SegFormer2D, create_model  # noqa: E402

# SegFormer paper, Table 1 (ADE20K: 3 channels, 150 classes), in millions
PUBLISHED_PARAMS_M = {"b0": 3.8, "b1": 13.7, "b2": 27.5, "b3": 47.3, "b4": 64.1, "b5": 84.7}
# a narrow MiT (heads divide the widths) for forwards in milliseconds
TINY = dict(hidden_sizes=(8, 16, 24, 32), num_attention_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1), decoder_hidden_size=16)


def num_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("size", sorted(SEGFORMER2D_VARIANTS))
def test_every_mit_size_builds_as_published(size):
    with torch.device("meta"):
        ade = create_model(f"segformer2d_{size}", in_channels=3, out_channels=150)
        brats = create_model(f"segformer2d_{size}", in_channels=4, out_channels=3)
    assert isinstance(ade.model, transformers.SegformerForSemanticSegmentation)
    assert num_params(ade) / 1e6 == pytest.approx(PUBLISHED_PARAMS_M[size], abs=0.06)
    assert list(brats.config.hidden_sizes) == list(SEGFORMER2D_VARIANTS[size]["hidden_sizes"])
    assert (brats.config.num_channels, brats.config.num_labels) == (4, 3)
    assert brats.model.decode_head.classifier.out_channels == 3
    # 4 channels and 3 classes: one more input kernel per stage-1 filter, 147 fewer classifier rows
    stage1, decoder = brats.config.hidden_sizes[0], brats.config.decoder_hidden_size
    assert num_params(ade) - num_params(brats) == 147 * (decoder + 1) - stage1 * 7 * 7


def test_b0_parameters():
    with torch.device("meta"):
        ade = create_model("segformer2d_b0", in_channels=3, out_channels=150)
        ours = create_model("segformer2d_b0", in_channels=4, out_channels=3)
    assert num_params(ade) == 3_752_694  # "3.7M" (MiT-B0 card) / 3.8M (paper, with the head)
    assert num_params(ours) == 3_716_483


@pytest.mark.parametrize(
    "shape, slice_axis",
    [((1, 4, 40, 64, 3), 2), ((2, 4, 3, 48, 33), 0), ((1, 4, 32, 5, 45), 1), ((1, 4, 29, 29, 1), 2)],
)
def test_slices_are_independent_2d_predictions(shape, slice_axis):
    net = SegFormer2D(in_channels=4, out_channels=3, slice_axis=slice_axis, **TINY).eval()
    x = torch.randn(*shape)
    with torch.inference_mode():
        y = net(x)
        assert y.shape == (shape[0], 3, *shape[2:])
        # slice k of the output is the 2-D model on slice k of the input, upsampled to the slice's size
        k = shape[2 + slice_axis] // 2
        image = x.select(2 + slice_axis, k)
        expected = F.interpolate(net.model(pixel_values=image).logits, size=image.shape[2:], mode="bilinear")
    torch.testing.assert_close(y.select(2 + slice_axis, k), expected, rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_parameter():
    net = SegFormer2D(in_channels=4, out_channels=3, **TINY)
    net(torch.randn(1, 4, 32, 48, 2)).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_too_small_slices_and_wrong_rank_are_value_errors():
    net = SegFormer2D(in_channels=4, out_channels=3, **TINY)
    assert net.min_slice_size == 29
    with pytest.raises(ValueError, match="at least 29"):
        net(torch.randn(1, 4, 28, 64, 64))  # slices across the last axis: 28 x 64
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        net(torch.randn(1, 4, 64, 64))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(depths=(2, 2, 2)), "one length"),
        (dict(hidden_sizes=(32, 64, 160, 250)), "divisible by its number of heads"),
        (dict(slice_axis=3), "slice_axis"),
        (dict(in_channels=0), "positive"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SegFormer2D(**kwargs)


# --------------------------------------------------------------------------------------------- pretrained encoder


@pytest.fixture(scope="module")
def mit_folder(tmp_path_factory):
    """A MiT encoder with the tiny widths and RGB input, saved as ``save_pretrained`` (and the hub) store it."""
    config = transformers.SegformerConfig(
        num_channels=3, **{k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
    )
    torch.manual_seed(0)
    encoder = transformers.SegformerModel(config)
    folder = tmp_path_factory.mktemp("mit-tiny")
    encoder.save_pretrained(folder)
    return folder, encoder.state_dict()


def test_pretrained_encoder_loads_and_adapts_rgb_to_four_channels(mit_folder):
    folder, saved = mit_folder
    scratch = SegFormer2D(in_channels=4, out_channels=3, **TINY)
    net = SegFormer2D(in_channels=4, out_channels=3, pretrained=str(folder), **TINY)
    loaded = net.model.segformer.state_dict()
    first = "stages.0.patch_embeddings.proj.weight"
    rgb = saved[first]
    assert loaded[first].shape == (8, 4, 7, 7)
    torch.testing.assert_close(loaded[first], rgb.mean(1, keepdim=True).repeat(1, 4, 1, 1) * 0.75)
    # equal channels respond as the grey RGB image did
    grey = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(
        F.conv2d(grey.repeat(1, 4, 1, 1), loaded[first]), F.conv2d(grey.repeat(1, 3, 1, 1), rgb), rtol=1e-4, atol=1e-5
    )
    for key, value in saved.items():
        if key != first:
            torch.testing.assert_close(loaded[key], value, msg=key)
    # the head is not part of a MiT checkpoint: it keeps its fresh initialisation
    assert net.model.decode_head.classifier.weight.shape == scratch.model.decode_head.classifier.weight.shape


def test_pretrained_with_matching_channels_is_loaded_unchanged(mit_folder):
    folder, saved = mit_folder
    net = SegFormer2D(in_channels=3, out_channels=2, pretrained=folder, **TINY)
    torch.testing.assert_close(net.model.segformer.state_dict(), saved)


def test_pretrained_of_another_size_is_a_value_error(mit_folder):
    folder, _ = mit_folder
    with pytest.raises(ValueError, match="another MiT size.*depths"):
        SegFormer2D(in_channels=4, out_channels=3, **{**TINY, "depths": (1, 2, 1, 1)}, pretrained=folder)


def test_unreachable_hub_is_one_line_value_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as info:
        create_model("segformer2d_b0", pretrained="nvidia/mit-b0", cache_dir=tmp_path / "empty-cache")
    message = str(info.value)
    assert "\n" not in message
    assert "'nvidia/mit-b0'" in message and "HF_HUB_OFFLINE" in message and "--local-dir" in message


def test_folder_without_a_model_is_one_line_value_error(tmp_path):
    with pytest.raises(ValueError, match="holds no loadable") as info:
        SegFormer2D(pretrained=tmp_path, **TINY)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["none", "None", None])
def test_none_trains_from_scratch(value):
    with torch.device("meta"):
        net = SegFormer2D(pretrained=value)
    assert isinstance(net, SegFormer2D)
