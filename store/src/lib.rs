//! meshstudio-store: a node's own storage.
//!
//! Owns the data dir and everything in it: the node's secret key, the redb
//! database (projects' CRDT update logs and snapshots, undo log, settings,
//! peers, sync cursors, in-progress recordings) and the content-addressed
//! blob store of stems (iroh-blobs `FsStore`, BLAKE3-verified).
//!
//! Knows nothing about audio formats, yrs documents or the network: it
//! stores bytes and records; the node crate gives them meaning.

mod blobs;
mod db;
mod dir;
mod error;
mod identity;
#[cfg(test)]
mod model_tests;

pub use blobs::{BLOBS_DIR, BlobStore, GcReport, Hash, gc, keep_stem};
pub use db::{DB_FILE, ProjectRow, SCHEMA_VERSION, Store, StoredDoc, Writer};
pub use dir::{DATA_DIR_ENV, DataDirError, resolve_data_dir};
pub use error::StoreError;
pub use identity::{KEY_FILE, NodeSecret, init_identity, load_identity};
