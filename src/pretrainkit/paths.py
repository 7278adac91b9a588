"""Where datasets are looked for: an explicit path option, an environment variable, then a default root.

The default root is ``../shared/data`` beside the checkout when pretrainkit runs from one (developer and CI
machines: <root>/<checkout>/src/pretrainkit/paths.py), else ``<environment>/share/pretrainkit/data`` for an
installed package, where a user can put (or link) the data once per environment.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_VAR = "PRETRAINKIT_SHARED_DATA"


def checkout_shared_data() -> Path | None:
    """``../shared/data`` beside the source checkout, or None when pretrainkit is an installed package."""
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and (repo / "src" / "pretrainkit").is_dir():
        return repo.parent / "shared" / "data"
    return None


def installed_data_root() -> Path:
    return Path(sys.prefix) / "share" / "pretrainkit" / "data"


def shared_data_root() -> Path:
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return checkout_shared_data() or installed_data_root()


def data_search_paths() -> dict[str, list[Path]]:
    root = shared_data_root()
    return {
        # An explicit $PRETRAINKIT_HAPT is the only place looked (as load_hapt does): no silent fall-through.
        "imu": [Path(os.environ["PRETRAINKIT_HAPT"])]
        if "PRETRAINKIT_HAPT" in os.environ
        else [root / "imu" / "hapt"],
        "text": [root / "text"],
        "graph": [root / "graph"],
        "docs": [root / "docs"],
    }


def data_root_origin() -> str:
    """Why ``shared_data_root()`` is what it is, for ``pretrainkit info``."""
    if os.environ.get(ENV_VAR):
        return f"${ENV_VAR}"
    if checkout_shared_data() is not None:
        return "beside the source checkout"
    return f"installed package default; set ${ENV_VAR} or pass a path option to use another folder"
