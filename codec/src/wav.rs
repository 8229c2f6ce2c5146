//! WAV output: 16- or 24-bit integer (rounded, clipped) or 32-bit float.

use std::io::{Seek, Write};

use crate::error::{CodecError, Result};

/// Sample format of a written WAV file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WavFormat {
    Int16,
    Int24,
    Float32,
}

impl WavFormat {
    fn spec(self, channels: usize, rate: u32) -> hound::WavSpec {
        let (bits_per_sample, sample_format) = match self {
            WavFormat::Int16 => (16, hound::SampleFormat::Int),
            WavFormat::Int24 => (24, hound::SampleFormat::Int),
            WavFormat::Float32 => (32, hound::SampleFormat::Float),
        };
        hound::WavSpec {
            channels: channels as u16,
            sample_rate: rate,
            bits_per_sample,
            sample_format,
        }
    }
}

fn wav_err(e: hound::Error) -> CodecError {
    match e {
        hound::Error::IoError(io) => CodecError::Io(io),
        other => CodecError::Limit(format!("WAV output: {other}")),
    }
}

/// Streams interleaved f32 into a WAV file.
pub struct WavWriter<W: Write + Seek> {
    inner: hound::WavWriter<W>,
    format: WavFormat,
}

impl<W: Write + Seek> WavWriter<W> {
    pub fn new(out: W, channels: usize, rate: u32, format: WavFormat) -> Result<Self> {
        let inner = hound::WavWriter::new(out, format.spec(channels, rate)).map_err(wav_err)?;
        Ok(WavWriter { inner, format })
    }

    pub fn write(&mut self, samples: &[f32]) -> Result<()> {
        match self.format {
            WavFormat::Int16 => write_int(&mut self.inner, samples, i16::MAX as f32),
            WavFormat::Int24 => write_int(&mut self.inner, samples, 8_388_607.0),
            WavFormat::Float32 => {
                for &s in samples {
                    self.inner.write_sample(s).map_err(wav_err)?;
                }
                Ok(())
            }
        }
    }

    /// Writes the final header sizes.
    /// Writes the header for what is written so far and flushes: after a
    /// crash the file reads back up to here.
    pub fn flush(&mut self) -> Result<()> {
        self.inner.flush().map_err(wav_err)
    }

    pub fn finish(self) -> Result<()> {
        self.inner.finalize().map_err(wav_err)
    }
}

fn write_int<W: Write + Seek>(
    w: &mut hound::WavWriter<W>,
    samples: &[f32],
    full: f32,
) -> Result<()> {
    for &s in samples {
        let v = (s * full).round().clamp(-full - 1.0, full) as i32;
        w.write_sample(v).map_err(wav_err)?;
    }
    Ok(())
}
