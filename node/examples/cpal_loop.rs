//! The monitoring loop with nothing of meshstudio's in it: the default
//! input device straight to the default output device through one ring,
//! with cpal's streams at a fixed period. `scripts/bench/latency` runs it
//! next to `record --monitor` and alsa-utils' `arecord | aplay`, so what
//! cpal's ALSA backend costs and what the engine adds show apart.
//!
//!     cpal_loop FRAMES SECONDS [f32|i16]
//!
//! Prints the xruns each stream reported, and how many of them came after
//! the first STARTUP (a loop's start may glitch once in any tool).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{BufferSize, ErrorKind, SizedSample, StreamConfig};

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
    match args.get(3).map(String::as_str) {
        Some("i16") => run::<i16>(frames, seconds),
        None | Some("f32") => run::<f32>(frames, seconds),
        Some(_) => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: cpal_loop FRAMES SECONDS [f32|i16]");
    std::process::exit(2)
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

fn run<T: SizedSample + Send + 'static>(frames: u32, seconds: u64) {
    let host = cpal::default_host();
    let input = host.default_input_device().expect("no input device");
    let output = host.default_output_device().expect("no output device");
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
