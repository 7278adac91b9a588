"""L2M: a frozen multi-task Decision Transformer adapted continually on Meta-World (Continual World) tasks.

Modules: ``envs`` (task names, CW10 order, env makers), ``collect`` (scripted-expert datasets),
``data`` (task ``.npz`` files and DT context windows), ``model`` (the Decision Transformer),
``rollout`` (closed-loop evaluation). Submodules import Meta-World lazily.
"""
