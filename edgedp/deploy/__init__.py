"""The export of fitted scenes and profiles to edge devices: the one exporter and its formats table
(``exporter``), the render / refocus graphs (``onnx_export``), G_D's graph (``onnx_gd``), ONNX graph
handling (``onnx_tools``), what TensorRT 8.5 parses (``trt_rules``), the last step of every graph
(``onnx_finalize``), TensorRT engines (``tensorrt``) and the profile's export (``profile_export``)."""

from .. import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "exporter": ("ExportFormat", "ExportOptions", "ExportSource", "FP16_TOLERANCE", "build_engines", "check_options", "export_formats", "export_sources", "gd_engine_profile", "run_export", "source_kind", "verification_passed",),
    "onnx_export": ("FORBIDDEN_OPS", "ExportConfig", "RenderModule", "RefocusModule", "export_scene", "export_torch", "factor_kernels", "read_sidecar", "refocus_reference", "render_reference", "verify_export",),
    "onnx_gd": ("GD_INPUT_NORMALIZATION", "GDExportModule", "Standardize", "export_gd_onnx", "gd_reference", "gd_multiple_of", "verify_gd_onnx",),
    "onnx_tools": ("constant_names", "default_opset", "emulate_fp16", "fold_constants", "graph_verification", "iter_nodes", "load_model", "node_attribute", "op_types", "output_errors", "external_locations", "require_onnx", "save_graph",),
    "trt_rules": ("PAD_MODES", "RESIZE_COORDINATE_MODES", "RESIZE_MODES", "RESIZE_NEAREST_MODES", "SHAPE_PARAMETER_INPUTS", "TRT85_MAX_OPSET", "TRT85_ONNX_OPS", "onnx_ops", "structural_problems", "unsupported_trt_ops",),
    "onnx_finalize": ("finalize_graph",),
    "tensorrt": ("build_engine", "check_engine_support", "cuda_device_count", "import_tensorrt", "tensorrt_major",),
    "profile_export": ("INSTANT_DEFAULTS", "instant_settings", "export_profile", "instant_kernels", "load_profile_source", "profile_files", "profile_gd_source", "profile_test_image", "verify_profile_export",),
})
