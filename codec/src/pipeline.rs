//! The streaming jobs the CLI runs: file → Ogg Opus stem, anything → 48 kHz
//! WAV, and probe. Memory stays flat with duration: blocks of
//! `BLOCK_FRAMES` flow through a bounded channel from a decode thread
//! (decode, downmix, resample) to the encoder on the caller's thread.

use std::io::{Seek, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use crate::analysis::{Loudness, LoudnessReport};
use crate::channels::Downmix;
use crate::decode::{AudioReader, SourceInfo};
use crate::error::{CodecError, Result};
use crate::limits::*;
use crate::ogg_opus::{OggOpusWriter, OpusSettings};
use crate::resample::{To48k, frames_at_48k};
use crate::wav::{WavFormat, WavWriter};

/// Blocks in flight between the decode thread and the encoder. Two keep
/// both busy; more would only use memory.
const BLOCKS_IN_FLIGHT: usize = 3;

/// Hooks for progress and cancellation; called from the job's threads.
pub trait Observer: Sync {
    /// Expected 48 kHz frames (or source frames for probe), once known.
    fn total(&self, _frames: Option<u64>) {}
    /// Frames finished since the last call.
    fn advance(&self, _frames: u64) {}
    /// Polled between blocks; `true` stops the job with `CodecError::Cancelled`.
    fn cancelled(&self) -> bool {
        false
    }
}

/// An observer that watches nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// Decode + downmix + resample: 48 kHz mono or stereo blocks from any file.
pub struct Stem48k {
    reader: AudioReader,
    downmix: Downmix,
    resampler: To48k,
    folded: Vec<f32>,
    done: bool,
}

impl Stem48k {
    pub fn new(reader: AudioReader) -> Result<Self> {
        let info = reader.info();
        let downmix = Downmix::new(&info.layout);
        let resampler = To48k::new(info.sample_rate, downmix.out_channels())?;
        Ok(Stem48k {
            reader,
            downmix,
            resampler,
            folded: Vec::new(),
            done: false,
        })
    }

    pub fn info(&self) -> &SourceInfo {
        self.reader.info()
    }

    pub fn channels(&self) -> usize {
        self.downmix.out_channels()
    }

    /// Expected output frames, if the source declares its length.
    pub fn expected_frames(&self) -> Option<u64> {
        let info = self.reader.info();
        info.frames.map(|f| frames_at_48k(f, info.sample_rate))
    }

    /// Replaces `out` with the next samples; `false` once the stream is over.
    pub fn next_block(&mut self, out: &mut Vec<f32>) -> Result<bool> {
        out.clear();
        while out.len() < BLOCK_FRAMES * self.channels() && !self.done {
            match self.reader.read_block()? {
                Some(block) => {
                    self.folded.clear();
                    self.downmix.process(block, &mut self.folded);
                    self.resampler.push(&self.folded, out)?;
                }
                None => {
                    self.resampler.finish(out)?;
                    self.done = true;
                }
            }
        }
        Ok(!out.is_empty() || !self.done)
    }
}

/// Runs `stage` on its own thread and hands each block to `sink`.
fn pump(
    mut stage: Stem48k,
    obs: &dyn Observer,
    mut sink: impl FnMut(&[f32]) -> Result<()>,
) -> Result<()> {
    let (full_tx, full_rx) = sync_channel::<Result<Vec<f32>>>(BLOCKS_IN_FLIGHT);
    let (empty_tx, empty_rx) = sync_channel::<Vec<f32>>(BLOCKS_IN_FLIGHT + 1);
    std::thread::scope(|scope| {
        scope.spawn(move || produce(&mut stage, obs, full_tx, empty_rx));
        consume(full_rx, empty_tx, obs, &mut sink)
    })
}

fn produce(
    stage: &mut Stem48k,
    obs: &dyn Observer,
    full: SyncSender<Result<Vec<f32>>>,
    empty: Receiver<Vec<f32>>,
) {
    loop {
        if obs.cancelled() {
            let _ = full.send(Err(CodecError::Cancelled));
            return;
        }
        let mut buf = empty.try_recv().unwrap_or_default();
        match stage.next_block(&mut buf) {
            Ok(true) => {
                if full.send(Ok(buf)).is_err() {
                    return; // the consumer stopped (its own error)
                }
            }
            Ok(false) => return,
            Err(e) => {
                let _ = full.send(Err(e));
                return;
            }
        }
    }
}

fn consume(
    full: Receiver<Result<Vec<f32>>>,
    empty: SyncSender<Vec<f32>>,
    obs: &dyn Observer,
    sink: &mut impl FnMut(&[f32]) -> Result<()>,
) -> Result<()> {
    for block in full {
        let block = block?;
        sink(&block)?;
        if obs.cancelled() {
            return Err(CodecError::Cancelled);
        }
        let _ = empty.try_send(block);
    }
    Ok(())
}

/// What an encode produced.
#[derive(Debug, Clone)]
pub struct EncodeReport {
    pub source: SourceInfo,
    pub channels: usize,
    /// 48 kHz frames in the stem.
    pub frames: u64,
    pub settings: OpusSettings,
}

/// Encodes any readable audio to an Ogg Opus stem written to `out`.
pub fn encode_opus<W: Write + Send>(
    reader: AudioReader,
    out: W,
    bitrate_kbps: Option<u32>,
    obs: &dyn Observer,
) -> Result<(W, EncodeReport)> {
    let stage = Stem48k::new(reader)?;
    let source = stage.info().clone();
    let channels = stage.channels();
    let settings = OpusSettings::for_channels(channels).with_bitrate(bitrate_kbps)?;
    // libopus spends its precision where the source had bits; floats and
    // lossy sources count as 24-bit, as in opusenc.
    let depth = source.bits_per_sample.unwrap_or(24);
    let mut writer = OggOpusWriter::new(out, channels, source.sample_rate, settings, depth)?;
    obs.total(stage.expected_frames());
    pump(stage, obs, |block| {
        writer.write(block)?;
        obs.advance((block.len() / channels) as u64);
        Ok(())
    })?;
    let (out, frames) = writer.finish()?;
    Ok((
        out,
        EncodeReport {
            source,
            channels,
            frames,
            settings,
        },
    ))
}

/// What a decode to WAV produced.
#[derive(Debug, Clone)]
pub struct DecodeReport {
    pub source: SourceInfo,
    pub channels: usize,
    pub frames: u64,
}

/// Decodes any readable audio (an Ogg Opus stem above all) to a 48 kHz WAV.
pub fn decode_wav<W: Write + Seek + Send>(
    reader: AudioReader,
    out: W,
    format: WavFormat,
    obs: &dyn Observer,
) -> Result<DecodeReport> {
    let stage = Stem48k::new(reader)?;
    let source = stage.info().clone();
    let channels = stage.channels();
    let mut writer = WavWriter::new(out, channels, STEM_RATE_HZ, format)?;
    let mut frames = 0u64;
    obs.total(stage.expected_frames());
    pump(stage, obs, |block| {
        writer.write(block)?;
        let n = (block.len() / channels) as u64;
        frames += n;
        obs.advance(n);
        Ok(())
    })?;
    writer.finish()?;
    Ok(DecodeReport {
        source,
        channels,
        frames,
    })
}

/// What `probe` reports about a file.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub source: SourceInfo,
    /// Frames actually decoded (at the source rate).
    pub frames: u64,
    pub loudness: LoudnessReport,
}

impl ProbeReport {
    pub fn duration_seconds(&self) -> f64 {
        self.frames as f64 / self.source.sample_rate as f64
    }
}

/// Decodes the whole file at its own rate and layout, measuring loudness.
pub fn probe(mut reader: AudioReader, obs: &dyn Observer) -> Result<ProbeReport> {
    let source = reader.info().clone();
    let mut meter = Loudness::new(&source.layout, source.sample_rate)?;
    obs.total(source.frames);
    while let Some(block) = reader.read_block()? {
        meter.push(block)?;
        obs.advance((block.len() / source.channels) as u64);
        if obs.cancelled() {
            return Err(CodecError::Cancelled);
        }
    }
    let loudness = meter.finish()?;
    Ok(ProbeReport {
        frames: reader.frames_read(),
        source,
        loudness,
    })
}
