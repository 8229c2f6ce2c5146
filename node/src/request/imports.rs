//! `import`: audio files become Ogg Opus stems in the blob store and clips
//! in the project. Durable order: encode → add blob → tag → sync the blob
//! store → commit the clip → acknowledge. A crash between steps leaves at
//! most an orphan blob, which `gc` removes; never a clip without its blob.

use std::io::Write;
use std::path::{Path, PathBuf};

use meshstudio_codec::{AudioReader, CodecError, EncodeReport, Observer, encode_opus};
use meshstudio_store::Hash;
use serde_json::{Value, json};

use super::failpoint;
use super::{Context, RequestError, Result, edit, new_track, next_order, song_frames, writable};
use crate::project::doc::key;
use crate::project::ops::{Change, Fields};
use crate::project::{ProjectDoc, ProjectView};

/// Scratch space for encodes, inside the data dir (same filesystem as the blobs).
const SCRATCH_DIR: &str = "tmp";

/// One imported file.
struct Stem {
    hash: Hash,
    bytes: u64,
    report: EncodeReport,
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
        };
        let (track_id, clip_id) = add_clip(ctx, &p, &new, &stem)?;
        failpoint::hit(failpoint::AFTER_COMMIT);
        results.push(json!({
            "file": file,
            "track": track_id,
            "clip": clip_id,
            "blob": stem.hash.to_hex().to_string(),
            "start": start,
            "length": stem.report.frames,
            "channels": stem.report.channels,
            "bitrate_kbps": stem.report.settings.bitrate_kbps,
        }));
        if track.is_some() {
            start += stem.report.frames as i64; // files on one track play one after another
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
        report,
    })
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
    let (track, clip) = add_clip(ctx, p, &new, &stem)?;
    Ok(AddedClip {
        track,
        clip,
        blob: stem.hash.to_hex().to_string(),
        frames: stem.report.frames,
    })
}

/// Adds a clip for `stem` as `new` says; commits; returns (track id, clip id).
fn add_clip(
    ctx: &mut Context,
    p: &ProjectDoc,
    new: &NewClip,
    stem: &Stem,
) -> Result<(String, String)> {
    let (name, start) = (new.track, new.start);
    let existing = if new.reuse {
        find_track(p, name)?
    } else {
        None
    };
    let mut changes = Vec::new();
    let track_id = existing.unwrap_or_else(|| {
        let id = uuid::Uuid::new_v4().to_string();
        let fields = new_track(name, next_order(p));
        changes.push(Change::AddTrack {
            track: id.clone(),
            fields,
            clips: Default::default(),
        });
        id
    });
    let clip_id = uuid::Uuid::new_v4().to_string();
    let source = new.source.clone();
    let mut fields = Fields::from([
        (key::BLOB.into(), json!(stem.hash.to_hex().to_string())),
        (key::BLOB_BYTES.into(), json!(stem.bytes)),
        (key::CHANNELS.into(), json!(stem.report.channels)),
        (key::START.into(), json!(start)),
        (key::OFFSET.into(), json!(0)),
        (key::LENGTH.into(), json!(stem.report.frames)),
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
    edit(ctx, p, &format!("import {source}"), changes)?;
    Ok((track_id, clip_id))
}

/// The one track called `name`, if any.
fn find_track(p: &ProjectDoc, name: &str) -> Result<Option<String>> {
    let view = ProjectView::of(p);
    let named: Vec<_> = view.tracks.iter().filter(|t| t.name == name).collect();
    match named.as_slice() {
        [] => Ok(None),
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
