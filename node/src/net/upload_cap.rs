//! `up --max-upload-kbps`: a cap on what the node sends, all connections
//! together — a site pays for every byte it uploads. Each connection's
//! congestion controller (`congestion::LossTolerant`) paces at no more than
//! its share: the cap divided among the connections that sent in the last
//! `ACTIVE_WINDOW`, so one busy transfer gets it all and two get half each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lowest and highest cap accepted, in kbit/s.
pub const MIN_KBPS: u32 = 16;
pub const MAX_KBPS: u32 = 10_000_000;
/// A connection that sent within this long counts as sharing the cap.
const ACTIVE_WINDOW: Duration = Duration::from_secs(1);
/// A connection tells the cap it is sending at most this often (the cap's
/// lock is not taken per packet).
const MARK_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct UploadCap {
    bytes_per_s: u64,
    /// Each connection's last send, by controller id.
    senders: Mutex<HashMap<u64, Instant>>,
    active: AtomicUsize,
    next_id: AtomicU64,
}

impl UploadCap {
    /// A cap of `kbps` kbit/s, checked against the limits.
    pub fn new(kbps: u32) -> Result<Arc<UploadCap>, String> {
        Ok(Arc::new(UploadCap {
            bytes_per_s: super::rate_limit::bytes_per_s(kbps, "--max-upload-kbps")?,
            senders: Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
        }))
    }

    /// The share of one connection, in bytes per second.
    fn share(&self) -> u64 {
        self.bytes_per_s / self.active.load(Ordering::Relaxed).max(1) as u64
    }

    fn sending(&self, id: u64, now: Instant) {
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        senders.insert(id, now);
        senders.retain(|_, at| now.saturating_duration_since(*at) < ACTIVE_WINDOW);
        self.active.store(senders.len(), Ordering::Relaxed);
    }
}

/// One connection's place under the cap.
#[derive(Debug, Clone)]
pub struct Share {
    cap: Arc<UploadCap>,
    id: u64,
    marked: Option<Instant>,
}

impl Share {
    pub fn of(cap: &Arc<UploadCap>) -> Share {
        Share {
            cap: cap.clone(),
            id: cap.next_id.fetch_add(1, Ordering::Relaxed),
            marked: None,
        }
    }

    /// A packet left on this connection.
    pub fn sent(&mut self, now: Instant) {
        if self
            .marked
            .is_none_or(|t| now.saturating_duration_since(t) >= MARK_EVERY)
        {
            self.cap.sending(self.id, now);
            self.marked = Some(now);
        }
    }

    /// `rate` (bytes/s; none = the controller sets no rate) held to the share.
    pub fn limit(&self, rate: Option<u64>) -> u64 {
        rate.unwrap_or(u64::MAX).min(self.cap.share())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_connections_share_the_cap_and_idle_ones_leave_it() {
        let cap = UploadCap::new(800).expect("in range");
        let (mut a, mut b) = (Share::of(&cap), Share::of(&cap));
        let t = Instant::now();
        a.sent(t);
        assert_eq!(a.limit(None), 100_000);
        assert_eq!(a.limit(Some(5_000)), 5_000, "a slower link stays slower");
        b.sent(t);
        assert_eq!(a.limit(None), 50_000);
        // B goes quiet; once A marks again after the window, A has it all.
        a.sent(t + ACTIVE_WINDOW + MARK_EVERY);
        assert_eq!(a.limit(None), 100_000);
    }

    #[test]
    fn caps_out_of_range_are_refused() {
        assert!(UploadCap::new(MIN_KBPS - 1).is_err());
        assert!(UploadCap::new(MAX_KBPS + 1).is_err());
    }
}
