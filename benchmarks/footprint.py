"""Start-up cost and memory of each engine on its own: a fresh process imports the engine, loads the model, runs
it once, and reports the seconds that took and its peak resident memory (VmHWM; ru_maxrss would include the
parent's peak).

    python -m benchmarks.footprint ENGINE PATH '{"shapes": {"input": [1, 3, 224, 224]}, "outputs": ["logits"]}'

ENGINE is 'kiln' (PATH an artifact, run by the thin runtime alone) or a reference engine (PATH the ONNX model).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def footprint(engine: str, path: Path, shapes: dict[str, list[int]], outputs: list[str],
              dtypes: dict[str, str] | None = None) -> dict:
    """Seconds to the first result and peak RSS (MB) of ENGINE running PATH once (inputs of SHAPES, zeros of
    DTYPES, float32 where not given; returning OUTPUTS) in a fresh process."""
    spec = json.dumps({"shapes": shapes, "outputs": outputs, "dtypes": dtypes or {}})
    done = subprocess.run([sys.executable, "-m", "benchmarks.footprint", engine, str(path), spec],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"footprint of {engine} on {path.name} failed: {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def main() -> None:
    engine, path, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    shapes = spec["shapes"]
    start = time.perf_counter()
    import numpy as np  # noqa: PLC0415 - the import is part of what is measured

    feeds = {name: np.zeros(shape, spec["dtypes"].get(name, "float32")) for name, shape in shapes.items()}
    if engine == "kiln":
        import runtime  # noqa: PLC0415

        model = runtime.load(path)
        model.run(feeds)
    else:
        from compiler.references import open_reference  # noqa: PLC0415

        open_reference(engine, path, 1, shapes, spec["outputs"]).run(feeds)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mb": round(_peak_rss_mb())}))


if __name__ == "__main__":
    main()
