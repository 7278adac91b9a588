"""CR-Net: cross-layer low-rank LLM pre-training."""

from pretrainkit.core.system import System, lazy

SYSTEM = System(
    name="crnet",
    help="CR-Net: cross-layer low-rank LLM pre-training",
    add_commands=lazy("pretrainkit.systems.crnet.cli", "add_commands"),
    bench_main=lazy("pretrainkit.systems.crnet.cli", "bench_main"),
    extra="crnet",
)
