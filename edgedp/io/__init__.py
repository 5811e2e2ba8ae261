"""Input and output at the file boundary: image files, sensor normalization and sizes (``images``), the
pairing and discovery of captures (``discovery``), atomic writers and JSON (``writers``), all-or-nothing files and folders (``atomic``), colour
transfers (``transfer``), camera presets (``cameras``) and float16 on-disk arrays (``diskarray``)."""

from .. import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "images": ("FLAT_FIELD_BOX", "IMAGE_EXTENSIONS", "SATURATION_FRACTION", "SATURATION_WARN_FRACTION", "DPPair", "PairInfo", "ReadOptions", "detect_transfer", "png_colour_chunks", "parse_size", "read_dp_pair", "read_image", "read_normalized", "tiff_icc_profile",),
    "discovery": ("Capture", "find_captures", "find_pair",),
    "atomic": ("PAUSE_ENV", "atomic_file", "folder_writer", "pause_point", "recover_output",),
    "writers": ("atomic_writer", "prepare_output_dir", "to_numpy_image", "json_ready", "write_bytes", "write_json", "write_npy", "write_png16", "write_png8", "write_srgb_png8",),
    "transfer": ("LINEAR", "SRGB", "AUTO", "TRANSFERS", "ENCODED_KNEE", "LINEAR_KNEE", "SLOPE", "OFFSET", "GAMMA", "Array", "srgb_to_linear", "linear_to_srgb", "check_transfer",),
    "cameras": ("CameraPreset", "CAMERAS", "camera_preset", "apply_camera", "preset_dict",),
    "diskarray": ("DiskArray", "scratch_folder",),
})
