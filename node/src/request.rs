//! Every operation on a node's data as one serde `Request`, handled by one
//! `execute()`. The CLI runs it in-process now; the node's local API will
//! carry the same requests. Owns name resolution, the order of durable
//! steps (blob → tag → sync → commit → acknowledge) and failpoints.

mod bounce;
mod clips;
mod context;
mod failpoint;
mod gc;
mod imports;
mod membership;
pub(crate) mod midi;
pub mod record;
pub(crate) mod resolve;
mod undo;

use std::path::PathBuf;

use meshstudio_codec::Observer;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use bounce::SampleFormat;
pub use clips::ClipChanges;
pub use context::{Context, NetHandle};

use crate::project::doc::{self, key};
use crate::project::ops::{self, Change, EntryList, Fields, UndoEntry};
use crate::project::{ProjectDoc, ProjectView};

/// An operation on the node's data. Paths are absolute.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Init {
        site: Option<String>,
    },
    Id,
    ConfigSet {
        key: String,
        value: String,
    },
    ProjectNew {
        name: String,
    },
    ProjectList,
    ProjectShow {
        project: String,
    },
    TrackAdd {
        project: String,
        name: String,
    },
    TrackSet {
        project: String,
        track: String,
        changes: TrackChanges,
    },
    TrackRm {
        project: String,
        track: String,
    },
    Import {
        project: String,
        files: Vec<PathBuf>,
        track: Option<String>,
        at_seconds: f64,
    },
    StoryAdd {
        project: String,
        text: String,
    },
    Lyrics {
        project: String,
        set: Option<String>,
    },
    ClipMove {
        project: String,
        clip: String,
        to_seconds: f64,
    },
    ClipTrim {
        project: String,
        clip: String,
        head_seconds: f64,
        tail_seconds: f64,
    },
    ClipSet {
        project: String,
        clip: String,
        changes: ClipChanges,
    },
    ClipRm {
        project: String,
        clip: String,
    },
    ExportStems {
        project: String,
        dir: PathBuf,
        format: SampleFormat,
    },
    /// A MIDI track written as one Standard MIDI File.
    ExportMidi {
        project: String,
        track: String,
        out: PathBuf,
    },
    Gc,
    /// The sound devices (the node's, when one runs: it owns them).
    Devices,
    MarkerAdd {
        project: String,
        at_seconds: f64,
        name: String,
    },
    MarkerRm {
        project: String,
        marker: String,
    },
    CommentAdd(CommentArgs),
    /// Wait until the project is in sync with a member (node only).
    SyncWait {
        project: String,
        timeout_seconds: f64,
    },
    Invite {
        project: String,
    },
    Join {
        ticket: String,
    },
    Undo {
        project: String,
    },
    Redo {
        project: String,
    },
    Mixdown {
        project: String,
        out: PathBuf,
        format: SampleFormat,
        normalize: Option<f64>,
    },
    /// Records a take (the node's devices, when one runs).
    Record(record::RecordArgs),
    /// Plays the song in real time.
    Play(record::PlayArgs),
    /// Measures the round trip from an output to an input.
    Calibrate(record::CalibrateArgs),
    /// Restores takes a crash interrupted.
    Recover,
    /// Ends the recording or playback in progress (node only).
    Stop,
}

impl Request {
    /// Whether the request changes a node's data (and so is announced as a change).
    pub fn is_change(&self) -> bool {
        !matches!(
            self,
            Request::Id
                | Request::Devices
                | Request::ProjectList
                | Request::ProjectShow { .. }
                | Request::Lyrics { set: None, .. }
                | Request::Mixdown { .. }
                | Request::ExportStems { .. }
                | Request::ExportMidi { .. }
                | Request::Play(_)
                | Request::Calibrate(_)
                | Request::Stop
        )
    }

    /// Whether the request runs the audio engine (and so does not hold
    /// the context while it runs).
    pub fn uses_engine(&self) -> bool {
        matches!(
            self,
            Request::Record(_) | Request::Play(_) | Request::Calibrate(_)
        )
    }
}

/// Fields `track set` may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrackChanges {
    pub name: Option<String>,
    pub gain_db: Option<f64>,
    pub pan: Option<f64>,
    pub mute: Option<bool>,
    pub solo: Option<bool>,
}

/// Why a request failed: one message a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Store(#[from] meshstudio_store::StoreError),
    #[error(transparent)]
    Project(#[from] doc::ProjectError),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot import {path:?}: {reason}")]
    Import { path: PathBuf, reason: String },
    #[error("cancelled")]
    Cancelled,
}

pub type Result<T, E = RequestError> = std::result::Result<T, E>;

/// Settings `config set` accepts.
const CONFIG_KEYS: &[&str] = &[
    "author",
    "site",
    STEM_BITRATE_KEY,
    record::CLICK_LEVEL_KEY,
    bounce::SOUNDFONT_KEY,
];
/// Click levels we accept (dB full scale).
const CLICK_LEVEL_RANGE_DB: std::ops::RangeInclusive<f64> = -60.0..=0.0;
/// Setting: the bitrate imports encode stems at (kbit/s).
pub const STEM_BITRATE_KEY: &str = "stem-bitrate";
/// Pan is a position between hard left (-1) and hard right (1).
const PAN_RANGE: std::ops::RangeInclusive<f64> = -1.0..=1.0;
/// Gains beyond these are typos, not mixes.
const GAIN_RANGE_DB: std::ops::RangeInclusive<f64> = -120.0..=24.0;

/// Runs one request against the node's data; the reply is JSON data.
pub fn execute(ctx: &mut Context, request: Request, progress: &dyn Observer) -> Result<Value> {
    match request {
        Request::Init { site } => ctx.init(site.as_deref()),
        Request::Id => Ok(json!({ "id": ctx.node_id()? })),
        Request::ConfigSet { key, value } => config_set(ctx, &key, &value),
        Request::ProjectNew { name } => project_new(ctx, &name),
        Request::ProjectList => project_list(ctx),
        Request::ProjectShow { project } => {
            let p = resolve::project(ctx.store()?, &project)?;
            Ok(serde_json::to_value(ProjectView::of(&p)).expect("views serialize"))
        }
        Request::TrackAdd { project, name } => track_add(ctx, &project, &name),
        Request::TrackSet {
            project,
            track,
            changes,
        } => track_set(ctx, &project, &track, &changes),
        Request::TrackRm { project, track } => track_rm(ctx, &project, &track),
        Request::Import {
            project,
            files,
            track,
            at_seconds,
        } => imports::import(
            ctx,
            &project,
            &files,
            track.as_deref(),
            at_seconds,
            progress,
        ),
        Request::StoryAdd { project, text } => story_add(ctx, &project, &text),
        Request::Lyrics { project, set } => lyrics(ctx, &project, set.as_deref()),
        Request::ClipMove {
            project,
            clip,
            to_seconds,
        } => clips::move_to(ctx, &project, &clip, to_seconds),
        Request::ClipTrim {
            project,
            clip,
            head_seconds,
            tail_seconds,
        } => clips::trim(ctx, &project, &clip, head_seconds, tail_seconds),
        Request::ClipSet {
            project,
            clip,
            changes,
        } => clips::set_fields(ctx, &project, &clip, &changes),
        Request::ClipRm { project, clip } => clips::remove(ctx, &project, &clip),
        Request::ExportStems {
            project,
            dir,
            format,
        } => bounce::export_tracks(ctx, &project, &dir, format, progress),
        Request::ExportMidi {
            project,
            track,
            out,
        } => midi::export(ctx, &project, &track, &out),
        Request::Gc => gc::run(ctx),
        Request::Devices => crate::audio::devices::list().map_err(RequestError::Invalid),
        Request::MarkerAdd {
            project,
            at_seconds,
            name,
        } => marker_add(ctx, &project, at_seconds, &name),
        Request::MarkerRm { project, marker } => marker_rm(ctx, &project, &marker),
        Request::CommentAdd(c) => comment_add(ctx, &c),
        // The node answers this one itself, without holding the context.
        Request::SyncWait { .. } => Err(ctx
            .net("sync")
            .err()
            .unwrap_or_else(|| RequestError::Invalid("sync --wait runs in the node's API".into()))),
        Request::Invite { project } => membership::invite(ctx, &project),
        Request::Join { ticket } => membership::join(ctx, &ticket),
        Request::Undo { project } => undo::step(ctx, &project, false),
        Request::Redo { project } => undo::step(ctx, &project, true),
        Request::Mixdown {
            project,
            out,
            format,
            normalize,
        } => bounce::run(ctx, &project, &out, format, normalize, progress),
        Request::Record(_) | Request::Play(_) | Request::Calibrate(_) => {
            let held = record::Held(std::cell::RefCell::new(ctx));
            run_engine(&held, request, progress)
        }
        Request::Recover => Ok(json!({ "recovered": record::recover(ctx)? })),
        Request::Stop => Err(RequestError::Invalid(
            "nothing is recording or playing: no node runs here".into(),
        )),
    }
}

/// Runs an engine request, taking the context only when it needs it.
pub fn run_engine(
    cx: &impl record::WithContext,
    request: Request,
    progress: &dyn Observer,
) -> Result<Value> {
    match request {
        Request::Record(args) => record::record(cx, &args, progress),
        Request::Play(args) => record::play(cx, &args, progress),
        Request::Calibrate(args) => record::calibrate(cx, &args, progress),
        other => cx.with(|ctx| execute(ctx, other, progress)),
    }
}

fn config_set(ctx: &mut Context, key: &str, value: &str) -> Result<Value> {
    if let Some(checked) = crate::net::policy::check_setting(key, value) {
        checked.map_err(RequestError::Invalid)?;
        ctx.store()?.write(|w| w.set_setting(key, value))?;
        return Ok(json!({ "key": key, "value": value }));
    }
    if !CONFIG_KEYS.contains(&key) {
        return Err(RequestError::Invalid(format!(
            "unknown setting {key:?}; settings: {}",
            CONFIG_KEYS.join(", ")
        )));
    }
    if key == STEM_BITRATE_KEY {
        meshstudio_codec::limits::parse_bitrate_kbps(value)
            .map_err(|e| RequestError::Invalid(format!("{key}: {e}")))?;
    }
    if key == record::CLICK_LEVEL_KEY
        && !value
            .parse::<f64>()
            .is_ok_and(|db| CLICK_LEVEL_RANGE_DB.contains(&db))
    {
        return Err(RequestError::Invalid(format!(
            "{key}: give a level in dB from -60 to 0, not {value:?}"
        )));
    }
    let mut value = value.to_string();
    if key == bounce::SOUNDFONT_KEY {
        let path = std::path::absolute(&value).unwrap_or_else(|_| value.clone().into());
        crate::audio::synth::SoundFont::load(&path)
            .map_err(|e| RequestError::Invalid(format!("{key}: {e}")))?;
        value = path.to_string_lossy().into_owned();
    }
    ctx.store()?.write(|w| w.set_setting(key, &value))?;
    Ok(json!({ "key": key, "value": value }))
}

fn project_new(ctx: &mut Context, name: &str) -> Result<Value> {
    let name = name.trim();
    if name.is_empty() {
        return Err(RequestError::Invalid("a project needs a name".into()));
    }
    let me = ctx.node_id()?;
    let store = ctx.store()?;
    let id = uuid::Uuid::new_v4().to_string();
    let (_, update) = ProjectDoc::create(&id, store.client_id()?, name, now_ms(), &me);
    let record = ProjectRecord::new();
    let record = serde_json::to_vec(&record).expect("json");
    store.write(|w| {
        w.put_project(&id, &record)?;
        w.append_update(&id, &update).map(|_| ())
    })?;
    Ok(json!({ "id": id, "name": name }))
}

fn project_list(ctx: &mut Context) -> Result<Value> {
    let store = ctx.store()?;
    let mut out = Vec::new();
    for row in store.projects()? {
        let p = ProjectDoc::load(store, &row.id)?;
        out.push(json!({ "id": row.id, "name": p.name() }));
    }
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Value::Array(out))
}

/// What the node keeps about a project outside the replicated document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectRecord {
    pub created: i64,
    /// The project secret (hex): proves membership; never leaves the node
    /// except inside an invite ticket.
    pub secret: Option<String>,
}

impl ProjectRecord {
    pub fn new() -> Self {
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
        ProjectRecord {
            created: now_ms(),
            secret: Some(data_encoding::HEXLOWER.encode(&secret)),
        }
    }

    pub fn secret_bytes(&self) -> Option<[u8; 32]> {
        self.secret
            .as_deref()
            .and_then(crate::net::ticket::decode_hex)
    }
}

/// The project's secret; projects made before secrets existed get one now.
pub fn project_secret(ctx: &mut Context, project: &str) -> Result<[u8; 32]> {
    let stored = project_record(ctx, project)?;
    if let Some(secret) = stored.as_ref().and_then(ProjectRecord::secret_bytes) {
        return Ok(secret);
    }
    let store = ctx.store()?;
    let record = ProjectRecord {
        created: stored.map_or_else(now_ms, |r| r.created),
        ..ProjectRecord::new()
    };
    let bytes = serde_json::to_vec(&record).expect("json");
    store.write(|w| w.put_project(project, &bytes))?;
    Ok(record.secret_bytes().expect("just made"))
}

fn project_record(ctx: &mut Context, project: &str) -> Result<Option<ProjectRecord>> {
    Ok(ctx
        .store()?
        .project(project)?
        .and_then(|b| serde_json::from_slice::<ProjectRecord>(&b).ok()))
}

/// The project's secret if it has one (it is made on the first invite).
pub fn existing_secret(ctx: &mut Context, project: &str) -> Option<[u8; 32]> {
    project_record(ctx, project).ok()??.secret_bytes()
}

/// Applies a local edit and persists it with its undo entry, in one
/// database transaction; a new edit ends any redo chain.
pub(crate) fn edit(
    ctx: &mut Context,
    p: &ProjectDoc,
    label: &str,
    changes: Vec<Change>,
) -> Result<UndoEntry> {
    let (entry, update) = p.edit(|txn, roots| ops::apply_all(txn, roots, label, changes));
    if entry.forward.is_empty() {
        return Ok(entry);
    }
    let store = ctx.store()?;
    let redo_from = undo::redo_chain(&undo::entries(store, &p.id)?)
        .first()
        .map(|(seq, _)| *seq);
    let bytes = serde_json::to_vec(&entry).expect("entries serialize");
    store.write(|w| {
        w.append_update(&p.id, &update)?;
        if let Some(seq) = redo_from {
            w.truncate_undo(&p.id, seq)?;
        }
        w.push_undo(&p.id, &bytes).map(|_| ())
    })?;
    Ok(entry)
}

/// Loads a project for editing.
pub(crate) fn writable(ctx: &mut Context, project: &str) -> Result<ProjectDoc> {
    let p = resolve::project(ctx.store()?, project)?;
    p.check_writable()?;
    Ok(p)
}

/// An order value after every existing track.
pub(crate) fn next_order(p: &ProjectDoc) -> f64 {
    let view = ProjectView::of(p);
    view.tracks.iter().map(|t| t.order).fold(0.0, f64::max) + 1.0
}

/// The fields of a new, empty track.
pub(crate) fn new_track(name: &str, order: f64) -> Fields {
    Fields::from([
        (key::NAME.into(), json!(name)),
        (key::ORDER.into(), json!(order)),
        (key::GAIN_DB.into(), json!(0.0)),
        (key::PAN.into(), json!(0.0)),
        (key::MUTE.into(), json!(false)),
        (key::SOLO.into(), json!(false)),
        (key::KIND.into(), json!("audio")),
    ])
}

fn track_add(ctx: &mut Context, project: &str, name: &str) -> Result<Value> {
    let p = writable(ctx, project)?;
    let id = uuid::Uuid::new_v4().to_string();
    let fields = new_track(name, next_order(&p));
    let add = Change::AddTrack {
        track: id.clone(),
        fields,
        clips: Default::default(),
    };
    edit(ctx, &p, &format!("add track {name}"), vec![add])?;
    Ok(json!({ "project": p.id, "track": id, "name": name }))
}

fn track_set(ctx: &mut Context, project: &str, track: &str, c: &TrackChanges) -> Result<Value> {
    if let Some(pan) = c.pan.filter(|p| !PAN_RANGE.contains(p)) {
        return Err(RequestError::Invalid(format!("pan {pan} is outside -1..1")));
    }
    if let Some(g) = c.gain_db.filter(|g| !GAIN_RANGE_DB.contains(g)) {
        return Err(RequestError::Invalid(format!(
            "gain {g} dB is outside -120..24"
        )));
    }
    let p = writable(ctx, project)?;
    let (id, _) = resolve::track(&p, track)?;
    let set = |k: &str, v: Value| Change::SetTrack {
        track: id.clone(),
        key: k.into(),
        value: v,
        expect: None,
    };
    let changes: Vec<Change> = [
        c.name.as_ref().map(|v| set(key::NAME, json!(v))),
        c.gain_db.map(|v| set(key::GAIN_DB, json!(v))),
        c.pan.map(|v| set(key::PAN, json!(v))),
        c.mute.map(|v| set(key::MUTE, json!(v))),
        c.solo.map(|v| set(key::SOLO, json!(v))),
    ]
    .into_iter()
    .flatten()
    .collect();
    edit(ctx, &p, "change track", changes)?;
    Ok(json!({ "project": p.id, "track": id }))
}

fn track_rm(ctx: &mut Context, project: &str, track: &str) -> Result<Value> {
    let p = writable(ctx, project)?;
    let (id, _) = resolve::track(&p, track)?;
    edit(
        ctx,
        &p,
        "remove track",
        vec![Change::RemoveTrack { track: id.clone() }],
    )?;
    Ok(json!({ "project": p.id, "removed": id }))
}

fn story_add(ctx: &mut Context, project: &str, text: &str) -> Result<Value> {
    let mut fields = signed(ctx)?;
    fields.insert(key::TEXT.into(), json!(text));
    add_entry(ctx, project, EntryList::Stories, "add story", fields)
}

/// Author, site and time: what every story and comment carries.
fn signed(ctx: &mut Context) -> Result<Fields> {
    let author = ctx.store()?.setting("author")?.unwrap_or_default();
    let site = ctx.store()?.setting("site")?.unwrap_or_default();
    Ok(Fields::from([
        (key::AUTHOR.into(), json!(author)),
        (key::SITE.into(), json!(site)),
        (key::TIME.into(), json!(now_ms())),
    ]))
}

fn add_entry(
    ctx: &mut Context,
    project: &str,
    list: EntryList,
    label: &str,
    fields: Fields,
) -> Result<Value> {
    let p = writable(ctx, project)?;
    let id = uuid::Uuid::new_v4().to_string();
    edit(
        ctx,
        &p,
        label,
        vec![Change::AddEntry {
            list,
            id: id.clone(),
            fields,
        }],
    )?;
    Ok(json!({ "project": p.id, "id": id }))
}

/// Seconds on the timeline → 48 kHz frames, refusing what is not a time.
pub(crate) fn song_frames(seconds: f64, what: &str) -> Result<i64> {
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(RequestError::Invalid(format!(
            "{what} {seconds} is not a time in the song"
        )));
    }
    Ok((seconds * 48_000.0).round() as i64)
}

fn marker_add(ctx: &mut Context, project: &str, at_seconds: f64, name: &str) -> Result<Value> {
    let fields = Fields::from([
        (
            key::AT.into(),
            json!(song_frames(at_seconds, "marker time")?),
        ),
        (key::NAME.into(), json!(name)),
    ]);
    add_entry(ctx, project, EntryList::Markers, "add marker", fields)
}

fn marker_rm(ctx: &mut Context, project: &str, marker: &str) -> Result<Value> {
    let p = writable(ctx, project)?;
    let view = ProjectView::of(&p);
    let candidates: Vec<_> = view
        .markers
        .iter()
        .map(|m| (m.id.clone(), m.name.clone()))
        .collect();
    let id = resolve::pick("marker", marker, &candidates)?;
    edit(
        ctx,
        &p,
        "remove marker",
        vec![Change::RemoveEntry {
            list: EntryList::Markers,
            id: id.clone(),
        }],
    )?;
    Ok(json!({ "project": p.id, "removed": id }))
}

fn comment_add(ctx: &mut Context, c: &CommentArgs) -> Result<Value> {
    let mut fields = signed(ctx)?;
    fields.insert(key::TEXT.into(), json!(c.text));
    if let Some(at) = c.at_seconds {
        fields.insert(key::AT.into(), json!(song_frames(at, "--at")?));
    }
    if let Some(track) = &c.track {
        let p = resolve::project(ctx.store()?, &c.project)?;
        fields.insert(key::TRACK.into(), json!(resolve::track(&p, track)?.0));
    }
    add_entry(ctx, &c.project, EntryList::Comments, "add comment", fields)
}

/// A comment on a project, optionally about a track and/or a moment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommentArgs {
    pub project: String,
    pub text: String,
    pub track: Option<String>,
    pub at_seconds: Option<f64>,
}

fn lyrics(ctx: &mut Context, project: &str, set: Option<&str>) -> Result<Value> {
    let p = match set {
        None => resolve::project(ctx.store()?, project)?,
        Some(text) => {
            let p = writable(ctx, project)?;
            let change = Change::SetLyrics {
                text: text.to_string(),
                expect: None,
            };
            edit(ctx, &p, "set lyrics", vec![change])?;
            p
        }
    };
    Ok(json!({ "project": p.id, "lyrics": p.lyrics() }))
}

pub(crate) fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| d.as_millis() as i64)
}
