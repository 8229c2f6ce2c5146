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
    let p = project.clone();
    let wanted = hub.with_ctx(move |ctx| referenced(ctx, &p)).await;
    let mut got = false;
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
        let providers = hub.providers(&project, hash, peer);
        let result = fetch_one(&hub, hash, providers).await;
        hub.fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&hash);
        match result {
            Ok(()) => {
                tracing::info!(hash = %hash.fmt_short(), "stem received");
                got = true;
            }
            Err(e) => {
                tracing::warn!(%peer, hash = %hash.fmt_short(), error = %e, "stem fetch failed")
            }
        }
    }
    if got {
        // Others may fetch them from here now (store-and-forward).
        super::gossip::announce_stems(&hub, &project, false).await;
    }
}

/// Downloads `hash`, trying `providers` in turn; each resumes from what
/// is already here (verified), so a peer serving bad data costs only the
/// chunk that failed verification.
async fn fetch_one(hub: &Hub, hash: Hash, providers: Vec<EndpointId>) -> Result<(), String> {
    let downloader = hub.blobs.downloader(&hub.endpoint);
    downloader
        .download(hash, providers)
        .await
        .map_err(|e| e.to_string())?;
    keep_stem(&hub.blobs, hash).await.map_err(|e| e.to_string())
}
