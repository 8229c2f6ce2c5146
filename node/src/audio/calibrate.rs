//! Round-trip latency: play noise bursts, record them back through the
//! loop, and find each one by cross-correlation. The streams' timestamps
//! already say most of the delay; what they miss (the residual) is what
//! `calibrate` stores for the device pair and overdubs add.

use super::engine::Feed;
use super::render::CHANNELS;

const RATE_HZ: f64 = 48_000.0;
/// Bursts played; the median of those found counts.
pub const BURSTS: usize = 5;
/// Frames per burst: long enough for a sharp correlation peak.
const BURST_FRAMES: usize = 1024;
/// Frames from one burst's start to the next (and before the first).
const SPACING_FRAMES: usize = 14_400;
/// How far from where the timestamps put a burst we look for it.
const SEARCH_FRAMES: i64 = 5_760;
/// Normalised correlation a found burst must reach.
const MIN_CORRELATION: f64 = 0.5;
/// Bursts that must come back for a measurement to count.
const MIN_FOUND: usize = 3;
const LEVEL: f32 = 0.5;

/// The test signal, mono, at 48 kHz.
pub fn signal() -> Vec<f32> {
    let mut out = vec![0.0; SPACING_FRAMES * (BURSTS + 1)];
    let burst = burst();
    for k in 0..BURSTS {
        let at = emitted_at(k);
        out[at..at + BURST_FRAMES].copy_from_slice(&burst);
    }
    out
}

/// Seconds of capture a calibration needs: the signal plus room for the delay.
pub fn capture_seconds() -> f64 {
    (SPACING_FRAMES * (BURSTS + 2)) as f64 / RATE_HZ
}

fn emitted_at(k: usize) -> usize {
    SPACING_FRAMES * (k + 1)
}

/// Deterministic white noise (an LCG): the same bursts every time.
fn burst() -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..BURST_FRAMES)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * LEVEL
        })
        .collect()
}

/// Plays the test signal once.
pub struct SignalFeed {
    signal: Vec<f32>,
}

impl SignalFeed {
    pub fn new() -> Self {
        SignalFeed { signal: signal() }
    }
}

impl Feed for SignalFeed {
    fn fill(
        &mut self,
        frame: u64,
        main: &mut [f32],
        _click: Option<&mut [f32]>,
    ) -> Result<usize, String> {
        let from = (frame as usize).min(self.signal.len());
        let part = &self.signal[from..];
        let mut frames = 0;
        for (out, s) in main.chunks_exact_mut(CHANNELS).zip(part) {
            out.fill(*s);
            frames += 1;
        }
        Ok(frames)
    }
}

/// What a calibration found.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Seconds the loop took beyond what the timestamps say.
    pub residual_seconds: f64,
    /// Largest difference between the bursts found (s): the jitter.
    pub spread_seconds: f64,
    pub found: usize,
}

/// Finds the bursts in `capture` (interleaved, `channels` wide, at
/// `rate`), where `offset_seconds` is capture-time-of-first-input-frame
/// minus playback-time-of-first-output-frame.
pub fn measure(
    capture: &[f32],
    channels: usize,
    rate: u32,
    offset_seconds: f64,
) -> Result<Measured, String> {
    if f64::from(rate) != RATE_HZ {
        return Err(format!(
            "calibration needs the input at 48000 Hz; it runs at {rate} Hz"
        ));
    }
    let mono: Vec<f32> = capture
        .chunks_exact(channels.max(1))
        .map(|f| f[0])
        .collect();
    let burst = burst();
    let mut residuals = Vec::new();
    for k in 0..BURSTS {
        let predicted =
            ((emitted_at(k) as f64 / RATE_HZ - offset_seconds) * RATE_HZ).round() as i64;
        if let Some(found) = locate(&mono, &burst, predicted) {
            residuals.push((found - predicted) as f64 / RATE_HZ);
        }
    }
    if residuals.len() < MIN_FOUND {
        return Err(format!(
            "only {} of {BURSTS} test bursts came back: is the output looped to the input, and loud enough?",
            residuals.len()
        ));
    }
    residuals.sort_by(f64::total_cmp);
    let spread = residuals[residuals.len() - 1] - residuals[0];
    Ok(Measured {
        residual_seconds: residuals[residuals.len() / 2],
        spread_seconds: spread,
        found: residuals.len(),
    })
}

/// The frame where `burst` best matches `mono` near `predicted`, if the
/// match is clear.
fn locate(mono: &[f32], burst: &[f32], predicted: i64) -> Option<i64> {
    let last = mono.len().checked_sub(burst.len())? as i64;
    let from = (predicted - SEARCH_FRAMES).clamp(0, last);
    let to = (predicted + SEARCH_FRAMES).clamp(0, last);
    let energy: f64 = burst.iter().map(|x| f64::from(*x).powi(2)).sum();
    let mut best = (0.0, None);
    for lag in from..=to {
        let window = &mono[lag as usize..lag as usize + burst.len()];
        let dot: f64 = window
            .iter()
            .zip(burst)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        let there: f64 = window.iter().map(|x| f64::from(*x).powi(2)).sum();
        let score = dot / (energy * there).sqrt().max(f64::MIN_POSITIVE);
        if score > best.0 {
            best = (score, Some(lag));
        }
    }
    best.1.filter(|_| best.0 >= MIN_CORRELATION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delayed_loop_is_measured_to_the_frame() {
        let sig = signal();
        // The loop delays by 437 frames more than timestamps say (offset 0).
        let mut capture = vec![0.0; sig.len() + 20_000];
        for (i, s) in sig.iter().enumerate() {
            capture[i + 437] = s * 0.7;
        }
        let m = measure(&capture, 1, 48_000, 0.0).expect("found");
        assert_eq!(m.found, BURSTS);
        assert!((m.residual_seconds - 437.0 / 48_000.0).abs() < 1e-9);
        assert!(m.spread_seconds < 1e-9);
    }

    #[test]
    fn silence_is_an_error_not_a_number() {
        let err = measure(&vec![0.0; 200_000], 2, 48_000, 0.0).expect_err("nothing came back");
        assert!(err.contains("looped"), "{err}");
    }
}
