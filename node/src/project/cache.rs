//! Project documents kept in memory by the running node, so a sync frame,
//! a diff or a membership check does not rebuild the document from redb
//! (snapshot + log) each time. The database stays the truth: every lookup
//! first applies the log entries written since (by requests, or by sync),
//! and a compaction past what the cache holds means a reload.

use std::collections::HashMap;
use std::sync::Arc;

use meshstudio_store::Store;

use super::ProjectDoc;
use super::doc::{COMPACT_AFTER_UPDATES, ProjectError, apply_stored};

struct Cached {
    doc: Arc<ProjectDoc>,
    /// The log seq the cached state reaches (exclusive).
    next_seq: u64,
    /// Log entries applied since the document was loaded or compacted.
    uncompacted: usize,
}

impl Cached {
    /// Folds the log into a snapshot once it grows long (`ProjectDoc::load`
    /// does the same; this keeps a node that only receives from piling up
    /// entries). A failed write leaves the log as it was: still valid.
    fn compact_if_long(&mut self, store: &Store, id: &str) {
        if self.uncompacted > COMPACT_AFTER_UPDATES {
            let snapshot = self.doc.full_state();
            let upto = self.next_seq;
            if store.write(|w| w.compact_doc(id, &snapshot, upto)).is_ok() {
                self.uncompacted = 0;
            }
        }
    }
}

#[derive(Default)]
pub struct DocCache {
    docs: HashMap<String, Cached>,
}

impl DocCache {
    /// The project's document, current with the database.
    pub fn get(&mut self, store: &Store, id: &str) -> Result<Arc<ProjectDoc>, ProjectError> {
        if let Some(cached) = self.docs.get_mut(id) {
            if let Ok(Some(newer)) = store.doc_updates_since(id, cached.next_seq)
                && apply_stored(&cached.doc.doc, id, &newer).is_ok()
            {
                cached.next_seq = newer.next_seq;
                cached.uncompacted += newer.updates.len();
                cached.compact_if_long(store, id);
                return Ok(cached.doc.clone());
            }
            // Compacted past what we hold, or unreadable: rebuild from the database.
            self.docs.remove(id);
        }
        let (doc, next_seq) = ProjectDoc::load_with_seq(store, id)?;
        let doc = Arc::new(doc);
        self.docs.insert(
            id.to_string(),
            Cached {
                doc: doc.clone(),
                next_seq,
                uncompacted: 0,
            },
        );
        Ok(doc)
    }

    /// The update at `seq` was applied to the cached document before it was
    /// written: don't apply it again.
    pub fn wrote(&mut self, id: &str, seq: u64) {
        if let Some(cached) = self.docs.get_mut(id).filter(|c| c.next_seq == seq) {
            cached.next_seq = seq + 1;
            cached.uncompacted += 1;
        }
    }

    /// Drops a document whose in-memory state may differ from the database
    /// (an apply whose write failed).
    pub fn forget(&mut self, id: &str) {
        self.docs.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::doc::{NET, key};
    use yrs::{Map, Transact};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        meshstudio_store::init_identity(dir.path()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn name_of(p: &ProjectDoc) -> String {
        p.name()
    }

    /// A stored project; returns a document to author edits with.
    fn create(store: &Store) -> ProjectDoc {
        let (p, first) = ProjectDoc::create("p", 99, "Song", 0, "creator");
        store
            .write(|w| w.append_update("p", &first).map(|_| ()))
            .unwrap();
        p
    }

    /// Edits written by someone else (a request, sync) show in the cached
    /// document; a compaction past it means a reload with the same state.
    #[test]
    fn the_cache_follows_the_database() {
        let (_dir, store) = store();
        let p = create(&store);
        let mut cache = DocCache::default();
        assert_eq!(name_of(&cache.get(&store, "p").unwrap()), "Song");
        for i in 0..(COMPACT_AFTER_UPDATES + 10) {
            let (_, update) = p.edit(|txn, r| r.meta.insert(txn, key::NAME, format!("v{i}")));
            store
                .write(|w| w.append_update("p", &update).map(|_| ()))
                .unwrap();
            if i % 100 == 0 {
                assert_eq!(name_of(&cache.get(&store, "p").unwrap()), format!("v{i}"));
            }
        }
        // A fresh load compacts the log past what the cache holds.
        drop(ProjectDoc::load(&store, "p").unwrap());
        let last = format!("v{}", COMPACT_AFTER_UPDATES + 9);
        assert_eq!(name_of(&cache.get(&store, "p").unwrap()), last);
    }

    /// A node that only receives still compacts its log.
    #[test]
    fn a_receiving_node_compacts() {
        let (_dir, store) = store();
        let author = create(&store);
        let mut cache = DocCache::default();
        drop(cache.get(&store, "p").unwrap());
        for i in 0..=COMPACT_AFTER_UPDATES {
            let (_, update) = author.edit(|txn, r| r.meta.insert(txn, key::NAME, format!("v{i}")));
            let doc = cache.get(&store, "p").unwrap();
            let decoded = crate::net::wire::decode_update(&update).unwrap();
            doc.doc
                .transact_mut_with(NET)
                .apply_update(decoded)
                .unwrap();
            let seq = store.write(|w| w.append_update("p", &update)).unwrap();
            cache.wrote("p", seq);
        }
        drop(cache.get(&store, "p").unwrap());
        let stored = store.load_doc("p").unwrap();
        assert!(
            stored.updates.is_empty(),
            "{} entries left",
            stored.updates.len()
        );
        let reloaded = ProjectDoc::load(&store, "p").unwrap();
        assert_eq!(name_of(&reloaded), format!("v{COMPACT_AFTER_UPDATES}"));
    }
}
