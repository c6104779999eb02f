"""Kiln's own kernel computes (te): what a kernel computes, apart from how it is scheduled (compiler/schedules).

In: te tensors of activations and of weights in the layout a pass packed them into. Out: te tensors that the
passes emit with call_te. packed.py: matmul and convolution on weights packed in panels; winograd.py: the
Winograd F(4x4, 3x3) transforms and their GEMM; dot_product.py: int8 (VNNI, AMX) and bf16 (AMX) dot products
and their weight layouts.
"""
