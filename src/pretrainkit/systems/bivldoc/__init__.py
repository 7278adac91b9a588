"""Bi-VLDoc: bidirectional vision-language pre-training with hybrid attention for document pages."""

from pretrainkit.core.system import System, lazy

SYSTEM = System(
    name="bivldoc",
    help="Bi-VLDoc: vision-language document pre-training (FUNSD/SROIE, rendered pages, your OCR'd scans)",
    add_commands=lazy("pretrainkit.systems.bivldoc.cli", "add_commands"),
    bench_main=lazy("pretrainkit.systems.bivldoc.cli", "bench_main"),
    extra="bivldoc",
)
