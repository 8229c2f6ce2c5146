//! The audio path's threads at the sound server's own priority.
//!
//! On 2 cores, the PulseAudio loop at 160 frames per callback (3.3 ms)
//! counted 1–2 xruns in 5 minutes and at 128 frames more: a callback or
//! the sound server client's thread in our process now and then waited
//! behind other work. At the nice level PulseAudio gives its own threads,
//! 0 xruns at 160 and at 128 frames (2 minutes each, `scripts/bench/latency`).
//! Real-time scheduling was tried and is worse here: ALSA's pulse plugin
//! fails with EIO under SCHED_FIFO, and SCHED_RR counted more xruns.

/// PulseAudio's default `nice-level` for its own threads (daemon.conf).
const AUDIO_NICE: i32 = -11;

/// Raises the calling thread's priority while it lives. Threads started
/// meanwhile inherit it — cpal's stream threads, the sound server
/// client's, the disk and feeder threads — and keep it; the calling
/// thread gets its old level back on drop. Without the right to raise
/// (not root, no `nice` allowance in limits.conf) nothing changes.
pub struct Raised {
    before: Option<i32>,
}

impl Raised {
    pub fn new() -> Raised {
        let before = nice();
        let raised = before.is_some_and(|level| level > AUDIO_NICE && set_nice(AUDIO_NICE));
        if !raised {
            tracing::debug!(
                "audio threads stay at their nice level {before:?}: raising needs root or a limits.conf `nice` allowance"
            );
        }
        Raised {
            before: before.filter(|_| raised),
        }
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        if let Some(level) = self.before {
            set_nice(level);
        }
    }
}

/// The calling thread's nice level (Linux keeps one per thread).
fn nice() -> Option<i32> {
    rustix::process::getpriority_process(None).ok()
}

fn set_nice(level: i32) -> bool {
    rustix::process::setpriority_process(None, level).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_started_while_raised_inherit_it_and_the_caller_gets_its_level_back() {
        std::thread::spawn(|| {
            let before = nice().unwrap();
            let raised = Raised::new();
            let now = nice().unwrap();
            let child = std::thread::spawn(nice).join().unwrap().unwrap();
            assert_eq!(child, now, "a thread started meanwhile inherits the level");
            // Root may always raise (CI runs as root).
            let root = rustix::process::geteuid().is_root();
            assert!(!root || raised.before.is_some(), "root raises");
            if raised.before.is_some() {
                assert_eq!(now, AUDIO_NICE);
            } else {
                assert_eq!(now, before, "without the right, nothing changes");
            }
            drop(raised);
            assert_eq!(nice().unwrap(), before);
        })
        .join()
        .unwrap();
    }
}
