//! Speaker layouts and the downmix to stereo. Mono and stereo pass through;
//! anything wider folds down with the ITU-R BS.775 coefficients (centre and
//! surrounds at -3 dB, LFE dropped), which is what players and ffmpeg's
//! default matrix do.

use std::f32::consts::FRAC_1_SQRT_2;

/// Where one input channel is meant to be heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    FrontLeft,
    FrontRight,
    FrontCenter,
    Lfe,
    RearLeft,
    RearRight,
    SideLeft,
    SideRight,
    RearCenter,
    /// Anything else (heights, wides, unlabelled discrete channels).
    Other,
}

/// The default layout for `count` unlabelled channels (WAV / Vorbis order).
pub fn default_layout(count: usize) -> Vec<Speaker> {
    use Speaker::*;
    match count {
        1 => vec![FrontCenter],
        2 => vec![FrontLeft, FrontRight],
        3 => vec![FrontLeft, FrontRight, FrontCenter],
        4 => vec![FrontLeft, FrontRight, RearLeft, RearRight],
        5 => vec![FrontLeft, FrontRight, FrontCenter, RearLeft, RearRight],
        6 => vec![FrontLeft, FrontRight, FrontCenter, Lfe, RearLeft, RearRight],
        7 => vec![
            FrontLeft,
            FrontRight,
            FrontCenter,
            Lfe,
            RearCenter,
            SideLeft,
            SideRight,
        ],
        8 => vec![
            FrontLeft,
            FrontRight,
            FrontCenter,
            Lfe,
            RearLeft,
            RearRight,
            SideLeft,
            SideRight,
        ],
        n => vec![Other; n],
    }
}

/// (left, right) gains for one speaker in a stereo fold-down.
fn stereo_gains(speaker: Speaker) -> (f32, f32) {
    use Speaker::*;
    match speaker {
        FrontLeft => (1.0, 0.0),
        FrontRight => (0.0, 1.0),
        FrontCenter => (FRAC_1_SQRT_2, FRAC_1_SQRT_2),
        Lfe => (0.0, 0.0),
        RearLeft | SideLeft => (FRAC_1_SQRT_2, 0.0),
        RearRight | SideRight => (0.0, FRAC_1_SQRT_2),
        RearCenter => (0.5, 0.5),
        Other => (0.5, 0.5),
    }
}

/// Folds interleaved frames of any layout down to mono or stereo.
#[derive(Debug, Clone)]
pub struct Downmix {
    in_channels: usize,
    /// (left, right) gain per input channel; empty when passing through.
    gains: Vec<(f32, f32)>,
}

impl Downmix {
    pub fn new(layout: &[Speaker]) -> Self {
        let gains = if layout.len() <= 2 {
            Vec::new()
        } else {
            layout.iter().map(|&s| stereo_gains(s)).collect()
        };
        Downmix {
            in_channels: layout.len(),
            gains,
        }
    }

    /// Channels coming out: 1 or 2.
    pub fn out_channels(&self) -> usize {
        self.in_channels.clamp(1, 2)
    }

    /// Appends the folded frames of `input` to `out`.
    pub fn process(&self, input: &[f32], out: &mut Vec<f32>) {
        if self.gains.is_empty() {
            out.extend_from_slice(input);
            return;
        }
        out.reserve(input.len() / self.in_channels * 2);
        for frame in input.chunks_exact(self.in_channels) {
            let (mut l, mut r) = (0.0, 0.0);
            for (&x, &(gl, gr)) in frame.iter().zip(&self.gains) {
                l += x * gl;
                r += x * gr;
            }
            out.push(l);
            out.push(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stereo_passes_through() {
        let d = Downmix::new(&default_layout(2));
        let mut out = Vec::new();
        d.process(&[0.1, -0.2, 0.3, 0.4], &mut out);
        assert_eq!(out, vec![0.1, -0.2, 0.3, 0.4]);
        assert_eq!(d.out_channels(), 2);
    }

    #[test]
    fn five_one_folds_with_itu_coefficients() {
        let d = Downmix::new(&default_layout(6));
        let mut out = Vec::new();
        // Only the centre channel carries signal: it lands at -3 dB on both sides.
        d.process(&[0.0, 0.0, 1.0, 0.0, 0.0, 0.0], &mut out);
        assert!((out[0] - FRAC_1_SQRT_2).abs() < 1e-6 && (out[1] - FRAC_1_SQRT_2).abs() < 1e-6);
        out.clear();
        // The LFE is dropped; the rear left goes left only.
        d.process(&[0.0, 0.0, 0.0, 1.0, 1.0, 0.0], &mut out);
        assert!((out[0] - FRAC_1_SQRT_2).abs() < 1e-6 && out[1] == 0.0);
    }
}
