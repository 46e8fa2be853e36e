"""`python -m diffumatting train-head`: not implemented yet (placeholder registered so --help lists it)."""

from ..cli import CLIError


def register(subparsers) -> None:
    p = subparsers.add_parser("train-head", help="(not implemented yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise CLIError("'train-head' is not implemented yet")
