"""`xformers.ops.fmha` stand-in: BlockDiagonalMask (variable-length segments)."""
from __future__ import annotations

from typing import Optional, Sequence


class BlockDiagonalMask:
    """Block-diagonal attention bias over packed sequences.

    Query segment i (rows q_offsets[i]:q_offsets[i+1] of the packed query) attends
    only to key segment i. Built, as in xformers, with
    `BlockDiagonalMask.from_seqlens(q_seqlen, kv_seqlen=None)`; kv_seqlen defaults
    to q_seqlen (self-attention).
    """

    def __init__(self, q_seqlen: Sequence[int], kv_seqlen: Sequence[int]):
        assert len(q_seqlen) == len(kv_seqlen), "q and kv must have the same number of segments"
        self.q_seqlen = [int(s) for s in q_seqlen]
        self.kv_seqlen = [int(s) for s in kv_seqlen]
        self.q_offsets = self._cumsum(self.q_seqlen)
        self.kv_offsets = self._cumsum(self.kv_seqlen)

    @staticmethod
    def _cumsum(lens):
        out = [0]
        for n in lens:
            assert n >= 0, "negative segment length"
            out.append(out[-1] + n)
        return out

    @classmethod
    def from_seqlens(cls, q_seqlen: Sequence[int],
                     kv_seqlen: Optional[Sequence[int]] = None) -> "BlockDiagonalMask":
        return cls(q_seqlen, q_seqlen if kv_seqlen is None else kv_seqlen)

    def __repr__(self) -> str:
        return f"BlockDiagonalMask(q_seqlen={self.q_seqlen}, kv_seqlen={self.kv_seqlen})"
