"""ResidualUNet: architecture (parameter counts, MONAI's residual unit), shapes, errors, arguments."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operando.errors import ArchitectureError
from operando.models.networks import PRESETS, ResidualUNet, ResidualUnit

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# Parameter counts by formula, written from the paper's description, not from the code.
def _conv(cin: int, cout: int, k: int, d: int) -> int:
    return k**d * cin * cout + cout


def _unit(cin: int, cout: int, blocks: int, k: int, d: int) -> int:
    total, c = 0, cin
    for _ in range(blocks):
        total += _conv(c, cout, k, d) + 1 + 2 * cout  # conv, PReLU (one slope), batch norm (scale, shift)
        c = cout
    return total + (0 if cin == cout else _conv(cin, cout, 1, d))


def _expected(d: int, cin: int, cout: int, channels: tuple, blocks: int, k: int) -> int:
    widths = (cin, *channels)
    encoder = sum(_unit(widths[i], widths[i + 1], blocks, k, d) for i in range(len(channels)))
    decoder = sum(
        2**d * channels[i + 1] * channels[i] + channels[i] + _unit(2 * channels[i], channels[i], blocks, k, d)
        for i in range(len(channels) - 1)
    )
    return encoder + decoder + _conv(channels[0], cout, 1, d)


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_tiny_network_has_the_parameter_count_computed_by_hand():
    # channels (2, 4), 1 → 3 classes, 2D, two blocks of 3×3:
    # level 0: 25 + 43 + 4 = 72; level 1: 85 + 157 + 12 = 254; up 4·4·2+2 = 34;
    # merge (4 → 2): 79 + 43 + 10 = 132; head 2·3+3 = 9; total 501.
    assert _count(ResidualUNet(spatial_dims=2, out_channels=3, channels=(2, 4))) == 501


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("dims", [2, 3])
def test_preset_parameter_counts_match_the_formula(name, dims):
    with torch.device("meta"):
        m = ResidualUNet.preset(name, spatial_dims=dims, out_channels=5)
    p = PRESETS[name]
    assert _count(m) == _expected(dims, 1, 5, p["channels"], p["res_units"], p["kernel_size"])


def test_paper_preset_is_the_papers_network():
    with torch.device("meta"):
        m2 = ResidualUNet.preset("paper", spatial_dims=2, out_channels=5)
        m3 = ResidualUNet.preset("paper", spatial_dims=3, out_channels=5)
    # The counts quoted in operando.models.networks' docstring.
    assert (_count(m2), _count(m3)) == (34_868_255, 98_967_135)
    assert m2.arguments["channels"] == [32, 64, 128, 256, 512, 512, 512]
    assert m2.divisor == 64
    ups = [u for u in m2.modules() if isinstance(u, torch.nn.ConvTranspose2d)]
    assert len(ups) == 6 and all(u.kernel_size == (2, 2) and u.stride == (2, 2) for u in ups)
    pools = [u for u in m2.modules() if isinstance(u, torch.nn.MaxPool2d)]
    assert len(pools) == 1 and pools[0].kernel_size == 2


@pytest.mark.parametrize("dims", [2, 3])
def test_residual_unit_computes_what_monais_does_with_the_papers_layer_order(dims):
    monai_blocks = pytest.importorskip("monai.networks.blocks")
    torch.manual_seed(0)
    ours = ResidualUnit(dims, 3, 5, subunits=2, kernel_size=3, dropout=0.2)
    theirs = monai_blocks.ResidualUnit(
        dims, 3, 5, strides=1, kernel_size=3, subunits=2, adn_ordering="ADN",
        act="PRELU", norm="BATCH", dropout=0.2,
    )  # fmt: skip
    kinds = [type(m).__name__ for m in ours.modules() if not list(m.children())]
    assert kinds == [type(m).__name__ for m in theirs.modules() if not list(m.children())]
    assert kinds[:4] == [f"Conv{dims}d", "PReLU", "Dropout", f"BatchNorm{dims}d"]
    # Same tensors in the same order; randomize the norms so that they matter.
    mine = ours.state_dict()
    for (k, v), w in zip(mine.items(), theirs.state_dict().values(), strict=True):
        assert v.shape == w.shape, k
        if v.is_floating_point():
            v.copy_(torch.rand_like(v) + 0.5 if "running_var" in k else torch.randn_like(v))
    theirs.load_state_dict(dict(zip(theirs.state_dict(), mine.values(), strict=True)))
    x = torch.randn(2, 3, *(8,) * dims)
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x))


@pytest.mark.parametrize("dims", [2, 3])
def test_small_preset_maps_patches_to_class_logits(dims):
    torch.manual_seed(0)
    m = ResidualUNet.preset("small", spatial_dims=dims, out_channels=5)
    shape = (2, 1, *(16,) * dims)
    assert m(torch.randn(shape)).shape == (2, 5, *(16,) * dims)


@pytest.mark.parametrize(("dims", "size"), [(2, 512), (3, 64)])
def test_paper_preset_shapes(dims, size):
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        m = ResidualUNet.preset("paper", spatial_dims=dims, out_channels=5).eval()
        y = m(torch.empty(1, 1, *(size,) * dims))
    assert y.shape == (1, 5, *(size,) * dims)


@SETTINGS
@given(
    dims=st.sampled_from([2, 3]),
    batch=st.integers(1, 2),
    multiples=st.lists(st.integers(1, 3), min_size=3, max_size=3),
    classes=st.integers(1, 4),
)
def test_any_multiple_of_the_divisor_keeps_the_shape(dims, batch, multiples, classes):
    m = ResidualUNet(spatial_dims=dims, out_channels=classes, channels=(2, 3, 4), dropout=0.0).eval()
    spatial = tuple(m.divisor * n for n in multiples[:dims])
    with torch.no_grad():
        assert m(torch.randn(batch, 1, *spatial)).shape == (batch, classes, *spatial)


@SETTINGS
@given(dims=st.sampled_from([2, 3]), sizes=st.lists(st.integers(1, 20), min_size=3, max_size=3))
def test_any_other_size_raises_naming_size_and_divisor(dims, sizes):
    m = ResidualUNet(spatial_dims=dims, out_channels=2, channels=(2, 2, 2)).eval()
    spatial = tuple(sizes[:dims])
    if all(n % 4 == 0 for n in spatial):
        return
    with pytest.raises(
        ArchitectureError, match=rf"spatial size \({spatial[0]}, .*not a multiple of the divisor 4"
    ):
        m(torch.zeros(1, 1, *spatial))


@pytest.mark.parametrize(
    ("shape", "why"), [((1, 2, 8, 8), r"\(1, 2, 8, 8\) is not \(batch, 1, \?, \?\)"), ((1, 8, 8), "is not")]
)
def test_wrong_channels_or_dimensions_raise(shape, why):
    m = ResidualUNet(spatial_dims=2, out_channels=2, channels=(2, 2))
    with pytest.raises(ArchitectureError, match=why):
        m(torch.zeros(shape))


def test_unknown_preset_raises():
    with pytest.raises(ArchitectureError, match=r"'huge'.*unknown ResidualUNet preset; known: paper, small"):
        ResidualUNet.preset("huge", spatial_dims=2, out_channels=3)


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"spatial_dims": 1}, "spatial_dims must be 2 or 3, got 1"),
        ({"channels": ()}, r"channels must be one or more positive counts, got \(\)"),
        ({"channels": (4, 0)}, "channels must be one or more"),
        ({"out_channels": 0}, "out_channels must be ≥ 1, got 0"),
        ({"res_units": 0}, "res_units must be ≥ 1"),
        ({"dropout": 1.0}, r"dropout must lie in \[0, 1\), got 1.0"),
        ({"kernel_size": 4}, "kernel_size must be odd"),
    ],
)
def test_invalid_arguments_raise(kwargs, why):
    args = {"spatial_dims": 2, "out_channels": 2, "channels": (4, 8)} | kwargs
    with pytest.raises(ArchitectureError, match=why):
        ResidualUNet(**args)


@pytest.mark.parametrize("dims", [2, 3])
def test_arguments_rebuild_the_same_network_through_json(dims):
    torch.manual_seed(1)
    m = ResidualUNet(
        spatial_dims=dims, in_channels=2, out_channels=3, channels=(3, 5), res_units=1, kernel_size=5
    )
    args = json.loads(json.dumps(m.arguments))
    rebuilt = type(m)(**args)
    rebuilt.load_state_dict(m.state_dict())
    x = torch.randn(2, 2, *(8,) * dims)
    torch.testing.assert_close(rebuilt.eval()(x), m.eval()(x))
    assert args == {
        "spatial_dims": dims, "in_channels": 2, "out_channels": 3, "channels": [3, 5],
        "res_units": 1, "dropout": 0.2, "kernel_size": 5,
    }  # fmt: skip
    m.arguments["channels"].append(7)  # a copy: the network's own record stays intact
    assert m.arguments["channels"] == [3, 5]


def test_every_parameter_receives_a_gradient():
    torch.manual_seed(0)
    m = ResidualUNet(spatial_dims=2, out_channels=3, channels=(2, 4, 8))
    m(torch.randn(2, 1, 16, 16)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_learns_a_segmentation_that_needs_context():
    # Class = inside a disc; the disc's interior is a flat plateau equal to the
    # background far away, so a per-pixel rule cannot tell; the ring edges can.
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    images, labels = [], []
    for _ in range(16):
        cy, cx, r = [*torch.randint(10, 22, (2,)).tolist(), float(torch.randint(5, 9, ()).item())]
        dist = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        labels.append((dist < r).long())
        images.append((dist - r).abs().lt(1.5).float() + 0.1 * torch.randn(32, 32))
    x, y = torch.stack(images)[:, None], torch.stack(labels)
    m = ResidualUNet(spatial_dims=2, out_channels=2, channels=(8, 16, 32), dropout=0.0)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = (m.eval()(x).argmax(1) == y).float().mean()
    assert accuracy > 0.95
