//! What noq's pacer loses at low rates, measured and made up for. Below
//! ~1.2 Mbit/s its token bucket holds one packet (10 ms of the rate, at
//! least one packet), so a timer that fires late loses the tokens of the
//! lateness: at 1 Mbit/s (a packet every 12 ms) the link emulator saw only
//! ~90 % of the paced rate leave. `PacerSlack` compares what was sent with
//! what the rate allowed over stretches where nothing else held the
//! sender back, and raises the rate by the share that went missing.

use std::time::{Duration, Instant};

/// The most the rate is raised by.
const MAX_FACTOR: f64 = 1.25;
/// A measuring stretch: at least this long and this many packets.
const STRETCH: Duration = Duration::from_millis(250);
const STRETCH_PACKETS: u32 = 16;
/// A send later than this many of the rate's packet intervals after the
/// previous one means the sender had nothing to send: not the pacer's doing.
const GAP_INTERVALS: f64 = 4.0;

#[derive(Debug, Clone, Copy)]
pub struct PacerSlack {
    factor: f64,
    since: Option<Instant>,
    last: Option<Instant>,
    /// Bytes the (uncorrected) rate allowed, and bytes sent, since `since`.
    allowed: f64,
    sent: f64,
    packets: u32,
    /// Something else held the sender back in this stretch (the window,
    /// no data): it does not count.
    held: bool,
}

impl Default for PacerSlack {
    fn default() -> Self {
        PacerSlack {
            factor: 1.0,
            since: None,
            last: None,
            allowed: 0.0,
            sent: 0.0,
            packets: 0,
            held: false,
        }
    }
}

impl PacerSlack {
    /// What to multiply the controller's pacing rate by.
    pub fn factor(&self) -> f64 {
        self.factor
    }

    /// The window or the application held the sender back.
    pub fn held(&mut self) {
        self.held = true;
    }

    /// A packet of `bytes` left at `now`, the controller's rate being
    /// `rate` bytes/s (before this correction; `None`: no pacing rate).
    pub fn sent(&mut self, now: Instant, bytes: u16, rate: Option<u64>) {
        let Some(rate) = rate.filter(|r| *r > 0).map(|r| r as f64) else {
            *self = PacerSlack {
                factor: self.factor,
                ..PacerSlack::default()
            };
            return;
        };
        let (Some(since), Some(last)) = (self.since, self.last) else {
            self.start(now);
            return;
        };
        let dt = now.saturating_duration_since(last).as_secs_f64();
        if dt * rate * self.factor > GAP_INTERVALS * f64::from(bytes) {
            self.held = true;
        }
        self.allowed += rate * dt;
        self.sent += f64::from(bytes);
        self.packets += 1;
        self.last = Some(now);
        if now.saturating_duration_since(since) >= STRETCH && self.packets >= STRETCH_PACKETS {
            self.judge();
            self.start(now);
        }
    }

    fn start(&mut self, now: Instant) {
        (self.since, self.last) = (Some(now), Some(now));
        (self.allowed, self.sent, self.packets, self.held) = (0.0, 0.0, 0, false);
    }

    /// allowed / sent is 1 / (what the pacer delivers × the factor): the
    /// factor moves halfway (in ratio) toward making it 1.
    fn judge(&mut self) {
        if self.held || self.sent <= 0.0 {
            return;
        }
        let ratio = self.allowed / self.sent;
        self.factor = (self.factor * ratio.sqrt()).clamp(1.0, MAX_FACTOR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u16 = 1452;

    /// A pacer at `rate` that wakes `late` after each packet is due, for `secs`.
    fn run(slack: &mut PacerSlack, rate: f64, late: Duration, secs: f64) -> Instant {
        let mut t = Instant::now();
        let end = t + Duration::from_secs_f64(secs);
        while t < end {
            slack.sent(t, MTU, Some(rate as u64));
            let due = f64::from(MTU) / (rate * slack.factor());
            t += Duration::from_secs_f64(due) + late;
        }
        t
    }

    #[test]
    fn a_pacer_that_wakes_late_is_made_up_for() {
        let mut slack = PacerSlack::default();
        // 1 Mbit/s, each wake-up 1 ms late: 11.6 ms becomes 12.6 ms.
        run(&mut slack, 125_000.0, Duration::from_millis(1), 10.0);
        let expected = (f64::from(MTU) / 125_000.0 + 0.001) / (f64::from(MTU) / 125_000.0);
        let f = slack.factor();
        assert!(
            (f - expected).abs() < 0.02,
            "factor {f}, expected about {expected}"
        );
    }

    #[test]
    fn a_pacer_on_time_is_left_alone() {
        let mut slack = PacerSlack::default();
        run(&mut slack, 125_000.0, Duration::ZERO, 10.0);
        assert!((slack.factor() - 1.0).abs() < 0.01, "{}", slack.factor());
    }

    #[test]
    fn stretches_where_the_sender_was_held_do_not_count() {
        let mut slack = PacerSlack::default();
        let mut t = Instant::now();
        // A packet every 50 ms at a rate allowing one per 11.6 ms: the
        // sender had nothing more to send.
        for _ in 0..200 {
            slack.sent(t, MTU, Some(125_000));
            t += Duration::from_millis(50);
        }
        assert_eq!(slack.factor(), 1.0);
        // Held by the window, packets on time or not: no change either.
        let mut slack = PacerSlack::default();
        let mut t = Instant::now();
        for _ in 0..200 {
            slack.held();
            slack.sent(t, MTU, Some(125_000));
            t += Duration::from_millis(13);
        }
        assert_eq!(slack.factor(), 1.0);
    }

    #[test]
    fn the_correction_is_bounded() {
        let mut slack = PacerSlack::default();
        run(&mut slack, 125_000.0, Duration::from_millis(8), 20.0);
        assert_eq!(slack.factor(), MAX_FACTOR);
    }
}
