"""Nodes: greenpost (filled in by its issue)."""

NODES = []
