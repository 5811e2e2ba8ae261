"""The zero-shot fit, stage by stage: a fit's options and presets (``options``), its settings and result
(``config``: ``FitConfig``, ``FitResult``), Stage 1, the closed-form latent map (``stage1``), Stage 2, G_D
and its fusion (``stage2``), the whole fit (``pipeline``: ``fit_scene``), Stage 3, per-patch kernels
(``stage3``), the final TV deconvolution (``deconvolution``), fits within a memory budget (``tiling``) and
what several captures of one phone share, for its device profile (``device_tuning``)."""

from .. import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "options": ("presets", "WARM_STAGE2_ITERATIONS", "warm_iterations", "preset_config", "MIN_FIT_SIZE", "parse_iterations", "parse_patches", "parse_channel", "fit_config_from_options", "check_device", "read_options", "camera_read_options",),
    "config": ("STAGE2_BLOCK", "ProgressCallback", "FitConfig", "CaptureInfo", "StageReport", "FitResult",),
    "stage1": ("solve_latent_map",),
    "stage2": ("fit_defocus_map", "train_defocus_net", "gd_alphas", "FUSE_WEIGHT_FLOOR", "fuse_with_likelihood", "alphas_from_weights", "stage2_quadratic_form", "input_gradient_magnitude", "layer_posterior", "box_error", "posterior_temperature", "rerender_error", "load_gd_state",),
    "pipeline": ("estimates_field", "LUMINANCE", "fit_inputs", "fit_scene", "fit_channel", "disparity_per_radius", "layer_radii", "thin_curve", "field_disparity_per_radius", "field_kernels", "field_summary", "fit_layers", "with_latent_reg", "with_tv_weight", "estimate_fit_field", "with_kernel_field", "restore_channels", "fit_result",),
    "stage3": ("FIELD_GROUPS", "GroupedLatentSolver", "KernelFitSettings", "fit_patch_kernels", "patch_layer_kernels", "PatchLatentSolver", "solve_latent_map_patchwise", "warm_start", "checked_stage3_inputs", "warm_start_targets", "WorkingProblem", "train_kernels",),
    "deconvolution": ("DeconvolutionConfig", "default_tv_weight", "deconvolve_layers", "shrink_gradient", "used_layers",),
    "kernel_estimation": ("FieldEstimationConfig", "FieldEvidence", "FieldEstimate", "estimate_kernel_field", "field_evidence", "cross_convolution_evidence", "tilted_field", "recentred_tilted_pair", "cell_sums", "working_scale", "pair_size",),
    "tiling": ("RegionSolver", "TiledFrame", "deconvolution_layers", "note_tiled_fit", "restore_tiles", "Tile", "TilingConfig", "TilePlan", "fit_within_budget", "plan_fit", "stage2_bytes", "tile_bytes", "tile_grid", "frame_gradient_scale", "periodic_index", "tiled_quadratic_form", "whole_frame_bytes",),
    "device_tuning": ("ORDERS", "CUTOFFS", "BETAS", "RADIUS_SCALES", "TuneProgress", "KernelScore", "TunedDevice", "stage1_error", "cross_error_map", "cross_error", "search_kernels", "estimate_radius_scale", "estimate_view_gain", "tune_device", "tuning_captures", "correct_view_gain", "device_focus", "search_kernel_shape", "shared_layers", "pooled_field_evidence", "fit_shared_gd",),
})
