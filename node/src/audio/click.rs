//! The metronome: a short decaying sine on every beat of the project's
//! tempo and time signature, the downbeat accented, at its own level.
//! Computed from the timeline position alone, so any block size (and a
//! count-in before frame 0) gives the same clicks.

use std::f64::consts::TAU;

use super::render::CHANNELS;

const RATE_HZ: f64 = 48_000.0;
/// Pitches of the downbeat and the other beats.
const ACCENT_HZ: f64 = 1_500.0;
const BEAT_HZ: f64 = 1_000.0;
/// The other beats sound this much softer than the downbeat.
const BEAT_GAIN: f32 = 0.6;
/// How long one click rings, and how fast it dies away.
const CLICK_SECONDS: f64 = 0.03;
const DECAY_PER_SECOND: f64 = 150.0;
/// Tempos we click at; beyond these a tempo is a typo.
pub const TEMPO_RANGE_BPM: std::ops::RangeInclusive<f64> = 20.0..=400.0;

#[derive(Debug, Clone, Copy)]
pub struct Click {
    beat_frames: f64,
    beats_per_bar: i64,
    level: f32,
    /// Click only before this timeline frame (a count-in without `--click`).
    until: Option<i64>,
}

impl Click {
    /// A click at `tempo` beats per minute, `beats_per_bar` to the bar,
    /// at `level` (linear); tempo and bar are clamped to sane values.
    pub fn new(tempo: f64, beats_per_bar: i64, level: f32) -> Self {
        let tempo = if tempo.is_finite() { tempo } else { 120.0 };
        let tempo = tempo.clamp(*TEMPO_RANGE_BPM.start(), *TEMPO_RANGE_BPM.end());
        Click {
            beat_frames: RATE_HZ * 60.0 / tempo,
            beats_per_bar: beats_per_bar.clamp(1, 32),
            level,
            until: None,
        }
    }

    /// Only the count-in: silent from timeline frame `at` on.
    pub fn until(mut self, at: i64) -> Self {
        self.until = Some(at);
        self
    }

    /// Frames in `bars` bars.
    pub fn bars_frames(&self, bars: u32) -> i64 {
        (self.beat_frames * (self.beats_per_bar * i64::from(bars)) as f64).round() as i64
    }

    /// Adds the click to `out` (interleaved stereo) whose first frame is timeline frame `pos`.
    pub fn add(&self, pos: i64, out: &mut [f32]) {
        for (i, frame) in out.chunks_exact_mut(CHANNELS).enumerate() {
            let s = self.sample(pos + i as i64);
            for x in frame {
                *x += s;
            }
        }
    }

    fn sample(&self, pos: i64) -> f32 {
        if self.until.is_some_and(|end| pos >= end) {
            return 0.0;
        }
        let beat = (pos as f64 / self.beat_frames).floor();
        let into = pos - (beat * self.beat_frames).round() as i64;
        let t = into as f64 / RATE_HZ;
        if !(0.0..CLICK_SECONDS).contains(&t) {
            return 0.0;
        }
        let downbeat = (beat as i64).rem_euclid(self.beats_per_bar) == 0;
        let (hz, gain) = if downbeat {
            (ACCENT_HZ, 1.0)
        } else {
            (BEAT_HZ, BEAT_GAIN)
        };
        let env = (-DECAY_PER_SECOND * t).exp();
        ((TAU * hz * t).sin() * env) as f32 * gain * self.level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peak(c: &Click, from: i64, frames: usize) -> f32 {
        let mut out = vec![0.0; frames * CHANNELS];
        c.add(from, &mut out);
        out.iter().fold(0.0, |m, x| m.max(x.abs()))
    }

    #[test]
    fn beats_fall_on_the_grid_with_the_downbeat_louder() {
        let c = Click::new(120.0, 4, 1.0); // a beat every 24000 frames
        assert!(peak(&c, 0, 1000) > 0.8, "downbeat");
        let beat = peak(&c, 24_000, 1000);
        assert!(beat > 0.4 && beat < 0.65, "beat 2 is softer: {beat}");
        assert_eq!(peak(&c, 5_000, 10_000), 0.0, "silence between beats");
        assert!(peak(&c, 96_000, 1000) > 0.8, "next bar's downbeat");
        assert!(peak(&c, -96_000, 1000) > 0.8, "count-in bars before 0 too");
        assert_eq!(c.bars_frames(2), 192_000);
    }

    #[test]
    fn a_count_in_stops_at_the_take() {
        let c = Click::new(120.0, 4, 1.0).until(0);
        assert!(peak(&c, -24_000, 1000) > 0.4);
        assert_eq!(peak(&c, 0, 48_000), 0.0);
    }

    #[test]
    fn block_size_does_not_change_the_clicks() {
        let c = Click::new(97.0, 3, 0.5);
        let mut whole = vec![0.0; 60_000 * CHANNELS];
        c.add(-7, &mut whole);
        let mut parts = Vec::new();
        for start in (0..60_000).step_by(173) {
            let n = 173.min(60_000 - start);
            let mut b = vec![0.0; n * CHANNELS];
            c.add(start as i64 - 7, &mut b);
            parts.extend(b);
        }
        assert_eq!(whole, parts);
    }
}
