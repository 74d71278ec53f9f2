"""Fourier token mixing (a GFNet-style global filter) in place of attention."""

from __future__ import annotations

import pytest
import torch

from refineformer3d.networks import GlobalFilter3D, RefineFormer3D, create_model


def test_all_pass_filter_returns_the_projected_tokens():
    mixer = GlobalFilter3D(6, filter_size=(4, 4, 3))
    with torch.no_grad():
        mixer.filter[0].fill_(1.0)
        mixer.filter[1].zero_()
    x = torch.randn(2, 8 * 6 * 4, 6)
    torch.testing.assert_close(mixer(x, (8, 6, 4)), mixer.proj(x), rtol=1e-4, atol=1e-5)


def test_global_filter_is_a_circular_convolution():
    # a circular shift of the volume shifts the mixed tokens the same way, at a size other than the filter's grid
    mixer = GlobalFilter3D(4)
    volume = torch.randn(1, 10, 12, 6, 4)
    shifted = torch.roll(volume, shifts=(3, -2, 1), dims=(1, 2, 3))
    out = mixer(volume.reshape(1, -1, 4), (10, 12, 6)).reshape(1, 10, 12, 6, 4)
    out_shifted = mixer(shifted.reshape(1, -1, 4), (10, 12, 6)).reshape(1, 10, 12, 6, 4)
    torch.testing.assert_close(out_shifted, torch.roll(out, shifts=(3, -2, 1), dims=(1, 2, 3)), rtol=1e-4, atol=1e-5)


def test_filter_size_is_checked():
    with pytest.raises(ValueError, match="filter_size"):
        GlobalFilter3D(4, filter_size=(4, 0, 3))


@pytest.mark.parametrize("token_mixers", [("fourier", "attention", "attention", "attention"), ("fourier",) * 4])
def test_refineformer_with_fourier_stages_trains(token_mixers):
    net = create_model("refineformer3d_tiny", in_channels=4, out_channels=3, token_mixers=token_mixers)
    out = net(torch.randn(1, 4, 32, 32, 64))
    assert out.shape == (1, 3, 32, 32, 64)
    out.mean().backward()
    filters = [m.filter for m in net.modules() if isinstance(m, GlobalFilter3D)]
    assert len(filters) == 2 * token_mixers.count("fourier")
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in filters)


@pytest.mark.parametrize("token_mixers", [("fourier", "conv", "attention", "attention"), ("fourier",)])
def test_bad_token_mixers_are_rejected(token_mixers):
    with pytest.raises(ValueError, match="token_mixers"):
        RefineFormer3D(token_mixers=token_mixers)
