//! The node's one redb database: tables, schema version and migrations,
//! and the only way to write — `Store::write`, one atomic transaction.
//!
//! Records are opaque bytes here: the node crate decides what a project
//! record, an update or an undo entry means.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use rand::Rng;
use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::StoreError;

/// The database file inside the data dir.
pub const DB_FILE: &str = "meshstudio.redb";
/// The schema this build reads and writes.
pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");
/// project id → the node's record of it (JSON, owned by the node crate).
const PROJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("projects");
/// (project id, seq) → one yrs update (v1), in commit order.
const DOC_LOG: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("doc_log");
/// project id → the full doc state as of every log entry below `DOC_BASE`.
const DOC_SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("doc_snapshot");
/// project id → the first log seq not folded into the snapshot.
const DOC_BASE: TableDefinition<&str, u64> = TableDefinition::new("doc_base");
/// (project id, seq) → one local operation and its inverse.
const UNDO_LOG: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("undo_log");
/// node id → last known addresses and the like.
const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers");
/// (peer id, project id) → how far that peer is known to be synced.
const SYNC_CURSORS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("sync_cursors");
/// take id → an in-progress recording, so a crash mid-take can be recovered.
const RECORDINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("recordings");

const KEY_SCHEMA: &str = "schema_version";
const KEY_CLIENT_ID: &str = "yrs_client_id";
/// yrs client ids must stay below 2^53 (JavaScript-safe; larger ones are masked).
const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// Migrations from version N to N+1, indexed by N. Version 0 is a database
/// created before the schema was recorded: it has no tables to change.
const MIGRATIONS: &[Migration] = &[|_| Ok(())];
type Migration = fn(&redb::WriteTransaction) -> Result<(), StoreError>;

/// The open database.
pub struct Store {
    db: Database,
    path: PathBuf,
}

/// A project's stored document: a snapshot and the updates after it.
#[derive(Debug, Default, Clone)]
pub struct StoredDoc {
    pub snapshot: Option<Vec<u8>>,
    pub updates: Vec<Vec<u8>>,
    /// The seq the next update will get.
    pub next_seq: u64,
}

/// One row of the projects table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRow {
    pub id: String,
    pub record: Vec<u8>,
}

impl Store {
    /// Opens (or creates) `<data_dir>/meshstudio.redb`, migrating an older
    /// schema after copying the file to `meshstudio.redb.bak-vN`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::io(data_dir, e))?;
        let path = data_dir.join(DB_FILE);
        let existed = path.exists();
        let db = open_db(&path)?;
        let store = Store { db, path };
        let found = store.schema_version()?;
        match found {
            None if !existed => store.init_schema()?,
            None => store.migrate(0)?,
            Some(v) if v == SCHEMA_VERSION => {}
            Some(v) if v < SCHEMA_VERSION => store.migrate(v)?,
            Some(v) => {
                return Err(StoreError::NewerSchema {
                    path: store.path.clone(),
                    found: v,
                    known: SCHEMA_VERSION,
                });
            }
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn schema_version(&self) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(meta.get(KEY_SCHEMA)?.map(|v| v.value()))
    }

    fn init_schema(&self) -> Result<(), StoreError> {
        self.write(|w| {
            w.create_tables()?;
            w.txn.open_table(META)?.insert(KEY_SCHEMA, SCHEMA_VERSION)?;
            Ok(())
        })
    }

    fn migrate(&self, from: u64) -> Result<(), StoreError> {
        self.backup(from)?;
        self.write(|w| {
            for step in &MIGRATIONS[from as usize..] {
                step(w.txn)?;
            }
            w.create_tables()?;
            w.txn.open_table(META)?.insert(KEY_SCHEMA, SCHEMA_VERSION)?;
            Ok(())
        })
    }

    /// Copies the database to `meshstudio.redb.bak-vN` (temp file + rename).
    fn backup(&self, version: u64) -> Result<PathBuf, StoreError> {
        let target = self.path.with_extension(format!("redb.bak-v{version}"));
        let temp = self.path.with_extension(format!("redb.bak-v{version}.tmp"));
        std::fs::copy(&self.path, &temp).map_err(|e| StoreError::io(&temp, e))?;
        std::fs::rename(&temp, &target).map_err(|e| StoreError::io(&target, e))?;
        Ok(target)
    }

    /// Runs `f` in one write transaction, committed only if `f` succeeds.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Writer<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_write()?;
        let mut writer = Writer { txn: &txn };
        let out = f(&mut writer)?;
        txn.commit()?;
        Ok(out)
    }

    /// This node's yrs client id, created once and kept forever: a fresh id
    /// per process would grow every state vector without bound.
    pub fn client_id(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        if let Some(id) = txn.open_table(META)?.get(KEY_CLIENT_ID)? {
            return Ok(id.value());
        }
        drop(txn);
        self.write(|w| {
            let mut meta = w.txn.open_table(META)?;
            if let Some(id) = meta.get(KEY_CLIENT_ID)? {
                return Ok(id.value());
            }
            let id = rand::rng().random_range(1..=MAX_CLIENT_ID);
            meta.insert(KEY_CLIENT_ID, id)?;
            Ok(id)
        })
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(SETTINGS)?
            .get(key)?
            .map(|v| v.value().to_string()))
    }

    pub fn projects(&self) -> Result<Vec<ProjectRow>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PROJECTS)?;
        let mut rows = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            rows.push(ProjectRow {
                id: k.value().to_string(),
                record: v.value().to_vec(),
            });
        }
        Ok(rows)
    }

    pub fn project(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(PROJECTS)?
            .get(id)?
            .map(|v| v.value().to_vec()))
    }

    /// The snapshot and log of a project's document.
    pub fn load_doc(&self, project: &str) -> Result<StoredDoc, StoreError> {
        let txn = self.db.begin_read()?;
        let snapshot = txn
            .open_table(DOC_SNAPSHOT)?
            .get(project)?
            .map(|v| v.value().to_vec());
        let base = txn
            .open_table(DOC_BASE)?
            .get(project)?
            .map_or(0, |v| v.value());
        let log = txn.open_table(DOC_LOG)?;
        let mut doc = StoredDoc {
            snapshot,
            updates: Vec::new(),
            next_seq: base,
        };
        for entry in log.range((project, base)..=(project, u64::MAX))? {
            let (k, v) = entry?;
            doc.updates.push(v.value().to_vec());
            doc.next_seq = k.value().1 + 1;
        }
        Ok(doc)
    }

    /// The log entries of a project from seq `from` on, for a reader that
    /// already holds everything before it; `None` once a compaction has
    /// folded entries at or past `from` into the snapshot (reload then).
    pub fn doc_updates_since(
        &self,
        project: &str,
        from: u64,
    ) -> Result<Option<StoredDoc>, StoreError> {
        let txn = self.db.begin_read()?;
        let base = txn
            .open_table(DOC_BASE)?
            .get(project)?
            .map_or(0, |v| v.value());
        if base > from {
            return Ok(None);
        }
        let mut doc = StoredDoc {
            snapshot: None,
            updates: Vec::new(),
            next_seq: from,
        };
        for entry in txn
            .open_table(DOC_LOG)?
            .range((project, from)..=(project, u64::MAX))?
        {
            let (k, v) = entry?;
            doc.updates.push(v.value().to_vec());
            doc.next_seq = k.value().1 + 1;
        }
        Ok(Some(doc))
    }

    /// Remembered peers: (node id, record), ordered by id.
    /// In-progress recordings (take id → record), left by a process that
    /// died mid-take or still running in this one.
    pub fn recordings(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECORDINGS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    pub fn peers(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PEERS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// A project's undo log, oldest first, as (seq, entry).
    pub fn undo_log(&self, project: &str) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(UNDO_LOG)?;
        let mut out = Vec::new();
        for entry in table.range((project, 0)..=(project, u64::MAX))? {
            let (k, v) = entry?;
            out.push((k.value().1, v.value().to_vec()));
        }
        Ok(out)
    }
}

fn open_db(path: &Path) -> Result<Database, StoreError> {
    // redb's debug builds assert on some corruptions instead of returning
    // an error; either way a damaged file must become an error, not a crash.
    let opened = catch_unwind(AssertUnwindSafe(|| Database::create(path)));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(DatabaseError::DatabaseAlreadyOpen)) => Err(StoreError::Locked {
            path: path.to_path_buf(),
        }),
        Ok(Err(DatabaseError::Storage(redb::StorageError::Io(e))))
            if e.kind() != std::io::ErrorKind::InvalidData =>
        {
            Err(StoreError::io(path, e))
        }
        Ok(Err(e)) => Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
        Err(_) => Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: "redb failed to read it".into(),
        }),
    }
}

/// Writes inside one `Store::write` transaction.
pub struct Writer<'a> {
    txn: &'a redb::WriteTransaction,
}

impl Writer<'_> {
    fn create_tables(&mut self) -> Result<(), StoreError> {
        self.txn.open_table(META)?;
        self.txn.open_table(SETTINGS)?;
        self.txn.open_table(PROJECTS)?;
        self.txn.open_table(DOC_LOG)?;
        self.txn.open_table(DOC_SNAPSHOT)?;
        self.txn.open_table(DOC_BASE)?;
        self.txn.open_table(UNDO_LOG)?;
        self.txn.open_table(PEERS)?;
        self.txn.open_table(SYNC_CURSORS)?;
        self.txn.open_table(RECORDINGS)?;
        Ok(())
    }

    pub fn set_setting(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.txn.open_table(SETTINGS)?.insert(key, value)?;
        Ok(())
    }

    pub fn put_project(&mut self, id: &str, record: &[u8]) -> Result<(), StoreError> {
        self.txn.open_table(PROJECTS)?.insert(id, record)?;
        Ok(())
    }

    /// The seq the next update of `project` gets.
    fn next_seq(&self, project: &str, base: u64) -> Result<u64, StoreError> {
        let log = self.txn.open_table(DOC_LOG)?;
        let last = log
            .range((project, 0)..=(project, u64::MAX))?
            .next_back()
            .transpose()?;
        Ok(last.map_or(base, |(k, _)| k.value().1 + 1).max(base))
    }

    /// Appends one update to a project's log; returns its seq.
    pub fn append_update(&mut self, project: &str, update: &[u8]) -> Result<u64, StoreError> {
        let base = self
            .txn
            .open_table(DOC_BASE)?
            .get(project)?
            .map_or(0, |v| v.value());
        let seq = self.next_seq(project, base)?;
        self.txn
            .open_table(DOC_LOG)?
            .insert((project, seq), update)?;
        Ok(seq)
    }

    /// Replaces every log entry below `upto` with `snapshot` (the full state
    /// as of those entries). `upto` must lie between the current base and
    /// the next seq: an older snapshot would drop the updates between the
    /// two, a later one would claim updates that never existed.
    pub fn compact_doc(
        &mut self,
        project: &str,
        snapshot: &[u8],
        upto: u64,
    ) -> Result<(), StoreError> {
        let base = self
            .txn
            .open_table(DOC_BASE)?
            .get(project)?
            .map_or(0, |v| v.value());
        let next = self.next_seq(project, base)?;
        if upto < base || upto > next {
            return Err(StoreError::Db(format!(
                "compaction of {project} up to {upto} is outside {base}..={next}"
            )));
        }
        let mut log = self.txn.open_table(DOC_LOG)?;
        log.retain_in((project, 0)..(project, upto), |_, _| false)?;
        self.txn
            .open_table(DOC_SNAPSHOT)?
            .insert(project, snapshot)?;
        self.txn.open_table(DOC_BASE)?.insert(project, upto)?;
        Ok(())
    }

    /// Remembers a peer (its last known addresses and the like).
    pub fn put_recording(&mut self, take: &str, record: &[u8]) -> Result<(), StoreError> {
        self.txn.open_table(RECORDINGS)?.insert(take, record)?;
        Ok(())
    }

    pub fn remove_recording(&mut self, take: &str) -> Result<(), StoreError> {
        self.txn.open_table(RECORDINGS)?.remove(take)?;
        Ok(())
    }

    pub fn put_peer(&mut self, id: &str, record: &[u8]) -> Result<(), StoreError> {
        self.txn.open_table(PEERS)?.insert(id, record)?;
        Ok(())
    }

    /// Appends a local operation to the project's undo log; returns its seq.
    pub fn push_undo(&mut self, project: &str, entry: &[u8]) -> Result<u64, StoreError> {
        let mut log = self.txn.open_table(UNDO_LOG)?;
        let last = log
            .range((project, 0)..=(project, u64::MAX))?
            .next_back()
            .transpose()?;
        let seq = last.map_or(0, |(k, _)| k.value().1 + 1);
        log.insert((project, seq), entry)?;
        Ok(seq)
    }

    /// Rewrites one undo entry in place (e.g. marking it undone).
    pub fn set_undo(&mut self, project: &str, seq: u64, entry: &[u8]) -> Result<(), StoreError> {
        self.txn
            .open_table(UNDO_LOG)?
            .insert((project, seq), entry)?;
        Ok(())
    }

    /// Drops undo entries from `seq` on (a new edit after undos ends the redo chain).
    pub fn truncate_undo(&mut self, project: &str, from: u64) -> Result<(), StoreError> {
        let mut log = self.txn.open_table(UNDO_LOG)?;
        log.retain_in((project, from)..=(project, u64::MAX), |_, _| false)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_and_compaction_keep_order_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..5u8 {
            assert_eq!(
                store.write(|w| w.append_update("p", &[i])).unwrap(),
                i as u64
            );
        }
        store.write(|w| w.compact_doc("p", b"snap", 3)).unwrap();
        let doc = store.load_doc("p").unwrap();
        assert_eq!(doc.snapshot.as_deref(), Some(&b"snap"[..]));
        assert_eq!(doc.updates, vec![vec![3], vec![4]]);
        assert_eq!(doc.next_seq, 5);
        assert_eq!(store.write(|w| w.append_update("p", &[5])).unwrap(), 5);
        // A stale or future compaction is refused and changes nothing.
        assert!(store.write(|w| w.compact_doc("p", b"old", 1)).is_err());
        assert!(store.write(|w| w.compact_doc("p", b"future", 100)).is_err());
        assert_eq!(
            store.load_doc("p").unwrap().updates,
            vec![vec![3], vec![4], vec![5]]
        );
        assert!(store.load_doc("other").unwrap().updates.is_empty());
    }

    #[test]
    fn client_id_is_persisted_and_js_safe() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(dir.path()).unwrap().client_id().unwrap();
        let b = Store::open(dir.path()).unwrap().client_id().unwrap();
        assert_eq!(a, b);
        assert!(a <= MAX_CLIENT_ID && a > 0);
    }

    #[test]
    fn a_second_open_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Locked { .. })
        ));
    }

    #[test]
    fn a_newer_schema_is_refused_and_an_older_one_migrated_with_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        // Written with redb directly: Store::open would refuse the newer one.
        let set_version = |v: u64| {
            let db = Database::create(dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert(KEY_SCHEMA, v).unwrap();
            txn.commit().unwrap();
        };
        set_version(SCHEMA_VERSION + 1);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::NewerSchema { .. })
        ));
        set_version(0);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), Some(SCHEMA_VERSION));
        assert!(dir.path().join("meshstudio.redb.bak-v0").exists());
    }

    #[test]
    fn garbage_is_reported_as_corrupt_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![0x5a; 8192]).unwrap();
        let r = Store::open(dir.path());
        assert!(
            matches!(r, Err(StoreError::Corrupt { .. })),
            "{:?}",
            r.err()
        );
    }
}
