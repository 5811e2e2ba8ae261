"""Fake pycuda (tests): ``driver`` keeps "device memory" in a dict; ``autoprimaryctx`` exists,
``autoinit`` deliberately does not (the runner must use the primary context, as NVIDIA's samples)."""
