//! `export-midi`: a MIDI track's clips, as placed in the song, written to
//! one Standard MIDI File at the song's tempo and meter; and the window
//! arithmetic a recorded MIDI take shares with it.

use std::collections::BTreeSet;
use std::path::Path;

use meshstudio_codec::limits::MAX_STEM_FRAMES;
use meshstudio_codec::midi::{MidiEvent, SmfTiming, write_smf};
use serde_json::{Value, json};

use super::bounce::{MIDI_KIND, clip_midi};
use super::{Context, RequestError, Result, resolve};
use crate::atomic::AtomicFile;
use crate::project::ProjectView;
use crate::project::view::ClipView;

pub fn export(ctx: &mut Context, project: &str, track: &str, out: &Path) -> Result<Value> {
    let p = resolve::project(ctx.store()?, project)?;
    let (track_id, _) = resolve::track(&p, track)?;
    let view = ProjectView::of(&p);
    let t = view
        .tracks
        .iter()
        .find(|t| t.id == track_id)
        .expect("resolved in this view");
    if t.kind != MIDI_KIND {
        return Err(RequestError::Invalid(format!(
            "track {:?} is an {} track; export-midi writes MIDI tracks (export-stems writes audio)",
            t.name, t.kind
        )));
    }
    let mut events = Vec::new();
    for clip in &t.clips {
        events.extend(place(Window::of(clip), &clip_midi(ctx, clip)?));
    }
    events.sort_by_key(|e| e.frame); // stable: each clip's order kept within a frame
    let end = t
        .clips
        .iter()
        .map(|c| Window::of(c).end())
        .max()
        .unwrap_or(0);
    let timing = SmfTiming::Song {
        bpm: view.tempo,
        beats_per_bar: view.beats_per_bar.clamp(1, 255) as u8,
        beat_unit: view.beat_unit.clamp(1, 128) as u8,
    };
    let bytes = write_smf(&t.name, &events, end, timing);
    write_file(out, &bytes)?;
    Ok(json!({
        "project": view.id,
        "track": t.id,
        "output": out,
        "events": events.len(),
        "notes": events.iter().filter(|e| e.is_note_on()).count(),
    }))
}

/// Which part of a clip's events plays, and where (48 kHz frames).
#[derive(Clone, Copy)]
pub struct Window {
    pub start: u64,
    pub offset: u64,
    pub length: u64,
}

impl Window {
    /// A clip's window, its fields (from any peer's document) held to the
    /// longest song we accept.
    pub fn of(c: &ClipView) -> Window {
        let frames = |v: i64| (v.max(0) as u64).min(MAX_STEM_FRAMES);
        Window {
            start: frames(c.start),
            offset: frames(c.offset),
            length: frames(c.length),
        }
    }

    /// Where the clip ends on the song timeline.
    pub fn end(&self) -> u64 {
        self.start + self.length
    }
}

/// A recorded take's messages (output frames, in arrival order) as a clip's
/// events: sorted, the `lead` frames of count-in cut off (notes played in
/// it are dropped; controller and program changes apply from the start),
/// and notes still held when recording stopped released at the last event.
pub fn take_events(played: &[MidiEvent], lead: i64) -> Vec<MidiEvent> {
    let mut sorted = played.to_vec();
    sorted.sort_by_key(|e| e.frame);
    let end = sorted.last().map_or(0, |e| e.frame);
    let window = Window {
        start: 0,
        offset: lead.max(0) as u64,
        length: (end + 1).saturating_sub(lead.max(0) as u64),
    };
    place(window, &sorted)
}

/// A clip's events on the song timeline: what lies in its window
/// [offset, offset + length) moves to start + (frame − offset). Controller
/// and program changes before the window still apply from its start; notes
/// held when the window closes are released there.
pub fn place(w: Window, events: &[MidiEvent]) -> Vec<MidiEvent> {
    let (start, offset) = (w.start, w.offset);
    let window_end = offset + w.length;
    let at = |frame: u64| start + frame.clamp(offset, window_end) - offset;
    let mut held = BTreeSet::new();
    let mut placed = Vec::new();
    for e in events {
        let key = (e.channel(), e.data1);
        let inside = (offset..window_end).contains(&e.frame);
        let keep = match e.command() {
            0x90 if e.is_note_on() => inside && held.insert(key),
            0x80 | 0x90 => held.remove(&key),
            0xA0 => inside,
            _ => e.frame < window_end,
        };
        if keep {
            placed.push(MidiEvent {
                frame: at(e.frame),
                ..*e
            });
        }
    }
    // Notes whose release lies beyond every event: released at the window's end.
    for (channel, key) in held {
        placed.push(MidiEvent {
            frame: at(window_end),
            status: 0x80 | channel,
            data1: key,
            data2: 64,
        });
    }
    placed
}

fn write_file(out: &Path, bytes: &[u8]) -> Result<()> {
    let fail =
        |e: std::io::Error| RequestError::Invalid(format!("cannot write {}: {e}", out.display()));
    let target = AtomicFile::create(out).map_err(fail)?;
    let mut w = target.writer().map_err(fail)?;
    std::io::Write::write_all(&mut w, bytes).map_err(fail)?;
    std::io::Write::flush(&mut w).map_err(fail)?;
    drop(w);
    target.commit().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(frame: u64, status: u8, data1: u8, data2: u8) -> MidiEvent {
        MidiEvent {
            frame,
            status,
            data1,
            data2,
        }
    }

    #[test]
    fn a_trimmed_clip_keeps_its_window_and_releases_held_notes() {
        let events = [
            ev(0, 0xC0, 5, 0),     // program: applies from the window's start
            ev(10, 0x90, 60, 100), // starts before the window: dropped
            ev(150, 0x80, 60, 64), // its note-off: dropped too
            ev(200, 0x90, 62, 90), // inside
            ev(400, 0x80, 62, 64), // after the window: released at its end
            ev(500, 0x90, 64, 90), // after the window: dropped
        ];
        let w = Window {
            start: 1000,
            offset: 100,
            length: 200,
        };
        let placed = place(w, &events);
        assert_eq!(
            placed,
            vec![
                ev(1000, 0xC0, 5, 0),
                ev(1100, 0x90, 62, 90),
                ev(1200, 0x80, 62, 64)
            ]
        );
    }
}
