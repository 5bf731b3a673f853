"""Exact (non-fused) scaled-dot-product attention used by the fake `flash_attn`
and `xformers` packages in this folder.

This is our own code, written for the golden-fixture generator: the TRELLIS
reference imports flash-attn or xformers for its dense and sparse (variable
length) attention, neither of which runs on CPU. Putting this folder first on
PYTHONPATH makes those imports resolve to the plain-PyTorch maths below.

Maths, per batch element / segment and per head h:
    S = (Q_h @ K_h^T) * scale          scale = 1/sqrt(head_dim) unless given
    P = softmax(S, dim=-1)             (max-subtracted, i.e. torch.softmax)
    O_h = P @ V_h
Nothing is fused, tiled or approximated. Accumulation dtype: float64 for
float64 inputs, float32 for everything else (fp16/bf16 inputs are upcast, the
result is cast back to the input dtype, like the real kernels which
accumulate in fp32).

Only the features TRELLIS uses are implemented; anything else (dropout,
causal masks, sliding windows, ALiBi, returning the probabilities) raises
instead of silently computing something different.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           scale: Optional[float] = None) -> torch.Tensor:
    """Plain attention on one sequence.

    q: [Lq, H, D], k: [Lk, Hk, D], v: [Lk, Hk, Dv]  ->  [Lq, H, Dv]
    H must be a multiple of Hk (Hk < H is multi-/grouped-query attention:
    query head h reads key/value head h // (H // Hk), as in flash-attn).
    The result has q's dtype.
    """
    assert q.dim() == 3 and k.dim() == 3 and v.dim() == 3, (q.shape, k.shape, v.shape)
    lq, h, d = q.shape
    lk, hk, dk = k.shape
    assert dk == d, f"q/k head_dim mismatch: {d} vs {dk}"
    assert v.shape[0] == lk and v.shape[1] == hk, f"k/v shape mismatch: {k.shape} vs {v.shape}"
    assert h % hk == 0, f"num heads {h} not a multiple of kv heads {hk}"
    out_dtype = q.dtype
    acc = _acc_dtype(q)
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    qf = q.to(acc).permute(1, 0, 2)  # [H, Lq, D]
    kf = k.to(acc).permute(1, 0, 2)  # [Hk, Lk, D]
    vf = v.to(acc).permute(1, 0, 2)  # [Hk, Lk, Dv]
    if hk != h:
        rep = h // hk
        kf = kf.repeat_interleave(rep, dim=0)
        vf = vf.repeat_interleave(rep, dim=0)
    s = torch.matmul(qf, kf.transpose(1, 2)) * scale  # [H, Lq, Lk]
    p = torch.softmax(s, dim=-1)
    o = torch.matmul(p, vf)  # [H, Lq, Dv]
    return o.permute(1, 0, 2).to(out_dtype).contiguous()


def attend_batched(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   scale: Optional[float] = None) -> torch.Tensor:
    """q: [B, Lq, H, D], k: [B, Lk, Hk, D], v: [B, Lk, Hk, Dv] -> [B, Lq, H, Dv]."""
    assert q.dim() == 4 and k.dim() == 4 and v.dim() == 4, (q.shape, k.shape, v.shape)
    assert q.shape[0] == k.shape[0] == v.shape[0], "batch size mismatch"
    return torch.stack([attend(q[b], k[b], v[b], scale) for b in range(q.shape[0])], dim=0)


def _offsets(cu: torch.Tensor | Sequence[int]) -> list[int]:
    if isinstance(cu, torch.Tensor):
        assert cu.dim() == 1, f"cu_seqlens must be 1-D, got {tuple(cu.shape)}"
        cu = cu.tolist()
    cu = [int(c) for c in cu]
    assert len(cu) >= 1 and cu[0] == 0, f"cu_seqlens must start at 0: {cu[:4]}"
    assert all(b >= a for a, b in zip(cu, cu[1:])), "cu_seqlens must be non-decreasing"
    return cu


def attend_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  cu_q, cu_k, scale: Optional[float] = None) -> torch.Tensor:
    """Segment-wise attention over packed sequences.

    q: [Tq, H, D], k: [Tk, Hk, D], v: [Tk, Hk, Dv]; segment i is
    q[cu_q[i]:cu_q[i+1]] attending to k/v[cu_k[i]:cu_k[i+1]].
    Returns [Tq, H, Dv]. Rows of q past cu_q[-1] (flash-attn leaves them
    undefined) are set to zero.
    """
    oq, ok = _offsets(cu_q), _offsets(cu_k)
    assert len(oq) == len(ok), f"{len(oq) - 1} query segments vs {len(ok) - 1} key segments"
    assert oq[-1] <= q.shape[0] and ok[-1] <= k.shape[0] and ok[-1] <= v.shape[0]
    out = q.new_zeros((q.shape[0], q.shape[1], v.shape[2]))
    for i in range(len(oq) - 1):
        qs, qe, ks, ke = oq[i], oq[i + 1], ok[i], ok[i + 1]
        if qe == qs:
            continue
        if ke == ks:
            # Softmax over an empty set: flash-attn returns zeros here.
            continue
        out[qs:qe] = attend(q[qs:qe], k[ks:ke], v[ks:ke], scale)
    return out


def check_unsupported(dropout_p: float = 0.0, causal: bool = False,
                      window_size=(-1, -1), alibi_slopes=None,
                      return_attn_probs: bool = False, softcap: float = 0.0) -> None:
    """Refuse flash-attn features this shim does not model."""
    if dropout_p:
        raise NotImplementedError("attention shim: dropout_p != 0 is not supported")
    if causal:
        raise NotImplementedError("attention shim: causal=True is not supported")
    if window_size is not None and tuple(window_size) != (-1, -1):
        raise NotImplementedError("attention shim: sliding window is not supported")
    if alibi_slopes is not None:
        raise NotImplementedError("attention shim: alibi_slopes is not supported")
    if return_attn_probs:
        raise NotImplementedError("attention shim: return_attn_probs is not supported")
    if softcap:
        raise NotImplementedError("attention shim: softcap is not supported")
