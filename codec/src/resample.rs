//! Streaming resampling with rubato's windowed-sinc resampler: to 48 kHz
//! (`To48k`), or by any exact ratio near 1 (`Resample::retime`: a take
//! moved from its input device's clock onto its output device's).
//!
//! Sample-accurate by construction: the resampler's delay is cut from the
//! front, and the tail is flushed with silence and cut so that N input
//! frames always give exactly ceil(N · out / in) output frames.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, FixedAsync, Indexing, Resampler, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};

use crate::error::{CodecError, Result};
use crate::limits::STEM_RATE_HZ;

/// Input frames per resampler call.
const CHUNK_FRAMES: usize = 1024;
/// Sinc filter taps: 256 keeps aliasing and passband ripple far below what
/// Opus at 128 kbit/s can represent.
const SINC_TAPS: usize = 256;
/// Largest sinc table we precompute for an exact rational ratio (taps × phases).
const MAX_EXACT_PHASES: usize = 1024;
/// Phases between taps when the ratio has no small exact form.
const INTERPOLATED_PHASES: usize = 256;

/// Output frames for `frames_in` input frames at `rate_in`.
pub fn frames_at_48k(frames_in: u64, rate_in: u32) -> u64 {
    frames_out(frames_in, STEM_RATE_HZ as u64, rate_in as u64)
}

/// Output frames for `frames_in` input frames at `out / in` output frames per input frame.
fn frames_out(frames_in: u64, out: u64, input: u64) -> u64 {
    (frames_in as u128 * out as u128).div_ceil(input as u128) as u64
}

/// Largest retiming we do: a device clock off by more than 1 % is broken, not drifting.
const MAX_RETIME_DEVIATION: f64 = 0.01;
/// Retiming ratios are exact fractions over this denominator (1 ppb steps).
const RETIME_DENOMINATOR: u64 = 1_000_000_000;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Converts a stream of interleaved frames at one rate to 48 kHz.
pub type To48k = Resample;

/// Converts a stream of interleaved frames by the exact ratio `out / in`.
pub struct Resample {
    channels: usize,
    /// Output frames per `input` input frames.
    out: u64,
    input: u64,
    /// `None` when the input already is 48 kHz.
    inner: Option<Box<Async<f32>>>,
    pending: Vec<f32>,
    scratch: Vec<f32>,
    to_trim: usize,
    frames_in: u64,
    frames_out: u64,
}

impl Resample {
    /// From `rate_in` to 48 kHz.
    pub fn new(rate_in: u32, channels: usize) -> Result<Self> {
        Self::by_ratio(STEM_RATE_HZ as u64, rate_in as u64, channels)
    }

    /// By `ratio` output frames per input frame (within 1 % of 1), exact to 1 ppb.
    pub fn retime(ratio: f64, channels: usize) -> Result<Self> {
        if !(ratio.is_finite() && (ratio - 1.0).abs() <= MAX_RETIME_DEVIATION) {
            return Err(CodecError::Unsupported(format!(
                "retiming by {ratio}: only clock drift (within 1 %) is corrected"
            )));
        }
        let out = (ratio * RETIME_DENOMINATOR as f64).round() as u64;
        Self::by_ratio(out, RETIME_DENOMINATOR, channels)
    }

    fn by_ratio(out: u64, input: u64, channels: usize) -> Result<Self> {
        let g = gcd(out, input);
        let (out, input) = (out / g, input / g);
        let inner = if out == input {
            None
        } else {
            Some(Box::new(make_sinc(out, input, channels)?))
        };
        let (lead_in, to_trim) = if inner.is_some() {
            alignment(out, input)
        } else {
            (0, 0)
        };
        let scratch_len = inner
            .as_ref()
            .map_or(0, |r| r.output_frames_max() * channels);
        let mut pending = Vec::with_capacity((CHUNK_FRAMES * 2 + lead_in) * channels);
        pending.resize(lead_in * channels, 0.0);
        Ok(Resample {
            channels,
            out,
            input,
            inner,
            pending,
            scratch: vec![0.0; scratch_len],
            to_trim,
            frames_in: 0,
            frames_out: 0,
        })
    }

    /// Resamples `input` and appends what is ready to `out`.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<()> {
        self.frames_in += (input.len() / self.channels) as u64;
        if self.inner.is_none() {
            out.extend_from_slice(input);
            self.frames_out += (input.len() / self.channels) as u64;
            return Ok(());
        }
        self.pending.extend_from_slice(input);
        let chunk = CHUNK_FRAMES * self.channels;
        let mut used = 0;
        while self.pending.len() - used >= chunk {
            self.run(used, CHUNK_FRAMES, out)?;
            used += chunk;
        }
        self.pending.drain(..used);
        Ok(())
    }

    /// Flushes the tail; afterwards exactly ceil(frames in × out / in) frames were emitted.
    pub fn finish(&mut self, out: &mut Vec<f32>) -> Result<()> {
        let expected = frames_out(self.frames_in, self.out, self.input);
        if self.inner.is_some() {
            let left = self.pending.len() / self.channels;
            self.pending.resize(CHUNK_FRAMES * self.channels, 0.0);
            self.run(0, left, out)?;
            self.pending.fill(0.0);
            while self.frames_out < expected {
                self.run(0, 0, out)?;
            }
        }
        let excess = (self.frames_out - expected) as usize;
        out.truncate(out.len() - excess * self.channels);
        self.frames_out = expected;
        Ok(())
    }

    /// One resampler call on `valid` frames of `pending` starting at sample `offset`.
    fn run(&mut self, offset: usize, valid: usize, out: &mut Vec<f32>) -> Result<()> {
        let resampler = self
            .inner
            .as_mut()
            .expect("run() is only called when resampling");
        let ch = self.channels;
        let input = InterleavedSlice::new(&self.pending[offset..], ch, CHUNK_FRAMES)
            .map_err(|e| CodecError::Unsupported(format!("resampler input: {e}")))?;
        let frames_cap = self.scratch.len() / ch;
        let mut output = InterleavedSlice::new_mut(&mut self.scratch, ch, frames_cap)
            .map_err(|e| CodecError::Unsupported(format!("resampler output: {e}")))?;
        let indexing = Indexing::new().partial_len(valid);
        let partial = (valid < CHUNK_FRAMES).then_some(&indexing);
        let (_, produced) = resampler
            .process_into_buffer(&input, &mut output, partial)
            .map_err(|e| CodecError::Unsupported(format!("resampler: {e}")))?;
        let trim = self.to_trim.min(produced);
        self.to_trim -= trim;
        out.extend_from_slice(&self.scratch[trim * ch..produced * ch]);
        self.frames_out += (produced - trim) as u64;
        Ok(())
    }
}

/// How to line output sample 0 up with input sample 0: returns (silent
/// input frames to feed first, output frames to drop).
///
/// rubato's sinc resampler puts input frame n at output position
/// (n + SINC_TAPS/2) · ratio − 1, a fraction for most ratios. Feeding a few
/// silent frames first makes the offset whole when the ratio is an exact
/// fraction (always, for the rates studios use), so the trim is exact;
/// otherwise the trim rounds, within half an output sample.
fn alignment(out: u64, input: u64) -> (usize, usize) {
    const MAX_LEAD_IN_FRAMES: u64 = 4096;
    let half = (SINC_TAPS / 2) as u64;
    let lead_in = half.div_ceil(input) * input - half; // `input` is reduced: out/in in lowest terms
    if lead_in <= MAX_LEAD_IN_FRAMES {
        let whole = (half + lead_in) * out / input;
        (lead_in as usize, (whole - 1) as usize)
    } else {
        let delay = half as f64 * out as f64 / input as f64 - 1.0;
        (0, delay.round() as usize)
    }
}

/// A sinc resampler; for ratios with a small exact form (44.1 k → 48 k is
/// 147:160) the sinc table holds every phase, so no interpolation is needed.
fn make_sinc(out: u64, input: u64, channels: usize) -> Result<Async<f32>> {
    let phases = out as usize; // out/in are in lowest terms
    let (interpolation, oversampling_factor) = if phases <= MAX_EXACT_PHASES {
        (SincInterpolationType::Nearest, phases)
    } else {
        (SincInterpolationType::Cubic, INTERPOLATED_PHASES)
    };
    let params = SincInterpolationParameters {
        sinc_len: SINC_TAPS,
        f_cutoff: None,
        oversampling_factor,
        interpolation,
        window: WindowFunction::BlackmanHarris2,
    };
    let ratio = out as f64 / input as f64;
    Async::new_sinc(
        ratio,
        1.0,
        &params,
        CHUNK_FRAMES,
        channels,
        FixedAsync::Input,
    )
    .map_err(|e| CodecError::Unsupported(format!("resampling by {out}/{input}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(rate: u32, channels: usize, frames: usize, block: usize) -> Vec<f32> {
        let input: Vec<f32> = (0..frames * channels)
            .map(|i| ((i / channels) as f32 * 1000.0 * std::f32::consts::TAU / rate as f32).sin())
            .collect();
        let mut r = To48k::new(rate, channels).unwrap();
        let mut out = Vec::new();
        for b in input.chunks(block.max(1) * channels) {
            r.push(b, &mut out).unwrap();
        }
        r.finish(&mut out).unwrap();
        out
    }

    #[test]
    fn output_length_is_exact() {
        for rate in [
            8_000, 22_050, 44_100, 48_000, 88_200, 96_000, 11_025, 37_800,
        ] {
            for frames in [0, 1, 7, 1023, 1024, 1025, 44_100, 100_001] {
                let out = run(rate, 2, frames, 777);
                assert_eq!(
                    out.len() as u64,
                    frames_at_48k(frames as u64, rate) * 2,
                    "{rate} {frames}"
                );
            }
        }
    }

    #[test]
    fn delay_is_trimmed() {
        // A click at input frame 441 of 44.1 kHz lands at output frame 480.
        let mut input = vec![0.0f32; 4410];
        input[441] = 1.0;
        let mut r = To48k::new(44_100, 1).unwrap();
        let mut out = Vec::new();
        r.push(&input, &mut out).unwrap();
        r.finish(&mut out).unwrap();
        let peak = out
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap()
            .0;
        assert_eq!(peak, 480);
        // Nearly symmetric around the click: it sits on the sample, not between
        // two (the sinc table's own centre is 1/160 of an input sample off).
        assert!((out[479] - out[481]).abs() < 0.02, "{:?}", &out[478..483]);
    }

    #[test]
    fn retiming_stretches_by_the_ratio_and_keeps_the_pitch_ratio() {
        // 100 ppm: 1 s of a 1 kHz tone becomes 48004.8 frames of a tone at 1000/1.0001 Hz.
        let frames = 48_000;
        let input: Vec<f32> = (0..frames)
            .map(|i| (i as f32 * 1000.0 * std::f32::consts::TAU / 48_000.0).sin())
            .collect();
        let mut r = Resample::retime(1.0001, 1).unwrap();
        let mut out = Vec::new();
        r.push(&input, &mut out).unwrap();
        r.finish(&mut out).unwrap();
        assert_eq!(out.len(), 48_005);
        // Zero crossings late in the output sit 100 ppm further out.
        let crossing = |x: &[f32], from: usize| {
            (from..x.len() - 1)
                .find(|&i| x[i] <= 0.0 && x[i + 1] > 0.0)
                .unwrap()
        };
        let (a, b) = (crossing(&input, 40_000), crossing(&out, 40_002));
        assert!((b as f64 - a as f64 * 1.0001).abs() < 1.5, "{a} → {b}");
        assert!(Resample::retime(1.5, 1).is_err());
        assert!(Resample::retime(f64::NAN, 1).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn any_blocking_gives_the_exact_length(
            rate in prop::sample::select(vec![16_000u32, 44_100, 32_000, 96_000, 12_345]),
            frames in 0usize..20_000,
            block in 1usize..5000,
        ) {
            let out = run(rate, 1, frames, block);
            prop_assert_eq!(out.len() as u64, frames_at_48k(frames as u64, rate));
        }
    }
}
