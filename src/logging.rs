//! Log sink shared by the library: messages go to the caller's log callback when one is set
//! (C ABI), otherwise to `tracing`.

/// Severity, ordered from most to least severe. Numbers are the C ABI's `recon_log_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(i32)]
pub enum LogLevel {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

/// A log sink. Cloned into long-lived objects, so it must be shareable across threads.
pub type LogFn = dyn Fn(LogLevel, &str) + Send + Sync;

/// Sends to `tracing` (what Rust callers and the CLI get by default).
pub fn tracing_sink(level: LogLevel, message: &str) {
    match level {
        LogLevel::Error => tracing::error!("{message}"),
        LogLevel::Warn => tracing::warn!("{message}"),
        LogLevel::Info => tracing::info!("{message}"),
        LogLevel::Debug => tracing::debug!("{message}"),
    }
}
