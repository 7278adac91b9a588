"""Heterogeneous graphs for PHE as PyG ``HeteroData``: HeCo ACM/DBLP/AMiner, NSHE IMDB, or a user's folder.

Every loader returns a ``Graph``: the ``HeteroData`` (every relation plus its reverse ``rev_<rel>``; ``x`` where
the source ships features, as a sparse COO tensor for bag-of-words, else none so the model learns an embedding;
``n_id`` = the node's id in the whole graph, which the sampler keeps in subgraphs), the labelled target type,
labels, and the fixed label splits ``{per_class: (train, val, test)}``.

Nothing is unpickled: HeCo's ``nei_*.npy`` object arrays are not read (the edge lists carry the same
neighbourhoods), and DBLP's APTPA meta-path, which HeCo does not ship, is rebuilt from pa.txt and pt.txt.

A user's graph is a folder with a ``graph.yaml``::

    target: paper                       # the labelled node type (optional without labels)
    nodes: {paper: 4019, author: 7167}  # node counts per type; ids are 0-based per type
    relations:                          # one edge list per relation: "src_id<TAB>dst_id" per line
      - {src: paper, name: writes, dst: author, file: pa.txt}
    features: {paper: p_feat.npz}       # optional: .npz (scipy sparse) or .npy (dense), one row per node
    labels: labels.txt                  # optional: one integer class per target node (.txt or .npy)
    splits: {20: {train: train_20.txt, val: val.txt, test: test.txt}}  # optional; else drawn as for IMDB

Bad input raises a one-line ``DataError`` naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from pretrainkit.errors import DataError
from pretrainkit.paths import shared_data_root

BUDGETS = (20, 40, 60)
BUILTIN = ("acm", "dblp", "aminer", "imdb")
# IMDB ships no split: HeCo's scheme drawn once with this seed (1,000 validation, 1,000 test nodes).
IMDB_SPLIT_SEED = 20251014
IMDB_EVAL_SIZE = 1000

EdgeType = tuple[str, str, str]


@dataclass
class Graph:
    """A heterogeneous graph with its labelled target type and fixed few-label splits."""

    name: str
    data: object  # torch_geometric.data.HeteroData
    target: str | None
    labels: torch.Tensor | None
    splits: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    metapaths: dict[str, object] = field(default_factory=dict)  # name -> scipy.sparse bool adjacency

    @property
    def num_classes(self) -> int:
        return 0 if self.labels is None else int(self.labels.max()) + 1

    def summary(self) -> dict:
        d = self.data
        return {
            "name": self.name,
            "target": self.target,
            "nodes": {t: int(d[t].num_nodes) for t in d.node_types},
            "edges": {"__".join(et): int(d[et].edge_index.shape[1]) for et in d.edge_types},
            "classes": self.num_classes,
        }


# ---- reading files ------------------------------------------------------------------------------------
def _need(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"missing file: {path}")
    return path


def read_edges(path: Path, n_src: int, n_dst: int, what: str) -> torch.Tensor:
    """An edge list "src<TAB>dst" (0-based per-type ids) as a (2, E) long tensor, ids checked against counts."""
    _need(path)
    try:
        arr = np.loadtxt(path, dtype=np.int64, ndmin=2)
    except ValueError as e:
        raise DataError(f"{path}: not an integer edge list 'src<TAB>dst' ({e})") from None
    if arr.size == 0:
        arr = np.zeros((0, 2), dtype=np.int64)
    if arr.shape[1] < 2:
        raise DataError(f"{path}: expected two columns 'src<TAB>dst', got {arr.shape[1]}")
    src, dst = arr[:, 0], arr[:, 1]
    for ids, n, side in ((src, n_src, "source"), (dst, n_dst, "target")):
        if len(ids) and (ids.min() < 0 or ids.max() >= n):
            bad = int(ids.max() if ids.max() >= n else ids.min())
            raise DataError(
                f"{path}: {what} {side} id {bad} is out of range for a node type with {n} nodes "
                f"(allowed 0..{n - 1})"
            )
    return torch.from_numpy(np.stack([src, dst]))


def read_features(path: Path, n: int, what: str) -> torch.Tensor:
    """Features as a float32 tensor: sparse COO from a scipy ``.npz``, dense from a ``.npy`` (HeCo's DBLP
    ``t_feat.npz`` is a plain ``np.save`` array despite its name, so an ``.npz`` that is not scipy is tried as
    one). Checked for row count and NaN."""
    import scipy.sparse as sp

    _need(path)
    mat = None
    if path.suffix == ".npz":
        try:
            mat = sp.load_npz(path)
        except (ValueError, OSError, KeyError, TypeError):  # not a scipy archive: try it as an array
            mat = None
    if mat is None:
        try:
            mat = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError(f"{path}: not a scipy sparse .npz or a numeric .npy array ({e})") from None
    if mat.shape[0] != n:
        raise DataError(f"{path}: {what} features have {mat.shape[0]} rows but the type has {n} nodes")
    if sp.issparse(mat):
        coo = sp.coo_matrix(mat)
        if np.isnan(coo.data).any():
            raise DataError(f"{path}: {what} features contain NaN")
        idx = torch.from_numpy(np.stack([coo.row, coo.col]).astype(np.int64))
        return torch.sparse_coo_tensor(
            idx, torch.from_numpy(coo.data.astype(np.float32)), coo.shape, check_invariants=False
        ).coalesce()
    arr = np.asarray(mat, dtype=np.float32)
    if arr.ndim != 2:
        raise DataError(f"{path}: {what} features must be 2-d (nodes x dims), got shape {arr.shape}")
    if np.isnan(arr).any():
        raise DataError(f"{path}: {what} features contain NaN")
    return torch.from_numpy(arr)


def read_ids(path: Path) -> np.ndarray:
    _need(path)
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    else:
        with warnings.catch_warnings():  # an empty file is reported by check_split, in one line
            warnings.simplefilter("ignore", UserWarning)
            arr = np.loadtxt(path, dtype=np.int64, ndmin=1)
    return np.asarray(arr).astype(np.int64).reshape(-1)


def check_labels(labels: np.ndarray, n: int, source: Path) -> torch.Tensor:
    if len(labels) != n:
        raise DataError(f"{source}: {len(labels)} labels but the target type has {n} nodes")
    if len(labels) and labels.min() < 0:
        raise DataError(f"{source}: labels must be class ids >= 0, got {int(labels.min())}")
    return torch.from_numpy(labels.astype(np.int64))


def check_split(ids: np.ndarray, n: int, name: str) -> torch.Tensor:
    if len(ids) == 0:
        raise DataError(f"split '{name}' is empty")
    if ids.min() < 0 or ids.max() >= n:
        raise DataError(f"split '{name}' has node id {int(ids.max())} outside the target type's 0..{n - 1}")
    return torch.from_numpy(ids)


# ---- building the graph -------------------------------------------------------------------------------
def build(
    name: str,
    nodes: dict[str, int],
    relations: dict[EdgeType, torch.Tensor],
    features: dict[str, torch.Tensor],
    target: str | None,
    labels: torch.Tensor | None,
):
    """HeteroData with every relation and its reverse; ``n_id`` on every type."""
    from torch_geometric.data import HeteroData

    data = HeteroData()
    for t, n in nodes.items():
        data[t].num_nodes = int(n)
        data[t].n_id = torch.arange(int(n))
        if t in features:
            data[t].x = features[t]
    for (s, r, d), ei in relations.items():
        for typ in (s, d):
            if typ not in nodes:
                raise DataError(
                    f"relation '{r}' names unknown node type '{typ}'; node types: {sorted(nodes)}"
                )
        data[s, r, d].edge_index = ei
        data[d, f"rev_{r}", s].edge_index = ei.flip(0)
    if labels is not None:
        data[target].y = labels
    return data


def budget_splits(
    labels: torch.Tensor, seed: int, n_val: int, n_test: int, budgets=BUDGETS
) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """HeCo's scheme for a graph that ships none: one random validation and test set (shared by every budget),
    then ``per_class`` training nodes of each class from the rest, every draw from ``seed``."""
    from pretrainkit.adapt.probe import stratified_budget

    y = labels.numpy()
    n = len(y)
    if n_val + n_test >= n:
        raise DataError(f"{n} labelled nodes are too few for {n_val} validation + {n_test} test nodes")
    perm = np.random.default_rng(seed).permutation(n)
    val, test, pool = np.sort(perm[:n_val]), np.sort(perm[n_val : n_val + n_test]), perm[n_val + n_test :]
    out = {}
    for b in budgets:
        train = stratified_budget(y, b, seed + b, pool=pool, classes=np.unique(y))
        out[b] = (torch.from_numpy(train), torch.from_numpy(val), torch.from_numpy(test))
    return out


def split_digest(splits) -> str:
    """A short checksum of the split ids, so a test (or a report) can pin that every run uses the same split."""
    h = hashlib.sha256()
    for b in sorted(splits):
        for part in splits[b]:
            h.update(part.numpy().astype(np.int64).tobytes())
    return h.hexdigest()[:16]


def _heco_splits(root: Path, n: int) -> dict:
    out = {}
    for b in BUDGETS:
        parts = tuple(
            check_split(read_ids(root / f"{p}_{b}.npy"), n, f"{p}_{b}") for p in ("train", "val", "test")
        )
        out[b] = parts
    return out


# ---- the four public graphs ---------------------------------------------------------------------------
def _root(name: str, root: Path | None) -> Path:
    folder = {"acm": "heco_acm", "dblp": "heco_dblp", "aminer": "heco_aminer", "imdb": "nshe_imdb"}[name]
    base = Path(root) if root is not None else shared_data_root() / "graph"
    path = base / folder
    if not path.is_dir():
        raise DataError(
            f"missing data folder for '{name}': {path} (set PRETRAINKIT_SHARED_DATA or pass --data)"
        )
    return path


def load_acm(root: Path | None = None) -> Graph:
    r = _root("acm", root)
    nodes = {"paper": 4019, "author": 7167, "subject": 60}
    rel = {
        ("paper", "writes", "author"): read_edges(r / "pa.txt", 4019, 7167, "paper-author"),
        ("paper", "has_subject", "subject"): read_edges(r / "ps.txt", 4019, 60, "paper-subject"),
    }
    # HeCo itself feeds only the paper bag-of-words (one-hot elsewhere); the author one is loaded too.
    feats = {
        "paper": read_features(r / "p_feat.npz", 4019, "paper"),
        "author": read_features(r / "a_feat.npz", 7167, "author"),
    }
    labels = check_labels(read_ids(r / "labels.npy"), 4019, r / "labels.npy")
    data = build("acm", nodes, rel, feats, "paper", labels)
    return Graph("acm", data, "paper", labels, _heco_splits(r, 4019))


def load_dblp(root: Path | None = None, metapaths: bool = False) -> Graph:
    """``metapaths=True`` also rebuilds APTPA (author-paper-term-paper-author; HeCo does not ship it, and it is
    dense: ~7M of 16M pairs) into ``graph.metapaths["APTPA"]``."""
    r = _root("dblp", root)
    nodes = {"author": 4057, "paper": 14328, "conference": 20, "term": 7723}
    pa = read_edges(r / "pa.txt", 14328, 4057, "paper-author")
    pc = read_edges(r / "pc.txt", 14328, 20, "paper-conference")
    pt = read_edges(r / "pt.txt", 14328, 7723, "paper-term")
    rel = {
        ("paper", "writes", "author"): pa,
        ("paper", "in_conference", "conference"): pc,
        ("paper", "has_term", "term"): pt,
    }
    feats = {
        "author": read_features(r / "a_feat.npz", 4057, "author"),
        "paper": read_features(r / "p_feat.npz", 14328, "paper"),
        "term": read_features(r / "t_feat.npz", 7723, "term"),
    }
    labels = check_labels(read_ids(r / "labels.npy"), 4057, r / "labels.npy")
    data = build("dblp", nodes, rel, feats, "author", labels)
    g = Graph("dblp", data, "author", labels, _heco_splits(r, 4057))
    if metapaths:
        g.metapaths["APTPA"] = metapath_adjacency(
            [(pa.flip(0), 4057, 14328), (pt, 14328, 7723), (pt.flip(0), 7723, 14328), (pa, 14328, 4057)]
        )
    return g


def load_aminer(root: Path | None = None) -> Graph:
    r = _root("aminer", root)
    nodes = {"paper": 6564, "author": 13329, "reference": 35890}
    rel = {
        ("paper", "writes", "author"): read_edges(r / "pa.txt", 6564, 13329, "paper-author"),
        ("paper", "cites", "reference"): read_edges(r / "pr.txt", 6564, 35890, "paper-reference"),
    }
    labels = check_labels(read_ids(r / "labels.npy"), 6564, r / "labels.npy")
    data = build("aminer", nodes, rel, {}, "paper", labels)  # no features: the model learns embeddings
    return Graph("aminer", data, "paper", labels, _heco_splits(r, 6564))


def load_imdb(root: Path | None = None) -> Graph:
    """NSHE's IMDB: global ids in relations.txt are mapped to per-type ids through node2id.txt's prefixes."""
    r = _root("imdb", root)
    offsets: dict[str, list[int]] = {"m": [], "a": [], "d": []}
    with open(_need(r / "node2id.txt")) as f:
        next(f)
        for line in f:
            name, gid = line.split("\t")
            if name[0] not in offsets:
                raise DataError(f"{r / 'node2id.txt'}: unknown node prefix in '{name}' (allowed m, a, d)")
            offsets[name[0]].append(int(gid))
    lo = {k: min(v) for k, v in offsets.items()}
    n = {k: len(v) for k, v in offsets.items()}
    for k in offsets:  # each type's global ids must be one contiguous block, as the README says
        if max(offsets[k]) - lo[k] + 1 != n[k]:
            raise DataError(f"{r / 'node2id.txt'}: ids of type '{k}' are not contiguous")
    rel_path = _need(r / "relations.txt")
    arr = np.loadtxt(rel_path, dtype=np.int64, ndmin=2)
    rels = {}
    for rid, (dst, name) in {0: ("a", "has_actor"), 1: ("d", "has_director")}.items():
        e = arr[arr[:, 2] == rid]
        src, dd = e[:, 0] - lo["m"], e[:, 1] - lo[dst]
        ei = torch.from_numpy(np.stack([src, dd]))
        tname = {"a": "actor", "d": "director"}[dst]
        if len(src) and (src.min() < 0 or src.max() >= n["m"] or dd.min() < 0 or dd.max() >= n[dst]):
            raise DataError(
                f"{rel_path}: relation {rid} has ids outside the movie/{tname} blocks of node2id.txt"
            )
        rels[("movie", name, tname)] = ei
    nodes = {"movie": n["m"], "actor": n["a"], "director": n["d"]}
    labels = check_labels(read_ids(r / "imdb_m_label.txt"), n["m"], r / "imdb_m_label.txt")
    data = build("imdb", nodes, rels, {}, "movie", labels)
    splits = budget_splits(labels, IMDB_SPLIT_SEED, IMDB_EVAL_SIZE, IMDB_EVAL_SIZE)
    return Graph("imdb", data, "movie", labels, splits)


# ---- a user's folder ----------------------------------------------------------------------------------
def load_folder(path: str | Path, split_seed: int = 0) -> Graph:
    """A graph from a folder with ``graph.yaml`` (format in the module docstring)."""
    root = Path(path)
    spec_path = _need(root / "graph.yaml")
    try:
        spec = yaml.safe_load(spec_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{spec_path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("nodes"), dict) or not spec["nodes"]:
        raise DataError(f"{spec_path}: needs 'nodes: {{type: count, ...}}'")
    nodes = {str(t): int(c) for t, c in spec["nodes"].items()}
    if not spec.get("relations"):
        raise DataError(f"{spec_path}: needs at least one entry under 'relations'")
    rels = {}
    for i, rel in enumerate(spec["relations"]):
        try:
            s, name, d, file = str(rel["src"]), str(rel["name"]), str(rel["dst"]), str(rel["file"])
        except (KeyError, TypeError):
            raise DataError(f"{spec_path}: relation #{i} needs src, name, dst and file") from None
        for typ in (s, d):
            if typ not in nodes:
                raise DataError(
                    f"{spec_path}: relation '{name}' names unknown node type '{typ}'; "
                    f"node types: {sorted(nodes)}"
                )
        rels[(s, name, d)] = read_edges(root / file, nodes[s], nodes[d], f"relation '{name}'")
    feats = {}
    for t, file in (spec.get("features") or {}).items():
        if t not in nodes:
            raise DataError(
                f"{spec_path}: features name unknown node type '{t}'; node types: {sorted(nodes)}"
            )
        feats[t] = read_features(root / file, nodes[t], t)
    target, labels, splits = spec.get("target"), None, {}
    if target is not None and target not in nodes:
        raise DataError(f"{spec_path}: target '{target}' is not a node type; node types: {sorted(nodes)}")
    if spec.get("labels"):
        if target is None:
            raise DataError(f"{spec_path}: 'labels' needs a 'target' node type")
        labels = check_labels(read_ids(root / spec["labels"]), nodes[target], root / spec["labels"])
        if spec.get("splits"):
            for b, parts in spec["splits"].items():
                splits[int(b)] = tuple(
                    check_split(read_ids(root / parts[p]), nodes[target], f"{b}/{p}")
                    for p in ("train", "val", "test")
                )
        else:
            n_eval = min(IMDB_EVAL_SIZE, len(labels) // 4)
            splits = budget_splits(
                labels,
                split_seed,
                n_eval,
                n_eval,
                budgets=[b for b in BUDGETS if b <= _smallest_class(labels) // 2]
                or [max(1, _smallest_class(labels) // 4)],
            )
    data = build(root.name, nodes, rels, feats, target, labels)
    return Graph(root.name, data, target, labels, splits)


def _smallest_class(labels: torch.Tensor) -> int:
    return int(torch.bincount(labels).min())


def load_graph(source: str, root: Path | None = None) -> Graph:
    """A built-in graph by name (acm, dblp, aminer, imdb) or a folder with a ``graph.yaml``."""
    if source in BUILTIN:
        return {"acm": load_acm, "dblp": load_dblp, "aminer": load_aminer, "imdb": load_imdb}[source](root)
    p = Path(source)
    if not p.exists():
        raise DataError(f"unknown graph '{source}': not one of {', '.join(BUILTIN)} and no such folder")
    return load_folder(p)


def check_budget(graph: Graph, per_class: int) -> None:
    """Refuse a label budget the graph has no split for, or one larger than a class."""
    if graph.labels is None:
        raise DataError(f"graph '{graph.name}' has no labels, so it cannot be evaluated")
    smallest = _smallest_class(graph.labels)
    if per_class > smallest:
        raise DataError(
            f"label budget {per_class} per class is larger than the smallest class ({smallest} nodes)"
        )
    if per_class not in graph.splits:
        raise DataError(
            f"graph '{graph.name}' has no split for {per_class} labels per class; "
            f"allowed: {', '.join(map(str, sorted(graph.splits)))}"
        )


def metapath_adjacency(hops: list[tuple[torch.Tensor, int, int]]):
    """Boolean meta-path adjacency: the product of the hops' (src -> dst) adjacencies, e.g. APTPA from
    author->paper, paper->term, term->paper, paper->author; diagonal kept (a node reaches itself)."""
    import scipy.sparse as sp

    out = None
    for ei, n_src, n_dst in hops:
        a = sp.csr_matrix(
            (np.ones(ei.shape[1], dtype=np.float32), (ei[0].numpy(), ei[1].numpy())), shape=(n_src, n_dst)
        )
        a.data[:] = 1.0
        out = a if out is None else out @ a
        out.data[:] = 1.0  # keep it boolean so path counts cannot overflow
    return out.astype(bool)
