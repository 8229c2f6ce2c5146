//! The store's one error type: what went wrong, in words a user can act on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the database {path} is in use by another meshstudio process; stop it (or use its API) and try again"
    )]
    Locked { path: PathBuf },
    #[error(
        "the database {path} was written by a newer meshstudio (schema v{found}, this one knows up to v{known}); upgrade meshstudio"
    )]
    NewerSchema {
        path: PathBuf,
        found: u64,
        known: u64,
    },
    #[error("the database {path} is damaged ({detail}); a backup may exist next to it")]
    Corrupt { path: PathBuf, detail: String },
    #[error("database: {0}")]
    Db(String),
    #[error("the node key {path} is unreadable ({detail}); it is never replaced automatically")]
    BadKey { path: PathBuf, detail: String },
    #[error("no node identity yet: run `meshstudio init`")]
    NoIdentity,
    #[error("blob store: {0}")]
    Blobs(String),
    #[error("unknown project {0}")]
    UnknownProject(String),
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}

/// redb's errors carry no path; the database has one file, so none is needed here.
impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::from(redb::Error::from(e))
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
