"""Fake cuda-python that is installed but unusable (as with a binding for another CUDA major
version): every runtime call fails with cudaErrorInsufficientDriver (35)."""
