//! The project as plain, sorted data: what `project show` prints and what
//! mixdown reads. Holds replicated state only (nothing about local blobs),
//! so two converged replicas give identical views.

use serde::Serialize;
use yrs::{GetString, Map, MapRef, Out, ReadTxn, Transact};

use super::doc::{ProjectDoc, as_bool, as_f64, as_i64, as_string, child_map, key};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProjectView {
    pub id: String,
    pub name: String,
    pub tempo: f64,
    pub beats_per_bar: i64,
    pub beat_unit: i64,
    pub sample_rate: i64,
    pub tracks: Vec<TrackView>,
    pub stories: Vec<StoryView>,
    pub markers: Vec<MarkerView>,
    pub comments: Vec<CommentView>,
    pub lyrics: String,
    /// Member node ids, sorted.
    pub members: Vec<String>,
    /// The SoundFont the MIDI tracks were made with (name, BLAKE3 hash), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soundfont: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soundfont_hash: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrackView {
    pub id: String,
    pub name: String,
    pub order: f64,
    pub kind: String,
    pub gain_db: f64,
    pub pan: f64,
    pub mute: bool,
    pub solo: bool,
    pub clips: Vec<ClipView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClipView {
    pub id: String,
    /// BLAKE3 hash (hex) of the Ogg Opus stem.
    pub blob: String,
    /// The stem's size, when the importer recorded it.
    pub blob_bytes: Option<i64>,
    pub channels: i64,
    /// BLAKE3 hash (hex) of a recorded take's FLAC master, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// Timeline position, first frame used in the stem, and length, in 48 kHz frames.
    pub start: i64,
    pub offset: i64,
    pub length: i64,
    pub gain_db: f64,
    pub fade_in: i64,
    pub fade_out: i64,
    /// The imported file's name, for people.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MarkerView {
    pub id: String,
    /// Timeline position in 48 kHz frames.
    pub at: i64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommentView {
    pub id: String,
    pub author: String,
    pub site: String,
    /// Milliseconds since the Unix epoch.
    pub time: i64,
    pub text: String,
    /// The track it is about, if any.
    pub track: Option<String>,
    /// The song position (48 kHz frames) it is about, if any.
    pub at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoryView {
    pub id: String,
    pub author: String,
    pub site: String,
    /// Milliseconds since the Unix epoch.
    pub time: i64,
    pub text: String,
}

impl ProjectView {
    pub fn of(p: &ProjectDoc) -> Self {
        let txn = p.doc.transact();
        let meta = &p.roots.meta;
        let mut tracks: Vec<TrackView> = maps(&txn, &p.roots.tracks)
            .map(|(id, m)| track_view(&txn, id, &m))
            .collect();
        tracks.sort_by(|a, b| a.order.total_cmp(&b.order).then_with(|| a.id.cmp(&b.id)));
        let mut stories: Vec<StoryView> = maps(&txn, &p.roots.stories)
            .map(|(id, m)| story_view(&txn, id, &m))
            .collect();
        stories.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id.cmp(&b.id)));
        let mut markers: Vec<MarkerView> = maps(&txn, &p.roots.markers)
            .map(|(id, m)| marker_view(&txn, id, &m))
            .collect();
        markers.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.id.cmp(&b.id)));
        let mut comments: Vec<CommentView> = maps(&txn, &p.roots.comments)
            .map(|(id, m)| comment_view(&txn, id, &m))
            .collect();
        comments.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id.cmp(&b.id)));
        ProjectView {
            id: p.id.clone(),
            name: as_string(meta.get(&txn, key::NAME)).unwrap_or_default(),
            tempo: as_f64(meta.get(&txn, key::TEMPO)).unwrap_or(120.0),
            beats_per_bar: as_i64(meta.get(&txn, key::BEATS_PER_BAR)).unwrap_or(4),
            beat_unit: as_i64(meta.get(&txn, key::BEAT_UNIT)).unwrap_or(4),
            sample_rate: as_i64(meta.get(&txn, key::SAMPLE_RATE)).unwrap_or(48_000),
            tracks,
            stories,
            markers,
            comments,
            lyrics: p.roots.lyrics.get_string(&txn),
            members: super::doc::members(&txn, &p.roots),
            soundfont: as_string(meta.get(&txn, key::SOUNDFONT)),
            soundfont_hash: as_string(meta.get(&txn, key::SOUNDFONT_HASH)),
        }
    }
}

/// (key, nested map) pairs of a map of maps; other values are skipped.
fn maps<'a, T: ReadTxn>(
    txn: &'a T,
    parent: &'a MapRef,
) -> impl Iterator<Item = (String, MapRef)> + 'a {
    parent.iter(txn).filter_map(|(k, v)| match v {
        Out::YMap(m) => Some((k.to_string(), m)),
        _ => None,
    })
}

fn track_view<T: ReadTxn>(txn: &T, id: String, m: &MapRef) -> TrackView {
    let mut clips: Vec<ClipView> = child_map(txn, m, key::CLIPS)
        .map(|c| {
            maps(txn, &c)
                .map(|(id, m)| clip_view(txn, id, &m))
                .collect()
        })
        .unwrap_or_default();
    clips.sort_by(|a, b| a.start.cmp(&b.start).then_with(|| a.id.cmp(&b.id)));
    TrackView {
        name: as_string(m.get(txn, key::NAME)).unwrap_or_default(),
        order: as_f64(m.get(txn, key::ORDER)).unwrap_or(0.0),
        kind: as_string(m.get(txn, key::KIND)).unwrap_or_else(|| "audio".into()),
        gain_db: as_f64(m.get(txn, key::GAIN_DB)).unwrap_or(0.0),
        pan: as_f64(m.get(txn, key::PAN)).unwrap_or(0.0),
        mute: as_bool(m.get(txn, key::MUTE)).unwrap_or(false),
        solo: as_bool(m.get(txn, key::SOLO)).unwrap_or(false),
        id,
        clips,
    }
}

fn clip_view<T: ReadTxn>(txn: &T, id: String, m: &MapRef) -> ClipView {
    let int = |k| as_i64(m.get(txn, k)).unwrap_or(0);
    ClipView {
        blob: as_string(m.get(txn, key::BLOB)).unwrap_or_default(),
        blob_bytes: as_i64(m.get(txn, key::BLOB_BYTES)),
        channels: as_i64(m.get(txn, key::CHANNELS)).unwrap_or(2),
        master: as_string(m.get(txn, key::MASTER)),
        start: int(key::START),
        offset: int(key::OFFSET),
        length: int(key::LENGTH),
        gain_db: as_f64(m.get(txn, key::GAIN_DB)).unwrap_or(0.0),
        fade_in: int(key::FADE_IN),
        fade_out: int(key::FADE_OUT),
        source: as_string(m.get(txn, key::SOURCE)).unwrap_or_default(),
        id,
    }
}

fn marker_view<T: ReadTxn>(txn: &T, id: String, m: &MapRef) -> MarkerView {
    MarkerView {
        at: as_i64(m.get(txn, key::AT)).unwrap_or(0),
        name: as_string(m.get(txn, key::NAME)).unwrap_or_default(),
        id,
    }
}

fn comment_view<T: ReadTxn>(txn: &T, id: String, m: &MapRef) -> CommentView {
    let text = |k| as_string(m.get(txn, k)).unwrap_or_default();
    CommentView {
        author: text(key::AUTHOR),
        site: text(key::SITE),
        time: as_i64(m.get(txn, key::TIME)).unwrap_or(0),
        text: text(key::TEXT),
        track: as_string(m.get(txn, key::TRACK)),
        at: as_i64(m.get(txn, key::AT)),
        id,
    }
}

fn story_view<T: ReadTxn>(txn: &T, id: String, m: &MapRef) -> StoryView {
    let text = |k| as_string(m.get(txn, k)).unwrap_or_default();
    StoryView {
        author: text(key::AUTHOR),
        site: text(key::SITE),
        time: as_i64(m.get(txn, key::TIME)).unwrap_or(0),
        text: text(key::TEXT),
        id,
    }
}
