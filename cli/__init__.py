"""Command-line entry of the pack: ``python -m diffumatting <command> ...``.

Each command lives in ``cli/commands/<name>.py`` and exposes ``register(subparsers)``, which adds its
sub-parser and sets ``func(args) -> int``. Commands import torch and the core lazily so ``--help`` is instant.
Errors the user can fix (bad arguments, unreadable inputs) are raised as :class:`CLIError` and printed as one
line with exit status 2; they never surface as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__

# Order here is the order in `--help`.
COMMANDS = ("demo", "key", "train_head", "train", "dataset", "generate")


class CLIError(Exception):
    """A user-facing error: printed as ``error: <message>``, exit status 2."""


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


def collect_image_files(inputs: list[str]) -> list[str]:
    """Files and folders given on the command line -> image file paths (a folder contributes its images, sorted)."""
    import glob
    import os

    files = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(f for f in glob.glob(os.path.join(item, "*")) if f.lower().endswith(IMAGE_EXTS))
            if not found:
                raise CLIError(f"{item}: folder holds no images ({', '.join(IMAGE_EXTS)})")
            files.extend(found)
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise CLIError(f"{item}: no such file or folder")
    return files


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
