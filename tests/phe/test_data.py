"""PHE loaders on the real HeCo/NSHE files (counts from each folder's README) and the user folder format."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from pretrainkit.errors import DataError
from pretrainkit.systems.phe.data import (
    check_budget,
    load_aminer,
    load_dblp,
    load_folder,
    load_graph,
    load_imdb,
    metapath_adjacency,
    split_digest,
)
from tests.phe.conftest import write_graph


def test_acm_matches_readme(acm, graph_data):
    d = acm.data
    assert {t: d[t].num_nodes for t in d.node_types} == {"paper": 4019, "author": 7167, "subject": 60}
    assert d["paper", "writes", "author"].edge_index.shape == (2, 13407)
    assert d["paper", "has_subject", "subject"].edge_index.shape == (2, 4019)
    # every relation has its reverse, with the same edges flipped
    assert torch.equal(
        d["author", "rev_writes", "paper"].edge_index, d["paper", "writes", "author"].edge_index.flip(0)
    )
    assert d["paper"].x.is_sparse and tuple(d["paper"].x.shape) == (4019, 1902)
    assert "x" not in d["subject"]  # featureless: the model learns an embedding
    assert torch.bincount(acm.labels).tolist() == [1993, 965, 1061]
    for b in (20, 40, 60):
        train, val, test = acm.splits[b]
        assert (len(train), len(val), len(test)) == (3 * b, 1000, 1000)
        assert torch.bincount(acm.labels[train]).tolist() == [b] * 3
    # the edge list rebuilds HeCo's shipped PAP meta-path (off the diagonal)
    pa = d["paper", "writes", "author"].edge_index
    pap = metapath_adjacency([(pa, 4019, 7167), (pa.flip(0), 7167, 4019)])
    ref = sp.load_npz(graph_data / "heco_acm" / "pap.npz").astype(bool)
    off = sp.eye(4019, dtype=bool)
    assert ((pap > off) != (ref > off)).nnz == 0


def test_imdb_split_is_fixed_and_stable(graph_data):
    g = load_imdb(graph_data)
    assert {t: g.data[t].num_nodes for t in g.data.node_types} == {
        "movie": 3676,
        "actor": 4353,
        "director": 1678,
    }
    assert g.data["movie", "has_actor", "actor"].edge_index.shape[1] == 11028
    assert g.data["movie", "has_director", "director"].edge_index.shape[1] == 3676
    assert torch.bincount(g.labels).tolist() == [984, 1396, 1296]
    for b in (20, 40, 60):
        train, val, test = g.splits[b]
        assert (len(train), len(val), len(test)) == (3 * b, 1000, 1000)
        assert torch.bincount(g.labels[train]).tolist() == [b] * 3
        sets = [set(p.tolist()) for p in (train, val, test)]
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert split_digest(load_imdb(graph_data).splits) == split_digest(g.splits)
    # pinned: a change of the drawing code or of numpy's generator would silently change every IMDB result
    assert split_digest(g.splits) == IMDB_DIGEST


IMDB_DIGEST = "d14c86709cfaa07a"


def test_aminer_has_no_features(graph_data):
    g = load_aminer(graph_data)
    assert {t: g.data[t].num_nodes for t in g.data.node_types} == {
        "paper": 6564,
        "author": 13329,
        "reference": 35890,
    }
    assert all("x" not in g.data[t] for t in g.data.node_types)
    assert g.data["paper", "cites", "reference"].edge_index.shape[1] == 58831
    assert torch.bincount(g.labels).tolist() == [1333, 1114, 526, 3591]


def test_dblp_aptpa_rebuilt_from_edge_lists(graph_data):
    g = load_dblp(graph_data, metapaths=True)
    assert g.data["term"].x.shape == (7723, 50) and not g.data["term"].x.is_sparse  # the dense "npz"
    assert torch.bincount(g.labels).tolist() == [1197, 745, 1109, 1006]
    aptpa = g.metapaths["APTPA"].tocsr()
    assert aptpa.shape == (4057, 4057)
    pa = g.data["paper", "writes", "author"].edge_index.numpy()
    pt = g.data["paper", "has_term", "term"].edge_index.numpy()
    papers_of = {a: set(pa[0, pa[1] == a]) for a in range(20)}
    terms_of_paper = {}
    for p, t in pt.T:
        terms_of_paper.setdefault(p, set()).add(t)
    authors_of_term_papers = {}
    for p, a in pa.T:
        for t in terms_of_paper.get(p, ()):
            authors_of_term_papers.setdefault(t, set()).add(a)
    for a in range(20):  # brute force: authors sharing a term through their papers
        terms = set().union(*(terms_of_paper.get(p, set()) for p in papers_of[a]))
        reach = set().union(*(authors_of_term_papers[t] for t in terms)) if terms else set()
        assert set(aptpa[a].indices) == reach


def test_folder_format_round_trip(tmp_path):
    g = load_folder(write_graph(tmp_path / "g"))
    assert g.target == "paper" and g.num_classes == 3
    assert g.data["paper"].x.shape == (60, 8)
    assert ("author", "rev_writes", "paper") in g.data.edge_types
    assert g.splits  # drawn when the folder ships none
    assert load_graph(str(tmp_path / "g")).summary() == g.summary()


def _bad(tmp_path, name, fix, **spec):
    root = write_graph(tmp_path / name, **spec)
    fix(root)
    with pytest.raises(DataError) as e:
        load_folder(root)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_input_one_line_errors(tmp_path):
    assert "missing file" in _bad(tmp_path, "a", lambda r: (r / "pa.txt").unlink())
    assert "out of range" in _bad(tmp_path, "b", lambda r: open(r / "pa.txt", "a").write("3\t999\n"))
    msg = _bad(
        tmp_path,
        "c",
        lambda r: None,
        relations=[{"src": "paper", "name": "x", "dst": "venue", "file": "pa.txt"}],
    )
    assert "unknown node type 'venue'" in msg
    assert "labels" in _bad(tmp_path, "d", lambda r: np.savetxt(r / "labels.txt", np.zeros(5), fmt="%d"))

    def nan(r):
        x = np.load(r / "p_feat.npy")
        x[3, 2] = np.nan
        np.save(r / "p_feat.npy", x)

    assert "NaN" in _bad(tmp_path, "e", nan)

    def empty(r):
        (r / "empty.txt").write_text("")
        (r / "ids.txt").write_text("1\n2\n")

    msg = _bad(tmp_path, "f", empty, splits={20: {"train": "empty.txt", "val": "ids.txt", "test": "ids.txt"}})
    assert "is empty" in msg
    g = load_folder(write_graph(tmp_path / "ok"))
    with pytest.raises(DataError, match="larger than the smallest class"):
        check_budget(g, 21)
    with pytest.raises(DataError, match="unknown graph"):
        load_graph("no-such-graph")
