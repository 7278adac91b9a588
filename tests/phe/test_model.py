"""The HGT/RGCN encoder on the whole graph and on sampled subgraphs."""

import pytest
import torch

from pretrainkit.errors import ConfigError
from pretrainkit.systems.phe.model import EncoderConfig, HeteroEncoder
from pretrainkit.systems.phe.sampler import build_csr, sample_subgraph


@pytest.mark.parametrize("conv", ["hgt", "rgcn"])
def test_forward_full_and_sampled(tiny_graph, conv):
    data = tiny_graph.data
    torch.manual_seed(0)
    enc = HeteroEncoder.for_graph(data, EncoderConfig(conv=conv, hidden=16, heads=2, layers=2))
    h = enc(data)
    assert {t: tuple(v.shape) for t, v in h.items()} == {
        "paper": (60, 16),
        "author": (40, 16),
        "subject": (5, 16),
    }
    h["paper"].sum().backward()
    assert enc.proj["paper"].weight.grad is not None and enc.emb["author"].weight.grad is not None
    sub = sample_subgraph(
        data, build_csr(data), "paper", torch.tensor([1, 2, 3]), [4, 4], torch.Generator().manual_seed(0)
    )
    enc.eval()
    hs = enc(sub)
    assert hs["paper"].shape == (sub["paper"].num_nodes, 16)
    # featureless types are looked up by global id: the sampled inputs are the full graph's rows
    full_in, sub_in = enc.inputs(data), enc.inputs(sub)
    for t in data.node_types:
        assert torch.allclose(sub_in[t], full_in[t][sub[t].n_id])


def test_sampled_equals_full_when_neighbourhood_complete(tiny_graph):
    """With every neighbour taken for as many hops as layers, the seeds' embeddings equal the full graph's."""
    data = tiny_graph.data
    torch.manual_seed(0)
    enc = HeteroEncoder.for_graph(data, EncoderConfig(conv="rgcn", hidden=8, layers=2)).eval()
    seeds = torch.tensor([0, 9])
    sub = sample_subgraph(data, build_csr(data), "paper", seeds, [-1, -1], torch.Generator())
    assert torch.allclose(enc(sub)["paper"][:2], enc(data)["paper"][seeds], atol=1e-5)


def test_config_errors():
    with pytest.raises(ConfigError, match="divisible"):
        EncoderConfig(hidden=10, heads=4).validate()
