"""Nodes: matting (filled in by its issue)."""

NODES = []
