"""A fuzz worker: reads case numbers (one per line), compiles each mutated model (and runs it when it compiles),
answers one JSON line per case: ok (compiled and ran), refused (a KilnError: the one-line error users see) or
internal (any other exception: the CLI shows it as 'internal error', a bug to fix)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.conformance.run import worker_answers


def main() -> None:
    answer = worker_answers()  # before the heavy imports: anything they print goes to stderr
    import compiler  # noqa: PLC0415
    import runtime  # noqa: PLC0415
    from runtime.bench import random_inputs  # noqa: PLC0415
    from runtime.errors import KilnError  # noqa: PLC0415
    from tests.fuzz.mutate import mutate, seed_models  # noqa: PLC0415

    seeds = seed_models()
    answer({"ready": True})
    for line in sys.stdin:
        case = line.strip()
        with tempfile.TemporaryDirectory(prefix="kiln-fuzz-") as tmp:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(mutate(int(case), seeds))
            try:
                artifact = compiler.compile(path, target="auto", output=Path(tmp) / "m.so", tuning_log="none")
                model = runtime.load(artifact.path, threads=1)
                model.run(random_inputs(model.inputs))
                outcome, detail = "ok", ""
            except KilnError as err:
                outcome, detail = "refused", str(err).replace(tmp, "TMP").splitlines()[0][:300]
            except Exception as err:  # noqa: BLE001 - recorded: the fuzzer's findings
                first = (str(err).strip().splitlines() or [""])[0]
                outcome, detail = "internal", f"{type(err).__name__}: {first.replace(tmp, 'TMP')[:300]}"
        answer({"name": case, "outcome": outcome, "detail": detail})


if __name__ == "__main__":
    main()
