"""The precision stage: int8 (post-training, or a QDQ model's own) and bf16 versions of the float graph.

In: the simplified float graph (compiler/pipeline.simplify_passes) and, for int8, calibration samples. Out: a
graph whose convolutions and matmuls run as int8 or bf16 kernels (compiler/kernels/dot_product.py), and the
manifest's `quantization` entry. calibration.py observes ranges, plan.py turns them into per-site parameters,
fake_quant.py lowers a QDQ model's pairs, int8.py and bf16.py are the rewriting passes, search.py decides
(accuracy fallback, int8 against float32).
"""
