//! The real-time engine behind `record`, `play` and `calibrate`: devices
//! (cpal) or WAV files on either side, the same callbacks for both.
//!
//! Threads: the device callbacks (or, for files, a clock thread that calls
//! the same code, paced in real time unless `fast`) only move samples
//! through lock-free rings (`rt.rs`); a feeder thread renders what the
//! output plays (the song through `render()`, the click, a test signal)
//! into the output ring; a disk thread drains the capture ring into the
//! take (`take.rs`); the calling thread watches, reports progress, and
//! stops everything on Ctrl-C, a time limit, the end of the song, or a
//! device error — keeping whatever was captured. A MIDI keyboard plays
//! through the synth inside the performer's output callback (`LiveMidi`);
//! a MIDI disk thread logs what it played.

pub mod device;
mod files;
pub mod rt;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meshstudio_codec::Observer;
use rtrb::RingBuffer;
use serde::Serialize;

use super::midi_in::{ARRIVAL_RING, Arrival};
use super::render::CHANNELS;
use super::take::{Align, Disk, DiskReport, MidiDisk, MidiLog, TakeSink};
use device::{ENGINE_RATE, ErrorSlot};
use rt::{Capture, LiveMidi, Playback, Shared};

/// How often the watching thread looks at the engine.
const WATCH: Duration = Duration::from_millis(10);
/// Seconds of audio the capture ring holds while the disk is slow.
const TAKE_RING_SECONDS: usize = 4;
/// Frames the output ring holds ahead of the device: enough to ride out a
/// slow feeder block, short enough that Ctrl-C stops sound at once.
const OUTPUT_RING_FRAMES: usize = 16_384;
/// Frames the feeder renders at a time: the device buffer size when one
/// is asked for (so render() runs in the blocks the device takes), within these.
const FEED_FRAMES: usize = 1024;
const MIN_FEED_FRAMES: usize = 64;
/// Frames the monitor ring holds (it drops the surplus anyway).
const MONITOR_RING_FRAMES: usize = 4096;
/// A device that delivers nothing for this long has failed.
const STALL: Duration = Duration::from_secs(2);
/// The first callback must come within this.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// After the last frame is handed to the device, let this much more play
/// (the device's own buffer) before closing it.
const DRAIN_TAIL: Duration = Duration::from_millis(300);

/// One side of the engine, as the user named it.
#[derive(Debug, Clone, PartialEq)]
pub enum Port {
    /// The default device.
    Default,
    /// A device id (`meshstudio devices`).
    Device(String),
    /// A WAV file (an input to read, or an output to write).
    File(PathBuf),
}

impl Port {
    /// `DEVICE|FILE.wav`: anything ending in `.wav` or naming a path is a file.
    pub fn parse(text: Option<&str>) -> Port {
        match text {
            None | Some("default") => Port::Default,
            Some(t) if t.to_ascii_lowercase().ends_with(".wav") || t.contains('/') => {
                Port::File(PathBuf::from(t))
            }
            Some(t) => Port::Device(t.to_string()),
        }
    }

    pub fn is_file(&self) -> bool {
        matches!(self, Port::File(_))
    }

    fn device_id(&self) -> Option<&str> {
        match self {
            Port::Device(id) => Some(id),
            _ => None,
        }
    }
}

/// What the output plays, rendered on the feeder thread.
pub trait Feed: Send {
    /// Fills `main` (and `click`, when the click has its own output) with
    /// the stereo frames starting at output frame `frame`; returns how
    /// many frames there were, fewer than the block only at the end.
    fn fill(
        &mut self,
        frame: u64,
        main: &mut [f32],
        click: Option<&mut [f32]>,
    ) -> Result<usize, String>;
}

/// Makes the take's sink once the input's channels and rate are known.
pub type OpenTake = Box<dyn FnOnce(usize, u32) -> std::io::Result<Box<dyn TakeSink>> + Send>;

/// Where the input goes.
pub struct TakePlan {
    pub open: OpenTake,
    pub align: Align,
    pub seconds: Option<f64>,
}

/// A MIDI keyboard to record: heard through the synth on the output.
pub struct MidiPlan {
    /// What the MIDI port's callback receives.
    pub arrivals: rtrb::Consumer<Arrival>,
    pub synth: rustysynth::Synthesizer,
    /// Where the played messages go, stamped with output frames.
    pub log: MidiLog,
    /// End once the output has played this many frames (count-in + `--seconds`).
    pub until_frame: Option<u64>,
}

pub struct Session<'a> {
    pub input: Option<Port>,
    pub output: Option<Port>,
    /// A separate output for the click (the performer's headphones).
    pub click_output: Option<Port>,
    pub buffer: Option<u32>,
    pub fast: bool,
    pub monitor: bool,
    pub feed: Option<Box<dyn Feed + 'a>>,
    pub take: Option<TakePlan>,
    pub midi: Option<MidiPlan>,
}

/// How a session went.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub input: Option<String>,
    pub output: Option<String>,
    /// Frames written to the take, and the take's format.
    pub take_frames: u64,
    pub take_rate: u32,
    pub take_channels: usize,
    /// Input frames dropped at the start (or silence put in front, < 0) to line the take up.
    pub take_skipped: i64,
    pub played_frames: u64,
    pub xruns: u64,
    pub overrun_frames: u64,
    pub underrun_frames: u64,
    /// Monitored frames that came too late for the output (silence there).
    pub monitor_short_frames: u64,
    /// Frames the devices lost in xruns (silence in the take / the song
    /// skipped ahead, so the timeline holds).
    pub lost_input_frames: u64,
    pub lost_output_frames: u64,
    /// The devices' latency estimates (ms), when a device stream ran.
    pub input_latency_ms: Option<f64>,
    pub output_latency_ms: Option<f64>,
    /// Capture time of the first input frame minus playback time of the first output frame (s).
    pub stream_offset_seconds: Option<f64>,
    /// How much faster the output device's clock ran than the input's
    /// (ppm), once both ran `DRIFT_MIN_SECONDS`: separate devices drift
    /// ~100 ppm. Only separate devices are retimed by it: through one
    /// device (or one sound server) the clock is shared, and what the
    /// estimate shows there is its noise (±50 ppm over 36 s on PulseAudio).
    pub drift_ppm: Option<f64>,
    /// Input and output are different devices, each with its own clock.
    pub separate_devices: bool,
    /// Each device's rate against the system clock (ppm off nominal).
    pub input_clock_ppm: Option<f64>,
    pub output_clock_ppm: Option<f64>,
    /// MIDI messages played (and logged), and those lost to a full ring.
    pub midi_events: u64,
    pub midi_dropped: u64,
    pub stopped: bool,
    /// A device failed mid-session: what was captured is still here.
    pub error: Option<String>,
    #[serde(skip)]
    pub samples: Vec<f32>,
}

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Device(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Io(String),
}

/// Both sides opened, before anything runs.
struct Sides {
    input: Option<files::Or<(cpal::Device, cpal::StreamConfig, cpal::SampleFormat)>>,
    outputs: Vec<files::Or<(cpal::Device, cpal::StreamConfig, cpal::SampleFormat)>>,
    input_label: Option<String>,
    output_label: Option<String>,
    in_channels: usize,
    in_rate: u32,
}

/// The running session's counters, for the node's status (one session per process).
static CURRENT: std::sync::Mutex<Option<Arc<Shared>>> = std::sync::Mutex::new(None);

/// What the session running now has done so far, if one runs.
pub fn current() -> Option<serde_json::Value> {
    let shared = CURRENT.lock().ok()?.clone()?;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Some(serde_json::json!({
        "input_frames": load(&shared.in_frames),
        "output_frames": load(&shared.out_frames),
        "xruns": load(&shared.xruns),
        "overrun_frames": load(&shared.overrun_frames),
        "underrun_frames": load(&shared.underrun_frames),
    }))
}

/// Publishes a session's counters while it runs.
struct Published;

impl Published {
    fn new(shared: &Arc<Shared>) -> Published {
        if let Ok(mut slot) = CURRENT.lock() {
            *slot = Some(shared.clone());
        }
        Published
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        if let Ok(mut slot) = CURRENT.lock() {
            *slot = None;
        }
    }
}

/// Runs a session until its end; `observer.cancelled()` stops it as the
/// user's Ctrl-C: gracefully, keeping the take.
pub fn run(session: Session<'_>, observer: &dyn Observer) -> Result<Outcome, EngineError> {
    let sides = open_sides(&session)?;
    let Session {
        feed,
        take,
        monitor,
        fast,
        buffer,
        midi,
        ..
    } = session;
    if midi.is_some() && sides.outputs.is_empty() {
        return Err(EngineError::Usage(
            "recording MIDI needs an output, to hear the keys".into(),
        ));
    }
    let ends = Ends {
        recording_midi: midi.is_some(),
        until_frame: midi.as_ref().and_then(|m| m.until_frame),
    };
    let clock = Clock {
        fast,
        buffer,
        endless: ends.recording_midi,
    };
    let running = Running::new(sides);
    let _published = Published::new(&running.shared);
    let wiring = running.wire(monitor, take, midi)?;
    if feed.is_none() {
        running.shared.feeder_done.store(true, Ordering::Release);
    }
    let mut outcome = Outcome {
        input: running.sides.input_label.clone(),
        output: running.sides.output_label.clone(),
        take_rate: running.sides.in_rate,
        take_channels: running.take_channels(),
        ..Outcome::default()
    };
    running.threads(wiring, feed, clock, ends, observer, &mut outcome)?;
    fill_counters(&mut outcome, &running.shared, &running.sides);
    Ok(outcome)
}

/// What a session's threads share: the opened sides, the real-time
/// counters, the devices' error news and the threads' own flags.
struct Running {
    sides: Sides,
    shared: Arc<Shared>,
    errors: ErrorSlot,
    stop: AtomicBool,
    /// The take's disk is full: the session ends, keeping what was written.
    full: AtomicBool,
    /// Frames the disk thread has written to the take.
    written: AtomicU64,
    /// Frames the feeder has queued for the output.
    fed: AtomicU64,
}

/// The callbacks' halves and the threads' ends of the rings between
/// them, made before anything runs (the callbacks never allocate).
struct Wiring {
    capture: Option<Capture>,
    playbacks: Vec<Playback>,
    /// The feeder's ends of the output rings, one per output.
    feed_rings: Vec<rtrb::Producer<f32>>,
    disk: Option<Disk>,
    midi_disk: Option<MidiDisk>,
}

impl Running {
    fn new(sides: Sides) -> Running {
        Running {
            sides,
            shared: Arc::new(Shared::default()),
            errors: ErrorSlot::default(),
            stop: AtomicBool::new(false),
            full: AtomicBool::new(false),
            written: AtomicU64::new(0),
            fed: AtomicU64::new(0),
        }
    }

    /// Channels kept in the take: the input's, at most stereo.
    fn take_channels(&self) -> usize {
        self.sides.in_channels.min(CHANNELS)
    }

    /// Makes the rings and both ends of each; opens the take's sink.
    fn wire(
        &self,
        monitor: bool,
        take: Option<TakePlan>,
        midi: Option<MidiPlan>,
    ) -> Result<Wiring, EngineError> {
        let sides = &self.sides;
        let take_channels = self.take_channels();
        let monitor = monitor && sides.input.is_some() && !sides.outputs.is_empty();
        let (mon_tx, mon_rx) =
            split(monitor.then(|| RingBuffer::new(MONITOR_RING_FRAMES * CHANNELS)));
        let take_ring = sides.in_rate as usize * TAKE_RING_SECONDS * take_channels;
        let (take_tx, take_rx) = split(take.is_some().then(|| RingBuffer::new(take_ring)));
        let capture = sides.input.as_ref().map(|_| Capture {
            take: take_tx,
            monitor: mon_tx,
            device_channels: sides.in_channels,
            take_channels,
            shared: self.shared.clone(),
            rate: sides.in_rate,
            clock: Default::default(),
        });
        let (feed_rings, mut playbacks) = self.playbacks();
        let (midi_live, midi_disk) = midi_halves(midi);
        if let Some(first) = playbacks.first_mut() {
            first.monitor = mon_rx.map(rt::MonitorRing::new);
            first.midi = midi_live;
        }
        Ok(Wiring {
            capture,
            playbacks,
            feed_rings,
            disk: self.open_disk(take, take_rx)?,
            midi_disk,
        })
    }

    /// One output ring per output: the feeder's ends and the callbacks'.
    fn playbacks(&self) -> (Vec<rtrb::Producer<f32>>, Vec<Playback>) {
        let shared = &self.shared;
        self.sides
            .outputs
            .iter()
            .map(|side| {
                let (tx, ring) = RingBuffer::<f32>::new(OUTPUT_RING_FRAMES * CHANNELS);
                let playback = Playback {
                    ring,
                    monitor: None,
                    device_channels: side.channels(),
                    shared: shared.clone(),
                    debt: 0,
                    clock: Default::default(),
                    midi: None,
                };
                (tx, playback)
            })
            .unzip()
    }

    fn open_disk(
        &self,
        take: Option<TakePlan>,
        ring: Option<rtrb::Consumer<f32>>,
    ) -> Result<Option<Disk>, EngineError> {
        let (Some(plan), Some(ring)) = (take, ring) else {
            return Ok(None);
        };
        let (channels, rate) = (self.take_channels(), self.sides.in_rate);
        let sink = (plan.open)(channels, rate)
            .map_err(|e| EngineError::Io(format!("cannot write the take: {e}")))?;
        Ok(Some(Disk {
            ring,
            sink,
            channels,
            rate,
            align: plan.align,
            limit: plan
                .seconds
                .map(|s| (s.max(0.0) * f64::from(rate)).round() as u64),
        }))
    }

    /// Runs the session's threads and streams until it ends, then joins
    /// them; `outcome` learns how it ended and what the take holds.
    fn threads(
        &self,
        wiring: Wiring,
        feed: Option<Box<dyn Feed + '_>>,
        clock: Clock,
        ends: Ends,
        observer: &dyn Observer,
        outcome: &mut Outcome,
    ) -> Result<(), EngineError> {
        let Wiring {
            capture,
            playbacks,
            feed_rings,
            disk,
            midi_disk,
        } = wiring;
        std::thread::scope(|scope| {
            let (shared, stop) = (&*self.shared, &self.stop);
            let disk = disk.map(|d| scope.spawn(|| d.run(shared, stop, &self.full, &self.written)));
            let midi = midi_disk.map(|d| scope.spawn(|| d.run(stop)));
            let block = clock.buffer.map_or(FEED_FRAMES, |b| {
                (b as usize).clamp(MIN_FEED_FRAMES, FEED_FRAMES)
            });
            let fed = &self.fed;
            let feeder = feed
                .map(|f| scope.spawn(move || feed_loop(f, block, feed_rings, shared, stop, fed)));
            prefill(shared, fed);
            let result = self
                .start_streams(scope, capture, playbacks, clock)
                .map(|streams| {
                    let watched = self.watch(ends, observer);
                    outcome.stopped = watched.stopped;
                    outcome.error = watched.error;
                    stop.store(true, Ordering::Release);
                    close(streams, outcome.error.is_some());
                });
            stop.store(true, Ordering::Release);
            join_workers(feeder, midi, disk, outcome)?;
            result
        })
    }
}

type Worker<'scope, T> = std::thread::ScopedJoinHandle<'scope, T>;

/// Joins the feeder, MIDI and disk threads (in that order, once `stop`
/// is set); their failures become the outcome's error or the result.
fn join_workers(
    feeder: Option<Worker<'_, Result<(), String>>>,
    midi: Option<Worker<'_, std::io::Result<u64>>>,
    disk: Option<Worker<'_, std::io::Result<DiskReport>>>,
    outcome: &mut Outcome,
) -> Result<(), EngineError> {
    if let Some(f) = feeder
        && let Ok(Err(e)) = f.join()
    {
        outcome.error.get_or_insert(e);
    }
    // A MIDI log that fails keeps what it wrote: the take is committed
    // from it, and the failure reported as the session's error.
    if let Some(m) = midi {
        let written = m
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("it panicked")));
        if let Err(e) = written {
            outcome
                .error
                .get_or_insert(format!("cannot write the MIDI take: {e}"));
        }
    }
    if let Some(d) = disk {
        let report: DiskReport = d
            .join()
            .map_err(|_| EngineError::Io("the disk thread failed".into()))?
            .map_err(|e| EngineError::Io(format!("cannot write the take: {e}")))?;
        outcome.take_frames = report.frames;
        outcome.take_skipped = report.skipped;
        outcome.samples = report.samples;
    }
    Ok(())
}

/// The live half (played in the output callback) and the disk half (its
/// log) of a MIDI take, joined by the arrival ring.
fn midi_halves(midi: Option<MidiPlan>) -> (Option<LiveMidi>, Option<MidiDisk>) {
    let Some(plan) = midi else {
        return (None, None);
    };
    let (tx, rx) = RingBuffer::new(ARRIVAL_RING);
    let live = LiveMidi::new(plan.arrivals, tx, plan.synth);
    let disk = MidiDisk {
        ring: rx,
        log: plan.log,
    };
    (Some(live), Some(disk))
}

/// How long the output may wait for the feeder's first blocks.
const PREFILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames fed before the output starts: the first callbacks find audio.
const PREFILL_FRAMES: u64 = (OUTPUT_RING_FRAMES / 2) as u64;

/// Waits until the feeder has queued the first blocks (or has ended).
fn prefill(shared: &Shared, fed: &AtomicU64) {
    let started = Instant::now();
    while fed.load(Ordering::Acquire) < PREFILL_FRAMES
        && !shared.feeder_done.load(Ordering::Acquire)
        && started.elapsed() < PREFILL_TIMEOUT
    {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Closes the device streams. After a device failure they are left
/// open: closing one joins cpal's worker thread, and when the sound
/// server has died that thread can be stuck for good inside the ALSA
/// pulse plugin (seen here: a lock libpulse never releases). A leaked
/// stream of a dead device costs a thread; a hang would lose the take.
fn close(streams: Vec<cpal::Stream>, device_failed: bool) {
    if device_failed {
        std::mem::forget(streams);
    } else {
        drop(streams);
    }
}

fn split<T>(
    pair: Option<(rtrb::Producer<T>, rtrb::Consumer<T>)>,
) -> (Option<rtrb::Producer<T>>, Option<rtrb::Consumer<T>>) {
    match pair {
        Some((p, c)) => (Some(p), Some(c)),
        None => (None, None),
    }
}

fn fill_counters(outcome: &mut Outcome, shared: &Shared, sides: &Sides) {
    let load = |a: &AtomicU64| a.load(Ordering::Acquire);
    outcome.played_frames = load(&shared.out_frames);
    outcome.xruns = load(&shared.xruns);
    outcome.overrun_frames = load(&shared.overrun_frames);
    outcome.underrun_frames = load(&shared.underrun_frames);
    outcome.monitor_short_frames = load(&shared.monitor_short_frames);
    outcome.lost_input_frames = load(&shared.lost_in_frames);
    outcome.lost_output_frames = load(&shared.lost_out_frames);
    outcome.midi_events = load(&shared.midi_events);
    outcome.midi_dropped = load(&shared.midi_dropped);
    let device_in = matches!(sides.input, Some(files::Or::Device(_)));
    let device_out = matches!(sides.outputs.first(), Some(files::Or::Device(_)));
    let ms = |ns: u64| ns as f64 / 1e6;
    if device_in {
        outcome.input_latency_ms = Some(ms(load(&shared.in_latency_ns)));
    }
    if device_out {
        outcome.output_latency_ms = Some(ms(load(&shared.out_latency_ns)));
    }
    if device_in && device_out {
        outcome.stream_offset_seconds = shared.offset_seconds(sides.in_rate);
        outcome.drift_ppm = shared
            .clock_ratio(sides.in_rate)
            .map(|ratio| (ratio - 1.0) * 1e6);
        let id = |label: &Option<String>| {
            let label = label.as_deref().unwrap_or_default();
            label.split(" (").next().unwrap_or_default().to_string()
        };
        outcome.separate_devices = id(&sides.input_label) != id(&sides.output_label);
        let ppm = |marks: &rt::Marks, rate: u32| {
            let min = rt::DRIFT_MIN_SECONDS * u64::from(rate);
            marks.rate_error(rate, min).map(|e| e * 1e6)
        };
        outcome.input_clock_ppm = ppm(&shared.in_marks, sides.in_rate);
        outcome.output_clock_ppm = ppm(&shared.out_marks, ENGINE_RATE);
    }
}

/// Opens (but does not start) every side the session names.
fn open_sides(s: &Session<'_>) -> Result<Sides, EngineError> {
    let files_only = |p: &Option<Port>| p.as_ref().is_none_or(Port::is_file);
    if s.fast && !(files_only(&s.input) && files_only(&s.output) && s.click_output.is_none()) {
        return Err(EngineError::Usage(
            "--fast runs without a sound card: give --input and --output as WAV files".into(),
        ));
    }
    let mut sides = Sides {
        input: None,
        outputs: Vec::new(),
        input_label: None,
        output_label: None,
        in_channels: 0,
        in_rate: ENGINE_RATE,
    };
    if let Some(port) = &s.input {
        let (side, label, channels, rate) = files::open_input(port, s.buffer)?;
        sides.input = Some(side);
        sides.input_label = Some(label);
        sides.in_channels = channels;
        sides.in_rate = rate;
    }
    for port in s.output.iter().chain(&s.click_output) {
        let (side, label) = files::open_output(port, s.buffer)?;
        sides.output_label.get_or_insert(label);
        sides.outputs.push(side);
    }
    Ok(sides)
}

/// How the file clock runs.
#[derive(Clone, Copy)]
struct Clock {
    fast: bool,
    buffer: Option<u32>,
    /// Runs until stopped even when nothing more is fed (a MIDI take).
    endless: bool,
}

impl Running {
    /// Starts device streams and, for file sides, the clock thread.
    fn start_streams<'scope>(
        &'scope self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        capture: Option<Capture>,
        playbacks: Vec<Playback>,
        clock: Clock,
    ) -> Result<Vec<cpal::Stream>, EngineError> {
        let (sides, errors) = (&self.sides, &self.errors);
        let mut streams = Vec::new();
        let mut file_in = None;
        let mut file_outs = Vec::new();
        if let (Some(side), Some(capture)) = (&sides.input, capture) {
            match side {
                files::Or::Device((dev, config, format)) => streams.push(
                    device::open_input(dev, config, *format, capture, errors)
                        .map_err(EngineError::Device)?,
                ),
                files::Or::File(f) => file_in = Some((f, capture)),
            }
        }
        for (side, playback) in sides.outputs.iter().zip(playbacks) {
            match side {
                files::Or::Device((dev, config, format)) => streams.push(
                    device::open_output(dev, config, *format, playback, errors)
                        .map_err(EngineError::Device)?,
                ),
                files::Or::File(f) => file_outs.push((f, playback)),
            }
        }
        if file_in.is_some() || !file_outs.is_empty() {
            let rate = sides.in_rate;
            let (shared, stop) = (&*self.shared, &self.stop);
            scope.spawn(move || {
                if let Err(e) = files::clock(file_in, file_outs, rate, clock, shared, stop) {
                    errors.set_fatal(e);
                }
            });
        }
        Ok(streams)
    }
}

/// Renders the feed into the output rings until it ends or `stop`.
fn feed_loop(
    mut feed: Box<dyn Feed + '_>,
    block: usize,
    mut rings: Vec<rtrb::Producer<f32>>,
    shared: &Shared,
    stop: &AtomicBool,
    fed: &AtomicU64,
) -> Result<(), String> {
    let mut main = vec![0.0; block * CHANNELS];
    let mut click = vec![0.0; block * CHANNELS];
    let mut frame = 0u64;
    let result = loop {
        if stop.load(Ordering::Acquire) {
            break Ok(());
        }
        if rings.iter().any(|r| r.slots() < main.len()) {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        main.fill(0.0);
        click.fill(0.0);
        let separate = (rings.len() > 1).then_some(&mut click[..]);
        let frames = match feed.fill(frame, &mut main, separate) {
            Ok(frames) => frames.min(block),
            Err(e) => break Err(e),
        };
        for (ring, block) in rings.iter_mut().zip([&main, &click]) {
            let _ = ring.push_partial_slice(&block[..frames * CHANNELS]);
        }
        frame += frames as u64;
        fed.store(frame, Ordering::Release);
        if frames < block {
            break Ok(());
        }
    };
    shared.feeder_done.store(true, Ordering::Release);
    result
}

/// What ended the watch.
struct Watched {
    stopped: bool,
    error: Option<String>,
}

/// When a session without an audio take ends, besides Ctrl-C and errors.
#[derive(Clone, Copy)]
struct Ends {
    /// Recording MIDI: the end of the song does not end it.
    recording_midi: bool,
    /// Output frames after which it ends.
    until_frame: Option<u64>,
}

impl Running {
    /// Watches the running session; returns when it should end.
    fn watch(&self, ends: Ends, observer: &dyn Observer) -> Watched {
        let (sides, shared) = (&self.sides, &self.shared);
        let mut input = InputWatch::default();
        let mut drained_at: Option<Instant> = None;
        let mut reported = 0;
        let end = |stopped, error| Watched { stopped, error };
        loop {
            std::thread::sleep(WATCH);
            if observer.cancelled() {
                return end(true, None);
            }
            if let Some(e) = self.errors.take_fatal() {
                return end(false, Some(e));
            }
            if self.full.load(Ordering::Acquire) || self.stop.load(Ordering::Acquire) {
                return end(false, None);
            }
            let in_frames = shared.in_frames.load(Ordering::Acquire);
            let out_frames = shared.out_frames.load(Ordering::Acquire);
            let progress = if sides.input.is_some() {
                in_frames
            } else {
                out_frames
            };
            observer.advance(progress - reported);
            reported = progress;
            if matches!(sides.input, Some(files::Or::Device(_))) && input.stalled(in_frames) {
                let name = sides.input_label.clone().unwrap_or_default();
                let why = self
                    .errors
                    .last()
                    .unwrap_or_else(|| device::explain(&name, &"no audio arrives"));
                return end(false, Some(why));
            }
            if ends.until_frame.is_some_and(|f| out_frames >= f) {
                return end(false, None);
            }
            // Playing only: done once everything fed has been played (and heard).
            let feeding_done = shared.feeder_done.load(Ordering::Acquire);
            let playing_only = sides.input.is_none() && !ends.recording_midi;
            if playing_only && feeding_done && out_frames >= self.fed.load(Ordering::Acquire) {
                let at = *drained_at.get_or_insert_with(Instant::now);
                if at.elapsed() >= DRAIN_TAIL || sides.outputs.iter().all(files::Or::is_file) {
                    return end(false, None);
                }
            }
        }
    }
}

/// When an input device last delivered frames.
struct InputWatch {
    started: Instant,
    frames: u64,
    since: Instant,
}

impl Default for InputWatch {
    fn default() -> Self {
        let now = Instant::now();
        InputWatch {
            started: now,
            frames: 0,
            since: now,
        }
    }
}

impl InputWatch {
    /// Whether the input has stopped delivering: nothing for `STALL`, or
    /// for `START_TIMEOUT` before its first frames.
    fn stalled(&mut self, frames: u64) -> bool {
        if frames != self.frames {
            (self.frames, self.since) = (frames, Instant::now());
        }
        let limit = if frames == 0 { START_TIMEOUT } else { STALL };
        self.since.elapsed() > limit && self.started.elapsed() > limit
    }
}
