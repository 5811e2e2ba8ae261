"""edgedp.physics.fourier: the centred kernel spectrum against its definition (and its numpy twin)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgedp.physics import centred_kernel_spectrum
from edgedp_runtime.instant import kernel_spectrum as runtime_kernel_spectrum


def rolled_spectrum(kernels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The definition: the kernel zero-padded to ``shape``, rolled so that tap (K//2, K//2) sits
    at (0, 0), rfft2 in float64."""
    k = kernels.shape[-1]
    pad = [(0, 0)] * (kernels.ndim - 2) + [(0, shape[0] - k), (0, shape[1] - k)]
    grid = np.pad(kernels.astype(np.float64), pad)
    return np.fft.rfft2(np.roll(grid, (-(k // 2), -(k // 2)), axis=(-2, -1)))


@pytest.mark.parametrize("shape", [(37, 53), (53, 38), (11, 11), (64, 81)])
@pytest.mark.parametrize("k", [1, 5, 11])
def test_centred_kernel_spectrum_is_the_rolled_rfft2(shape, k):
    g = torch.Generator().manual_seed(k)
    kernels = torch.rand(2, 3, k, k, generator=g, dtype=torch.float64)
    want = rolled_spectrum(kernels.numpy(), shape)
    got = centred_kernel_spectrum(kernels, shape)
    assert got.dtype == torch.complex128 and got.shape == (2, 3, shape[0], shape[1] // 2 + 1)
    assert np.abs(got.numpy() - want).max() <= 1e-10 * np.abs(want).max()
    got32 = centred_kernel_spectrum(kernels.float(), shape)
    assert got32.dtype == torch.complex64
    assert np.abs(got32.numpy() - want).max() <= 2e-6 * np.abs(want).max()
    # the device runtime's twin (numpy, complex64)
    twin = runtime_kernel_spectrum(kernels.float().numpy(), shape)
    assert twin.dtype == np.complex64 and twin.shape == want.shape
    assert np.abs(twin - want).max() <= 2e-6 * np.abs(want).max()


def test_centred_delta_has_a_flat_spectrum():
    delta = torch.zeros(1, 7, 7)
    delta[0, 3, 3] = 1
    spec = centred_kernel_spectrum(delta, (20, 31))
    assert torch.allclose(spec, torch.ones_like(spec), atol=1e-6)
