"""The files edgedp writes and reads back: the fitted scene bundle (``bundle``: ``scene.npz`` +
``scene.json``) and the device profile (``profile``: ``PHONE.profile``, and how it merges into a fit)."""

from .. import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "bundle": ("CONVENTIONS", "FORMAT_NAME", "JSON_NAME", "NPZ_NAME", "READABLE_VERSIONS", "SceneBundle", "fit_config_from_dict", "load_bundle", "read_gd_state", "save_bundle",),
    "profile": ("FORMAT", "CaptureInfo", "DeviceProfile", "save_profile", "load_profile", "VIEW_GAIN_MODEL", "VIEW_GAIN_TERMS", "view_gain_entry", "view_gain_basis", "view_gain_map", "check_compatible",),
})
