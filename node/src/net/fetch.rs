//! Stems follow state: after a peer's update is applied, every blob the
//! project references and this node lacks is downloaded from that peer —
//! BLAKE3-verified, resumed from where a broken transfer stopped (the store
//! keeps partial data), never fetched twice, tagged so `gc` keeps it.

use std::collections::HashSet;
use std::sync::Arc;

use iroh::EndpointId;
use meshstudio_store::{Hash, keep_stem};

use super::hub::Hub;
use crate::project::ProjectView;

/// Blobs `project` references, as far as they parse.
pub fn referenced(ctx: &mut crate::request::Context, project: &str) -> Vec<Hash> {
    let Ok(p) = ctx.doc(project) else {
        return Vec::new();
    };
    let view = ProjectView::of(&p);
    let hashes: HashSet<Hash> = view
        .tracks
        .iter()
        .flat_map(|t| t.clips.iter().filter_map(|c| c.blob.parse().ok()))
        .collect();
    hashes.into_iter().collect()
}

/// Downloads what `project` needs from `peer`.
pub async fn fetch_missing(hub: Arc<Hub>, project: String, peer: EndpointId) {
    let wanted = hub.with_ctx(move |ctx| referenced(ctx, &project)).await;
    for hash in wanted {
        if hub.blobs.blobs().has(hash).await.unwrap_or(false) {
            continue;
        }
        if !hub
            .fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash)
        {
            continue; // another session is already fetching it
        }
        let result = fetch_one(&hub, hash, peer).await;
        hub.fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&hash);
        match result {
            Ok(()) => tracing::info!(%peer, hash = %hash.fmt_short(), "stem received"),
            Err(e) => {
                tracing::warn!(%peer, hash = %hash.fmt_short(), error = %e, "stem fetch failed")
            }
        }
    }
}

async fn fetch_one(hub: &Hub, hash: Hash, peer: EndpointId) -> Result<(), String> {
    let downloader = hub.blobs.downloader(&hub.endpoint);
    downloader
        .download(hash, vec![peer])
        .await
        .map_err(|e| e.to_string())?;
    keep_stem(&hub.blobs, hash).await.map_err(|e| e.to_string())
}
