//! `sync P --wait`: until a member is connected, both sides have caught up
//! and every stem the project references is here — or the timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::fetch::referenced;
use super::hub::Hub;
use crate::request::resolve;

/// How often the state is re-checked.
const POLL: Duration = Duration::from_millis(100);

/// Waits; `progress(have, want)` hears about stems as they arrive.
pub async fn synced(
    hub: Arc<Hub>,
    project: String,
    timeout: Duration,
    progress: impl Fn(u64, u64),
) -> Result<Value, String> {
    let id = hub
        .with_ctx(move |ctx| -> Result<String, String> {
            let store = ctx.store().map_err(|e| e.to_string())?;
            Ok(resolve::project(store, &project)
                .map_err(|e| e.to_string())?
                .id)
        })
        .await?;
    let deadline = Instant::now() + timeout;
    loop {
        let peers = hub.caught_up(&id);
        let project = id.clone();
        let wanted = hub.with_ctx(move |ctx| referenced(ctx, &project)).await;
        let mut have = 0;
        for hash in &wanted {
            have += u64::from(hub.blobs.blobs().has(*hash).await.unwrap_or(false));
        }
        progress(have, wanted.len() as u64);
        if !peers.is_empty() && have == wanted.len() as u64 {
            return Ok(json!({ "project": id, "peers": peers, "stems": wanted.len() }));
        }
        if Instant::now() >= deadline {
            return Err(if peers.is_empty() {
                format!("timed out: no member of {id} is connected and caught up")
            } else {
                format!("timed out: {have} of {} stems are here", wanted.len())
            });
        }
        // A stem arriving is worth a look at once; other progress (a
        // session catching up) shows at the next poll.
        let _ = tokio::time::timeout(POLL, hub.stem_arrived.notified()).await;
    }
}
