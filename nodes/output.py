"""Nodes: output (filled in by its issue)."""

NODES = []
