"""edgedp-runtime: the device side of edgedp.  Runs the ONNX graphs (ONNX Runtime) or TensorRT
engines that ``edgedp export`` writes, and the instant path of a device profile, with numpy and
no PyTorch.  Command line: ``edgedp-runtime`` (:mod:`edgedp_runtime.cli`); export folder schema:
:mod:`edgedp_runtime.schema`."""

__version__ = "0.1.0"
