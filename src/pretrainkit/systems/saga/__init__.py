"""Saga: multi-level masked IMU pre-training with searched task weights, evaluated with few labels."""

from pretrainkit.core.system import System, lazy

SYSTEM = System(
    name="saga",
    help="Saga: multi-level masked IMU pre-training with searched task weights",
    add_commands=lazy("pretrainkit.systems.saga.cli", "add_commands"),
    bench_main=lazy("pretrainkit.systems.saga.cli", "bench_main"),
    extra="saga",
)
