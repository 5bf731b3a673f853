//! `recon module` reproduces the golden numbers from the command line: the same checkpoint,
//! inputs and reference outputs as tests/golden_modules.rs, through the CLI binary.

mod common;

use std::process::Command;

use common::{golden_dir, rel_l2, REL_L2_TOLERANCE};
use recon::weights::SafeTensorsFile;

fn tensor(path: &std::path::Path, name: &str) -> tch::Tensor {
    SafeTensorsFile::open(path).unwrap().read(name).unwrap()
}

#[test]
fn module_runner_reproduces_the_ss_decoder_golden_output() {
    let case = golden_dir().join("ss_dec_fp16layout");
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("out.safetensors");
    let status = Command::new(env!("CARGO_BIN_EXE_recon"))
        .args(["module", "--device", "cpu", "--ckpt"])
        .arg(case.join("ckpts/ss_dec"))
        .arg("--input")
        .arg(case.join("inputs.safetensors"))
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(stdout.contains("logits"), "{stdout}");
    let (rel, max_abs) = rel_l2(
        &tensor(&output, "logits"),
        &tensor(&case.join("outputs.safetensors"), "logits"),
    );
    println!("recon module: logits rel_l2 {rel:.3e} max_abs {max_abs:.3e}");
    assert!(rel <= REL_L2_TOLERANCE);
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
