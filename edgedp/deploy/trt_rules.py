"""What TensorRT 8.5's ONNX parser takes (JetPack 5.1): its operator table, its opset limit and the
structural rules (shape parameters that must be constants, Pad and Resize modes), and the check of a
graph against them (:func:`unsupported_trt_ops`).  Needs only ``onnx`` (never TensorRT); the graph
reading is :mod:`edgedp.deploy.onnx_tools`, the engine building :mod:`edgedp.deploy.tensorrt`.
"""

from __future__ import annotations

from . import onnx_tools
from ..errors import InputError

__all__ = [
    "PAD_MODES",
    "RESIZE_COORDINATE_MODES",
    "RESIZE_MODES",
    "RESIZE_NEAREST_MODES",
    "SHAPE_PARAMETER_INPUTS",
    "TRT85_MAX_OPSET",
    "TRT85_ONNX_OPS",
    "onnx_ops",
    "structural_problems",
    "unsupported_trt_ops",
]

#: ONNX operators TensorRT 8.5 parses: every row marked "Y" in the operator support matrix of
#: onnx-tensorrt, branch release/8.5-GA, docs/operators.md
#: (https://github.com/onnx/onnx-tensorrt/blob/release/8.5-GA/docs/operators.md; its first line:
#: "TensorRT 8.5 supports operators up to Opset 17").  Rows marked "N" there (among them DFT,
#: STFT, LayerNormalization, IsInf, Hardmax, the Sequence* and Optional* ops, the window
#: functions) are left out; CumProd is not in the table at all.  Per-op restrictions of that table
#: that matter here: AveragePool / MaxPool 2D or 3D only; Resize modes nearest / linear with
#: half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn, asymmetric or align_corners; CumSum, Slice
#: and Squeeze need constant axes.
TRT85_ONNX_OPS: frozenset[str] = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    Cast Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
    DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
    Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
    GreaterOrEqual GridSample GRU HardSwish HardSigmoid Identity If ImageScaler
    InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
    LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg
    NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear
    RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1
    ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter
    ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
    Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose
    Trilu Unsqueeze Upsample Where Xor
    """.split()
)
#: Same source: "TensorRT 8.5 supports operators up to Opset 17" (JetPack 5.1 ships TensorRT 8.5).
TRT85_MAX_OPSET = 17

#: Inputs (by index) of each op that TensorRT's parser needs as constants, besides the data
#: input: Pad pads / constant_value / axes, Resize roi / scales / sizes, Slice starts / ends /
#: axes / steps, Clip min / max, Reshape shape, (Un)Squeeze axes.
SHAPE_PARAMETER_INPUTS: dict[str, tuple[int, ...]] = {
    "Pad": (1, 2, 3),
    "Resize": (1, 2, 3),
    "Slice": (1, 2, 3, 4),
    "Clip": (1, 2),
    "Reshape": (1,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
}
#: Pad modes TensorRT 8.5 parses ("wrap" is newer).
PAD_MODES = frozenset({"constant", "reflect", "edge"})
#: Resize attributes TensorRT 8.5 parses (onnx-tensorrt release/8.5-GA docs/operators.md).
RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_COORDINATE_MODES = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"})
RESIZE_NEAREST_MODES = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})


def onnx_ops(onnx_path) -> list[str]:
    """Sorted distinct op types of the graph (``domain::Op`` for non-default domains)."""
    return sorted(onnx_tools.op_types(onnx_tools.load_model(onnx_path)))


def unsupported_trt_ops(onnx_path, *, version: str = "8.5") -> list[str]:
    """What in ``onnx_path`` (a file or an ``onnx.ModelProto``) TensorRT ``version`` (only "8.5"
    is tabulated) would not parse.

    Returns sorted strings: op types not in :data:`TRT85_ONNX_OPS` (ops of other domains as
    ``domain::Op``), ``"opset N > 17"`` when the default-domain opset exceeds 17, and what
    :func:`structural_problems` finds (a Pad / Resize / Slice / Clip / Reshape /
    (Un)Squeeze parameter computed at run time, a Pad mode other than constant / reflect / edge,
    a Resize mode outside the table, e.g. ``"Resize(mode=cubic)"``).  Empty: the graph passes.
    """
    if str(version) not in ("8.5", "8.5.x"):
        raise InputError(f"TensorRT version {version!r}: only the 8.5 operator table is known (JetPack 5.1)")
    model = onnx_tools.load_model(onnx_path)
    bad: set[str] = set()
    opset = onnx_tools.default_opset(model)
    if opset > TRT85_MAX_OPSET:
        bad.add(f"opset {opset} > {TRT85_MAX_OPSET}")
    for op in onnx_tools.op_types(model):
        if op not in TRT85_ONNX_OPS:
            bad.add(op)
    bad.update(structural_problems(model))
    return sorted(bad)


def structural_problems(source) -> list[str]:
    """What TensorRT 8.5's parser would reject in the graph's structure (op types are
    :func:`unsupported_trt_ops`'s business): a shape parameter
    (:data:`SHAPE_PARAMETER_INPUTS`) that is not a constant, a Pad mode outside
    :data:`PAD_MODES`, a Resize mode / coordinate transformation / nearest mode outside the 8.5
    table.  Sorted strings, empty when the graph passes."""
    model = onnx_tools.load_model(source)
    graph = model.graph
    constants = onnx_tools.constant_names(graph)
    bad: set[str] = set()
    for node in onnx_tools.iter_nodes(graph):
        if node.domain not in ("", "ai.onnx"):
            continue
        for index in SHAPE_PARAMETER_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index] and node.input[index] not in constants:
                bad.add(f"{node.op_type}({node.name or '?'}) input {index} is computed at run time")
        if node.op_type == "Pad":
            mode = onnx_tools.node_attribute(node, "mode", "constant")
            if mode not in PAD_MODES:
                bad.add(f"Pad(mode={mode})")
        elif node.op_type == "Resize":
            mode = onnx_tools.node_attribute(node, "mode", "nearest")
            coord = onnx_tools.node_attribute(node, "coordinate_transformation_mode", "half_pixel")
            if mode not in RESIZE_MODES:
                bad.add(f"Resize(mode={mode})")
            if coord not in RESIZE_COORDINATE_MODES:
                bad.add(f"Resize(coordinate_transformation_mode={coord})")
            if mode == "nearest":
                nearest = onnx_tools.node_attribute(node, "nearest_mode", "round_prefer_floor")
                if nearest not in RESIZE_NEAREST_MODES:
                    bad.add(f"Resize(nearest_mode={nearest})")
    return sorted(bad)
