//! `import`: audio files become Ogg Opus stems in the blob store and clips
//! in the project; a Standard MIDI File becomes one MIDI track per SMF
//! track that plays notes, each clip an SMF blob of our own writing.
//! Durable order: encode → add blob → tag → sync the blob store → commit
//! the clip → acknowledge. A crash between steps leaves at most an orphan
//! blob, which `gc` removes; never a clip without its blob.

use std::io::Write;
use std::path::{Path, PathBuf};

use meshstudio_codec::midi::{
    MAX_SMF_BYTES, MidiTrack, SmfTiming, merge_tracks, parse_smf, write_smf,
};
use meshstudio_codec::{AudioReader, CodecError, Observer, encode_opus};
use meshstudio_store::Hash;
use serde_json::{Value, json};

use super::bounce::{MIDI_KIND, local_soundfont};
use super::failpoint;
use super::{Context, RequestError, Result, edit, new_track, next_order, song_frames, writable};
use crate::atomic::read_capped;
use crate::audio::synth::MIDI_TAIL_FRAMES;
use crate::project::doc::key;
use crate::project::ops::{Change, Fields};
use crate::project::{ProjectDoc, ProjectView};

/// Scratch space for encodes, inside the data dir (same filesystem as the blobs).
const SCRATCH_DIR: &str = "tmp";

/// A clip's blob, ready in the blob store.
struct Stem {
    hash: Hash,
    bytes: u64,
    channels: u32,
    /// The clip's length in 48 kHz frames.
    frames: u64,
    /// Stem bitrate (audio only).
    bitrate_kbps: Option<u32>,
}

/// The kind of track a clip goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackKind {
    Audio,
    Midi,
}

impl TrackKind {
    fn name(self) -> &'static str {
        match self {
            TrackKind::Audio => "audio",
            TrackKind::Midi => MIDI_KIND,
        }
    }
}

pub fn import(
    ctx: &mut Context,
    project: &str,
    files: &[PathBuf],
    track: Option<&str>,
    at_seconds: f64,
    progress: &dyn Observer,
) -> Result<Value> {
    let mut start = song_frames(at_seconds, "--at")?;
    let p = writable(ctx, project)?;
    let mut results = Vec::new();
    for file in files {
        if is_midi(file) {
            let (clips, frames) = import_midi(ctx, &p, file, track, start)?;
            results.extend(clips);
            if track.is_some() {
                start += frames as i64;
            }
            continue;
        }
        let stem = encode_to_blob(ctx, file, progress)?;
        failpoint::hit(failpoint::AFTER_BLOB);
        let track_name = match track {
            Some(name) => name.to_string(),
            None => file_stem(file),
        };
        let source = file
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let new = NewClip {
            track: &track_name,
            reuse: track.is_some(),
            start,
            source,
            master: None,
            kind: TrackKind::Audio,
        };
        let (track_id, clip_id) = add_clip(ctx, &p, &new, &stem, Vec::new())?;
        failpoint::hit(failpoint::AFTER_COMMIT);
        results.push(json!({
            "file": file,
            "track": track_id,
            "clip": clip_id,
            "blob": stem.hash.to_hex().to_string(),
            "start": start,
            "length": stem.frames,
            "channels": stem.channels,
            "bitrate_kbps": stem.bitrate_kbps,
        }));
        if track.is_some() {
            start += stem.frames as i64; // files on one track play one after another
        }
    }
    failpoint::hit(failpoint::BEFORE_ACK);
    Ok(json!({ "project": p.id, "imported": results }))
}

fn file_stem(file: &Path) -> String {
    file.file_stem()
        .map_or_else(|| "Audio".into(), |s| s.to_string_lossy().into_owned())
}

/// Encodes `file` to a stem in scratch space and moves it into the blob store.
fn encode_to_blob(ctx: &mut Context, file: &Path, progress: &dyn Observer) -> Result<Stem> {
    let fail = |reason: String| RequestError::Import {
        path: file.to_path_buf(),
        reason,
    };
    let reader = AudioReader::open(file).map_err(|e| fail(e.to_string()))?;
    let scratch = ctx.data_dir().join(SCRATCH_DIR);
    std::fs::create_dir_all(&scratch).map_err(|e| fail(format!("{}: {e}", scratch.display())))?;
    let temp = tempfile::NamedTempFile::new_in(&scratch).map_err(|e| fail(e.to_string()))?;
    let out = std::io::BufWriter::new(
        temp.as_file()
            .try_clone()
            .map_err(|e| fail(e.to_string()))?,
    );
    // Checked when set; a stored value that no longer parses means the default.
    let bitrate = ctx
        .store()?
        .setting(super::STEM_BITRATE_KEY)?
        .and_then(|v| meshstudio_codec::limits::parse_bitrate_kbps(&v).ok());
    let (mut out, report) = encode_opus(reader, out, bitrate, progress).map_err(|e| match e {
        CodecError::Cancelled => RequestError::Cancelled,
        other => fail(other.to_string()),
    })?;
    out.flush().map_err(|e| fail(e.to_string()))?;
    drop(out);
    let bytes = temp
        .as_file()
        .metadata()
        .map_err(|e| fail(e.to_string()))?
        .len();
    let hash = ctx.import_blob(temp.path())?;
    drop(temp);
    Ok(Stem {
        hash,
        bytes,
        channels: report.channels as u32,
        frames: report.frames,
        bitrate_kbps: Some(report.settings.bitrate_kbps),
    })
}

/// Whether `file` starts like a Standard MIDI File (plain or RIFF RMID).
fn is_midi(file: &Path) -> bool {
    let mut head = [0u8; 12];
    let Ok(mut f) = std::fs::File::open(file) else {
        return false; // the audio path reports the error
    };
    let n = std::io::Read::read(&mut f, &mut head).unwrap_or(0);
    head[..n].starts_with(b"MThd") || (n == 12 && &head[..4] == b"RIFF" && &head[8..] == b"RMID")
}

/// Imports a Standard MIDI File: one MIDI track per SMF track that plays
/// notes (all of them merged onto `track` when one is named). Returns the
/// clips' replies and the longest clip's length.
fn import_midi(
    ctx: &mut Context,
    p: &ProjectDoc,
    file: &Path,
    track: Option<&str>,
    start: i64,
) -> Result<(Vec<Value>, u64)> {
    let fail = |reason: String| RequestError::Import {
        path: file.to_path_buf(),
        reason,
    };
    let bytes = read_capped(file, MAX_SMF_BYTES as u64).map_err(|e| fail(e.to_string()))?;
    let playing: Vec<MidiTrack> = parse_smf(&bytes)
        .map_err(|e| fail(e.to_string()))?
        .into_iter()
        .filter(MidiTrack::has_notes)
        .collect();
    if playing.is_empty() {
        return Err(fail("the MIDI file plays no notes".into()));
    }
    let source = file
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let parts = match track {
        Some(name) => vec![merged(name, playing)],
        None => named_parts(&file_stem(file), playing),
    };
    let news = parts.iter().map(|part| NewClip {
        track: &part.name,
        reuse: track.is_some(),
        start,
        source: source.clone(),
        master: None,
        kind: TrackKind::Midi,
    });
    // One edit for the whole file: a failure leaves no half-imported song.
    let added = add_midi_clips(ctx, p, news.zip(&parts).collect())?;
    let mut replies = Vec::new();
    let mut longest = 0;
    for (part, added) in parts.iter().zip(added) {
        longest = longest.max(added.frames);
        replies.push(json!({
            "file": file,
            "track": added.track,
            "track_name": part.name,
            "clip": added.clip,
            "blob": added.blob,
            "start": start,
            "length": added.frames,
            "kind": MIDI_KIND,
            "events": part.events.len(),
            "notes": part.events.iter().filter(|e| e.is_note_on()).count(),
        }));
    }
    Ok((replies, longest))
}

/// Adds `track` as a MIDI clip (an SMF blob) as `new` says: how a MIDI
/// take becomes a clip.
pub fn add_midi_clip(
    ctx: &mut Context,
    p: &ProjectDoc,
    new: NewClip,
    track: &MidiTrack,
) -> Result<AddedClip> {
    let mut added = add_midi_clips(ctx, p, vec![(new, track)])?;
    Ok(added.pop().expect("one clip added"))
}

/// Adds each track as a MIDI clip (an SMF blob), all in one edit. The
/// project's first MIDI clip records the SoundFont it is heard with.
fn add_midi_clips(
    ctx: &mut Context,
    p: &ProjectDoc,
    parts: Vec<(NewClip, &MidiTrack)>,
) -> Result<Vec<AddedClip>> {
    let mut changes = soundfont_changes(ctx, p);
    let mut added = Vec::new();
    let label = format!(
        "import {}",
        parts.first().map_or("", |(n, _)| n.source.as_str())
    );
    for (new, track) in &parts {
        let stem = midi_blob(ctx, track)?;
        let (track, clip) = clip_changes(p, new, &stem, &mut changes)?;
        added.push(AddedClip {
            track,
            clip,
            blob: stem.hash.to_hex().to_string(),
            frames: stem.frames,
        });
    }
    edit(ctx, p, &label, changes)?;
    Ok(added)
}

/// Every track's events on one track, in time order.
fn merged(name: &str, tracks: Vec<MidiTrack>) -> MidiTrack {
    let end_frame = tracks.iter().map(|t| t.end_frame).max().unwrap_or(0);
    MidiTrack {
        name: name.to_string(),
        events: merge_tracks(tracks),
        end_frame,
    }
}

/// Each track named by its SMF name, else after the file and its number.
fn named_parts(file: &str, tracks: Vec<MidiTrack>) -> Vec<MidiTrack> {
    let count = tracks.len();
    tracks
        .into_iter()
        .enumerate()
        .map(|(i, mut t)| {
            if t.name.is_empty() {
                t.name = match count {
                    1 => file.to_string(),
                    _ => format!("{file} {}", i + 1),
                };
            }
            t
        })
        .collect()
}

/// Writes `track` as an SMF blob (exact frame timing) into the blob store.
/// The clip lasts to the track's end or its last note's tail, whichever is later.
fn midi_blob(ctx: &mut Context, track: &MidiTrack) -> Result<Stem> {
    let bytes = write_smf(
        &track.name,
        &track.events,
        track.end_frame,
        SmfTiming::Frames,
    );
    let stored = store_bytes(ctx, &bytes)?;
    let last = track.events.last().map_or(0, |e| e.frame);
    Ok(Stem {
        hash: stored,
        bytes: bytes.len() as u64,
        channels: 2,
        frames: track.end_frame.max(last + MIDI_TAIL_FRAMES),
        bitrate_kbps: None,
    })
}

/// Puts `bytes` into the blob store through a scratch file.
fn store_bytes(ctx: &mut Context, bytes: &[u8]) -> Result<Hash> {
    let scratch = ctx.data_dir().join(SCRATCH_DIR);
    let fail = |e: std::io::Error| {
        RequestError::Invalid(format!(
            "cannot write scratch file in {}: {e}",
            scratch.display()
        ))
    };
    std::fs::create_dir_all(&scratch).map_err(fail)?;
    let mut temp = tempfile::NamedTempFile::new_in(&scratch).map_err(fail)?;
    temp.write_all(bytes).map_err(fail)?;
    temp.flush().map_err(fail)?;
    ctx.import_blob(temp.path())
}

/// The first MIDI track records which SoundFont the project is made with,
/// so other sites can tell when theirs differs.
fn soundfont_changes(ctx: &mut Context, p: &ProjectDoc) -> Vec<Change> {
    if ProjectView::of(p).soundfont_hash.is_some() {
        return Vec::new();
    }
    let Ok(font) = local_soundfont(ctx) else {
        return Vec::new(); // mixdown will say what is missing
    };
    [
        (key::SOUNDFONT, font.name),
        (key::SOUNDFONT_HASH, font.hash),
    ]
    .into_iter()
    .map(|(k, v)| Change::SetMeta {
        key: k.into(),
        value: json!(v),
        expect: None,
    })
    .collect()
}

/// Where a new clip goes and what it is called.
pub struct NewClip<'a> {
    /// The track's name: found (when `reuse`) or created.
    pub track: &'a str,
    pub reuse: bool,
    pub start: i64,
    /// What people know the audio by (file name, take).
    pub source: String,
    /// A recorded take's lossless master.
    pub master: Option<Hash>,
    /// Audio or MIDI: a clip only goes on a track of its own kind.
    pub kind: TrackKind,
}

/// A clip added by `encode_and_add`.
pub struct AddedClip {
    pub track: String,
    pub clip: String,
    pub blob: String,
    pub frames: u64,
}

/// Encodes `file` to a stem and adds it as a clip: what `import` does for
/// each file, and how a recorded take becomes a clip.
pub fn encode_and_add(
    ctx: &mut Context,
    p: &ProjectDoc,
    file: &Path,
    new: NewClip,
    progress: &dyn Observer,
) -> Result<AddedClip> {
    let stem = encode_to_blob(ctx, file, progress)?;
    let (track, clip) = add_clip(ctx, p, &new, &stem, Vec::new())?;
    Ok(AddedClip {
        track,
        clip,
        blob: stem.hash.to_hex().to_string(),
        frames: stem.frames,
    })
}

/// Adds a clip for `stem` as `new` says, with `changes` in the same edit;
/// commits; returns (track id, clip id).
fn add_clip(
    ctx: &mut Context,
    p: &ProjectDoc,
    new: &NewClip,
    stem: &Stem,
    mut changes: Vec<Change>,
) -> Result<(String, String)> {
    let ids = clip_changes(p, new, stem, &mut changes)?;
    edit(ctx, p, &format!("import {}", new.source), changes)?;
    Ok(ids)
}

/// The changes that add a clip for `stem` as `new` says (and its track,
/// if new), appended to `changes`; returns (track id, clip id).
fn clip_changes(
    p: &ProjectDoc,
    new: &NewClip,
    stem: &Stem,
    changes: &mut Vec<Change>,
) -> Result<(String, String)> {
    let (name, start) = (new.track, new.start);
    let existing = if new.reuse {
        find_track(p, name, new.kind)?
    } else {
        None
    };
    let track_id = existing.unwrap_or_else(|| {
        let id = uuid::Uuid::new_v4().to_string();
        let mut fields = new_track(name, next_order(p));
        fields.insert(key::KIND.into(), json!(new.kind.name()));
        changes.push(Change::AddTrack {
            track: id.clone(),
            fields,
            clips: Default::default(),
        });
        id
    });
    // Time-ordered: a clip's id says when it was made (peers fetch the
    // newest stems first; see `fetch::in_priority`).
    let clip_id = uuid::Uuid::now_v7().to_string();
    let source = new.source.clone();
    let mut fields = Fields::from([
        (key::BLOB.into(), json!(stem.hash.to_hex().to_string())),
        (key::BLOB_BYTES.into(), json!(stem.bytes)),
        (key::CHANNELS.into(), json!(stem.channels)),
        (key::START.into(), json!(start)),
        (key::OFFSET.into(), json!(0)),
        (key::LENGTH.into(), json!(stem.frames)),
        (key::GAIN_DB.into(), json!(0.0)),
        (key::FADE_IN.into(), json!(0)),
        (key::FADE_OUT.into(), json!(0)),
        (key::SOURCE.into(), json!(source)),
    ]);
    if let Some(master) = new.master {
        fields.insert(key::MASTER.into(), json!(master.to_hex().to_string()));
    }
    changes.push(Change::AddClip {
        track: track_id.clone(),
        clip: clip_id.clone(),
        fields,
    });
    Ok((track_id, clip_id))
}

/// The one track called `name`, if any; it must hold clips of `kind`.
fn find_track(p: &ProjectDoc, name: &str, kind: TrackKind) -> Result<Option<String>> {
    let view = ProjectView::of(p);
    let named: Vec<_> = view.tracks.iter().filter(|t| t.name == name).collect();
    match named.as_slice() {
        [] => Ok(None),
        [t] if t.kind != kind.name() => Err(RequestError::Invalid(format!(
            "track {name:?} is a{} {} track: {} clips go on a track of their own \
             (choose another --track name)",
            if t.kind == "audio" { "n" } else { "" },
            t.kind,
            kind.name()
        ))),
        [t] => Ok(Some(t.id.clone())),
        many => Err(RequestError::Invalid(format!(
            "{} tracks are named {name:?}: {}; use `track set --name` to tell them apart",
            many.len(),
            many.iter()
                .map(|t| t.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
