//! MIDI clips as audio: a General MIDI SoundFont synth (rustysynth) fed the
//! events our own SMF parser produced — never through the synth's file
//! parser, so every byte from a file or a peer went through our limits.

use crate::atomic::read_capped;
use std::path::Path;
use std::sync::Arc;

use meshstudio_codec::midi::MidiEvent;
use rustysynth::{Synthesizer, SynthesizerSettings};

use super::mixdown::{ClipSource, MixError};
use super::render::CHANNELS;

/// Where Debian's timgm6mb-soundfont puts its General MIDI SoundFont.
pub const DEFAULT_SOUNDFONT: &str = "/usr/share/sounds/sf2/TimGM6mb.sf2";
/// Largest SoundFont we load (fluid's GM font is 145 MB).
const MAX_SOUNDFONT_BYTES: u64 = 1 << 30;
/// How long a MIDI clip sounds after its last event: release and reverb tails.
pub const MIDI_TAIL_FRAMES: u64 = 2 * 48_000;
/// The synth's output rate: the project rate.
const SYNTH_RATE_HZ: i32 = 48_000;
/// Frames the synth renders per call while catching up to the next event.
const RENDER_CHUNK_FRAMES: usize = 256;

/// A loaded SoundFont: what people call it, its BLAKE3 hash (two sites hear
/// the same mix only with the same font), and the parsed font.
#[derive(Clone)]
pub struct SoundFont {
    pub name: String,
    pub hash: String,
    font: Arc<rustysynth::SoundFont>,
}

impl SoundFont {
    /// Loads and checks `path`. SF3 (compressed samples) is not supported
    /// by the synth, and says so.
    pub fn load(path: &Path) -> Result<SoundFont, String> {
        let fail = |why: String| format!("SoundFont {}: {why}", path.display());
        let bytes = read_capped(path, MAX_SOUNDFONT_BYTES).map_err(|e| fail(e.to_string()))?;
        let hash = blake3::hash(&bytes).to_hex().to_string();
        // The font parser is not ours: a broken file must not take the node down.
        let parsed = std::panic::catch_unwind(|| {
            rustysynth::SoundFont::new(&mut std::io::Cursor::new(&bytes))
        })
        .map_err(|_| fail("not a SoundFont we can read".into()))?
        .map_err(|e| {
            fail(format!(
                "not a SoundFont 2 file we can read ({e}); SF3 is not supported"
            ))
        })?;
        let name = path
            .file_name()
            .map_or_else(|| "soundfont".into(), |n| n.to_string_lossy().into_owned());
        Ok(SoundFont {
            name,
            hash,
            font: Arc::new(parsed),
        })
    }

    /// A synth playing this font at the project rate.
    pub fn synth(&self) -> Result<Synthesizer, String> {
        let settings = SynthesizerSettings::new(SYNTH_RATE_HZ);
        Synthesizer::new(&self.font, &settings).map_err(|e| format!("synth: {e}"))
    }
}

/// Sends one event to the synth.
pub fn play_event(synth: &mut Synthesizer, e: &MidiEvent) {
    synth.process_midi_message(
        i32::from(e.channel()),
        i32::from(e.command()),
        i32::from(e.data1),
        i32::from(e.data2),
    );
}

/// One MIDI clip rendered front to back from its offset: events play at
/// their frames (the synth applies them at its next 64-frame block), and
/// the clip keeps sounding `MIDI_TAIL_FRAMES` past its last event.
pub struct MidiClip {
    synth: Synthesizer,
    events: Arc<[MidiEvent]>,
    next: usize,
    /// Frames of the clip's source rendered so far (from its frame 0).
    pos: u64,
    end: u64,
    left: Vec<f32>,
    right: Vec<f32>,
}

impl MidiClip {
    /// A clip playing `events` (sorted by frame), positioned at `offset`
    /// frames into them: what comes before is rendered and dropped, so
    /// notes held across the offset still sound.
    pub fn open(
        font: &SoundFont,
        events: Arc<[MidiEvent]>,
        offset: u64,
        (track, clip): (usize, usize),
        name: &str,
    ) -> Result<MidiClip, MixError> {
        let fail = |reason: String| MixError::Source {
            track,
            clip,
            stem: name.to_string(),
            reason,
        };
        let synth = font.synth().map_err(fail)?;
        let end = events.last().map_or(0, |e| e.frame) + MIDI_TAIL_FRAMES;
        let mut clip = MidiClip {
            synth,
            events,
            next: 0,
            pos: 0,
            end,
            left: vec![0.0; RENDER_CHUNK_FRAMES],
            right: vec![0.0; RENDER_CHUNK_FRAMES],
        };
        clip.skip(offset)?;
        Ok(clip)
    }

    /// Plays every event due at the current position.
    fn play_due(&mut self) {
        while let Some(e) = self.events.get(self.next).filter(|e| e.frame <= self.pos) {
            play_event(&mut self.synth, e);
            self.next += 1;
        }
    }
}

impl ClipSource for MidiClip {
    fn read(&mut self, out: &mut [f32]) -> Result<usize, MixError> {
        let wanted = (out.len() / CHANNELS) as u64;
        let frames = wanted.min(self.end.saturating_sub(self.pos)) as usize;
        let mut done = 0;
        while done < frames {
            self.play_due();
            let until_event = self
                .events
                .get(self.next)
                .map_or(u64::MAX, |e| e.frame - self.pos);
            let n = (frames - done)
                .min(RENDER_CHUNK_FRAMES)
                .min(until_event.max(1) as usize);
            self.synth.render(&mut self.left[..n], &mut self.right[..n]);
            for (i, frame) in out[done * CHANNELS..(done + n) * CHANNELS]
                .chunks_exact_mut(CHANNELS)
                .enumerate()
            {
                frame[0] = self.left[i];
                frame[1] = self.right[i];
            }
            done += n;
            self.pos += n as u64;
        }
        Ok(frames)
    }
}
