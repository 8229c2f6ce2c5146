//! WAV files in place of a sound card: `--input FILE.wav` is read and
//! `--output FILE.wav` written by a clock thread that calls the very same
//! callback code as the devices, one buffer at a time — paced in real
//! time, or as fast as the disk goes with `--fast` (then nothing is ever
//! dropped: the clock waits for the rings instead).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use meshstudio_codec::{AudioReader, WavFormat, WavWriter};

use super::device::{self, ENGINE_RATE};
use super::rt::{Capture, Playback, Shared};
use super::{Clock, EngineError, Port};
use crate::atomic::{AtomicFile, TrackedWriter};
use crate::audio::render::CHANNELS;

/// Frames per clock tick when no `--buffer` is given.
const DEFAULT_PERIOD: usize = 256;
/// Most input channels a file may have (a take keeps two).
const MAX_FILE_CHANNELS: usize = 64;

/// A device, or a file standing in for one.
pub enum Or<D> {
    Device(D),
    File(FileSide),
}

impl<D> Or<D> {
    pub fn is_file(&self) -> bool {
        matches!(self, Or::File(_))
    }
}

impl Or<DeviceSide> {
    /// Channels per frame on this side (files are written stereo).
    pub fn channels(&self) -> usize {
        match self {
            Or::Device((_, config, _)) => usize::from(config.channels),
            Or::File(_) => CHANNELS,
        }
    }
}

/// A file side; the clock thread takes what it needs out of the mutex.
pub struct FileSide {
    path: PathBuf,
    reader: Mutex<Option<AudioReader>>,
}

pub type DeviceSide = (cpal::Device, cpal::StreamConfig, cpal::SampleFormat);

/// Opens the input: (side, label, channels, rate).
pub fn open_input(
    port: &Port,
    buffer: Option<u32>,
) -> Result<(Or<DeviceSide>, String, usize, u32), EngineError> {
    if let Port::File(path) = port {
        let reader = AudioReader::open(path)
            .map_err(|e| EngineError::Usage(format!("cannot read {}: {e}", path.display())))?;
        let (channels, rate) = (reader.info().channels, reader.info().sample_rate);
        if channels == 0 || channels > MAX_FILE_CHANNELS {
            return Err(EngineError::Usage(format!(
                "{}: {channels} channels; an input file has 1 to {MAX_FILE_CHANNELS}",
                path.display()
            )));
        }
        let side = FileSide {
            path: path.clone(),
            reader: Mutex::new(Some(reader)),
        };
        return Ok((Or::File(side), path.display().to_string(), channels, rate));
    }
    let dev = device::find(port.device_id(), true).map_err(EngineError::Device)?;
    let (config, format) = device::choose(&dev, true, buffer).map_err(EngineError::Device)?;
    let (channels, rate) = (usize::from(config.channels), config.sample_rate);
    let label = device::label(&dev);
    Ok((Or::Device((dev, config, format)), label, channels, rate))
}

/// Opens an output: (side, label). Devices must take 48 kHz.
pub fn open_output(
    port: &Port,
    buffer: Option<u32>,
) -> Result<(Or<DeviceSide>, String), EngineError> {
    if let Port::File(path) = port {
        let side = FileSide {
            path: path.clone(),
            reader: Mutex::new(None),
        };
        return Ok((Or::File(side), path.display().to_string()));
    }
    let dev = device::find(port.device_id(), false).map_err(EngineError::Device)?;
    let (config, format) = device::choose(&dev, false, buffer).map_err(EngineError::Device)?;
    let label = device::label(&dev);
    if config.sample_rate != ENGINE_RATE {
        return Err(EngineError::Device(format!(
            "{label} does not offer {ENGINE_RATE} Hz (only {} Hz); choose another output",
            config.sample_rate
        )));
    }
    Ok((Or::Device((dev, config, format)), label))
}

/// An output file being written.
struct FileOut {
    target: AtomicFile,
    writer: WavWriter<TrackedWriter>,
    playback: Playback,
    buf: Vec<f32>,
    /// Frames written so far: where the next buffer is on the file clock.
    frames: u64,
}

/// The clock thread: ticks the file sides until `stop`. A read or write
/// failure, or the input file's end, stops the session.
pub fn clock(
    input: Option<(&FileSide, Capture)>,
    outputs: Vec<(&FileSide, Playback)>,
    rate: u32,
    clock: Clock,
    shared: &Shared,
    stop: &AtomicBool,
) -> Result<(), String> {
    let period = clock.buffer.map_or(DEFAULT_PERIOD, |b| b as usize).max(1);
    let mut outs = Vec::new();
    for (side, playback) in outputs {
        outs.push(
            open_out(&side.path, playback, period)
                .inspect_err(|_| stop.store(true, Ordering::Release))?,
        );
    }
    let mut input = input.and_then(|(side, cap)| {
        let reader = side.reader.lock().ok()?.take()?;
        Some((reader, cap, Vec::new(), 0u64))
    });
    let started = Instant::now();
    let mut ticks = 0u64;
    let result = loop {
        if stop.load(Ordering::Acquire) {
            break Ok(());
        }
        if let Some((reader, capture, pending, fed)) = &mut input {
            match tick_input(reader, capture, pending, fed, period, clock.fast, stop) {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
        }
        let mut ended = !outs.is_empty();
        let alone = input.is_none() && !clock.endless;
        for out in &mut outs {
            ended &= tick_output(out, alone, shared, stop)?;
        }
        if ended && alone {
            break Ok(());
        }
        ticks += 1;
        if !clock.fast {
            let due = Duration::from_secs_f64((ticks * period as u64) as f64 / f64::from(rate));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    };
    stop.store(true, Ordering::Release);
    for out in outs {
        let FileOut { target, writer, .. } = out;
        writer.finish().map_err(|e| e.to_string())?;
        target.commit().map_err(|e| e.to_string())?;
    }
    result
}

fn open_out(path: &Path, playback: Playback, period: usize) -> Result<FileOut, String> {
    let fail = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
    let target = AtomicFile::create(path).map_err(|e| fail(&e))?;
    let writer = target.writer().map_err(|e| fail(&e))?;
    let writer =
        WavWriter::new(writer, CHANNELS, ENGINE_RATE, WavFormat::Float32).map_err(|e| fail(&e))?;
    Ok(FileOut {
        target,
        writer,
        playback,
        buf: vec![0.0; period * CHANNELS],
        frames: 0,
    })
}

/// Feeds one period of the input file; false at its end.
fn tick_input(
    reader: &mut AudioReader,
    capture: &mut Capture,
    pending: &mut Vec<f32>,
    fed: &mut u64,
    period: usize,
    fast: bool,
    stop: &AtomicBool,
) -> Result<bool, String> {
    let ch = reader.info().channels;
    while pending.len() < period * ch {
        match reader.read_block().map_err(|e| e.to_string())? {
            Some(block) => pending.extend_from_slice(block),
            None => break,
        }
    }
    if pending.is_empty() {
        return Ok(false);
    }
    let n = pending.len().min(period * ch);
    // Faster than real time, the clock waits for the disk instead of dropping.
    while fast && capture.room() < n / ch * capture.take_channels && !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(1));
    }
    capture.process(
        &pending[..n],
        file_clock_ns(*fed, reader.info().sample_rate),
        0,
    );
    *fed += (n / ch) as u64;
    pending.drain(..n);
    Ok(true)
}

/// Plays one period into the output file; true once the feed has ended
/// and everything it fed is written. Playing alone (`trim`), the file ends
/// with the song's last frame; next to an input it keeps whole periods,
/// in step with the take.
fn tick_output(
    out: &mut FileOut,
    trim: bool,
    shared: &Shared,
    stop: &AtomicBool,
) -> Result<bool, String> {
    let want = out.buf.len();
    // A file never underruns: the clock waits for the feeder (paced or not).
    while out.playback.queued() < want
        && !shared.feeder_done.load(Ordering::Acquire)
        && !stop.load(Ordering::Acquire)
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let got = out
        .playback
        .process(&mut out.buf, file_clock_ns(out.frames, ENGINE_RATE), 0);
    out.frames += (want / CHANNELS) as u64;
    let ended = got < want / CHANNELS && shared.feeder_done.load(Ordering::Acquire);
    let keep = if ended && trim { got * CHANNELS } else { want };
    out.writer
        .write(&out.buf[..keep])
        .map_err(|e| e.to_string())?;
    Ok(ended)
}

/// When a file side's frame `frames` is "heard" or "captured": exactly
/// where it lies on the file clock, so both sides' timestamps agree to the
/// frame and an overdub between files lines up the same way every run.
/// Any origin serves; one second keeps the stamps clear of zero.
fn file_clock_ns(frames: u64, rate: u32) -> u64 {
    const ORIGIN_NS: u64 = 1_000_000_000;
    ORIGIN_NS + frames * 1_000_000_000 / u64::from(rate.max(1))
}
