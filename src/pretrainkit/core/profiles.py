"""Find a system's YAML profile (configs/<system>/<profile>.yaml) or take an explicit file path.

The profiles are package data (``pretrainkit/configs/``), so they resolve the same from a checkout, an
editable install or a wheel, from any working directory. The checkout's top-level ``configs`` is a link
to them, so paths such as ``--config configs/l2m/quick.yaml`` work from the repository root.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from pretrainkit.errors import ConfigError

CONFIG_ROOT = Path(str(files("pretrainkit") / "configs"))


def profile_path(system: str, profile: str) -> Path:
    p = Path(profile)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        return p
    candidate = CONFIG_ROOT / system / f"{profile}.yaml"
    if candidate.is_file():
        return candidate
    have = (
        sorted(q.stem for q in (CONFIG_ROOT / system).glob("*.yaml"))
        if (CONFIG_ROOT / system).is_dir()
        else []
    )
    raise ConfigError(
        f"unknown {system} profile '{profile}'; allowed: {', '.join(have) or '(none found)'} "
        f"or a path to a .yaml file"
    )


def add_config_args(parser, system: str, default_profile: str) -> None:
    """The options every system verb shares: --config, --set, --out."""
    add_profile_args(parser, system, default_profile)
    parser.add_argument("--out", default=None, help="run directory (overrides the config's 'out')")


def add_profile_args(parser, system: str, default_profile: str) -> None:
    """--config (a profile of ``system`` or a YAML file) and repeatable --set: shared by verbs and benches."""
    parser.add_argument(
        "--config",
        default=default_profile,
        metavar="PROFILE|FILE",
        help=f"a profile name under configs/{system}/ or a YAML file (default: {default_profile})",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value with a dotted key, e.g. --set pretrain.train.max_steps=50 (repeatable)",
    )
