"""The physics of a dual-pixel capture (no I/O, no solver): DP kernels (``kernels``), the blur of a layer
stack and its compositing (``blur``: FFT / direct / patchwise blur, over-compositing, rendering), the Fourier closed
form of a layer's DP blur and its spectra (``fourier``), the noise level and the regularization it implies
(``noise``), the forward model as operator objects with ``A`` / ``A_adjoint`` / ``pseudo_inverse`` (``operators``) the left/right gain
over the frame (``view_gain``) and the DP disparity (``disparity``).  Shapes and sign conventions: CONVENTIONS.md."""

from .. import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "kernels": ("ButterworthParams", "KernelModel", "dp_kernel_pair", "tilted_kernel_pair", "kernel_pyramid", "resize_kernel", "behind_radii", "both_radii", "kernel_centroid", "kernel_disparity", "swap_focus_side", "mirror_kernel",),
    "kernel_field": ("KernelField", "recentre_pair", "field_layer_kernels", "uniform_field", "spread_ratio", "horizontal_std",),
    "blur": ("CPU_CHUNK_BYTES", "KernelSpectrum", "complex_dtype", "blur_stack", "blur_stack_direct", "blur_stack_fft", "blur_stack_patchwise", "fast_size", "composite", "kernel_spectrum", "over_weights", "patch_blend_weights", "render_dual_pixel", "render_dual_pixel_patchwise", "support_spans", "tent_weights",),
    "fourier": ("LatentSolver", "centred_kernel_spectrum", "gradient_operator_spectra", "gradient_spectrum",),
    "noise": ("default_latent_reg", "estimate_noise_sigma",),
    "operators": ("OPERATORS", "DualPixelRender", "FiniteDifference", "LayerBlur", "LinearOperator", "PatchwiseBlur", "register_operator",),
    "view_gain": ("VIEW_GAIN_MODEL", "VIEW_GAIN_TERMS", "view_gain_basis", "view_gain_map",),
    "disparity": ("DisparityEstimate", "estimate_disparity", "decide_side",),
})
