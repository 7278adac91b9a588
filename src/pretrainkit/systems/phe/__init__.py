"""PHE: structure- and semantic-enhanced pre-training of heterogeneous GNNs (HGT) with masked-edge contrast."""

from pretrainkit.core.system import System, lazy

SYSTEM = System(
    name="phe",
    help="PHE: structure- and semantic-aware pre-training of heterogeneous graph encoders",
    add_commands=lazy("pretrainkit.systems.phe.cli", "add_commands"),
    bench_main=lazy("pretrainkit.systems.phe.cli", "bench_main"),
    extra="phe",
)
