//! Crash points for the crash tests: `MESHSTUDIO_FAILPOINT=NAME` aborts the
//! process at that step, as `kill -9` would. Compiled into debug (test)
//! builds only; release binaries ignore the variable.

/// After the blob is stored and tagged, before the clip is committed.
pub const AFTER_BLOB: &str = "after-blob";
/// After the clip is committed, before anything is printed.
pub const AFTER_COMMIT: &str = "after-commit";
/// Just before the command acknowledges success.
pub const BEFORE_ACK: &str = "before-ack";

#[cfg(debug_assertions)]
pub fn hit(name: &str) {
    if std::env::var("MESHSTUDIO_FAILPOINT").is_ok_and(|v| v == name) {
        std::process::abort();
    }
}

#[cfg(not(debug_assertions))]
pub fn hit(_name: &str) {}
