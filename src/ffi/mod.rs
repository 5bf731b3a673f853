//! The C ABI (`include/recon.h`, generated from this module by cbindgen). The only
//! `extern "C"` code of the crate: it validates every pointer and struct, runs each body inside
//! one panic boundary, and maps [`crate::Error`] onto `recon_status`.
//!
//! Conventions (DESIGN.md §3): flat `recon_*` functions; opaque handles with one NULL-safe free
//! each; parameter structs start with `uint32_t struct_size` and are filled by `*_init`;
//! fallible calls return `recon_status` and write outputs only on success.
#![allow(non_camel_case_types)]

pub mod model;
pub mod result;
pub mod run;
pub mod status;
pub mod textured;
pub mod turntable;

use std::collections::VecDeque;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use crate::error::{Error, Result};
use status::recon_status;

/// Runs `body` inside the panic boundary: a panic becomes an Internal error with its message
/// instead of unwinding into (and aborting) the host process.
pub(crate) fn guarded<T>(body: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => Err(Error::internal(format!(
            "internal error (panic): {}",
            crate::error::panic_message(payload.as_ref())
        ))),
    }
}

/// Runs an infallible accessor inside the panic boundary, returning `default` on panic.
pub(crate) fn guarded_or<T>(default: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(default)
}

/// A `&T` from a C pointer, or InvalidArgument naming the parameter.
///
/// # Safety
/// `ptr` must be NULL or point to a valid `T` for the returned lifetime.
pub(crate) unsafe fn non_null<'a, T>(ptr: *const T, what: &str) -> Result<&'a T> {
    // SAFETY: forwarded to the caller.
    unsafe { ptr.as_ref() }.ok_or_else(|| Error::invalid_argument(format!("{what} is NULL")))
}

/// A UTF-8 `&str` from a C string, or InvalidArgument naming the parameter.
///
/// # Safety
/// `ptr` must be NULL or a NUL-terminated string valid for the returned lifetime.
pub(crate) unsafe fn utf8<'a>(ptr: *const c_char, what: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(Error::invalid_argument(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| Error::invalid_argument(format!("{what} is not valid UTF-8")))
}

/// Copies a versioned struct from the caller: `struct_size` must be the size of one of its
/// released versions (`sizes`, all at most the current size: a size between two versions
/// would cut a field in half); the bytes the caller has are taken over `defaults`.
///
/// # Safety
/// `ptr` must be NULL or point to at least `struct_size` readable bytes, where `struct_size`
/// is the struct's first field (`u32`).
pub(crate) unsafe fn read_versioned<T: Copy>(
    ptr: *const T,
    defaults: T,
    sizes: &[usize],
    what: &str,
) -> Result<T> {
    if ptr.is_null() {
        return Err(Error::invalid_argument(format!("{what} is NULL")));
    }
    // SAFETY: every versioned struct begins with a u32 struct_size.
    let size = unsafe { *(ptr as *const u32) } as usize;
    let ours = std::mem::size_of::<T>();
    if !sizes.contains(&size) || size > ours {
        let known: Vec<String> = sizes.iter().map(usize::to_string).collect();
        return Err(Error::invalid_argument(format!(
            "{what}.struct_size is {size}, expected {ours} (or an earlier version's: {}); call \
             the matching *_init and build against this recon.h",
            known.join(", ")
        )));
    }
    let mut value = defaults;
    // SAFETY: the caller owns `size` bytes at `ptr`; `value` is `ours >= size` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(ptr as *const u8, &mut value as *mut T as *mut u8, size)
    };
    Ok(value)
}

/// Writes the defaults of the largest released version of a versioned struct that fits in
/// `size` bytes (`sizes` ascending, all at most `size_of::<T>()`), with `struct_size` set to
/// that version's size: a caller built against an older header owns only that many bytes,
/// and a size between two versions would cut a field in half. Returns the size written (0,
/// writing nothing, when `size` is below the first version or `ptr` is NULL).
///
/// # Safety
/// `ptr` must be NULL or point to at least `size` writable bytes.
pub(crate) unsafe fn init_versioned<T: Copy>(
    ptr: *mut T,
    size: usize,
    defaults: T,
    sizes: &[usize],
) -> usize {
    let size = sizes
        .iter()
        .copied()
        .filter(|&s| s <= size && s <= std::mem::size_of::<T>())
        .max()
        .unwrap_or(0);
    if ptr.is_null() || size == 0 {
        return 0;
    }
    let mut value = defaults;
    // SAFETY: every versioned struct begins with a u32 struct_size.
    unsafe { *(&mut value as *mut T as *mut u32) = size as u32 };
    // SAFETY: `value` is a whole struct (>= size bytes); the caller owns `size` bytes.
    unsafe { std::ptr::copy_nonoverlapping(&value as *const T as *const u8, ptr as *mut u8, size) };
    size
}

/// Writes `message` NUL-terminated into a caller buffer, truncating to fit.
///
/// # Safety
/// `buf` must be NULL or point to `len` writable bytes.
pub(crate) unsafe fn write_c_buffer(buf: *mut c_char, len: usize, message: &str) {
    if buf.is_null() || len == 0 {
        return;
    }
    let bytes = message.as_bytes();
    let n = bytes.len().min(len - 1);
    // SAFETY: n + 1 <= len bytes are writable at buf.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf as *mut u8, n);
        *buf.add(n) = 0;
    }
}

/// A C string from Rust text; interior NULs (never expected) are replaced.
pub(crate) fn c_string(text: &str) -> CString {
    CString::new(text.replace('\0', "\u{FFFD}")).unwrap_or_default()
}

/// Messages of the most recent failures on one handle. Several are kept so that a pointer
/// returned by `*_last_error` stays valid while other threads fail calls on the same handle.
pub(crate) struct ErrorLog {
    messages: Mutex<VecDeque<CString>>,
}

/// How many past messages stay alive (and their pointers valid).
pub(crate) const ERROR_HISTORY: usize = 16;

impl ErrorLog {
    pub(crate) fn new() -> Self {
        Self {
            messages: Mutex::new(VecDeque::new()),
        }
    }

    pub(crate) fn record(&self, error: &Error) {
        let mut messages = self.messages.lock().unwrap_or_else(|p| p.into_inner());
        if messages.len() == ERROR_HISTORY {
            messages.pop_front();
        }
        messages.push_back(c_string(error.message()));
    }

    /// The newest message, or "" when no call has failed.
    pub(crate) fn last(&self) -> *const c_char {
        let messages = self.messages.lock().unwrap_or_else(|p| p.into_inner());
        messages.back().map_or(c"".as_ptr(), |m| m.as_ptr())
    }
}

/// Turns a result into a status, recording the message on the handle's error log.
pub(crate) fn finish(result: Result<()>, log: Option<&ErrorLog>) -> recon_status {
    match result {
        Ok(()) => recon_status::RECON_OK,
        Err(error) => {
            if let Some(log) = log {
                log.record(&error);
            }
            recon_status::from_error_kind(error.kind())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_internal_error() {
        let log = ErrorLog::new();
        let status = finish(
            guarded(|| -> Result<()> { panic!("boom at depth") }),
            Some(&log),
        );
        assert_eq!(status, recon_status::RECON_ERR_INTERNAL);
        // SAFETY: the log returns a NUL-terminated string it owns.
        let message = unsafe { CStr::from_ptr(log.last()) }
            .to_str()
            .unwrap()
            .to_string();
        assert!(message.contains("boom at depth"), "{message}");
        assert_eq!(guarded_or(7, || -> i32 { panic!("x") }), 7);
    }

    #[test]
    fn error_log_keeps_recent_messages_alive() {
        let log = ErrorLog::new();
        log.record(&Error::io("first"));
        let first = log.last();
        for i in 0..ERROR_HISTORY - 1 {
            log.record(&Error::io(format!("later {i}")));
        }
        // SAFETY: still within the history window, so the first message is alive.
        assert_eq!(unsafe { CStr::from_ptr(first) }.to_str().unwrap(), "first");
    }

    #[test]
    fn caller_buffers_are_truncated_and_terminated() {
        let mut buf = [0x7f as c_char; 6];
        // SAFETY: buf holds 6 writable bytes.
        unsafe { write_c_buffer(buf.as_mut_ptr(), buf.len(), "abcdefgh") };
        // SAFETY: write_c_buffer terminated it.
        assert_eq!(
            unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap(),
            "abcde"
        );
        // SAFETY: NULL and zero length are accepted.
        unsafe { write_c_buffer(std::ptr::null_mut(), 10, "x") };
    }
}
