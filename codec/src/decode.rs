//! Opens any audio file a studio brings and streams its samples as
//! interleaved f32 at the file's own rate and channel count. Symphonia does
//! wav, flac, mp3, ogg vorbis and m4a/aac; Ogg Opus goes through libopus.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use symphonia::core::audio::{Channels, Position};
use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;

use crate::channels::{Speaker, default_layout};
use crate::error::{CodecError, Result};
use crate::guard::guarded;
use crate::limits::*;
use crate::mp4_edit::{Edit, audio_edit};
use crate::ogg_opus::{OggOpusReader, last_granule, looks_like_ogg_opus};

/// What a file holds, as far as its headers tell.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// Container short name: "wav", "flac", "mp3", "ogg", "isomp4".
    pub container: String,
    /// Codec short name: "pcm_s16le", "flac", "mp3", "vorbis", "aac", "opus".
    pub codec: String,
    pub channels: usize,
    pub layout: Vec<Speaker>,
    pub sample_rate: u32,
    /// Frames (samples per channel) the headers declare, if they do.
    pub frames: Option<u64>,
    /// Bit depth of the source, if it has one (lossy codecs don't).
    pub bits_per_sample: Option<u32>,
}

impl SourceInfo {
    fn validate(&self) -> Result<()> {
        if self.channels == 0 {
            return Err(CodecError::malformed("audio", "0 channels"));
        }
        if self.channels > MAX_INPUT_CHANNELS {
            return Err(CodecError::Limit(format!(
                "{} channels (at most {MAX_INPUT_CHANNELS})",
                self.channels
            )));
        }
        if !(MIN_INPUT_RATE_HZ..=MAX_INPUT_RATE_HZ).contains(&self.sample_rate) {
            return Err(CodecError::Limit(format!(
                "sample rate {} Hz (accepted: {MIN_INPUT_RATE_HZ}..={MAX_INPUT_RATE_HZ})",
                self.sample_rate
            )));
        }
        if self.frames.is_some_and(|f| f > self.max_frames()) {
            return Err(CodecError::Limit(format!(
                "longer than {} hours",
                MAX_DURATION_SECONDS / 3600
            )));
        }
        Ok(())
    }

    fn max_frames(&self) -> u64 {
        MAX_DURATION_SECONDS * self.sample_rate as u64
    }
}

/// Anything we can read audio from: files, and in-memory bytes for tests and fuzzing.
pub trait Source: Read + Seek + Send + Sync + 'static {}
impl<T: Read + Seek + Send + Sync + 'static> Source for T {}

enum Backend {
    Symphonia(Box<SymphoniaSource>),
    Opus(Box<OggOpusReader<Box<dyn Source>>>),
}

/// A streaming decoder for one audio file.
pub struct AudioReader {
    info: SourceInfo,
    backend: Backend,
    frames_read: u64,
    /// Set once the decoder panicked: its state is not to be trusted again.
    failed: Option<String>,
}

impl AudioReader {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)?;
        if file.metadata()?.is_dir() {
            return Err(CodecError::Io(std::io::Error::other("is a directory")));
        }
        let ext = path.extension().and_then(|e| e.to_str());
        Self::from_source(Box::new(BufReader::new(file)), ext)
    }

    /// `ext` is only a hint; the content decides.
    pub fn from_source(src: Box<dyn Source>, ext: Option<&str>) -> Result<Self> {
        guarded(|| Self::open_source(src, ext))
    }

    fn open_source(mut src: Box<dyn Source>, ext: Option<&str>) -> Result<Self> {
        let mut prefix = [0u8; 64];
        let n = read_up_to(&mut src, &mut prefix)?;
        src.seek(SeekFrom::Start(0))?;
        if n == 0 {
            return Err(CodecError::Truncated("the file is empty".into()));
        }
        let (info, backend) = if looks_like_ogg_opus(&prefix[..n]) {
            open_opus(src)?
        } else {
            let s = SymphoniaSource::open(src, ext)?;
            (s.info.clone(), Backend::Symphonia(Box::new(s)))
        };
        info.validate()?;
        Ok(AudioReader {
            info,
            backend,
            frames_read: 0,
            failed: None,
        })
    }

    pub fn info(&self) -> &SourceInfo {
        &self.info
    }

    /// Frames delivered so far.
    pub fn frames_read(&self) -> u64 {
        self.frames_read
    }

    /// The next block of interleaved samples (`info().channels` per frame),
    /// or `None` at the end. A file shorter than its header says is an error.
    pub fn read_block(&mut self) -> Result<Option<&[f32]>> {
        if let Some(why) = &self.failed {
            return Err(CodecError::malformed("audio", why.clone()));
        }
        // The block is re-borrowed after the boundary: a range, not a slice,
        // crosses it.
        let range = match guarded(|| self.next_range()) {
            Ok(r) => r,
            Err(e) => {
                if matches!(e, CodecError::Malformed { .. }) {
                    self.failed = Some(e.to_string());
                }
                return Err(e);
            }
        };
        Ok(range.map(|r| &self.block()[r]))
    }

    fn block(&self) -> &[f32] {
        match &self.backend {
            Backend::Symphonia(s) => s.block(),
            Backend::Opus(r) => r.block(),
        }
    }

    /// Decodes the next block; returns where it lies in the backend's buffer.
    fn next_range(&mut self) -> Result<Option<std::ops::Range<usize>>> {
        let channels = self.info.channels;
        let max_frames = self.info.max_frames();
        let promised = self.info.frames.filter(|_| self.is_exact_length());
        let read_before = self.frames_read;
        let range = match &mut self.backend {
            Backend::Symphonia(s) => s.read_range()?,
            Backend::Opus(r) => r.read_range()?,
        };
        let Some(range) = range else {
            return match promised {
                Some(declared) if read_before < declared => Err(CodecError::Truncated(format!(
                    "the header promises {declared} frames, the file holds {read_before}"
                ))),
                _ => Ok(None),
            };
        };
        self.frames_read += (range.len() / channels) as u64;
        if self.frames_read > max_frames {
            return Err(CodecError::Limit(format!(
                "longer than {} hours",
                MAX_DURATION_SECONDS / 3600
            )));
        }
        Ok(Some(range))
    }

    /// Containers whose declared length is exact (not an estimate from the bitrate).
    fn is_exact_length(&self) -> bool {
        matches!(
            self.info.container.as_str(),
            "wave" | "wav" | "flac" | "aiff"
        )
    }
}

fn read_up_to(src: &mut dyn Source, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn open_opus(mut src: Box<dyn Source>) -> Result<(SourceInfo, Backend)> {
    const TAIL_BYTES: u64 = 65_536 + 282;
    let len = src.seek(SeekFrom::End(0))?;
    src.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))?;
    let mut tail = Vec::new();
    src.by_ref().take(TAIL_BYTES).read_to_end(&mut tail)?;
    src.seek(SeekFrom::Start(0))?;
    let reader = OggOpusReader::new(src)?;
    let pre_skip = reader.head().pre_skip as u64;
    let channels = reader.channels();
    let info = SourceInfo {
        container: "ogg".into(),
        codec: "opus".into(),
        channels,
        layout: default_layout(channels),
        sample_rate: STEM_RATE_HZ,
        frames: last_granule(&tail).map(|g| g.saturating_sub(pre_skip)),
        bits_per_sample: None,
    };
    Ok((info, Backend::Opus(Box::new(reader))))
}

struct SymphoniaSource {
    format: Box<dyn FormatReader>,
    decoder: Box<dyn AudioDecoder>,
    track_id: u32,
    info: SourceInfo,
    samples: Vec<f32>,
    /// Frames still to drop at the start (MP4 encoder priming).
    skip_frames: u64,
    /// Frames still to deliver, when an MP4 edit list says where the audio ends.
    keep_frames: Option<u64>,
}

fn sym_err(e: SymError) -> CodecError {
    match e {
        SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            CodecError::Truncated("the file ends in the middle of a packet".into())
        }
        SymError::IoError(io) => CodecError::Io(io),
        SymError::DecodeError(m) => CodecError::malformed("audio", m),
        SymError::Unsupported(m) => CodecError::Unsupported(m.to_string()),
        SymError::LimitError(m) => CodecError::Limit(m.to_string()),
        other => CodecError::malformed("audio", other.to_string()),
    }
}

impl SymphoniaSource {
    fn open(src: Box<dyn Source>, ext: Option<&str>) -> Result<Self> {
        let mut src = src;
        let raw_edit = audio_edit(&mut src);
        let len = src.seek(SeekFrom::End(0))?;
        src.seek(SeekFrom::Start(0))?;
        let mss = MediaSourceStream::new(Box::new(SourceAdapter { src, len }), Default::default());
        let mut hint = Hint::new();
        if let Some(ext) = ext {
            hint.with_extension(ext);
        }
        let format = symphonia::default::get_probe()
            .probe(
                &hint,
                mss,
                FormatOptions::default(),
                MetadataOptions::default(),
            )
            .map_err(|e| match e {
                SymError::Unsupported(_) => CodecError::UnknownFormat,
                other => sym_err(other),
            })?;
        let track = format
            .default_track(TrackType::Audio)
            .ok_or(CodecError::NoAudioTrack)?;
        let params = track
            .codec_params
            .as_ref()
            .and_then(|p| p.audio())
            .ok_or(CodecError::NoAudioTrack)?
            .clone();
        let track_id = track.id;
        let frames = track.num_frames;
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(&params, &AudioDecoderOptions::default())
            .map_err(|e| match e {
                SymError::Unsupported(_) => CodecError::Unsupported("this audio codec".into()),
                other => sym_err(other),
            })?;
        let layout = params.channels.as_ref().map(layout_of).unwrap_or_default();
        let sample_rate = params.sample_rate.unwrap_or(0);
        let edit = raw_edit.and_then(|e| e.at_rate(sample_rate));
        let info = SourceInfo {
            container: format.format_info().short_name.to_string(),
            codec: decoder.codec_info().short_name.to_string(),
            channels: layout.len(),
            layout,
            sample_rate,
            frames: edit.and_then(|e| e.keep_frames).or(frames),
            bits_per_sample: params.bits_per_sample,
        };
        info.validate()?;
        let Edit {
            skip_frames,
            keep_frames,
        } = edit.unwrap_or(Edit {
            skip_frames: 0,
            keep_frames: None,
        });
        Ok(SymphoniaSource {
            format,
            decoder,
            track_id,
            info,
            samples: Vec::new(),
            skip_frames,
            keep_frames,
        })
    }

    fn block(&self) -> &[f32] {
        &self.samples
    }

    /// Decodes the next packet; the range of `block()` it filled.
    fn read_range(&mut self) -> Result<Option<std::ops::Range<usize>>> {
        loop {
            let packet = match self.format.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) | Err(SymError::ResetRequired) => return Ok(None),
                Err(e) => return Err(sym_err(e)),
            };
            if packet.track_id != self.track_id {
                continue;
            }
            let decoded = self.decoder.decode(&packet).map_err(sym_err)?;
            let spec_channels = decoded.spec().channels().count();
            if spec_channels != self.info.channels {
                return Err(CodecError::Unsupported(format!(
                    "channel count changes mid-stream ({} → {spec_channels})",
                    self.info.channels
                )));
            }
            if decoded.frames() > MAX_FRAMES_PER_PACKET {
                return Err(CodecError::Limit(format!(
                    "a packet of {} frames",
                    decoded.frames()
                )));
            }
            decoded.copy_to_vec_interleaved(&mut self.samples);
            if let Some(range) = self.apply_edit() {
                return Ok(Some(range));
            }
            if self.keep_frames == Some(0) {
                return Ok(None);
            }
        }
    }

    /// The part of the decoded block the edit list keeps, if any.
    fn apply_edit(&mut self) -> Option<std::ops::Range<usize>> {
        let ch = self.info.channels;
        let frames = (self.samples.len() / ch) as u64;
        let skip = self.skip_frames.min(frames);
        self.skip_frames -= skip;
        let mut end = frames;
        if let Some(keep) = &mut self.keep_frames {
            end = end.min(skip + *keep);
            *keep -= end - skip;
        }
        (end > skip).then(|| skip as usize * ch..end as usize * ch)
    }
}

fn layout_of(channels: &Channels) -> Vec<Speaker> {
    match channels {
        Channels::Positioned(pos) => pos.iter().map(speaker_of).collect(),
        Channels::Discrete(n) => default_layout(*n as usize),
        other => vec![Speaker::Other; other.count()],
    }
}

fn speaker_of(p: Position) -> Speaker {
    match p {
        Position::FRONT_LEFT => Speaker::FrontLeft,
        Position::FRONT_RIGHT => Speaker::FrontRight,
        Position::FRONT_CENTER => Speaker::FrontCenter,
        Position::LFE1 | Position::LFE2 => Speaker::Lfe,
        Position::REAR_LEFT => Speaker::RearLeft,
        Position::REAR_RIGHT => Speaker::RearRight,
        Position::SIDE_LEFT => Speaker::SideLeft,
        Position::SIDE_RIGHT => Speaker::SideRight,
        Position::REAR_CENTER => Speaker::RearCenter,
        _ => Speaker::Other,
    }
}

/// Symphonia wants to know whether the source can seek and how long it is.
struct SourceAdapter {
    src: Box<dyn Source>,
    len: u64,
}

impl Read for SourceAdapter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.src.read(buf)
    }
}

impl Seek for SourceAdapter {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.src.seek(pos)
    }
}

impl MediaSource for SourceAdapter {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        Some(self.len)
    }
}
