"""The system contract: systems are found through the ``pretrainkit.systems`` entry point group, so a package
of the user's own adds one without editing cli.py, and a system that fails to load breaks only itself."""

import ast
import textwrap
from pathlib import Path

import pytest

from pretrainkit.cli import main
from pretrainkit.core.system import GROUP, System, discover

SRC = Path(__file__).resolve().parents[2] / "src" / "pretrainkit"

FAKE_SYSTEM = """
from pretrainkit.core.system import System

def add_commands(parser):
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = sub.add_parser("hello", help="say hello")
    p.add_argument("--name", default="world")
    p.set_defaults(func=lambda a: print(f"hello {a.name}") or 0)

def bench_main(argv):
    print("fake bench", argv)
    return 0

SYSTEM = System(name="fakesys", help="a system from another package", add_commands=add_commands,
                bench_main=bench_main, extra="fake", package="fakepkg")
"""

NEEDS_EXTRA = """
from pretrainkit.core.system import System

def add_commands(parser):
    import not_installed_dependency_xyz  # noqa: F401

SYSTEM = System(name="needsextra", help="needs an extra", add_commands=add_commands, extra="big",
                package="otherpkg")
"""


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """A distribution installed the way pip installs one: modules plus a .dist-info with entry_points.txt."""
    (tmp_path / "fakesys").mkdir()
    (tmp_path / "fakesys" / "__init__.py").write_text(textwrap.dedent(FAKE_SYSTEM))
    (tmp_path / "needsextra.py").write_text(textwrap.dedent(NEEDS_EXTRA))
    info = tmp_path / "fakepkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{GROUP}]\nfakesys = fakesys:SYSTEM\nbroken = no_such_module_xyz:SYSTEM\n"
        "notasystem = fakesys:add_commands\nneedsextra = needsextra:SYSTEM\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_our_systems_are_entry_points_and_load_nothing_heavy():
    found = discover()
    assert {"saga", "crnet", "l2m"} <= set(found)
    for name in ("saga", "crnet", "l2m"):
        s = found[name]
        assert isinstance(s, System) and s.name == name and s.extra == name and s.bench_main is not None
        assert s.install_hint == f"pip install 'pretrainkit[{name}]'"


def test_a_plugin_system_appears_in_help_and_runs(plugins, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "fakesys" in out and "a system from another package" in out
    assert main(["fakesys", "hello", "--name", "you"]) == 0
    assert capsys.readouterr().out.strip() == "hello you"
    assert main(["bench", "fakesys", "--steps", "3"]) == 0
    assert capsys.readouterr().out.strip() == "fake bench ['--steps', '3']"


def test_a_broken_entry_point_breaks_only_itself(plugins, capsys):
    found = discover()
    assert found["fakesys"].help == "a system from another package"
    assert "failed to load" in found["broken"].help and "failed to load" in found["notasystem"].help
    for argv, match in (
        (["broken", "anything", "--x"], "ModuleNotFoundError"),
        (["notasystem"], "is not a pretrainkit System"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("pretrainkit: error:") and match in err, err
    assert main(["fakesys", "hello"]) == 0  # the others keep working
    with pytest.raises(SystemExit) as e:
        main(["saga", "--help"])
    assert e.value.code == 0


def test_a_missing_extra_is_one_line_with_the_install_hint(plugins, capsys):
    assert main(["needsextra", "go"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "pip install 'otherpkg[big]'" in err and "not_installed_dependency_xyz" in err


def test_info_lists_the_installed_systems(plugins, capsys):
    assert main(["info"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("systems:"))
    assert all(n in line for n in ("saga", "crnet", "l2m", "fakesys"))


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "lazy",
        ):
            out |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return out


def test_dependencies_point_one_way_and_the_cli_names_no_system():
    offenders = [
        f"{py.relative_to(SRC)} imports {m}"
        for area in ("core", "adapt", "search")
        for py in sorted((SRC / area).rglob("*.py"))
        for m in _imported_modules(py)
        if m.startswith("pretrainkit.systems")
    ]
    assert offenders == []
    cli = (SRC / "cli.py").read_text()
    assert not [n for n in ("saga", "crnet", "l2m", "pretrainkit.systems") if n in cli.lower()]
