"""Cross-attention probabilities of chosen prompt tokens, recomputed from a block's own projections.

ComfyUI (and most attention kernels) never materialise the attention probabilities, so the green-token map is
recomputed here as ``softmax(to_q(hidden) @ to_k(context)^T / sqrt(d_head))`` in float32, and only the columns
of the requested tokens are kept. The trainer records its maps with this same function.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["cross_attention_probs", "expand_token_ids"]


def expand_token_ids(token_ids: Sequence[int], context_len: int, cond_len: int) -> list[list[int]]:
    """Token positions of a ``cond_len`` prompt inside a context repeated to ``context_len`` -> one group per token.

    ComfyUI batches conds of different lengths by repeating each context to a common multiple of 77 tokens;
    each repeat holds a copy of every key, so a token's attention mass is split over its copies
    ``t + j * cond_len`` (which :func:`cross_attention_probs` sums back when given ``cond_len``).
    """
    if cond_len <= 0 or context_len % cond_len != 0:
        raise ValueError(f"context_len: expected a multiple of cond_len={cond_len}, got {context_len}")
    return [[t + j * cond_len for j in range(context_len // cond_len)] for t in token_ids]


def cross_attention_probs(
    attn: torch.nn.Module,
    hidden: torch.Tensor,
    context: torch.Tensor,
    token_ids: Sequence[int],
    *,
    cond_len: int | None = None,
) -> torch.Tensor:
    """hidden: [B,HW,C], context: [B,L,D], token_ids: T positions in [0, L) -> probs: [B,heads,HW,T] float32 in [0,1].

    ``attn`` is a cross-attention module with ``to_q``, ``to_k`` and ``heads`` (ComfyUI's ``CrossAttention``,
    diffusers' ``Attention``). The softmax runs over all ``L`` keys in float32, whatever the module's dtype.
    If ``cond_len`` is given and ``L`` is a multiple of it (a context repeated to batch with a longer one), the
    probabilities of every copy ``t + j * cond_len`` of each token are summed, so the result does not depend on
    how the context was padded. Gradients flow through (the trainer uses this in its attention loss).
    """
    if hidden.ndim != 3 or context.ndim != 3:
        raise ValueError(
            f"hidden/context: expected [B,HW,C] and [B,L,D], got {tuple(hidden.shape)} and {tuple(context.shape)}"
        )
    if hidden.shape[0] != context.shape[0]:
        raise ValueError(f"context: batch {context.shape[0]} does not match hidden batch {hidden.shape[0]}")
    token_ids = [int(t) for t in token_ids]
    if not token_ids:
        raise ValueError("token_ids: expected at least one token position, got none")
    length = context.shape[1]
    groups: list[list[int]]
    if cond_len is not None and cond_len < length:
        if length % cond_len != 0:
            raise ValueError(f"cond_len: context length {length} is not a multiple of cond_len={cond_len}")
        bad = [t for t in token_ids if not 0 <= t < cond_len]
        if bad:
            raise ValueError(f"token_ids: positions {bad} are outside the prompt of {cond_len} tokens")
        groups = expand_token_ids(token_ids, length, cond_len)
    else:
        bad = [t for t in token_ids if not 0 <= t < length]
        if bad:
            raise ValueError(f"token_ids: positions {bad} are outside the context of {length} tokens")
        groups = [[t] for t in token_ids]

    heads = int(attn.heads)
    q = attn.to_q(hidden)
    k = attn.to_k(context)
    b, hw, inner = q.shape
    if inner % heads != 0:
        raise ValueError(f"attn: inner dim {inner} is not divisible by heads={heads}")
    dh = inner // heads
    q = q.reshape(b, hw, heads, dh).transpose(1, 2).float()  # [B,h,HW,dh]
    k = k.reshape(b, length, heads, dh).transpose(1, 2).float()  # [B,h,L,dh]
    logits = torch.matmul(q, k.transpose(-1, -2)) * (dh**-0.5)  # [B,h,HW,L]
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    flat = [t for g in groups for t in g]
    idx = torch.tensor(flat, device=logits.device, dtype=torch.long)
    probs = torch.exp(logits.index_select(-1, idx) - lse)  # [B,h,HW,sum(len(g))]
    copies = len(groups[0])
    if copies > 1:
        probs = probs.reshape(b, heads, hw, len(groups), copies).sum(-1)
    return probs
