"""CPU stand-in for the `flash_attn` package (flash-attn 2.x call conventions).

Only for the golden-fixture generator (tools/golden); see
../_recon_attn_core.py for the maths. Layouts follow flash-attn 2:

  flash_attn_func(q, k, v)                   q [B, Lq, H, D], k/v [B, Lk, Hk, D(v)]
  flash_attn_qkvpacked_func(qkv)             qkv [B, L, 3, H, D]
  flash_attn_kvpacked_func(q, kv)            q [B, Lq, H, D], kv [B, Lk, 2, Hk, D]
  flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k)
                                             q [Tq, H, D], k/v [Tk, Hk, D(v)]
  flash_attn_varlen_qkvpacked_func(qkv, cu, max)          qkv [T, 3, H, D]
  flash_attn_varlen_kvpacked_func(q, kv, cu_q, cu_k, max_q, max_k)
                                             q [Tq, H, D], kv [Tk, 2, Hk, D]

softmax_scale defaults to 1/sqrt(D). Outputs have q's layout (with Dv as the
last dim) and dtype.
"""
from __future__ import annotations

from typing import Optional

import torch

from _recon_attn_core import attend_batched, attend_varlen, check_unsupported, _offsets

__version__ = "2.0.0+recon.cpu.shim"
IS_RECON_SHIM = True

__all__ = [
    "flash_attn_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_kvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_varlen_kvpacked_func",
]


def _check_max(cu, max_seqlen: int, what: str) -> None:
    # The real kernel sizes its launch grid from max_seqlen; a value smaller
    # than the longest segment would silently drop rows, so insist on it.
    off = _offsets(cu)
    longest = max((b - a for a, b in zip(off, off[1:])), default=0)
    if int(max_seqlen) < longest:
        raise ValueError(f"{what}={max_seqlen} is smaller than the longest segment ({longest})")


def flash_attn_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    dropout_p: float = 0.0, softmax_scale: Optional[float] = None,
                    causal: bool = False, window_size=(-1, -1), softcap: float = 0.0,
                    alibi_slopes=None, deterministic: bool = False,
                    return_attn_probs: bool = False) -> torch.Tensor:
    check_unsupported(dropout_p, causal, window_size, alibi_slopes, return_attn_probs, softcap)
    return attend_batched(q, k, v, softmax_scale)


def flash_attn_qkvpacked_func(qkv: torch.Tensor, dropout_p: float = 0.0,
                              softmax_scale: Optional[float] = None, causal: bool = False,
                              window_size=(-1, -1), softcap: float = 0.0, alibi_slopes=None,
                              deterministic: bool = False,
                              return_attn_probs: bool = False) -> torch.Tensor:
    check_unsupported(dropout_p, causal, window_size, alibi_slopes, return_attn_probs, softcap)
    assert qkv.dim() == 5 and qkv.shape[2] == 3, f"qkv must be [B, L, 3, H, D], got {tuple(qkv.shape)}"
    q, k, v = qkv.unbind(dim=2)
    return attend_batched(q, k, v, softmax_scale)


def flash_attn_kvpacked_func(q: torch.Tensor, kv: torch.Tensor, dropout_p: float = 0.0,
                             softmax_scale: Optional[float] = None, causal: bool = False,
                             window_size=(-1, -1), softcap: float = 0.0, alibi_slopes=None,
                             deterministic: bool = False,
                             return_attn_probs: bool = False) -> torch.Tensor:
    check_unsupported(dropout_p, causal, window_size, alibi_slopes, return_attn_probs, softcap)
    assert kv.dim() == 5 and kv.shape[2] == 2, f"kv must be [B, L, 2, H, D], got {tuple(kv.shape)}"
    k, v = kv.unbind(dim=2)
    return attend_batched(q, k, v, softmax_scale)


def flash_attn_varlen_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                           max_seqlen_q: int, max_seqlen_k: int, dropout_p: float = 0.0,
                           softmax_scale: Optional[float] = None, causal: bool = False,
                           window_size=(-1, -1), softcap: float = 0.0, alibi_slopes=None,
                           deterministic: bool = False, return_attn_probs: bool = False,
                           block_table=None) -> torch.Tensor:
    check_unsupported(dropout_p, causal, window_size, alibi_slopes, return_attn_probs, softcap)
    if block_table is not None:
        raise NotImplementedError("attention shim: paged KV (block_table) is not supported")
    _check_max(cu_seqlens_q, max_seqlen_q, "max_seqlen_q")
    _check_max(cu_seqlens_k, max_seqlen_k, "max_seqlen_k")
    return attend_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale)


def flash_attn_varlen_qkvpacked_func(qkv: torch.Tensor, cu_seqlens: torch.Tensor,
                                     max_seqlen: int, dropout_p: float = 0.0,
                                     softmax_scale: Optional[float] = None,
                                     causal: bool = False, window_size=(-1, -1),
                                     softcap: float = 0.0, alibi_slopes=None,
                                     deterministic: bool = False,
                                     return_attn_probs: bool = False) -> torch.Tensor:
    check_unsupported(dropout_p, causal, window_size, alibi_slopes, return_attn_probs, softcap)
    assert qkv.dim() == 4 and qkv.shape[1] == 3, f"qkv must be [T, 3, H, D], got {tuple(qkv.shape)}"
    _check_max(cu_seqlens, max_seqlen, "max_seqlen")
    q, k, v = qkv.unbind(dim=1)
    return attend_varlen(q, k, v, cu_seqlens, cu_seqlens, softmax_scale)


def flash_attn_varlen_kvpacked_func(q: torch.Tensor, kv: torch.Tensor,
                                    cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                                    max_seqlen_q: int, max_seqlen_k: int,
                                    dropout_p: float = 0.0,
                                    softmax_scale: Optional[float] = None,
                                    causal: bool = False, window_size=(-1, -1),
                                    softcap: float = 0.0, alibi_slopes=None,
                                    deterministic: bool = False,
                                    return_attn_probs: bool = False) -> torch.Tensor:
    check_unsupported(dropout_p, causal, window_size, alibi_slopes, return_attn_probs, softcap)
    assert kv.dim() == 4 and kv.shape[1] == 2, f"kv must be [T, 2, H, D], got {tuple(kv.shape)}"
    _check_max(cu_seqlens_q, max_seqlen_q, "max_seqlen_q")
    _check_max(cu_seqlens_k, max_seqlen_k, "max_seqlen_k")
    k, v = kv.unbind(dim=1)
    return attend_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale)
