"""PHE diagnosis runs (smoke scale): pre-train on one graph with config overrides, print the loss curve and
the frozen-embedding probe at 20 labels/class (validation and test Macro-F1).

    .venv/bin/python scripts/phe_diagnose.py --steps 100 --set pretrain.semantic.perturbations=1 ...
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="quick")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--no-train", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from pretrainkit.core.config import load_config
    from pretrainkit.core.profiles import profile_path
    from pretrainkit.systems.phe import pipeline
    from pretrainkit.systems.phe.data import load_graph

    cfg = load_config(pipeline.PHEConfig, profile_path("phe", args.config), args.set)
    graph = load_graph(cfg.data)
    torch.manual_seed(cfg.pretrain.train.seed)
    model = pipeline.build_model(graph, cfg)
    batches = pipeline.make_batches(graph, cfg)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.pretrain.train.lr, weight_decay=cfg.pretrain.train.weight_decay
    )
    t0, window = time.time(), []
    for step in range(0 if args.no_train else args.steps):
        torch.manual_seed(1000 + step)
        model.train()
        loss, metrics = model(next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.pretrain.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.pretrain.train.grad_clip)
        opt.step()
        window.append(float(loss))
        if (step + 1) % 20 == 0:
            parts = {k: round(float(v), 3) for k, v in metrics.items() if k.count("/") <= 1 and "loss" in k}
            print(
                f"step {step + 1} loss {sum(window) / len(window):.3f} {parts} {time.time() - t0:.0f}s",
                flush=True,
            )
            window = []
    print(pipeline.probe_report(model.backbone, graph, cfg))


if __name__ == "__main__":
    main()
