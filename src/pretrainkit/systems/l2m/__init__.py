"""L2M: a frozen multi-task Decision Transformer adapted continually on Meta-World (Continual World) tasks.

Modules: ``envs`` (task names, CW10 order, env makers), ``collect`` (scripted-expert datasets),
``data`` (task ``.npz`` files and DT context windows), ``model`` (the Decision Transformer),
``rollout`` (closed-loop evaluation). Submodules import Meta-World lazily.
"""

from pretrainkit.core.system import System, lazy

SYSTEM = System(
    name="l2m",
    help="L2M: a frozen Decision Transformer learning Meta-World tasks continually",
    add_commands=lazy("pretrainkit.systems.l2m.cli", "add_commands"),
    bench_main=lazy("pretrainkit.systems.l2m.cli", "bench_main"),
    extra="l2m",
)
