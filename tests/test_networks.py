"""Tests of refineformer3d.networks: shapes, gradients, budgets, errors, registry, export.

Small configurations and inputs keep the file fast on a 2-core CPU; FLOPs at the full 4 x 128^3 size are counted on
the ``meta`` device, where no arithmetic runs.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from refineformer3d.networks import (
    REFINEFORMER3D_VARIANTS,
    MixVisionTransformer3D,
    RefineFormer3D,
    SegFormer3D,
    create_model,
    list_models,
    register_model,
)
from refineformer3d.networks.blocks import GhostConv3d, LowRankLinear
from refineformer3d.networks.heads import PatchExpandConvTranspose3d, PointwiseConv3d, space_to_depth

# narrow encoders so that forward/backward on 32^3-64^3 inputs take milliseconds
TINY_ENCODER = dict(embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 2, 4))
TINY_REFINE = dict(**TINY_ENCODER, decoder_channels=(8, 8, 12, 16), refine_channels=(4, 8))
TINY_SEGFORMER = dict(**TINY_ENCODER, decoder_channels=16)

# parameter budgets (4 input channels, 3 classes) that the variants promise
PARAM_BUDGETS = {
    "refineformer3d_tiny": (0, 1.0e6),
    "refineformer3d_tiny_axial": (0, 1.0e6),
    "refineformer3d_tiny_slices": (0, 1.0e6),
    "refineformer3d_nano": (0, 0.45e6),  # a tenth of SegFormer3D
    "refineformer3d_small": (0, 3.0e6),
    "refineformer3d_base": (0, 4.51e6),
    "segformer3d": (4.51e6 * 0.99, 4.51e6 * 1.01),
    # the published MiT sizes (SegFormer paper, Table 1) at 4 channels and 3 classes
    "segformer2d_b0": (3.7e6 * 0.99, 3.7e6 * 1.01),
    "segformer2d_b1": (13.7e6 * 0.99, 13.7e6 * 1.01),
    "segformer2d_b2": (27.4e6 * 0.99, 27.4e6 * 1.01),
    "segformer2d_b3": (47.2e6 * 0.99, 47.2e6 * 1.01),
    "segformer2d_b4": (64.0e6 * 0.99, 64.0e6 * 1.01),
    "segformer2d_b5": (84.6e6 * 0.99, 84.6e6 * 1.01),
}
# the larger slice-wise SegFormers take seconds each on a 2-core CPU; B0 stands for them in the default run
SLOW_VARIANTS = {f"segformer2d_b{i}" for i in range(1, 6)}
# most CPU forwards share one small non-cubic shape: oneDNN compiles kernels once per shape
X_SHAPE = (1, 4, 32, 64, 32)
SEGFORMER3D_REFERENCE_GFLOP = 25.4  # the public code at 4 x 128^3, FlopCounterMode on CPU


@pytest.fixture
def meta_device():
    """Build networks without allocating or initialising weights, for tests that only look at structure."""
    with torch.device("meta"):
        yield


def tiny_net(cls, **kwargs):
    config = TINY_REFINE if cls is RefineFormer3D else TINY_SEGFORMER
    return cls(in_channels=4, out_channels=3, **{**config, **kwargs})


def num_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def meta_gflop(name: str, roi=(128, 128, 128)) -> float:
    """Complete FLOP count (attention included) of a registered variant at 4 x roi, without running it."""
    with torch.device("meta"):
        net = create_model(name, in_channels=4, out_channels=3).eval()
        x = torch.empty(1, 4, *roi)
    with FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops() / 1e9


def cpu_gflop(name: str, roi=(32, 32, 64), **overrides) -> float:
    """FLOPs as the SegFormer3D reference counts them (CPU run, fused attention not counted), scaled to 128^3."""
    net = create_model(name, in_channels=4, out_channels=3, **overrides).eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 4, *roi))
    return counter.get_total_flops() / 1e9 * (128**3 / (roi[0] * roi[1] * roi[2]))


# ---------------------------------------------------------------------------------------------------- registry


def test_registry_names_and_api():
    assert {"refineformer3d_tiny", "refineformer3d_small", "refineformer3d_base", "segformer3d"} <= set(list_models())
    assert list_models("segformer3d*") == ["segformer3d"]
    assert list_models("segformer2d_*") == [f"segformer2d_b{i}" for i in range(6)]
    assert isinstance(create_model("segformer3d"), SegFormer3D)
    with pytest.raises(ValueError, match="refineformer3d_small"):
        create_model("refineformer3d_huge")


@pytest.mark.usefixtures("meta_device")
def test_default_constructor_is_the_small_variant():
    default, small = RefineFormer3D(in_channels=4, out_channels=3), create_model("refineformer3d_small")
    assert REFINEFORMER3D_VARIANTS["small"] == {}
    assert num_params(default) == num_params(small)
    assert [(k, v.shape) for k, v in default.state_dict().items()] == [
        (k, v.shape) for k, v in small.state_dict().items()
    ]
    assert num_params(RefineFormer3D.from_variant("small", in_channels=4, out_channels=3)) == num_params(small)
    assert num_params(SegFormer3D()) == num_params(create_model("segformer3d"))


@pytest.mark.usefixtures("meta_device")
def test_from_variant_and_overrides():
    net = RefineFormer3D.from_variant(
        "tiny", in_channels=2, out_channels=5, embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8)
    )
    assert net.encoder.embed_dims == (16, 32, 64, 128)
    assert net.decode_head.classifier.out_channels == 5
    assert isinstance(RefineFormer3D.from_variant("refineformer3d_base"), RefineFormer3D)
    with pytest.raises(ValueError, match="refineformer3d_tiny"):
        RefineFormer3D.from_variant("huge")
    with pytest.raises(ValueError, match="no variant"):
        RefineFormer3D.from_variant("segformer3d")  # registered, but not a RefineFormer3D


def test_register_model_rejects_duplicates():
    def segformer3d(**kwargs):
        return SegFormer3D(**kwargs)

    with pytest.raises(ValueError, match="already registered"):
        register_model(segformer3d)


def test_bundle_style_config():
    monai_bundle = pytest.importorskip("monai.bundle")
    parser = monai_bundle.ConfigParser(
        {
            "network_def": {
                "_target_": "refineformer3d.networks.RefineFormer3D",
                "in_channels": 4,
                "out_channels": 3,
                "deep_supervision": False,
            }
        }
    )
    parser["network_def#embed_dims"] = [16, 32, 64, 128]  # as `--network_def#embed_dims "[16,32,64,128]"`
    parser["network_def#decoder_channels"] = [16, 24, 32, 48]
    parser["network_def#norm"] = ["group", {"num_groups": 4}]
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, RefineFormer3D) and net.encoder.embed_dims == (16, 32, 64, 128)


def test_state_dict_names():
    keys = list(tiny_net(RefineFormer3D).state_dict())
    assert "encoder.stages.0.blocks.0.attn.q.weight" in keys
    assert "encoder.stages.3.blocks.1.mlp.fc1.down.weight" in keys
    assert all(k.startswith(("encoder.stages.", "decode_head.")) for k in keys)
    keys = list(tiny_net(SegFormer3D).state_dict())
    assert "encoder.stages.2.blocks.1.mlp.dw_norm.running_mean" in keys
    assert all(k.startswith(("encoder.stages.", "decode_head.")) for k in keys)


# ---------------------------------------------------------------------------------------------- every variant


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_VARIANTS else n for n in list_models()]
)
def test_every_registered_variant(name):
    net = create_model(name, in_channels=4, out_channels=3)
    low, high = PARAM_BUDGETS[name]  # a new variant must state its budget here
    assert low <= num_params(net) <= high, f"{name}: {num_params(net)} parameters"
    assert 32 % net.spatial_divisor == 0
    y = net(torch.randn(2, 4, 32, 32, 32))  # batch 2: SegFormer3D's batch norms see 1 voxel at 1/32
    assert y.shape == (2, 3, 32, 32, 32)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing}"


# ----------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("cls", [RefineFormer3D, SegFormer3D])
@pytest.mark.parametrize("shape", [(1, 4, 32, 32, 32), X_SHAPE, (2, 4, 64, 32, 96)])
def test_output_shape_equals_input_shape(cls, shape):
    net = tiny_net(cls).eval()
    with torch.inference_mode():
        y = net(torch.randn(*shape))
    assert y.shape == (shape[0], 3, *shape[2:])


def test_encoder_tracks_non_cubic_shapes():
    encoder = MixVisionTransformer3D(in_channels=4, **TINY_ENCODER)
    assert encoder.reductions == (4, 8, 16, 32)
    features = encoder(torch.randn(1, 4, 96, 128, 64))
    assert [tuple(f.shape[1:]) for f in features] == [
        (8, 24, 32, 16),
        (16, 12, 16, 8),
        (24, 6, 8, 4),
        (32, 3, 4, 2),
    ]


def test_eval_is_deterministic():
    for cls in (RefineFormer3D, SegFormer3D):
        net = tiny_net(cls, drop_path_rate=0.2, attn_drop_rate=0.1).eval()
        x = torch.randn(*X_SHAPE)
        with torch.inference_mode():
            assert torch.equal(net(x), net(x))


def test_autocast_bfloat16():
    for cls in (RefineFormer3D, SegFormer3D):
        net = tiny_net(cls).eval()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(torch.randn(*X_SHAPE))
        assert y.shape == (1, 3, *X_SHAPE[2:])
        assert torch.isfinite(y.float()).all()


# ------------------------------------------------------------------------------------------------ deep supervision


def test_deep_supervision_outputs_and_loss():
    losses = pytest.importorskip("monai.losses")
    net = tiny_net(RefineFormer3D, deep_supervision=True, deep_supr_num=3)
    x = torch.randn(2, 4, 64, 32, 32)
    outputs = net(x)
    assert isinstance(outputs, list) and len(outputs) == 4
    assert [tuple(o.shape) for o in outputs] == [
        (2, 3, 64, 32, 32),
        (2, 3, 32, 16, 16),
        (2, 3, 16, 8, 8),
        (2, 3, 8, 4, 4),
    ]
    target = (torch.rand(2, 3, 64, 32, 32) > 0.5).float()
    loss = losses.DeepSupervisionLoss(losses.DiceLoss(sigmoid=True))(outputs, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    with torch.inference_mode():
        assert isinstance(net(x), torch.Tensor)


def test_deep_supervision_off_returns_tensor_in_training():
    net = tiny_net(RefineFormer3D)
    assert isinstance(net(torch.randn(1, 4, 32, 32, 32)), torch.Tensor)
    assert not any("aux_heads" in k for k in net.state_dict())


# ------------------------------------------------------------------------------------------------------ budgets


@pytest.mark.usefixtures("meta_device")
def test_segformer3d_matches_published_parameter_count():
    params = num_params(SegFormer3D(in_channels=4, out_channels=3))
    assert abs(params - 4.51e6) / 4.51e6 < 0.01, params


@pytest.mark.usefixtures("meta_device")
def test_refineformer3d_default_parameter_budget():
    assert num_params(RefineFormer3D(in_channels=4, out_channels=3)) < 3.0e6
    assert num_params(create_model("refineformer3d_tiny", in_channels=4, out_channels=3)) <= 1.0e6


def test_flops_scale_linearly_on_cpu():
    # convolutions and linear layers are linear in the voxel count; CPU attention is invisible to the counter
    # (test_flop_budgets_at_128_cubed checks the same for SegFormer3D against its published count)
    small = cpu_gflop("refineformer3d_tiny", (32, 32, 32), **TINY_REFINE)
    large = cpu_gflop("refineformer3d_tiny", X_SHAPE[2:], **TINY_REFINE)
    assert small == pytest.approx(large, rel=1e-6)


def test_flop_budgets_at_128_cubed():
    segformer_cpu = cpu_gflop("segformer3d")
    assert segformer_cpu == pytest.approx(SEGFORMER3D_REFERENCE_GFLOP, rel=0.01)
    assert cpu_gflop("refineformer3d_small") < 0.5 * segformer_cpu
    # the complete count (attention included) must be below SegFormer3D's too
    assert meta_gflop("refineformer3d_small") < 0.6 * meta_gflop("segformer3d")


# ------------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("cls", [RefineFormer3D, SegFormer3D])
def test_bad_spatial_size_names_dims_and_divisor(cls):
    net = tiny_net(cls)
    with pytest.raises(ValueError, match=r"spatial dims \(96, 100, 64\) must each be divisible by 32"):
        net(torch.randn(1, 4, 96, 100, 64))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(depths=(2, 2, 2)), "one value per stage"),
        (dict(num_heads=(1, 2, 5, 8)), "divisible by num_heads"),
        (dict(strides=(4, 2, 2, 4), patch_sizes=(7, 3, 3, 3)), "between 1 and patch_sizes"),
        (dict(patch_sizes=(7, 3, 4, 3)), "odd"),
        (dict(patch_embed="dense"), "patch_embed"),
        (dict(drop_path_rate=1.5), "drop_path_rate"),
        (dict(ffn_rank_ratio=0.0), "ffn_rank_ratio"),
        (dict(decoder_channels=(8, 8, 8)), "decoder_channels"),
        (dict(refine_channels=(8,)), "refine_channels"),
        (dict(strides=(2, 2, 2, 2), patch_sizes=(3, 3, 3, 3)), "stem_stride"),
        (dict(deep_supervision=True, deep_supr_num=9), "deep_supr_num"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_net(RefineFormer3D, **kwargs)


def test_spatial_divisor_follows_strides_and_sr_ratios():
    assert tiny_net(RefineFormer3D, sr_ratios=(8, 4, 2, 1)).spatial_divisor == 32
    assert tiny_net(RefineFormer3D, sr_ratios=(16, 2, 1, 1)).spatial_divisor == 64
    net = tiny_net(
        SegFormer3D,
        depths=(1, 1, 1),
        embed_dims=(8, 16, 24),
        num_heads=(1, 2, 2),
        sr_ratios=(2, 1, 1),
        mlp_ratios=(4, 4, 4),
        patch_sizes=(7, 3, 3),
        strides=(4, 2, 2),
    )
    assert net.spatial_divisor == 16
    assert net(torch.randn(1, 4, 16, 48, 32)).shape == (1, 3, 16, 48, 32)


# ------------------------------------------------------------------------------------------------ building blocks


def test_ghost_conv_and_low_rank_linear_save_parameters():
    ghost = GhostConv3d(32, 64, 3, stride=2)
    dense = torch.nn.Conv3d(32, 64, 3, stride=2, padding=1)
    x = torch.randn(1, 32, 8, 8, 8)
    assert ghost(x).shape == dense(x).shape
    assert num_params(ghost) < 0.55 * num_params(dense)
    assert GhostConv3d(4, 7, 3)(torch.randn(1, 4, 4, 4, 4)).shape[1] == 7
    low_rank = LowRankLinear(64, 256, rank=32)
    assert low_rank(torch.randn(5, 64)).shape == (5, 256)
    assert num_params(low_rank) < 0.65 * num_params(torch.nn.Linear(64, 256))


def test_space_to_depth_is_lossless():
    x = torch.arange(2 * 3 * 4 * 6 * 8, dtype=torch.float).reshape(2, 3, 4, 6, 8)
    y = space_to_depth(x, 2)
    assert y.shape == (2, 24, 2, 3, 4)
    assert torch.equal(y.flatten().sort().values, x.flatten().sort().values)
    assert torch.equal(y[0, :8, 0, 0, 0], x[0, 0, :2, :2, :2].flatten())


# each fast module against the torch module it replaces, loaded with the same parameters under the same keys
MATRIX_PRODUCT_MODULES = {
    "patch_expand": (
        lambda: PatchExpandConvTranspose3d(6, 5, 2),
        lambda: torch.nn.ConvTranspose3d(6, 5, 2, stride=2),
    ),
    "patch_expand_anisotropic": (
        lambda: PatchExpandConvTranspose3d(6, 5, (2, 4, 1)),
        lambda: torch.nn.ConvTranspose3d(6, 5, (2, 4, 1), stride=(2, 4, 1)),
    ),
    "pointwise": (lambda: PointwiseConv3d(6, 5), lambda: torch.nn.Conv3d(6, 5, 1)),
}


@pytest.mark.parametrize("name", sorted(MATRIX_PRODUCT_MODULES))
@pytest.mark.parametrize("channels_last", [False, True])
def test_matrix_product_modules_equal_the_convolutions(name, channels_last):
    make, make_reference = MATRIX_PRODUCT_MODULES[name]
    module, reference = make(), make_reference()
    reference.load_state_dict(module.state_dict())
    x = torch.randn(2, 6, 3, 4, 5)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    y = module(x)
    torch.testing.assert_close(y, reference(x))
    assert y.is_contiguous(memory_format=torch.channels_last_3d)


def test_patch_expand_stride_is_its_kernel():
    with pytest.raises(TypeError):
        PatchExpandConvTranspose3d(6, 5, 2, stride=1)


@pytest.mark.parametrize("grad, slab_values", [(False, 1), (False, 1 << 17), (False, 1 << 40), (True, 1 << 17)])
def test_refine_head_full_resolution_equals_its_modules(grad, slab_values):
    # the head computes upsample + classifier on the stem grid, in slabs of stem slices in CPU inference (one slice,
    # 4 slices, all at once here); the modules themselves define what it must equal
    net = tiny_net(RefineFormer3D).train(grad)
    head = net.decode_head
    head.slab_values = slab_values
    x = torch.randn(2, 4, 64, 32, 64, requires_grad=grad)
    stem = torch.randn(2, head.stem[0].out_channels, 32, 16, 32)
    fused = head._classify_full_resolution(stem, x)
    folded = torch.cat([stem, space_to_depth(x, head.stem_stride)], dim=1)
    upsampled = torch.nn.functional.conv_transpose3d(
        folded, head.upsample.weight, head.upsample.bias, stride=head.stem_stride
    )
    reference = head.classifier(torch.relu(upsampled))
    torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-5)
    if grad:
        (g_fused,) = torch.autograd.grad(fused.square().sum(), head.upsample.weight)
        (g_reference,) = torch.autograd.grad(reference.square().sum(), head.upsample.weight)
        torch.testing.assert_close(g_fused, g_reference, rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("cls", [RefineFormer3D, SegFormer3D])
def test_torchscript_trace(cls):
    net = tiny_net(cls).eval()
    x = torch.randn(*X_SHAPE)
    # outputs are compared below; the profiling executor's warm-up passes would only cost time
    with torch.no_grad(), torch.jit.optimized_execution(False):
        traced = torch.jit.trace(net, x, check_trace=False)
        torch.testing.assert_close(traced(x), net(x))


def test_torchscript_script():
    net = tiny_net(RefineFormer3D).eval()
    x = torch.randn(*X_SHAPE)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        torch.testing.assert_close(torch.jit.script(net)(x), net(x))


def test_onnx_export(tmp_path):
    pytest.importorskip("onnx")
    net = tiny_net(RefineFormer3D).eval()
    x = torch.randn(*X_SHAPE)
    path = tmp_path / "net.onnx"
    torch.onnx.export(
        net, (x,), str(path), opset_version=17, dynamo=False, input_names=["image"], output_names=["logits"]
    )
    assert path.stat().st_size > 0
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), net(x), rtol=1e-3, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["refineformer3d_small", "segformer3d"])
def test_full_size_forward(name):
    net = create_model(name, in_channels=4, out_channels=3).eval()
    with torch.inference_mode():
        y = net(torch.randn(1, 4, 128, 128, 128))
    assert y.shape == (1, 3, 128, 128, 128) and torch.isfinite(y).all()


def test_regions_from_classes_starts_each_region_at_its_log_odds_against_background(tmp_path):
    from refineformer3d.networks import regions_from_classes

    classes = create_model("refineformer3d_tiny", in_channels=4, out_channels=3).eval()
    torch.save({k: v.half() for k, v in classes.state_dict().items()}, tmp_path / "classes.pt")  # as shipped
    state = regions_from_classes(tmp_path / "classes.pt", tmp_path / "regions.pt")
    assert torch.load(tmp_path / "regions.pt", weights_only=True).keys() == state.keys()
    classes.load_state_dict(torch.load(tmp_path / "classes.pt", weights_only=True))
    regions = create_model("refineformer3d_tiny", in_channels=4, out_channels=3).eval()
    regions.load_state_dict(state)
    with torch.no_grad():
        x = torch.randn(1, 4, 32, 32, 32)
        c, r = classes(x), regions(x)
    torch.testing.assert_close(r[:, 0], c[:, 1] - c[:, 0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(r[:, 1], (c[:, 1] + c[:, 2]) / 2 - c[:, 0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(r[:, 2], r[:, 0])
    four = create_model("refineformer3d_tiny", in_channels=4, out_channels=4).state_dict()
    torch.save(four, tmp_path / "four.pt")
    with pytest.raises(ValueError, match="3-class"):
        regions_from_classes(tmp_path / "four.pt", tmp_path / "out.pt")
