"""`pip install` of the built wheel (not editable) into a fresh virtual environment works from any directory:
the CLI starts, a system's verbs are there, profiles resolve from package data and `info` says where data
is looked for. The dependencies (torch and the rest) come from this environment through a .pth file, so
nothing is downloaded; the wheel's own pretrainkit must shadow the editable one."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    # Build from a copy of what the wheel is made of, so the checkout gets no build/ or egg-info litter.
    src = tmp / "src-copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp / "dist"),
            str(src),
        ]
    )
    (wheel,) = (tmp / "dist").glob("pretrainkit-*.whl")
    env_dir = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)])
    py = env_dir / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)])
    site = Path(
        _run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    )
    # Reuse this environment's packages (torch...) for the dependencies: appended after the venv's own.
    (site / "zz_reuse_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return env_dir


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRETRAINKIT_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, "OMP_NUM_THREADS": "1"}


def test_the_wheel_works_outside_the_checkout(venv, tmp_path):
    py, cli = venv / "bin" / "python", venv / "bin" / "pretrainkit"
    where = _run([str(py), "-c", "import pretrainkit; print(pretrainkit.__file__)"], cwd=tmp_path, env=_env())
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout

    info = _run([str(cli), "info"], cwd=tmp_path, env=_env()).stdout
    assert "pretrainkit 0." in info
    systems = next(x for x in info.splitlines() if x.strip().startswith("systems:"))
    assert all(n in systems for n in ("saga", "crnet", "l2m")), info
    data_root = next(x for x in info.splitlines() if x.startswith("data root:"))
    assert (
        str(venv / "share" / "pretrainkit" / "data") in data_root and "PRETRAINKIT_SHARED_DATA" in data_root
    )

    demo = _run([str(cli), "saga", "demo", "--help"], cwd=tmp_path, env=_env()).stdout
    assert "--config" in demo

    code = (
        "from pretrainkit.core.profiles import profile_path; "
        "print(profile_path('saga', 'quick')); print(profile_path('l2m', 'quick'))"
    )
    paths = [Path(p) for p in _run([str(py), "-c", code], cwd=tmp_path, env=_env()).stdout.split()]
    assert len(paths) == 2 and all(p.is_file() and p.is_relative_to(venv) for p in paths), paths
