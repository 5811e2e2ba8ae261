"""edgedp: zero-shot dual-pixel defocus deblurring for edge devices."""

__version__ = "0.1.0"
