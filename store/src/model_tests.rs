//! Model-based test of `Store`: one random sequence of operations runs on a
//! real redb file and on plain `BTreeMap`s, and every read is compared after
//! every step.
//!
//! Covers committed and rolled-back transactions, close-and-reopen and crash
//! images; not power loss, I/O errors or concurrent writers.

use std::collections::BTreeMap;
use std::fmt;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestCaseError;

use crate::{ProjectRow, Store, StoreError, Writer};

/// "a" is a prefix of "ab": one project's key range must not reach the other's.
const PROJECT_IDS: &[&str] = &["a", "ab", "b"];
const SETTING_KEYS: &[&str] = &["", "audio.device", "theme"];
const SETTING_VALUES: &[&str] = &["", "dark", "light", "hw:0"];
/// Most payloads are small; the big ones split B-tree pages, so branch pages
/// and their separator keys are exercised too.
const SMALL_PAYLOAD_BYTES: usize = 24;
const BIG_PAYLOAD_BYTES: usize = 3000;
/// How much of a big payload a failure report shows.
const PAYLOAD_DEBUG_BYTES: usize = 8;
const MAX_STEPS: usize = 40;
/// Enough to matter in a debug build; `PROPTEST_CASES=N` asks for a deeper run.
const DEFAULT_CASES: u32 = 64;
const ROLLBACK: &str = "model test: rolled back on purpose";
const CRASH_IMAGE_FILE: &str = "crash-image.redb";

/// Bytes to store. Big ones print as their length and first bytes, so a
/// shrunk failing case stays readable.
#[derive(Clone)]
struct Payload(Vec<u8>);

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.get(..PAYLOAD_DEBUG_BYTES) {
            Some(head) if self.0.len() > SMALL_PAYLOAD_BYTES => {
                write!(f, "<{} bytes: {head:?}..>", self.0.len())
            }
            _ => write!(f, "{:?}", self.0),
        }
    }
}

/// One `Writer` call as generated. A seq argument is an `Index`: a choice
/// among the seqs valid at that point of the run, resolved against the
/// model (`Model::resolve_seq`) so store and model get the same number.
#[derive(Debug, Clone)]
enum Op {
    SetSetting {
        key: &'static str,
        value: &'static str,
    },
    PutProject {
        project: &'static str,
        record: Payload,
    },
    AppendUpdate {
        project: &'static str,
        update: Payload,
    },
    /// `upto` lies between the current base and the next seq, both included.
    CompactDoc {
        project: &'static str,
        snapshot: Payload,
        upto: Index,
    },
    PushUndo {
        project: &'static str,
        entry: Payload,
    },
    /// `seq` is an existing entry or the one after the last.
    SetUndo {
        project: &'static str,
        seq: Index,
        entry: Payload,
    },
    /// `from` is an existing entry or the one after the last.
    TruncateUndo { project: &'static str, from: Index },
}

#[derive(Debug, Clone)]
enum Step {
    /// One transaction; if `commit` is false the closure fails after the ops.
    Write { ops: Vec<Op>, commit: bool },
    /// Drop the `Store` (dropping is its only close) and open it again.
    Reopen,
    /// Reopen from the file a `kill -9` would leave, with `pending` in flight.
    Crash { pending: Vec<Op> },
}

/// What the store should hold, written as the spec rather than the code.
#[derive(Debug, Clone, Default)]
struct Model {
    settings: BTreeMap<&'static str, &'static str>,
    projects: BTreeMap<&'static str, Vec<u8>>,
    docs: BTreeMap<&'static str, DocModel>,
    undo: BTreeMap<&'static str, BTreeMap<u64, Vec<u8>>>,
}

/// Seqs count every update ever appended and are never reused: compaction
/// folds a prefix of the log into the snapshot and leaves numbering alone.
#[derive(Debug, Clone, Default)]
struct DocModel {
    snapshot: Option<Vec<u8>>,
    log: BTreeMap<u64, Vec<u8>>,
    /// Every update below this seq is folded into `snapshot`.
    base: u64,
    next_seq: u64,
}

impl DocModel {
    fn append(&mut self, update: &[u8]) -> u64 {
        let seq = self.next_seq;
        self.log.insert(seq, update.to_vec());
        self.next_seq += 1;
        seq
    }

    fn compact(&mut self, snapshot: &[u8], upto: u64) {
        self.log = self.log.split_off(&upto);
        self.snapshot = Some(snapshot.to_vec());
        self.base = upto;
    }
}

impl Model {
    fn doc(&self, project: &str) -> DocModel {
        self.docs.get(project).cloned().unwrap_or_default()
    }

    /// Undo seqs restart after the newest entry left: a truncation frees them.
    fn undo_next(&self, project: &str) -> u64 {
        self.undo
            .get(project)
            .and_then(|log| log.last_key_value())
            .map_or(0, |(seq, _)| seq + 1)
    }

    /// The seq argument `op` stands for now; ops without one ignore it.
    fn resolve_seq(&self, op: &Op) -> u64 {
        match op {
            Op::CompactDoc { project, upto, .. } => {
                let doc = self.doc(project);
                doc.base + pick(upto, doc.next_seq - doc.base)
            }
            Op::SetUndo { project, seq, .. } | Op::TruncateUndo { project, from: seq } => {
                pick(seq, self.undo_next(project))
            }
            _ => 0,
        }
    }

    fn doc_mut(&mut self, project: &'static str) -> &mut DocModel {
        self.docs.entry(project).or_default()
    }

    fn undo_mut(&mut self, project: &'static str) -> &mut BTreeMap<u64, Vec<u8>> {
        self.undo.entry(project).or_default()
    }

    /// Applies one call; returns the seq the store must report for it.
    fn apply(&mut self, op: &Op, seq: u64) -> Option<u64> {
        match op {
            Op::SetSetting { key, value } => {
                self.settings.insert(key, value);
            }
            Op::PutProject { project, record } => {
                self.projects.insert(project, record.0.clone());
            }
            Op::AppendUpdate { project, update } => {
                return Some(self.doc_mut(project).append(&update.0));
            }
            Op::CompactDoc {
                project, snapshot, ..
            } => self.doc_mut(project).compact(&snapshot.0, seq),
            Op::PushUndo { project, entry } => {
                let pushed = self.undo_next(project);
                self.undo_mut(project).insert(pushed, entry.0.clone());
                return Some(pushed);
            }
            Op::SetUndo { project, entry, .. } => {
                self.undo_mut(project).insert(seq, entry.0.clone());
            }
            Op::TruncateUndo { project, .. } => {
                self.undo_mut(project).split_off(&seq);
            }
        }
        None
    }
}

/// A seq in `0..=last`, as chosen by `index`.
fn pick(index: &Index, last: u64) -> u64 {
    index.index(last as usize + 1) as u64
}

/// Runs one call on the store; returns the seq it reported, if any.
fn run_on_store(op: &Op, seq: u64, w: &mut Writer<'_>) -> Result<Option<u64>, StoreError> {
    match op {
        Op::SetSetting { key, value } => w.set_setting(key, value)?,
        Op::PutProject { project, record } => w.put_project(project, &record.0)?,
        Op::AppendUpdate { project, update } => {
            return w.append_update(project, &update.0).map(Some);
        }
        Op::CompactDoc {
            project, snapshot, ..
        } => w.compact_doc(project, &snapshot.0, seq)?,
        Op::PushUndo { project, entry } => return w.push_undo(project, &entry.0).map(Some),
        Op::SetUndo { project, entry, .. } => w.set_undo(project, seq, &entry.0)?,
        Op::TruncateUndo { project, .. } => w.truncate_undo(project, seq)?,
    }
    Ok(None)
}

/// Seqs reported inside one transaction: the store's, then the model's.
#[derive(Default)]
struct ReportedSeqs {
    store: Vec<Option<u64>>,
    model: Vec<Option<u64>>,
}

/// Runs `ops` on the writer and on `scratch`, the model as seen inside the
/// same transaction (so a later op sees the effect of an earlier one).
fn run_ops(
    ops: &[Op],
    w: &mut Writer<'_>,
    scratch: &mut Model,
    seqs: &mut ReportedSeqs,
) -> Result<(), StoreError> {
    for op in ops {
        let seq = scratch.resolve_seq(op);
        seqs.store.push(run_on_store(op, seq, w)?);
        seqs.model.push(scratch.apply(op, seq));
    }
    Ok(())
}

fn rollback_error() -> StoreError {
    StoreError::Db(ROLLBACK.into())
}

fn is_rollback<T>(result: &Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::Db(detail)) if detail == ROLLBACK)
}

fn ok<T>(result: Result<T, StoreError>) -> Result<T, TestCaseError> {
    result.map_err(|e| TestCaseError::fail(format!("store error: {e}")))
}

/// One transaction of `ops`; the model takes its effects only if it commits.
fn write(store: &Store, model: &mut Model, ops: &[Op], commit: bool) -> Result<(), TestCaseError> {
    let mut scratch = model.clone();
    let mut seqs = ReportedSeqs::default();
    let result = store.write(|w| {
        run_ops(ops, w, &mut scratch, &mut seqs)?;
        if commit {
            Ok(())
        } else {
            Err(rollback_error())
        }
    });
    prop_assert_eq!(seqs.store, seqs.model, "seqs returned by the writer");
    if commit {
        ok(result)?;
        *model = scratch;
    } else {
        prop_assert!(is_rollback(&result), "rollback came back as {:?}", result);
    }
    Ok(())
}

/// Reopens the store from what a `kill -9` would leave: the file as the OS
/// holds it at that moment (redb writes with `pwrite` and keeps nothing in a
/// mapping), its recovery flag still set, `pending` ops in an open
/// transaction. Power loss, which also drops unsynced pages, is not modelled.
fn crash(store: Store, pending: &[Op], model: &Model) -> Result<Store, TestCaseError> {
    let db_file = store.path().to_path_buf();
    let image = db_file.with_file_name(CRASH_IMAGE_FILE);
    let mut scratch = model.clone();
    let mut seqs = ReportedSeqs::default();
    let result: Result<(), StoreError> = store.write(|w| {
        run_ops(pending, w, &mut scratch, &mut seqs)?;
        std::fs::copy(&db_file, &image).map_err(|e| StoreError::io(&image, e))?;
        Err(rollback_error())
    });
    prop_assert!(is_rollback(&result), "crash image: {:?}", result);
    // Its clean shutdown goes to the file the image is about to replace.
    drop(store);
    std::fs::rename(&image, &db_file)
        .map_err(|e| TestCaseError::fail(format!("replace {}: {e}", db_file.display())))?;
    let dir = db_file
        .parent()
        .expect("the database file lies in the data dir");
    ok(Store::open(dir))
}

fn check_tables(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    let rows: Vec<ProjectRow> = model
        .projects
        .iter()
        .map(|(id, record)| ProjectRow {
            id: id.to_string(),
            record: record.clone(),
        })
        .collect();
    prop_assert_eq!(ok(store.projects())?, rows);
    for &key in SETTING_KEYS {
        let want = model.settings.get(key).map(|v| v.to_string());
        prop_assert_eq!(ok(store.setting(key))?, want, "setting {:?}", key);
    }
    Ok(())
}

fn check_project(store: &Store, model: &Model, project: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        ok(store.project(project))?,
        model.projects.get(project).cloned()
    );
    let doc = ok(store.load_doc(project))?;
    let want = model.doc(project);
    prop_assert_eq!(doc.snapshot, want.snapshot, "snapshot of {:?}", project);
    let want_updates: Vec<Vec<u8>> = want.log.into_values().collect();
    prop_assert_eq!(doc.updates, want_updates, "updates of {:?}", project);
    prop_assert_eq!(doc.next_seq, want.next_seq, "next_seq of {:?}", project);
    let want_undo: Vec<(u64, Vec<u8>)> = model
        .undo
        .get(project)
        .map(|log| log.clone().into_iter().collect())
        .unwrap_or_default();
    prop_assert_eq!(
        ok(store.undo_log(project))?,
        want_undo,
        "undo log of {:?}",
        project
    );
    Ok(())
}

fn check(store: &Store, model: &Model, client_id: u64) -> Result<(), TestCaseError> {
    prop_assert_eq!(ok(store.client_id())?, client_id, "client id changed");
    check_tables(store, model)?;
    for project in PROJECT_IDS {
        check_project(store, model, project)?;
    }
    Ok(())
}

fn run_case(steps: &[Step]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(format!("tempdir: {e}")))?;
    let mut store = ok(Store::open(dir.path()))?;
    let client_id = ok(store.client_id())?;
    let mut model = Model::default();
    check(&store, &model, client_id)?;
    for step in steps {
        store = match step {
            Step::Write { ops, commit } => {
                write(&store, &mut model, ops, *commit)?;
                store
            }
            Step::Reopen => {
                drop(store);
                ok(Store::open(dir.path()))?
            }
            Step::Crash { pending } => crash(store, pending, &model)?,
        };
        check(&store, &model, client_id)?;
    }
    Ok(())
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        3 => vec(any::<u8>(), 0..=SMALL_PAYLOAD_BYTES),
        1 => vec(any::<u8>(), BIG_PAYLOAD_BYTES / 2..=BIG_PAYLOAD_BYTES),
    ]
    .prop_map(Payload)
}

fn op() -> impl Strategy<Value = Op> {
    let project = || select(PROJECT_IDS);
    prop_oneof![
        1 => (select(SETTING_KEYS), select(SETTING_VALUES))
            .prop_map(|(key, value)| Op::SetSetting { key, value }),
        1 => (project(), payload()).prop_map(|(project, record)| Op::PutProject { project, record }),
        4 => (project(), payload()).prop_map(|(project, update)| Op::AppendUpdate { project, update }),
        2 => (project(), payload(), any::<Index>()).prop_map(|(project, snapshot, upto)| {
            Op::CompactDoc { project, snapshot, upto }
        }),
        2 => (project(), payload()).prop_map(|(project, entry)| Op::PushUndo { project, entry }),
        1 => (project(), any::<Index>(), payload())
            .prop_map(|(project, seq, entry)| Op::SetUndo { project, seq, entry }),
        1 => (project(), any::<Index>()).prop_map(|(project, from)| Op::TruncateUndo { project, from }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => op().prop_map(|op| Step::Write { ops: vec![op], commit: true }),
        3 => vec(op(), 2..=4).prop_map(|ops| Step::Write { ops, commit: true }),
        2 => vec(op(), 1..=4).prop_map(|ops| Step::Write { ops, commit: false }),
        1 => Just(Step::Reopen),
        1 => vec(op(), 0..=3).prop_map(|pending| Step::Crash { pending }),
    ]
}

fn config() -> ProptestConfig {
    let from_env = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            from_env.cases
        } else {
            DEFAULT_CASES
        },
        // A failure is kept as a named test in this file, not a regressions file.
        failure_persistence: None,
        ..from_env
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn store_matches_model(steps in vec(step(), 1..=MAX_STEPS)) {
        run_case(&steps)?;
    }
}
