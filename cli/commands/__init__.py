"""Sub-commands of ``python -m diffumatting`` (one module each, see ``diffumatting/cli.py``)."""
