"""Nodes: composite (filled in by its issue)."""

NODES = []
