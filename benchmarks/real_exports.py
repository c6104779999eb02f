"""Full-size real exports beside ONNX Runtime: Hugging Face `transformers` architectures at their published
sizes (seeded random weights, He-scaled convolutions so activations neither vanish nor turn denormal), exported by
torch's TorchScript exporter as users export them, compiled by Kiln untuned for `--target auto`, 2 threads, batch 1.

    python -m benchmarks.real_exports export [NAME ...]   # needs torch + transformers (the `corpus` extra)
    python -m benchmarks.real_exports run [NAME ...]      # compiles and times what `export` wrote

The files go to benchmarks/exports/ (not committed: 16-350 MB each). `run` prints one markdown row a model: Kiln
ms, ONNX Runtime ms, their ratio (the median of three rounds that alternate the engines), Kiln's compile seconds
and the 1-minute load average.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPORTS = HERE / "exports"
IMAGE = (1, 3, 224, 224)
# name: (config class, model class, config, input name, input shape, He-scaled convolutions)
MODELS = {
    "efficientnet-b0": ("EfficientNetConfig", "EfficientNetModel",
                        dict(width_coefficient=1.0, depth_coefficient=1.0, image_size=224, hidden_dim=1280),
                        "pixel_values", IMAGE, True),
    "mobilenet-v2": ("MobileNetV2Config", "MobileNetV2Model", {}, "pixel_values", IMAGE, True),
    "convnext-tiny": ("ConvNextConfig", "ConvNextModel", {}, "pixel_values", IMAGE, False),
    "resnet-50": ("ResNetConfig", "ResNetModel", {}, "pixel_values", IMAGE, True),
    "vit-b16": ("ViTConfig", "ViTModel", {}, "pixel_values", IMAGE, False),
    # Whisper-tiny's encoder: 4 layers x 384 over 30 s of audio (3000 mel frames, 1500 positions)
    "whisper-tiny-encoder": ("WhisperConfig", "WhisperModel",
                             dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
                                  decoder_layers=4, decoder_attention_heads=6, decoder_ffn_dim=1536),
                             "input_features", (1, 80, 3000), False),
}


def export(name: str, out: Path) -> Path:
    """Export MODELS[NAME] to OUT/NAME.onnx (opset 17, TorchScript exporter)."""
    import torch  # noqa: PLC0415 - the corpus extra
    import transformers  # noqa: PLC0415

    config_class, model_class, config, input_name, shape, he = MODELS[name]
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**config))
    if model_class == "WhisperModel":
        model = model.get_encoder()
    if he:  # transformers initialises convolutions and batch-norm scales with std 0.02: activations vanish
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif isinstance(module, torch.nn.BatchNorm2d):
                torch.nn.init.ones_(module.weight)
    model.eval()
    path = out / f"{name}.onnx"
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(*shape),), str(path), input_names=[input_name], opset_version=17,
                          dynamo=False)
    return path


def bench_row(name: str, folder: Path) -> str:
    """The markdown row of one exported model."""
    import numpy as np  # noqa: PLC0415

    import compiler  # noqa: PLC0415 - not at the top: `export` runs where torch is, TVM need not be
    import runtime  # noqa: PLC0415
    from compiler.references import onnxruntime_session  # noqa: PLC0415

    from .matmul_sweep import median_ms  # noqa: PLC0415

    path = EXPORTS / f"{name}.onnx"
    _config, _model, _settings, input_name, shape, _he = MODELS[name]
    started = time.monotonic()
    artifact = compiler.compile(path, output=folder / f"{name}.so", tuning_log="none")
    compile_s = time.monotonic() - started
    kiln, session = runtime.load(artifact.path, threads=2), onnxruntime_session(str(path), threads=2)
    feeds = {input_name: np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
    ours, theirs = kiln.run(feeds), session.run(None, feeds)
    error = max(float(np.max(np.abs(a - b))) / (float(np.ptp(b)) or 1.0) for a, b in zip(ours.values(), theirs))
    probe = median_ms(lambda: session.run(None, feeds), 3)
    count = max(5, min(30, int(3000 / max(probe, 1.0))))
    load = Path("/proc/loadavg").read_text().split()[0]
    rounds = sorted((k / o, k, o) for k, o in ((median_ms(lambda: kiln.run(feeds), count),
                                                median_ms(lambda: session.run(None, feeds), count))
                                               for _ in range(3)))
    ratio, kiln_ms, ort_ms = rounds[1]
    return (f"| {name} | {kiln_ms:.2f} | {ort_ms:.2f} | {ratio:.2f}x | {compile_s:.1f} | {error:.1e} | {load} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["export", "run"])
    parser.add_argument("names", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(MODELS))
    if unknown:
        sys.exit(f"error: unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    if args.action == "export":
        for name in args.names:
            print(f"exported {export(name, EXPORTS)}", flush=True)
        return
    missing = [n for n in args.names if not (EXPORTS / f"{n}.onnx").is_file()]
    if missing:
        sys.exit(f"error: no export of {', '.join(missing)} in {EXPORTS}; run `python -m benchmarks.real_exports "
                 "export` first (needs torch and transformers: pip install -e '.[corpus]')")
    print("| model | Kiln ms | ONNX Runtime ms | ratio | compile s | max error / range | load avg |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.names:
            print(bench_row(name, Path(folder)), flush=True)


if __name__ == "__main__":
    main()
