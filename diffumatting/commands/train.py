"""`python -m diffumatting train`: not implemented yet (placeholder registered so --help lists it)."""

from ..cli import CLIError


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="(not implemented yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise CLIError("'train' is not implemented yet")
