//! The one error type of the library. Every fallible function returns [`Result`]; the C ABI maps
//! [`ErrorKind`] one to one onto `recon_status` (see `ffi::status`).

use std::fmt;

/// What went wrong, coarse enough to act on. Each kind is a stable `recon_status` number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A caller-supplied argument is wrong (NULL, out of range, inconsistent sizes).
    InvalidArgument,
    /// A file or directory could not be read or written.
    Io,
    /// The Hub could not be reached, or refused a request, or offline mode forbids it.
    Network,
    /// A file was read but its content is malformed (JSON, safetensors header, image bytes).
    Format,
    /// A checkpoint does not fit the network: a tensor is missing, mis-shaped or mis-typed.
    Checkpoint,
    /// The request is valid but this build cannot do it (yet).
    Unsupported,
    /// The run was cancelled by `recon_cancel` or a progress callback.
    Cancelled,
    /// Host or device memory ran out.
    OutOfMemory,
    /// The compute device is missing or failed.
    Device,
    /// A bug in recon (including a caught panic).
    Internal,
}

/// An error with a message that names what was wrong (file, tensor, expected vs found).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Io, message)
    }
    pub fn network(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Network, message)
    }
    pub fn format(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Format, message)
    }
    pub fn checkpoint(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Checkpoint, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Cancelled, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// An I/O error on `path`, keeping the OS reason.
    pub fn io_at(path: &std::path::Path, err: &std::io::Error) -> Self {
        let kind = if err.kind() == std::io::ErrorKind::OutOfMemory {
            ErrorKind::OutOfMemory
        } else {
            ErrorKind::Io
        };
        Self::new(kind, format!("{}: {err}", path.display()))
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with context, keeping the kind: `"loading ss_dec: <message>"`.
    pub fn context(self, what: impl fmt::Display) -> Self {
        Self {
            kind: self.kind,
            message: format!("{what}: {}", self.message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<tch::TchError> for Error {
    fn from(err: tch::TchError) -> Self {
        let text = err.to_string();
        // libtorch reports allocation failures only through the message text.
        let kind = if text.contains("out of memory") || text.contains("OutOfMemory") {
            ErrorKind::OutOfMemory
        } else if text.contains("CUDA") || text.contains("cuda") {
            ErrorKind::Device
        } else {
            ErrorKind::Internal
        };
        Self::new(kind, format!("libtorch: {}", without_backtrace(&text)))
    }
}

/// libtorch's message without the C++ backtrace it appends ("Exception raised from ..." and
/// "frame #N: ..." lines): what went wrong, not forty lines of addresses.
fn without_backtrace(text: &str) -> String {
    let kept: Vec<&str> = text
        .lines()
        .take_while(|line| !line.trim_start().starts_with("Exception raised from"))
        .filter(|line| !line.trim_start().starts_with("frame #"))
        .collect();
    let joined = kept.join("\n");
    let trimmed = joined.trim_end();
    if trimmed.is_empty() {
        text.trim_end().to_string()
    } else {
        trimmed.to_string()
    }
}

/// Adds context to any `Result<T, Error>`.
pub trait ResultExt<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.context(what))
    }
}

/// The text of a caught panic's payload (a `&str` or `String` for `panic!` with a message).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn libtorch_backtraces_are_dropped() {
        let text = "CUDA out of memory. Tried to allocate 2.00 MiB.\nException raised from malloc at alloc.cpp:1 (most recent call first):\nframe #0: c10::Error::Error() + 0x1\nframe #1: f + 0x2";
        assert_eq!(
            super::without_backtrace(text),
            "CUDA out of memory. Tried to allocate 2.00 MiB."
        );
        assert_eq!(super::without_backtrace("plain"), "plain");
    }
}
