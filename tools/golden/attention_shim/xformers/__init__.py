"""CPU stand-in for the `xformers` package: only `xformers.ops.memory_efficient_attention`
and `xformers.ops.fmha.BlockDiagonalMask`, the symbols TRELLIS uses. Golden-fixture
generator only (tools/golden); see ../_recon_attn_core.py for the maths."""
__version__ = "0.0.0+recon.cpu.shim"
IS_RECON_SHIM = True
