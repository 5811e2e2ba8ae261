"""Fake ``pycuda.autoprimaryctx``: retaining the primary context is a no-op here."""
