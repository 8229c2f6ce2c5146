//! Standard MIDI Files: parsed with midly, under limits, into channel
//! events on the 48 kHz timeline; and written back, one track per file.
//!
//! Bytes may come from anyone (an imported file, a peer's synced take), so
//! the parse is lazy and counted: size, tracks and events are capped before
//! anything is collected, tick arithmetic cannot overflow, and no event may
//! land beyond the longest song we accept. Only channel messages survive;
//! system exclusive and most meta events mean nothing to our synth.
//!
//! midly runs inside the codec's panic boundary: a parser bug found by
//! fuzzing (an SMPTE division of -128 overflows a negation in midly 0.5.3)
//! is an error for that file, never a crash.
//!
//! A track whose bytes break off mid-event ends there, as in every MIDI
//! player (midly's lenient mode): such files are common and still useful.
//! A file that is not MIDI, or whose header or chunk structure is broken,
//! is an error.

use midly::num::{u4, u7, u14, u15, u24, u28};
use midly::{
    Format, Fps, Header, MetaMessage, MidiMessage, Smf, Timing, TrackEvent, TrackEventKind,
};

use crate::error::{CodecError, Result};
use crate::limits::{MAX_STEM_FRAMES, STEM_RATE_HZ};

/// Largest SMF we read (the biggest real songs are a few hundred KiB).
pub const MAX_SMF_BYTES: usize = 16 << 20;
/// Most track chunks in one file.
pub const MAX_SMF_TRACKS: usize = 256;
/// Most events in one file, all tracks together (about 16 MiB in memory).
pub const MAX_SMF_EVENTS: usize = 1 << 20;
/// Most channel events `write_smf` writes: room is left for its own meta
/// events, so whatever we write, `parse_smf` reads back.
pub const MAX_WRITTEN_EVENTS: usize = MAX_SMF_EVENTS - 64;
/// Longest track name we keep, in characters.
const MAX_NAME_CHARS: usize = 64;
/// The largest delta time an SMF event can carry (28 bits).
const MAX_DELTA_TICKS: u64 = (1 << 28) - 1;
/// Tempo when a file sets none: 120 quarter notes a minute.
const DEFAULT_TEMPO_US: u64 = 500_000;
/// Blobs are written with one tick per 48 kHz frame (24000 ticks a quarter
/// at 120 bpm), so a take's timing survives the round trip exactly.
const FRAME_TICKS_PER_QUARTER: u16 = 24_000;
/// Ticks per quarter note in exported files: what other tools expect.
pub const EXPORT_TICKS_PER_QUARTER: u16 = 960;
const FORMAT: &str = "midi";

/// One channel message at a frame of the 48 kHz timeline. `status` is the
/// MIDI status byte (0x80..=0xEF); data bytes are < 0x80, the second 0 for
/// the one-byte messages (program change, channel pressure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MidiEvent {
    pub frame: u64,
    pub status: u8,
    pub data1: u8,
    pub data2: u8,
}

impl MidiEvent {
    /// The event for a live message's bytes, if it is a channel message
    /// (clock, active sensing and system exclusive are not). A note-on with
    /// velocity 0 becomes the note-off it means.
    pub fn from_bytes(frame: u64, bytes: &[u8]) -> Option<MidiEvent> {
        match midly::live::LiveEvent::parse(bytes).ok()? {
            midly::live::LiveEvent::Midi { channel, message } => {
                Some(Self::from_message(frame, channel, message))
            }
            _ => None,
        }
    }

    fn from_message(frame: u64, channel: u4, message: MidiMessage) -> MidiEvent {
        let (command, data1, data2) = match message {
            MidiMessage::NoteOn { key, vel } if vel == 0 => (0x80, key.as_int(), 64),
            MidiMessage::NoteOff { key, vel } => (0x80, key.as_int(), vel.as_int()),
            MidiMessage::NoteOn { key, vel } => (0x90, key.as_int(), vel.as_int()),
            MidiMessage::Aftertouch { key, vel } => (0xA0, key.as_int(), vel.as_int()),
            MidiMessage::Controller { controller, value } => {
                (0xB0, controller.as_int(), value.as_int())
            }
            MidiMessage::ProgramChange { program } => (0xC0, program.as_int(), 0),
            MidiMessage::ChannelAftertouch { vel } => (0xD0, vel.as_int(), 0),
            MidiMessage::PitchBend { bend } => {
                let v = bend.0.as_int();
                (0xE0, (v & 0x7F) as u8, (v >> 7) as u8)
            }
        };
        MidiEvent {
            frame,
            status: command | channel.as_int(),
            data1,
            data2,
        }
    }

    /// The command nibble: 0x80 note off, 0x90 note on, … 0xE0 pitch bend.
    pub fn command(&self) -> u8 {
        self.status & 0xF0
    }

    pub fn channel(&self) -> u8 {
        self.status & 0x0F
    }

    pub fn is_note_on(&self) -> bool {
        self.command() == 0x90 && self.data2 > 0
    }

    fn message(&self) -> MidiMessage {
        let (d1, d2) = (u7::new(self.data1), u7::new(self.data2));
        match self.command() {
            0x80 => MidiMessage::NoteOff { key: d1, vel: d2 },
            0x90 => MidiMessage::NoteOn { key: d1, vel: d2 },
            0xA0 => MidiMessage::Aftertouch { key: d1, vel: d2 },
            0xB0 => MidiMessage::Controller {
                controller: d1,
                value: d2,
            },
            0xC0 => MidiMessage::ProgramChange { program: d1 },
            0xD0 => MidiMessage::ChannelAftertouch { vel: d1 },
            _ => MidiMessage::PitchBend {
                bend: midly::PitchBend(u14::new(
                    u16::from(self.data1) | (u16::from(self.data2) << 7),
                )),
            },
        }
    }
}

/// One track of a file: its name, its channel events in time order, and
/// where it ends (its end-of-track mark or last event, whichever is later).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MidiTrack {
    pub name: String,
    pub events: Vec<MidiEvent>,
    pub end_frame: u64,
}

impl MidiTrack {
    /// Whether the track plays any note (a conductor track holds none).
    pub fn has_notes(&self) -> bool {
        self.events.iter().any(MidiEvent::is_note_on)
    }
}

/// A track's events with their ticks, before tempo turns ticks into frames.
#[derive(Default)]
struct TickTrack {
    name: String,
    events: Vec<(u64, u4, MidiMessage)>,
    tempos: Vec<(u64, u64)>,
    end_tick: u64,
}

/// Parses a Standard MIDI File into its tracks, with every event on the
/// 48 kHz timeline. Tracks without events are kept (a conductor track);
/// callers decide what to do with them.
pub fn parse_smf(bytes: &[u8]) -> Result<Vec<MidiTrack>> {
    crate::guard::guarded_as(FORMAT, || parse_guarded(bytes))
}

fn parse_guarded(bytes: &[u8]) -> Result<Vec<MidiTrack>> {
    if bytes.len() > MAX_SMF_BYTES {
        return Err(CodecError::Limit(format!(
            "the MIDI file is {} bytes; at most {MAX_SMF_BYTES} are accepted",
            bytes.len()
        )));
    }
    let (header, chunks) =
        midly::parse(bytes).map_err(|e| CodecError::malformed(FORMAT, e.to_string()))?;
    let mut tracks = Vec::new();
    let mut events = 0usize;
    for chunk in chunks {
        if tracks.len() == MAX_SMF_TRACKS {
            return Err(CodecError::Limit(format!(
                "the MIDI file has more than {MAX_SMF_TRACKS} tracks"
            )));
        }
        let chunk = chunk.map_err(|e| CodecError::malformed(FORMAT, e.to_string()))?;
        tracks.push(read_track(chunk, &mut events)?);
    }
    if tracks.is_empty() {
        return Err(CodecError::malformed(FORMAT, "the file holds no tracks"));
    }
    to_frames(&header, tracks)
}

/// Reads one track chunk's events, counting them against the file's budget.
fn read_track(chunk: midly::EventIter, events: &mut usize) -> Result<TickTrack> {
    let mut track = TickTrack::default();
    let mut tick = 0u64;
    for event in chunk {
        let event = event.map_err(|e| CodecError::malformed(FORMAT, e.to_string()))?;
        *events += 1;
        if *events > MAX_SMF_EVENTS {
            return Err(CodecError::Limit(format!(
                "the MIDI file has more than {MAX_SMF_EVENTS} events"
            )));
        }
        tick += u64::from(event.delta.as_int());
        match event.kind {
            TrackEventKind::Midi { channel, message } => {
                track.events.push((tick, channel, message));
            }
            TrackEventKind::Meta(MetaMessage::Tempo(us)) => {
                track.tempos.push((tick, u64::from(us.as_int())));
            }
            TrackEventKind::Meta(MetaMessage::TrackName(name)) if track.name.is_empty() => {
                track.name = clean_name(name);
            }
            _ => {}
        }
        track.end_tick = tick;
    }
    Ok(track)
}

/// A name fit to show: valid UTF-8 (lossy), no control characters, trimmed.
fn clean_name(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let kept: String = text.chars().filter(|c| !c.is_control()).collect();
    kept.trim().chars().take(MAX_NAME_CHARS).collect()
}

/// Converts every track's ticks to frames: one tempo map for the whole
/// file (formats 0 and 1), or each track its own (format 2).
fn to_frames(header: &Header, tracks: Vec<TickTrack>) -> Result<Vec<MidiTrack>> {
    let shared = match header.format {
        Format::Sequential => None,
        _ => Some(TickClock::new(
            header.timing,
            tracks
                .iter()
                .flat_map(|t| t.tempos.iter().copied())
                .collect(),
        )?),
    };
    tracks
        .into_iter()
        .map(|t| match &shared {
            Some(clock) => track_frames(clock, t),
            None => track_frames(&TickClock::new(header.timing, t.tempos.clone())?, t),
        })
        .collect()
}

fn track_frames(clock: &TickClock, t: TickTrack) -> Result<MidiTrack> {
    let mut events = Vec::with_capacity(t.events.len());
    for (tick, channel, message) in t.events {
        events.push(MidiEvent::from_message(
            clock.frame(tick)?,
            channel,
            message,
        ));
    }
    let last = events.last().map_or(0, |e| e.frame);
    Ok(MidiTrack {
        name: t.name,
        events,
        end_frame: clock.frame(t.end_tick)?.max(last),
    })
}

/// Ticks to 48 kHz frames, exactly (integer arithmetic, rounded down).
enum TickClock {
    /// Ticks per quarter note and a tempo map: (tick, µs per quarter, the
    /// frame-numerator where that tempo starts, in frames × ppq × 10⁶).
    Metrical {
        ppq: u64,
        map: Vec<(u64, u64, u128)>,
    },
    /// A fixed number of ticks per second, as a fraction.
    Timecode { num: u64, den: u64 },
}

impl TickClock {
    fn new(timing: Timing, mut tempos: Vec<(u64, u64)>) -> Result<TickClock> {
        match timing {
            Timing::Metrical(ppq) if ppq.as_int() == 0 => {
                Err(CodecError::malformed(FORMAT, "0 ticks per quarter note"))
            }
            Timing::Metrical(ppq) => {
                tempos.sort_by_key(|&(tick, _)| tick); // stable: file order within a tick
                if tempos.iter().any(|&(_, us)| us == 0) {
                    return Err(CodecError::malformed(FORMAT, "a tempo of 0 µs per quarter"));
                }
                let ppq = u64::from(ppq.as_int());
                let mut map = vec![(0, DEFAULT_TEMPO_US, 0u128)];
                for (tick, us) in tempos {
                    let &(t0, us0, n0) = map.last().expect("never empty");
                    let n = n0 + u128::from(tick - t0) * u128::from(us0) * u128::from(STEM_RATE_HZ);
                    if tick == t0 {
                        map.pop();
                    }
                    map.push((tick, us, n));
                }
                Ok(TickClock::Metrical { ppq, map })
            }
            Timing::Timecode(_, 0) => Err(CodecError::malformed(FORMAT, "0 subframes per frame")),
            Timing::Timecode(fps, sub) => {
                let sub = u64::from(sub);
                // Ticks per second: fps × subframes (29.97 fps is 30000/1001).
                let (num, den) = match fps {
                    Fps::Fps29 => (30_000 * sub, 1001),
                    other => (u64::from(other.as_int()) * sub, 1),
                };
                Ok(TickClock::Timecode { num, den })
            }
        }
    }

    fn frame(&self, tick: u64) -> Result<u64> {
        let frame = match self {
            TickClock::Metrical { ppq, map } => {
                let i = map.partition_point(|&(t, _, _)| t <= tick) - 1;
                let (t0, us, n0) = map[i];
                let n = n0 + u128::from(tick - t0) * u128::from(us) * u128::from(STEM_RATE_HZ);
                n / (u128::from(*ppq) * 1_000_000)
            }
            TickClock::Timecode { num, den } => {
                u128::from(tick) * u128::from(*den) * u128::from(STEM_RATE_HZ) / u128::from(*num)
            }
        };
        if frame > u128::from(MAX_STEM_FRAMES) {
            return Err(CodecError::Limit(
                "the MIDI file's events reach beyond 6 hours".into(),
            ));
        }
        Ok(frame as u64)
    }
}

/// How a written file counts time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SmfTiming {
    /// One tick per 48 kHz frame: exact, for the files meshstudio stores.
    Frames,
    /// Musical time at the song's tempo and meter, for other tools.
    Song {
        bpm: f64,
        beats_per_bar: u8,
        beat_unit: u8,
    },
}

/// Every track's events on one timeline, in time order (each track's own
/// order kept within a frame).
pub fn merge_tracks(tracks: Vec<MidiTrack>) -> Vec<MidiEvent> {
    let mut events: Vec<MidiEvent> = tracks.into_iter().flat_map(|t| t.events).collect();
    events.sort_by_key(|e| e.frame);
    events
}

/// Writes one track as a format-0 Standard MIDI File. Events must be in
/// time order; they are written at their frames converted to ticks. Like
/// `parse_smf`, it keeps to the limits: frames past 6 h are held at 6 h
/// and at most `MAX_WRITTEN_EVENTS` events are written, so whatever comes
/// from a peer's document or a very long take, the file reads back.
pub fn write_smf(name: &str, events: &[MidiEvent], end_frame: u64, timing: SmfTiming) -> Vec<u8> {
    let events = &events[..events.len().min(MAX_WRITTEN_EVENTS)];
    let end_frame = end_frame.min(MAX_STEM_FRAMES);
    let (ppq, tempo_us) = match timing {
        SmfTiming::Frames => (FRAME_TICKS_PER_QUARTER, DEFAULT_TEMPO_US),
        SmfTiming::Song { bpm, .. } => (EXPORT_TICKS_PER_QUARTER, tempo_us(bpm)),
    };
    let to_tick = |frame: u64| -> u64 {
        // frame / 48000 s × 10⁶ / tempo_us quarters × ppq ticks, rounded.
        let num = u128::from(frame.min(MAX_STEM_FRAMES)) * u128::from(ppq) * 1_000_000;
        let den = u128::from(tempo_us) * u128::from(STEM_RATE_HZ);
        ((num + den / 2) / den) as u64
    };
    let name = clean_name(name.as_bytes());
    let mut w = TrackWriter::default();
    w.push(
        0,
        TrackEventKind::Meta(MetaMessage::TrackName(name.as_bytes())),
    );
    w.push(
        0,
        TrackEventKind::Meta(MetaMessage::Tempo(u24::new(tempo_us as u32))),
    );
    if let SmfTiming::Song {
        beats_per_bar,
        beat_unit,
        ..
    } = timing
    {
        // The denominator is stored as a power of two; 24 clocks per click, 8 32nds per quarter.
        let meter =
            MetaMessage::TimeSignature(beats_per_bar, beat_unit.max(1).ilog2() as u8, 24, 8);
        w.push(0, TrackEventKind::Meta(meter));
    }
    for e in events {
        let kind = TrackEventKind::Midi {
            channel: u4::new(e.channel()),
            message: e.message(),
        };
        w.push(to_tick(e.frame), kind);
    }
    let end = to_tick(end_frame).max(w.last);
    w.push(end, TrackEventKind::Meta(MetaMessage::EndOfTrack));
    let smf = Smf {
        header: Header::new(Format::SingleTrack, Timing::Metrical(u15::new(ppq))),
        tracks: vec![w.events],
    };
    let mut out = Vec::new();
    smf.write_std(&mut out)
        .expect("writing to memory cannot fail");
    out
}

/// Microseconds per quarter note at `bpm`, as the tempo meta event stores it (µs per
/// quarter, 24 bits): tempos outside 4–1000 bpm are clamped.
fn tempo_us(bpm: f64) -> u64 {
    let bpm = if bpm.is_finite() {
        bpm.clamp(4.0, 1000.0)
    } else {
        120.0
    };
    (60_000_000.0 / bpm).round() as u64
}

/// Builds a track from absolute ticks.
#[derive(Default)]
struct TrackWriter<'a> {
    events: Vec<TrackEvent<'a>>,
    last: u64,
}

impl<'a> TrackWriter<'a> {
    fn push(&mut self, tick: u64, kind: TrackEventKind<'a>) {
        let mut delta = tick.saturating_sub(self.last);
        // A gap longer than one delta can hold is bridged by empty text events.
        while delta > MAX_DELTA_TICKS {
            self.events.push(TrackEvent {
                delta: u28::new(MAX_DELTA_TICKS as u32),
                kind: TrackEventKind::Meta(MetaMessage::Text(b"")),
            });
            delta -= MAX_DELTA_TICKS;
        }
        self.events.push(TrackEvent {
            delta: u28::new(delta as u32),
            kind,
        });
        self.last = self.last.max(tick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(frame: u64, on: bool, key: u8, vel: u8) -> MidiEvent {
        MidiEvent {
            frame,
            status: if on { 0x90 } else { 0x80 },
            data1: key,
            data2: vel,
        }
    }

    /// An SMF from raw track chunks (each the bytes after "MTrk" + length).
    fn smf(format: u16, division: u16, tracks: &[&[u8]]) -> Vec<u8> {
        let mut out = b"MThd\0\0\0\x06".to_vec();
        out.extend(format.to_be_bytes());
        out.extend((tracks.len() as u16).to_be_bytes());
        out.extend(division.to_be_bytes());
        for t in tracks {
            out.extend(b"MTrk");
            out.extend((t.len() as u32).to_be_bytes());
            out.extend(*t);
        }
        out
    }

    #[test]
    fn frame_timing_round_trips_exactly() {
        let events = vec![
            note(0, true, 60, 100),
            MidiEvent {
                frame: 1,
                status: 0xE3,
                data1: 0x7F,
                data2: 0x40,
            },
            MidiEvent {
                frame: 12_345,
                status: 0xC1,
                data1: 25,
                data2: 0,
            },
            note(48_000, false, 60, 0),
        ];
        let bytes = write_smf("Keys\n", &events, 96_000, SmfTiming::Frames);
        let tracks = parse_smf(&bytes).expect("parses");
        assert_eq!(tracks.len(), 1);
        assert_eq!(tracks[0].name, "Keys");
        assert_eq!(tracks[0].events, events);
        assert_eq!(tracks[0].end_frame, 96_000);
    }

    #[test]
    fn tempo_changes_place_events_in_frames() {
        // 480 ppq; 120 bpm for one quarter, then 60 bpm: a note at tick 960
        // is 0.5 s + 1 s = 72000 frames in.
        let conductor: &[u8] = &[
            0x00, 0xFF, 0x51, 0x03, 0x07, 0xA1, 0x20, // tempo 500000
            0x83, 0x60, 0xFF, 0x51, 0x03, 0x0F, 0x42, 0x40, // +480: tempo 1000000
            0x00, 0xFF, 0x2F, 0x00,
        ];
        let notes: &[u8] = &[
            0x00, 0xFF, 0x03, 0x04, b'L', b'e', b'a', b'd', // name
            0x87, 0x40, 0x91, 0x3C, 0x50, // +960: note on ch 1
            0x83, 0x60, 0x3C, 0x00, // +480, running status, velocity 0
            0x00, 0xFF, 0x2F, 0x00,
        ];
        let tracks = parse_smf(&smf(1, 480, &[conductor, notes])).expect("parses");
        assert_eq!(tracks.len(), 2);
        assert!(!tracks[0].has_notes());
        let lead = &tracks[1];
        assert_eq!(lead.name, "Lead");
        assert_eq!(
            lead.events,
            vec![
                MidiEvent {
                    frame: 72_000,
                    status: 0x91,
                    data1: 60,
                    data2: 80
                },
                MidiEvent {
                    frame: 120_000,
                    status: 0x81,
                    data1: 60,
                    data2: 64
                },
            ]
        );
    }

    #[test]
    fn timecode_division_counts_ticks_per_second() {
        // -25 fps, 40 subframes: 1000 ticks a second; a note at tick 1500 = 1.5 s.
        let notes: &[u8] = &[0x8B, 0x5C, 0x90, 0x40, 0x40, 0x00, 0xFF, 0x2F, 0x00];
        let division = u16::from_be_bytes([(-25i8) as u8, 40]);
        let tracks = parse_smf(&smf(0, division, &[notes])).expect("parses");
        assert_eq!(tracks[0].events[0].frame, 72_000);
    }

    #[test]
    fn song_timing_writes_musical_ticks() {
        let events = [note(24_000, true, 64, 90), note(48_000, false, 64, 64)];
        let song = SmfTiming::Song {
            bpm: 90.0,
            beats_per_bar: 3,
            beat_unit: 4,
        };
        let bytes = write_smf("x", &events, 48_000, song);
        let smf = Smf::parse(&bytes).expect("midly reads it");
        assert_eq!(smf.header.timing, Timing::Metrical(u15::new(960)));
        let metas: Vec<_> = smf.tracks[0].iter().map(|e| e.kind).collect();
        assert!(metas.contains(&TrackEventKind::Meta(MetaMessage::Tempo(u24::new(666_667)))));
        assert!(
            metas.contains(&TrackEventKind::Meta(MetaMessage::TimeSignature(
                3, 2, 24, 8
            )))
        );
        // 0.5 s at 90 bpm is 0.75 quarter = 720 ticks; read back at the
        // file's own tempo it is 0.5 s again (within the tick's rounding).
        let back = parse_smf(&bytes).expect("parses");
        assert!(back[0].events[0].frame.abs_diff(24_000) <= 1);
    }

    #[test]
    fn long_gaps_are_bridged() {
        let far = MAX_DELTA_TICKS * 2 + 10;
        let events = [note(1, true, 60, 1), note(far, false, 60, 0)];
        let back = parse_smf(&write_smf("", &events, far, SmfTiming::Frames)).expect("parses");
        assert_eq!(back[0].events[1].frame, far);
    }

    #[test]
    fn what_we_write_always_reads_back() {
        let far = note(u64::MAX / 2, true, 60, 1);
        let bytes = write_smf("", &[far], u64::MAX, SmfTiming::Frames);
        let back = parse_smf(&bytes).expect("parses");
        assert_eq!(back[0].events[0].frame, MAX_STEM_FRAMES);
        let many = vec![note(1, true, 60, 1); MAX_SMF_EVENTS];
        let back = parse_smf(&write_smf("", &many, 1, SmfTiming::Frames)).expect("parses");
        assert_eq!(back[0].events.len(), MAX_WRITTEN_EVENTS);
    }

    #[test]
    fn hostile_files_are_errors() {
        assert!(parse_smf(b"").is_err());
        assert!(parse_smf(b"RIFF\0\0").is_err());
        assert!(parse_smf(b"MThd\0\0\0\x06\0\0").is_err());
        let zero_ppq = smf(0, 0, &[&[0x00, 0xFF, 0x2F, 0x00]]);
        assert!(matches!(
            parse_smf(&zero_ppq),
            Err(CodecError::Malformed { .. })
        ));
        let zero_tempo = smf(0, 96, &[&[0x00, 0xFF, 0x51, 0x03, 0, 0, 0]]);
        assert!(matches!(
            parse_smf(&zero_tempo),
            Err(CodecError::Malformed { .. })
        ));
        // A 1-ppq file with a slow tempo and a huge delta lands past 6 h.
        let far: &[u8] = &[
            0x00, 0xFF, 0x51, 0x03, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 0x90, 0x3C, 0x40,
        ];
        assert!(matches!(
            parse_smf(&smf(0, 1, &[far])),
            Err(CodecError::Limit(_))
        ));
        let many: Vec<&[u8]> = vec![&[]; MAX_SMF_TRACKS + 1];
        assert!(matches!(
            parse_smf(&smf(1, 96, &many)),
            Err(CodecError::Limit(_))
        ));
        assert!(matches!(
            parse_smf(&vec![0u8; MAX_SMF_BYTES + 1]),
            Err(CodecError::Limit(_))
        ));
    }

    #[test]
    fn too_many_events_is_a_limit() {
        // Running status: 3 bytes per event (delta, key, velocity).
        let mut track = vec![0x00, 0x90, 0x3C, 0x40];
        for _ in 0..MAX_SMF_EVENTS {
            track.extend([0x00, 0x3C, 0x40]);
        }
        assert!(matches!(
            parse_smf(&smf(0, 96, &[&track])),
            Err(CodecError::Limit(_))
        ));
    }

    #[test]
    fn a_track_that_breaks_off_ends_there() {
        let cut: &[u8] = &[0x00, 0x90, 0x3C, 0x40, 0x10, 0x80];
        let tracks = parse_smf(&smf(0, 96, &[cut])).expect("lenient");
        assert_eq!(tracks[0].events.len(), 1);
    }

    #[test]
    fn live_bytes_become_events() {
        assert_eq!(
            MidiEvent::from_bytes(7, &[0x92, 60, 0]),
            Some(note(7, false, 60, 64).with_status(0x82))
        );
        assert_eq!(MidiEvent::from_bytes(0, &[0xF8]), None);
        assert_eq!(MidiEvent::from_bytes(0, &[0x90, 0x80, 1]), None);
        assert_eq!(MidiEvent::from_bytes(0, &[]), None);
    }

    impl MidiEvent {
        fn with_status(mut self, status: u8) -> Self {
            self.status = status;
            self
        }
    }

    proptest::proptest! {
        #[test]
        fn any_events_round_trip(
            raw in proptest::collection::vec((0u64..10_000_000, 0x80u8..0xF0, 0u8..0x80, 0u8..0x80), 0..200)
        ) {
            let mut events: Vec<MidiEvent> = raw
                .into_iter()
                .map(|(frame, status, data1, data2)| {
                    let e = MidiEvent { frame, status, data1, data2 };
                    // Canonical form: one-byte messages carry 0; velocity-0 note-ons are note-offs.
                    match e.command() {
                        0xC0 | 0xD0 => MidiEvent { data2: 0, ..e },
                        0x90 if data2 == 0 => MidiEvent { status: 0x80 | e.channel(), data2: 64, ..e },
                        _ => e,
                    }
                })
                .collect();
            events.sort_by_key(|e| e.frame);
            let end = events.last().map_or(0, |e| e.frame);
            let back = parse_smf(&write_smf("t", &events, end, SmfTiming::Frames)).expect("parses");
            proptest::prop_assert_eq!(&back[0].events, &events);
        }
    }
}
