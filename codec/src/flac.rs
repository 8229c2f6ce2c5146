//! FLAC output: a recorded take's lossless master, 24-bit integer PCM at
//! the capture rate (flacenc), written frame by frame — compressed, about
//! 60 % of the 24-bit PCM size.

use std::io::{Seek, SeekFrom, Write};

use flacenc::bitsink::ByteSink;
use flacenc::component::{BitRepr, Stream};
use flacenc::error::{SourceError, Verify};
use flacenc::source::{Context, Fill, FrameBuf, Source};

use crate::decode::AudioReader;
use crate::error::{CodecError, Result};
use crate::pipeline::Observer;

/// Bits per sample of a master: what good interfaces deliver.
pub const MASTER_BITS: usize = 24;
/// Frames per FLAC block: the reference encoder's default.
const BLOCK_SIZE: usize = 4096;
/// Full scale of a 24-bit sample.
const FULL_SCALE_24: f32 = 8_388_607.0;

/// What a FLAC encode produced.
#[derive(Debug, Clone)]
pub struct FlacReport {
    pub channels: usize,
    pub sample_rate: u32,
    pub frames: u64,
}

/// Encodes `reader` (at its own rate and channel count) to FLAC into `out`,
/// frame by frame: memory stays at one block however long the take. The
/// header (STREAMINFO: total frames, MD5, frame sizes) is known only at
/// the end, so a placeholder of the same size goes first and is
/// overwritten then.
pub fn encode_flac<W: Write + Seek>(
    reader: AudioReader,
    mut out: W,
    obs: &dyn Observer,
) -> Result<(W, FlacReport)> {
    let info = reader.info().clone();
    let channels = info.channels;
    let config = flacenc::config::Encoder::default()
        .into_verified()
        .map_err(|(_, e)| CodecError::Encoder(format!("FLAC configuration: {e:?}")))?;
    obs.total(info.frames);
    let mut source = ReaderSource {
        reader,
        pending: Vec::new(),
        ints: Vec::new(),
        frames: 0,
        obs,
        failure: None,
    };
    let flac = |e: &dyn std::fmt::Debug| CodecError::Encoder(format!("FLAC: {e:?}"));
    let mut header =
        Stream::new(source.sample_rate(), channels, MASTER_BITS).map_err(|e| flac(&e))?;
    header
        .stream_info_mut()
        .set_block_sizes(BLOCK_SIZE, BLOCK_SIZE)
        .map_err(|e| flac(&e))?;
    let start = out.stream_position()?;
    out.write_all(&stream_bytes(&header)?)?;
    let mut buf = (
        FrameBuf::with_size(channels, BLOCK_SIZE).map_err(|e| flac(&e))?,
        Context::new(MASTER_BITS, channels),
    );
    let mut sink = ByteSink::new();
    loop {
        let read = source.read_samples(BLOCK_SIZE, &mut buf);
        if let Some(e) = source.failure.take() {
            return Err(e);
        }
        if read.map_err(|e| flac(&e))? == 0 {
            break;
        }
        let number = buf.1.current_frame_number().unwrap_or_default();
        let frame = flacenc::encode_fixed_size_frame(&config, &buf.0, number, header.stream_info())
            .map_err(|e| flac(&e))?;
        header.stream_info_mut().update_frame_info(&frame);
        sink.clear();
        frame.write(&mut sink).map_err(|e| flac(&e))?;
        out.write_all(sink.as_slice())?;
    }
    let info_mut = header.stream_info_mut();
    info_mut.set_md5_digest(&buf.1.md5_digest());
    info_mut.set_total_samples(buf.1.total_samples());
    let end = out.stream_position()?;
    out.seek(SeekFrom::Start(start))?;
    out.write_all(&stream_bytes(&header)?)?;
    out.seek(SeekFrom::Start(end))?;
    Ok((
        out,
        FlacReport {
            channels,
            sample_rate: info.sample_rate,
            frames: source.frames,
        },
    ))
}

/// A stream written out, its STREAMINFO mended. With no frames it is the
/// header, "fLaC" and STREAMINFO: 42 bytes whatever its values, so the
/// final one fits the placeholder's place.
fn stream_bytes(header: &Stream) -> Result<Vec<u8>> {
    let mut sink = ByteSink::new();
    header
        .write(&mut sink)
        .map_err(|e| CodecError::Encoder(format!("FLAC: {e:?}")))?;
    let mut bytes = sink.into_inner();
    fix_min_block_size(&mut bytes);
    Ok(bytes)
}

/// Where STREAMINFO's minimum and maximum block sizes sit: after "fLaC"
/// and the 4-byte metadata block header.
const MIN_BLOCK_AT: usize = 8;
const MAX_BLOCK_AT: usize = 10;

/// flacenc counts the short last block as the stream's minimum block size;
/// the format excludes it, and decoders that read min ≠ max as a variable
/// block size (symphonia) then misread the stream. A fixed-size stream
/// states min = max.
fn fix_min_block_size(bytes: &mut [u8]) {
    if bytes.len() >= MAX_BLOCK_AT + 2 && bytes.starts_with(b"fLaC") {
        bytes.copy_within(MAX_BLOCK_AT..MAX_BLOCK_AT + 2, MIN_BLOCK_AT);
    }
}

/// Feeds flacenc from an `AudioReader`, as 24-bit integers.
struct ReaderSource<'a> {
    reader: AudioReader,
    /// Decoded samples not handed out yet.
    pending: Vec<f32>,
    ints: Vec<i32>,
    frames: u64,
    obs: &'a dyn Observer,
    /// Why reading stopped, kept here: flacenc's error type only carries text.
    failure: Option<CodecError>,
}

impl ReaderSource<'_> {
    fn fail(&mut self, e: CodecError) -> SourceError {
        let text = e.to_string();
        self.failure = Some(e);
        SourceError::from_io_error(std::io::Error::other(text))
    }
}

impl Source for ReaderSource<'_> {
    fn channels(&self) -> usize {
        self.reader.info().channels
    }

    fn bits_per_sample(&self) -> usize {
        MASTER_BITS
    }

    fn sample_rate(&self) -> usize {
        self.reader.info().sample_rate as usize
    }

    fn read_samples<F: Fill>(
        &mut self,
        block_size: usize,
        dest: &mut F,
    ) -> std::result::Result<usize, SourceError> {
        let channels = Source::channels(self);
        let want = block_size * channels;
        while self.pending.len() < want {
            if self.obs.cancelled() {
                return Err(self.fail(CodecError::Cancelled));
            }
            match self.reader.read_block() {
                Ok(Some(block)) => self.pending.extend_from_slice(block),
                Ok(None) => break,
                Err(e) => return Err(self.fail(e)),
            }
        }
        let take = want.min(self.pending.len());
        self.ints.clear();
        let to_int = |s: &f32| (s.clamp(-1.0, 1.0) * FULL_SCALE_24).round() as i32;
        self.ints
            .extend(self.pending.drain(..take).as_slice().iter().map(to_int));
        dest.fill_interleaved(&self.ints)?;
        let frames = take / channels;
        self.frames += frames as u64;
        self.obs.advance(frames as u64);
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Quiet;

    /// A tone as a float WAV in memory, read back through our decoder.
    fn tone_reader(frames: usize, channels: usize, rate: u32) -> AudioReader {
        let mut wav = std::io::Cursor::new(Vec::new());
        let mut w = crate::wav::WavWriter::new(&mut wav, channels, rate, crate::WavFormat::Float32)
            .expect("writer");
        let samples: Vec<f32> = (0..frames * channels)
            .map(|i| ((i / channels) as f32 * 0.05).sin() * 0.5)
            .collect();
        w.write(&samples).expect("write");
        w.finish().expect("finish");
        let src = Box::new(std::io::Cursor::new(wav.into_inner()));
        AudioReader::from_source(src, Some("wav")).expect("reader")
    }

    /// The same input through flacenc's whole-stream encoder, in memory.
    fn whole_stream(reader: AudioReader) -> Vec<u8> {
        let config = flacenc::config::Encoder::default()
            .into_verified()
            .expect("config");
        let source = ReaderSource {
            reader,
            pending: Vec::new(),
            ints: Vec::new(),
            frames: 0,
            obs: &Quiet,
            failure: None,
        };
        let stream =
            flacenc::encode_with_fixed_block_size(&config, source, BLOCK_SIZE).expect("encode");
        stream_bytes(&stream).expect("write")
    }

    #[test]
    fn masters_decode_back_to_the_same_samples() {
        let out = std::io::Cursor::new(Vec::new());
        let (out, report) =
            encode_flac(tone_reader(10_000, 2, 44_100), out, &Quiet).expect("encode");
        let out = out.into_inner();
        assert_eq!(
            (report.channels, report.sample_rate, report.frames),
            (2, 44_100, 10_000)
        );
        assert_eq!(
            out,
            whole_stream(tone_reader(10_000, 2, 44_100)),
            "as flacenc's own"
        );
        let src = Box::new(std::io::Cursor::new(out));
        let mut back = AudioReader::from_source(src, Some("flac")).expect("decodable");
        let mut got = Vec::new();
        while let Some(block) = back.read_block().expect("read") {
            got.extend_from_slice(block);
        }
        assert_eq!(got.len(), 20_000);
        let want = |i: usize| ((i / 2) as f32 * 0.05).sin() * 0.5;
        let worst = got
            .iter()
            .enumerate()
            .map(|(i, s)| (s - want(i)).abs())
            .fold(0.0, f32::max);
        assert!(
            worst < 1.0 / FULL_SCALE_24 * 1.5,
            "24-bit exact: off by {worst}"
        );
    }
}
