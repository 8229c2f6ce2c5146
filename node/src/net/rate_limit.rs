//! Caps on stem bytes — a site pays for what crosses its link. The node's
//! upload cap lives in the congestion controller (`upload_cap.rs`: it
//! covers every byte sent). The rest are paced here, on stems only (state
//! is tiny and always syncs):
//! - `up --max-download-kbps`: what the node downloads, all peers together;
//! - `config set max-upload-kbps:<node id>` / `max-download-kbps:<node id>`:
//!   what one peer may take from, or send to, this node.
//!
//! Uploads to a capped peer are held chunk by chunk (16 KiB) before they are
//! sent (iroh-blobs' throttle events). A node's download caps reach each
//! peer in the sync hello, and the peer paces its uploads to it (`Way::Asked`):
//! the receiver's own pacing alone, on each verified chunk as it arrives,
//! would let what its buffers hold (~300 KB) come at link speed first. That
//! local pacing still holds the total when several peers send at once, and
//! QUIC flow control then holds the senders back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iroh::EndpointId;

pub use super::upload_cap::{MAX_KBPS, MIN_KBPS};

/// Settings: one peer's caps, in kbit/s.
pub const UPLOAD_PREFIX: &str = "max-upload-kbps:";
pub const DOWNLOAD_PREFIX: &str = "max-download-kbps:";
/// How far ahead of its pace a stream may run: one chunk, or this long at
/// the cap, whichever is more (so a fast cap is not held to tiny steps).
const BURST: Duration = Duration::from_millis(50);
const CHUNK_BYTES: u64 = 16 * 1024;
/// The value that lifts a peer's cap.
pub const NO_CAP: &str = "none";
/// With a node-wide download cap, the QUIC receive windows hold this many
/// seconds at the cap (at least `MIN_WINDOW_BYTES`): a sender can run only
/// that far ahead of what the node reads.
const DOWNLOAD_WINDOW_SECONDS: f64 = 0.5;
const MIN_WINDOW_BYTES: u64 = 64 * 1024;

/// A cap in kbit/s as bytes per second, checked against the limits; `what`
/// names it in the error.
pub fn bytes_per_s(kbps: u32, what: &str) -> Result<u64, String> {
    if !(MIN_KBPS..=MAX_KBPS).contains(&kbps) {
        return Err(format!(
            "{what} {kbps}: choose {MIN_KBPS}..={MAX_KBPS} kbit/s"
        ));
    }
    Ok(u64::from(kbps) * 1000 / 8)
}

/// Bytes leave (or arrive) no faster than a rate: each `take` is given a
/// time slot after the ones before it (a virtual schedule, the generic cell
/// rate algorithm), and waits for its slot less the allowed burst.
#[derive(Debug)]
pub struct Pace {
    state: Mutex<Schedule>,
}

#[derive(Debug)]
struct Schedule {
    bytes_per_s: u64,
    /// When the bytes taken so far have all had their time.
    due: Instant,
}

impl Pace {
    pub fn new(bytes_per_s: u64) -> Pace {
        Pace {
            state: Mutex::new(Schedule {
                bytes_per_s: bytes_per_s.max(1),
                due: Instant::now(),
            }),
        }
    }

    fn kbps(&self) -> u64 {
        self.lock().bytes_per_s * 8 / 1000
    }

    fn set_rate(&self, bytes_per_s: u64) {
        self.lock().bytes_per_s = bytes_per_s.max(1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `bytes` taken at `now` must wait.
    fn wait(&self, bytes: u64, now: Instant) -> Duration {
        let mut s = self.lock();
        let rate = s.bytes_per_s as f64;
        let slot = s.due.max(now);
        s.due = slot + Duration::from_secs_f64(bytes as f64 / rate);
        let burst = BURST.max(Duration::from_secs_f64(CHUNK_BYTES as f64 / rate));
        s.due.saturating_duration_since(now).saturating_sub(burst)
    }

    /// Waits until `bytes` may pass.
    pub async fn take(&self, bytes: u64) {
        let wait = self.wait(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Waits until `bytes` may pass every one of `paces`.
pub async fn take_all(paces: &[Arc<Pace>], bytes: u64) {
    for pace in paces {
        pace.take(bytes).await;
    }
}

/// Which way a peer's cap holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Way {
    /// What this node sends the peer.
    Up,
    /// What this node takes from the peer.
    Down,
    /// What the peer asked this node to send it at most (its download caps,
    /// told in the sync hello).
    Asked,
}

impl Way {
    /// The setting that caps `peer` this way (a pace asked is no setting).
    pub fn setting(self, peer: &str) -> Option<String> {
        let prefix = match self {
            Way::Up => UPLOAD_PREFIX,
            Way::Down => DOWNLOAD_PREFIX,
            Way::Asked => return None,
        };
        Some(format!("{prefix}{peer}"))
    }
}

/// A peer's cap setting: kbit/s in range, or `none` (no cap).
pub fn check_kbps_setting(key: &str, value: &str) -> Result<(), String> {
    if value == NO_CAP {
        return Ok(());
    }
    let kbps = value.parse::<u32>().map_err(|_| {
        format!("{key}: give kbit/s ({MIN_KBPS}..={MAX_KBPS}) or {NO_CAP}, not {value:?}")
    })?;
    bytes_per_s(kbps, key).map(|_| ())
}

/// `peer`'s cap one way, from the settings.
pub fn peer_kbps(ctx: &mut crate::request::Context, way: Way, peer: &str) -> Option<u32> {
    let store = ctx.store().ok()?;
    store.setting(&way.setting(peer)?).ok()??.parse().ok()
}

/// The node's download cap and each capped peer's pace.
#[derive(Debug, Default)]
pub struct Caps {
    pub download: Option<Pace>,
    peers: Mutex<HashMap<(Way, EndpointId), Arc<Pace>>>,
}

impl Caps {
    pub fn new(download_kbps: Option<u32>) -> Result<Caps, String> {
        let download = download_kbps
            .map(|k| bytes_per_s(k, "--max-download-kbps"))
            .transpose()?;
        Ok(Caps {
            download: download.map(Pace::new),
            peers: Default::default(),
        })
    }

    /// Notes `peer`'s cap as just read from the settings (`None`: none) and
    /// returns its pace. A changed cap keeps the pace's schedule.
    pub fn set(&self, way: Way, peer: EndpointId, kbps: Option<u32>) -> Option<Arc<Pace>> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(rate) = kbps.and_then(|k| bytes_per_s(k, "").ok()) else {
            peers.remove(&(way, peer));
            return None;
        };
        let pace = peers
            .entry((way, peer))
            .or_insert_with(|| Arc::new(Pace::new(rate)));
        pace.set_rate(rate);
        Some(pace.clone())
    }

    /// Notes the pace `peer` (hex id) asked for in its hello; one out of
    /// range is ignored.
    pub fn asked(&self, peer: &str, kbps: Option<u32>) {
        if let Ok(peer) = peer.parse() {
            self.set(Way::Asked, peer, kbps);
        }
    }

    /// What may go to `peer` now: its upload cap here and the pace it asked.
    pub fn to(&self, peer: &EndpointId) -> Vec<Arc<Pace>> {
        [Way::Up, Way::Asked]
            .into_iter()
            .filter_map(|w| self.of(w, peer))
            .collect()
    }

    /// The node-wide download cap, in kbit/s.
    pub fn download_kbps(&self) -> Option<u32> {
        self.download.as_ref().map(|p| p.kbps() as u32)
    }

    /// The pace to ask a peer for: the lower of `own` (this node's cap on
    /// that peer) and the node-wide download cap.
    pub fn pace_to_ask(&self, own: Option<u32>) -> Option<u32> {
        own.into_iter().chain(self.download_kbps()).min()
    }

    /// The QUIC receive windows a node-wide download cap needs (bytes): a
    /// sender may run only this far ahead of what the node reads.
    pub fn download_window(&self) -> Option<u64> {
        let rate = self.download.as_ref()?.lock().bytes_per_s;
        Some(((rate as f64 * DOWNLOAD_WINDOW_SECONDS) as u64).max(MIN_WINDOW_BYTES))
    }

    /// The caps on stems to and from `peer` in force now, in kbit/s, for
    /// `status`: each way the lowest that holds (node-wide included).
    pub fn report(&self, peer: &EndpointId) -> serde_json::Value {
        let kbps = |pace: &Pace| pace.kbps();
        let up = self.to(peer).iter().map(|p| kbps(p)).min();
        let down = self.of(Way::Down, peer).map(|p| kbps(&p));
        let down = down
            .into_iter()
            .chain(self.download.as_ref().map(kbps))
            .min();
        serde_json::json!({ "up": up, "down": down })
    }

    /// `peer`'s pace as last read from the settings.
    pub fn of(&self, way: Way, peer: &EndpointId) -> Option<Arc<Pace>> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.get(&(way, *peer)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pace_spreads_bytes_at_its_rate_after_a_burst() {
        let pace = Pace::new(100_000); // 800 kbit/s
        let t = Instant::now();
        // The first chunk passes at once (the burst covers it) ...
        assert_eq!(pace.wait(16_384, t), Duration::ZERO);
        // ... and a second second's worth waits about a second.
        let wait = pace.wait(100_000, t);
        let expected = 1.16384 - 0.16384; // due 1.164 s, less one chunk's time
        assert!((wait.as_secs_f64() - expected).abs() < 0.01, "{wait:?}");
        // Later, idle time is not banked beyond the burst.
        let later = t + Duration::from_secs(60);
        assert_eq!(pace.wait(16_384, later), Duration::ZERO);
        assert!(pace.wait(16_384, later) > Duration::from_millis(100));
    }

    #[test]
    fn a_fast_pace_allows_a_burst_of_50_ms() {
        let pace = Pace::new(10_000_000);
        let t = Instant::now();
        assert_eq!(pace.wait(400_000, t), Duration::ZERO, "40 ms of bytes");
        assert!(pace.wait(200_000, t) > Duration::ZERO, "60 ms of bytes");
    }

    #[test]
    fn peer_caps_follow_the_settings() {
        let caps = Caps::new(None).expect("no cap");
        let peer = iroh::SecretKey::from_bytes(&[7; 32]).public();
        assert!(caps.of(Way::Up, &peer).is_none());
        let pace = caps.set(Way::Up, peer, Some(800)).expect("capped");
        assert_eq!(pace.lock().bytes_per_s, 100_000);
        assert!(caps.of(Way::Down, &peer).is_none(), "each way on its own");
        caps.set(Way::Up, peer, Some(1600));
        assert_eq!(pace.lock().bytes_per_s, 200_000, "the same pace, new rate");
        assert!(caps.set(Way::Up, peer, None).is_none());
        assert!(caps.of(Way::Up, &peer).is_none());
        assert!(Caps::new(Some(1)).is_err(), "below the lowest cap");
        // A peer's hello asks for a pace; one out of range is ignored.
        caps.asked(&peer.to_string(), Some(800));
        assert_eq!(caps.to(&peer).len(), 1);
        caps.asked(&peer.to_string(), Some(u32::MAX));
        assert!(caps.to(&peer).is_empty());
        caps.asked("not an id", Some(800));
        caps.set(Way::Up, peer, Some(800));
        caps.asked(&peer.to_string(), Some(400));
        let report = caps.report(&peer);
        assert_eq!(
            (report["up"].as_u64(), report["down"].as_u64()),
            (Some(400), None)
        );
        let window = |kbps| Caps::new(Some(kbps)).expect("in range").download_window();
        assert_eq!(window(800), Some(MIN_WINDOW_BYTES));
        assert_eq!(window(8000), Some(500_000));
        assert_eq!(caps.download_window(), None);
        assert_eq!(
            Caps::new(Some(800)).expect("in range").download_kbps(),
            Some(800)
        );
    }
}
