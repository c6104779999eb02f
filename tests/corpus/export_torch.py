"""Regenerate the torch exports of the corpus: Hugging Face `transformers` architectures built from small configs
with seeded random weights (no downloads), exported the way users export them, with both of torch's exporters.

    python -m tests.corpus.export_torch [--out tests/corpus/exported] [NAME ...]

Needs torch and transformers (the `corpus` extra: `pip install -e ".[corpus]"`); `make test` never does: it
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


def _text(config_name: str, model_name: str, **config):
    def build():
        import transformers  # noqa: PLC0415

        return getattr(transformers, model_name)(getattr(transformers, config_name)(**config))

    return build


def _vision(config_name: str, model_name: str, **config):
    return _text(config_name, model_name, **config)


SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=1000,
             max_position_embeddings=64)
MODELS = {
    # name: (builder, input shapes, dynamic axes, output names)
    "bert": (_text("BertConfig", "BertModel", **SMALL), TEXT_SHAPES, TEXT_AXES),
    "roberta": (_text("RobertaConfig", "RobertaModel", **{**SMALL, "max_position_embeddings": 66}), TEXT_SHAPES,
                TEXT_AXES),
    "distilbert": (_text("DistilBertConfig", "DistilBertModel", dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                         vocab_size=1000, max_position_embeddings=64), TEXT_SHAPES, TEXT_AXES),
    "gpt2": (_text("GPT2Config", "GPT2Model", n_embd=64, n_layer=2, n_head=4, vocab_size=1000, n_positions=64),
             TEXT_SHAPES, TEXT_AXES),
    "vit": (_vision("ViTConfig", "ViTModel", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=128, image_size=32, patch_size=8), {"pixel_values": [1, 3, 32, 32]},
            {"pixel_values": {0: "batch"}}),
}


def _Named(model, names: list[str]):
    """MODEL called with its inputs by name, returning the last hidden state alone: the wrapper users write to
    export a transformers model (its forward takes many optional arguments and returns a dict)."""
    import torch  # noqa: PLC0415

    class Named(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs)), return_dict=False)[0]

    return Named()


def export(name: str, dynamo: bool, out: Path) -> Path:
    """Export MODELS[NAME] with torch.onnx.export (DYNAMO: the new exporter) into OUT; returns the file."""
    import torch  # noqa: PLC0415

    build, shapes, axes = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    # a batch of 2 to trace with: torch.export specializes a dim it sees as 1
    example = {k: [2 if i in axes[k] else d for i, d in enumerate(v)] for k, v in shapes.items()}
    inputs = {k: torch.ones(v, dtype=torch.int64) if k != "pixel_values" else torch.randn(v)
              for k, v in example.items()}
    path = out / f"{name}-{'dynamo' if dynamo else 'torchscript'}.onnx"
    out.mkdir(parents=True, exist_ok=True)
    if dynamo:  # today's default: torch.export, inputs by name, dims as torch.export.Dim
        dims = {k: {i: torch.export.Dim(n, min=1, max=64) for i, n in a.items()} for k, a in axes.items()}
        torch.onnx.export(model, (), str(path), kwargs=inputs, dynamic_shapes=dims, dynamo=True, opset_version=18)
    else:  # the TorchScript exporter most published files come from, with the usual wrapper and dynamic_axes
        torch.onnx.export(_Named(model, list(shapes)), tuple(inputs.values()), str(path), dynamo=False,
                          input_names=list(shapes), output_names=["last_hidden_state"], opset_version=17,
                          dynamic_axes={**axes, "last_hidden_state": {0: "batch"}})
    if dynamo:  # the dynamo exporter may write weights beside the model: keep one self-contained file
        import onnx  # noqa: PLC0415

        onnx.save(onnx.load(str(path)), str(path), save_as_external_data=False)
        for extra in out.glob(f"{path.name}.data"):
            extra.unlink()
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
    print(json.dumps(made, indent=1))


if __name__ == "__main__":
    main()
