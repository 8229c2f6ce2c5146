//! Edits as data: every local change to a project is a list of `Change`s,
//! applied in one transaction. Each change knows its inverse, computed from
//! the document just before it applies, so undo works across processes
//! (the log is in redb) and only ever touches what this node changed:
//! field changes carry the value they expect to find, and are skipped when
//! another site has changed that field since.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use yrs::{Any, In, Map, MapPrelim, MapRef, Out, ReadTxn, TransactionMut};

use super::doc::{Roots, child_map, key};

/// Field values of a track, clip or story.
pub type Fields = BTreeMap<String, Value>;

/// One change to a project document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A track with these fields and clips (its `clips` map is created in the same transaction).
    AddTrack {
        track: String,
        fields: Fields,
        clips: BTreeMap<String, Fields>,
    },
    RemoveTrack {
        track: String,
    },
    /// Sets one field if it still holds `expect` (`None`: whatever it holds).
    SetTrack {
        track: String,
        key: String,
        value: Value,
        expect: Option<Value>,
    },
    AddClip {
        track: String,
        clip: String,
        fields: Fields,
    },
    RemoveClip {
        track: String,
        clip: String,
    },
    SetClip {
        track: String,
        clip: String,
        key: String,
        value: Value,
        expect: Option<Value>,
    },
    /// An entry of a keyed list (stories, markers, comments).
    AddEntry {
        list: EntryList,
        id: String,
        fields: Fields,
    },
    RemoveEntry {
        list: EntryList,
        id: String,
    },
    SetLyrics {
        text: String,
        expect: Option<String>,
    },
    /// Sets one of the project's own fields (`meta`) if it still holds `expect`.
    SetMeta {
        key: String,
        value: Value,
        expect: Option<Value>,
    },
}

/// The project's keyed lists of small records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryList {
    Stories,
    Markers,
    Comments,
}

impl EntryList {
    fn map(self, roots: &Roots) -> &MapRef {
        match self {
            EntryList::Stories => &roots.stories,
            EntryList::Markers => &roots.markers,
            EntryList::Comments => &roots.comments,
        }
    }
}

/// A local edit: what it did and how to take it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UndoEntry {
    pub label: String,
    pub forward: Vec<Change>,
    pub inverse: Vec<Change>,
    pub undone: bool,
}

/// Applies `changes` in order; returns the entry recording what applied.
pub fn apply_all(
    txn: &mut TransactionMut,
    roots: &Roots,
    label: &str,
    changes: Vec<Change>,
) -> UndoEntry {
    let mut forward = Vec::new();
    let mut inverse = Vec::new();
    for change in changes {
        let Some(inv) = inverse_of(txn, roots, &change) else {
            continue;
        };
        if apply(txn, roots, &change) {
            forward.push(with_expectation(change, &inv));
            inverse.push(inv);
        }
    }
    inverse.reverse();
    UndoEntry {
        label: label.to_string(),
        forward,
        inverse,
        undone: false,
    }
}

/// Re-applies recorded changes (undo or redo); returns how many were
/// skipped because another site changed the same thing since.
pub fn replay(txn: &mut TransactionMut, roots: &Roots, changes: &[Change]) -> usize {
    changes.iter().filter(|c| !apply(txn, roots, c)).count()
}

/// A forward change that, replayed by redo, expects what its undo left.
fn with_expectation(change: Change, inverse: &Change) -> Change {
    match (change, inverse) {
        (
            Change::SetTrack {
                track, key, value, ..
            },
            Change::SetTrack { value: old, .. },
        ) => Change::SetTrack {
            track,
            key,
            value,
            expect: Some(old.clone()),
        },
        (
            Change::SetClip {
                track,
                clip,
                key,
                value,
                ..
            },
            Change::SetClip { value: old, .. },
        ) => Change::SetClip {
            track,
            clip,
            key,
            value,
            expect: Some(old.clone()),
        },
        (Change::SetMeta { key, value, .. }, Change::SetMeta { value: old, .. }) => {
            Change::SetMeta {
                key,
                value,
                expect: Some(old.clone()),
            }
        }
        (Change::SetLyrics { text, .. }, Change::SetLyrics { text: old, .. }) => {
            Change::SetLyrics {
                text,
                expect: Some(old.clone()),
            }
        }
        (change, _) => change,
    }
}

fn track<T: ReadTxn>(txn: &T, roots: &Roots, id: &str) -> Option<MapRef> {
    child_map(txn, &roots.tracks, id)
}

fn clip<T: ReadTxn>(txn: &T, roots: &Roots, t: &str, c: &str) -> Option<MapRef> {
    child_map(txn, &child_map(txn, &track(txn, roots, t)?, key::CLIPS)?, c)
}

/// The change that undoes `change`, or `None` if `change` cannot apply.
fn inverse_of(txn: &TransactionMut, roots: &Roots, change: &Change) -> Option<Change> {
    Some(match change {
        Change::AddTrack { track, .. } => Change::RemoveTrack {
            track: track.clone(),
        },
        Change::RemoveTrack { track: id } => {
            let m = track(txn, roots, id)?;
            let clips = child_map(txn, &m, key::CLIPS)
                .map(|c| {
                    c.iter(txn)
                        .filter_map(|(k, v)| sub_fields(txn, k, v))
                        .collect()
                })
                .unwrap_or_default();
            Change::AddTrack {
                track: id.clone(),
                fields: fields_of(txn, &m),
                clips,
            }
        }
        Change::SetTrack {
            track: id,
            key,
            value,
            ..
        } => {
            let old = track(txn, roots, id)?
                .get(txn, key)
                .map(out_json)
                .unwrap_or(Value::Null);
            Change::SetTrack {
                track: id.clone(),
                key: key.clone(),
                value: old,
                expect: Some(value.clone()),
            }
        }
        Change::AddClip { track, clip, .. } => Change::RemoveClip {
            track: track.clone(),
            clip: clip.clone(),
        },
        Change::RemoveClip { track: t, clip: c } => {
            let m = clip(txn, roots, t, c)?;
            Change::AddClip {
                track: t.clone(),
                clip: c.clone(),
                fields: fields_of(txn, &m),
            }
        }
        Change::SetClip {
            track: t,
            clip: c,
            key,
            value,
            ..
        } => {
            let old = clip(txn, roots, t, c)?
                .get(txn, key)
                .map(out_json)
                .unwrap_or(Value::Null);
            Change::SetClip {
                track: t.clone(),
                clip: c.clone(),
                key: key.clone(),
                value: old,
                expect: Some(value.clone()),
            }
        }
        Change::AddEntry { list, id, .. } => Change::RemoveEntry {
            list: *list,
            id: id.clone(),
        },
        Change::RemoveEntry { list, id } => {
            let m = child_map(txn, list.map(roots), id)?;
            Change::AddEntry {
                list: *list,
                id: id.clone(),
                fields: fields_of(txn, &m),
            }
        }
        Change::SetMeta { key, value, .. } => Change::SetMeta {
            key: key.clone(),
            value: roots
                .meta
                .get(txn, key)
                .map(out_json)
                .unwrap_or(Value::Null),
            expect: Some(value.clone()),
        },
        Change::SetLyrics { text, .. } => {
            let old = yrs::GetString::get_string(&roots.lyrics, txn);
            Change::SetLyrics {
                text: old,
                expect: Some(text.clone()),
            }
        }
    })
}

/// Applies one change; false when its target is gone or its expectation fails.
fn apply(txn: &mut TransactionMut, roots: &Roots, change: &Change) -> bool {
    match change {
        Change::AddTrack {
            track: id,
            fields,
            clips,
        } => {
            let mut prelim: Vec<(String, In)> = fields
                .iter()
                .map(|(k, v)| (k.clone(), In::Any(json_any(v))))
                .collect();
            let clip_maps = clips
                .iter()
                .map(|(id, f)| (id.clone(), In::from(prelim_of(f))));
            prelim.push((
                key::CLIPS.to_string(),
                In::from(MapPrelim::from_iter(clip_maps)),
            ));
            roots
                .tracks
                .insert(txn, id.clone(), MapPrelim::from_iter(prelim));
            true
        }
        Change::RemoveTrack { track } => roots.tracks.remove(txn, track).is_some(),
        Change::SetTrack {
            track: id,
            key,
            value,
            expect,
        } => {
            let Some(m) = track(txn, roots, id) else {
                return false;
            };
            set_if(txn, &m, key, value, expect.as_ref())
        }
        Change::AddClip {
            track: t,
            clip,
            fields,
        } => {
            let Some(clips) = track(txn, roots, t).and_then(|m| child_map(txn, &m, key::CLIPS))
            else {
                return false;
            };
            clips.insert(txn, clip.clone(), prelim_of(fields));
            true
        }
        Change::RemoveClip { track: t, clip } => track(txn, roots, t)
            .and_then(|m| child_map(txn, &m, key::CLIPS))
            .is_some_and(|clips| clips.remove(txn, clip).is_some()),
        Change::SetClip {
            track: t,
            clip: c,
            key,
            value,
            expect,
        } => {
            let Some(m) = clip(txn, roots, t, c) else {
                return false;
            };
            set_if(txn, &m, key, value, expect.as_ref())
        }
        Change::AddEntry { list, id, fields } => {
            list.map(roots).insert(txn, id.clone(), prelim_of(fields));
            true
        }
        Change::RemoveEntry { list, id } => list.map(roots).remove(txn, id).is_some(),
        Change::SetMeta { key, value, expect } => {
            set_if(txn, &roots.meta, key, value, expect.as_ref())
        }
        Change::SetLyrics { text, expect } => {
            let current = yrs::GetString::get_string(&roots.lyrics, txn);
            if expect.as_ref().is_some_and(|e| *e != current) {
                return false;
            }
            super::doc::set_lyrics(txn, roots, text);
            true
        }
    }
}

fn set_if(
    txn: &mut TransactionMut,
    m: &MapRef,
    k: &str,
    value: &Value,
    expect: Option<&Value>,
) -> bool {
    let current = m.get(txn, k).map(out_json).unwrap_or(Value::Null);
    if expect.is_some_and(|e| !same(e, &current)) {
        return false;
    }
    if value.is_null() {
        m.remove(txn, k);
    } else {
        m.try_update(txn, k, json_any(value));
    }
    true
}

/// JSON equality where 1 and 1.0 are the same number (yrs keeps one kind).
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn prelim_of(fields: &Fields) -> MapPrelim {
    MapPrelim::from_iter(
        fields
            .iter()
            .map(|(k, v)| (k.clone(), In::Any(json_any(v)))),
    )
}

/// Scalar fields of a map (nested maps are handled by their owners).
fn fields_of<T: ReadTxn>(txn: &T, m: &MapRef) -> Fields {
    m.iter(txn)
        .filter_map(|(k, v)| match v {
            Out::Any(a) => Some((k.to_string(), any_json(&a))),
            _ => None,
        })
        .collect()
}

fn sub_fields<T: ReadTxn>(txn: &T, k: &str, v: Out) -> Option<(String, Fields)> {
    match v {
        Out::YMap(m) => Some((k.to_string(), fields_of(txn, &m))),
        _ => None,
    }
}

fn out_json(v: Out) -> Value {
    match v {
        Out::Any(a) => any_json(&a),
        _ => Value::Null,
    }
}

fn any_json(a: &Any) -> Value {
    match a {
        Any::Bool(b) => Value::Bool(*b),
        Any::Number(n) => n.as_f64().map_or(Value::Null, |f| {
            if f.fract() == 0.0 && f.abs() < 9e15 {
                Value::from(f as i64)
            } else {
                Value::from(f)
            }
        }),
        Any::String(s) => Value::String(s.to_string()),
        _ => Value::Null,
    }
}

fn json_any(v: &Value) -> Any {
    match v {
        Value::Bool(b) => Any::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Any::from(i),
            None => Any::from(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => Any::from(s.as_str()),
        _ => Any::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::ProjectDoc;
    use crate::project::view::ProjectView;
    use yrs::updates::decoder::Decode;
    use yrs::{Transact, Update};

    fn track_fields(name: &str) -> Fields {
        Fields::from([
            ("name".into(), Value::from(name)),
            ("gain_db".into(), Value::from(0.0)),
        ])
    }

    /// Applies `from`'s full state to `to` as a remote update.
    fn sync(from: &ProjectDoc, to: &ProjectDoc) {
        let update = Update::decode_v1(&from.full_state()).unwrap();
        to.doc
            .transact_mut_with(super::super::doc::NET)
            .apply_update(update)
            .unwrap();
    }

    fn gain(p: &ProjectDoc) -> f64 {
        ProjectView::of(p).tracks[0].gain_db
    }

    #[test]
    fn undo_restores_a_removed_track_with_its_clips() {
        let (p, _) = ProjectDoc::create("p", 1, "Song", 0, "creator");
        let clip = Fields::from([("start".into(), Value::from(480))]);
        let add = Change::AddTrack {
            track: "t".into(),
            fields: track_fields("Drums"),
            clips: BTreeMap::from([("c".into(), clip)]),
        };
        p.edit(|txn, r| apply_all(txn, r, "add", vec![add]));
        let before = ProjectView::of(&p);
        let (rm, _) = p.edit(|txn, r| {
            apply_all(
                txn,
                r,
                "rm",
                vec![Change::RemoveTrack { track: "t".into() }],
            )
        });
        assert!(ProjectView::of(&p).tracks.is_empty());
        p.edit(|txn, r| replay(txn, r, &rm.inverse));
        assert_eq!(ProjectView::of(&p), before);
    }

    #[test]
    fn undo_never_reverts_another_sites_edit() {
        let (a, _) = ProjectDoc::create("p", 1, "Song", 0, "creator");
        let add = Change::AddTrack {
            track: "t".into(),
            fields: track_fields("Bass"),
            clips: BTreeMap::new(),
        };
        a.edit(|txn, r| apply_all(txn, r, "add", vec![add]));
        let set = |v: f64| Change::SetTrack {
            track: "t".into(),
            key: "gain_db".into(),
            value: Value::from(v),
            expect: None,
        };
        let (local, _) = a.edit(|txn, r| apply_all(txn, r, "gain", vec![set(-6.0)]));
        // Another site (client 2) changes the same field afterwards.
        let (b, _) = ProjectDoc::create("p", 2, "Song", 0, "creator");
        sync(&a, &b);
        b.edit(|txn, r| apply_all(txn, r, "gain", vec![set(-3.0)]));
        sync(&b, &a);
        assert_eq!(gain(&a), -3.0);
        let (skipped, _) = a.edit(|txn, r| replay(txn, r, &local.inverse));
        assert_eq!((skipped, gain(&a)), (1, -3.0), "the remote -3 dB stays");
    }

    #[test]
    fn undo_then_redo_round_trips() {
        let (p, _) = ProjectDoc::create("p", 1, "Song", 0, "creator");
        let add = Change::AddTrack {
            track: "t".into(),
            fields: track_fields("Keys"),
            clips: BTreeMap::new(),
        };
        p.edit(|txn, r| apply_all(txn, r, "add", vec![add]));
        let set = Change::SetTrack {
            track: "t".into(),
            key: "gain_db".into(),
            value: Value::from(-9.5),
            expect: None,
        };
        let (e, _) = p.edit(|txn, r| apply_all(txn, r, "gain", vec![set]));
        p.edit(|txn, r| replay(txn, r, &e.inverse));
        assert_eq!(gain(&p), 0.0);
        p.edit(|txn, r| replay(txn, r, &e.forward));
        assert_eq!(gain(&p), -9.5);
    }
}
