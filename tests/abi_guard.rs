//! The C ABI's guard: `include/recon.h`, the crate and the built `librecon.so` must agree.
//!
//! * `RECON_ABI_VERSION` in the header equals the crate's constant and what
//!   `recon_abi_version()` returns; `recon_version_string()` is Cargo.toml's version, and so are
//!   the header's `RECON_VERSION_*` macros when it defines them.
//! * Every `recon_*` function the header declares is exported by `librecon.so`, and every
//!   `recon_*` symbol the library exports is declared in the header: a function added to
//!   `src/ffi` without `make header`, or a header entry whose function was removed or renamed,
//!   fails here rather than at a user's link or `dlsym`.
//!
//! The library is the cdylib cargo compiled with this test (`target/<profile>/deps/librecon.so`,
//! falling back to `target/<profile>/librecon.so`), or `RECON_LIBRARY` when set. Its exports are read with
//! `nm -D --defined-only` (binutils, present wherever the crate links).

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::process::Command;

fn header_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/recon.h");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The header without its comments, so that names quoted in documentation do not count.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let line = rest.find("//");
        let block = rest.find("/*");
        match (line, block) {
            (Some(l), b) if b.is_none_or(|b| l < b) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].find('\n').map_or("", |n| &rest[l + n..]);
            }
            (_, Some(b)) => {
                out.push_str(&rest[..b]);
                rest = rest[b + 2..]
                    .find("*/")
                    .map_or("", |e| &rest[b + 2 + e + 2..]);
            }
            _ => {
                out.push_str(rest);
                rest = "";
            }
        }
    }
    out
}

/// The value of `#define NAME value` in the header.
fn define(header: &str, name: &str) -> Option<String> {
    header.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("#define") && words.next() == Some(name))
            .then(|| words.collect::<Vec<_>>().join(" "))
    })
}

/// Every function the header declares: an identifier `recon_*` directly followed by `(`.
/// (Function-pointer typedefs read `(*recon_x)(`, so they do not match.)
fn header_functions(header: &str) -> BTreeSet<String> {
    let code = strip_comments(header);
    let bytes = code.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut names = BTreeSet::new();
    let mut i = 0;
    while let Some(found) = code[i..].find("recon_") {
        let start = i + found;
        let mut end = start;
        while end < bytes.len() && is_ident(bytes[end]) {
            end += 1;
        }
        let preceded = start > 0 && is_ident(bytes[start - 1]);
        let next = code[end..].trim_start().as_bytes().first().copied();
        if !preceded && next == Some(b'(') {
            names.insert(code[start..end].to_string());
        }
        i = end.max(start + 1);
    }
    names
}

/// `librecon.so` of the build this test belongs to.
fn library_path() -> PathBuf {
    if let Some(path) = std::env::var_os("RECON_LIBRARY") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/abi_guard-<hash>: the cdylib compiled with this test's copy of the
    // crate is deps/librecon.so. target/<profile>/librecon.so is only refreshed by
    // `cargo build`, so a `cargo test` after an edit would see a stale copy there.
    let deps = exe
        .parent()
        .expect("the test binary lies in target/<profile>/deps");
    let fresh = deps.join("librecon.so");
    if fresh.is_file() {
        return fresh;
    }
    deps.parent().unwrap_or(deps).join("librecon.so")
}

/// The `recon_*` symbols the library defines and exports, and how many other symbols it exports.
fn exported_symbols(library: &Path) -> (BTreeSet<String>, Vec<String>) {
    assert!(
        library.is_file(),
        "{} not found: cargo builds it with the tests (crate-type cdylib); \
         run `cargo build --lib` with the same profile, or set RECON_LIBRARY",
        library.display()
    );
    let output = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(library)
        .output()
        .unwrap_or_else(|e| panic!("cannot run nm (binutils): {e}"));
    assert!(
        output.status.success(),
        "nm -D {} failed: {}",
        library.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut ours = BTreeSet::new();
    let mut others = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        // "<address> <type> <name>"; the name may carry a version ("name@@VERS").
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(name) = fields.last().map(|n| n.split('@').next().unwrap_or(n)) else {
            continue;
        };
        if name.starts_with("recon_") {
            ours.insert(name.to_string());
        } else {
            others.push(name.to_string());
        }
    }
    (ours, others)
}

#[test]
fn abi_version_agrees() {
    let header = header_text();
    let declared: u32 = define(&header, "RECON_ABI_VERSION")
        .expect("include/recon.h defines RECON_ABI_VERSION")
        .parse()
        .expect("RECON_ABI_VERSION is a number");
    assert_eq!(declared, recon::ffi::status::RECON_ABI_VERSION);
    assert_eq!(declared, recon::ffi::status::recon_abi_version());
}

#[test]
fn version_agrees_with_cargo_toml() {
    // SAFETY: recon_version_string returns a static NUL-terminated string.
    let reported = unsafe { CStr::from_ptr(recon::ffi::status::recon_version_string()) };
    assert_eq!(reported.to_str().unwrap(), env!("CARGO_PKG_VERSION"));

    // The header's version macros, when it has them, must follow Cargo.toml.
    let header = header_text();
    let expected = [
        (
            "RECON_VERSION_MAJOR",
            env!("CARGO_PKG_VERSION_MAJOR").to_string(),
        ),
        (
            "RECON_VERSION_MINOR",
            env!("CARGO_PKG_VERSION_MINOR").to_string(),
        ),
        (
            "RECON_VERSION_PATCH",
            env!("CARGO_PKG_VERSION_PATCH").to_string(),
        ),
        (
            "RECON_VERSION_STRING",
            format!("\"{}\"", env!("CARGO_PKG_VERSION")),
        ),
    ];
    let mut found = 0;
    for (name, want) in expected {
        if let Some(value) = define(&header, name) {
            assert_eq!(value, want, "{name} in include/recon.h vs Cargo.toml");
            found += 1;
        }
    }
    if found == 0 {
        println!("note: include/recon.h has no RECON_VERSION_* macros; only recon_version_string() was checked");
    }
}

#[test]
fn header_parser_sees_declarations_not_comments() {
    let sample = "// recon_in_comment(x)\n/* recon_block(\n */ int32_t recon_real(void);\n\
                  typedef void (*recon_cb)(int);\nconst char *recon_two (int a,\n int b);\n";
    let names: Vec<String> = header_functions(sample).into_iter().collect();
    assert_eq!(names, ["recon_real", "recon_two"]);
}

#[test]
fn exported_symbols_match_the_header() {
    let declared = header_functions(&header_text());
    assert!(
        declared.len() >= 20,
        "only {} functions parsed from include/recon.h: {declared:?}",
        declared.len()
    );
    let library = library_path();
    let (exported, others) = exported_symbols(&library);
    let undeclared: Vec<_> = exported.difference(&declared).collect();
    let missing: Vec<_> = declared.difference(&exported).collect();
    println!(
        "{}: {} recon_* functions exported, {} declared; {} other exported symbols",
        library.display(),
        exported.len(),
        declared.len(),
        others.len()
    );
    assert!(
        undeclared.is_empty() && missing.is_empty(),
        "include/recon.h and {} disagree (run `make header`?)\n  exported but not declared: {undeclared:?}\n  declared but not exported: {missing:?}",
        library.display()
    );
}
