"""Full-size real models beside ONNX Runtime: Hugging Face `transformers` architectures at their published sizes
(seeded random weights, He-scaled convolutions so activations neither vanish nor turn denormal), exported by torch's
TorchScript exporter as users export them, and the corpus's PP-OCR models as their wheel ships them (real weights);
compiled by Kiln untuned for `--target auto`, 2 threads, batch 1.

    python -m benchmarks.real_exports export [NAME ...]   # needs torch + transformers (the `corpus` extra)
    python -m benchmarks.real_exports run [NAME ...]      # compiles and times what `export` wrote, and PP-OCR
    python -m benchmarks.real_exports run --quantize int8 [NAME ...]   # Kiln's int8 builds (OCR: text images)
    python -m benchmarks.real_exports run --tuned [NAME ...]   # with tuning_logs/' records (benchmarks.tune_zoo)

The exports go to benchmarks/exports/ (not committed: 16-350 MB each); the PP-OCR files come from the model cache
(tests/corpus/models.py fetches them from PyPI). `run` prints one markdown row a model: Kiln ms, ONNX Runtime ms,
their ratio (the median of three rounds that alternate the engines), Kiln's compile seconds, the peak RSS and
start-up seconds of a fresh process that loads and runs the model once (benchmarks.footprint) for each engine
(the median of three such processes), and the 1-minute load average; with no NAME it runs the PP-OCR models and
every export present, and says which are missing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPORTS = HERE / "exports"
IMAGE = {"pixel_values": ((1, 3, 224, 224), "float32")}
TEXT = {"input_ids": ((1, 128), "int64"), "attention_mask": ((1, 128), "int64")}  # 128 tokens
# name: (config class, model class, config, inputs {name: (shape, dtype)}, He-scaled convolutions)
MODELS = {
    "efficientnet-b0": ("EfficientNetConfig", "EfficientNetModel",
                        dict(width_coefficient=1.0, depth_coefficient=1.0, image_size=224, hidden_dim=1280),
                        IMAGE, True),
    "mobilenet-v2": ("MobileNetV2Config", "MobileNetV2Model", {}, IMAGE, True),
    "convnext-tiny": ("ConvNextConfig", "ConvNextModel", {}, IMAGE, False),
    "resnet-50": ("ResNetConfig", "ResNetModel", {}, IMAGE, True),
    "vit-b16": ("ViTConfig", "ViTModel", {}, IMAGE, False),
    # Whisper-tiny's encoder: 4 layers x 384 over 30 s of audio (3000 mel frames, 1500 positions)
    "whisper-tiny-encoder": ("WhisperConfig", "WhisperModel",
                             dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
                                  decoder_layers=4, decoder_attention_heads=6, decoder_ffn_dim=1536),
                             {"input_features": ((1, 80, 3000), "float32")}, False),
    "bert-base": ("BertConfig", "BertModel", {}, TEXT, False),
    "gpt2": ("GPT2Config", "GPT2Model", dict(use_cache=False), TEXT, False),
}
# the corpus's models with real weights (tests/corpus/models.py), at the shapes the corpus checks them at
WHEEL_MODELS = ("pp-ocrv4-det", "pp-ocrv4-rec", "pp-ocr-cls")
# How benchmarks.run and benchmarks.tune_zoo name these models beside the zoo graphs (the zoo has a bert-base too).
PREFIX = "real:"
CALIBRATION_IMAGES = 32  # synthetic text images the OCR models' int8 builds calibrate on (text_images.py)
FRESH_PROCESSES = 3  # fresh processes per engine behind the start-up and peak RSS columns (their median)


def prefixed(names) -> list[str]:
    """NAMES as benchmarks.run and benchmarks.tune_zoo know them: real:NAME."""
    return [f"{PREFIX}{name}" for name in names]


def export(name: str, out: Path) -> Path:
    """Export MODELS[NAME] to OUT/NAME.onnx (opset 17, TorchScript exporter)."""
    import torch  # noqa: PLC0415 - the corpus extra
    import transformers  # noqa: PLC0415

    config_class, model_class, config, inputs, he = MODELS[name]
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
    examples = tuple(torch.ones(shape, dtype=torch.int64) if dtype == "int64" else torch.randn(*shape)
                     for shape, dtype in inputs.values())
    if len(inputs) > 1:  # by name, as users wrap text models (GPT-2's second positional argument is the cache)
        from tests.corpus.export_torch import by_name  # noqa: PLC0415

        model = by_name(model, list(inputs))
    with torch.no_grad():
        torch.onnx.export(model, examples, str(path), input_names=list(inputs), opset_version=17, dynamo=False)
    return path


def _feeds(inputs: dict) -> dict:
    """Seeded feeds for INPUTS ({name: (shape, dtype)}): normal floats, token ids under 1000, masks of ones."""
    import numpy as np  # noqa: PLC0415

    rng = np.random.default_rng(1)
    feeds = {}
    for name, (shape, dtype) in inputs.items():
        if dtype == "float32":
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
        else:
            feeds[name] = np.ones(shape, np.int64) if "mask" in name else rng.integers(0, 1000, shape)
    return feeds


def model_file(name: str) -> tuple[Path, dict]:
    """The ONNX file of model NAME (or real:NAME) and its inputs ({name: (shape, dtype)})."""
    name = name.removeprefix(PREFIX)
    if name in WHEEL_MODELS:
        from tests.corpus.models import CORPUS  # noqa: PLC0415

        entry = next(e for e in CORPUS if e.name == name)
        return entry.fetch(), {k: (tuple(v), "float32") for k, v in entry.shapes.items()}
    return EXPORTS / f"{name}.onnx", MODELS[name][3]


def bench_row(name: str, folder: Path, quantize: str | None = None, tuned: bool = False) -> str:
    """The markdown row of one exported model (QUANTIZE 'int8': Kiln's int8 build against ONNX Runtime's float32,
    with the cosine similarity of their outputs and the agreement the manifest recorded; the OCR models calibrate
    on, and are compared on, synthetic text images (text_images.py), the others on random inputs; TUNED: with the
    committed tuning records of tuning_logs/, else untuned)."""
    import numpy as np  # noqa: PLC0415

    import compiler  # noqa: PLC0415 - not at the top: `export` runs where torch is, TVM need not be
    import runtime  # noqa: PLC0415
    from compiler.references import onnxruntime_session  # noqa: PLC0415

    from .footprint import footprint  # noqa: PLC0415
    from .shape_sweep import median_ms  # noqa: PLC0415

    path, inputs = model_file(name)
    calibration, feeds = None, _feeds(inputs)
    if quantize and name in WHEEL_MODELS:  # the OCR models see text: calibrate and compare on text images
        from .text_images import text_image, write_text_images  # noqa: PLC0415

        (input_name, (shape, _dtype)), = inputs.items()
        calibration = str(write_text_images(folder / f"{name}-calibration", shape, CALIBRATION_IMAGES))
        feeds = {input_name: text_image(shape[2], shape[3], np.random.default_rng(CALIBRATION_IMAGES))}
    started = time.monotonic()
    artifact = compiler.compile(path, output=folder / f"{name}.so", tuning_log=None if tuned else "none",
                                quantize=quantize, calibration=calibration,
                                input_shapes={k: list(shape) for k, (shape, _dtype) in inputs.items()})
    compile_s = time.monotonic() - started
    kiln, session = runtime.load(artifact.path, threads=2), onnxruntime_session(str(path), threads=2)
    ours, theirs = kiln.run(feeds), session.run(None, feeds)
    if quantize:
        a, b = (np.concatenate([np.ravel(x).astype(np.float64) for x in xs]) for xs in (ours.values(), theirs))
        recorded = (artifact.manifest.quantization or {}).get("accuracy", {}).get("cosine_similarity")
        error = f"{float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))):.4f} / {recorded}"
    else:
        worst = max(float(np.max(np.abs(a - b))) / (float(np.ptp(b)) or 1.0) for a, b in zip(ours.values(), theirs))
        error = f"{worst:.1e}"
    probe = median_ms(lambda: session.run(None, feeds), 3)
    count = max(5, min(30, int(3000 / max(probe, 1.0))))
    load = Path("/proc/loadavg").read_text().split()[0]
    rounds = sorted((k / o, k, o) for k, o in ((median_ms(lambda: kiln.run(feeds), count),
                                                median_ms(lambda: session.run(None, feeds), count))
                                               for _ in range(3)))
    ratio, kiln_ms, ort_ms = rounds[1]
    shapes, dtypes = {k: list(s) for k, (s, _d) in inputs.items()}, {k: d for k, (_s, d) in inputs.items()}
    outputs = [o.name for o in session.get_outputs()]
    # three fresh processes per engine, alternating: one start-up is a single sample of 0.1-2 s that moves by
    # 0.01-0.02 s between runs (PP-OCR's classifier read 0.14 / 0.13 s in one run, 0.12 / 0.13 in the next)
    runs = [[footprint(engine, file, shapes, outputs, dtypes) for engine, file in (("kiln", artifact.path),
                                                                                   ("onnxruntime", path))]
            for _ in range(FRESH_PROCESSES)]
    fresh = [{key: float(np.median([run[i][key] for run in runs])) for key in ("seconds", "peak_rss_mb")}
             for i in range(2)]
    return (f"| {name} | {kiln_ms:.2f} | {ort_ms:.2f} | {ratio:.2f}x | {compile_s:.1f} | {error} "
            f"| {fresh[0]['peak_rss_mb']:.0f} / {fresh[1]['peak_rss_mb']:.0f} "
            f"| {fresh[0]['seconds']:.2f} / {fresh[1]['seconds']:.2f} "
            f"| {load} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["export", "run"])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--quantize", choices=["int8"], help="time Kiln's int8 build (against ONNX Runtime fp32)")
    parser.add_argument("--tuned", action="store_true", help="compile with the committed tuning records")
    args = parser.parse_intermixed_args()
    known = list(MODELS) + list(WHEEL_MODELS)
    unknown = sorted(set(args.names) - set(known))
    if unknown:
        sys.exit(f"error: unknown model(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if args.action == "export":
        for name in args.names or list(MODELS):
            if name in WHEEL_MODELS:
                continue  # fetched from its wheel by `run`
            print(f"exported {export(name, EXPORTS)}", flush=True)
        return
    names = args.names or known
    missing = [n for n in names if n in MODELS and not (EXPORTS / f"{n}.onnx").is_file()]
    if missing and args.names:
        sys.exit(f"error: no export of {', '.join(missing)} in {EXPORTS}; run `python -m benchmarks.real_exports "
                 "export` first (needs torch and transformers: pip install -e '.[corpus]')")
    if missing:
        print(f"left out (not exported; `python -m benchmarks.real_exports export` needs torch): "
              f"{', '.join(missing)}", file=sys.stderr)
        names = [n for n in names if n not in missing]
    accuracy = "cosine to ONNX Runtime / recorded" if args.quantize else "max error / range"
    print(f"| model | Kiln{' int8' if args.quantize else ''} ms | ONNX Runtime ms | ratio | compile s | {accuracy} "
          "| peak RSS MB, Kiln / ONNX Runtime | start-up s, Kiln / ONNX Runtime | load avg |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            print(bench_row(name, Path(folder), args.quantize, args.tuned), flush=True)


if __name__ == "__main__":
    main()
