"""The frontend stage: ONNX file -> checked, shape-inferred ModelProto -> Relax IRModule.

In: an ONNX file (external data too) and the input shapes the user fixed. Out: a LoadedModel (the checked
proto, its input specs, opset, sha256) and, from it, the Relax module the pipeline starts from. checker.py runs
onnx's checker in a child process and containment.py bounds onnx's inference: a model that kills onnx's C++ is
refused in one line. Unsupported
operators are one error naming every one of them. Before TVM's importer sees the graph, op_rewrites.py
replaces operators TVM cannot build or lacks (recurrent.py unrolls LSTM / GRU / RNN), qoperator.py turns
QOperator-format int8 models into QDQ form, and fold_shapes.py folds the shape arithmetic exporters write where
the input shapes are fixed. Where dims stay symbolic, symbolic_shapes.py rebuilds shape operands from the inputs'
named dims, converters.py gives TVM's importer Kiln's Range and Resize, and shape_values.py turns the dims the
importer computes at run time back into the model's own. functions.py expands ops TVM has no converter for into their ONNX function bodies
(and every op that has one, as the second try when a converter or pass fails: `expanded`).
"""

from .importer import (
                       LoadedModel,
                       check_supported,
                       error_line,
                       expanded,
                       import_relax,
                       load_model,
                       parse_input_values,
                       parse_shape_overrides,
                       supported_op_types,
                       tensor_spec,
                       unsupported_ops,
)

__all__ = ["LoadedModel", "check_supported", "error_line", "expanded", "import_relax", "load_model",
           "parse_input_values", "parse_shape_overrides", "supported_op_types", "tensor_spec", "unsupported_ops"]
