//! `up --max-upload-kbps`: a cap on what the node sends, all connections
//! together — a site pays for every byte it uploads. Each connection's
//! congestion controller (`congestion::LossTolerant`) paces at no more than
//! its share: what the other connections that sent in the last
//! `ACTIVE_WINDOW` leave of the cap, and at least an equal part of it — so
//! one busy transfer gets it all and two get half each. (An equal part
//! alone left a stem transfer a third of the cap whenever the peer's sync
//! and gossip connections sent a few acks: 535 kbit/s under an 800 cap.)

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
    /// Each connection's last report and its rate then (bytes/s), by
    /// controller id.
    senders: Mutex<HashMap<u64, (Instant, u64)>>,
    active: AtomicUsize,
    /// The sum of those rates.
    total: AtomicU64,
    next_id: AtomicU64,
}

impl UploadCap {
    /// A cap of `kbps` kbit/s, checked against the limits.
    pub fn new(kbps: u32) -> Result<Arc<UploadCap>, String> {
        Ok(Arc::new(UploadCap {
            bytes_per_s: super::rate_limit::bytes_per_s(kbps, "--max-upload-kbps")?,
            senders: Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
            total: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
        }))
    }

    /// The share of a connection sending `own` bytes/s lately: what the
    /// others leave, and at least an equal part.
    fn share(&self, own: u64) -> u64 {
        let equal = self.bytes_per_s / self.active.load(Ordering::Relaxed).max(1) as u64;
        let others = self.total.load(Ordering::Relaxed).saturating_sub(own);
        equal.max(self.bytes_per_s.saturating_sub(others))
    }

    fn sending(&self, id: u64, now: Instant, rate: u64) {
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        senders.insert(id, (now, rate));
        senders.retain(|_, (at, _)| now.saturating_duration_since(*at) < ACTIVE_WINDOW);
        self.active.store(senders.len(), Ordering::Relaxed);
        // A connection that has not reported for two intervals has not
        // sent since: its last rate (a handshake's burst, say) is stale.
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < MARK_EVERY * 2;
        let total = senders
            .values()
            .filter(|(at, _)| fresh(at))
            .map(|(_, r)| r)
            .sum();
        self.total.store(total, Ordering::Relaxed);
    }
}

/// One connection's place under the cap.
#[derive(Debug, Clone)]
pub struct Share {
    cap: Arc<UploadCap>,
    id: u64,
    marked: Option<Instant>,
    /// Bytes sent since the last report, and the rate then reported.
    unreported: u64,
    rate: u64,
}

impl Share {
    pub fn of(cap: &Arc<UploadCap>) -> Share {
        Share {
            cap: cap.clone(),
            id: cap.next_id.fetch_add(1, Ordering::Relaxed),
            marked: None,
            unreported: 0,
            rate: 0,
        }
    }

    /// A packet of `bytes` left on this connection.
    pub fn sent(&mut self, now: Instant, bytes: u64) {
        self.unreported += bytes;
        let since = self.marked.map(|t| now.saturating_duration_since(t));
        if since.is_none_or(|d| d >= MARK_EVERY) {
            // The first report has no interval: the rate shows from the next.
            let secs = since.map_or(0.0, |d| d.as_secs_f64());
            if secs > 0.0 {
                self.rate = (self.unreported as f64 / secs) as u64;
            }
            self.unreported = 0;
            self.cap.sending(self.id, now, self.rate);
            self.marked = Some(now);
        }
    }

    /// `rate` (bytes/s; none = the controller sets no rate) held to the share.
    pub fn limit(&self, rate: Option<u64>) -> u64 {
        rate.unwrap_or(u64::MAX).min(self.cap.share(self.rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `share` sends at `bytes_per_s` from `t` for `ms`, reporting as it goes.
    fn send_at(share: &mut Share, t: Instant, ms: u64, bytes_per_s: u64) {
        for step in 0..=ms / 10 {
            share.sent(t + Duration::from_millis(step * 10), bytes_per_s / 100);
        }
    }

    #[test]
    fn busy_connections_share_the_cap_and_idle_ones_leave_it() {
        let cap = UploadCap::new(800).expect("in range");
        let (mut a, mut b) = (Share::of(&cap), Share::of(&cap));
        let t = Instant::now();
        a.sent(t, 1200);
        assert_eq!(a.limit(None), 100_000);
        assert_eq!(a.limit(Some(5_000)), 5_000, "a slower link stays slower");
        // Both busy: half each.
        send_at(&mut a, t, 500, 100_000);
        send_at(&mut b, t, 500, 100_000);
        assert_eq!(a.limit(None), 50_000);
        assert_eq!(b.limit(None), 50_000);
        // B goes quiet; once A reports again after the window, A has it all.
        a.sent(t + ACTIVE_WINDOW * 2, 1200);
        assert_eq!(a.limit(None), 100_000);
    }

    #[test]
    fn a_connection_that_sends_little_leaves_the_rest_to_a_busy_one() {
        let cap = UploadCap::new(800).expect("in range");
        let (mut stems, mut acks) = (Share::of(&cap), Share::of(&cap));
        let t = Instant::now();
        send_at(&mut acks, t, 500, 2_000);
        send_at(&mut stems, t, 500, 98_000);
        assert_eq!(stems.limit(None), 98_000, "all the acks leave");
        assert!(acks.limit(None) >= 50_000, "and an equal part at least");
        // The acks stop: their last rate no longer counts once stale.
        send_at(&mut stems, t + Duration::from_millis(510), 300, 98_000);
        assert_eq!(stems.limit(None), 100_000);
    }

    #[test]
    fn caps_out_of_range_are_refused() {
        assert!(UploadCap::new(MIN_KBPS - 1).is_err());
        assert!(UploadCap::new(MAX_KBPS + 1).is_err());
    }
}
