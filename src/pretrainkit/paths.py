"""Where datasets are looked for: an explicit path option, an environment variable, then ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

# The repository sits beside shared/ on developer and CI machines: <root>/main/src/pretrainkit/paths.py.
_REPO_SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def shared_data_root() -> Path:
    return Path(os.environ.get("PRETRAINKIT_SHARED_DATA", _REPO_SHARED))


def data_search_paths() -> dict[str, list[Path]]:
    root = shared_data_root()
    return {
        "imu": [Path(os.environ["PRETRAINKIT_HAPT"])] if "PRETRAINKIT_HAPT" in os.environ else []
        + [root / "imu" / "hapt"],
        "text": [root / "text"],
        "graph": [root / "graph"],
        "docs": [root / "docs"],
    }
