//! What a model source string means (local directory or Hub repo id), and which model stems in
//! pipeline.json are safe to turn into file paths.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A Hub repository at a revision (branch, tag or commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RepoRef {
    pub id: String,
    pub revision: String,
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.revision)
    }
}

/// Where a pipeline comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    Local(PathBuf),
    Hub(RepoRef),
}

pub(crate) const DEFAULT_REVISION: &str = "main";

/// Decides local vs Hub. An existing directory always wins, so a local folder that happens to be
/// called `owner/name` is never shadowed by the Hub.
pub(crate) fn parse_source(source: &str) -> Result<Source> {
    if source.trim().is_empty() {
        return Err(Error::invalid_argument(
            "empty model source: give a directory containing pipeline.json or a Hugging Face \
             repo id such as microsoft/TRELLIS-image-large",
        ));
    }
    let path = Path::new(source);
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(Source::Local(path.to_path_buf())),
        Ok(_) => Err(Error::invalid_argument(format!(
            "model source {source} is a file; expected a directory containing pipeline.json \
             or a Hugging Face repo id (owner/name[@revision])"
        ))),
        // Permission problems on an existing path are reported as such, not guessed to be a repo.
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(Error::io_at(path, &err)),
        Err(_) => classify_missing(source),
    }
}

/// `source` names nothing on disk: it is a repo id, a mistyped path, or nonsense.
fn classify_missing(source: &str) -> Result<Source> {
    if let Some(repo) = parse_repo_ref(source) {
        return Ok(Source::Hub(repo));
    }
    if looks_like_path(source) {
        return Err(Error::io(format!(
            "model directory {source} does not exist (and it is not a Hugging Face repo id \
             of the form owner/name[@revision])"
        )));
    }
    Err(Error::invalid_argument(format!(
        "model source '{source}' is neither an existing directory nor a Hugging Face repo id \
         of the form owner/name[@revision]"
    )))
}

fn looks_like_path(source: &str) -> bool {
    source.contains('/')
        || source.contains('\\')
        || source.starts_with('.')
        || source.starts_with('~')
        || has_drive_prefix(source)
}

/// `owner/name` or `owner/name@revision`.
pub(crate) fn parse_repo_ref(text: &str) -> Option<RepoRef> {
    let (id, revision) = match text.split_once('@') {
        Some((id, revision)) => (id, revision),
        None => (text, DEFAULT_REVISION),
    };
    (is_repo_id(id) && is_revision(revision)).then(|| RepoRef {
        id: id.to_string(),
        revision: revision.to_string(),
    })
}

/// The Hub's own rule (huggingface_hub `validate_repo_id`), restricted to `owner/name`: the id
/// becomes a cache folder name (`models--owner--name`), so `--` and `..` must not occur.
pub(crate) fn is_repo_id(id: &str) -> bool {
    let mut parts = id.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    id.len() <= 96 && !id.contains("--") && !id.contains("..") && is_name(owner) && is_name(name)
}

fn is_name(part: &str) -> bool {
    !part.is_empty()
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !part.starts_with(['-', '.'])
        && !part.ends_with(['-', '.'])
}

/// Branch, tag, commit or `refs/pr/N`. hf-hub writes the revision into the cache as a path
/// (`refs/<revision>`), so anything that could climb out of that folder is refused.
fn is_revision(revision: &str) -> bool {
    !revision.is_empty()
        && revision.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
        })
}

fn has_drive_prefix(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':'
}

/// A validated model stem from `args.models`: `/`-separated parts, none empty, `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stem {
    parts: Vec<String>,
}

impl Stem {
    /// Checks a stem from pipeline.json. Paths that could leave the model directory (absolute,
    /// `..`, backslashes, drive letters) are refused: pipeline.json comes from the network.
    pub(crate) fn parse(key: &str, stem: &str, file: &Path) -> Result<Self> {
        let bad = |why: &str| {
            Error::format(format!(
                "{}: model '{key}' has stem \"{stem}\", which {why}",
                file.display()
            ))
        };
        if stem.is_empty() {
            return Err(bad("is empty"));
        }
        if stem.contains('\\') {
            return Err(bad("contains a backslash (stems use `/`)"));
        }
        if stem.starts_with('/') || has_drive_prefix(stem) {
            return Err(bad(
                "is an absolute path (stems are relative to the model directory)",
            ));
        }
        if stem.chars().any(char::is_control) {
            return Err(bad("contains control characters"));
        }
        let mut parts = Vec::new();
        for part in stem.split('/') {
            match part {
                "" => return Err(bad("has an empty path component")),
                ".." => return Err(bad("contains `..` and would escape the model directory")),
                "." => {}
                _ => parts.push(part.to_string()),
            }
        }
        if parts.is_empty() {
            return Err(bad("names no file"));
        }
        Ok(Self { parts })
    }

    /// The stem joined with `/`, plus an extension: the file name inside a repo or directory.
    pub(crate) fn file(&self, extension: &str) -> String {
        format!("{}.{extension}", self.parts.join("/"))
    }

    /// The upstream cross-repo reading `owner/repo/path/in/repo`, when the stem has that shape.
    pub(crate) fn cross_repo(&self) -> Option<(RepoRef, Stem)> {
        if self.parts.len() < 3 {
            return None;
        }
        let id = format!("{}/{}", self.parts[0], self.parts[1]);
        if !is_repo_id(&id) {
            return None;
        }
        let repo = RepoRef {
            id,
            revision: DEFAULT_REVISION.to_string(),
        };
        let rest = Stem {
            parts: self.parts[2..].to_vec(),
        };
        Some((repo, rest))
    }
}

impl fmt::Display for Stem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.parts.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        let r = parse_repo_ref("microsoft/TRELLIS-image-large").unwrap();
        assert_eq!(r.id, "microsoft/TRELLIS-image-large");
        assert_eq!(r.revision, "main");
        let r = parse_repo_ref("Stable-X/trellis-vggt-v0-2@refs/pr/3").unwrap();
        assert_eq!(r.revision, "refs/pr/3");
        for bad in [
            "gpt2", "a/b/c", "/abs/x", "./a/b", "a/../b", "a--b/c", "a/b@", "a/b@../x", "C:/x",
            "a/.b",
        ] {
            assert!(parse_repo_ref(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn stems() {
        let f = Path::new("pipeline.json");
        assert_eq!(
            Stem::parse("k", "ckpts/a", f).unwrap().file("json"),
            "ckpts/a.json"
        );
        assert_eq!(
            Stem::parse("k", "./ckpts/a", f).unwrap().to_string(),
            "ckpts/a"
        );
        for bad in [
            "",
            "../a",
            "ckpts/../../a",
            "/etc/x",
            "C:\\x",
            "c:/x",
            "a\\b",
            "a//b",
        ] {
            let err = Stem::parse("k", bad, f).unwrap_err();
            assert_eq!(err.kind(), crate::error::ErrorKind::Format, "{bad}");
        }
        let cross = Stem::parse("k", "microsoft/TRELLIS-image-large/ckpts/x", f).unwrap();
        let (repo, rest) = cross.cross_repo().unwrap();
        assert_eq!(repo.id, "microsoft/TRELLIS-image-large");
        assert_eq!(rest.file("json"), "ckpts/x.json");
        assert!(Stem::parse("k", "ckpts/x", f)
            .unwrap()
            .cross_repo()
            .is_none());
    }
}
