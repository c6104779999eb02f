"""Real accuracy on real data: a small CNN trained (in numpy, seeded) on scikit-learn's digits set (1,797 8x8
images that ship with the package), exported to ONNX, and its test-set accuracy in float32 (ONNX Runtime, Kiln)
and int8 (Kiln, calibrated on training images).

Run `python -m benchmarks.digits [--out DIR]`: writes DIR/digits.onnx and DIR/digits.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CONV1, CONV2, HIDDEN, CLASSES = 16, 32, 64, 10
EPOCHS, BATCH, LEARNING_RATE = 30, 32, 2e-3
CALIBRATION_IMAGES = 200


def load_digits_split(seed: int = 0):
    """(train x, train y, test x, test y): images as float32 [N, 1, 8, 8] in [0, 1], a fixed 80/20 split."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 - only this benchmark needs scikit-learn

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]
    order = np.random.default_rng(seed).permutation(len(images))
    cut = int(len(images) * 0.8)
    train, test = order[:cut], order[cut:]
    return images[train], data.target[train], images[test], data.target[test]


def _im2col(x: np.ndarray, stride: int) -> tuple[np.ndarray, int]:
    """3x3 patches of NCHW X (padding 1) as [N * OH * OW, C * 9], and the output size."""
    n, c, h, _ = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = (h + 2 - 3) // stride + 1
    cols = np.empty((n, c, 3, 3, out, out), x.dtype)
    for i in range(3):
        for j in range(3):
            cols[:, :, i, j] = padded[:, :, i:i + stride * out:stride, j:j + stride * out:stride]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * out * out, c * 9), out


def _col2im(cols: np.ndarray, shape: tuple, stride: int) -> np.ndarray:
    n, c, h, _ = shape
    out = (h + 2 - 3) // stride + 1
    cols = cols.reshape(n, out, out, c, 3, 3).transpose(0, 3, 4, 5, 1, 2)
    padded = np.zeros((n, c, h + 2, h + 2), cols.dtype)
    for i in range(3):
        for j in range(3):
            padded[:, :, i:i + stride * out:stride, j:j + stride * out:stride] += cols[:, :, i, j]
    return padded[:, :, 1:-1, 1:-1]


class DigitsCNN:
    """conv3x3(1->16)+ReLU, conv3x3 stride 2 (16->32)+ReLU, dense 512->64+ReLU, dense 64->10; NCHW, as exported."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)

        def he(*shape):
            return (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:] if len(shape) == 4 else shape[:1])))

        self.params = {
            "w1": he(CONV1, 1, 3, 3), "b1": np.zeros(CONV1), "w2": he(CONV2, CONV1, 3, 3), "b2": np.zeros(CONV2),
            "w3": he(CONV2 * 16, HIDDEN), "b3": np.zeros(HIDDEN), "w4": he(HIDDEN, CLASSES), "b4": np.zeros(CLASSES),
        }
        self.params = {k: v.astype(np.float32) for k, v in self.params.items()}

    def forward(self, x: np.ndarray):
        p, cache = self.params, {}
        n = len(x)
        cols1, s1 = _im2col(x, 1)
        a1 = np.maximum(cols1 @ p["w1"].reshape(CONV1, -1).T + p["b1"], 0)
        h1 = a1.reshape(n, s1, s1, CONV1).transpose(0, 3, 1, 2)
        cols2, s2 = _im2col(h1, 2)
        a2 = np.maximum(cols2 @ p["w2"].reshape(CONV2, -1).T + p["b2"], 0)
        flat = a2.reshape(n, s2, s2, CONV2).transpose(0, 3, 1, 2).reshape(n, -1)
        a3 = np.maximum(flat @ p["w3"] + p["b3"], 0)
        logits = a3 @ p["w4"] + p["b4"]
        cache.update(cols1=cols1, a1=a1, h1=h1, cols2=cols2, a2=a2, s2=s2, flat=flat, a3=a3)
        return logits, cache

    def gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
        """Softmax cross-entropy loss on (X, Y) and its gradient for every parameter."""
        p = self.params
        logits, c = self.forward(x)
        n = len(x)
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        loss = float(-np.log(probs[np.arange(n), y] + 1e-12).mean())
        d_logits = probs
        d_logits[np.arange(n), y] -= 1
        d_logits /= n
        g = {"w4": c["a3"].T @ d_logits, "b4": d_logits.sum(0)}
        d_a3 = (d_logits @ p["w4"].T) * (c["a3"] > 0)
        g.update(w3=c["flat"].T @ d_a3, b3=d_a3.sum(0))
        d_flat = d_a3 @ p["w3"].T
        s2 = c["s2"]
        d_a2 = d_flat.reshape(n, CONV2, s2, s2).transpose(0, 2, 3, 1).reshape(-1, CONV2) * (c["a2"] > 0)
        g.update(w2=(d_a2.T @ c["cols2"]).reshape(p["w2"].shape), b2=d_a2.sum(0))
        d_h1 = _col2im(d_a2 @ p["w2"].reshape(CONV2, -1), c["h1"].shape, 2)
        d_a1 = d_h1.transpose(0, 2, 3, 1).reshape(-1, CONV1) * (c["a1"] > 0)
        g.update(w1=(d_a1.T @ c["cols1"]).reshape(p["w1"].shape), b1=d_a1.sum(0))
        return loss, g

    def train(self, x: np.ndarray, y: np.ndarray, seed: int = 0) -> list[float]:
        """Adam on mini-batches for EPOCHS; returns the mean loss per epoch."""
        rng = np.random.default_rng(seed)
        moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in self.params.items()}
        losses, step = [], 0
        for _ in range(EPOCHS):
            order, total = rng.permutation(len(x)), 0.0
            for start in range(0, len(x), BATCH):
                batch = order[start:start + BATCH]
                loss, grads = self.gradients(x[batch], y[batch])
                total += loss * len(batch)
                step += 1
                for name, grad in grads.items():
                    m, v = moments[name]
                    m[:] = 0.9 * m + 0.1 * grad
                    v[:] = 0.999 * v + 0.001 * grad * grad
                    update = LEARNING_RATE * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
                    self.params[name] = (self.params[name] - update).astype(np.float32)
            losses.append(total / len(x))
        return losses

    def to_onnx(self) -> onnx.ModelProto:
        """The trained network as an ONNX model (opset 17), input 'image' [1, 1, 8, 8], output 'logits'."""
        p = self.params
        inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in p.items()]
        inits.append(numpy_helper.from_array(np.array([1, -1], np.int64), "flat_shape"))
        nodes = [
            helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], kernel_shape=[3, 3],
                             strides=[2, 2]),
            helper.make_node("Relu", ["c2"], ["r2"]),
            helper.make_node("Reshape", ["r2", "flat_shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w3"], ["m3"]),
            helper.make_node("Add", ["m3", "b3"], ["d3"]),
            helper.make_node("Relu", ["d3"], ["r3"]),
            helper.make_node("MatMul", ["r3", "w4"], ["m4"]),
            helper.make_node("Add", ["m4", "b4"], ["logits"]),
        ]
        graph = helper.make_graph(nodes, "digits_cnn",
                                  [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 8, 8])],
                                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model


def accuracy(predict, images: np.ndarray, labels: np.ndarray) -> float:
    """Share of IMAGES whose argmax of PREDICT(image [1, 1, 8, 8]) is the label."""
    hits = sum(int(np.argmax(predict(image[None])) == label) for image, label in zip(images, labels))
    return hits / len(labels)


def evaluate(out: Path, target: str = "x86-avx512") -> dict:
    """Train, export, compile float32 and int8 with Kiln, and measure test accuracy of each (and ONNX Runtime)."""
    import compiler  # noqa: PLC0415 - the benchmark drives the whole tool
    import runtime  # noqa: PLC0415
    from compiler.references import onnxruntime_session  # noqa: PLC0415

    train_x, train_y, test_x, test_y = load_digits_split()
    net = DigitsCNN()
    losses = net.train(train_x, train_y)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "digits.onnx"
    onnx.save(net.to_onnx(), str(model_path))
    session = onnxruntime_session(str(model_path), threads=1)
    result = {"train_images": len(train_x), "test_images": len(test_x), "final_loss": round(losses[-1], 4),
              "numpy": accuracy(lambda x: net.forward(x)[0], test_x, test_y),
              "onnxruntime_fp32": accuracy(lambda x: session.run(None, {"image": x})[0], test_x, test_y)}
    with tempfile.TemporaryDirectory(prefix="kiln-digits-") as tmp:
        calib = Path(tmp) / "calibration"
        calib.mkdir()
        np.save(calib / "train.npy", train_x[:CALIBRATION_IMAGES])  # a stack of [1, 1, 8, 8] samples
        for label, options in (("kiln_fp32", {}), ("kiln_int8", {"quantize": "int8", "calibration": str(calib)})):
            artifact = compiler.compile(model_path, target=target, output=Path(tmp) / f"{label}.so",
                                        tuning_log="none", **options)
            model = runtime.load(artifact.path)
            result[label] = accuracy(lambda x, m=model: m.run({"image": x})["logits"], test_x, test_y)
            if options:
                result["int8_manifest"] = artifact.manifest.quantization
    result["int8_drop_points"] = round(100 * (result["kiln_fp32"] - result["kiln_int8"]), 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks"))
    parser.add_argument("--target", default="x86-avx512")
    args = parser.parse_args()
    from runtime.atomic import atomic_write  # noqa: PLC0415

    result = evaluate(args.out, args.target)
    atomic_write(args.out / "digits.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "int8_manifest"}, indent=2))


if __name__ == "__main__":
    main()
