//! Stems as content-addressed blobs: an iroh-blobs `FsStore` at
//! `<data-dir>/blobs/` (BLAKE3, verified, resumable; the sync protocol will
//! serve it directly). Every stem is held by a named tag `stem/<hash>`, so
//! garbage collection removes exactly what no tag protects.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use iroh_blobs::BlobFormat;
use iroh_blobs::api::blobs::{AddPathOptions, ImportMode};
use iroh_blobs::store::fs::FsStore;
use iroh_blobs::store::fs::options::Options;
use iroh_blobs::store::{GcConfig, ProtectOutcome};
use n0_future::StreamExt;

pub use iroh_blobs::Hash;

use crate::error::StoreError;

/// The blob store's directory inside the data dir.
pub const BLOBS_DIR: &str = "blobs";
const STEM_TAG_PREFIX: &str = "stem/";
/// How often the one-shot GC store polls; only `gc` uses it.
const GC_POLL: Duration = Duration::from_millis(10);

fn blob_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Blobs(e.to_string())
}

/// What `gc` removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    pub tags_dropped: usize,
    pub blobs_before: usize,
    pub blobs_after: usize,
}

/// The node's stems.
pub struct BlobStore {
    store: FsStore,
}

impl BlobStore {
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, None).await
    }

    async fn open_with(data_dir: &Path, gc: Option<GcConfig>) -> Result<Self, StoreError> {
        let root = data_dir.join(BLOBS_DIR);
        std::fs::create_dir_all(&root).map_err(|e| StoreError::io(&root, e))?;
        let mut options = Options::new(&root);
        options.gc = gc;
        let store = FsStore::load_with_opts(root.join("blobs.db"), options)
            .await
            .map_err(|e| blob_err(format!("{}: {e:#}", root.display())))?;
        Ok(BlobStore { store })
    }

    /// Copies `path` into the store and tags it; durable when this returns
    /// (the store acknowledges before its own commit, hence `sync_db`).
    pub async fn import_file(&self, path: &Path) -> Result<Hash, StoreError> {
        let options = AddPathOptions {
            path: path.to_path_buf(),
            format: BlobFormat::Raw,
            mode: ImportMode::Copy,
        };
        let added = self
            .store
            .blobs()
            .add_path_with_opts(options)
            .temp_tag()
            .await
            .map_err(blob_err)?;
        let hash = added.hash();
        self.tag(hash).await?;
        drop(added);
        self.store.sync_db().await.map_err(blob_err)?;
        Ok(hash)
    }

    async fn tag(&self, hash: Hash) -> Result<(), StoreError> {
        let name = format!("{STEM_TAG_PREFIX}{}", hash.to_hex());
        self.store.tags().set(name, hash).await.map_err(blob_err)
    }

    /// A handle on the store's API, for serving and downloading blobs.
    pub fn api(&self) -> iroh_blobs::api::Store {
        (*self.store).clone()
    }

    /// Whether the blob is complete here.
    pub async fn has(&self, hash: Hash) -> Result<bool, StoreError> {
        self.store.blobs().has(hash).await.map_err(blob_err)
    }

    /// Writes the blob to `target` (which must not exist yet).
    pub async fn export(&self, hash: Hash, target: &Path) -> Result<(), StoreError> {
        self.store
            .blobs()
            .export(hash, target)
            .await
            .map_err(blob_err)?;
        Ok(())
    }

    /// A seekable async reader over a complete blob.
    pub fn reader(&self, hash: Hash) -> iroh_blobs::api::blobs::BlobReader {
        self.store.blobs().reader(hash)
    }

    /// Hashes of every stem tag.
    pub async fn tagged(&self) -> Result<HashSet<Hash>, StoreError> {
        let mut tags = self
            .store
            .tags()
            .list_prefix(STEM_TAG_PREFIX)
            .await
            .map_err(blob_err)?;
        let mut out = HashSet::new();
        while let Some(tag) = tags.next().await {
            out.insert(tag.map_err(blob_err)?.hash);
        }
        Ok(out)
    }

    async fn count(&self) -> Result<usize, StoreError> {
        Ok(self
            .store
            .blobs()
            .list()
            .hashes()
            .await
            .map_err(blob_err)?
            .len())
    }

    pub async fn shutdown(self) -> Result<(), StoreError> {
        self.store.shutdown().await.map_err(blob_err)
    }
}

/// Tags a stem that arrived from elsewhere (a download) so GC keeps it,
/// and makes that durable.
pub async fn keep_stem(api: &iroh_blobs::api::Store, hash: Hash) -> Result<(), StoreError> {
    let name = format!("{STEM_TAG_PREFIX}{}", hash.to_hex());
    api.tags().set(name, hash).await.map_err(blob_err)?;
    api.sync_db().await.map_err(blob_err)
}

/// Drops the tags of stems not in `keep`, then runs the store's garbage
/// collection once. Needs the blob store closed elsewhere (it opens its own).
pub async fn gc(data_dir: &Path, keep: &HashSet<Hash>) -> Result<GcReport, StoreError> {
    let (runs_tx, mut runs_rx) = tokio::sync::mpsc::channel::<()>(4);
    let config = GcConfig {
        interval: GC_POLL,
        add_protected: Some(Arc::new(move |_live| {
            let runs_tx = runs_tx.clone();
            Box::pin(async move {
                let _ = runs_tx.send(()).await;
                ProtectOutcome::Continue
            })
        })),
    };
    let blobs = BlobStore::open_with(data_dir, Some(config)).await?;
    let before = blobs.count().await?;
    let mut dropped = 0;
    for hash in blobs.tagged().await? {
        if !keep.contains(&hash) {
            let name = format!("{STEM_TAG_PREFIX}{}", hash.to_hex());
            blobs.store.tags().delete(name).await.map_err(blob_err)?;
            dropped += 1;
        }
    }
    // The protect callback runs before every pass: the third call means the
    // pass that started after the tags were dropped has finished.
    for _ in 0..3 {
        runs_rx
            .recv()
            .await
            .ok_or_else(|| blob_err("garbage collection stopped"))?;
    }
    let after = blobs.count().await?;
    blobs.shutdown().await?;
    Ok(GcReport {
        tags_dropped: dropped,
        blobs_before: before,
        blobs_after: after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn import_tag_and_collect() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.bin"), dir.path().join("b.bin"));
        std::fs::write(&a, vec![1u8; 100_000]).unwrap();
        std::fs::write(&b, vec![2u8; 50_000]).unwrap();
        let store = BlobStore::open(dir.path()).await.unwrap();
        let ha = store.import_file(&a).await.unwrap();
        let hb = store.import_file(&b).await.unwrap();
        assert_eq!(ha, Hash::new(vec![1u8; 100_000]));
        assert!(store.has(ha).await.unwrap() && store.has(hb).await.unwrap());
        assert_eq!(store.tagged().await.unwrap(), HashSet::from([ha, hb]));
        store.shutdown().await.unwrap();

        let report = gc(dir.path(), &HashSet::from([ha])).await.unwrap();
        assert_eq!(report.tags_dropped, 1);
        let store = BlobStore::open(dir.path()).await.unwrap();
        assert!(store.has(ha).await.unwrap());
        assert!(
            !store.has(hb).await.unwrap(),
            "the untagged blob is collected"
        );
        let out = dir.path().join("out.bin");
        store.export(ha, &out).await.unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), vec![1u8; 100_000]);
        store.shutdown().await.unwrap();
    }
}
