"""Nodes: dataset (filled in by its issue)."""

NODES = []
