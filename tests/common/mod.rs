//! Helpers shared by the integration tests: fixture locations and numerical comparison.
#![allow(dead_code)]

use std::path::PathBuf;

use tch::{Kind, Tensor};

/// Our golden fixtures (tests/fixtures/golden), overridable with RECON_GOLDEN_DIR.
pub fn golden_dir() -> PathBuf {
    std::env::var_os("RECON_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden"))
}

/// The team's shared golden data (../shared/golden), overridable with RECON_SHARED_GOLDEN_DIR.
pub fn shared_golden_dir() -> PathBuf {
    std::env::var_os("RECON_SHARED_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden"))
}

pub fn fixture_model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model_tiny")
}

/// ‖ours − ref‖ / ‖ref‖ and max |ours − ref|, in f64.
pub fn rel_l2(ours: &Tensor, reference: &Tensor) -> (f64, f64) {
    assert_eq!(ours.size(), reference.size(), "shape mismatch");
    let a = ours.to_kind(Kind::Double);
    let b = reference.to_kind(Kind::Double);
    let diff = &a - &b;
    let num = f64::try_from(diff.norm()).unwrap();
    let den = f64::try_from(b.norm()).unwrap();
    let max_abs = f64::try_from(diff.abs().max()).unwrap();
    (num / den.max(f64::MIN_POSITIVE), max_abs)
}

/// The parity tolerance of DESIGN.md §5 for fp32 on CPU.
pub const REL_L2_TOLERANCE: f64 = 1e-4;
