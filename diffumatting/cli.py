"""Command-line entry of the pack: ``python -m diffumatting <command> ...``.

Each command lives in ``diffumatting/commands/<name>.py`` and exposes ``register(subparsers)``, which adds its
sub-parser and sets ``func(args) -> int``. Commands import torch and the core lazily so ``--help`` is instant.
Errors the user can fix (bad arguments, unreadable inputs) are raised as :class:`CLIError` and printed as one
line with exit status 2; they never surface as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# Order here is the order in `--help`.
COMMANDS = ("demo", "key", "train_head", "train", "dataset", "generate")


class CLIError(Exception):
    """A user-facing error: printed as ``error: <message>``, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m diffumatting",
        description="DiffuMatting: objects with matting-level transparency (keying, matting head, training, "
        "data factory). Run a command with --help for its options.",
    )
    parser.add_argument("--version", action="version", version=f"diffumatting {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f".commands.{name}", __package__)
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
