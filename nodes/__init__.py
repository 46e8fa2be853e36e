"""ComfyUI-facing layer of the pack: thin V3 nodes over the pure-torch core.

Everything that knows about ComfyUI (ModelPatcher, model management, ProgressBar, interruption, folder_paths)
lives in this package. Each module exposes ``NODES``, a list of ``io.ComfyNode`` classes; the extension below
registers them all. Node ids are prefixed ``DiffuMatting`` and categories live under ``DiffuMatting/``.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import composite, dataset, green_control, greenpost, keycolour, matting, output, roundtrip

NODE_MODULES = (green_control, matting, greenpost, keycolour, roundtrip, composite, output, dataset)


def all_nodes() -> list[type[io.ComfyNode]]:
    return [node for module in NODE_MODULES for node in module.NODES]


class DiffuMattingExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return all_nodes()
