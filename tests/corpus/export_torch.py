"""Regenerate the torch exports of the corpus: Hugging Face `transformers` architectures built from small configs
with seeded random weights (no downloads), exported the way users export them, with both of torch's exporters.

    python -m tests.corpus.export_torch [--out tests/corpus/exported] [NAME ...]

Needs torch and transformers (the `corpus` extra: `pip install -e ".[corpus]"`, with onnxruntime for the
ORT-optimized variants); `make test` never does: it
reads the committed files. Each file is a few MB: fewer layers and a narrower width than the published models,
the same graph patterns (attention masks built at run time, shapes computed from the inputs, GELU, layer norm).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "exported"
TEXT_SHAPES = {"input_ids": [1, 16], "attention_mask": [1, 16]}
TEXT_AXES = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
IMAGE_SHAPES, IMAGE64_SHAPES = {"pixel_values": [1, 3, 32, 32]}, {"pixel_values": [1, 3, 64, 64]}
IMAGE_AXES = {"pixel_values": {0: "batch"}}


def _text(config_name: str, model_name: str, **config):
    def build():
        import transformers  # noqa: PLC0415

        return getattr(transformers, model_name)(getattr(transformers, config_name)(**config))

    return build


def _vision(config_name: str, model_name: str, **config):
    return _text(config_name, model_name, **config)


def _with_he_weights(build):
    """BUILD with He-scaled convolution weights and unit batch-norm scales: transformers initialises both with a
    std of 0.02, and through EfficientNet's and MobileNetV2's blocks the activations vanish (to exact zeros in
    EfficientNet: a test of nothing)."""
    def rebuilt():
        import torch  # noqa: PLC0415

        model = build()
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif isinstance(module, torch.nn.BatchNorm2d):
                torch.nn.init.ones_(module.weight)
        return model

    return rebuilt


def _whisper_encoder(**config):
    def build():
        import transformers  # noqa: PLC0415

        return transformers.WhisperModel(transformers.WhisperConfig(**config)).get_encoder()

    return build


def _detr(**config):
    def build():
        import transformers  # noqa: PLC0415

        backbone = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                                             layer_type="basic", out_features=["stage4"])
        return transformers.DetrModel(transformers.DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False,
                                                              backbone_config=backbone, backbone=None, **config))

    return build


SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=1000,
             max_position_embeddings=64)
MODELS = {
    # name: (builder, input shapes, dynamic axes, output names)
    "bert": (_text("BertConfig", "BertModel", **SMALL), TEXT_SHAPES, TEXT_AXES),
    "roberta": (_text("RobertaConfig", "RobertaModel", **{**SMALL, "max_position_embeddings": 66}), TEXT_SHAPES,
                TEXT_AXES),
    "distilbert": (_text("DistilBertConfig", "DistilBertModel", dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                         vocab_size=1000, max_position_embeddings=64), TEXT_SHAPES, TEXT_AXES),
    "gpt2": (_text("GPT2Config", "GPT2Model", n_embd=64, n_layer=2, n_head=4, vocab_size=1000, n_positions=64,
                   use_cache=False),
             TEXT_SHAPES, TEXT_AXES),
    "vit": (_vision("ViTConfig", "ViTModel", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=128, image_size=32, patch_size=8), {"pixel_values": [1, 3, 32, 32]},
            {"pixel_values": {0: "batch"}}),
    "t5-encoder": (_text("T5Config", "T5EncoderModel", d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                         vocab_size=1000), TEXT_SHAPES, TEXT_AXES),
    "swin": (_vision("SwinConfig", "SwinModel", image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                     num_heads=[2, 2], window_size=4), IMAGE_SHAPES, IMAGE_AXES),
    "convnext": (_vision("ConvNextConfig", "ConvNextModel", hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1]),
                 IMAGE_SHAPES, IMAGE_AXES),
    "resnet": (_vision("ResNetConfig", "ResNetModel", embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                       depths=[1, 1, 1, 1], layer_type="bottleneck"), IMAGE_SHAPES, IMAGE_AXES),
    "mobilenet-v2": (_with_he_weights(_vision("MobileNetV2Config", "MobileNetV2Model", depth_multiplier=0.35,
                                              image_size=64)), IMAGE64_SHAPES, IMAGE_AXES),
    "efficientnet": (_with_he_weights(_vision("EfficientNetConfig", "EfficientNetModel", width_coefficient=0.25,
                                              depth_coefficient=0.25, image_size=64, hidden_dim=320)),
                     IMAGE64_SHAPES, IMAGE_AXES),
    "detr": (_detr(d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                   decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_queries=10),
             IMAGE64_SHAPES, IMAGE_AXES),
    "whisper-encoder": (_whisper_encoder(d_model=64, encoder_layers=2, encoder_attention_heads=4, decoder_layers=1,
                                         decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                                         num_mel_bins=80, max_source_positions=50, vocab_size=1000, pad_token_id=0,
                                         bos_token_id=1, eos_token_id=2, decoder_start_token_id=1),
                        {"input_features": [1, 80, 100]}, {"input_features": {0: "batch"}}),
    "wav2vec2": (_text("Wav2Vec2Config", "Wav2Vec2Model", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128, conv_dim=(32, 32, 32), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                       num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
                 {"input_values": [1, 1600]}, {"input_values": {0: "batch"}}),
}


def by_name(model, names: list[str]):
    """MODEL called with its inputs by name, returning the last hidden state alone: the wrapper users write to
    export a transformers model (its forward takes many optional arguments and returns a dict)."""
    import torch  # noqa: PLC0415

    class Named(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            out = self.model(**dict(zip(names, inputs)), return_dict=False)
            return out[0] if isinstance(out, (tuple, list)) else out

    return Named()


def export(name: str, dynamo: bool, out: Path) -> Path:
    """Export MODELS[NAME] with torch.onnx.export (DYNAMO: the new exporter) into OUT; returns the file."""
    import torch  # noqa: PLC0415

    build, shapes, axes = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    # a batch of 2 to trace with: torch.export specializes a dim it sees as 1
    example = {k: [2 if i in axes[k] else d for i, d in enumerate(v)] for k, v in shapes.items()}
    inputs = {k: torch.ones(v, dtype=torch.int64) if k in ("input_ids", "attention_mask") else torch.randn(v)
              for k, v in example.items()}
    path = out / f"{name}-{'dynamo' if dynamo else 'torchscript'}.onnx"
    out.mkdir(parents=True, exist_ok=True)
    if dynamo:  # today's default: torch.export, inputs by name, dims as torch.export.Dim
        dims = {k: {i: torch.export.Dim(n, min=1, max=64) for i, n in a.items()} for k, a in axes.items()}
        torch.onnx.export(model, (), str(path), kwargs=inputs, dynamic_shapes=dims, dynamo=True, opset_version=18)
    else:  # the TorchScript exporter most published files come from, with the usual wrapper and dynamic_axes
        torch.onnx.export(by_name(model, list(shapes)), tuple(inputs.values()), str(path), dynamo=False,
                          input_names=list(shapes), output_names=["last_hidden_state"], opset_version=17,
                          dynamic_axes={**axes, "last_hidden_state": {0: "batch"}})
    if dynamo:  # the dynamo exporter may write weights beside the model: keep one self-contained file
        import onnx  # noqa: PLC0415

        onnx.save(onnx.load(str(path)), str(path), save_as_external_data=False)
        for extra in out.glob(f"{path.name}.data"):
            extra.unlink()
    return path


ORT_OPTIMIZED = {"bert": "bert", "gpt2": "gpt2", "vit": "vit"}  # export name: optimizer model_type


def ort_optimized(name: str, out: Path) -> Path:
    """NAME's TorchScript export run through ONNX Runtime's transformer optimizer (its Python fusions:
    SkipLayerNormalization, BiasGelu / FastGelu from com.microsoft), as users prepare models for ORT."""
    from onnxruntime.transformers.optimizer import optimize_model  # noqa: PLC0415

    source = out / f"{name}-torchscript.onnx"
    optimized = optimize_model(str(source), model_type=ORT_OPTIMIZED[name], num_heads=4, hidden_size=64, opt_level=0)
    path = out / f"{name}-ort-optimized.onnx"
    optimized.save_model_to_file(str(path))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(MODELS))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    made = {}
    for name in args.names:
        for dynamo in (False, True):
            try:
                path = export(name, dynamo, args.out)
                made[path.name] = path.stat().st_size
                print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)", flush=True)
            except Exception as err:  # noqa: BLE001 - report the exporter's failure and go on with the others
                print(f"{name} ({'dynamo' if dynamo else 'torchscript'}): export failed: {err}", file=sys.stderr)
        if name in ORT_OPTIMIZED:
            path = ort_optimized(name, args.out)
            made[path.name] = path.stat().st_size
            print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)", flush=True)
    print(json.dumps(made, indent=1))


if __name__ == "__main__":
    main()
