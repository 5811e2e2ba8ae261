"""The physics of a dual-pixel capture (no I/O, no solver): DP kernels (``kernels``), the blur of a layer
stack and its compositing (``blur``: FFT / direct / patchwise blur, over-compositing, rendering), the forward
model as operator objects with ``A`` / ``A_adjoint`` / ``pseudo_inverse`` (``operators``) and the DP disparity
(``disparity``).  Shapes and sign conventions: CONVENTIONS.md."""

from .. import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "kernels": ("ButterworthParams", "KernelModel", "dp_kernel_pair", "tilted_kernel_pair", "kernel_pyramid", "resize_kernel", "front_radii", "both_radii", "kernel_centroid", "kernel_disparity", "swap_focus_side", "mirror_kernel",),
    "kernel_field": ("KernelField", "recentre_pair", "field_layer_kernels", "uniform_field", "spread_ratio", "horizontal_std",),
    "blur": ("CPU_CHUNK_BYTES", "KernelSpectrum", "blur_stack", "blur_stack_direct", "blur_stack_fft", "blur_stack_patchwise", "fast_size", "composite", "kernel_spectrum", "over_weights", "patch_blend_weights", "render_dual_pixel", "render_dual_pixel_patchwise", "support_spans", "tent_weights",),
    "operators": ("OPERATORS", "DualPixelRender", "FiniteDifference", "LayerBlur", "LinearOperator", "PatchwiseBlur", "register_operator",),
    "disparity": ("DisparityEstimate", "estimate_disparity", "decide_side",),
})
