"""LoRA on a UNet's attention and conv layers, injected with forward hooks, exported in ComfyUI's LoRA key format.

The base modules are never modified: each target ``nn.Linear`` / ``nn.Conv2d`` (ComfyUI's ``comfy.ops`` layers
are subclasses of these) gets a forward hook that adds ``scale * up(down(x))`` to its output, with
``scale = alpha / rank``. Exported keys follow ComfyUI's map for SD UNets (``comfy/lora.py::model_lora_keys_unet``):
``lora_unet_<module path with '.' -> '_'>.lora_down.weight`` ``[r, in(, k, k)]``, ``.lora_up.weight``
``[out, r(, 1, 1)]`` and ``.alpha`` (scalar), so ComfyUI computes the same ``alpha / rank * up @ down`` delta that
the hooks add during training. Pure torch; module paths are those of ``model.diffusion_model``.
"""

from __future__ import annotations

import json
import re

import torch
from torch import nn

__all__ = ["LoRALayer", "LoRANetwork", "find_targets", "TARGET_KINDS", "lora_key"]

# Target kinds: attn = to_q/to_k/to_v/to_out of self- and cross-attention; conv = every Conv2d (ResBlocks,
# down/up-sampling, 1x1 projections, in/out convs); ff = transformer feed-forward; proj = transformer proj_in/out
# when they are Linear (SDXL-style).
TARGET_KINDS = ("attn", "conv", "ff", "proj")
_ATTN = re.compile(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$")
_FF = re.compile(r"\.ff\.net\.(0\.proj|2)$")
_PROJ = re.compile(r"\.(proj_in|proj_out)$")


def lora_key(module_path: str) -> str:
    """``input_blocks.1.1.transformer_blocks.0.attn2.to_q`` -> ``lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_q``."""
    return "lora_unet_" + module_path.replace(".", "_")


def find_targets(unet: nn.Module, kinds=("attn", "conv")) -> list[tuple[str, nn.Module]]:
    """unet (``model.diffusion_model``), kinds from :data:`TARGET_KINDS` -> [(module path, module)] in model order."""
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in TARGET_KINDS]
    if bad or not kinds:
        raise ValueError(f"targets: expected a non-empty subset of {TARGET_KINDS}, got {kinds!r}")
    out = []
    for name, mod in unet.named_modules():
        dotted = "." + name
        if isinstance(mod, nn.Linear):
            if ("attn" in kinds and _ATTN.search(dotted)) or ("ff" in kinds and _FF.search(dotted)) or (
                "proj" in kinds and _PROJ.search(dotted)
            ):
                out.append((name, mod))
        elif isinstance(mod, nn.Conv2d) and "conv" in kinds:
            if mod.groups == 1:
                out.append((name, mod))
    if not out:
        raise ValueError(f"targets: no {kinds} layers found in the UNet (is it a ComfyUI diffusion_model?)")
    return out


class LoRALayer(nn.Module):
    """Low-rank delta of one Linear/Conv2d: ``x -> scale * up(down(x))``; ``up`` starts at zero (no change)."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        if isinstance(base, nn.Conv2d):
            self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, base.dilation,
                                  bias=False)
            self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
            self.padding_mode = base.padding_mode
        elif isinstance(base, nn.Linear):
            self.down = nn.Linear(base.in_features, rank, bias=False)
            self.up = nn.Linear(rank, base.out_features, bias=False)
        else:
            raise ValueError(f"base: expected nn.Linear or nn.Conv2d, got {type(base).__name__}")
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5, generator=generator)
        nn.init.zeros_(self.up.weight)
        self.rank = rank
        self.alpha = float(alpha)
        self.scale = self.alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = self.down.weight.dtype
        return self.up(self.down(x.to(dt))) * self.scale


class LoRANetwork(nn.Module):
    """All LoRA layers of a UNet. ``attach()`` hooks them in, ``detach()`` removes the hooks; ``multiplier``
    scales every delta (0 = base model). Parameters are float32 by default (keep them so under autocast); their
    initial values depend only on ``seed`` and the UNet's layout."""

    def __init__(self, unet: nn.Module, rank: int = 16, alpha: float | None = None, targets=("attn", "conv"),
                 conv_rank: int | None = None, conv_alpha: float | None = None, seed: int = 0):
        super().__init__()
        for name, v in (("rank", rank), ("conv_rank", conv_rank)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        conv_rank = conv_rank or rank
        alpha = float(rank if alpha is None else alpha)
        conv_alpha = float(conv_rank if conv_alpha is None else conv_alpha)
        if alpha <= 0 or conv_alpha <= 0:
            raise ValueError(f"alpha: expected > 0, got {alpha} / {conv_alpha}")
        self.targets = tuple(targets)
        self.paths: list[str] = []
        self.layers = nn.ModuleDict()
        self._bases: dict[str, nn.Module] = {}
        gen = torch.Generator().manual_seed(int(seed))  # the initial weights are a function of the seed
        for path, mod in find_targets(unet, self.targets):
            is_conv = isinstance(mod, nn.Conv2d)
            r = conv_rank if is_conv else rank
            a = conv_alpha if is_conv else alpha
            r = min(r, mod.in_channels if is_conv else mod.in_features, mod.out_channels if is_conv else mod.out_features)
            key = path.replace(".", "_")
            self.layers[key] = LoRALayer(mod, r, a * r / (conv_rank if is_conv else rank), gen)
            self.paths.append(path)
            self._bases[key] = mod
        self.multiplier = 1.0
        self._handles: list = []

    def attach(self) -> "LoRANetwork":
        """Register the forward hooks (idempotent)."""
        if self._handles:
            return self
        for key, base in self._bases.items():
            layer = self.layers[key]

            def hook(module, inputs, output, layer=layer):
                if self.multiplier == 0.0:
                    return output
                delta = layer(inputs[0])
                return output + (delta * self.multiplier).to(output.dtype)

            self._handles.append(base.register_forward_hook(hook))
        return self

    def detach(self) -> None:
        """Remove the hooks: the UNet computes exactly its base output again."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def export_state_dict(self, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
        """-> ComfyUI/kohya LoRA tensors: ``lora_unet_<path>.{lora_down.weight, lora_up.weight, alpha}`` (CPU)."""
        sd: dict[str, torch.Tensor] = {}
        for path in self.paths:
            layer = self.layers[path.replace(".", "_")]
            k = lora_key(path)
            sd[f"{k}.lora_down.weight"] = layer.down.weight.detach().to("cpu", dtype).contiguous()
            sd[f"{k}.lora_up.weight"] = layer.up.weight.detach().to("cpu", dtype).contiguous()
            sd[f"{k}.alpha"] = torch.tensor(layer.alpha, dtype=torch.float32)
        return sd

    def load_exported(self, sd: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`export_state_dict` (missing or mis-shaped keys raise ValueError)."""
        with torch.no_grad():
            for path in self.paths:
                layer = self.layers[path.replace(".", "_")]
                k = lora_key(path)
                for part, mod in (("lora_down", layer.down), ("lora_up", layer.up)):
                    name = f"{k}.{part}.weight"
                    if name not in sd:
                        raise ValueError(f"lora: key {name} missing (the file was made for another model or targets)")
                    if sd[name].shape != mod.weight.shape:
                        raise ValueError(f"lora: {name} has shape {tuple(sd[name].shape)}, expected {tuple(mod.weight.shape)}")
                    mod.weight.copy_(sd[name].to(mod.weight))

    def metadata(self) -> dict[str, str]:
        """safetensors metadata describing the network (strings only)."""
        ranks = sorted({layer.rank for layer in self.layers.values()})
        return {
            "diffumatting.kind": "green_canvas_lora",
            "diffumatting.targets": ",".join(self.targets),
            "diffumatting.layers": str(len(self.paths)),
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(max(ranks)),
            "diffumatting.ranks": json.dumps(ranks),
        }
