"""The files edgedp writes and reads back: the fitted scene bundle (``bundle``: ``scene.npz`` +
``scene.json``), the device profile (``profile``: ``PHONE.profile``, and how it merges into a fit) and the
grid of DP kernel pairs ``--kernels`` reads (``kernel_grid``)."""

from .. import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "bundle": ("CONVENTIONS", "FORMAT_NAME", "JSON_NAME", "NPZ_NAME", "READABLE_VERSIONS", "SceneBundle", "fit_config_from_dict", "load_bundle", "read_gd_state", "save_bundle",),
    "kernel_grid": ("NEGATIVE_TOLERANCE", "load_kernel_grid",),
    "profile": ("FORMAT", "DeviceProfile", "save_profile", "load_profile", "view_gain_entry", "check_compatible",),
})
