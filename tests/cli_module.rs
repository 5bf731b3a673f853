//! `recon module` reproduces the golden numbers from the command line: the same checkpoint,
//! inputs and reference outputs as tests/golden_modules.rs, through the CLI binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{golden_dir, harness_cases, read_tensors, rel_l2, REL_L2_TOLERANCE};

/// The single checkpoint stem of a module case: `ckpts/<stem>.json`.
fn checkpoint_stem(case: &Path) -> PathBuf {
    let mut stems: Vec<PathBuf> = std::fs::read_dir(case.join("ckpts"))
        .unwrap_or_else(|e| panic!("{}: {e}", case.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| p.with_extension(""))
        .collect();
    assert_eq!(
        stems.len(),
        1,
        "{}: expected one checkpoint json",
        case.display()
    );
    stems.remove(0)
}

/// Every single-network golden case (SS decoder, SS flow, DINOv2, …) through `recon module`.
#[test]
fn module_runner_reproduces_every_golden_module_output() {
    for case in harness_cases("module") {
        let out_dir = tempfile::tempdir().unwrap();
        let output = out_dir.path().join("out.safetensors");
        let status = Command::new(env!("CARGO_BIN_EXE_recon"))
            .args(["module", "--device", "cpu", "--ckpt"])
            .arg(checkpoint_stem(&case))
            .arg("--input")
            .arg(case.join("inputs.safetensors"))
            .arg("--output")
            .arg(&output)
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}: {}",
            case.display(),
            String::from_utf8_lossy(&status.stderr)
        );
        let ours = read_tensors(&output);
        let expected = read_tensors(&case.join("outputs.safetensors"));
        let mut compared = 0;
        for (name, reference) in expected.iter().filter(|(n, _)| !n.starts_with("debug.")) {
            let (rel, max_abs) = rel_l2(&ours[name], reference);
            println!(
                "recon module {}: {name} rel_l2 {rel:.3e} max_abs {max_abs:.3e}",
                case.display()
            );
            assert!(rel <= REL_L2_TOLERANCE, "{}: {name}", case.display());
            compared += 1;
        }
        assert!(compared > 0, "{}: nothing compared", case.display());
    }
}

#[test]
fn module_runner_names_a_missing_input_tensor() {
    let case = golden_dir().join("ss_dec_fp16layout");
    let out_dir = tempfile::tempdir().unwrap();
    // The checkpoint itself is a valid safetensors file without an 'x' tensor.
    let status = Command::new(env!("CARGO_BIN_EXE_recon"))
        .args(["module", "--device", "cpu", "--ckpt"])
        .arg(case.join("ckpts/ss_dec"))
        .arg("--input")
        .arg(case.join("ckpts/ss_dec.safetensors"))
        .arg("--output")
        .arg(out_dir.path().join("out.safetensors"))
        .output()
        .unwrap();
    assert!(!status.status.success());
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(stderr.contains("input tensor 'x' is missing"), "{stderr}");
    assert!(!out_dir.path().join("out.safetensors").exists());
}
