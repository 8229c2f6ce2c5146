//! Bouncing a whole song: renders the mix block by block through
//! `render()`, reading each clip's stem only while the clip plays, and
//! hands every block to a sink. Memory depends on how many clips overlap,
//! never on the song's length or its number of clips.

use meshstudio_codec::Observer;
use meshstudio_codec::limits::{BLOCK_FRAMES, MAX_STEM_FRAMES};
use thiserror::Error;

use super::render::{
    CHANNELS, ClipAudio, MAX_PLAYING_CLIPS, Mix, MixClip, max_playing_clips, render,
};

/// Frames rendered per block: the codec pipeline's block, so a bounce
/// feeds the stem writers in their natural size.
pub const MIX_BLOCK_FRAMES: usize = BLOCK_FRAMES;
/// Longest song we bounce: as long as the longest stem we accept (6 h).
/// Clip positions come from other sites; a wild one must not make us
/// write silence for a year.
pub const MAX_MIX_FRAMES: u64 = MAX_STEM_FRAMES;
/// Most threads reading stems at once; more than this only adds contention.
const MAX_READ_THREADS: usize = 16;

#[derive(Debug, Error)]
pub enum MixError {
    /// A clip's stem could not be opened or read. `track` and `clip` index
    /// the `Mix`; `stem` is what a person knows it by (file name, blob hash).
    #[error("cannot read stem {stem} (track {track}, clip {clip}): {reason}")]
    Source {
        track: usize,
        clip: usize,
        stem: String,
        reason: String,
    },
    #[error("cannot write the mixdown: {0}")]
    Sink(String),
    #[error(
        "the song is {frames} frames long; a mixdown holds at most {MAX_MIX_FRAMES} (6 h at 48 kHz): check the clip positions"
    )]
    TooLong { frames: u64 },
    #[error(
        "{clips} clips play at once somewhere in the song; a mixdown can play at most {MAX_PLAYING_CLIPS}"
    )]
    TooManyClips { clips: usize },
    #[error("cancelled")]
    Cancelled,
}

/// One clip's audio, read front to back.
pub trait ClipSource: Send {
    /// Fills `out` (interleaved stereo) with the next frames of this clip's
    /// stem, sequentially from the clip's offset; mono stems are duplicated
    /// to both channels. Returns frames written; fewer than asked only at
    /// the stem's end (the rest is silence).
    fn read(&mut self, out: &mut [f32]) -> Result<usize, MixError>;

    /// Passes over the next `frames` frames (playback starting inside the clip).
    fn skip(&mut self, mut frames: u64) -> Result<(), MixError> {
        let mut scratch = vec![0.0; SKIP_CHUNK_FRAMES * CHANNELS];
        while frames > 0 {
            let n = frames.min(SKIP_CHUNK_FRAMES as u64) as usize;
            let got = self.read(&mut scratch[..n * CHANNELS])?;
            if got < n {
                return Ok(());
            }
            frames -= n as u64;
        }
        Ok(())
    }
}

/// Frames decoded at once while skipping into a clip.
const SKIP_CHUNK_FRAMES: usize = 4096;

/// Opens the source of clip `(track, clip)` of the mix, positioned at the clip's offset.
pub type OpenClip<'a> = dyn Fn(usize, usize) -> Result<Box<dyn ClipSource>, MixError> + Sync + 'a;
/// Takes each rendered block, interleaved stereo, in order.
pub type Sink<'a> = dyn FnMut(&[f32]) -> Result<(), MixError> + 'a;

/// The song's length in frames: the end of its last clip. Every clip
/// counts, muted or not, so soloing a part bounces the same length as the
/// whole song and the bounces line up on a timeline.
pub fn song_frames(mix: &Mix) -> u64 {
    let clips = mix.tracks.iter().flat_map(|t| &t.clips);
    clips
        .filter(|c| c.length > 0)
        .map(MixClip::end)
        .max()
        .unwrap_or(0)
}

/// Renders the whole of `mix` into `sink`, block by block, and returns
/// the frames written. Only audible tracks' stems are opened, each when
/// the render reaches its clip and dropped when the clip ends; each block's
/// stems are read in parallel. `observer` gets the total, progress, and
/// can cancel between blocks.
pub fn mixdown(
    mix: &Mix,
    open: &OpenClip,
    sink: &mut Sink,
    observer: &dyn Observer,
) -> Result<u64, MixError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    mixdown_with_threads(mix, open, sink, observer, threads.min(MAX_READ_THREADS))
}

fn mixdown_with_threads(
    mix: &Mix,
    open: &OpenClip,
    sink: &mut Sink,
    observer: &dyn Observer,
    threads: usize,
) -> Result<u64, MixError> {
    let total = song_frames(mix);
    let mut player = Player::new(mix, open, 0..total, threads)?;
    observer.total(Some(total));
    let mut out = vec![0.0; MIX_BLOCK_FRAMES * CHANNELS];
    loop {
        if observer.cancelled() {
            return Err(MixError::Cancelled);
        }
        let frames = player.next_block(&mut out)?;
        if frames == 0 {
            return Ok(total);
        }
        sink(&out[..frames * CHANNELS])?;
        observer.advance(frames as u64);
    }
}

/// Renders a stretch of the song block by block, on demand: the bounce
/// loop above and live playback's feeder thread both pull from one.
pub struct Player<'a> {
    mix: &'a Mix,
    open: &'a OpenClip<'a>,
    audio: ClipAudio,
    voices: Voices,
    pos: u64,
    end: u64,
    threads: usize,
}

impl<'a> Player<'a> {
    /// A player for timeline frames `range` (clamped to the song's end).
    pub fn new(
        mix: &'a Mix,
        open: &'a OpenClip<'a>,
        range: std::ops::Range<u64>,
        threads: usize,
    ) -> Result<Self, MixError> {
        let total = song_frames(mix);
        if total > MAX_MIX_FRAMES {
            return Err(MixError::TooLong { frames: total });
        }
        let slots = max_playing_clips(mix, MIX_BLOCK_FRAMES);
        if slots > MAX_PLAYING_CLIPS {
            return Err(MixError::TooManyClips { clips: slots });
        }
        let end = range.end.min(total);
        Ok(Player {
            mix,
            open,
            audio: ClipAudio::new(mix, MIX_BLOCK_FRAMES, slots),
            voices: Voices::new(mix, range.start),
            pos: range.start.min(end),
            end,
            threads: threads.max(1),
        })
    }

    /// Renders the next block (at most `MIX_BLOCK_FRAMES`, and at most
    /// what `out` holds) into `out`; returns its frames, 0 at the end.
    pub fn next_block(&mut self, out: &mut [f32]) -> Result<usize, MixError> {
        let room = (out.len() / CHANNELS).min(MIX_BLOCK_FRAMES) as u64;
        let frames = (self.end - self.pos).min(room) as usize;
        if frames == 0 {
            return Ok(0);
        }
        let pos = self.pos;
        self.voices.advance(pos, frames, self.open)?;
        let active = self.voices.active.iter().map(|v| (v.track, v.clip));
        self.audio.start_block(frames, active);
        read_in_parallel(
            &mut self.voices.active,
            self.audio.buffers_mut(),
            pos,
            self.threads,
        )?;
        let block = &mut out[..frames * CHANNELS];
        render(self.mix, pos, &self.audio, block);
        self.pos += frames as u64;
        Ok(frames)
    }
}

/// A clip of an audible track, known by its place in the mix.
#[derive(Clone, Copy)]
struct Scheduled {
    track: usize,
    clip: usize,
    span: MixClip,
}

/// A clip whose source is open.
struct Voice {
    track: usize,
    clip: usize,
    span: MixClip,
    source: Box<dyn ClipSource>,
    /// The stem ran out: the rest of the clip is silence.
    ended: bool,
}

/// Which clips have open sources: those meeting the current block.
struct Voices {
    /// Audible clips by start frame; `next` is the first not opened yet.
    schedule: Vec<Scheduled>,
    next: usize,
    active: Vec<Voice>,
}

impl Voices {
    /// The audible clips still sounding at or after timeline frame `from`.
    fn new(mix: &Mix, from: u64) -> Self {
        let any_solo = mix.any_solo();
        let mut schedule = Vec::new();
        let audible = mix
            .tracks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.audible(any_solo));
        for (track, t) in audible {
            let sounding = t
                .clips
                .iter()
                .enumerate()
                .filter(|(_, c)| c.length > 0 && c.end() > from);
            for (clip, &span) in sounding {
                schedule.push(Scheduled { track, clip, span });
            }
        }
        schedule.sort_by_key(|s| (s.span.start, s.track, s.clip));
        Voices {
            schedule,
            next: 0,
            active: Vec::new(),
        }
    }

    /// Drops the sources of clips that ended before `pos` and opens those
    /// starting before the block ends.
    fn advance(&mut self, pos: u64, frames: usize, open: &OpenClip) -> Result<(), MixError> {
        self.active.retain(|v| v.span.end() > pos);
        let block_end = pos + frames as u64;
        while let Some(&s) = self.schedule.get(self.next)
            && s.span.start < block_end
        {
            let mut source = open(s.track, s.clip)?;
            // Playback may start inside the clip.
            source.skip(pos.saturating_sub(s.span.start))?;
            self.active.push(Voice {
                track: s.track,
                clip: s.clip,
                span: s.span,
                source,
                ended: false,
            });
            self.next += 1;
        }
        Ok(())
    }
}

impl Voice {
    /// Reads this clip's part of the block at `pos` into `buffer` (the
    /// block's slot for this clip, already silent).
    fn read_block(&mut self, pos: u64, buffer: &mut [f32]) -> Result<(), MixError> {
        let Some(range) = self.span.frames_in_block(pos, buffer.len() / CHANNELS) else {
            return Ok(());
        };
        if self.ended {
            return Ok(());
        }
        let part = &mut buffer[range.start * CHANNELS..range.end * CHANNELS];
        let got = self.source.read(part)?.min(range.len());
        // Whatever a short read left past its end must not play.
        part[got * CHANNELS..].fill(0.0);
        self.ended = got < range.len();
        Ok(())
    }
}

/// Reads every voice's part of the block at `pos` into its buffer, the
/// voices split in contiguous chunks over up to `threads` threads. Each
/// voice writes only its own buffer, so the result does not depend on
/// scheduling; of several failures the first voice's is reported.
fn read_in_parallel<'a>(
    voices: &mut [Voice],
    buffers: impl Iterator<Item = &'a mut [f32]>,
    pos: u64,
    threads: usize,
) -> Result<(), MixError> {
    let mut jobs: Vec<(&mut Voice, &mut [f32])> = voices.iter_mut().zip(buffers).collect();
    let per_thread = jobs.len().div_ceil(threads.max(1)).max(1);
    let mut chunks = jobs.chunks_mut(per_thread);
    let Some(own) = chunks.next() else {
        return Ok(());
    };
    std::thread::scope(|scope| {
        let helpers: Vec<_> = chunks
            .map(|chunk| scope.spawn(move || read_chunk(chunk, pos)))
            .collect();
        let first = read_chunk(own, pos);
        helpers.into_iter().fold(first, |result, helper| {
            let theirs = helper
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            result.and(theirs)
        })
    })
}

fn read_chunk(jobs: &mut [(&mut Voice, &mut [f32])], pos: u64) -> Result<(), MixError> {
    jobs.iter_mut()
        .try_for_each(|(voice, buffer)| voice.read_block(pos, buffer))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use meshstudio_codec::Quiet;

    use super::*;
    use crate::audio::render::MixTrack;
    use crate::audio::render::tests::{noise, render_in_blocks, tone};

    /// An interleaved stereo stem in memory, read from an offset; counts
    /// how many sources are alive in `alive`.
    struct VecSource {
        stem: Vec<f32>,
        frame: usize,
        alive: Arc<AtomicUsize>,
    }

    impl VecSource {
        fn new(stem: Vec<f32>, offset: u64, alive: Arc<AtomicUsize>) -> Self {
            alive.fetch_add(1, Ordering::SeqCst);
            VecSource {
                stem,
                frame: offset as usize,
                alive,
            }
        }
    }

    impl Drop for VecSource {
        fn drop(&mut self) {
            self.alive.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl ClipSource for VecSource {
        fn read(&mut self, out: &mut [f32]) -> Result<usize, MixError> {
            let left = self.stem.get(self.frame * CHANNELS..).unwrap_or(&[]);
            let n = out.len().min(left.len());
            out[..n].copy_from_slice(&left[..n]);
            self.frame += n / CHANNELS;
            Ok(n / CHANNELS)
        }
    }

    /// What a mixdown did: its result, the samples it wrote, and the most
    /// sources that were open at once.
    struct Bounce {
        result: Result<u64, MixError>,
        out: Vec<f32>,
        opens: usize,
        most_alive: usize,
    }

    fn bounce(mix: &Mix, stems: &[Vec<Vec<f32>>], threads: usize) -> Bounce {
        let alive = Arc::new(AtomicUsize::new(0));
        let (opens, most_alive) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let open = |t: usize, c: usize| -> Result<Box<dyn ClipSource>, MixError> {
            opens.fetch_add(1, Ordering::SeqCst);
            let source = VecSource::new(
                stems[t][c].clone(),
                mix.tracks[t].clips[c].offset,
                alive.clone(),
            );
            most_alive.fetch_max(alive.load(Ordering::SeqCst), Ordering::SeqCst);
            Ok(Box::new(source))
        };
        let mut out = Vec::new();
        let mut sink = |block: &[f32]| {
            out.extend_from_slice(block);
            Ok(())
        };
        let result = mixdown_with_threads(mix, &open, &mut sink, &Quiet, threads);
        assert_eq!(alive.load(Ordering::SeqCst), 0, "every source is dropped");
        Bounce {
            result,
            out,
            opens: opens.into_inner(),
            most_alive: most_alive.into_inner(),
        }
    }

    fn track(pan: f32, clips: Vec<MixClip>) -> MixTrack {
        MixTrack {
            pan,
            clips,
            ..MixTrack::default()
        }
    }

    fn clip_at(start: u64, length: u64) -> MixClip {
        MixClip {
            start,
            length,
            ..MixClip::default()
        }
    }

    /// Six tracks of overlapping clips crossing block edges, stems shorter than some clips.
    fn busy_mix() -> (Mix, Vec<Vec<Vec<f32>>>) {
        let tracks = (0..6u64).map(|t| {
            let clips = (0..4u64).map(|c| MixClip {
                start: t * 1777 + c * 3001,
                offset: c * 50,
                length: 2500 + t * 400,
                gain_db: -(t as f32),
                fade_in: 300,
                fade_out: 700,
            });
            MixTrack {
                gain_db: -1.5,
                pan: t as f32 / 3.0 - 1.0,
                clips: clips.collect(),
                ..MixTrack::default()
            }
        });
        let mix = Mix {
            tracks: tracks.collect(),
        };
        let stems = (0..6)
            .map(|t| (0..4).map(|c| noise(t * 4 + c, 3000)).collect())
            .collect();
        (mix, stems)
    }

    #[test]
    fn mixdown_equals_render_in_any_blocks_on_any_threads() {
        let (mix, stems) = busy_mix();
        let reference = render_in_blocks(&mix, &stems, 997);
        for threads in [1, 2, 5] {
            let b = bounce(&mix, &stems, threads);
            assert_eq!(b.result.expect("mixdown"), song_frames(&mix));
            assert_eq!(b.out.len(), reference.len());
            assert!(
                b.out
                    .iter()
                    .zip(&reference)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "threads {threads}"
            );
        }
    }

    #[test]
    fn an_impulse_lands_on_its_exact_frame() {
        let mut stem = vec![0.0; 2000 * CHANNELS];
        stem[1000 * CHANNELS] = 1.0;
        // Starts in the first block; the impulse (stem frame 1000, clip frame 700) is in the second.
        let clip = MixClip {
            start: 4000,
            offset: 300,
            length: 1200,
            ..MixClip::default()
        };
        let b = bounce(
            &Mix {
                tracks: vec![track(-1.0, vec![clip])],
            },
            &[vec![stem]],
            2,
        );
        assert_eq!(b.result.expect("mixdown"), 5200);
        let hits: Vec<(usize, f32)> = b
            .out
            .iter()
            .enumerate()
            .filter(|(_, s)| **s != 0.0)
            .map(|(i, s)| (i, *s))
            .collect();
        assert_eq!(hits, [(4700 * CHANNELS, 1.0)]);
    }

    #[test]
    fn the_rest_of_a_clip_past_its_stem_is_silent() {
        let stem = vec![1.0; 100 * CHANNELS];
        let b = bounce(
            &Mix {
                tracks: vec![track(-1.0, vec![clip_at(10, 300)])],
            },
            &[vec![stem]],
            1,
        );
        assert_eq!(b.result.expect("mixdown"), 310);
        let left: Vec<f32> = b.out.iter().step_by(CHANNELS).copied().collect();
        assert!(left[..10].iter().chain(&left[110..]).all(|&s| s == 0.0));
        assert!(left[10..110].iter().all(|&s| s == 1.0));
    }

    #[test]
    fn muted_clips_count_for_the_length_but_are_never_opened() {
        let mut muted = track(0.0, vec![clip_at(0, 9000)]);
        muted.mute = true;
        let mut soloed = track(0.0, vec![clip_at(100, 50)]);
        soloed.solo = true;
        let unsoloed = track(0.0, vec![clip_at(0, 100)]);
        let stems = vec![
            vec![tone(1000.0, 0.5, 9000)],
            vec![tone(1000.0, 0.5, 50)],
            vec![tone(1000.0, 0.5, 100)],
        ];
        let b = bounce(
            &Mix {
                tracks: vec![muted, soloed, unsoloed],
            },
            &stems,
            2,
        );
        assert_eq!(b.result.expect("mixdown"), 9000);
        assert_eq!(b.out.len(), 9000 * CHANNELS);
        assert_eq!(b.opens, 1, "only the soloed clip is read");
    }

    #[test]
    fn sources_are_open_only_while_their_clip_plays() {
        let clips: Vec<MixClip> = (0..50).map(|c| clip_at(c * 1000, 1000)).collect();
        let stems = vec![(0..50).map(|c| noise(c, 1000)).collect()];
        let b = bounce(
            &Mix {
                tracks: vec![track(0.0, clips)],
            },
            &stems,
            2,
        );
        assert_eq!(b.result.expect("mixdown"), 50_000);
        assert_eq!(b.opens, 50);
        // A block of 4096 frames starting just before a clip boundary meets 6 clips of 1000.
        assert_eq!(b.most_alive, 6);
    }

    #[test]
    fn sources_open_when_the_render_reaches_them() {
        let clips: Vec<MixClip> = (0..10).map(|c| clip_at(c * 1000, 1000)).collect();
        let mix = Mix {
            tracks: vec![track(0.0, clips)],
        };
        let opens = AtomicUsize::new(0);
        let open = |_: usize, _: usize| -> Result<Box<dyn ClipSource>, MixError> {
            opens.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(VecSource::new(vec![0.5; 2000], 0, Arc::default())))
        };
        let mut opened_by_block = Vec::new();
        let mut sink = |_: &[f32]| {
            opened_by_block.push(opens.load(Ordering::SeqCst));
            Ok(())
        };
        mixdown_with_threads(&mix, &open, &mut sink, &Quiet, 1).expect("mixdown");
        // Blocks [0, 4096), [4096, 8192), [8192, 10000) meet clips starting before their ends.
        assert_eq!(opened_by_block, [5, 9, 10]);
    }

    fn failing_opener(track: usize, clip: usize) -> Result<Box<dyn ClipSource>, MixError> {
        struct Broken(usize, usize);
        impl ClipSource for Broken {
            fn read(&mut self, _: &mut [f32]) -> Result<usize, MixError> {
                let (track, clip) = (self.0, self.1);
                Err(MixError::Source {
                    track,
                    clip,
                    stem: format!("take{track}.opus"),
                    reason: "truncated".into(),
                })
            }
        }
        Ok(Box::new(Broken(track, clip)))
    }

    #[test]
    fn the_first_failing_stem_is_named() {
        let mix = Mix {
            tracks: (0..4)
                .map(|_| track(0.0, vec![clip_at(5000, 10)]))
                .collect(),
        };
        for threads in [1, 2, 4] {
            let mut blocks = 0;
            let mut sink = |_: &[f32]| {
                blocks += 1;
                Ok(())
            };
            let err = mixdown_with_threads(&mix, &failing_opener, &mut sink, &Quiet, threads)
                .expect_err("fails");
            assert_eq!(
                err.to_string(),
                "cannot read stem take0.opus (track 0, clip 0): truncated"
            );
            assert_eq!(blocks, 1, "the block before the clip was written");
        }
    }

    struct CancelAfter {
        blocks: usize,
        seen: AtomicUsize,
        total: AtomicUsize,
    }

    impl Observer for CancelAfter {
        fn total(&self, frames: Option<u64>) {
            self.total
                .store(frames.unwrap_or(0) as usize, Ordering::SeqCst);
        }
        fn advance(&self, _frames: u64) {
            self.seen.fetch_add(1, Ordering::SeqCst);
        }
        fn cancelled(&self) -> bool {
            self.seen.load(Ordering::SeqCst) >= self.blocks
        }
    }

    #[test]
    fn cancel_stops_between_blocks() {
        let mix = Mix {
            tracks: vec![track(0.0, vec![clip_at(0, 100_000)])],
        };
        let open = |_: usize, _: usize| -> Result<Box<dyn ClipSource>, MixError> {
            Ok(Box::new(VecSource::new(Vec::new(), 0, Arc::default())))
        };
        let observer = CancelAfter {
            blocks: 2,
            seen: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
        };
        let mut written = 0;
        let mut sink = |block: &[f32]| {
            written += block.len() / CHANNELS;
            Ok(())
        };
        let result = mixdown(&mix, &open, &mut sink, &observer);
        assert!(matches!(result, Err(MixError::Cancelled)));
        assert_eq!(written, 2 * MIX_BLOCK_FRAMES);
        assert_eq!(observer.total.load(Ordering::SeqCst), 100_000);
    }

    #[test]
    fn a_sink_error_stops_the_mixdown() {
        let mix = Mix {
            tracks: vec![track(0.0, vec![clip_at(0, 100_000)])],
        };
        let mut calls = 0;
        let mut sink = |_: &[f32]| {
            calls += 1;
            Err(MixError::Sink("disk full".into()))
        };
        let err = mixdown(&mix, &failing_opener, &mut sink, &Quiet).expect_err("fails");
        // The clip starts at 0, so its broken source fails before any block is written.
        assert!(matches!(err, MixError::Source { .. }));
        let silent = Mix {
            tracks: vec![MixTrack {
                mute: true,
                ..track(0.0, vec![clip_at(0, 100_000)])
            }],
        };
        let err = mixdown(&silent, &failing_opener, &mut sink, &Quiet).expect_err("fails");
        assert_eq!(err.to_string(), "cannot write the mixdown: disk full");
        assert_eq!(calls, 1);
    }

    #[test]
    fn wild_mixes_are_refused_before_any_work() {
        let far = Mix {
            tracks: vec![track(0.0, vec![clip_at(MAX_MIX_FRAMES, 1)])],
        };
        let crowded = Mix {
            tracks: vec![track(0.0, vec![clip_at(0, 10); MAX_PLAYING_CLIPS + 1])],
        };
        let mut sink = |_: &[f32]| -> Result<(), MixError> { panic!("nothing is written") };
        let err = mixdown(&far, &failing_opener, &mut sink, &Quiet).expect_err("too long");
        assert!(matches!(err, MixError::TooLong { frames } if frames == MAX_MIX_FRAMES + 1));
        let err = mixdown(&crowded, &failing_opener, &mut sink, &Quiet).expect_err("too many");
        assert!(matches!(err, MixError::TooManyClips { clips } if clips == MAX_PLAYING_CLIPS + 1));
    }

    #[test]
    fn an_empty_mix_writes_nothing() {
        let mut sink = |_: &[f32]| -> Result<(), MixError> { panic!("nothing is written") };
        let mix = Mix {
            tracks: vec![track(0.0, vec![clip_at(500, 0)])],
        };
        assert_eq!(
            mixdown(&mix, &failing_opener, &mut sink, &Quiet).expect("empty"),
            0
        );
    }
}
