//! What runs inside the device callbacks (and, for WAV files, on the
//! clock thread that stands in for them). Real-time code: no allocation,
//! no locks, no logging, no I/O — samples move between the device buffer
//! and preallocated lock-free rings, counters are atomics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cpal::{FromSample, Sample};
use rtrb::{Consumer, Producer};

use crate::audio::render::CHANNELS;

/// What the callbacks tell the rest of the engine, all lock-free.
#[derive(Default)]
pub struct Shared {
    /// Capture time of the first input frame, ns on the stream clock (0 = not yet).
    pub in_first_ns: AtomicU64,
    /// Playback time of the first output frame, ns on the stream clock (0 = not yet).
    pub out_first_ns: AtomicU64,
    /// The devices' own latency estimates (callback − capture, playback − callback), ns.
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
    /// The feeder has nothing more to play: silence after this is no underrun.
    pub feeder_done: AtomicBool,
}

impl Shared {
    fn first(slot: &AtomicU64, ns: u64) {
        // 0 means "unknown", so a real time of 0 is nudged to 1 ns.
        let _ = slot.compare_exchange(0, ns.max(1), Ordering::AcqRel, Ordering::Acquire);
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
        Shared::first(&self.shared.in_first_ns, capture_ns);
        Shared::first(&self.shared.in_latency_ns, latency_ns);
        self.shared
            .in_frames
            .fetch_add(frames as u64, Ordering::Relaxed);
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

/// Most monitor frames left waiting, in callbacks' worth: more means the
/// two devices drifted apart, and the surplus is dropped to keep the
/// performer's latency low.
const MONITOR_BACKLOG_CALLBACKS: usize = 2;

/// The output side: the feeder's ring (stereo) plus monitoring → device frames.
pub struct Playback {
    pub ring: Consumer<f32>,
    pub monitor: Option<Consumer<f32>>,
    pub device_channels: usize,
    pub shared: Arc<Shared>,
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
        Shared::first(&self.shared.out_first_ns, playback_ns);
        Shared::first(&self.shared.out_latency_ns, latency_ns);
        self.shared
            .out_frames
            .fetch_add(frames as u64, Ordering::Relaxed);
        data.fill(T::EQUILIBRIUM);
        let got = self.mix_ring(data, ch, frames);
        if got < frames && !self.shared.feeder_done.load(Ordering::Acquire) {
            let missing = (frames - got) as u64;
            self.shared
                .underrun_frames
                .fetch_add(missing, Ordering::Relaxed);
            self.shared.xruns.fetch_add(1, Ordering::Relaxed);
        }
        self.mix_monitor(data, ch, frames);
        got
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
        let surplus =
            (monitor.slots() / CHANNELS).saturating_sub(frames * MONITOR_BACKLOG_CALLBACKS);
        if let Ok(chunk) = monitor.read_chunk(surplus * CHANNELS) {
            chunk.commit_all();
        }
        let n = frames.min(monitor.slots() / CHANNELS);
        let Ok(chunk) = monitor.read_chunk(n * CHANNELS) else {
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
        };
        let data: Vec<f32> = (0..18).map(|i| i as f32).collect(); // 6 frames of 3
        cap.process(&data, 5, 0);
        let got: Vec<f32> = std::iter::from_fn(|| rx.pop().ok()).collect();
        assert_eq!(got, [0.0, 1.0, 3.0, 4.0, 6.0, 7.0, 9.0, 10.0]);
        assert_eq!(shared.overrun_frames.load(Ordering::Relaxed), 2);
        assert_eq!(shared.in_first_ns.load(Ordering::Relaxed), 5);
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
        let mut play = Playback {
            ring: rx,
            monitor: Some(mrx),
            device_channels: 2,
            shared: shared.clone(),
        };
        let mut out = [9.0f32; 6];
        play.process(&mut out, 7, 0);
        assert_eq!(out, [0.75, -0.25, 0.25, 0.25, 0.25, 0.25]);
        assert_eq!(shared.underrun_frames.load(Ordering::Relaxed), 2);
    }
}
