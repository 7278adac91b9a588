"""PHE test fixtures: a small synthetic graph written in the user folder format, and the shared HeCo data."""

from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("torch_geometric")
pytest.importorskip("scipy")

GRAPH_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "graph"


def write_graph(root: Path, n_paper=60, n_author=40, n_subject=5, classes=3, seed=0, **spec_changes) -> Path:
    """A random paper/author/subject graph in the graph.yaml folder format; ``spec_changes`` edit the spec."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    pa = {
        (int(p), int(a))
        for p in range(n_paper)
        for a in rng.choice(n_author, size=rng.integers(1, 4), replace=False)
    }
    np.savetxt(root / "pa.txt", np.array(sorted(pa)), fmt="%d", delimiter="\t")
    ps = np.stack([np.arange(n_paper), rng.integers(0, n_subject, n_paper)], 1)
    np.savetxt(root / "ps.txt", ps, fmt="%d", delimiter="\t")
    np.save(root / "p_feat.npy", rng.random((n_paper, 8)).astype(np.float32))
    np.savetxt(root / "labels.txt", np.arange(n_paper) % classes, fmt="%d")
    spec = {
        "target": "paper",
        "nodes": {"paper": n_paper, "author": n_author, "subject": n_subject},
        "relations": [
            {"src": "paper", "name": "writes", "dst": "author", "file": "pa.txt"},
            {"src": "paper", "name": "has_subject", "dst": "subject", "file": "ps.txt"},
        ],
        "features": {"paper": "p_feat.npy"},
        "labels": "labels.txt",
    }
    spec.update(spec_changes)
    (root / "graph.yaml").write_text(yaml.safe_dump(spec))
    return root


@pytest.fixture
def tiny_graph(tmp_path):
    from pretrainkit.systems.phe.data import load_folder

    return load_folder(write_graph(tmp_path / "g"))


@pytest.fixture(scope="session")
def graph_data() -> Path:
    if not (GRAPH_DATA / "heco_acm").is_dir():
        pytest.skip(f"shared graph data not found at {GRAPH_DATA}")
    return GRAPH_DATA


@pytest.fixture(scope="session")
def acm(graph_data):
    from pretrainkit.systems.phe.data import load_acm

    return load_acm(graph_data)
