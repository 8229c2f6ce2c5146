//! Measurements over a stream of samples: EBU R128 loudness and true peak
//! (for probe and mixdown normalisation), and a min/max waveform summary
//! (for drawing clips without decoding them).

use ebur128::{Channel, EbuR128, Mode};

use crate::channels::Speaker;
use crate::error::{CodecError, Result};

/// What `Loudness::finish` reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoudnessReport {
    /// Integrated loudness in LUFS; `None` for silence (below the absolute gate).
    pub integrated_lufs: Option<f64>,
    /// Highest true peak over all channels in dBTP; `None` for digital silence.
    pub true_peak_dbtp: Option<f64>,
}

/// An EBU R128 meter fed block by block.
pub struct Loudness {
    meter: EbuR128,
    channels: u32,
}

fn meter_err(e: ebur128::Error) -> CodecError {
    CodecError::Unsupported(format!("loudness meter: {e:?}"))
}

fn r128_channel(s: Speaker) -> Channel {
    match s {
        Speaker::FrontLeft => Channel::Left,
        Speaker::FrontRight => Channel::Right,
        Speaker::FrontCenter => Channel::Center,
        Speaker::Lfe => Channel::Unused,
        Speaker::RearLeft | Speaker::SideLeft => Channel::LeftSurround,
        Speaker::RearRight | Speaker::SideRight => Channel::RightSurround,
        Speaker::RearCenter => Channel::Mp180,
        Speaker::Other => Channel::Center,
    }
}

impl Loudness {
    /// `layout` gives the channel weighting (surrounds count +1.5 dB, LFE not at all).
    pub fn new(layout: &[Speaker], rate: u32) -> Result<Self> {
        let channels = layout.len() as u32;
        let mut meter =
            EbuR128::new(channels, rate, Mode::I | Mode::TRUE_PEAK).map_err(meter_err)?;
        if layout.len() > 1 {
            let map: Vec<Channel> = layout.iter().map(|&s| r128_channel(s)).collect();
            meter.set_channel_map(&map).map_err(meter_err)?;
        } else {
            // A mono file is heard from one speaker position at unity weight.
            meter.set_channel(0, Channel::Center).map_err(meter_err)?;
        }
        Ok(Loudness { meter, channels })
    }

    pub fn push(&mut self, interleaved: &[f32]) -> Result<()> {
        self.meter.add_frames_f32(interleaved).map_err(meter_err)
    }

    pub fn finish(&self) -> Result<LoudnessReport> {
        let lufs = self.meter.loudness_global().map_err(meter_err)?;
        let mut peak = 0.0f64;
        for c in 0..self.channels {
            peak = peak.max(self.meter.true_peak(c).map_err(meter_err)?);
        }
        Ok(LoudnessReport {
            integrated_lufs: lufs.is_finite().then_some(lufs),
            true_peak_dbtp: (peak > 0.0).then(|| 20.0 * peak.log10()),
        })
    }
}

/// Min/max of all channels per bucket of `frames_per_bucket` frames.
#[derive(Debug, Clone)]
pub struct Waveform {
    channels: usize,
    frames_per_bucket: usize,
    in_bucket: usize,
    current: (f32, f32),
    buckets: Vec<(f32, f32)>,
}

impl Waveform {
    pub fn new(channels: usize, frames_per_bucket: usize) -> Self {
        Waveform {
            channels: channels.max(1),
            frames_per_bucket: frames_per_bucket.max(1),
            in_bucket: 0,
            current: (f32::INFINITY, f32::NEG_INFINITY),
            buckets: Vec::new(),
        }
    }

    pub fn push(&mut self, interleaved: &[f32]) {
        for frame in interleaved.chunks_exact(self.channels) {
            for &x in frame {
                self.current.0 = self.current.0.min(x);
                self.current.1 = self.current.1.max(x);
            }
            self.in_bucket += 1;
            if self.in_bucket == self.frames_per_bucket {
                self.close_bucket();
            }
        }
    }

    fn close_bucket(&mut self) {
        self.buckets.push(self.current);
        self.current = (f32::INFINITY, f32::NEG_INFINITY);
        self.in_bucket = 0;
    }

    /// The (min, max) per bucket; a last partial bucket is included.
    pub fn finish(mut self) -> Vec<(f32, f32)> {
        if self.in_bucket > 0 {
            self.close_bucket();
        }
        self.buckets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::default_layout;

    #[test]
    fn full_scale_1k_sine_reads_about_minus_3_lufs() {
        // EBU Tech 3341: a 1 kHz sine at X dBFS in both stereo channels reads X LUFS.
        let rate = 48_000;
        let samples: Vec<f32> = (0..rate * 5)
            .flat_map(|i| {
                let x = (i as f32 * 1000.0 * std::f32::consts::TAU / rate as f32).sin();
                [x, x]
            })
            .collect();
        let mut l = Loudness::new(&default_layout(2), rate as u32).unwrap();
        l.push(&samples).unwrap();
        let r = l.finish().unwrap();
        assert!(r.integrated_lufs.unwrap().abs() < 0.1, "{r:?}");
        assert!(r.true_peak_dbtp.unwrap().abs() < 0.2, "{r:?}");
    }

    #[test]
    fn silence_has_no_loudness() {
        let mut l = Loudness::new(&default_layout(1), 48_000).unwrap();
        l.push(&vec![0.0; 48_000]).unwrap();
        assert_eq!(
            l.finish().unwrap(),
            LoudnessReport {
                integrated_lufs: None,
                true_peak_dbtp: None
            }
        );
    }

    #[test]
    fn waveform_buckets_hold_min_and_max() {
        let mut w = Waveform::new(2, 2);
        w.push(&[0.1, -0.5, 0.3, 0.2, 0.9, 0.0]);
        assert_eq!(w.finish(), vec![(-0.5, 0.3), (0.0, 0.9)]);
    }
}
