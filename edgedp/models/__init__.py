"""The networks fitted per scene: G_D, the defocus CNN of thesis Fig. 3.4 (``defocus_net``), and the kernel
generators G_F of Stage 3 (``kernel_generators``; their fitting is ``edgedp.fit.stage3``)."""

from .. import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "defocus_net": ("PADDING", "GD_BLOCKS", "DefocusNet", "build_gd", "gd_input", "upsample_logits", "upsample_logits_region", "alphas_from_logits", "count_parameters",),
    "kernel_generators": ("KernelGenerator", "KernelGenerators",),
})
