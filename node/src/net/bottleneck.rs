//! The congestion controller of our own for long paths (sites in other
//! cities and continents). It models the path's bottleneck — the highest
//! delivery rate of the last rounds and the lowest round trip — and paces
//! at that rate: one round trip in eight it probes for more (×1.25), the
//! next it drains what the probe queued (×0.75). Random loss is not its
//! signal: the wrapper in `congestion.rs` tells it of a loss only while
//! losses exceed what noise explains, and a round with such losses ends
//! start-up, or lowers the estimate (at most once every few rounds, since
//! one queue overflow is declared over a round or two).
//!
//! Why not noq's BBRv3 behind that same wrapper (the link emulator's
//! timeline, profile A of `scripts/bench/sync`): after each probe its
//! cruise paced at ~0.9 of the link, a probe-RTT phase halved the window
//! for 0.2 s, and one start-up overshoot kept it at half rate for 3.5 s.

use std::any::Any;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use noq_proto::RttEstimator;
use noq_proto::congestion::{Controller, ControllerMetrics};

/// Pacing gain while starting up: the rate doubles each round (2 / ln 2).
const STARTUP_GAIN: f64 = 2.885;
/// Start-up ends after this many rounds without `STARTUP_GROWTH` more bandwidth.
const STARTUP_FULL_ROUNDS: u32 = 3;
const STARTUP_GROWTH: f64 = 1.25;
/// Pacing gain per phase while cruising, each phase one round trip long:
/// probe, drain what the probe queued, refill the cushion
/// (`QUEUE_CUSHION_PACKETS`: its gain is worked out, not this one), then
/// cruise at the estimate.
const CYCLE: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// The cruise's first phase, after each drain: the refill (no probe
/// straight after draining).
const CYCLE_START: usize = 2;
/// The most the refill phase paces above the estimate.
const REFILL_GAIN_MAX: f64 = 1.25;
/// The longest a draining phase lasts, in round trips.
const DRAIN_MAX_RTTS: u32 = 4;
/// In flight allowed, in bandwidth-delay products: room for acks that come
/// late or in bunches. Also while starting up: start-up's pacing gain
/// alone would queue almost two more (lost where the queue is shorter;
/// measured: 744 packets lost to a 150 ms queue over 3 × 20 MB, stalls
/// while they were resent, 1.22x ideal against 1.17x).
const CWND_GAIN: f64 = 2.0;
/// Rounds the bandwidth estimate remembers.
const BW_ROUNDS: usize = 10;
/// How long a round-trip minimum holds before newer samples replace it
/// (a route that got longer is believed within two of these).
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// A congested round lowers the bandwidth estimate to this share of it.
const BETA: f64 = 0.85;
/// Rounds after a cut in which congestion does not cut again.
const CUT_SPACING_ROUNDS: u64 = 3;
/// Windows in packets: at the start and at least. RFC 9002 suggests 10 at
/// the start; 48 fills a 300 ms, 1 Mbit/s path in the first round trip
/// and a 150 ms, 10 Mbit/s one two rounds sooner. The first window is
/// paced over the handshake's round trip, so it queues little. Measured
/// with `scripts/bench/sync` (medians of 3): profile A 1.13x ideal at 10
/// packets, 1.10x at 48, 1.094x at 64; profile B 1.16–1.17x up to 48, but
/// 1.19x at 64 (the first round overflowed the slow link's queue: drops
/// there doubled).
const INITIAL_PACKETS: u64 = 48;
const MIN_PACKETS: u64 = 4;
/// Extra window for the packets an ack batch releases at once.
const QUANTUM_PACKETS: u64 = 3;
/// Packets kept queued at the bottleneck while cruising, put back in the
/// round trip after each drain. A packet lost on the way leaves the link
/// idle for its time unless another waits behind it: cruising at exactly
/// the estimate over an empty queue, profile B of `scripts/bench/sync`
/// (3 % random loss) had the link idle ~2 % of the time in one-packet
/// holes. Drains still empty the queue, cushion and all: the round-trip
/// minimum, taken over a standing queue only, would count it as path, and
/// each drain would then leave that much more (a version that drained
/// only to the cushion was ~0.15 s faster on B's 18 s, but on a lossless
/// 150 ms link its round-trip minimum read 200 ms after two minutes:
/// `the_queue_cushion_does_not_creep_into_the_round_trip`).
const QUEUE_CUSHION_PACKETS: u64 = 4;
/// Bytes/s paced at least while a `1 / LIGHT_LOAD_SHARE` of the window or
/// less is in flight. noq paces every packet, acks included, and the side
/// that mostly receives measures only its own rare flow-control updates:
/// its estimate (~15 KB/s) held its acks back, and they left in bursts up
/// to 2 s apart, the sender idle in between (profile A of
/// `scripts/bench/sync`, in about one run in two). The acks of a 1 Gbit/s
/// download (one ~60-byte ack per two packets) need 2.5 MB/s. Data sent
/// this fast is a quarter of a window at most before the estimate paces
/// again.
const LIGHT_LOAD_PACING: f64 = 3e6;
const LIGHT_LOAD_SHARE: u64 = 4;
/// Delivery history kept for rate samples: this many smoothed round trips,
/// and at most this many ack batches.
const HISTORY_RTTS: u32 = 4;
const MAX_HISTORY: usize = 4096;

/// The highest delivery rate (bytes/s) of each of the last `BW_ROUNDS` rounds.
#[derive(Debug, Clone, Default)]
struct MaxFilter {
    rounds: [u64; BW_ROUNDS],
    rates: [f64; BW_ROUNDS],
}

impl MaxFilter {
    fn sample(&mut self, round: u64, rate: f64) {
        let slot = round as usize % BW_ROUNDS;
        if self.rounds[slot] != round {
            self.rounds[slot] = round;
            self.rates[slot] = 0.0;
        }
        self.rates[slot] = self.rates[slot].max(rate);
    }

    fn max(&self, round: u64) -> f64 {
        let recent = |r: &u64| *r + BW_ROUNDS as u64 > round;
        let slots = self.rounds.iter().zip(&self.rates);
        slots
            .filter(|(r, _)| recent(r))
            .map(|(_, v)| *v)
            .fold(0.0, f64::max)
    }

    fn cut(&mut self, round: u64, beta: f64) {
        let ceiling = self.max(round) * beta;
        self.rates.iter_mut().for_each(|v| *v = v.min(ceiling));
    }
}

/// The lowest round trip of the current and the previous window.
#[derive(Debug, Clone)]
struct MinRtt {
    current: Duration,
    previous: Duration,
    since: Instant,
}

impl MinRtt {
    fn sample(&mut self, now: Instant, rtt: Duration) {
        if now.saturating_duration_since(self.since) >= MIN_RTT_WINDOW {
            self.previous = self.current;
            self.current = rtt;
            self.since = now;
        } else {
            self.current = self.current.min(rtt);
        }
    }

    fn get(&self) -> Option<Duration> {
        Some(self.current.min(self.previous)).filter(|d| *d != Duration::MAX)
    }
}

/// Where deliveries stood after an ack batch (or when sending resumed).
#[derive(Debug, Clone, Copy)]
struct Mark {
    at: Instant,
    delivered: u64,
    /// When the newest packet acknowledged by then was sent.
    sent: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Startup,
    /// Start-up queued up to one estimate's worth: paced below it until that is gone.
    Drain,
    /// `CYCLE[index]` since `since`.
    Cruise {
        index: usize,
        since: Instant,
    },
}

/// The controller: see the module's comment.
#[derive(Debug, Clone)]
pub struct Bottleneck {
    mtu: u64,
    phase: Phase,
    bw: MaxFilter,
    min_rtt: MinRtt,
    srtt: Duration,
    /// Bytes acknowledged so far, and a mark after each ack batch.
    delivered: u64,
    history: VecDeque<Mark>,
    /// Rounds: one ends when a packet sent after it began is acknowledged.
    round: u64,
    round_end: u64,
    round_ended: bool,
    /// The best delivery rate sampled in the current ack batch, and
    /// whether all of them were taken while the sender ran out of data;
    /// when the newest packet it acknowledged was sent.
    batch_rate: f64,
    batch_sent: Option<Instant>,
    batch_app_limited: bool,
    congested: bool,
    last_cut: Option<u64>,
    full_bw: f64,
    full_rounds: u32,
    in_flight: u64,
    /// The next packet number, and the first one sent after start-up
    /// ended (start-up's overshoot is among the packets before it).
    next_pn: u64,
    startup_end: Option<u64>,
}

impl Bottleneck {
    pub fn new(now: Instant, mtu: u16) -> Bottleneck {
        Bottleneck {
            mtu: u64::from(mtu),
            phase: Phase::Startup,
            bw: MaxFilter::default(),
            min_rtt: MinRtt {
                current: Duration::MAX,
                previous: Duration::MAX,
                since: now,
            },
            srtt: Duration::ZERO,
            delivered: 0,
            history: VecDeque::new(),
            round: 0,
            round_end: 0,
            round_ended: false,
            batch_rate: 0.0,
            batch_sent: None,
            batch_app_limited: true,
            congested: false,
            last_cut: None,
            full_bw: 0.0,
            full_rounds: 0,
            in_flight: 0,
            next_pn: 0,
            startup_end: None,
        }
    }

    /// A packet leaves. When nothing was in flight (the start, or the
    /// sender had nothing to send) the delivery history gets a fresh
    /// mark, so the idle time does not count in rate samples. (Only then:
    /// a mark set while packets are in flight would count their acks in
    /// the next packets' samples, making the path look up to twice as fast.)
    pub fn sent(&mut self, now: Instant, bytes: u64) {
        let idle = self.in_flight == 0;
        self.in_flight += bytes;
        if idle {
            self.history.push_back(Mark {
                at: now,
                delivered: self.delivered,
                sent: now,
            });
        }
    }

    /// A packet sent at `sent` carrying `bytes` was acknowledged.
    pub fn acked(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        srtt: Duration,
    ) {
        self.srtt = srtt;
        self.min_rtt
            .sample(now, now.saturating_duration_since(sent));
        self.delivered += bytes;
        self.batch_sent = self.batch_sent.max(Some(sent));
        // The delivery mark just before the packet left: what was
        // delivered since, over the time since, is the rate it saw — or
        // over the time those packets took to send, if longer: acks that
        // come in bunches must not make the path look faster than we sent.
        // (None if it left before the oldest mark kept: a late ack.)
        let at = self.history.partition_point(|m| m.at <= sent);
        let Some(&mark) = at.checked_sub(1).and_then(|i| self.history.get(i)) else {
            return;
        };
        if mark.delivered >= self.round_end {
            self.round_ended = true;
        }
        let acking = now.saturating_duration_since(mark.at);
        let sending = sent.saturating_duration_since(mark.sent);
        let interval = acking.max(sending).as_secs_f64();
        if interval > 0.0 {
            let rate = (self.delivered - mark.delivered) as f64 / interval;
            self.batch_rate = self.batch_rate.max(rate);
            self.batch_app_limited &= app_limited;
        }
    }

    /// An ack batch is done: the estimates and the phase move on.
    pub fn acks_done(&mut self, now: Instant, in_flight: u64) {
        self.in_flight = in_flight;
        let sent = self.batch_sent.take();
        let last_sent = self.history.back().map(|m| m.sent);
        self.history.push_back(Mark {
            at: now,
            delivered: self.delivered,
            sent: sent.max(last_sent).unwrap_or(now),
        });
        self.prune_history(now);
        let rate = std::mem::take(&mut self.batch_rate);
        let app_limited = std::mem::replace(&mut self.batch_app_limited, true);
        if rate > 0.0 && (!app_limited || rate > self.bandwidth()) {
            self.bw.sample(self.round, rate);
        }
        if std::mem::take(&mut self.round_ended) {
            self.round += 1;
            self.round_end = self.delivered;
            self.end_round(app_limited);
        }
        self.advance(now);
    }

    fn prune_history(&mut self, now: Instant) {
        let keep = self.srtt.max(Duration::from_millis(1)) * HISTORY_RTTS;
        while self.history.len() > MAX_HISTORY
            || self
                .history
                .front()
                .is_some_and(|m| now.saturating_duration_since(m.at) > keep)
        {
            self.history.pop_front();
        }
    }

    fn end_round(&mut self, app_limited: bool) {
        let bw = self.bandwidth();
        if std::mem::take(&mut self.congested) {
            self.on_congested_round();
        } else if self.phase == Phase::Startup && !app_limited && bw > 0.0 {
            if bw >= self.full_bw * STARTUP_GROWTH {
                (self.full_bw, self.full_rounds) = (bw, 0);
            } else {
                self.full_rounds += 1;
                if self.full_rounds >= STARTUP_FULL_ROUNDS {
                    self.end_startup();
                }
            }
        }
    }

    /// Losses above noise, or ECN marks, in the round that just ended.
    fn on_congested_round(&mut self) {
        if self.phase == Phase::Startup {
            // The queue overflowed: the pipe is full, the estimate is right.
            self.end_startup();
        }
        if self.phase == Phase::Drain {
            return;
        }
        let spaced = self
            .last_cut
            .is_none_or(|r| self.round >= r + CUT_SPACING_ROUNDS);
        if spaced {
            self.bw.cut(self.round, BETA);
            self.last_cut = Some(self.round);
        }
    }

    fn advance(&mut self, now: Instant) {
        let Some(min_rtt) = self.min_rtt.get() else {
            return;
        };
        match self.phase {
            Phase::Drain if self.queue_empty() => {
                self.phase = Phase::Cruise {
                    index: CYCLE_START,
                    since: now,
                };
            }
            Phase::Cruise { index, since } if self.phase_done(index, since, now, min_rtt) => {
                self.phase = Phase::Cruise {
                    index: (index + 1) % CYCLE.len(),
                    since: now,
                };
            }
            _ => {}
        }
    }

    /// A phase lasts a round trip; one that drains (gain < 1) lasts until
    /// nothing waits in the queue, up to `DRAIN_MAX_RTTS`: what the probe,
    /// and the noise allowance, queued must not stand.
    fn phase_done(&self, index: usize, since: Instant, now: Instant, min_rtt: Duration) -> bool {
        let elapsed = now.saturating_duration_since(since);
        if CYCLE[index] >= 1.0 {
            return elapsed >= min_rtt;
        }
        (elapsed >= min_rtt && self.queue_empty()) || elapsed >= min_rtt * DRAIN_MAX_RTTS
    }

    /// A loss the wrapper judged to be congestion, or an ECN mark.
    pub fn congestion(&mut self) {
        self.congested = true;
    }

    fn end_startup(&mut self) {
        self.phase = Phase::Drain;
        self.startup_end = Some(self.next_pn);
    }

    /// The first packet number sent after start-up ended (none while it
    /// runs: `restart` clears it).
    pub fn startup_end(&self) -> Option<u64> {
        self.startup_end
    }

    /// Whether packet `pn` left while starting up and start-up is over:
    /// its loss may be start-up's overshoot (the queue it overfilled),
    /// declared a round or more later, when start-up's end acted on it.
    pub fn overshoot(&self, pn: u64) -> bool {
        self.startup_end().is_some_and(|end| pn < end)
    }

    /// Every packet of a stretch lost (the path was gone): start over.
    pub fn restart(&mut self) {
        self.startup_end = None;
        self.bw = MaxFilter::default();
        self.phase = Phase::Startup;
        (self.full_bw, self.full_rounds) = (0.0, 0);
        self.congested = false;
    }

    pub fn set_mtu(&mut self, mtu: u16) {
        self.mtu = u64::from(mtu);
    }

    /// The bottleneck's bandwidth as estimated (bytes/s), 0 before a sample.
    fn bandwidth(&self) -> f64 {
        self.bw.max(self.round)
    }

    /// The path's round trip without a queue (smoothed, until measured).
    fn base_rtt(&self) -> Duration {
        self.min_rtt.get().unwrap_or(self.srtt)
    }

    fn bdp(&self) -> u64 {
        (self.bandwidth() * self.base_rtt().as_secs_f64()) as u64
    }

    /// Nothing in flight beyond what the path holds: no queue of ours.
    fn queue_empty(&self) -> bool {
        self.in_flight <= self.bdp()
    }

    /// The refill's gain: a cushion more than the estimate in a round trip.
    fn refill_gain(&self) -> f64 {
        let bdp = self.bdp();
        if bdp == 0 {
            return 1.0;
        }
        let cushion = (QUEUE_CUSHION_PACKETS * self.mtu) as f64;
        (1.0 + cushion / bdp as f64).min(REFILL_GAIN_MAX)
    }

    fn gain(&self) -> f64 {
        match self.phase {
            Phase::Startup => STARTUP_GAIN,
            Phase::Drain => 1.0 / STARTUP_GAIN,
            Phase::Cruise { index, .. } if index == CYCLE_START => self.refill_gain(),
            Phase::Cruise { index, .. } => CYCLE[index],
        }
    }

    pub fn window(&self) -> u64 {
        let floor = MIN_PACKETS * self.mtu;
        if self.bandwidth() == 0.0 {
            return INITIAL_PACKETS * self.mtu;
        }
        let window = (self.bdp() as f64 * CWND_GAIN) as u64 + QUANTUM_PACKETS * self.mtu;
        match self.phase {
            Phase::Startup => window.max(INITIAL_PACKETS * self.mtu),
            _ => window.max(floor),
        }
    }

    /// Bytes/s to pace at; `None` until a rate was measured (then noq
    /// paces the initial window over a round trip).
    pub fn pacing_rate(&self) -> Option<u64> {
        let mut bw = self.bandwidth();
        if bw <= 0.0 {
            return None;
        }
        if self.phase == Phase::Startup {
            // Never slower than a window per round trip: the first samples
            // come while the application has little to send (the
            // handshake, a request), and start-up paced at a multiple of
            // those ramped from next to nothing (seen: 1.3 KB/s).
            let rtt = self.base_rtt().as_secs_f64();
            if rtt > 0.0 {
                bw = bw.max(self.window() as f64 / rtt);
            }
        }
        let mut rate = bw * self.gain();
        if self.in_flight * LIGHT_LOAD_SHARE <= self.window() {
            rate = rate.max(LIGHT_LOAD_PACING);
        }
        Some((rate as u64).max(1))
    }

    pub fn initial_window(&self) -> u64 {
        INITIAL_PACKETS * self.mtu
    }
}

/// noq's view. Every loss it is told of is congestion: `LossTolerant`
/// in `congestion.rs` passes on only losses above what noise explains.
impl Controller for Bottleneck {
    fn on_packet_sent(&mut self, now: Instant, bytes: u16, pn: u64) {
        self.next_pn = self.next_pn.max(pn + 1);
        self.sent(now, u64::from(bytes));
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        _pn: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.acked(now, sent, bytes, app_limited, rtt.get());
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        _app_limited: bool,
        _largest: Option<u64>,
    ) {
        self.acks_done(now, in_flight);
    }

    fn on_congestion_event(
        &mut self,
        _now: Instant,
        _sent: Instant,
        persistent: bool,
        ecn: bool,
        _lost_bytes: u64,
        _largest_lost_pn: u64,
    ) {
        if persistent {
            self.restart();
        } else if ecn {
            self.congestion();
        }
    }

    fn on_packet_lost(&mut self, _lost_bytes: u16, _pn: u64, _now: Instant) {
        self.congestion();
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.set_mtu(new_mtu);
    }

    fn window(&self) -> u64 {
        Bottleneck::window(self)
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = ControllerMetrics::default();
        m.congestion_window = Bottleneck::window(self);
        m.pacing_rate = self.pacing_rate();
        m.bandwidth_estimate = Some(self.bandwidth() as u64);
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        Bottleneck::initial_window(self)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u64 = 1452;

    /// A link for the controller to drive: `rate` bytes/s behind a
    /// drop-tail queue of `queue` bytes, `rtt` round trip, packets lost at
    /// random (`loss`, before the queue, as the link emulator does) —
    /// losses it is not told of — while queue overflows are congestion.
    struct Link {
        rate: f64,
        rtt: f64,
        queue: f64,
        loss: f64,
        seed: u64,
    }

    #[derive(Default)]
    struct Outcome {
        /// Bytes delivered in each second.
        per_second: Vec<f64>,
        overflows: u64,
        sent: u64,
    }

    /// A packet on its way: when it is acked (or given up on), when it was
    /// sent, whether it arrived.
    type Flight = std::collections::BinaryHeap<std::cmp::Reverse<(u64, u64, bool)>>;

    impl Link {
        fn random(&mut self) -> f64 {
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            (self.seed >> 11) as f64 / (1u64 << 53) as f64
        }

        /// Runs `c` for `seconds` in 0.25 ms steps, always with data to send.
        fn run(&mut self, c: &mut Bottleneck, t0: Instant, seconds: usize) -> Outcome {
            let at = |ns: u64| t0 + Duration::from_nanos(ns);
            let mut out = Outcome {
                per_second: vec![0.0; seconds],
                ..Outcome::default()
            };
            let (mut tokens, mut busy_until, mut in_flight) = (0.0f64, 0.0f64, 0u64);
            let mut flight = Flight::new();
            let step_ns = 250_000;
            for ns in (0..seconds as u64 * 1_000_000_000).step_by(step_ns as usize) {
                let mut acked = false;
                while let Some(&std::cmp::Reverse((due, sent, ok))) = flight.peek() {
                    if due > ns {
                        break;
                    }
                    flight.pop();
                    in_flight -= MTU;
                    if ok {
                        c.acked(
                            at(ns),
                            at(sent),
                            MTU,
                            false,
                            Duration::from_secs_f64(self.rtt),
                        );
                        out.per_second[(ns / 1_000_000_000) as usize] += MTU as f64;
                        acked = true;
                    }
                }
                if acked {
                    c.acks_done(at(ns), in_flight);
                }
                let rate = c.pacing_rate().map_or(f64::INFINITY, |r| r as f64);
                tokens = (tokens + rate * step_ns as f64 * 1e-9).min(2.0 * MTU as f64);
                while in_flight + MTU <= c.window() && tokens >= MTU as f64 {
                    tokens -= MTU as f64;
                    c.sent(at(ns), MTU);
                    in_flight += MTU;
                    out.sent += 1;
                    let (due, ok) = self.carry(ns as f64 * 1e-9, &mut busy_until, &mut out, c);
                    flight.push(std::cmp::Reverse(((due * 1e9) as u64, ns, ok)));
                }
            }
            out
        }

        /// When a packet sent at `t` is acked (or given up on: 1.5 round
        /// trips later), and whether it arrived.
        fn carry(
            &mut self,
            t: f64,
            busy: &mut f64,
            out: &mut Outcome,
            c: &mut Bottleneck,
        ) -> (f64, bool) {
            if self.random() < self.loss {
                return (t + 1.5 * self.rtt, false);
            }
            let start = busy.max(t);
            if (start - t) * self.rate > self.queue {
                out.overflows += 1;
                c.congestion();
                return (t + 1.5 * self.rtt, false);
            }
            *busy = start + MTU as f64 / self.rate;
            (*busy + self.rtt, true)
        }
    }

    /// Profile A of `scripts/bench/sync`: 10 Mbit/s, 150 ms, queue of one
    /// round trip.
    fn profile_a(loss: f64) -> Link {
        Link {
            rate: 1_250_000.0,
            rtt: 0.15,
            queue: 1_250_000.0 * 0.15,
            loss,
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// A fresh controller driven over `link` for `seconds`.
    fn driven(link: &mut Link, seconds: usize) -> (Bottleneck, Outcome) {
        let t0 = Instant::now();
        let mut c = Bottleneck::new(t0, MTU as u16);
        let out = link.run(&mut c, t0, seconds);
        (c, out)
    }

    #[test]
    fn random_loss_leaves_the_link_full() {
        let mut link = profile_a(0.01);
        let (_, out) = driven(&mut link, 20);
        let steady: f64 = out.per_second[5..].iter().sum::<f64>() / 15.0;
        assert!(
            steady > 0.97 * link.rate,
            "{:.0} of {:.0} B/s",
            steady,
            link.rate
        );
        assert!(
            out.overflows * 100 < out.sent,
            "{} of {} packets overflowed the queue",
            out.overflows,
            out.sent
        );
    }

    #[test]
    fn the_queue_cushion_does_not_creep_into_the_round_trip() {
        // Were drains to leave the cushion queued, the round-trip minimum
        // would soon be taken over it, count it as path, and each drain
        // would leave that much more (seen: 200 ms after 120 s on this
        // 150 ms link).
        let mut link = profile_a(0.0);
        let (c, out) = driven(&mut link, 120);
        let packet = Duration::from_secs_f64(MTU as f64 / link.rate);
        let min_rtt = c.min_rtt.get().unwrap();
        assert!(
            min_rtt <= Duration::from_secs_f64(link.rtt) + packet * 4,
            "{min_rtt:?}"
        );
        let late: f64 = out.per_second[110..].iter().sum::<f64>() / 10.0;
        assert!(late > 0.97 * link.rate, "{:?}", out.per_second);
    }

    #[test]
    fn start_up_fills_the_link_within_a_few_seconds() {
        let mut link = profile_a(0.0);
        let (c, out) = driven(&mut link, 4);
        assert!(out.per_second[2] > 0.95 * link.rate, "{:?}", out.per_second);
        assert!(matches!(c.phase, Phase::Cruise { .. }), "{:?}", c.phase);
    }

    #[test]
    fn start_ups_packets_are_told_apart_once_it_ended() {
        let mut link = profile_a(0.0);
        let t0 = Instant::now();
        let mut c = Bottleneck::new(t0, MTU as u16);
        Controller::on_packet_sent(&mut c, t0, MTU as u16, 0);
        assert!(!c.overshoot(0), "still starting up: a loss is news");
        assert_eq!(c.startup_end(), None);
        link.run(&mut c, t0, 4);
        assert!(matches!(c.phase, Phase::Cruise { .. }), "{:?}", c.phase);
        assert_eq!(c.startup_end(), Some(1));
        assert!(c.overshoot(0));
        Controller::on_packet_sent(&mut c, t0, MTU as u16, 1);
        assert!(!c.overshoot(1), "sent after start-up");
        c.restart();
        assert!(!c.overshoot(0), "a new start-up");
    }

    #[test]
    fn start_up_paces_at_least_a_window_per_round_trip() {
        let t0 = Instant::now();
        let mut c = Bottleneck::new(t0, MTU as u16);
        // The handshake's few bytes are the first sample: ~1.5 KB/s.
        let rtt = Duration::from_millis(300);
        c.sent(t0, 450);
        c.acked(t0 + rtt, t0, 450, true, rtt);
        c.acks_done(t0 + rtt, 0);
        let floor = (STARTUP_GAIN * c.window() as f64 / rtt.as_secs_f64()) as u64;
        assert!(c.bandwidth() < 2000.0, "{}", c.bandwidth());
        assert!(
            c.pacing_rate() >= Some(floor),
            "{:?} < {floor}",
            c.pacing_rate()
        );
    }

    #[test]
    fn a_side_that_mostly_receives_paces_its_acks_freely() {
        let t0 = Instant::now();
        let mut c = Bottleneck::new(t0, MTU as u16);
        // A request, then a 60-byte flow-control update now and then,
        // each alone in flight: the estimate is tiny.
        let rtt = Duration::from_millis(150);
        let mut now = t0;
        for _ in 0..20 {
            c.sent(now, 60);
            now += rtt;
            c.acked(now, now - rtt, 60, false, rtt);
            c.acks_done(now, 0);
            now += Duration::from_millis(500);
        }
        assert!(c.bandwidth() < 1000.0, "{}", c.bandwidth());
        // Acks of a 1 Gbit/s download: 42 000 a second of ~60 bytes.
        let acks = 42_000 * 60;
        assert!(c.pacing_rate() >= Some(acks), "{:?}", c.pacing_rate());
        // With its window full, the estimate paces it again.
        c.sent(now, c.window());
        assert!(c.pacing_rate() < Some(10_000), "{:?}", c.pacing_rate());
    }

    #[test]
    fn a_narrower_link_is_followed_down() {
        let mut link = profile_a(0.0);
        let t0 = Instant::now();
        let mut c = Bottleneck::new(t0, MTU as u16);
        link.run(&mut c, t0, 5);
        // Another flow takes half the link: the queue overflows until the
        // estimate comes down to what is left.
        link.rate /= 2.0;
        let out = link.run(&mut c, t0 + Duration::from_secs(5), 10);
        let late: f64 = out.per_second[5..].iter().sum::<f64>() / 5.0;
        assert!(late > 0.9 * link.rate, "{late:.0} of {:.0}", link.rate);
        assert!(c.bandwidth() < 1.1 * link.rate, "{:.0} B/s", c.bandwidth());
    }

    #[test]
    fn the_bandwidth_estimate_keeps_the_best_recent_round() {
        let mut f = MaxFilter::default();
        f.sample(1, 100.0);
        f.sample(2, 300.0);
        f.sample(3, 200.0);
        assert_eq!(f.max(3), 300.0);
        assert_eq!(f.max(2 + BW_ROUNDS as u64), 200.0, "round 2 aged out");
        f.cut(3, 0.5);
        assert_eq!(f.max(3), 150.0);
    }

    #[test]
    fn the_round_trip_minimum_expires() {
        let t0 = Instant::now();
        let mut m = MinRtt {
            current: Duration::MAX,
            previous: Duration::MAX,
            since: t0,
        };
        assert_eq!(m.get(), None);
        m.sample(t0, Duration::from_millis(150));
        m.sample(t0 + MIN_RTT_WINDOW, Duration::from_millis(200));
        assert_eq!(m.get(), Some(Duration::from_millis(150)), "one window back");
        m.sample(t0 + 2 * MIN_RTT_WINDOW, Duration::from_millis(210));
        assert_eq!(m.get(), Some(Duration::from_millis(200)));
    }
}
