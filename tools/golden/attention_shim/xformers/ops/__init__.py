"""`xformers.ops` stand-in: memory_efficient_attention (+ the `fmha` submodule).

Layout as in xformers: query [B, Mq, H, K], key [B, Mk, H, K], value [B, Mk, H, Kv]
(3-D [B, M, K] inputs are treated as one head). attn_bias may be None or a
fmha.BlockDiagonalMask (then B must be 1 and the sequences are packed along M).
scale defaults to 1/sqrt(K).
"""
from __future__ import annotations

from typing import Optional

import torch

from _recon_attn_core import attend_batched, attend_varlen
from . import fmha
from .fmha import BlockDiagonalMask

__all__ = ["memory_efficient_attention", "fmha"]


def memory_efficient_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                               attn_bias=None, p: float = 0.0, scale: Optional[float] = None,
                               *, op=None, output_dtype=None) -> torch.Tensor:
    if p:
        raise NotImplementedError("attention shim: dropout p != 0 is not supported")
    if output_dtype is not None:
        raise NotImplementedError("attention shim: output_dtype is not supported")
    squeeze_heads = query.dim() == 3
    if squeeze_heads:
        query, key, value = query.unsqueeze(2), key.unsqueeze(2), value.unsqueeze(2)
    if attn_bias is None:
        out = attend_batched(query, key, value, scale)
    elif isinstance(attn_bias, BlockDiagonalMask):
        assert query.shape[0] == 1 and key.shape[0] == 1 and value.shape[0] == 1, \
            "BlockDiagonalMask needs batch size 1 (packed sequences)"
        assert attn_bias.q_offsets[-1] == query.shape[1], "mask/query length mismatch"
        assert attn_bias.kv_offsets[-1] == key.shape[1], "mask/key length mismatch"
        out = attend_varlen(query[0], key[0], value[0],
                            attn_bias.q_offsets, attn_bias.kv_offsets, scale).unsqueeze(0)
    else:
        raise NotImplementedError(f"attention shim: attn_bias of type {type(attn_bias).__name__}")
    return out.squeeze(2) if squeeze_heads else out
