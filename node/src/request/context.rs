//! What a request runs against: the data dir, opened lazily (the database
//! only when needed, the blob store only for stems).

use std::path::{Path, PathBuf};

use meshstudio_store::{BlobStore, Hash, Store, StoreError, init_identity, load_identity};
use serde_json::{Value, json};

use super::{RequestError, Result};

/// The running node's network side, for requests that need it (invite, join).
#[derive(Clone)]
pub struct NetHandle {
    pub endpoint: iroh::Endpoint,
    pub runtime: tokio::runtime::Handle,
    /// Weak: the hub holds this context, the context must not hold the hub.
    pub hub: std::sync::Weak<crate::net::hub::Hub>,
}

pub struct Context {
    net: Option<NetHandle>,
    data_dir: PathBuf,
    store: Option<Store>,
    /// Documents kept in memory between requests and sync frames.
    docs: crate::project::cache::DocCache,
    blobs: Option<BlobStore>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Context {
    pub fn new(data_dir: PathBuf) -> Self {
        Context {
            net: None,
            data_dir,
            store: None,
            docs: Default::default(),
            blobs: None,
            runtime: None,
        }
    }

    pub fn set_net(&mut self, net: NetHandle) {
        self.net = Some(net);
    }

    /// The network side; only a running node (`meshstudio up`) has one.
    pub fn net(&self, what: &str) -> Result<NetHandle> {
        self.net.clone().ok_or_else(|| {
            RequestError::Invalid(format!(
                "{what} needs a running node: start one with `meshstudio up`"
            ))
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The database; needs `init` to have run.
    pub fn store(&mut self) -> Result<&Store> {
        if self.store.is_none() {
            if load_identity(&self.data_dir)?.is_none() {
                return Err(StoreError::NoIdentity.into());
            }
            self.store = Some(Store::open(&self.data_dir)?);
        }
        Ok(self.store.as_ref().expect("opened above"))
    }

    /// A project's document, kept in memory and current with the database.
    pub fn doc(&mut self, id: &str) -> Result<std::sync::Arc<crate::project::ProjectDoc>> {
        self.store()?;
        let store = self.store.as_ref().expect("opened above");
        Ok(self.docs.get(store, id)?)
    }

    /// The cached document already holds the update just written at `seq`.
    pub fn doc_wrote(&mut self, id: &str, seq: u64) {
        self.docs.wrote(id, seq);
    }

    /// The cached document may differ from the database: drop it.
    pub fn forget_doc(&mut self, id: &str) {
        self.docs.forget(id);
    }

    /// Runs async blob-store work on this context's runtime.
    pub fn block_on<F: Future>(&mut self, f: F) -> Result<F::Output> {
        if self.runtime.is_none() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| RequestError::Invalid(format!("cannot start the runtime: {e}")))?;
            self.runtime = Some(rt);
        }
        Ok(self.runtime.as_ref().expect("built above").block_on(f))
    }

    /// The blob store, opened on first use.
    pub fn blobs(&mut self) -> Result<&BlobStore> {
        if self.blobs.is_none() {
            self.store()?;
            let dir = self.data_dir.clone();
            let blobs = self.block_on(BlobStore::open(&dir))??;
            self.blobs = Some(blobs);
        }
        Ok(self.blobs.as_ref().expect("opened above"))
    }

    /// The blob store's API handle (opening the store if needed).
    pub fn blob_api(&mut self) -> Result<iroh_blobs::api::Store> {
        Ok(self.blobs()?.api())
    }

    /// The blob store was shut down by its other owner (the node's router
    /// closes it on shutdown); don't close it again.
    pub fn forget_blobs(&mut self) {
        self.blobs = None;
    }

    /// Adds a file to the blob store (tagged, synced); returns its hash.
    pub fn import_blob(&mut self, path: &Path) -> Result<Hash> {
        self.blobs()?;
        let (Some(blobs), Some(rt)) = (&self.blobs, &self.runtime) else {
            unreachable!("blobs() opened both");
        };
        Ok(rt.block_on(blobs.import_file(path))?)
    }

    pub fn has_blob(&mut self, hash: Hash) -> Result<bool> {
        self.blobs()?;
        let (Some(blobs), Some(rt)) = (&self.blobs, &self.runtime) else {
            unreachable!("blobs() opened both");
        };
        Ok(rt.block_on(blobs.has(hash))?)
    }

    pub fn export_blob(&mut self, hash: Hash, target: &Path) -> Result<()> {
        self.blobs()?;
        let (Some(blobs), Some(rt)) = (&self.blobs, &self.runtime) else {
            unreachable!("blobs() opened both");
        };
        Ok(rt.block_on(blobs.export(hash, target))?)
    }

    pub fn init(&mut self, site: Option<&str>) -> Result<Value> {
        let (secret, created) = init_identity(&self.data_dir)?;
        let store = self.store()?;
        if let Some(site) = site {
            store.write(|w| w.set_setting("site", site))?;
        }
        let site = store.setting("site")?;
        Ok(json!({
            "id": node_id(&secret),
            "created": created,
            "data_dir": self.data_dir,
            "site": site,
        }))
    }

    pub fn node_id(&self) -> Result<String> {
        let secret = load_identity(&self.data_dir)?.ok_or(StoreError::NoIdentity)?;
        Ok(node_id(&secret))
    }

    /// Closes the blob store cleanly (it has its own threads and database).
    pub fn close(mut self) -> Result<()> {
        if let Some(blobs) = self.blobs.take() {
            self.block_on(blobs.shutdown())??;
        }
        Ok(())
    }
}

/// The node id: the ed25519 public key of the node secret, in hex.
fn node_id(secret: &meshstudio_store::NodeSecret) -> String {
    iroh_base::SecretKey::from_bytes(&secret.0)
        .public()
        .to_string()
}
