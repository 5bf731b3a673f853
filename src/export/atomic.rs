//! Atomic file replacement: a reader (or a crash) sees the old file or the new one, never a
//! truncated mix, and a failed export leaves nothing behind.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Distinguishes temporary files of concurrent exports within one process (the process id
/// distinguishes processes).
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// How many names to try when another writer holds the chosen temporary name.
const NAME_ATTEMPTS: usize = 16;

/// Writes `bytes` to `path`: into a new hidden temporary file in the same directory (a rename
/// is only atomic within one filesystem), flushed with fsync, then renamed over `path`. The
/// directory is fsynced afterwards so the rename itself survives a crash (best effort: some
/// filesystems refuse to sync directories, and the file is complete either way).
///
/// On any error the temporary file is removed and `path` is left as it was. The directory must
/// exist; it is not created (a typo in it should fail, not scatter directories).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically_with(path, |out| {
        out.write_all(bytes).map_err(|e| Error::io_at(path, &e))
    })
}

/// As [`write_atomically`], with the contents streamed by `write` into a buffered writer of
/// the temporary file (for files too large to hold in memory, e.g. multi-GB checkpoints).
/// `write`'s error leaves `path` as it was.
pub fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    let staged = stage(path, write)?;
    staged.commit()
}

/// Writes several files as a set (e.g. an OBJ with its MTL and texture): every file is first
/// written completely to a temporary file beside it and flushed; only then are they renamed
/// into place, in the order given. Put the file that refers to the others last: a reader who
/// finds it finds them too. A failure while writing leaves every path untouched; a failed
/// rename (rare: the temporary files are already complete, beside their targets) leaves the
/// files renamed before it in place and removes the rest.
pub fn write_set_atomically(files: &[(&Path, &[u8])]) -> Result<()> {
    let mut staged = Vec::with_capacity(files.len());
    for (path, bytes) in files {
        staged.push(stage(path, |out| {
            out.write_all(bytes).map_err(|e| Error::io_at(path, &e))
        })?);
    }
    for file in staged {
        file.commit()?;
    }
    Ok(())
}

/// A complete, flushed temporary file waiting to be renamed over its target.
struct Staged {
    temp: TempFile,
    target: PathBuf,
    dir: PathBuf,
}

impl Staged {
    /// Renames the temporary file over the target and syncs the directory.
    fn commit(self) -> Result<()> {
        std::fs::rename(&self.temp.path, &self.target).map_err(|e| {
            Error::io(format!(
                "{}: replacing it with {} failed: {e}",
                self.target.display(),
                self.temp.path.display()
            ))
        })?;
        self.temp.disarm();
        sync_dir(&self.dir);
        Ok(())
    }
}

/// Writes `write`'s output to a new temporary file beside `path`, flushed with fsync.
fn stage(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<Staged> {
    let name = path.file_name().ok_or_else(|| {
        Error::invalid_argument(format!(
            "{}: not a file path (it names no file)",
            path.display()
        ))
    })?;
    if path.is_dir() {
        return Err(Error::invalid_argument(format!(
            "{}: is a directory, expected a file path",
            path.display()
        )));
    }
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (file, temp) = create_temp(&dir, name, path)?;
    let mut buffered = std::io::BufWriter::with_capacity(1 << 22, file);
    write(&mut buffered)?;
    let file = buffered
        .into_inner()
        .map_err(|e| Error::io_at(&temp.path, e.error()))?;
    file.sync_all().map_err(|e| Error::io_at(&temp.path, &e))?;
    drop(file);
    Ok(Staged {
        temp,
        target: path.to_path_buf(),
        dir,
    })
}

/// A temporary file that is deleted when dropped, unless disarmed after the rename.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            // Nothing better to do on failure: the caller already gets the original error.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Creates `.{name}.{pid}-{n}.recon-tmp` in `dir` with `create_new`, so an existing file is
/// never truncated or followed through a symlink.
fn create_temp(dir: &Path, name: &std::ffi::OsStr, target: &Path) -> Result<(File, TempFile)> {
    let mut last_error = None;
    for _ in 0..NAME_ATTEMPTS {
        let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}-{n}.recon-tmp", std::process::id()));
        let temp_path = dir.join(temp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
        {
            Ok(file) => {
                let temp = TempFile {
                    path: temp_path,
                    armed: true,
                };
                return Ok((file, temp));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_error = Some(e),
            Err(e) => return Err(temp_error(target, dir, &e)),
        }
    }
    let e = last_error.unwrap_or_else(|| std::io::Error::other("no temporary name was free"));
    Err(temp_error(target, dir, &e))
}

fn temp_error(target: &Path, dir: &Path, e: &std::io::Error) -> Error {
    let reason = if e.kind() == std::io::ErrorKind::NotFound {
        format!("directory {} does not exist", dir.display())
    } else {
        format!("cannot create a temporary file in {}: {e}", dir.display())
    };
    Error::io(format!("cannot write {}: {reason}", target.display()))
}

/// Flushes the directory entry of a rename (POSIX needs an fsync of the directory itself).
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}
