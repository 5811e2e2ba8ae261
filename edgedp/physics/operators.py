"""The physics as linear operator objects (deepinv style): ``A`` (forward), ``A_adjoint`` (its
exact transpose) and, where the method has one, ``pseudo_inverse``.

Each operator wraps the pure tensor functions of :mod:`edgedp.physics.blur` (which stay the API the
fit calls); the objects give the forward model one shape that tests and newcomers can hold:

======================  ===========================================  ============================
operator                ``A``                                        ``A_adjoint``
======================  ===========================================  ============================
:class:`DualPixelRender`  latent ``(B, L, H, W)`` -> views ``(B, 2, H, W)``  views -> latent
:class:`LayerBlur`      stack ``(B, L, H, W)`` -> ``(B, V, L, H, W)``   blurred -> stack
:class:`PatchwiseBlur`  stack ``(B, L, H, W)`` -> ``(B, V, L, H, W)``   blurred -> stack
:class:`FiniteDifference`  image ``(..., H, W)`` -> ``(..., 2, H, W)``    gradient -> image
======================  ===========================================  ============================

Conventions: CONVENTIONS.md (true convolution, replicated borders, views 0 = left, 1 = right).
The blur operators are linear in their input; their adjoint is the vector-Jacobian product of
``A`` (exact: the replicate border folds back onto the edge pixels, as the transpose must), so
``<A x, y> = <x, A_adjoint y>`` to float rounding.  dtype and device follow the input; a wrong
input shape is a one-line ValueError naming the operator.  :data:`OPERATORS` registers every
operator with a small example (the shared operator tests run over it).

>>> import torch
>>> from edgedp.physics import behind_radii, kernel_pyramid
>>> kernels = kernel_pyramid(behind_radii(2, 3), "disk")            # (2, 3, 5, 5)
>>> weights = torch.full((1, 3, 17, 19), 1 / 3)
>>> render = DualPixelRender(kernels, weights)
>>> latent = torch.rand(1, 3, 17, 19)
>>> render.A(latent).shape, render.A_adjoint(render.A(latent)).shape
(torch.Size([1, 2, 17, 19]), torch.Size([1, 3, 17, 19]))
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .blur import blur_stack_fft, blur_stack_patchwise, render_dual_pixel
from .fourier import LatentSolver
from .noise import default_latent_reg

__all__ = [
    "OPERATORS",
    "DualPixelRender",
    "FiniteDifference",
    "LayerBlur",
    "LinearOperator",
    "PatchwiseBlur",
    "register_operator",
]

#: name -> ``example(dtype, device) -> (operator, input_shape)``: every registered operator.
OPERATORS: dict[str, Callable[..., tuple["LinearOperator", tuple[int, ...]]]] = {}


def register_operator(name: str):
    """Class decorator: register ``cls.example`` under ``name`` in :data:`OPERATORS`."""

    def deco(cls):
        OPERATORS[name] = cls.example
        return cls

    return deco


class LinearOperator:
    """A linear map with its transpose.  Subclasses define :meth:`A`, :meth:`input_shape`
    (the input shape that gives an output of a shape) and :meth:`output_shape`; the adjoint
    is the exact vector-Jacobian product of :meth:`A` unless a subclass writes it out."""

    name = "operator"

    def A(self, x: Tensor) -> Tensor:  # noqa: N802 (deepinv's name)
        raise NotImplementedError

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def input_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        """``A^T y``: the vector-Jacobian product of the linear map (exact transpose);
        differentiable in ``y`` (its own transpose is :meth:`A`)."""
        self.input_shape(tuple(y.shape))
        return _Adjoint.apply(y, self)

    def vjp(self, y: Tensor) -> Tensor:
        """``A^T y`` by autograd, without a graph (what :meth:`A_adjoint` computes)."""
        shape = self.input_shape(tuple(y.shape))
        with torch.enable_grad():
            x0 = torch.zeros(shape, dtype=y.dtype, device=y.device, requires_grad=True)
            (g,) = torch.autograd.grad(self.A(x0), x0, y.detach())
        return g

    def _expect(self, shape: tuple[int, ...], expected: tuple[int | None, ...], what: str) -> None:
        ok = len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))
        if not ok:
            want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
            raise ValueError(f"{self.name}: {what} must be {want}, got {tuple(shape)}")


class _Adjoint(torch.autograd.Function):
    """``A^T y`` whose backward is ``A`` (the transpose of a linear map's transpose)."""

    @staticmethod
    def forward(ctx, y: Tensor, op: LinearOperator) -> Tensor:  # type: ignore[override]
        ctx.op = op
        return op.vjp(y)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return ctx.op.A(grad), None


@register_operator("dual_pixel_render")
class DualPixelRender(LinearOperator):
    """The DP image formation (thesis Eq. 9 / 11) with fixed kernels and compositing weights:
    ``A(latent)[b, v] = sum_i weights[b, i] * (latent[b, i] conv kernels[v, i])``
    (:func:`edgedp.physics.blur.render_dual_pixel`), linear in the latent map.

    Args:
        kernels: ``(2, L, K, K)`` [left, right] layer kernels.
        weights: compositing weights ``(B, L, H, W)`` or ``(L, H, W)`` (B = 1).
    """

    name = "DualPixelRender"

    def __init__(self, kernels: Tensor, weights: Tensor) -> None:
        if kernels.dim() != 4 or kernels.shape[0] != 2:
            raise ValueError(f"{self.name}: kernels must be (2, L, K, K), got {tuple(kernels.shape)}")
        self.kernels = kernels
        self.weights = weights if weights.dim() == 4 else weights[None]
        if self.weights.dim() != 4 or self.weights.shape[1] != kernels.shape[1]:
            raise ValueError(
                f"{self.name}: weights must be (B, {kernels.shape[1]}, H, W), got {tuple(weights.shape)}")

    def output_shape(self, shape):
        b, _, h, w = self.weights.shape
        self._expect(shape, (b, self.weights.shape[1], h, w), "latent")
        return (b, 2, h, w)

    def input_shape(self, shape):
        b, layers, h, w = self.weights.shape
        self._expect(shape, (b, 2, h, w), "views")
        return (b, layers, h, w)

    def A(self, latent: Tensor) -> Tensor:  # noqa: N802
        self.output_shape(tuple(latent.shape))
        return render_dual_pixel(latent, self.weights.to(latent), self.kernels.to(latent))

    def pseudo_inverse(self, views: Tensor, reg: float | None = None) -> Tensor:
        """Stage 1's closed form (:class:`edgedp.physics.fourier.LatentSolver`): for every layer the
        regularized least-squares latent that explains the whole pair through that layer's
        kernels alone, ``(B, L, H, W)``.  It does not depend on the weights: Stage 1 solves it
        before G_D exists.  ``reg``: the gradient prior's weight (default
        :func:`edgedp.physics.noise.default_latent_reg` of the views)."""
        self.input_shape(tuple(views.shape))
        if reg is None:
            reg = default_latent_reg(views[0])
        return LatentSolver(views, self.kernels.to(views), reg).solve()

    @classmethod
    def example(cls, dtype=torch.float32, device=None):
        from .kernels import both_radii, kernel_pyramid

        g = torch.Generator().manual_seed(0)
        kernels = kernel_pyramid(both_radii(2, 1), "butterworth", dtype=dtype, device=device)  # (2, 3, 5, 5)
        weights = torch.rand(2, 3, 9, 11, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
        return cls(kernels, weights / weights.sum(1, keepdim=True)), (2, 3, 9, 11)


class _StackBlur(LinearOperator):
    """Every layer of a stack blurred with its per-view kernel: ``(B, L, H, W) -> (B, V, L, H, W)``;
    the kernels' last four axes are ``(V, L, K, K)`` (``kernel_axes`` names them all)."""

    kernel_axes = "(V, L, K, K)"

    def __init__(self, kernels: Tensor) -> None:
        if kernels.dim() != self.kernel_axes.count(",") + 1:
            raise ValueError(f"{self.name}: kernels must be {self.kernel_axes}, got {tuple(kernels.shape)}")
        self.kernels = kernels
        self.views, self.layers = int(kernels.shape[-4]), int(kernels.shape[-3])

    def output_shape(self, shape):
        self._expect(shape, (None, self.layers, None, None), "stack")
        b, layers, h, w = shape
        return (b, self.views, layers, h, w)

    def input_shape(self, shape):
        self._expect(shape, (None, self.views, self.layers, None, None), "blurred stack")
        return (shape[0],) + tuple(shape[2:])

    def blur(self, stack: Tensor, kernels: Tensor) -> Tensor:
        raise NotImplementedError

    def A(self, stack: Tensor) -> Tensor:  # noqa: N802
        self.output_shape(tuple(stack.shape))
        return self.blur(stack, self.kernels.to(stack))


@register_operator("layer_blur")
class LayerBlur(_StackBlur):
    """Uniform blur of every layer (:func:`edgedp.physics.blur.blur_stack_fft`): ``(B, L, H, W) ->
    (B, V, L, H, W)``; ``kernels (V, L, K, K)``."""

    name = "LayerBlur"

    def blur(self, stack: Tensor, kernels: Tensor) -> Tensor:
        return blur_stack_fft(stack, kernels)

    @classmethod
    def example(cls, dtype=torch.float32, device=None):
        from .kernels import behind_radii, kernel_pyramid

        return cls(kernel_pyramid(behind_radii(2, 3), "butterworth", dtype=dtype, device=device)), (1, 3, 9, 11)


@register_operator("patchwise_blur")
class PatchwiseBlur(_StackBlur):
    """Non-uniform blur over a patch grid (:func:`edgedp.physics.blur.blur_stack_patchwise`, Stage 3):
    ``(B, L, H, W) -> (B, V, L, H, W)``; ``kernels (Pr, Pc, V, L, K, K)``."""

    name = "PatchwiseBlur"
    kernel_axes = "(Pr, Pc, V, L, K, K)"

    def blur(self, stack: Tensor, kernels: Tensor) -> Tensor:
        return blur_stack_patchwise(stack, kernels)

    @classmethod
    def example(cls, dtype=torch.float32, device=None):
        g = torch.Generator().manual_seed(1)
        k = torch.rand(2, 2, 2, 2, 3, 3, generator=g, dtype=torch.float64)
        k = (k / k.sum((-1, -2), keepdim=True)).to(device=device, dtype=dtype)
        return cls(k), (1, 2, 9, 11)


@register_operator("finite_difference")
class FiniteDifference(LinearOperator):
    """The image gradient: ``A(x)`` ``(..., H, W) -> (..., 2, H, W)`` forward differences,
    ``g[0][r, c] = x[r, c + 1] - x[r, c]``, ``g[1][r, c] = x[r + 1, c] - x[r, c]``, zero in the last
    column / row (Neumann, the replicated border); ``A_adjoint(g)`` its written-out exact transpose
    ``(..., 2, H, W) -> (..., H, W)`` (a negative backward divergence).  Its transfer functions on a
    circular grid: :func:`edgedp.physics.fourier.gradient_operator_spectra`.  Stateless: ``A`` and
    ``A_adjoint`` also work on the class (``FiniteDifference.A(x)``, as the deconvolution calls it).

    >>> x = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]])
    >>> FiniteDifference.A(x)[0]
    tensor([[1., 2., 0.],
            [0., 0., 0.]])
    """

    name = "FiniteDifference"

    @staticmethod
    def output_shape(shape):
        if len(shape) < 2:
            raise ValueError(f"{FiniteDifference.name}: image must be (..., H, W), got {tuple(shape)}")
        return tuple(shape[:-2]) + (2,) + tuple(shape[-2:])

    @staticmethod
    def input_shape(shape):
        if len(shape) < 3 or shape[-3] != 2:
            raise ValueError(f"{FiniteDifference.name}: gradient must be (..., 2, H, W), got {tuple(shape)}")
        return tuple(shape[:-3]) + tuple(shape[-2:])

    @staticmethod
    def A(x: Tensor) -> Tensor:  # noqa: N802
        FiniteDifference.output_shape(tuple(x.shape))
        gx = torch.zeros_like(x)
        gy = torch.zeros_like(x)
        gx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
        gy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
        return torch.stack([gx, gy], dim=-3)

    @staticmethod
    def A_adjoint(g: Tensor) -> Tensor:  # noqa: N802
        FiniteDifference.input_shape(tuple(g.shape))
        gx, gy = g[..., 0, :, :], g[..., 1, :, :]
        out = torch.zeros_like(gx)
        out[..., :, :-1] -= gx[..., :, :-1]
        out[..., :, 1:] += gx[..., :, :-1]
        out[..., :-1, :] -= gy[..., :-1, :]
        out[..., 1:, :] += gy[..., :-1, :]
        return out

    @classmethod
    def example(cls, dtype=torch.float32, device=None):
        return cls(), (2, 9, 11)
