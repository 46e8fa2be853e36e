"""Per-run recorder of the colour word's cross-attention, and the post-CFG anchoring it drives.

One :class:`RunState` belongs to ONE sampling run: the ComfyUI layer creates it at the start of every run (an
``OUTER_SAMPLE`` wrapper) from the patch's immutable :class:`GreenSettings` and drops it when the run ends, so a
cached, shared or interrupted patched model never carries maps, masks or counters from one run into another.
Per model evaluation: the attention hook calls :meth:`RunState.record` (or :meth:`RunState.add_map` with an
already reduced map, e.g. from a DiT's joint attention) for each recorded block, then the post-CFG hook calls
:meth:`RunState.anchor`, which assembles the background mask from this evaluation's maps and pulls ``x0`` to the
key latent. Whoever wants a run's result (GreenControlSampler's mask output) hands a :class:`RunLog` to the run;
finished runs are appended to it.

Pure torch: the recorder sees plain tensors, the block id and the shapes ComfyUI passes to attention patches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .anchor import anchor_x0, strength_schedule
from .attention import cross_attention_probs
from .mask import aggregate_attention, background_mask

__all__ = ["RECORD_LEVELS", "GreenSettings", "RunState", "RunLog", "unet_attn2_lookup"]

log = logging.getLogger("diffumatting.green_control")

RECORD_LEVELS = (2, 4)  # record blocks at 1/2 and 1/4 of the latent size (1/16 and 1/32 of the image)


@dataclass(frozen=True, eq=False)
class GreenSettings:
    """The immutable settings of one GreenControl patch (plain data; safe to deep-copy with the model options).

    ``token_ids``: global positions of the colour word in the positive prompt; ``cond_len``: that prompt's encoded
    length (77 * chunks); ``z_key``: [1,C,1,1] key latent in model space; ``strength``/``end``: the schedule
    (:func:`strength_schedule`); ``threshold``/``softness``: the soft threshold; ``prior_scale``: x0 prior (None =
    off); ``levels``: downsampling factors of the recorded blocks.
    """

    token_ids: tuple
    cond_len: int
    z_key: torch.Tensor
    strength: float
    end: float
    threshold: float
    softness: float
    prior_scale: float | None = None
    levels: tuple = RECORD_LEVELS

    def __post_init__(self):
        ids = tuple(int(t) for t in self.token_ids)
        if not ids or min(ids) < 0:
            raise ValueError(f"token_ids: expected one or more token positions >= 0, got {list(self.token_ids)}")
        if int(self.cond_len) <= max(ids):
            raise ValueError(f"token_ids: position {max(ids)} is outside the encoded prompt ({self.cond_len} tokens)")
        z = torch.as_tensor(self.z_key).detach().float().cpu()
        if z.ndim != 4 or z.shape[0] != 1 or z.shape[-2:] != (1, 1) or not torch.isfinite(z).all():
            raise ValueError(f"z_key: expected a finite [1,C,1,1] latent, got {tuple(z.shape)}")
        if not self.strength >= 0:
            raise ValueError(f"strength: expected a value >= 0, got {self.strength}")
        if not self.softness > 0:
            raise ValueError(f"softness: expected a positive ramp width, got {self.softness}")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold: expected a value in [0, 1], got {self.threshold}")
        prior = float(self.prior_scale) if self.prior_scale and self.prior_scale > 0 else None
        for name, value in (("token_ids", ids), ("cond_len", int(self.cond_len)), ("z_key", z),
                            ("strength", float(self.strength)), ("end", float(self.end)),
                            ("threshold", float(self.threshold)), ("softness", float(self.softness)),
                            ("prior_scale", prior), ("levels", tuple(int(v) for v in self.levels))):
            object.__setattr__(self, name, value)


def unet_attn2_lookup(diffusion_model) -> Callable:
    """A SD1.x/SDXL UNet (``input_blocks``/``middle_block``/``output_blocks``) -> ``lookup(block, block_index)``
    returning that transformer block's cross-attention module (``attn2``), or None; cached."""
    cache: dict = {}

    def lookup(block, block_index: int = 0):
        key = (tuple(block), int(block_index))
        if key not in cache:
            kind, number = block[0], int(block[1])
            containers = {"input": lambda: diffusion_model.input_blocks[number],
                          "middle": lambda: diffusion_model.middle_block,
                          "output": lambda: diffusion_model.output_blocks[number]}
            attn = None
            if kind in containers:
                for layer in containers[kind]():
                    blocks = getattr(layer, "transformer_blocks", None)
                    if blocks is not None and block_index < len(blocks):
                        attn = getattr(blocks[block_index], "attn2", None)
                        break
            cache[key] = attn
        return cache[key]

    return lookup


class RunState:
    """Recorder + anchoring state of ONE sampling run (create a new one per run; never share it between runs).

    After the run: ``last_mask`` [B,1,h,w] float32 cpu in [0,1] (1 = background, the last evaluation's mask, None
    if nothing was recorded), ``evaluations`` (post-CFG calls that had recorded maps), ``anchored`` (of those, with
    a non-zero anchoring weight), ``finished`` (set by the caller when the run completed).
    """

    def __init__(self, settings: GreenSettings, attn_lookup: Callable | None = None):
        self.settings = settings
        self.attn_lookup = attn_lookup
        self.maps: list[tuple[torch.Tensor, tuple[int, int]]] = []
        self.last_mask: torch.Tensor | None = None
        self.evaluations = 0
        self.anchored = 0
        self.finished = False

    def add_map(self, reduced: torch.Tensor, hw: Sequence[int]) -> None:
        """reduced: [B,1,h*w,1] the colour word's attention at one block (heads and words averaged), hw: (h, w)."""
        h, w = int(hw[0]), int(hw[1])
        if reduced.ndim != 4 or reduced.shape[1] != 1 or reduced.shape[2] != h * w:
            raise ValueError(f"reduced: expected [B,1,{h * w},1] for a {h}x{w} block, got {tuple(reduced.shape)}")
        self.maps.append((reduced.detach(), (h, w)))

    def record(self, n: torch.Tensor, context: torch.Tensor, block=None, block_index: int = 0,
               cond_or_uncond: Sequence[int] | None = None, activations_shape=None, original_shape=None) -> None:
        """n: [chunks*B, h*w, C] the block's attn2 input, context: [chunks*B, L, D] -> the cond chunks' colour-word
        map appended (nothing if this block/context is not one to record). ``cond_or_uncond``: the chunk order
        (0 = cond, 1 = uncond); ``activations_shape`` [.., h, w] this block, ``original_shape`` [.., H, W] the
        latent."""
        cfg = self.settings
        order = list(cond_or_uncond) if cond_or_uncond else [0]
        if block is None or 0 not in order or context is None or context.ndim != 3 or self.attn_lookup is None:
            return
        length = context.shape[1]
        if length < cfg.cond_len or length % cfg.cond_len != 0:
            return  # a context that is not our prompt's (another cond in the batch)
        if activations_shape is None or original_shape is None:
            return
        h, w = int(activations_shape[-2]), int(activations_shape[-1])
        if h * w != n.shape[1] or round(original_shape[-2] / h) not in cfg.levels:
            return
        chunks = len(order)
        if n.shape[0] % chunks != 0:
            return
        b = n.shape[0] // chunks
        attn = self.attn_lookup(block, int(block_index or 0))
        if attn is None:
            return
        rows = torch.cat([torch.arange(i * b, (i + 1) * b) for i, c in enumerate(order) if c == 0]).to(n.device)
        probs = cross_attention_probs(attn, n.index_select(0, rows), context.index_select(0, rows),
                                      list(cfg.token_ids), cond_len=cfg.cond_len)
        # heads and tokens averaged here already (aggregate_attention would do the same), cond chunks averaged
        reduced = probs.mean(dim=(1, 3)).reshape(-1, b, h * w).mean(0)
        self.add_map(reduced.reshape(b, 1, h * w, 1), (h, w))

    def mask(self, x0: torch.Tensor) -> torch.Tensor | None:
        """x0: [B,C,h,w] -> this evaluation's background mask [B,1,h,w] float32 in [0,1] (1 = background), or None
        when nothing (or a map of another batch size) was recorded; the recorded maps are consumed."""
        cfg = self.settings
        maps, self.maps = self.maps, []
        if not maps:
            return None
        if maps[0][0].shape[0] != x0.shape[0]:
            log.warning("GreenControl: recorded %d maps but x0 has batch %d; not anchoring", maps[0][0].shape[0],
                        x0.shape[0])
            return None
        a_g = aggregate_attention([(m.to(x0.device), hw) for m, hw in maps], tuple(x0.shape[-2:]))
        z = cfg.z_key.to(device=x0.device, dtype=torch.float32)
        return background_mask(a_g, cfg.threshold, cfg.softness, x0=x0, z_green=z, prior_scale=cfg.prior_scale)

    def anchor(self, x0: torch.Tensor, sigma, sample_sigmas) -> torch.Tensor:
        """x0: [B,C,h,w] CFG'd prediction, sigma: [B] or float, sample_sigmas: [N+1] | None -> x0' [B,C,h,w]
        (``x0 + w(sigma) * M * (z_key - x0)``; ``x0`` unchanged when nothing was recorded)."""
        cfg = self.settings
        mask = self.mask(x0)
        if mask is None:
            return x0
        self.last_mask = mask.detach().float().cpu()
        self.evaluations += 1
        sig = sigma if torch.is_tensor(sigma) else torch.tensor([float(sigma)])
        weight = strength_schedule(sig, sample_sigmas, cfg.strength, cfg.end)
        if not bool((weight > 0).any()):
            return x0
        self.anchored += 1
        return anchor_x0(x0, cfg.z_key.to(x0.device), mask, weight.to(x0.device))


class RunLog:
    """Collects the finished :class:`RunState` of every sampling run it was handed to (``runs``, oldest first).

    The ComfyUI layer puts one into a model's options right before sampling with it; the same log object is seen
    by every run of that model (it is not copied per run), so a reader that wants ITS run's state makes its own
    log (GreenControlSampler does) instead of reading a shared model's.
    """

    def __init__(self):
        self.runs: list[RunState] = []

    def append(self, state: RunState) -> None:
        self.runs.append(state)

    @property
    def last(self) -> RunState | None:
        return self.runs[-1] if self.runs else None

    def __len__(self) -> int:
        return len(self.runs)
