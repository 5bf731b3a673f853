"""Self-test of the CPU attention shim (tools/golden/attention_shim).

Run:  tools/golden/.venv/bin/python tools/golden/test_shim.py

Every shim entry point is compared with a naive float64 reference that loops
over batch elements / packed segments and heads and writes the softmax out
by hand. Then TRELLIS's own attention entry points (dense, sparse varlen,
sparse windowed) are run through the shim and checked the same way, which
proves the shim matches the call conventions the reference actually uses.
Exits non-zero on the first failure.
"""
import reference_env  # noqa: F401  (must come before torch: threads, env, shim path)

import math
import sys

import torch

import flash_attn
import xformers.ops as xops

assert getattr(flash_attn, "IS_RECON_SHIM", False), "flash_attn does not resolve to the shim"

G = torch.Generator().manual_seed(1234)


def rand(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=G, dtype=torch.float64).to(dtype)


def naive_one(q, k, v, scale=None):
    """q [Lq,H,D], k [Lk,H,D], v [Lk,H,Dv] -> [Lq,H,Dv] in float64, by hand."""
    q, k, v = q.double(), k.double(), v.double()
    lq, h, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.zeros(lq, h, v.shape[2], dtype=torch.float64)
    for hh in range(h):
        s = (q[:, hh, :] @ k[:, hh, :].T) * scale          # [Lq, Lk]
        s = s - s.max(dim=1, keepdim=True).values
        e = torch.exp(s)
        p = e / e.sum(dim=1, keepdim=True)
        out[:, hh, :] = p @ v[:, hh, :]
    return out


def naive_batched(q, k, v, scale=None):
    return torch.stack([naive_one(q[b], k[b], v[b], scale) for b in range(q.shape[0])])


def naive_segments(q, k, v, q_lens, k_lens, scale=None):
    out = torch.zeros(q.shape[0], q.shape[1], v.shape[2], dtype=torch.float64)
    qo = ko = 0
    for lq, lk in zip(q_lens, k_lens):
        if lq and lk:
            out[qo:qo + lq] = naive_one(q[qo:qo + lq], k[ko:ko + lk], v[ko:ko + lk], scale)
        qo += lq
        ko += lk
    return out


def cu(lens):
    return torch.tensor([0] + list(torch.tensor(lens).cumsum(0).tolist()), dtype=torch.int32)


def check(name, got, want, dtype=torch.float32, tol=None):
    assert got.dtype == dtype, f"{name}: dtype {got.dtype} != {dtype}"
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    tol = tol if tol is not None else {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3}[dtype]
    err = (got.double() - want).norm() / want.norm().clamp_min(1e-30)
    mx = (got.double() - want).abs().max().item()
    status = "ok" if err <= tol else "FAIL"
    print(f"  {status:4} {name:55s} rel_l2={err:.2e} max_abs={mx:.2e}")
    if err > tol:
        raise AssertionError(f"{name}: rel L2 {err:.3e} > {tol:.1e}")


def expect_raise(name, fn, exc):
    try:
        fn()
    except exc:
        print(f"  ok   {name} raises {exc.__name__}")
        return
    raise AssertionError(f"{name}: expected {exc.__name__}")


def test_flash_dense():
    print("flash_attn dense entry points")
    for dtype in (torch.float64, torch.float32, torch.float16):
        q, k, v = rand(2, 5, 3, 8, dtype=dtype), rand(2, 7, 3, 8, dtype=dtype), rand(2, 7, 3, 6, dtype=dtype)
        check(f"flash_attn_func {dtype}", flash_attn.flash_attn_func(q, k, v), naive_batched(q, k, v), dtype)
        qkv = rand(2, 9, 3, 2, 16, dtype=dtype)
        check(f"flash_attn_qkvpacked_func {dtype}", flash_attn.flash_attn_qkvpacked_func(qkv),
              naive_batched(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]), dtype)
        q, kv = rand(3, 4, 2, 8, dtype=dtype), rand(3, 11, 2, 2, 8, dtype=dtype)
        check(f"flash_attn_kvpacked_func {dtype}", flash_attn.flash_attn_kvpacked_func(q, kv),
              naive_batched(q, kv[:, :, 0], kv[:, :, 1]), dtype)
    q, k, v = rand(2, 5, 3, 8), rand(2, 7, 3, 8), rand(2, 7, 3, 8)
    check("flash_attn_func softmax_scale=0.3",
          flash_attn.flash_attn_func(q, k, v, softmax_scale=0.3), naive_batched(q, k, v, 0.3))
    # Grouped-query attention: 4 query heads share 2 kv heads (h -> h // 2).
    q, k, v = rand(1, 5, 4, 8), rand(1, 6, 2, 8), rand(1, 6, 2, 8)
    check("flash_attn_func GQA 4q/2kv heads", flash_attn.flash_attn_func(q, k, v),
          naive_batched(q, k.repeat_interleave(2, 2), v.repeat_interleave(2, 2)))
    expect_raise("causal=True", lambda: flash_attn.flash_attn_func(q, k, v, causal=True), NotImplementedError)
    expect_raise("dropout_p=0.1", lambda: flash_attn.flash_attn_func(q, k, v, dropout_p=0.1), NotImplementedError)


def test_flash_varlen():
    print("flash_attn varlen entry points")
    for dtype in (torch.float64, torch.float32, torch.float16):
        lens = [4, 1, 0, 9, 6]  # includes a length-1 and an empty segment
        qkv = rand(sum(lens), 3, 2, 8, dtype=dtype)
        got = flash_attn.flash_attn_varlen_qkvpacked_func(qkv, cu(lens), max(lens))
        check(f"flash_attn_varlen_qkvpacked_func {dtype}", got,
              naive_segments(qkv[:, 0], qkv[:, 1], qkv[:, 2], lens, lens), dtype)
        q_lens, k_lens = [3, 5, 2], [7, 7, 7]  # cross-attention to fixed-length context
        q, kv = rand(sum(q_lens), 2, 8, dtype=dtype), rand(sum(k_lens), 2, 2, 8, dtype=dtype)
        got = flash_attn.flash_attn_varlen_kvpacked_func(q, kv, cu(q_lens), cu(k_lens), max(q_lens), max(k_lens))
        check(f"flash_attn_varlen_kvpacked_func {dtype}", got,
              naive_segments(q, kv[:, 0], kv[:, 1], q_lens, k_lens), dtype)
        q_lens, k_lens = [6, 2], [3, 10]
        q, k, v = rand(8, 3, 8, dtype=dtype), rand(13, 3, 8, dtype=dtype), rand(13, 3, 5, dtype=dtype)
        got = flash_attn.flash_attn_varlen_func(q, k, v, cu(q_lens), cu(k_lens), 6, 10)
        check(f"flash_attn_varlen_func {dtype}", got, naive_segments(q, k, v, q_lens, k_lens), dtype)
    expect_raise("max_seqlen too small",
                 lambda: flash_attn.flash_attn_varlen_qkvpacked_func(rand(10, 3, 1, 4), cu([4, 6]), 5), ValueError)


def test_xformers():
    print("xformers.ops entry points")
    q, k, v = rand(2, 5, 3, 8), rand(2, 7, 3, 8), rand(2, 7, 3, 8)
    check("memory_efficient_attention (no mask)", xops.memory_efficient_attention(q, k, v), naive_batched(q, k, v))
    check("memory_efficient_attention scale=0.5",
          xops.memory_efficient_attention(q, k, v, scale=0.5), naive_batched(q, k, v, 0.5))
    lens = [3, 8, 1, 5]
    q, k, v = rand(1, 17, 2, 8), rand(1, 17, 2, 8), rand(1, 17, 2, 8)
    mask = xops.fmha.BlockDiagonalMask.from_seqlens(lens)
    check("memory_efficient_attention BlockDiagonalMask(q)", xops.memory_efficient_attention(q, k, v, mask)[0],
          naive_segments(q[0], k[0], v[0], lens, lens))
    q_lens, k_lens = [4, 2], [7, 7]
    q, k, v = rand(1, 6, 2, 8), rand(1, 14, 2, 8), rand(1, 14, 2, 8)
    mask = xops.fmha.BlockDiagonalMask.from_seqlens(q_lens, k_lens)
    check("memory_efficient_attention BlockDiagonalMask(q,kv)", xops.memory_efficient_attention(q, k, v, mask)[0],
          naive_segments(q[0], k[0], v[0], q_lens, k_lens))


def test_trellis_entry_points():
    """TRELLIS's own attention functions, running on the shim."""
    print("TRELLIS attention entry points (through the shim)")
    reference_env.import_trellis()
    from trellis.modules.attention import scaled_dot_product_attention as dense_sdpa
    from trellis.modules import sparse as sp

    # Dense: qkv, (q, kv) and (q, k, v) forms.
    qkv = rand(2, 10, 3, 4, 16)
    check("dense sdpa(qkv)", dense_sdpa(qkv), naive_batched(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]))
    q, kv = rand(2, 10, 4, 16), rand(2, 6, 2, 4, 16)
    check("dense sdpa(q, kv)", dense_sdpa(q, kv), naive_batched(q, kv[:, :, 0], kv[:, :, 1]))

    # Sparse tensor with two batch elements of different lengths (5 and 9).
    lens = [5, 9]
    coords = torch.cat([
        torch.cat([torch.full((n, 1), b, dtype=torch.int32),
                   torch.randint(0, 12, (n, 3), generator=G, dtype=torch.int32)], dim=1)
        for b, n in enumerate(lens)])
    feats = rand(sum(lens), 3, 2, 8)
    s_qkv = sp.SparseTensor(feats, coords)
    got = sp.sparse_scaled_dot_product_attention(s_qkv).feats
    check("sparse sdpa(qkv) varlen", got, naive_segments(feats[:, 0], feats[:, 1], feats[:, 2], lens, lens))

    # Sparse query, dense context (the SLat flow model's cross-attention form).
    qf = rand(sum(lens), 2, 8)
    ctx = rand(2, 7, 2, 2, 8)
    got = sp.sparse_scaled_dot_product_attention(sp.SparseTensor(qf, coords), ctx).feats
    want = naive_segments(qf, ctx[:, :, 0].reshape(14, 2, 8), ctx[:, :, 1].reshape(14, 2, 8), lens, [7, 7])
    check("sparse sdpa(q sparse, kv dense)", got, want)

    # Windowed self-attention (SLat decoders): tokens in the same
    # (batch, coord // window) cell attend to each other only.
    window = 4
    got = sp.sparse_windowed_scaled_dot_product_self_attention(s_qkv, window).feats
    cell = [tuple([int(c[0])] + [int(x) // window for x in c[1:]]) for c in coords]
    want = torch.zeros(sum(lens), 2, 8, dtype=torch.float64)
    for key in set(cell):
        idx = torch.tensor([i for i, c in enumerate(cell) if c == key])
        want[idx] = naive_one(feats[idx, 0], feats[idx, 1], feats[idx, 2])
    check("sparse windowed attention (window 4)", got, want)


def main():
    tests = [test_flash_dense, test_flash_varlen, test_xformers, test_trellis_entry_points]
    for t in tests:
        t()
    print("all attention-shim checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
