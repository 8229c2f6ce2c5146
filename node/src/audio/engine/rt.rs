//! What runs inside the device callbacks (and, for WAV files, on the
//! clock thread that stands in for them). Real-time code: no allocation,
//! no locks, no logging, no I/O — samples move between the device buffer
//! and preallocated lock-free rings, counters are atomics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use cpal::{FromSample, Sample};
use meshstudio_codec::MidiEvent;
use rtrb::{Consumer, Producer};
use rustysynth::Synthesizer;

use crate::audio::midi_in::Arrival;
use crate::audio::render::CHANNELS;
use crate::audio::synth::play_event;

/// Callbacks whose timestamps are kept (the first ones of a stream).
const MARKS: usize = 64;
/// The first callbacks come before the stream really runs (an output's
/// delay reads 0 until then): they are left out of the estimate.
const SKIP_MARKS: usize = 8;

/// A stream's first callbacks and its latest ones: when each one's first
/// frame is heard (or was captured) and how many frames came before it.
/// From these, when the stream's frame 0 was — a median, so one late
/// callback does not move it — and, from how that estimate moves between
/// the first callbacks and the latest, how fast the device really runs.
pub struct Marks {
    ts_ns: [AtomicU64; MARKS],
    frames: [AtomicU64; MARKS],
    count: AtomicUsize,
    /// The latest `MARKS` callbacks, written round robin.
    recent_ts_ns: [AtomicU64; MARKS],
    recent_frames: [AtomicU64; MARKS],
    total: AtomicUsize,
    /// When the first and the latest callbacks ran (not when their audio
    /// is heard or was captured): the device's pace. A sound server's
    /// latency estimates move by milliseconds during a stream (measured on
    /// PulseAudio: hundreds of ppm over 30 s), its callbacks keep time.
    first_call_ns: [AtomicU64; MARKS],
    recent_call_ns: [AtomicU64; MARKS],
}

impl Default for Marks {
    fn default() -> Self {
        let zeros = || std::array::from_fn(|_| AtomicU64::new(0));
        Marks {
            ts_ns: zeros(),
            frames: zeros(),
            count: AtomicUsize::new(0),
            recent_ts_ns: zeros(),
            recent_frames: zeros(),
            total: AtomicUsize::new(0),
            first_call_ns: zeros(),
            recent_call_ns: zeros(),
        }
    }
}

/// The median frame-0 time (ns) of `n` marks, and their median frame count.
/// Allocation-free: the callbacks use it too.
fn median_origin(
    ts: &[AtomicU64; MARKS],
    frames: &[AtomicU64; MARKS],
    slots: impl Iterator<Item = usize>,
    rate: u32,
) -> Option<(f64, f64)> {
    let mut origins = [0.0f64; MARKS];
    let mut counts = [0.0f64; MARKS];
    let mut n = 0;
    for i in slots.take(MARKS) {
        let f = frames[i].load(Ordering::Relaxed) as f64;
        origins[n] = ts[i].load(Ordering::Relaxed) as f64 - f * 1e9 / f64::from(rate);
        counts[n] = f;
        n += 1;
    }
    let (origins, counts) = (&mut origins[..n], &mut counts[..n]);
    origins.sort_unstable_by(f64::total_cmp);
    counts.sort_unstable_by(f64::total_cmp);
    Some((*origins.get(n / 2)?, counts[n / 2]))
}

impl Marks {
    /// Called by the one callback that owns this stream: `ts_ns` when its
    /// first frame is heard or was captured, `call_ns` when it runs.
    fn record(&self, ts_ns: u64, call_ns: u64, frames_before: u64) {
        let i = self.count.load(Ordering::Relaxed);
        if i < MARKS {
            self.ts_ns[i].store(ts_ns, Ordering::Relaxed);
            self.first_call_ns[i].store(call_ns, Ordering::Relaxed);
            self.frames[i].store(frames_before, Ordering::Relaxed);
            self.count.store(i + 1, Ordering::Release);
        }
        let t = self.total.load(Ordering::Relaxed);
        self.recent_ts_ns[t % MARKS].store(ts_ns, Ordering::Relaxed);
        self.recent_call_ns[t % MARKS].store(call_ns, Ordering::Relaxed);
        self.recent_frames[t % MARKS].store(frames_before, Ordering::Relaxed);
        self.total.store(t + 1, Ordering::Release);
    }

    /// The frame-0 estimate from the latest callbacks (and their median
    /// frame count), once they are all past the first ones.
    fn recent_origin(&self, rate: u32) -> Option<(f64, f64)> {
        let total = self.total.load(Ordering::Acquire);
        if total < 2 * MARKS {
            return None;
        }
        median_origin(&self.recent_ts_ns, &self.recent_frames, 0..MARKS, rate)
    }

    /// How far the device's real rate is from `rate` against the clock its
    /// callbacks run by, as a fraction (+1e-4: 100 ppm fast): a device at
    /// rate × (1 + e) makes the frame-0 estimate move by −frames × e / rate.
    /// `None` until the latest callbacks are `min_frames` past the first.
    pub fn rate_error(&self, rate: u32, min_frames: u64) -> Option<f64> {
        let n = self.count();
        let from = if n > SKIP_MARKS { SKIP_MARKS } else { 0 };
        let first = median_origin(&self.first_call_ns, &self.frames, from..n, rate);
        let (first, first_frames) = first?;
        if self.total.load(Ordering::Acquire) < 2 * MARKS {
            return None;
        }
        let recent = median_origin(&self.recent_call_ns, &self.recent_frames, 0..MARKS, rate);
        let (last, last_frames) = recent?;
        let apart = last_frames - first_frames;
        if apart < min_frames as f64 {
            return None;
        }
        Some(-(last - first) * f64::from(rate) / (apart * 1e9))
    }

    /// Callbacks recorded so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// When frame 0 was, in ns on the stream clock: the median over the
    /// callbacks recorded so far (the first few skipped while later ones
    /// exist). Measured on PulseAudio: output estimates agree to 0.02 ms,
    /// capture ones saw-tooth over ~3 ms (the server delivers captured
    /// audio in blocks), so one callback's timestamp is not enough.
    /// Allocation-free: the callbacks use it too (see `DeviceClock`).
    pub fn origin_ns(&self, rate: u32) -> Option<f64> {
        let n = self.count();
        let from = if n > SKIP_MARKS { SKIP_MARKS } else { 0 };
        median_origin(&self.ts_ns, &self.frames, from..n, rate).map(|(origin, _)| origin)
    }
}

/// Keeps a stream's frame count on its device's clock. Once the stream's
/// frame-0 time is known (after its first `MARKS` callbacks), a callback
/// stamped later than its frame count says means the device lost frames
/// (an xrun: the ALSA stream was restarted); the caller then moves its
/// count on by that many, so frame n stays timeline frame n and a take
/// recorded against it still lines up. The estimate is renewed from the
/// latest callbacks every `MARKS` callbacks: a device whose clock runs a
/// little slow (100 ppm is common) drifts slowly and is no xrun; a lost
/// buffer jumps at once.
#[derive(Default)]
pub struct DeviceClock {
    origin_ns: Option<f64>,
    since_renewed: usize,
}

impl DeviceClock {
    /// Frames lost before a callback stamped `ts_ns` with `before` frames
    /// counted so far; 0 unless beyond `tolerance` frames (timestamp jitter).
    fn lost(&mut self, marks: &Marks, rate: u32, ts_ns: u64, before: u64, tolerance: u64) -> u64 {
        if self.origin_ns.is_none() && marks.count() >= MARKS {
            self.origin_ns = marks.origin_ns(rate);
        }
        self.since_renewed += 1;
        if self.since_renewed >= MARKS {
            self.since_renewed = 0;
            if let Some((origin, _)) = marks.recent_origin(rate) {
                self.origin_ns = Some(origin);
            }
        }
        let Some(origin) = self.origin_ns else {
            return 0;
        };
        let expected = origin + before as f64 * 1e9 / f64::from(rate);
        let late = (ts_ns as f64 - expected) * f64::from(rate) / 1e9;
        if late > tolerance as f64 {
            late.round() as u64
        } else {
            0
        }
    }
}

/// Timestamp jitter tolerated before frames count as lost: capture times
/// saw-tooth over ~3 ms here, playback times agree to 0.02 ms.
const CAPTURE_TOLERANCE_MS: u64 = 6;
const PLAYBACK_TOLERANCE_MS: u64 = 2;

/// What the callbacks tell the rest of the engine, all lock-free.
#[derive(Default)]
pub struct Shared {
    pub in_marks: Marks,
    pub out_marks: Marks,
    /// The devices' latest latency estimates (callback − capture, playback − callback), ns.
    pub in_latency_ns: AtomicU64,
    pub out_latency_ns: AtomicU64,
    pub in_frames: AtomicU64,
    pub out_frames: AtomicU64,
    /// Input frames dropped because the disk thread fell behind (overruns).
    pub overrun_frames: AtomicU64,
    /// Output frames played as silence because the feeder fell behind (underruns).
    pub underrun_frames: AtomicU64,
    /// Callbacks that hit an over- or underrun.
    pub xruns: AtomicU64,
    /// Monitored frames the performer's output found missing (silence).
    pub monitor_short_frames: AtomicU64,
    /// Frames the devices lost (xruns), made up for to keep the timeline.
    pub lost_in_frames: AtomicU64,
    pub lost_out_frames: AtomicU64,
    /// The feeder has nothing more to play: silence after this is no underrun.
    pub feeder_done: AtomicBool,
    /// MIDI messages played, and those the take's ring had no room for.
    pub midi_events: AtomicU64,
    pub midi_dropped: AtomicU64,
}

/// Frames a stream must run past its first callbacks before its rate is
/// judged: timestamps jitter by ~0.1 ms in a median, so 30 s resolves
/// a few ppm.
pub const DRIFT_MIN_SECONDS: u64 = 30;

impl Shared {
    /// Output frames per input frame as the two devices really run (both
    /// at their nominal rates): how a take's frames map onto the output's
    /// timeline. `None` until both streams have run `DRIFT_MIN_SECONDS`.
    pub fn clock_ratio(&self, input_rate: u32) -> Option<f64> {
        let out_rate = super::device::ENGINE_RATE;
        let seconds = |rate: u32| DRIFT_MIN_SECONDS * u64::from(rate);
        let e_in = self.in_marks.rate_error(input_rate, seconds(input_rate))?;
        let e_out = self.out_marks.rate_error(out_rate, seconds(out_rate))?;
        Some((1.0 + e_out) / (1.0 + e_in))
    }

    /// When the input's frame 0 was captured minus when the output's frame
    /// 0 was heard (s), once both streams have run a little.
    pub fn offset_seconds(&self, input_rate: u32) -> Option<f64> {
        let c0 = self.in_marks.origin_ns(input_rate)?;
        let p0 = self.out_marks.origin_ns(super::device::ENGINE_RATE)?;
        Some((c0 - p0) / 1e9)
    }
}

/// The input side: device frames → the take ring (1 or 2 channels) and,
/// when monitoring, the monitor ring (stereo).
pub struct Capture {
    pub take: Option<Producer<f32>>,
    pub monitor: Option<Producer<f32>>,
    /// Channels the device delivers and channels the take keeps (≤ 2).
    pub device_channels: usize,
    pub take_channels: usize,
    pub shared: Arc<Shared>,
    /// The device's rate and clock, to notice frames it lost.
    pub rate: u32,
    pub clock: DeviceClock,
}

impl Capture {
    /// Samples the take ring can still take (all of them without a take).
    pub fn room(&self) -> usize {
        self.take.as_ref().map_or(usize::MAX, Producer::slots)
    }

    /// One callback's worth of interleaved device samples.
    pub fn process<T>(&mut self, data: &[T], capture_ns: u64, latency_ns: u64)
    where
        T: Sample,
        f32: FromSample<T>,
    {
        let ch = self.device_channels.max(1);
        let frames = data.len() / ch;
        let mut before = self.shared.in_frames.load(Ordering::Relaxed);
        let tolerance = u64::from(self.rate) * CAPTURE_TOLERANCE_MS / 1000;
        let lost = self.clock.lost(
            &self.shared.in_marks,
            self.rate,
            capture_ns,
            before,
            tolerance,
        );
        if lost > 0 {
            self.fill_lost(lost);
            before += lost;
        }
        self.shared
            .in_frames
            .store(before + frames as u64, Ordering::Relaxed);
        self.shared
            .in_marks
            .record(capture_ns, capture_ns + latency_ns, before);
        self.shared
            .in_latency_ns
            .store(latency_ns, Ordering::Relaxed);
        let sample = |f: usize, c: usize| f32::from_sample(data[f * ch + c.min(ch - 1)]);
        if let Some(take) = &mut self.take {
            let keep = self.take_channels;
            let room = take.slots() / keep;
            let n = frames.min(room);
            if let Ok(chunk) = take.write_chunk_uninit(n * keep) {
                chunk.fill_from_iter((0..n * keep).map(|i| sample(i / keep, i % keep)));
            }
            if n < frames {
                let lost = (frames - n) as u64;
                self.shared
                    .overrun_frames
                    .fetch_add(lost, Ordering::Relaxed);
                self.shared.xruns.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(monitor) = &mut self.monitor {
            // Monitoring that cannot keep up drops frames: late is worse than missing.
            let n = frames.min(monitor.slots() / CHANNELS);
            if let Ok(chunk) = monitor.write_chunk_uninit(n * CHANNELS) {
                chunk.fill_from_iter((0..n * CHANNELS).map(|i| sample(i / CHANNELS, i % CHANNELS)));
            }
        }
    }
}

impl Capture {
    /// Silence in the take where the device lost `frames`, so what follows
    /// stays in its place on the timeline.
    fn fill_lost(&mut self, frames: u64) {
        self.shared
            .lost_in_frames
            .fetch_add(frames, Ordering::Relaxed);
        if let Some(take) = &mut self.take {
            let n = (frames as usize * self.take_channels).min(take.slots());
            if let Ok(chunk) = take.write_chunk_uninit(n) {
                chunk.fill_from_iter(std::iter::repeat(0.0));
            }
        }
    }
}

/// Most monitor frames left waiting, in callbacks' worth, whatever the
/// watch says: two devices drifting apart pile frames up, and past this
/// the surplus is dropped at once.
const MONITOR_BACKLOG_CALLBACKS: usize = 8;
/// How long the monitor ring's lowest level is watched before frames that
/// were never needed are dropped (0.5 s at 48 kHz).
const MONITOR_WATCH_FRAMES: usize = 24_000;
/// Monitoring: the input's frames on their way to the performer's output.
///
/// A sound server delivers captured audio in blocks (PulseAudio's null
/// sink: a few ms at once), so the frames waiting rise and fall within a
/// block's time. Dropping whatever exceeded two callbacks on each
/// callback cut the top off each block and left the output short before
/// the next one: on the PulseAudio loop 2.3 % of monitored frames were
/// gaps (176-frame buffers, 5 minutes). Only what stayed unused for a
/// whole watch — the lowest level minus one callback of cushion — is
/// latency nobody needs, and only that is dropped. With half a callback
/// of cushion ~0.07 % of frames were still gaps (1 000–2 500 a minute at
/// 160–192 frames); with one, 128–424 a minute, at latencies within the
/// loop's own ±2.5 ms spread.
pub struct MonitorRing {
    ring: Consumer<f32>,
    /// Whether input has arrived yet: before it, the output finding
    /// nothing is the input stream starting, not a gap.
    flowing: bool,
    /// The fewest frames left waiting after a callback in this watch.
    low: usize,
    /// Frames played in this watch.
    watched: usize,
}

impl MonitorRing {
    pub fn new(ring: Consumer<f32>) -> MonitorRing {
        MonitorRing {
            ring,
            flowing: false,
            low: usize::MAX,
            watched: 0,
        }
    }

    /// Drops what is not needed before an output callback takes `frames`;
    /// returns the frames waiting now.
    fn trim(&mut self, frames: usize) -> usize {
        let waiting = self.ring.slots() / CHANNELS;
        let mut surplus = waiting.saturating_sub(frames * MONITOR_BACKLOG_CALLBACKS);
        if self.watched >= MONITOR_WATCH_FRAMES {
            surplus = surplus.max(self.low.saturating_sub(frames).min(waiting));
            self.low = usize::MAX;
            self.watched = 0;
        }
        if let Ok(chunk) = self.ring.read_chunk(surplus * CHANNELS) {
            chunk.commit_all();
        }
        waiting - surplus
    }

    /// Notes a callback that found `waiting` frames and took `taken`.
    fn watch(&mut self, waiting: usize, taken: usize, frames: usize) {
        if self.flowing {
            self.low = self.low.min(waiting - taken);
            self.watched += frames;
        }
    }
}

/// The output side: the feeder's ring (stereo) plus monitoring → device frames.
pub struct Playback {
    pub ring: Consumer<f32>,
    pub monitor: Option<MonitorRing>,
    pub device_channels: usize,
    pub shared: Arc<Shared>,
    /// Frames an underrun played as silence: skipped from the ring when it
    /// refills, so output frame n stays timeline frame n (a take recorded
    /// against it still lines up; the performer hears a gap, not a slip).
    pub debt: usize,
    pub clock: DeviceClock,
    /// A keyboard played through the synth on this output (the performer's).
    pub midi: Option<LiveMidi>,
}

/// Frames the live synth renders at a time.
pub const SYNTH_CHUNK_FRAMES: usize = 256;

/// A MIDI keyboard on the performer's output: what arrived since the last
/// callback plays through the synth at once, and goes to the take stamped
/// with the output frame the performer was hearing when it arrived — so a
/// note lines up with the song as it sounded, whatever the latency.
pub struct LiveMidi {
    pub arrivals: Consumer<Arrival>,
    pub take: Producer<MidiEvent>,
    pub synth: Synthesizer,
    /// Scratch for the synth's output, `SYNTH_CHUNK_FRAMES` each.
    pub left: Vec<f32>,
    pub right: Vec<f32>,
}

impl LiveMidi {
    pub fn new(arrivals: Consumer<Arrival>, take: Producer<MidiEvent>, synth: Synthesizer) -> Self {
        LiveMidi {
            arrivals,
            take,
            synth,
            left: vec![0.0; SYNTH_CHUNK_FRAMES],
            right: vec![0.0; SYNTH_CHUNK_FRAMES],
        }
    }

    /// Plays the arrivals and adds the synth to `data`, whose first frame
    /// is output frame `first` and is heard `latency_ns` from now.
    fn process<T>(
        &mut self,
        data: &mut [T],
        ch: usize,
        first: u64,
        latency_ns: u64,
        shared: &Shared,
    ) where
        T: Sample + FromSample<f32>,
        f32: FromSample<T>,
    {
        let now = (!self.arrivals.is_empty()).then(Instant::now);
        let rate = u64::from(super::device::ENGINE_RATE);
        while let (Some(now), Ok(a)) = (now, self.arrivals.pop()) {
            let ago_ns = now.saturating_duration_since(a.at).as_nanos() as u64 + latency_ns;
            let heard = first.saturating_sub(ago_ns * rate / 1_000_000_000);
            let Some(event) = MidiEvent::from_bytes(heard, a.message()) else {
                continue;
            };
            play_event(&mut self.synth, &event);
            shared.midi_events.fetch_add(1, Ordering::Relaxed);
            if self.take.push(event).is_err() {
                shared.midi_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        let frames = data.len() / ch;
        let mut done = 0;
        while done < frames {
            let n = (frames - done).min(SYNTH_CHUNK_FRAMES);
            self.synth.render(&mut self.left[..n], &mut self.right[..n]);
            let out = data[done * ch..(done + n) * ch].chunks_exact_mut(ch);
            for ((frame, l), r) in out.zip(&self.left).zip(&self.right) {
                add(frame, *l, *r);
            }
            done += n;
        }
    }
}

impl Playback {
    /// Samples waiting in the ring.
    pub fn queued(&self) -> usize {
        self.ring.slots()
    }

    /// Fills one callback's device buffer; returns the frames the feeder had ready.
    pub fn process<T>(&mut self, data: &mut [T], playback_ns: u64, latency_ns: u64) -> usize
    where
        T: Sample + FromSample<f32>,
        f32: FromSample<T>,
    {
        let ch = self.device_channels.max(1);
        let frames = data.len() / ch;
        let mut before = self.shared.out_frames.load(Ordering::Relaxed);
        let rate = super::device::ENGINE_RATE;
        let tolerance = u64::from(rate) * PLAYBACK_TOLERANCE_MS / 1000;
        let lost = self
            .clock
            .lost(&self.shared.out_marks, rate, playback_ns, before, tolerance);
        if lost > 0 {
            // The device skipped ahead: so does the song.
            self.debt += lost as usize;
            before += lost;
            self.shared
                .lost_out_frames
                .fetch_add(lost, Ordering::Relaxed);
        }
        self.shared
            .out_frames
            .store(before + frames as u64, Ordering::Relaxed);
        self.shared
            .out_marks
            .record(playback_ns, playback_ns.saturating_sub(latency_ns), before);
        self.shared
            .out_latency_ns
            .store(latency_ns, Ordering::Relaxed);
        data.fill(T::EQUILIBRIUM);
        self.pay_debt();
        let got = self.mix_ring(data, ch, frames);
        if got < frames && !self.shared.feeder_done.load(Ordering::Acquire) {
            let missing = frames - got;
            self.debt += missing;
            self.shared
                .underrun_frames
                .fetch_add(missing as u64, Ordering::Relaxed);
            self.shared.xruns.fetch_add(1, Ordering::Relaxed);
        }
        self.mix_monitor(data, ch, frames);
        if let Some(midi) = &mut self.midi {
            midi.process(data, ch, before, latency_ns, &self.shared);
        }
        got
    }

    /// Drops what the last underruns should have played, as far as it has arrived.
    fn pay_debt(&mut self) {
        let n = self.debt.min(self.ring.slots() / CHANNELS);
        if let Ok(chunk) = self.ring.read_chunk(n * CHANNELS) {
            chunk.commit_all();
            self.debt -= n;
        }
    }

    /// Copies up to `frames` stereo frames from the ring; returns how many.
    fn mix_ring<T>(&mut self, data: &mut [T], ch: usize, frames: usize) -> usize
    where
        T: Sample + FromSample<f32>,
        f32: FromSample<T>,
    {
        let n = frames.min(self.ring.slots() / CHANNELS);
        let Ok(chunk) = self.ring.read_chunk(n * CHANNELS) else {
            return 0;
        };
        let (a, b) = chunk.as_slices();
        let stereo = a.chunks_exact(CHANNELS).chain(b.chunks_exact(CHANNELS));
        for (frame, lr) in data.chunks_exact_mut(ch).zip(stereo) {
            put(frame, lr[0], lr[1]);
        }
        chunk.commit_all();
        n
    }

    fn mix_monitor<T>(&mut self, data: &mut [T], ch: usize, frames: usize)
    where
        T: Sample + FromSample<f32>,
        f32: FromSample<T>,
    {
        let Some(monitor) = &mut self.monitor else {
            return;
        };
        let waiting = monitor.trim(frames);
        let n = frames.min(waiting);
        monitor.flowing |= n > 0;
        monitor.watch(waiting, n, frames);
        let short = (frames - n) as u64;
        if short > 0 && monitor.flowing {
            self.shared
                .monitor_short_frames
                .fetch_add(short, Ordering::Relaxed);
        }
        let Ok(chunk) = monitor.ring.read_chunk(n * CHANNELS) else {
            return;
        };
        let (a, b) = chunk.as_slices();
        let stereo = a.chunks_exact(CHANNELS).chain(b.chunks_exact(CHANNELS));
        for (frame, lr) in data.chunks_exact_mut(ch).zip(stereo) {
            add(frame, lr[0], lr[1]);
        }
        chunk.commit_all();
    }
}

/// Writes a stereo frame to a device frame of any width (mono gets the average).
fn put<T: Sample + FromSample<f32>>(frame: &mut [T], l: f32, r: f32) {
    match frame {
        [m] => *m = T::from_sample((l + r) * 0.5),
        [fl, fr, ..] => {
            *fl = T::from_sample(l);
            *fr = T::from_sample(r);
        }
        [] => {}
    }
}

/// Adds a stereo frame onto a device frame.
fn add<T>(frame: &mut [T], l: f32, r: f32)
where
    T: Sample + FromSample<f32>,
    f32: FromSample<T>,
{
    let sum = |s: T, x: f32| T::from_sample(f32::from_sample(s) + x);
    match frame {
        [m] => *m = sum(*m, (l + r) * 0.5),
        [fl, fr, ..] => {
            *fl = sum(*fl, l);
            *fr = sum(*fr, r);
        }
        [] => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_the_first_two_channels_and_counts_overruns() {
        let shared = Arc::new(Shared::default());
        let (tx, mut rx) = rtrb::RingBuffer::new(8);
        let mut cap = Capture {
            take: Some(tx),
            monitor: None,
            device_channels: 3,
            take_channels: 2,
            shared: shared.clone(),
            rate: 48_000,
            clock: DeviceClock::default(),
        };
        let data: Vec<f32> = (0..18).map(|i| i as f32).collect(); // 6 frames of 3
        cap.process(&data, 5, 0);
        let got: Vec<f32> = std::iter::from_fn(|| rx.pop().ok()).collect();
        assert_eq!(got, [0.0, 1.0, 3.0, 4.0, 6.0, 7.0, 9.0, 10.0]);
        assert_eq!(shared.overrun_frames.load(Ordering::Relaxed), 2);
        assert_eq!(shared.in_marks.origin_ns(48_000), Some(5.0));
    }

    /// A mono 48 kHz capture into `take`.
    fn mono_capture(shared: &Arc<Shared>, take: Producer<f32>) -> Capture {
        Capture {
            take: Some(take),
            monitor: None,
            device_channels: 1,
            take_channels: 1,
            shared: shared.clone(),
            rate: 48_000,
            clock: DeviceClock::default(),
        }
    }

    #[test]
    fn frames_a_device_lost_become_silence_in_their_place() {
        let shared = Arc::new(Shared::default());
        let (tx, mut rx) = rtrb::RingBuffer::new(100_000);
        let mut cap = mono_capture(&shared, tx);
        let block = vec![1.0f32; 480]; // 10 ms a callback
        let mut t = 1_000_000_000u64;
        for _ in 0..70 {
            cap.process(&block, t, 0);
            t += 10_000_000;
        }
        t += 50_000_000; // an xrun: the device lost 50 ms (2400 frames)
        cap.process(&block, t, 0);
        let got: Vec<f32> = std::iter::from_fn(|| rx.pop().ok()).collect();
        assert_eq!(got.len(), 71 * 480 + 2400);
        assert!(got[70 * 480..70 * 480 + 2400].iter().all(|x| *x == 0.0));
        assert!(got[70 * 480 + 2400..].iter().all(|x| *x == 1.0));
        assert_eq!(shared.lost_in_frames.load(Ordering::Relaxed), 2400);
    }

    /// A capture stream whose device runs at `rate` (nominal 48 kHz), 480
    /// frames a callback, its timestamps saw-toothing over ±1.5 ms like
    /// PulseAudio's; returns the stream after `seconds`.
    fn drifting_capture(rate: f64, seconds: u64, lost_at: Option<u64>) -> Arc<Shared> {
        let shared = Arc::new(Shared::default());
        let (tx, _rx) = rtrb::RingBuffer::new(1);
        let mut cap = mono_capture(&shared, tx);
        let block = vec![0.0f32; 480];
        let callbacks = seconds * 100;
        let mut skipped = 0.0;
        for k in 0..callbacks {
            if lost_at == Some(k) {
                skipped += 0.05; // the device lost 50 ms here
            }
            let jitter = ((k % 7) as f64 - 3.0) * 0.5e-3;
            let t = 1.0 + (k * 480) as f64 / rate + skipped + jitter;
            cap.process(&block, (t * 1e9) as u64, 0);
        }
        shared
    }

    #[test]
    fn a_slow_device_clock_is_measured_and_is_no_xrun() {
        // 100 ppm slow over two minutes: 12 ms behind by the end.
        let shared = drifting_capture(48_000.0 * (1.0 - 100e-6), 120, None);
        assert_eq!(shared.lost_in_frames.load(Ordering::Relaxed), 0);
        let e = shared.in_marks.rate_error(48_000, 30 * 48_000).unwrap();
        assert!((e * 1e6 + 100.0).abs() < 3.0, "{} ppm", e * 1e6);
        // A real xrun in a slowly drifting stream is still one (its size
        // read off one callback's stamp: within the ±1.5 ms jitter).
        let shared = drifting_capture(48_000.0 * (1.0 - 100e-6), 60, Some(5_000));
        let lost = shared.lost_in_frames.load(Ordering::Relaxed);
        assert!(lost.abs_diff(2400) <= 72, "{lost} frames");
    }

    #[test]
    fn the_clock_ratio_maps_input_frames_onto_the_output() {
        let shared = drifting_capture(48_000.0 * (1.0 + 80e-6), 40, None);
        let mut out = playback(rtrb::RingBuffer::new(1).1, None, 1, &shared);
        shared.feeder_done.store(true, Ordering::Release);
        let mut data = vec![0.0f32; 480];
        for k in 0..4_000u64 {
            let t = 1.0 + (k * 480) as f64 / (48_000.0 * (1.0 - 20e-6));
            out.process(&mut data, (t * 1e9) as u64, 0);
        }
        let ppm = (shared.clock_ratio(48_000).unwrap() - 1.0) * 1e6;
        assert!((ppm + 100.0).abs() < 3.0, "{ppm} ppm");
    }

    /// A playback side with no MIDI, fed from `ring` (and `monitor`).
    fn playback(
        ring: Consumer<f32>,
        monitor: Option<Consumer<f32>>,
        device_channels: usize,
        shared: &Arc<Shared>,
    ) -> Playback {
        Playback {
            ring,
            monitor: monitor.map(MonitorRing::new),
            device_channels,
            shared: shared.clone(),
            debt: 0,
            clock: DeviceClock::default(),
            midi: None,
        }
    }

    /// Pushes `frames` stereo frames numbered from `from` (both channels).
    fn push_frames(tx: &mut Producer<f32>, from: usize, frames: usize) {
        for i in from..from + frames {
            tx.push(i as f32).expect("room");
            tx.push(i as f32).expect("room");
        }
    }

    /// A playback side that only monitors, its monitor ring holding `room`
    /// frames: the input's end of that ring, the side, its counters.
    fn monitor_only(room: usize) -> (Producer<f32>, Playback, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        let (tx, mrx) = rtrb::RingBuffer::new(room * CHANNELS);
        let (_, ring) = rtrb::RingBuffer::<f32>::new(16);
        let play = playback(ring, Some(mrx), 2, &shared);
        (tx, play, shared)
    }

    /// One output callback of `frames` stereo frames: what it heard.
    fn monitor_callback(play: &mut Playback, frames: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; frames * CHANNELS];
        play.mix_monitor(&mut out, CHANNELS, frames);
        out
    }

    fn short_frames(shared: &Shared) -> usize {
        shared.monitor_short_frames.load(Ordering::Relaxed) as usize
    }

    #[test]
    fn the_monitor_plays_a_burst_whole_and_counts_what_came_late() {
        const N: usize = 256;
        let (mut tx, mut play, shared) = monitor_only(16 * N);
        // Before the input runs, the output finding nothing is no gap.
        monitor_callback(&mut play, N);
        assert_eq!(short_frames(&shared), 0);
        // A block of three callbacks arrives at once: all of it plays, in order.
        push_frames(&mut tx, 1, 3 * N);
        for k in 0..3 {
            assert_eq!(monitor_callback(&mut play, N)[0], (k * N + 1) as f32);
        }
        // Nothing left, one asked for: silence, counted.
        assert_eq!(monitor_callback(&mut play, N)[0], 0.0);
        assert_eq!(short_frames(&shared), N);
    }

    #[test]
    fn the_monitor_drops_what_a_whole_watch_never_needed() {
        const N: usize = 240;
        const ROOM: usize = 64 * N;
        let (mut tx, mut play, shared) = monitor_only(ROOM);
        let waiting = |tx: &Producer<f32>| ROOM - tx.slots() / CHANNELS;
        // Three callbacks always waiting beyond the one being played.
        push_frames(&mut tx, 0, 3 * N);
        let mut next = 3 * N;
        for _ in 0..MONITOR_WATCH_FRAMES / N {
            push_frames(&mut tx, next, N);
            next += N;
            monitor_callback(&mut play, N);
        }
        assert_eq!(waiting(&tx), 3 * N);
        // The watch is over: all but one callback of the three go.
        push_frames(&mut tx, next, N);
        next += N;
        let out = monitor_callback(&mut play, N);
        assert_eq!(waiting(&tx), N);
        assert_eq!(out[0], (next - 2 * N) as f32);
        assert_eq!(short_frames(&shared), 0);
    }

    #[test]
    fn the_monitor_drops_a_pile_up_at_once() {
        const N: usize = 128;
        let (mut tx, mut play, _) = monitor_only(32 * N);
        push_frames(&mut tx, 0, 10 * N);
        assert_eq!(monitor_callback(&mut play, N)[0], (2 * N) as f32);
    }

    #[test]
    fn playback_fills_silence_on_underrun_and_adds_the_monitor() {
        let shared = Arc::new(Shared::default());
        let (mut tx, rx) = rtrb::RingBuffer::new(16);
        let (mut mtx, mrx) = rtrb::RingBuffer::new(16);
        for s in [0.5, -0.5] {
            tx.push(s).expect("room");
        }
        for _ in 0..6 {
            mtx.push(0.25).expect("room");
        }
        let mut play = playback(rx, Some(mrx), 2, &shared);
        let mut out = [9.0f32; 6];
        play.process(&mut out, 7, 0);
        assert_eq!(out, [0.75, -0.25, 0.25, 0.25, 0.25, 0.25]);
        assert_eq!(shared.underrun_frames.load(Ordering::Relaxed), 2);
        // The two frames played as silence are skipped when audio arrives.
        for s in [1.0, 1.0, 2.0, 2.0, 3.0, 3.0] {
            tx.push(s).expect("room");
        }
        let mut out = [0.0f32; 2];
        play.process(&mut out, 8, 0);
        assert_eq!(out, [3.0, 3.0]);
    }
}
