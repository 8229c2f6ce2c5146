//! Congestion control for links that lose packets to noise. On a long
//! path, `Bottleneck` (ours, `bottleneck.rs`) paces at the path's measured
//! bottleneck bandwidth. `LossTolerant` hands it a packet's loss only while
//! the recent loss rate exceeds what noise explains (`TOLERATED_LOSS`):
//! random loss does not slow the transfer, while a queue overflowing (real
//! congestion: losses in bursts well above that rate) still reaches it.
//! Persistent congestion (a dead path) always does. And since the
//! bandwidth is measured by what arrives, rate and window are scaled up by
//! the share noise takes (`lossless`).
//!
//! Measured by `scripts/bench/sync` (see ARCHITECTURE.md for the figures
//! against noq's BBRv3 — which this wrapper drove before — and TCP).
//!
//! Short paths (`SHORT_PATH_RTT`) are driven by cubic instead; both
//! controllers see every event, so either can take over at any time.

use std::any::Any;
use std::sync::Arc;

use noq_proto::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use std::time::{Duration, Instant};

use noq_proto::RttEstimator;

use super::bottleneck::Bottleneck;
use super::pacer_slack::PacerSlack;
use super::upload_cap::{Share, UploadCap};

/// Loss rate a link may show from noise alone. Above it, losses count as
/// congestion. The lossy profile of our benchmark has 3 %.
const TOLERATED_LOSS: f64 = 0.05;
/// Packets per measuring epoch: the rate is taken over the last one or two.
const EPOCH_PACKETS: u64 = 256;
/// A path whose round trip never went below this is long (another city or
/// continent): `Bottleneck` drives it. Shorter paths — the same room,
/// building or city (light in fibre covers ~200 km in 1 ms) — rarely lose
/// packets to noise, and there pacing leaves the link or the CPU idle
/// (`scripts/bench/blobs`: 200 MB/s on loopback against cubic's 350 MB/s),
/// so cubic drives them. 5 ms, not 2: a connection's first samples are
/// its handshake's, and a peer busy right then (just started, checking
/// its partial stems) read 2–3.5 ms on a 0.1 ms link; `Bottleneck`'s own
/// queue then kept every later sample above 2 ms, so such a connection
/// stayed paced for good, in small GSO batches (~3 datagrams per send on
/// a 40 Mbit/s link against ~7 under cubic: `sync::an_interrupted_stem_
/// download_resumes…` counted 0.6 % more bytes on the wire).
const SHORT_PATH_RTT: Duration = Duration::from_millis(5);

/// Builds our controllers (`Bottleneck` and cubic) wrapped in
/// `LossTolerant`, each under the node's upload cap if it has one.
#[derive(Debug, Default)]
pub struct Factory {
    short: Arc<CubicConfig>,
    cap: Option<Arc<UploadCap>>,
}

impl Factory {
    pub fn new(cap: Option<Arc<UploadCap>>) -> Self {
        Factory {
            short: Default::default(),
            cap,
        }
    }
}

impl ControllerFactory for Factory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(LossTolerant {
            inner: Bottleneck::new(now, current_mtu),
            short: self.short.clone().build(now, current_mtu),
            min_rtt: Duration::MAX,
            losses: LossRate::default(),
            startup_end: None,
            share: self.cap.as_ref().map(Share::of),
            slack: PacerSlack::default(),
        })
    }
}

/// Packets sent and lost in the current and the previous epoch.
#[derive(Debug, Clone, Copy, Default)]
struct LossRate {
    sent: u64,
    lost: u64,
    prev_sent: u64,
    prev_lost: u64,
}

impl LossRate {
    fn sent(&mut self) {
        self.sent += 1;
        if self.sent >= EPOCH_PACKETS {
            (self.prev_sent, self.prev_lost) = (self.sent, self.lost);
            (self.sent, self.lost) = (0, 0);
        }
    }

    /// The recent loss rate, up to what noise explains.
    fn noise(&self) -> f64 {
        let sent = (self.sent + self.prev_sent).max(EPOCH_PACKETS);
        ((self.lost + self.prev_lost) as f64 / sent as f64).min(TOLERATED_LOSS)
    }

    /// Notes a loss; `true` if losses now exceed what noise explains.
    fn lost(&mut self) -> bool {
        self.lost += 1;
        let sent = (self.sent + self.prev_sent).max(EPOCH_PACKETS);
        (self.lost + self.prev_lost) as f64 > sent as f64 * TOLERATED_LOSS
    }
}

#[derive(Debug)]
struct LossTolerant {
    inner: Bottleneck,
    /// Cubic, fed every event too, in charge while the path is short.
    short: Box<dyn Controller>,
    min_rtt: Duration,
    losses: LossRate,
    /// `Bottleneck::startup_end` when last looked at.
    startup_end: Option<u64>,
    /// Its place under the node's upload cap, if any.
    share: Option<Share>,
    /// What noq's pacer loses at low rates, made up for.
    slack: PacerSlack,
}

impl LossTolerant {
    /// Whether cubic drives: the path has proved short.
    fn on_short_path(&self) -> bool {
        self.min_rtt < SHORT_PATH_RTT
    }

    /// The long path's pacing rate, noise made up for; `None` on a short path.
    fn long_path_rate(&self) -> Option<u64> {
        if self.on_short_path() {
            return None;
        }
        let rate = self.inner.pacing_rate()?;
        Some(lossless(rate, self.losses.noise()))
    }

    /// When `Bottleneck`'s start-up ends, the loss rate starts afresh: the
    /// queue start-up overfilled is not noise, and kept in the rate it
    /// made random losses look like congestion for the next several
    /// seconds (profile B of `scripts/bench/sync`: three cuts to 0.85 in
    /// the 3 s after start-up, the link 15–25 % idle meanwhile). Called
    /// after each ack batch: start-up ends in one.
    fn note_startup_end(&mut self) {
        let end = self.inner.startup_end();
        if end != self.startup_end {
            self.startup_end = end;
            self.losses = LossRate::default();
        }
    }

    fn both(&mut self, mut event: impl FnMut(&mut dyn Controller)) {
        event(&mut self.inner);
        event(self.short.as_mut());
    }
}

impl Controller for LossTolerant {
    fn on_sent(&mut self, now: Instant, bytes: u64, largest_pn: u64) {
        self.both(|c| c.on_sent(now, bytes, largest_pn));
    }

    fn on_packet_sent(&mut self, now: Instant, bytes: u16, pn: u64) {
        self.losses.sent();
        self.slack.sent(now, bytes, self.long_path_rate());
        if let Some(share) = &mut self.share {
            share.sent(now, u64::from(bytes));
        }
        self.both(|c| c.on_packet_sent(now, bytes, pn));
    }

    fn on_cwnd_limited(&mut self) {
        self.slack.held();
        self.both(|c| c.on_cwnd_limited());
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        pn: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.min_rtt = self.min_rtt.min(rtt.min());
        self.both(|c| c.on_ack(now, sent, bytes, pn, app_limited, rtt));
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest: Option<u64>,
    ) {
        if app_limited {
            self.slack.held();
        }
        self.both(|c| c.on_end_acks(now, in_flight, app_limited, largest));
        self.note_startup_end();
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        persistent: bool,
        ecn: bool,
        lost_bytes: u64,
        largest_lost_pn: u64,
    ) {
        // `Bottleneck` acts here only on ECN marks and on persistent
        // congestion: both are congestion, never noise. Cubic halves its
        // window on any loss, as it should on a short path.
        self.both(|c| {
            c.on_congestion_event(now, sent, persistent, ecn, lost_bytes, largest_lost_pn)
        });
    }

    fn on_packet_lost(&mut self, lost_bytes: u16, pn: u64, now: Instant) {
        // Start-up's overshoot ended start-up already; counted again (in
        // the loss rate, or as congestion) it would cut the estimate.
        if !self.inner.overshoot(pn) && self.losses.lost() {
            self.inner.on_packet_lost(lost_bytes, pn, now);
        }
        self.short.on_packet_lost(lost_bytes, pn, now);
    }

    fn on_spurious_congestion_event(&mut self) {
        self.both(|c| c.on_spurious_congestion_event());
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.both(|c| c.on_mtu_update(new_mtu));
    }

    fn on_ack_frequency_update(&mut self, threshold: u64, max_ack_delay: Duration) {
        self.both(|c| c.on_ack_frequency_update(threshold, max_ack_delay));
    }

    fn window(&self) -> u64 {
        if self.on_short_path() {
            return self.short.window();
        }
        lossless(Bottleneck::window(&self.inner), self.losses.noise())
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = if self.on_short_path() {
            self.short.metrics()
        } else {
            let mut m = self.inner.metrics();
            m.congestion_window = lossless(m.congestion_window, self.losses.noise());
            m.pacing_rate = self
                .long_path_rate()
                .map(|r| (r as f64 * self.slack.factor()) as u64);
            m
        };
        if let Some(share) = &self.share {
            m.pacing_rate = Some(share.limit(m.pacing_rate));
        }
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(LossTolerant {
            inner: self.inner.clone(),
            short: self.short.clone_box(),
            min_rtt: self.min_rtt,
            losses: self.losses,
            startup_end: self.startup_end,
            share: self.share.clone(),
            slack: self.slack,
        })
    }

    fn initial_window(&self) -> u64 {
        Bottleneck::initial_window(&self.inner)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// `Bottleneck` measures the path by what arrives; packets lost to noise had
/// used the link all the same, so its rate and window are scaled up by the
/// share noise took — else the link idles by that share.
fn lossless(value: u64, noise: f64) -> u64 {
    (value as f64 / (1.0 - noise)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_tolerated_and_bursts_are_not() {
        let mut r = LossRate::default();
        // 2 % random loss over many epochs: never passed on.
        for i in 0..10_000u64 {
            r.sent();
            if i % 50 == 0 {
                assert!(!r.lost(), "packet {i}");
            }
        }
        // A burst: 20 losses among the next 100 packets.
        let mut passed = 0;
        for i in 0..100u64 {
            r.sent();
            if i % 5 == 0 && r.lost() {
                passed += 1;
            }
        }
        assert!(passed > 0, "a burst is passed on");
    }

    #[test]
    fn noise_is_made_up_for_in_rate_and_window() {
        assert_eq!(lossless(970_000, 0.03), 1_000_000);
        assert_eq!(lossless(1_000, 0.0), 1_000);
        let mut r = LossRate::default();
        for i in 0..1_000u64 {
            r.sent();
            if i % 20 == 0 {
                r.lost();
            }
        }
        assert!((r.noise() - 0.05).abs() < 0.01, "{}", r.noise());
        for _ in 0..100 {
            r.lost(); // congestion: more than noise, capped at what noise explains
        }
        assert_eq!(r.noise(), TOLERATED_LOSS);
    }

    #[test]
    fn the_first_losses_of_a_connection_are_judged_against_a_full_epoch() {
        let mut r = LossRate::default();
        r.sent();
        assert!(!r.lost(), "one early loss is not congestion");
    }

    fn controller(cap: Option<Arc<UploadCap>>) -> LossTolerant {
        let factory = Arc::new(Factory::new(cap));
        let c = factory.build(Instant::now(), 1452).into_any();
        *c.downcast::<LossTolerant>().expect("a LossTolerant")
    }

    #[test]
    fn cubic_drives_a_short_path_and_ours_a_long_one() {
        let mut c = controller(None);
        assert_eq!(
            c.window(),
            c.inner.window(),
            "ours until a round trip shows the path short"
        );
        c.min_rtt = Duration::from_micros(300);
        assert!(c.on_short_path());
        assert!(
            c.metrics().pacing_rate.is_none(),
            "cubic sets no rate of its own"
        );
        assert_eq!(c.window(), c.short.window());
        c.min_rtt = SHORT_PATH_RTT;
        assert!(!c.on_short_path(), "{SHORT_PATH_RTT:?} is a long path");
    }

    #[test]
    fn a_short_path_stays_under_the_upload_cap() {
        let cap = UploadCap::new(800).expect("in range");
        let mut c = controller(Some(cap));
        c.min_rtt = Duration::from_micros(300);
        assert_eq!(c.metrics().pacing_rate, Some(100_000), "800 kbit/s");
    }
}
