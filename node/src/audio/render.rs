//! The mix as the engine sees it (tracks of clips, 48 kHz frames) and
//! `render()`, the one function that mixes a block of it. Used by the
//! offline mixdown now and by the real-time callback later, so it never
//! allocates, locks, logs or does I/O.

use std::f32::consts::FRAC_PI_4;
use std::ops::Range;

/// Interleaved stereo: every buffer in the engine holds L, R, L, R, ….
pub const CHANNELS: usize = 2;
/// Gains above this are clamped: a typo or a hostile edit must not blow
/// up the speakers (+24 dB turns a -24 dBFS take into full scale).
pub const MAX_GAIN_DB: f32 = 24.0;
/// Most clips that may sound in one block. Each costs one block of
/// samples in `ClipAudio` (32 KiB at 4096 frames), so this caps its memory.
pub const MAX_PLAYING_CLIPS: usize = 1024;

/// A whole mix: tracks in display order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mix {
    pub tracks: Vec<MixTrack>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct MixTrack {
    pub gain_db: f32,
    /// -1.0 hard left … 1.0 hard right.
    pub pan: f32,
    pub mute: bool,
    pub solo: bool,
    pub clips: Vec<MixClip>,
}

/// A stretch of a stem placed on the timeline. Positions and lengths are
/// frames at 48 kHz.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MixClip {
    /// Timeline frame of the clip's first frame.
    pub start: u64,
    /// First stem frame used; the clip's source applies it.
    pub offset: u64,
    pub length: u64,
    pub gain_db: f32,
    pub fade_in: u64,
    pub fade_out: u64,
}

impl Mix {
    /// Whether any track is soloed: then only soloed tracks play.
    pub fn any_solo(&self) -> bool {
        self.tracks.iter().any(|t| t.solo)
    }
}

impl MixTrack {
    /// Mute always wins; with a solo anywhere, only soloed tracks play.
    pub fn audible(&self, any_solo: bool) -> bool {
        !self.mute && (self.solo || !any_solo)
    }

    /// (left, right) constant-power pan gains: θ = (pan+1)·π/4, left cos θ,
    /// right sin θ. Written as two sines so hard left/right are exactly
    /// 0 and 1 (cos(π/2) in f32 is -4e-8, not 0) and centre is symmetric.
    pub fn pan_gains(&self) -> (f32, f32) {
        let pan = if self.pan.is_nan() {
            0.0
        } else {
            self.pan.clamp(-1.0, 1.0)
        };
        (
            ((1.0 - pan) * FRAC_PI_4).sin(),
            ((1.0 + pan) * FRAC_PI_4).sin(),
        )
    }
}

impl MixClip {
    /// One past the clip's last timeline frame.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.length)
    }

    /// The frames of the block `[block_start, block_start + frames)` the
    /// clip plays in, relative to the block; `None` if it is silent there.
    pub fn frames_in_block(&self, block_start: u64, frames: usize) -> Option<Range<usize>> {
        let block_end = block_start.saturating_add(frames as u64);
        let from = self.start.max(block_start);
        let to = self.end().min(block_end);
        (from < to).then(|| (from - block_start) as usize..(to - block_start) as usize)
    }

    /// Fade gain at timeline frame `pos` (inside the clip): 0 → 1 over the
    /// first `fade_in` frames, 1 → 0 over the last `fade_out` (mirror images,
    /// so the last frame is silent as the first is). Depends only on `pos`,
    /// so every block size gives the same value.
    fn fade_gain(&self, pos: u64) -> f32 {
        let into = pos - self.start;
        let after = self.end() - 1 - pos;
        let mut gain = 1.0;
        if into < self.fade_in {
            gain = ratio(into, self.fade_in);
        }
        if after < self.fade_out {
            gain *= ratio(after, self.fade_out);
        }
        gain
    }
}

fn ratio(part: u64, whole: u64) -> f32 {
    (part as f64 / whole as f64) as f32
}

/// dB → linear amplitude. -inf and NaN are silence; above `MAX_GAIN_DB` is clamped.
pub fn db_to_gain(db: f32) -> f32 {
    if db.is_nan() {
        return 0.0;
    }
    10f32.powf(db.min(MAX_GAIN_DB) / 20.0)
}

/// Marks a clip without a slot in `ClipAudio::slot_of`.
const NO_SLOT: u32 = u32::MAX;

/// The source samples of the clips playing in one block, interleaved
/// stereo, one preallocated slot per playing clip. Slots are sized for
/// the most clips that can ever overlap one block, not for every clip of
/// the song, so memory does not grow with the song.
pub struct ClipAudio {
    /// Slot capacity in frames.
    max_frames: usize,
    /// Frames in the current block.
    frames: usize,
    /// Per track: the index of its first clip in `slot_of`.
    first_clip: Vec<usize>,
    /// Per clip (tracks in order, clips in order): its slot, or `NO_SLOT`.
    slot_of: Vec<u32>,
    /// The clips (indices into `slot_of`) holding slots 0, 1, … this block.
    playing: Vec<usize>,
    samples: Vec<f32>,
}

impl ClipAudio {
    /// Room for `slots` clips of up to `max_frames` frames, for clips shaped
    /// like `mix` (same tracks, same clip counts).
    pub fn new(mix: &Mix, max_frames: usize, slots: usize) -> Self {
        assert!(max_frames > 0, "a block holds at least one frame");
        assert!(
            slots <= MAX_PLAYING_CLIPS,
            "callers check MAX_PLAYING_CLIPS first"
        );
        let mut first_clip = Vec::with_capacity(mix.tracks.len());
        let mut clips = 0;
        for track in &mix.tracks {
            first_clip.push(clips);
            clips += track.clips.len();
        }
        ClipAudio {
            max_frames,
            frames: 0,
            first_clip,
            slot_of: vec![NO_SLOT; clips],
            playing: Vec::with_capacity(slots),
            samples: vec![0.0; slots * max_frames * CHANNELS],
        }
    }

    /// Frames in the current block.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Starts a block of `frames` in which the `(track, clip)`s of `playing`
    /// get slots, in that order, filled with silence. Clips not named are
    /// silent in this block. Does not allocate.
    pub fn start_block(
        &mut self,
        frames: usize,
        playing: impl IntoIterator<Item = (usize, usize)>,
    ) {
        assert!(
            frames <= self.max_frames,
            "block larger than ClipAudio was built for"
        );
        for &clip in &self.playing {
            self.slot_of[clip] = NO_SLOT;
        }
        self.playing.clear();
        self.frames = frames;
        for (track, clip) in playing {
            let index = self.first_clip[track] + clip;
            let slot = self.playing.len();
            assert!(
                slot < self.playing.capacity(),
                "more playing clips than slots"
            );
            assert!(
                self.slot_of[index] == NO_SLOT,
                "clip named twice in one block"
            );
            self.slot_of[index] = slot as u32;
            self.playing.push(index);
        }
        let used = self.playing.len() * self.max_frames * CHANNELS;
        self.samples[..used].fill(0.0);
    }

    /// One buffer per playing clip, in the order given to `start_block`,
    /// each `frames` long, for the caller to fill with source samples.
    pub fn buffers_mut(&mut self) -> impl Iterator<Item = &mut [f32]> {
        let len = self.frames * CHANNELS;
        let stride = self.max_frames * CHANNELS;
        self.samples
            .chunks_exact_mut(stride)
            .take(self.playing.len())
            .map(move |slot| &mut slot[..len])
    }

    /// The clip's samples for this block, or `None` if it has no slot.
    pub fn clip(&self, track: usize, clip: usize) -> Option<&[f32]> {
        let index = self.first_clip.get(track)? + clip;
        let slot = *self.slot_of.get(index)?;
        if slot == NO_SLOT {
            return None;
        }
        let from = slot as usize * self.max_frames * CHANNELS;
        Some(&self.samples[from..from + self.frames * CHANNELS])
    }
}

/// Most clips of `mix` that can overlap one block of up to `block_frames`,
/// wherever blocks start: the slot count `ClipAudio` needs. Counts every
/// clip whatever mute and solo say, so toggling them never needs more.
pub fn max_playing_clips(mix: &Mix, block_frames: usize) -> usize {
    let reach = (block_frames as u64).saturating_sub(1);
    // A clip meets a block starting at b iff b is in [start - (frames-1), end).
    let mut edges: Vec<(u64, i32)> = Vec::new();
    for clip in mix.tracks.iter().flat_map(|t| &t.clips) {
        if clip.length > 0 {
            edges.push((clip.start.saturating_sub(reach), 1));
            edges.push((clip.end(), -1));
        }
    }
    // Ends sort before starts at the same frame: the intervals are half-open.
    edges.sort_unstable();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

/// Mixes the block of `out.len() / 2` frames starting at timeline frame
/// `block_start` into `out` (interleaved stereo, overwritten).
///
/// Each playing clip's samples come from `clip_audio`; per frame the mix
/// sums, tracks in order and clips in order, sample × clip gain × fade ×
/// track gain × pan gain. Every factor depends only on the absolute frame,
/// and every frame's sum has the same terms in the same order whatever the
/// block size, so output is bit-identical for any blocking.
pub fn render(mix: &Mix, block_start: u64, clip_audio: &ClipAudio, out: &mut [f32]) {
    assert!(
        out.len().is_multiple_of(CHANNELS),
        "out holds whole stereo frames"
    );
    assert_eq!(
        out.len() / CHANNELS,
        clip_audio.frames(),
        "out matches the block"
    );
    out.fill(0.0);
    let any_solo = mix.any_solo();
    for (t, track) in mix.tracks.iter().enumerate() {
        if !track.audible(any_solo) {
            continue;
        }
        let gain = db_to_gain(track.gain_db);
        let (left, right) = track.pan_gains();
        let track_gains = [gain * left, gain * right];
        for (c, clip) in track.clips.iter().enumerate() {
            if let Some(samples) = clip_audio.clip(t, c) {
                add_clip(clip, block_start, samples, track_gains, out);
            }
        }
    }
}

/// Adds one clip's contribution to the frames of the block it plays in.
fn add_clip(
    clip: &MixClip,
    block_start: u64,
    samples: &[f32],
    track_gains: [f32; 2],
    out: &mut [f32],
) {
    let Some(range) = clip.frames_in_block(block_start, out.len() / CHANNELS) else {
        return;
    };
    let clip_gain = db_to_gain(clip.gain_db);
    let (first, end) = (
        block_start + range.start as u64,
        block_start + range.end as u64,
    );
    let span = range.start * CHANNELS..range.end * CHANNELS;
    let frames = out[span.clone()]
        .chunks_exact_mut(CHANNELS)
        .zip(samples[span].chunks_exact(CHANNELS));
    // Outside both fades the fade gain is exactly 1.0, so skipping it gives
    // bit-identical output for a fraction of the work (most of every clip).
    let no_fade =
        first >= clip.start + clip.fade_in && end <= clip.end() - clip.fade_out.min(clip.length);
    if no_fade {
        for (out, sample) in frames {
            out[0] += sample[0] * clip_gain * track_gains[0];
            out[1] += sample[1] * clip_gain * track_gains[1];
        }
        return;
    }
    for (i, (out, sample)) in range.zip(frames) {
        let gain = clip_gain * clip.fade_gain(block_start + i as u64);
        out[0] += sample[0] * gain * track_gains[0];
        out[1] += sample[1] * gain * track_gains[1];
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Renders `mix` whole in blocks of `block_frames`, each clip reading its
    /// interleaved stereo stem (from the clip's offset) straight from memory.
    pub(crate) fn render_in_blocks(
        mix: &Mix,
        stems: &[Vec<Vec<f32>>],
        block_frames: usize,
    ) -> Vec<f32> {
        let total = crate::audio::mixdown::song_frames(mix);
        let slots = max_playing_clips(mix, block_frames);
        let mut audio = ClipAudio::new(mix, block_frames, slots);
        let mut out = vec![0.0; total as usize * CHANNELS];
        let mut pos = 0u64;
        for block in out.chunks_mut(block_frames * CHANNELS) {
            let frames = block.len() / CHANNELS;
            let playing: Vec<(usize, usize)> = clips_meeting(mix, pos, frames).collect();
            audio.start_block(frames, playing.iter().copied());
            for (&(t, c), buffer) in playing.iter().zip(audio.buffers_mut()) {
                copy_stem(&mix.tracks[t].clips[c], &stems[t][c], pos, buffer);
            }
            render(mix, pos, &audio, block);
            pos += frames as u64;
        }
        out
    }

    fn clips_meeting(
        mix: &Mix,
        pos: u64,
        frames: usize,
    ) -> impl Iterator<Item = (usize, usize)> + '_ {
        mix.tracks.iter().enumerate().flat_map(move |(t, track)| {
            let clips = track.clips.iter().enumerate();
            clips
                .filter(move |(_, clip)| clip.frames_in_block(pos, frames).is_some())
                .map(move |(c, _)| (t, c))
        })
    }

    fn copy_stem(clip: &MixClip, stem: &[f32], pos: u64, buffer: &mut [f32]) {
        let range = clip
            .frames_in_block(pos, buffer.len() / CHANNELS)
            .expect("clip meets block");
        for i in range {
            let stem_frame = (clip.offset + pos + i as u64 - clip.start) as usize;
            for ch in 0..CHANNELS {
                buffer[i * CHANNELS + ch] =
                    stem.get(stem_frame * CHANNELS + ch).copied().unwrap_or(0.0);
            }
        }
    }

    /// `frames` of a sine at `hz` and `amplitude`, the same on both channels.
    pub(crate) fn tone(hz: f64, amplitude: f32, frames: usize) -> Vec<f32> {
        (0..frames)
            .flat_map(|n| {
                let s = amplitude * (std::f64::consts::TAU * hz * n as f64 / 48_000.0).sin() as f32;
                [s, s]
            })
            .collect()
    }

    /// Amplitude of the `hz` component of one channel (Goertzel; `hz` must
    /// complete whole periods in the buffer).
    fn amplitude(interleaved: &[f32], channel: usize, hz: f64) -> f64 {
        let samples: Vec<f64> = interleaved
            .iter()
            .skip(channel)
            .step_by(CHANNELS)
            .map(|&s| s as f64)
            .collect();
        let w = std::f64::consts::TAU * hz / 48_000.0;
        let (mut s1, mut s2) = (0.0, 0.0);
        for x in &samples {
            let s0 = x + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        let power = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
        2.0 * power.sqrt() / samples.len() as f64
    }

    fn db(x: f64) -> f64 {
        20.0 * x.log10()
    }

    fn clip_at(start: u64, length: u64) -> MixClip {
        MixClip {
            start,
            length,
            ..MixClip::default()
        }
    }

    fn track(gain_db: f32, pan: f32, clips: Vec<MixClip>) -> MixTrack {
        MixTrack {
            gain_db,
            pan,
            clips,
            ..MixTrack::default()
        }
    }

    /// 4800 frames: 1 kHz and 3 kHz complete whole periods.
    const TEST_FRAMES: usize = 4800;

    /// Two tracks, 1 kHz and 3 kHz tones at 0.5, each one clip over the whole song.
    fn two_tones(a: MixTrack, b: MixTrack) -> (Mix, Vec<Vec<Vec<f32>>>) {
        let stems = vec![
            vec![tone(1000.0, 0.5, TEST_FRAMES)],
            vec![tone(3000.0, 0.5, TEST_FRAMES)],
        ];
        (Mix { tracks: vec![a, b] }, stems)
    }

    #[test]
    fn track_and_clip_gains_set_levels_within_a_tenth_of_a_db() {
        let mut quiet = clip_at(0, TEST_FRAMES as u64);
        quiet.gain_db = -4.5;
        let (mix, stems) = two_tones(
            track(-6.0, 0.0, vec![quiet]),
            track(3.0, -1.0, vec![clip_at(0, TEST_FRAMES as u64)]),
        );
        let out = render_in_blocks(&mix, &stems, 4096);
        let source_db = db(0.5);
        assert!((db(amplitude(&out, 0, 1000.0)) - (source_db - 10.5 - 3.0103)).abs() < 0.1);
        assert!((db(amplitude(&out, 1, 1000.0)) - (source_db - 10.5 - 3.0103)).abs() < 0.1);
        assert!((db(amplitude(&out, 0, 3000.0)) - (source_db + 3.0)).abs() < 0.1);
        assert!(
            amplitude(&out, 1, 3000.0) < 1e-6,
            "hard left leaves the right channel silent"
        );
    }

    #[test]
    fn pan_law_is_constant_power() {
        let cases = [
            (-1.0, 0.0, f64::NEG_INFINITY),
            (1.0, f64::NEG_INFINITY, 0.0),
            (0.0, -3.0103, -3.0103),
        ];
        for (pan, left_db, right_db) in cases {
            let (mix, stems) = two_tones(
                track(0.0, pan, vec![clip_at(0, TEST_FRAMES as u64)]),
                MixTrack::default(),
            );
            let out = render_in_blocks(&mix, &stems, 4096);
            for (channel, want) in [(0, left_db), (1, right_db)] {
                let got = db(amplitude(&out, channel, 1000.0)) - db(0.5);
                if want.is_infinite() {
                    assert!(
                        out.iter().skip(channel).step_by(2).all(|&s| s == 0.0),
                        "pan {pan} ch {channel}"
                    );
                } else {
                    assert!(
                        (got - want).abs() < 0.01,
                        "pan {pan} ch {channel}: {got} dB"
                    );
                }
            }
        }
    }

    #[test]
    fn pan_gains_are_exact_at_the_extremes_and_equal_power_everywhere() {
        for pan in [-1.0, -0.5, 0.0, 0.25, 1.0, 7.0, f32::NAN] {
            let (l, r) = MixTrack {
                pan,
                ..MixTrack::default()
            }
            .pan_gains();
            assert!((l * l + r * r - 1.0).abs() < 1e-6, "pan {pan}");
        }
        assert_eq!(
            MixTrack {
                pan: -1.0,
                ..MixTrack::default()
            }
            .pan_gains(),
            (1.0, 0.0)
        );
        assert_eq!(
            MixTrack {
                pan: 1.0,
                ..MixTrack::default()
            }
            .pan_gains(),
            (0.0, 1.0)
        );
    }

    /// The levels of the 1 kHz (first) and 3 kHz (second) tracks in the left channel.
    fn levels(first: MixTrack, second: MixTrack) -> (f64, f64) {
        let (mix, stems) = two_tones(first, second);
        let out = render_in_blocks(&mix, &stems, 4096);
        (amplitude(&out, 0, 1000.0), amplitude(&out, 0, 3000.0))
    }

    fn flags(mute: bool, solo: bool) -> MixTrack {
        MixTrack {
            mute,
            solo,
            pan: -1.0,
            clips: vec![clip_at(0, TEST_FRAMES as u64)],
            ..MixTrack::default()
        }
    }

    #[test]
    fn mute_and_solo_choose_the_tracks_that_play() {
        let on = |x: f64| (x - 0.5).abs() < 1e-3;
        let off = |x: f64| x < 1e-6;
        let cases = [
            // (first mute, solo), (second mute, solo), first plays, second plays
            ((false, false), (false, false), true, true),
            ((true, false), (false, false), false, true),
            ((false, true), (false, false), true, false),
            ((false, true), (false, true), true, true),
            ((true, true), (false, false), false, false),
            ((true, true), (false, true), false, true),
        ];
        for ((m1, s1), (m2, s2), plays1, plays2) in cases {
            let (a, b) = levels(flags(m1, s1), flags(m2, s2));
            let case = format!("mute/solo {m1}/{s1} {m2}/{s2}: {a} {b}");
            assert!(if plays1 { on(a) } else { off(a) }, "{case}");
            assert!(if plays2 { on(b) } else { off(b) }, "{case}");
        }
    }

    #[test]
    fn fades_are_linear_ramps_on_absolute_frames() {
        let clip = MixClip {
            start: 1000,
            length: 400,
            fade_in: 100,
            fade_out: 50,
            ..MixClip::default()
        };
        let mix = Mix {
            tracks: vec![track(0.0, -1.0, vec![clip])],
        };
        let dc = vec![vec![1.0; 400 * CHANNELS]];
        for block in [1, 64, 4096] {
            let out = render_in_blocks(&mix, std::slice::from_ref(&dc), block);
            let left = |frame: usize| out[frame * CHANNELS];
            let expected = [
                (999, 0.0),
                (1000, 0.0),
                (1001, 0.01),
                (1050, 0.5),
                (1099, 0.99),
                (1100, 1.0),
                (1349, 1.0),
                (1350, 49.0 / 50.0),
                (1375, 24.0 / 50.0),
                (1399, 0.0),
            ];
            for (frame, want) in expected {
                assert!(
                    (left(frame) - want).abs() < 1e-6,
                    "block {block} frame {frame}: {}",
                    left(frame)
                );
            }
        }
    }

    #[test]
    fn overlapping_fades_multiply() {
        let clip = MixClip {
            length: 10,
            fade_in: 10,
            fade_out: 10,
            ..MixClip::default()
        };
        assert!((clip.fade_gain(5) - 0.5 * 0.4).abs() < 1e-7);
    }

    #[test]
    fn a_clip_starts_on_its_exact_frame() {
        let mut impulse = vec![0.0; 10 * CHANNELS];
        impulse[3 * CHANNELS] = 1.0;
        let clip = MixClip {
            start: 4090,
            offset: 2,
            length: 10,
            ..MixClip::default()
        };
        let mix = Mix {
            tracks: vec![track(0.0, -1.0, vec![clip])],
        };
        for block in [1, 17, 4096] {
            let out = render_in_blocks(&mix, &[vec![impulse.clone()]], block);
            let hits: Vec<usize> = (0..out.len() / 2).filter(|&f| out[f * 2] != 0.0).collect();
            assert_eq!(
                hits,
                [4091],
                "stem frame 3, offset 2, start 4090 (block {block})"
            );
        }
    }

    #[test]
    fn clips_without_audio_are_silent() {
        let (mix, _) = two_tones(flags(false, false), flags(false, false));
        let mut audio = ClipAudio::new(&mix, 16, 1);
        audio.start_block(16, [(1, 0)]);
        audio.buffers_mut().for_each(|b| b.fill(0.25));
        let mut out = vec![1.0; 32];
        render(&mix, 0, &audio, &mut out);
        assert!(
            out.chunks(2).all(|f| f == [0.25, 0.0]),
            "only the second clip plays: {out:?}"
        );
        audio.start_block(16, []);
        render(&mix, 0, &audio, &mut out);
        assert!(out.iter().all(|&s| s == 0.0));
    }

    #[test]
    fn gains_are_sane_for_odd_input() {
        assert_eq!(db_to_gain(f32::NEG_INFINITY), 0.0);
        assert_eq!(db_to_gain(f32::NAN), 0.0);
        assert!((db_to_gain(1000.0) - db_to_gain(MAX_GAIN_DB)).abs() < 1e-6);
        assert!((db_to_gain(-6.0206) - 0.5).abs() < 1e-5);
    }

    #[test]
    fn max_playing_clips_counts_clips_that_share_a_block() {
        let mix = |clips: Vec<MixClip>| Mix {
            tracks: vec![track(0.0, 0.0, clips)],
        };
        let back_to_back = mix(vec![clip_at(0, 100), clip_at(100, 100), clip_at(200, 100)]);
        assert_eq!(max_playing_clips(&back_to_back, 1), 1);
        assert_eq!(max_playing_clips(&back_to_back, 2), 2);
        assert_eq!(max_playing_clips(&back_to_back, 101), 2);
        assert_eq!(max_playing_clips(&back_to_back, 102), 3);
        assert_eq!(
            max_playing_clips(&mix(vec![clip_at(0, 0), clip_at(5, 0)]), 64),
            0
        );
    }

    /// A pseudo-random interleaved stereo stem of `frames` frames.
    pub(crate) fn noise(seed: u64, frames: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..frames * CHANNELS)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    fn random_clip() -> impl Strategy<Value = MixClip> {
        (
            0u64..1500,
            0u64..300,
            0u64..800,
            -30f32..12.0,
            0u64..400,
            0u64..400,
        )
            .prop_map(
                |(start, offset, length, gain_db, fade_in, fade_out)| MixClip {
                    start,
                    offset,
                    length,
                    gain_db,
                    fade_in,
                    fade_out,
                },
            )
    }

    fn random_track() -> impl Strategy<Value = MixTrack> {
        (
            -30f32..12.0,
            -1f32..=1.0,
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(random_clip(), 0..4),
        )
            .prop_map(|(gain_db, pan, mute, solo, clips)| MixTrack {
                gain_db,
                pan,
                mute,
                solo,
                clips,
            })
    }

    /// Stems shorter than some clips, so running out of stem is covered too.
    fn stems_for(mix: &Mix) -> Vec<Vec<Vec<f32>>> {
        let shape = mix.tracks.iter().enumerate();
        shape
            .map(|(t, track)| {
                (0..track.clips.len())
                    .map(|c| noise((t * 16 + c) as u64, 900))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn block_size_does_not_change_a_single_bit() {
        let tracks = (0..5).map(|t| {
            let clips = (0..3).map(|c| MixClip {
                start: (t * 311 + c * 577) as u64,
                offset: c as u64 * 13,
                length: 700,
                gain_db: -(c as f32) * 1.7,
                fade_in: 97,
                fade_out: 131,
            });
            track(t as f32 * -2.3, t as f32 / 2.0 - 1.0, clips.collect())
        });
        let mix = Mix {
            tracks: tracks.collect(),
        };
        let stems = stems_for(&mix);
        let reference = render_in_blocks(&mix, &stems, 1);
        assert!(reference.iter().any(|&s| s != 0.0));
        for block in [17, 4096] {
            let out = render_in_blocks(&mix, &stems, block);
            assert!(
                out.iter()
                    .zip(&reference)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "block {block}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_mixes_render_identically_in_any_blocks(
            tracks in prop::collection::vec(random_track(), 0..5),
            first in 1usize..700,
            second in 1usize..5000,
        ) {
            let mix = Mix { tracks };
            let stems = stems_for(&mix);
            let a = render_in_blocks(&mix, &stems, first);
            let b = render_in_blocks(&mix, &stems, second);
            prop_assert!(a.len() == b.len());
            prop_assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }
}
