"""Synthetic document images for the OCR models: dark words on light paper, drawn with PIL's default font at random
sizes, normalized as PaddleOCR feeds its models (RGB / 255, ImageNet mean and std, NCHW).

PP-OCR's detector maps text to a probability map; calibrated on random noise its int8 build agreed with float32
at a cosine of 0.61-0.66, because noise has none of the activations text makes. Calibrated on these it agrees at
0.97 (all layers int8) to 0.99 (`--max-accuracy-drop 0.02`) on held-back images like them. No data set is needed:
the images are made here, seeded, at the model's input size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
WORDS = ("invoice total amount date 2026 receipt shipping address phone number order paid "
         "kiln compiler tensor model page line").split()


def text_image(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """One normalized [1, 3, HEIGHT, WIDTH] float32 image with a few lines of random words."""
    from PIL import Image, ImageDraw, ImageFont  # noqa: PLC0415 - Pillow: the bench extra

    paper = tuple(int(v) for v in rng.integers(200, 256, 3))
    image = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(image)
    lines = 1 if height < 100 else int(rng.integers(8, 30))  # a recognizer's input is one line of text
    for _ in range(lines):
        size = int(rng.integers(max(10, height // 3), max(12, min(48, height - 4)))) if height < 100 \
            else int(rng.integers(14, 48))
        font = ImageFont.load_default(size=size)
        text = " ".join(rng.choice(WORDS, int(rng.integers(1, 5))))
        ink = tuple(int(v) for v in rng.integers(0, 90, 3))
        x = int(rng.integers(0, max(1, width // 3)))
        y = int(rng.integers(0, max(1, height - size)))
        draw.text((x, y), text, fill=ink, font=font)
    pixels = (np.asarray(image, np.float64) / 255.0 - MEAN) / STD
    return pixels.transpose(2, 0, 1)[None].astype(np.float32)


def write_text_images(folder: Path, shape: tuple[int, ...], count: int, seed: int = 0) -> Path:
    """COUNT images of SHAPE ([1, 3, H, W]) as FOLDER/text_NN.npy: a calibration folder for `kiln compile
    --calibration` (a .npy file is one sample of a single-input model)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        np.save(folder / f"text_{index:02d}.npy", text_image(shape[2], shape[3], rng))
    return folder
