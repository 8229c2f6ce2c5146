//! Property test of the project model as a CRDT: three replicas make random
//! concurrent edits, exchange their updates in random order with
//! duplicates, and must (a) converge to the same view and (b) lose nothing
//! that was inserted somewhere and deleted nowhere.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{Value, json};
use yrs::Transact;

use super::doc::{NET, key};
use super::ops::{Change, EntryList, Fields, apply_all};
use super::{ProjectDoc, ProjectView};

const REPLICAS: usize = 3;

#[derive(Debug, Clone)]
enum Step {
    /// Replica `r` makes edit `kind` choosing targets with `a`, `b`.
    Edit {
        r: usize,
        kind: u8,
        a: usize,
        b: usize,
    },
    /// Update number `u` (mod produced) is delivered to replica `to`.
    Deliver { u: usize, to: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..REPLICAS, 0u8..10, any::<usize>(), any::<usize>())
            .prop_map(|(r, kind, a, b)| Step::Edit { r, kind, a, b }),
        2 => (any::<usize>(), 0..REPLICAS).prop_map(|(u, to)| Step::Deliver { u, to }),
    ]
}

/// What every replica did, to check that nothing was lost.
#[derive(Default)]
struct Ledger {
    tracks: BTreeSet<String>,
    clips: BTreeSet<String>,
    /// clip → its track.
    clip_track: BTreeMap<String, String>,
    stories: BTreeSet<String>,
    deleted: BTreeSet<String>,
    lyrics_tokens: Vec<String>,
    /// (track, field) → writers' replica ids.
    writers: BTreeMap<(String, String), BTreeSet<usize>>,
    /// (track, field, replica) → that replica's last value.
    last: BTreeMap<(String, String, usize), Value>,
}

struct World {
    replicas: Vec<ProjectDoc>,
    updates: Vec<Vec<u8>>,
    ledger: Ledger,
    serial: usize,
}

impl World {
    fn new() -> Self {
        let (first, base) = ProjectDoc::create("p", 1, "Song", 0, "creator");
        let mut replicas = vec![first];
        for r in 1..REPLICAS {
            let (doc, _) = ProjectDoc::create("p", r as u64 + 1, "Song", 0, "creator");
            deliver(&doc, &base);
            replicas.push(doc);
        }
        // Replicas 2 and 3 wrote their own meta too: share those writes as well.
        let updates = replicas.iter().map(ProjectDoc::full_state).collect();
        World {
            replicas,
            updates,
            ledger: Ledger::default(),
            serial: 0,
        }
    }

    fn fresh(&mut self, what: &str) -> String {
        self.serial += 1;
        format!("{what}-{}", self.serial)
    }

    fn edit(&mut self, r: usize, kind: u8, a: usize, b: usize) {
        let view = ProjectView::of(&self.replicas[r]);
        let track = (!view.tracks.is_empty()).then(|| view.tracks[a % view.tracks.len()].clone());
        let changes = match (kind, track) {
            (0 | 1, _) | (_, None) => self.add_track(r),
            (2, Some(t)) => {
                self.ledger.deleted.insert(t.id.clone());
                vec![Change::RemoveTrack { track: t.id }]
            }
            (3, Some(t)) => self.set(r, &t.id, key::NAME, json!(format!("name-{b}"))),
            (4, Some(t)) => self.set(r, &t.id, key::GAIN_DB, json!(-((b % 60) as f64))),
            (5, Some(t)) => self.set(r, &t.id, key::PAN, json!((b % 21) as f64 / 10.0 - 1.0)),
            (6, Some(t)) => self.set(r, &t.id, key::MUTE, json!(b.is_multiple_of(2))),
            (7, Some(t)) => self.add_clip(&t.id, b),
            (8, Some(t)) => match t.clips.get(b % t.clips.len().max(1)) {
                Some(c) => {
                    self.ledger.deleted.insert(c.id.clone());
                    vec![Change::RemoveClip {
                        track: t.id,
                        clip: c.id.clone(),
                    }]
                }
                None => self.add_clip(&t.id, b),
            },
            (_, Some(_)) => self.text(r, &view.lyrics, b),
        };
        let p = &self.replicas[r];
        let (_, update) = p.edit(|txn, roots| apply_all(txn, roots, "edit", changes));
        self.updates.push(update);
    }

    fn add_track(&mut self, r: usize) -> Vec<Change> {
        let id = self.fresh("track");
        self.ledger.tracks.insert(id.clone());
        let fields = Fields::from([
            (key::NAME.into(), json!(format!("t{r}"))),
            (key::ORDER.into(), json!(self.serial as f64)),
            (key::GAIN_DB.into(), json!(0.0)),
        ]);
        vec![Change::AddTrack {
            track: id,
            fields,
            clips: BTreeMap::new(),
        }]
    }

    fn set(&mut self, r: usize, track: &str, k: &str, value: Value) -> Vec<Change> {
        let slot = (track.to_string(), k.to_string());
        self.ledger.writers.entry(slot).or_default().insert(r);
        self.ledger
            .last
            .insert((track.to_string(), k.to_string(), r), value.clone());
        vec![Change::SetTrack {
            track: track.into(),
            key: k.into(),
            value,
            expect: None,
        }]
    }

    fn add_clip(&mut self, track: &str, b: usize) -> Vec<Change> {
        let id = self.fresh("clip");
        self.ledger.clips.insert(id.clone());
        self.ledger.clip_track.insert(id.clone(), track.to_string());
        let fields = Fields::from([(key::START.into(), json!(b % 480_000))]);
        vec![Change::AddClip {
            track: track.into(),
            clip: id,
            fields,
        }]
    }

    fn text(&mut self, r: usize, lyrics: &str, b: usize) -> Vec<Change> {
        if b.is_multiple_of(3) {
            let id = self.fresh("story");
            self.ledger.stories.insert(id.clone());
            let fields = Fields::from([(key::TEXT.into(), json!(format!("story by {r}")))]);
            return vec![Change::AddEntry {
                list: EntryList::Stories,
                id,
                fields,
            }];
        }
        let token = format!("<{}>", self.fresh("w"));
        self.ledger.lyrics_tokens.push(token.clone());
        vec![Change::SetLyrics {
            text: format!("{lyrics}{token}"),
            expect: None,
        }]
    }
}

fn deliver(to: &ProjectDoc, update: &[u8]) {
    // Through the same checks a peer's bytes pass: real updates must too.
    let update = crate::net::wire::decode_update(update).expect("our own update passes the wire");
    to.doc
        .transact_mut_with(NET)
        .apply_update(update)
        .expect("applies");
}

fn check(world: &World) -> Result<(), TestCaseError> {
    let views: Vec<ProjectView> = world.replicas.iter().map(ProjectView::of).collect();
    for v in &views[1..] {
        prop_assert_eq!(v, &views[0], "replicas diverged");
    }
    let v = &views[0];
    let l = &world.ledger;
    let tracks: BTreeSet<_> = v.tracks.iter().map(|t| t.id.clone()).collect();
    let clips: BTreeSet<_> = v
        .tracks
        .iter()
        .flat_map(|t| t.clips.iter().map(|c| c.id.clone()))
        .collect();
    let stories: BTreeSet<_> = v.stories.iter().map(|s| s.id.clone()).collect();
    for t in l.tracks.difference(&l.deleted) {
        prop_assert!(tracks.contains(t), "track {} lost", t);
    }
    for t in &l.stories {
        prop_assert!(stories.contains(t), "story {} lost", t);
    }
    // A clip survives unless it or its track was deleted; find each live one.
    let clip_track: BTreeMap<_, _> = v
        .tracks
        .iter()
        .flat_map(|t| t.clips.iter().map(move |c| (c.id.clone(), t.id.clone())))
        .collect();
    for c in l.clips.difference(&l.deleted) {
        let track_gone =
            !clip_track.contains_key(c) && l.deleted.iter().any(|d| d.starts_with("track"));
        prop_assert!(clips.contains(c) || track_gone, "clip {} lost", c);
    }
    // Fields only one replica wrote keep that replica's last value.
    for ((track, field), writers) in &l.writers {
        let Some(t) = v.tracks.iter().find(|t| &t.id == track) else {
            continue;
        };
        if let [only] = writers.iter().collect::<Vec<_>>()[..] {
            let want = &l.last[&(track.clone(), field.clone(), *only)];
            let got = match field.as_str() {
                key::NAME => json!(t.name),
                key::GAIN_DB => json!(t.gain_db),
                key::PAN => json!(t.pan),
                key::MUTE => json!(t.mute),
                _ => continue,
            };
            prop_assert!(
                want.as_f64()
                    .zip(got.as_f64())
                    .map_or(want == &got, |(a, b)| a == b),
                "{}.{}: {} written, {} kept",
                track,
                field,
                want,
                got
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn replicas_converge_and_lose_nothing(steps in prop::collection::vec(step(), 1..60), order in any::<u64>()) {
        let mut world = World::new();
        for s in steps {
            match s {
                Step::Edit { r, kind, a, b } => world.edit(r, kind, a, b),
                Step::Deliver { u, to } => {
                    let update = world.updates[u % world.updates.len()].clone();
                    deliver(&world.replicas[to], &update);
                }
            }
        }
        // Everyone gets everything, in a shuffled order, some of it twice.
        let n = world.updates.len();
        for (i, p) in world.replicas.iter().enumerate() {
            let mut idx: Vec<usize> = (0..n).chain(0..n / 3).collect();
            let mut x = order ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            for k in (1..idx.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                idx.swap(k, (x % (k as u64 + 1)) as usize);
            }
            for j in idx {
                deliver(p, &world.updates[j]);
            }
        }
        check(&world)?;
    }
}
