"""The `engine` command line interface."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; Ctrl-C while its modules still load exits 130 quietly."""
    try:
        from engine.cli.main import main as run_main
    except KeyboardInterrupt:
        print("engine: interrupted", file=sys.stderr)
        return 130
    return run_main(argv)


__all__ = ["main"]
