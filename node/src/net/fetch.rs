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

/// Stems downloaded at once: enough to keep both ends' cores busy on a
/// fast link (one QUIC stream each, one connection per provider).
const FETCHES_AT_ONCE: usize = 4;

/// Downloads what `project` needs, asking `peer` first.
pub async fn fetch_missing(hub: Arc<Hub>, project: String, peer: EndpointId) {
    let p = project.clone();
    let wanted = hub.with_ctx(move |ctx| referenced(ctx, &p)).await;
    let mut running = tokio::task::JoinSet::new();
    let mut got = false;
    for hash in wanted {
        if hub.blobs.blobs().has(hash).await.unwrap_or(false) || !hub.start_fetch(hash) {
            continue; // here already, or another session is fetching it
        }
        while running.len() >= FETCHES_AT_ONCE {
            got |= running
                .join_next()
                .await
                .is_some_and(|r| r.unwrap_or(false));
        }
        let providers = hub.providers(&project, hash, peer);
        let hub = hub.clone();
        running.spawn(async move {
            let result = fetch_one(&hub, hash, providers).await;
            hub.end_fetch(hash, result.is_ok());
            match &result {
                Ok(()) => tracing::info!(hash = %hash.fmt_short(), "stem received"),
                Err(e) => {
                    tracing::warn!(%peer, hash = %hash.fmt_short(), error = %e, "stem fetch failed")
                }
            }
            result.is_ok()
        });
    }
    while let Some(done) = running.join_next().await {
        got |= done.unwrap_or(false);
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
    hub.downloader
        .download(hash, providers)
        .await
        .map_err(|e| e.to_string())?;
    keep_stem(&hub.blobs, hash).await.map_err(|e| e.to_string())
}
