"""Nodes: green_control (filled in by its issue)."""

NODES = []
