//! Arbitrary bytes as `pipeline.json` and as a checkpoint's `<stem>.json`: parsing must end in
//! a value or an error naming the file, never a panic. Accepted model stems must stay inside
//! the model directory (pipeline.json comes from the network).
#![no_main]

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use recon::hub::{read_checkpoint_config, PipelineConfig};

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"));
        dir.path().join("pipeline.json")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    std::fs::write(path, data).expect("write scratch file");
    let from_file = PipelineConfig::read(path);
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let from_value = PipelineConfig::from_json(&value, path);
        assert_eq!(from_file.is_ok(), from_value.is_ok());
    }
    if let Ok(config) = from_file {
        assert!(!config.models.is_empty());
        for stem in config.models.values() {
            let inside = Path::new(stem)
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
            assert!(inside, "stem {stem:?} escapes the model directory");
        }
    }
    let _ = read_checkpoint_config(path);
});
