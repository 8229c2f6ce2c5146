//! The monitoring loop with nothing of meshstudio's in it: the default
//! input device straight to the default output device through one ring,
//! with cpal's streams at a fixed period. `scripts/bench/latency` runs it
//! next to `record --monitor` and alsa-utils' `arecord | aplay`, so what
//! cpal's ALSA backend costs and what the engine adds show apart.
//!
//!     cpal_loop FRAMES SECONDS [f32|i16] [alsa|pulseaudio]
//!
//! Prints the xruns each stream reported, and how many of them came after
//! the first STARTUP (a loop's start may glitch once in any tool). On
//! cpal's PulseAudio host (its own client of the server, no ALSA plugin)
//! the loop is 2–4.5 ms shorter at the same period, but that host reports
//! no xruns: the bench counts the server's underruns for every loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{BufferSize, DeviceId, ErrorKind, HostId, SizedSample, StreamConfig};

/// Xruns before this much time has passed are counted apart.
const STARTUP: Duration = Duration::from_secs(2);
const RATE: u32 = 48_000;
/// One second of stereo between the input and the output.
const RING: usize = RATE as usize * 2;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let frames = args.get(1).and_then(|a| a.parse::<u32>().ok());
    let seconds = args.get(2).and_then(|a| a.parse::<u64>().ok());
    let (Some(frames), Some(seconds)) = (frames, seconds) else {
        usage()
    };
    let host = match args.get(4).map(String::as_str) {
        None | Some("alsa") => HostId::Alsa,
        Some("pulseaudio") => HostId::PulseAudio,
        Some(_) => usage(),
    };
    match args.get(3).map(String::as_str) {
        Some("i16") => run::<i16>(host, frames, seconds),
        None | Some("f32") => run::<f32>(host, frames, seconds),
        Some(_) => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: cpal_loop FRAMES SECONDS [f32|i16] [alsa|pulseaudio]");
    std::process::exit(2)
}

/// The host's default device, or on the PulseAudio host the one that
/// PULSE_SINK / PULSE_SOURCE name (libpulse's convention, which ALSA's
/// pulse plugin follows and cpal's own PulseAudio client does not).
fn device(host: &cpal::Host, input: bool) -> cpal::Device {
    let named = std::env::var(if input { "PULSE_SOURCE" } else { "PULSE_SINK" });
    let device = match &named {
        Ok(name) if host.id() == HostId::PulseAudio => {
            host.device_by_id(&DeviceId::new(HostId::PulseAudio, name))
        }
        _ if input => host.default_input_device(),
        _ => host.default_output_device(),
    };
    device.unwrap_or_else(|| {
        let kind = if input { "input" } else { "output" };
        let name = named.as_deref().unwrap_or("default");
        eprintln!("no {kind} device {name:?} on {}", host.id());
        std::process::exit(1)
    })
}

/// Xruns of one stream: all of them, and those after STARTUP.
#[derive(Clone)]
struct Xruns {
    since: Instant,
    all: Arc<AtomicU64>,
    late: Arc<AtomicU64>,
}

impl Xruns {
    fn new(since: Instant) -> Self {
        let (all, late) = Default::default();
        Xruns { since, all, late }
    }

    /// The stream's error callback (not its audio callback).
    fn counter(&self) -> impl FnMut(cpal::Error) + Send + 'static {
        let me = self.clone();
        move |e| {
            if e.kind() == ErrorKind::Xrun {
                me.all.fetch_add(1, Ordering::Relaxed);
                if me.since.elapsed() > STARTUP {
                    me.late.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn report(&self) -> String {
        let all = self.all.load(Ordering::Relaxed);
        let late = self.late.load(Ordering::Relaxed);
        format!("{all} ({late} after the first {} s)", STARTUP.as_secs())
    }
}

fn run<T: SizedSample + Send + 'static>(host: HostId, frames: u32, seconds: u64) {
    let host = cpal::host_from_id(host).unwrap_or_else(|e| {
        eprintln!("{host}: {e}");
        std::process::exit(1)
    });
    let (input, output) = (device(&host, true), device(&host, false));
    let config = StreamConfig {
        channels: 2,
        sample_rate: RATE,
        buffer_size: BufferSize::Fixed(frames),
    };
    let (mut tx, mut rx) = rtrb::RingBuffer::<T>::new(RING);
    let started = Instant::now();
    let (xin, xout) = (Xruns::new(started), Xruns::new(started));
    let capture = move |data: &[T], _: &cpal::InputCallbackInfo| {
        let n = data.len().min(tx.slots());
        if let Ok(chunk) = tx.write_chunk_uninit(n) {
            chunk.fill_from_iter(data[..n].iter().copied());
        }
    };
    let play = move |data: &mut [T], _: &cpal::OutputCallbackInfo| {
        data.fill(T::EQUILIBRIUM);
        let n = data.len().min(rx.slots());
        if let Ok(chunk) = rx.read_chunk(n) {
            let (a, b) = chunk.as_slices();
            data[..a.len()].copy_from_slice(a);
            data[a.len()..a.len() + b.len()].copy_from_slice(b);
            chunk.commit_all();
        }
    };
    let ins = input
        .build_input_stream(config, capture, xin.counter(), None)
        .expect("input stream");
    let outs = output
        .build_output_stream(config, play, xout.counter(), None)
        .expect("output stream");
    ins.play().expect("input starts");
    outs.play().expect("output starts");
    std::thread::sleep(Duration::from_secs(seconds));
    println!("xruns in {} out {}", xin.report(), xout.report());
}
