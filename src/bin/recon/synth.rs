//! `recon synth`: a full-size model directory with seeded random weights in a published
//! pipeline's checkpoint layout, for machines without the published weights (see
//! `recon::synth`).

use std::path::PathBuf;

use recon::synth::{synthesize, SynthOptions, SynthPipeline};
use recon::Result;

use crate::args::{Args, Spec};

pub const SPEC: Spec = Spec {
    command: "synth",
    values: &["--pipeline", "--out", "--seed", "--hf-home"],
    switches: &["--verbose"],
    aliases: &[("-o", "--out")],
    positionals: false,
};

pub const USAGE: &str = "usage: recon synth --pipeline trellis-image-large|trellis-vggt --out DIR \
[--seed N] [--hf-home DIR]

Writes a model directory with random weights (seeded, reproducible) in the published checkpoint
layout of microsoft/TRELLIS-image-large or Stable-X/trellis-vggt-v0-2, full size: DIR/pipeline.json,
DIR/ckpts/*, and a Hugging Face cache with the repos the loader fetches by name (DINOv2, and VGGT
for trellis-vggt). The outputs of such a model are meaningless; its loading, memory and run time
are the published model's. Needs 4.2 GB (trellis-image-large) or 9.2 GB (trellis-vggt) of disk.

  --pipeline P     trellis-image-large or trellis-vggt
  --out DIR        the model directory (created; existing files are replaced)
  --seed N         the weights' seed (default 0)
  --hf-home DIR    where the Hub cache goes (default DIR/hf)
  --verbose        debug messages

Then: HF_HOME=<hf-home> HF_HUB_OFFLINE=1 recon generate --model DIR IMAGE -o OUT.glb";

pub fn synth(args: &Args) -> Result<()> {
    let pipeline = SynthPipeline::parse(args.one("--pipeline")?)?;
    let log = crate::log_sink(args.switch("--verbose"));
    let options = SynthOptions {
        pipeline,
        out: PathBuf::from(args.one("--out")?),
        seed: args
            .number::<u64>("--seed", "a non-negative integer")?
            .unwrap_or(0),
        hf_home: args.optional("--hf-home")?.map(PathBuf::from),
        log: log.as_ref(),
    };
    let report = synthesize(&options)?;
    println!(
        "{} ({}): {} weight files, {:.2} GB, in {:.1} s; SS decoder occupancy {:.2}% (final bias \
         {:.4})",
        pipeline.name(),
        pipeline.published_repo(),
        report.files.len(),
        report.total_bytes() as f64 / 1e9,
        report.seconds,
        100.0 * report.occupancy,
        report.ss_decoder_bias
    );
    for file in &report.files {
        println!(
            "  {:>9.1} MB  {:>5} tensors  {}",
            file.bytes as f64 / 1e6,
            file.tensors,
            file.path.display()
        );
    }
    println!(
        "load with: HF_HOME={} HF_HUB_OFFLINE=1 recon info --model {}",
        report.hf_home.display(),
        options.out.display()
    );
    Ok(())
}
