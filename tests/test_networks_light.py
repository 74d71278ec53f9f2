"""The lighter variants: (2+1)-D kernels across slices, axial attention, and the nano network built from them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refineformer3d.networks import AxialAttention3D, Conv2Plus1d, RefineFormer3D, create_model, list_models
from refineformer3d.networks.blocks import conv3d

LIGHT_VARIANTS = ["refineformer3d_tiny_axial", "refineformer3d_tiny_slices", "refineformer3d_nano"]
NON_CUBIC = (1, 4, 64, 96, 32)


def num_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ------------------------------------------------------------------------------------------- (2+1)-D kernels


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
@pytest.mark.parametrize("kernel_size, stride", [(3, 1), (7, 4), (3, 2)])
def test_conv2plus1d_is_the_3d_convolution_of_its_outer_product_kernel(slice_axis, kernel_size, stride):
    # a 2-D kernel shared by every slice, then a depthwise mixer across slices: one k^3 kernel per output channel,
    # the product of its 2-D kernel and its k taps across slices
    conv = Conv2Plus1d(3, 5, kernel_size, stride, slice_axis=slice_axis)
    in_plane = conv.in_plane.weight.squeeze(2 + slice_axis)  # (5, 3, k, k)
    across = conv.across_slices.weight.reshape(5, kernel_size)  # (5, k)
    kernel = torch.einsum("ocxy,oz->oczxy", in_plane, across)  # the slice axis first, then the plane
    kernel = kernel.movedim(2, 2 + slice_axis)
    x = torch.randn(2, 3, 16, 12, 8)
    expected = F.conv3d(x, kernel, conv.across_slices.bias, stride=stride, padding=kernel_size // 2)
    torch.testing.assert_close(conv(x), expected, rtol=1e-4, atol=1e-5)


def test_depthwise_conv2plus1d_and_its_savings():
    depthwise = conv3d(8, 8, 3, groups=8, kernels="2+1d")
    dense = conv3d(8, 8, 3, groups=8)
    x = torch.randn(1, 8, 6, 6, 6)
    assert depthwise(x).shape == dense(x).shape
    assert num_params(depthwise) == 8 * 9 + 8 * 3 + 8  # 2-D taps, taps across slices, bias
    embed = conv3d(32, 64, 3, 2, kernels="2+1d")
    assert num_params(embed) < 0.4 * num_params(conv3d(32, 64, 3, 2))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: conv3d(4, 4, 3, kernels="2d"), "kernels"),
        (lambda: Conv2Plus1d(4, 4, 3, slice_axis=3), "slice_axis"),
        (lambda: RefineFormer3D(kernels="3D"), "kernels"),
        (lambda: AxialAttention3D(6, num_heads=4), "divisible"),
    ],
)
def test_bad_kernels_and_heads_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ---------------------------------------------------------------------------------------------- axial attention


def attention_along(q, k, v, axis):
    """Plain softmax attention within the rows of one axis of ``(B, d, h, w, C)`` volumes (one head)."""
    q, k, v = (t.movedim(axis, -2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return (weights @ v).movedim(-2, axis)


def test_axial_attention_is_attention_along_d_then_h_then_w():
    mixer = AxialAttention3D(6, num_heads=1).eval()
    d, h, w = 5, 4, 3
    x = torch.randn(2, d * h * w, 6)
    q, k, v = mixer.qkv(x).reshape(2, d, h, w, 3, 6).unbind(4)
    for axis in (1, 2, 3):
        v = attention_along(q, k, v, axis)
    expected = mixer.proj(v.reshape(2, d * h * w, 6))
    torch.testing.assert_close(mixer(x, (d, h, w)), expected, rtol=1e-4, atol=1e-5)


def test_axial_attention_reaches_the_whole_volume():
    # after the three passes a token depends on every token, also on one that shares no row with it
    mixer = AxialAttention3D(4, num_heads=2)
    d, h, w = 4, 6, 2
    x = torch.randn(1, d * h * w, 4, requires_grad=True)
    mixer(x, (d, h, w))[0, 0].sum().backward()
    reached = x.grad.abs().sum(-1).reshape(d, h, w)
    assert (reached > 0).all()


# ---------------------------------------------------------------------------------------------------- variants


def test_light_variants_are_registered_and_built_as_described():
    assert set(LIGHT_VARIANTS) <= set(list_models("refineformer3d_*"))
    axial = create_model("refineformer3d_tiny_axial")
    assert [type(b.attn).__name__ for s in axial.encoder.stages for b in s.blocks][:2] == ["AxialAttention3D"] * 2
    assert not any(isinstance(m, Conv2Plus1d) for m in axial.modules())
    slices = create_model("refineformer3d_tiny_slices")
    assert not any(isinstance(m, AxialAttention3D) for m in slices.modules())
    # every overlapping k^3 kernel is factorised (attention's key/value reduction and the full-resolution
    # upsampling have kernel = stride, patches side by side, and stay whole)
    cubic = [
        n
        for n, m in slices.named_modules()
        if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)) and min(m.kernel_size) > 1
    ]
    assert cubic and all(slices.get_submodule(n).kernel_size == slices.get_submodule(n).stride for n in cubic)
    tiny = create_model("refineformer3d_tiny")
    assert num_params(slices) < num_params(tiny) and num_params(axial) < num_params(tiny)
    assert isinstance(RefineFormer3D.from_variant("nano"), RefineFormer3D)


@pytest.mark.parametrize("name", LIGHT_VARIANTS)
def test_light_variant_non_cubic_shapes_overrides_and_gradients(name):
    net = create_model(name, in_channels=2, out_channels=5)
    y = net(torch.randn(1, 2, *NON_CUBIC[2:]))
    assert y.shape == (1, 5, *NON_CUBIC[2:]) and torch.isfinite(y).all()
    y.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without a gradient: {missing}"
    with pytest.raises(ValueError, match="divisible by 32"):
        net(torch.randn(1, 2, 64, 80, 32))


@pytest.mark.parametrize("name", LIGHT_VARIANTS)
def test_light_variant_deep_supervision_and_checkpoint(name, tmp_path):
    net = create_model(name, in_channels=4, out_channels=3, deep_supervision=True)
    outputs = net(torch.randn(1, 4, 32, 64, 32))
    assert [tuple(o.shape[2:]) for o in outputs] == [(32, 64, 32), (16, 32, 16), (8, 16, 8), (4, 8, 4)]
    # the bundle saves the state dict and builds the network by name to load it
    torch.save(net.state_dict(), tmp_path / "model.pt")
    loaded = create_model(name, in_channels=4, out_channels=3, deep_supervision=True).eval()
    loaded.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    x = torch.randn(*NON_CUBIC)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), net.eval()(x))


@pytest.mark.parametrize("name", LIGHT_VARIANTS)
def test_light_variant_torchscript(name):
    net = create_model(name, in_channels=4, out_channels=3).eval()
    x = torch.randn(*NON_CUBIC)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        expected = net(x)
        torch.testing.assert_close(torch.jit.script(net)(x), expected)
        torch.testing.assert_close(torch.jit.trace(net, x, check_trace=False)(x), expected)


def test_nano_is_a_tenth_of_segformer3d():
    with torch.device("meta"):
        nano, segformer = create_model("refineformer3d_nano"), create_model("segformer3d")
    assert num_params(nano) <= 0.45e6 <= 0.1 * num_params(segformer)


def test_bundle_builds_the_light_variants_by_name():
    monai_bundle = pytest.importorskip("monai.bundle")
    for name in LIGHT_VARIANTS:
        parser = monai_bundle.ConfigParser(
            {
                "network_def": {
                    "_target_": "refineformer3d.networks.create_model",
                    "name": "refineformer3d_tiny",
                    "in_channels": 4,
                    "out_channels": 3,
                }
            }
        )
        parser["network_def#name"] = name  # as `--network_def#name NAME`
        net = parser.get_parsed_content("network_def")
        assert num_params(net) == num_params(create_model(name))


def test_nano_exports_to_onnx(tmp_path):
    # nano holds both ideas (axial attention, (2+1)-D kernels): the bundle's fast path must still export it
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    net = create_model("refineformer3d_nano", in_channels=4, out_channels=3).eval()
    x = torch.randn(1, 4, 32, 64, 32)
    path = tmp_path / "nano.onnx"
    torch.onnx.export(
        net, (x,), str(path), opset_version=17, dynamo=False, input_names=["image"], output_names=["logits"]
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), net(x), rtol=1e-3, atol=1e-4)


def test_benchmark_and_summary_take_the_light_variants():
    from refineformer3d.experiments.benchmark import default_models
    from refineformer3d.experiments.summary import model_factories

    assert set(LIGHT_VARIANTS) <= set(model_factories()) and set(LIGHT_VARIANTS) <= set(default_models())


def test_variants_part_times_every_network_against_the_reference():
    from refineformer3d.experiments.efficiency_ideas import variants

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        table = variants(["refineformer3d_nano"], "segformer3d", (32, 32, 32), (64, 32, 32), rounds=1)
    finally:
        torch.set_num_threads(previous)
    rows = [
        line.split(" | ")
        for line in table.splitlines()
        if line.startswith("| refineformer3d") or "| segformer3d" in line
    ]
    assert [r[0] for r in rows] == ["| segformer3d", "| refineformer3d_nano"]
    reference, nano = rows
    assert reference[2] == "1.000" and reference[-1] == "1.000 |"
    assert float(nano[2]) < 0.1  # a tenth of SegFormer3D's parameters
    assert "3 windows" in table  # 64 x 32 x 32 by 32^3 windows at overlap 0.5
