"""`python -m diffumatting demo`: not implemented yet (placeholder registered so --help lists it)."""

from ..cli import CLIError


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="(not implemented yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise CLIError("'demo' is not implemented yet")
