//! A panic boundary around third-party decoders. Files are hostile until
//! proven otherwise, and a decoder bug (symphonia 0.6's WAV reader, for
//! one, overflows a shift on a crafted channel mask) must become an error
//! for that file, never a crash of the node.

use std::any::Any;
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::error::{CodecError, Result};

thread_local! {
    /// Set while this thread runs guarded decoder code.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic inside it into `CodecError::Malformed`.
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    guarded_as("audio", f)
}

/// The same for data of `format` (midly 0.5.3, for one, negates an i8
/// that can be -128 when it reads an SMPTE division: a panic in debug builds).
pub(crate) fn guarded_as<T>(format: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let was = GUARDED.with(|g| g.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    result.unwrap_or_else(|payload| Err(decoder_failed(format, payload.as_ref())))
}

fn decoder_failed(format: &'static str, payload: &(dyn Any + Send)) -> CodecError {
    let why = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into());
    CodecError::malformed(format, format!("the decoder failed on this file ({why})"))
}

/// Keeps panics caught by the boundary quiet: the file's error is reported
/// once, as an error. Other panics go to the hook installed before this one.
/// Call once at startup.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !GUARDED.with(Cell::get) {
            previous(info);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_malformed_error() {
        let r: Result<()> = guarded(|| panic!("shift overflow"));
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.contains("decoder failed") && msg.contains("shift overflow"),
            "{msg}"
        );
        assert!(!GUARDED.with(Cell::get), "the flag is restored");
    }
}
