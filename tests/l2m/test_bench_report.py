"""L2M's reports under the one statistic: the verdict's spread is the sample std (a margin the population std
called 'beyond' can now be 'within'), one seed decides nothing, and the routing report re-renders to itself."""

import json
import statistics
import sys
from pathlib import Path

from pretrainkit.core.results import publish, rerender
from pretrainkit.systems.l2m import bench, routing
from pretrainkit.systems.l2m.config import L2MConfig

sys.path.insert(0, str(Path(__file__).parents[1]))
from results_helpers import assert_rerender_equals, tables_without_n


def _summary(final: list[float], forgetting=0.0, retention=1.0, just=0.5):
    def fixed(v):
        return bench._stats([v, v, v])

    return {
        "final_mean_success": bench._stats(final),
        "forgetting": fixed(forgetting),
        "pretrain_retention": fixed(retention),
        "just_learned": fixed(just),
    }


def test_verdict_spread_is_the_sample_std():
    ours, ft = [0.2, 0.4, 0.6], [0.02, 0.12, 0.22]
    diff = statistics.fmean(ours) - statistics.fmean(ft)
    # population stds would put the margin outside the spread, sample stds put it inside
    assert (
        statistics.pstdev(ours) + statistics.pstdev(ft) < diff < statistics.stdev(ours) + statistics.stdev(ft)
    )
    win = {"l2m": _summary(ours), "ft": _summary(ft), "lora": _summary([0.0, 0.0, 0.01])}
    text, met = bench._verdict(win)
    assert met is False and "within the summed seed spread (sample std)" in text
    one = {
        k: {**s, "final_mean_success": bench._stats(s["final_mean_success"]["mean"] for _ in [0])}
        for k, s in win.items()
    }
    text, met = bench._verdict(one)
    assert met is False and "a single seed, so no seed spread" in text


def test_routing_report_states_n_and_rerenders_to_itself(tmp_path):
    cfg = L2MConfig()
    seq, pre = cfg.data.continual_tasks, cfg.data.pretrain_tasks
    fields = dict.fromkeys(routing.FIELDS, 0.5)
    per_seed = {
        s: {
            t: {**fields, "success_final": 0.1 * (s + 1), "heldout_own_final": None if s == 2 else 0.9}
            for t in [*seq, *pre]
        }
        for s in (0, 1, 2)
    }
    owners = {s: {0: 0, 1: 1, 10: 2} for s in (0, 1, 2)}
    data = {
        "method": "l2m",
        "per_seed": per_seed,
        "owners": {s: {str(k): v for k, v in o.items()} for s, o in owners.items()},
    }
    md = publish(
        "l2m-routing",
        data,
        routing.render,
        kind=routing.KIND,
        seeds=[0, 1, 2],
        out_dir=tmp_path / "a",
        title="L2M routing (l2m)",
        config=cfg,
    )
    out = json.loads(md.with_suffix(".json").read_text())
    assert out["headline"]["heldout_own_share_final"] == 0.9 and out["headline"]["n_seeds"] == 3
    text = md.read_text()
    assert not tables_without_n(text), tables_without_n(text)
    assert "0.90 ± 0.00 (n=2)" in text  # one seed without a value: the cell says n=2
    assert f"0.50 ± 0.00 -> 0.20 ± {statistics.stdev([0.1, 0.2, 0.3]):.2f}" in text
    assert "0: 0, 1: 1, 10: 2" in text  # keys in numeric order, as before the JSON round trip
    assert_rerender_equals(md, tmp_path / "b", lambda p, d: routing.rerender(p, d))
    assert_rerender_equals(md, tmp_path / "c", lambda p, d: rerender(p, routing.render, d))
