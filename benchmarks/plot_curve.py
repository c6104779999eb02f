"""Plot a tuning curve (the searched kernels' estimated time against minutes of tuning) as an SVG.

    python -m benchmarks.plot_curve benchmarks/tuning/x86-avx512-resnet18.json -o benchmarks/tuning_curve.svg

Reads the `curve` of a `kiln tune --json` summary; no plotting library needed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from runtime.atomic import atomic_write

WIDTH, HEIGHT, MARGIN = 640, 360, 60


def svg(points: list[tuple[float, float]], title: str, best: float) -> str:
    """A line chart of POINTS (minutes, ms) with a dashed line 10% above BEST."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_max = max(xs) or 1.0
    y_lo, y_hi = min(ys + [best]) * 0.98, max(ys + [best * 1.1]) * 1.02

    def at(x: float, y: float) -> tuple[float, float]:
        return (MARGIN + x / x_max * (WIDTH - 2 * MARGIN),
                HEIGHT - MARGIN - (y - y_lo) / (y_hi - y_lo) * (HEIGHT - 2 * MARGIN))

    line = " ".join(f"{px:.1f},{py:.1f}" for px, py in (at(x, y) for x, y in points))
    _x0, band = at(0, best * 1.1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" '
             'font-size="12">', f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
             f'<text x="{WIDTH / 2}" y="20" text-anchor="middle">{title}</text>',
             f'<line x1="{MARGIN}" y1="{HEIGHT - MARGIN}" x2="{WIDTH - MARGIN}" y2="{HEIGHT - MARGIN}" '
             'stroke="black"/>',
             f'<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{HEIGHT - MARGIN}" stroke="black"/>',
             f'<line x1="{MARGIN}" y1="{band:.1f}" x2="{WIDTH - MARGIN}" y2="{band:.1f}" stroke="gray" '
             'stroke-dasharray="4"/>',
             f'<text x="{WIDTH - MARGIN}" y="{band - 4:.1f}" text-anchor="end" fill="gray">best + 10%</text>',
             f'<polyline points="{line}" fill="none" stroke="steelblue" stroke-width="2"/>',
             f'<text x="{WIDTH / 2}" y="{HEIGHT - 20}" text-anchor="middle">minutes of tuning</text>',
             f'<text x="15" y="{HEIGHT / 2}" transform="rotate(-90 15 {HEIGHT / 2})" text-anchor="middle">'
             'searched kernels, ms</text>']
    for frac in (0, 0.5, 1):
        x, y = at(frac * x_max, y_lo)
        parts.append(f'<text x="{x:.1f}" y="{y + 16:.1f}" text-anchor="middle">{frac * x_max:.0f}</text>')
        value = y_lo + frac * (y_hi - y_lo)
        x, y = at(0, value)
        parts.append(f'<text x="{x - 6:.1f}" y="{y + 4:.1f}" text-anchor="end">{value:.2f}</text>')
    return "\n".join(parts + ["</svg>"]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path, help="a `kiln tune --json` summary with a curve")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    summary = json.loads(args.summary.read_text())
    points = [(p["seconds"] / 60, p["searched_kernels_ms"]) for p in summary["curve"]]
    if len(points) < 2:
        raise SystemExit(f"error: {args.summary} has fewer than 2 curve points; tune longer")
    title = f"kiln tune {summary['model']} ({summary['target']}): searched kernels' time vs tuning time"
    atomic_write(args.output, svg(points, title, min(p[1] for p in points)))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
