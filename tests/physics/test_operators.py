"""The shared operator test base, run over every registered operator (edgedp.physics.operators.OPERATORS):
shapes, dtype/device follow the input, gradcheck in float64, adjointness, one-line shape errors."""

from __future__ import annotations

import pytest
import torch

from edgedp.physics import behind_radii, kernel_pyramid
from edgedp.physics import OPERATORS, DualPixelRender
from edgedp.physics import render_dual_pixel

NAMES = sorted(OPERATORS)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_every_physics_operator_is_registered():
    assert set(NAMES) == {"dual_pixel_render", "layer_blur", "patchwise_blur", "finite_difference"}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_device_follow_the_input(name, dtype, device):
    op, shape = OPERATORS[name](dtype=dtype, device=device)
    x = torch.rand(shape, dtype=dtype, device=device)
    y = op.A(x)
    assert tuple(y.shape) == op.output_shape(shape)
    assert y.dtype == dtype and y.device.type == device
    back = op.A_adjoint(torch.rand_like(y))
    assert tuple(back.shape) == shape and back.dtype == dtype and back.device.type == device


@pytest.mark.parametrize("name", NAMES)
def test_adjointness(name):
    op, shape = OPERATORS[name](dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.randn(op.output_shape(shape), generator=g, dtype=torch.float64)
    lhs = float((op.A(x) * y).sum())
    rhs = float((x * op.A_adjoint(y)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)
    assert abs(lhs) > 1e-3  # not a vacuous 0 == 0


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    op, shape = OPERATORS[name](dtype=torch.float64)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op.A, (x,), eps=1e-6, atol=1e-7, fast_mode=True)
    y = torch.randn(op.output_shape(shape), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op.A_adjoint, (y,), eps=1e-6, atol=1e-7, fast_mode=True)


@pytest.mark.parametrize("name", NAMES)
def test_bad_shape_is_one_line_value_error(name):
    op, shape = OPERATORS[name]()
    bad = shape[:-3] + (shape[-3] + 1,) + shape[-2:] if len(shape) >= 4 else shape[:-2]
    with pytest.raises(ValueError) as err:
        op.A(torch.zeros(bad))
    message = str(err.value)
    assert "\n" not in message and type(op).__name__ in message and str(tuple(bad)) in message
    with pytest.raises(ValueError) as err:
        op.A_adjoint(torch.zeros(op.output_shape(shape)[-2:]))
    assert "\n" not in str(err.value) and type(op).__name__ in str(err.value)


def test_dual_pixel_render_is_the_physics_function():
    op, shape = OPERATORS["dual_pixel_render"](dtype=torch.float64)
    x = torch.rand(shape, dtype=torch.float64)
    assert torch.equal(op.A(x), render_dual_pixel(x, op.weights, op.kernels))


def test_pseudo_inverse_is_stage1_and_inverts_a_sharp_layer():
    # Delta kernels, one layer, no prior: the closed form is the mean of the views exactly.
    kernels = kernel_pyramid(behind_radii(0, 1), "disk", dtype=torch.float64)  # (2, 1, 1, 1): a delta
    op = DualPixelRender(kernels, torch.ones(1, 1, 13, 17, dtype=torch.float64))
    views = torch.rand(1, 2, 13, 17, dtype=torch.float64)
    latent = op.pseudo_inverse(views, reg=0.0)
    torch.testing.assert_close(latent[:, 0], views.mean(1), atol=1e-12, rtol=0)
    torch.testing.assert_close(op.A(latent), views.mean(1, keepdim=True).expand(1, 2, 13, 17), atol=1e-12, rtol=0)
