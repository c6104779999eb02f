"""Kiln's graph passes, one file each; compiler/pipeline.py lists where each runs.

In: a Relax module (after the frontend, or after TVM's own passes). Out: the same program, rewritten. The
simplify stage's passes work on Relax ops (bound_indices, static_shape_tensors, fold_constants, inference_ops, raise_clamps, fold_batch_norm,
convert_layout, pad_channels, split_activations); pack_weights turns constant-weight matmuls and convolutions
into packed (or Winograd) kernels; row_strips and concat_in_place rewrite fused TIR kernels;
read_inputs_in_place runs in the lowering stage. relax_util.py holds what they share.
"""
