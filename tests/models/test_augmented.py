"""Flip test-time augmentation: real torch models, oracles by symmetry."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from operando.models.augmented import FlipAveraged, flip_sets
from operando.models.networks import ResidualUNet


def test_flip_sets_are_every_non_empty_set_of_spatial_dims():
    assert flip_sets(2) == ((-2,), (-1,), (-2, -1))
    assert len(flip_sets(3)) == 7 and len(set(flip_sets(3))) == 7
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 1"):
        flip_sets(1)


def test_flips_must_be_spatial_dims():
    with pytest.raises(ValueError, match=r"negative \(spatial\) dims, got \[\(1,\)\]"):
        FlipAveraged(torch.nn.Identity(), [(1,)])


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(2, 5), st.integers(1, 7), st.integers(1, 7), st.integers(0, 2**16))
def test_a_pointwise_model_is_unchanged_but_for_the_log_softmax(batch, classes, h, w, seed):
    """A 1×1 convolution commutes with every flip: the average is its own softmax."""
    torch.manual_seed(seed)
    model = torch.nn.Conv2d(1, classes, 1)
    x = torch.randn(batch, 1, h, w)
    with torch.no_grad():
        got = FlipAveraged(model, flip_sets(2))(x)
        want = torch.log_softmax(model(x), dim=1)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_the_average_is_flip_equivariant_though_the_network_is_not(spatial_dims):
    torch.manual_seed(spatial_dims)
    net = ResidualUNet.preset("small", spatial_dims=spatial_dims, out_channels=3).eval()
    shape = (2, 1, *(net.divisor * 2,) * spatial_dims)
    x = torch.randn(shape)
    averaged = FlipAveraged(net, flip_sets(spatial_dims)).eval()
    with torch.no_grad():
        base = averaged(x)
        for dims in flip_sets(spatial_dims):
            plain_shift = (net(x.flip(dims)).flip(dims) - net(x)).abs().max()
            assert plain_shift > 1e-3  # the network alone is not equivariant: the oracle has teeth
            torch.testing.assert_close(averaged(x.flip(dims)).flip(dims), base, atol=1e-5, rtol=1e-5)
    probabilities = base.exp().sum(dim=1)
    torch.testing.assert_close(probabilities, torch.ones_like(probabilities))
