"""Shared helpers of the ComfyUI layer: categories, the custom socket types, device and progress plumbing."""

from __future__ import annotations

from comfy_api.latest import io

NODE_PREFIX = "DiffuMatting"
CATEGORY = "DiffuMatting"

# A loaded matting head (see matting_head/); produced by DiffuMattingLoader, consumed by MattingHeadDecode.
MattingHead = io.Custom("DIFFUMATTING_HEAD")


def category(sub: str) -> str:
    """``DiffuMatting/<sub>``: every node of the pack lives under the DiffuMatting menu."""
    return f"{CATEGORY}/{sub}"


def intermediate_device():
    import comfy.model_management as mm

    return mm.intermediate_device()


def check_interrupted() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel (call it in long loops)."""
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()


def progress_bar(total: int, node_id: str | None = None):
    import comfy.utils

    return comfy.utils.ProgressBar(total, node_id=node_id)
