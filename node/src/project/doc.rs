//! The document schema and its persistence.
//!
//! Schema (v1): `meta` map (name, tempo, time signature, sample rate,
//! schema, created); `tracks` map keyed by UUID → a map with one key per
//! field and a `clips` map created in the same transaction (a lazily
//! created nested map loses concurrent inserts); clips keyed by UUID → a
//! map per clip; `stories`, `markers` and `comments` maps keyed by UUID;
//! `members` keyed by node id; `lyrics` text with UTF-16 offsets, as
//! browser Yjs counts them.
//! Keys this build doesn't know are left untouched.

use meshstudio_store::{Store, StoreError, StoredDoc};
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Doc, GetString, Map, MapRef, OffsetKind, Options, Out, ReadTxn, Text, TextRef, Transact,
    TransactionMut, Update,
};

/// Origin of edits made on this node (undo tracks these only).
pub const LOCAL: &str = "local";
/// Origin of updates from peers and from the log on load.
pub const NET: &str = "net";
/// Document schema this build writes; a newer major version opens read-only.
pub const DOC_SCHEMA: i64 = 1;
/// Log entries after which a project's log is folded into one snapshot.
pub const COMPACT_AFTER_UPDATES: usize = 256;
/// The only sample rate of a project: stems and positions are at 48 kHz.
pub const PROJECT_RATE_HZ: i64 = 48_000;

pub(crate) mod key {
    pub const META: &str = "meta";
    pub const TRACKS: &str = "tracks";
    pub const CLIPS: &str = "clips";
    pub const MARKERS: &str = "markers";
    pub const COMMENTS: &str = "comments";
    pub const TRACK: &str = "track";
    pub const AT: &str = "at";
    pub const STORIES: &str = "stories";
    pub const MEMBERS: &str = "members";
    pub const ADDED_BY: &str = "added_by";
    pub const LYRICS: &str = "lyrics";
    pub const NAME: &str = "name";
    pub const TEMPO: &str = "tempo";
    pub const BEATS_PER_BAR: &str = "beats_per_bar";
    pub const BEAT_UNIT: &str = "beat_unit";
    pub const SAMPLE_RATE: &str = "sample_rate";
    /// The SoundFont MIDI tracks were made with: file name and BLAKE3 hash.
    pub const SOUNDFONT: &str = "soundfont";
    pub const SOUNDFONT_HASH: &str = "soundfont_hash";
    pub const SCHEMA: &str = "schema";
    pub const CREATED: &str = "created";
    pub const ORDER: &str = "order";
    pub const GAIN_DB: &str = "gain_db";
    pub const PAN: &str = "pan";
    pub const MUTE: &str = "mute";
    pub const SOLO: &str = "solo";
    pub const KIND: &str = "kind";
    pub const BLOB: &str = "blob";
    /// The stem's size in bytes, so members know how much is still to come.
    pub const BLOB_BYTES: &str = "blob_bytes";
    /// A recorded take's lossless master (FLAC blob hash); synced only by policy.
    pub const MASTER: &str = "master";
    pub const START: &str = "start";
    pub const OFFSET: &str = "offset";
    pub const LENGTH: &str = "length";
    pub const CHANNELS: &str = "channels";
    pub const FADE_IN: &str = "fade_in";
    pub const FADE_OUT: &str = "fade_out";
    pub const SOURCE: &str = "source";
    pub const AUTHOR: &str = "author";
    pub const SITE: &str = "site";
    pub const TIME: &str = "time";
    pub const TEXT: &str = "text";
}

/// Errors of the project model.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("project {project}: stored update {seq} is unreadable ({detail})")]
    BadUpdate {
        project: String,
        seq: usize,
        detail: String,
    },
    #[error(
        "project {0} was written by a newer meshstudio (document schema v{1}); it opens read-only"
    )]
    ReadOnly(String, i64),
}

/// The root shared types, fetched once: fetching one opens a transaction,
/// which deadlocks while another is open on the same thread.
#[derive(Clone)]
pub struct Roots {
    pub meta: MapRef,
    pub tracks: MapRef,
    pub stories: MapRef,
    pub markers: MapRef,
    pub comments: MapRef,
    /// Node id → when and by whom it was added. Keyed by identity on
    /// purpose: two sites adding the same node agree on what it means.
    pub members: MapRef,
    pub lyrics: TextRef,
}

/// A project's document, loaded from the store.
pub struct ProjectDoc {
    pub id: String,
    pub doc: Doc,
    pub roots: Roots,
}

fn new_doc(client_id: u64) -> Doc {
    let mut options = Options::with_client_id(yrs::ClientID::new(client_id));
    options.offset_kind = OffsetKind::Utf16;
    Doc::with_options(options)
}

fn roots(doc: &Doc) -> Roots {
    Roots {
        meta: doc.get_or_insert_map(key::META),
        tracks: doc.get_or_insert_map(key::TRACKS),
        stories: doc.get_or_insert_map(key::STORIES),
        markers: doc.get_or_insert_map(key::MARKERS),
        comments: doc.get_or_insert_map(key::COMMENTS),
        members: doc.get_or_insert_map(key::MEMBERS),
        lyrics: doc.get_or_insert_text(key::LYRICS),
    }
}

impl ProjectDoc {
    /// A new, empty project document (not yet stored), `creator` its first member.
    pub fn create(
        id: &str,
        client_id: u64,
        name: &str,
        now_ms: i64,
        creator: &str,
    ) -> (Self, Vec<u8>) {
        let doc = new_doc(client_id);
        let roots = roots(&doc);
        let update = {
            let mut txn = doc.transact_mut_with(LOCAL);
            let meta = &roots.meta;
            meta.insert(&mut txn, key::NAME, name);
            meta.insert(&mut txn, key::TEMPO, 120.0);
            meta.insert(&mut txn, key::BEATS_PER_BAR, 4i64);
            meta.insert(&mut txn, key::BEAT_UNIT, 4i64);
            meta.insert(&mut txn, key::SAMPLE_RATE, PROJECT_RATE_HZ);
            meta.insert(&mut txn, key::SCHEMA, DOC_SCHEMA);
            meta.insert(&mut txn, key::CREATED, now_ms);
            add_member(&mut txn, &roots, creator, creator, now_ms);
            txn.encode_update_v1()
        };
        (
            ProjectDoc {
                id: id.to_string(),
                doc,
                roots,
            },
            update,
        )
    }

    /// Loads a project from its snapshot and log, folding a long log into
    /// a snapshot on the way.
    pub fn load(store: &Store, id: &str) -> Result<Self, ProjectError> {
        Ok(Self::load_with_seq(store, id)?.0)
    }

    /// Loads the document and the log seq its state reaches (exclusive).
    pub fn load_with_seq(store: &Store, id: &str) -> Result<(Self, u64), ProjectError> {
        let stored = store.load_doc(id)?;
        let doc = new_doc(store.client_id()?);
        let roots = roots(&doc);
        apply_stored(&doc, id, &stored)?;
        let project = ProjectDoc {
            id: id.to_string(),
            doc,
            roots,
        };
        if stored.updates.len() > COMPACT_AFTER_UPDATES {
            let snapshot = project.full_state();
            store.write(|w| w.compact_doc(id, &snapshot, stored.next_seq))?;
        }
        Ok((project, stored.next_seq))
    }

    /// The state vector as JSON, client id → clock: change events carry it
    /// so a watcher can tell which edits a node has applied.
    pub fn clocks(&self) -> serde_json::Value {
        let sv = self.doc.transact().state_vector();
        let map = sv
            .iter()
            .map(|(client, clock)| (client.get().to_string(), (*clock).into()));
        serde_json::Value::Object(map.collect())
    }

    /// The whole document as one update.
    pub fn full_state(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default())
    }

    /// Fails if a newer meshstudio wrote this document's schema.
    pub fn check_writable(&self) -> Result<(), ProjectError> {
        let schema = self.meta_i64(key::SCHEMA).unwrap_or(DOC_SCHEMA);
        if schema > DOC_SCHEMA {
            return Err(ProjectError::ReadOnly(self.id.clone(), schema));
        }
        Ok(())
    }

    fn meta_i64(&self, k: &str) -> Option<i64> {
        let txn = self.doc.transact();
        as_i64(self.roots.meta.get(&txn, k))
    }

    /// Runs a local edit; returns `f`'s result and the update it made.
    pub fn edit<T>(&self, f: impl FnOnce(&mut TransactionMut, &Roots) -> T) -> (T, Vec<u8>) {
        let mut txn = self.doc.transact_mut_with(LOCAL);
        let out = f(&mut txn, &self.roots);
        let update = txn.encode_update_v1();
        (out, update)
    }

    pub fn name(&self) -> String {
        let txn = self.doc.transact();
        as_string(self.roots.meta.get(&txn, key::NAME)).unwrap_or_default()
    }

    pub fn lyrics(&self) -> String {
        self.roots.lyrics.get_string(&self.doc.transact())
    }
}

/// Applies the stored snapshot and log (as remote state: not undoable).
pub(super) fn apply_stored(doc: &Doc, id: &str, stored: &StoredDoc) -> Result<(), ProjectError> {
    let mut txn = doc.transact_mut_with(NET);
    let parts = stored.snapshot.iter().chain(stored.updates.iter());
    for (seq, bytes) in parts.enumerate() {
        let bad = |detail: String| ProjectError::BadUpdate {
            project: id.to_string(),
            seq,
            detail,
        };
        let update = Update::decode_v1(bytes).map_err(|e| bad(e.to_string()))?;
        txn.apply_update(update).map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}

/// Records `node` as a member (added by `by`).
pub fn add_member(txn: &mut TransactionMut, roots: &Roots, node: &str, by: &str, now_ms: i64) {
    let fields = yrs::MapPrelim::from([
        (key::TIME, yrs::In::from(now_ms)),
        (key::ADDED_BY, yrs::In::from(by)),
    ]);
    roots.members.insert(txn, node, fields);
}

/// The member node ids, sorted.
pub fn members<T: ReadTxn>(txn: &T, roots: &Roots) -> Vec<String> {
    let mut ids: Vec<String> = roots.members.keys(txn).map(String::from).collect();
    ids.sort();
    ids
}

/// A nested map under `parent[key]`, if it is one.
pub fn child_map<T: ReadTxn>(txn: &T, parent: &MapRef, k: &str) -> Option<MapRef> {
    match parent.get(txn, k)? {
        Out::YMap(m) => Some(m),
        _ => None,
    }
}

pub fn as_f64(v: Option<Out>) -> Option<f64> {
    match v? {
        Out::Any(Any::Number(n)) => n.as_f64(),
        _ => None,
    }
}

pub fn as_i64(v: Option<Out>) -> Option<i64> {
    as_f64(v).map(|f| f as i64)
}

pub fn as_bool(v: Option<Out>) -> Option<bool> {
    match v? {
        Out::Any(Any::Bool(b)) => Some(b),
        _ => None,
    }
}

pub fn as_string(v: Option<Out>) -> Option<String> {
    match v? {
        Out::Any(Any::String(s)) => Some(s.to_string()),
        _ => None,
    }
}

/// Inserts a lyrics edit safely: offsets are UTF-16 units, clamped.
pub fn set_lyrics(txn: &mut TransactionMut, roots: &Roots, text: &str) {
    let len = roots.lyrics.len(txn);
    if len > 0 {
        roots.lyrics.remove_range(txn, 0, len);
    }
    roots.lyrics.insert(txn, 0, text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::ops::{Change, Fields, apply_all};
    use crate::project::view::ProjectView;

    fn stored(dir: &std::path::Path) -> Store {
        meshstudio_store::init_identity(dir).unwrap();
        Store::open(dir).unwrap()
    }

    #[test]
    fn a_long_log_is_compacted_on_load_and_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = stored(dir.path());
        let (p, first) = ProjectDoc::create("p", store.client_id().unwrap(), "Song", 0, "creator");
        store
            .write(|w| w.append_update("p", &first).map(|_| ()))
            .unwrap();
        for i in 0..COMPACT_AFTER_UPDATES + 10 {
            let name = format!("track {i}");
            let fields = Fields::from([("name".into(), serde_json::json!(name))]);
            let add = Change::AddTrack {
                track: format!("t{i}"),
                fields,
                clips: Default::default(),
            };
            let (_, update) = p.edit(|txn, r| apply_all(txn, r, "add", vec![add]));
            store
                .write(|w| w.append_update("p", &update).map(|_| ()))
                .unwrap();
        }
        let before = ProjectView::of(&p);
        let loaded = ProjectDoc::load(&store, "p").unwrap();
        assert_eq!(ProjectView::of(&loaded), before);
        let doc = store.load_doc("p").unwrap();
        assert!(
            doc.snapshot.is_some() && doc.updates.is_empty(),
            "folded into a snapshot"
        );
        assert_eq!(
            ProjectView::of(&ProjectDoc::load(&store, "p").unwrap()),
            before
        );
    }

    #[test]
    fn a_newer_schema_is_read_only() {
        let (p, _) = ProjectDoc::create("p", 1, "Song", 0, "creator");
        assert!(p.check_writable().is_ok());
        p.edit(|txn, r| r.meta.insert(txn, key::SCHEMA, DOC_SCHEMA + 1));
        let err = p.check_writable().unwrap_err().to_string();
        assert!(
            err.contains("newer meshstudio") && err.contains("read-only"),
            "{err}"
        );
        assert_eq!(ProjectView::of(&p).name, "Song", "still readable");
    }

    #[test]
    fn unknown_keys_survive_edits_and_undo() {
        let (p, _) = ProjectDoc::create("p", 1, "Song", 0, "creator");
        let fields = Fields::from([
            ("name".into(), serde_json::json!("Keys")),
            ("from_the_future".into(), serde_json::json!("keep me")),
        ]);
        let add = Change::AddTrack {
            track: "t".into(),
            fields,
            clips: Default::default(),
        };
        p.edit(|txn, r| apply_all(txn, r, "add", vec![add]));
        let (rm, _) = p.edit(|txn, r| {
            apply_all(
                txn,
                r,
                "rm",
                vec![Change::RemoveTrack { track: "t".into() }],
            )
        });
        p.edit(|txn, r| crate::project::ops::replay(txn, r, &rm.inverse));
        let txn = p.doc.transact();
        let track = child_map(&txn, &p.roots.tracks, "t").unwrap();
        assert_eq!(
            as_string(track.get(&txn, "from_the_future")).as_deref(),
            Some("keep me")
        );
    }
}
