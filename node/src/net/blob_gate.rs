//! Who may fetch which stem: a member gets a blob only if a project it
//! belongs to (here) references that blob. The endpoint's gate already
//! keeps strangers out; this keeps a member of one project out of another
//! project's stems. Pushes and multi-blob requests are disabled outright.
//! A peer with an upload cap (`max-upload-kbps:<id>`) gets its stems
//! chunk by chunk at that pace (iroh-blobs' throttle events).

use std::collections::HashMap;
use std::sync::Arc;

use iroh::EndpointId;
use iroh_blobs::provider::events::{
    AbortReason, ConnectMode, EventMask, EventSender, ObserveMode, ProviderMessage, RequestMode,
    ThrottleMode,
};
use meshstudio_store::Hash;

use super::hub::Hub;
use super::policy::stems_allowed;
use super::rate_limit::{Way, peer_kbps, take_all};
use crate::project::ProjectView;
use crate::project::doc::members;

/// Provider events waiting for a verdict.
const EVENTS_IN_FLIGHT: usize = 64;

/// An event sender for the blobs protocol whose requests this module judges.
pub fn spawn(hub: Arc<Hub>) -> EventSender {
    let mask = EventMask {
        connected: ConnectMode::Intercept,
        get: RequestMode::Intercept,
        get_many: RequestMode::Disabled,
        push: RequestMode::Disabled,
        observe: ObserveMode::Intercept,
        throttle: ThrottleMode::Intercept,
    };
    let (sender, mut rx) = EventSender::channel(EVENTS_IN_FLIGHT, mask);
    tokio::spawn(async move {
        let mut peers: HashMap<u64, EndpointId> = HashMap::new();
        while let Some(msg) = rx.recv().await {
            match msg {
                ProviderMessage::ClientConnected(m) => {
                    if let Some(id) = m.inner.endpoint_id {
                        peers.insert(m.inner.connection_id, id);
                    }
                    m.tx.send(Ok(())).await.ok();
                }
                ProviderMessage::ConnectionClosed(m) => {
                    peers.remove(&m.inner.connection_id);
                }
                // Requests are judged on their own tasks: a judgement waits
                // for the node's request context, and the stream of chunk
                // events (`Throttle`, every 16 KiB of every transfer) must
                // not wait behind it.
                ProviderMessage::GetRequestReceived(m) => {
                    let peer = peers.get(&m.inner.connection_id).copied();
                    judge_apart(&hub, peer, m.inner.request.hash, |verdict| async move {
                        m.tx.send(verdict).await.ok();
                    });
                }
                ProviderMessage::Throttle(m) => {
                    let peer = peers.get(&m.inner.connection_id);
                    let paces = peer.map(|p| hub.caps.to(p)).unwrap_or_default();
                    if paces.is_empty() {
                        m.tx.send(Ok(())).await.ok();
                        continue;
                    }
                    // Held on its own task: other peers' chunks and
                    // requests go on meanwhile.
                    tokio::spawn(async move {
                        take_all(&paces, m.inner.size).await;
                        m.tx.send(Ok(())).await.ok();
                    });
                }
                ProviderMessage::ObserveRequestReceived(m) => {
                    let peer = peers.get(&m.inner.connection_id).copied();
                    judge_apart(&hub, peer, m.inner.request.hash, |verdict| async move {
                        m.tx.send(verdict).await.ok();
                    });
                }
                _ => {}
            }
        }
    });
    sender
}

/// Judges a request on a task of its own and hands the verdict to `reply`.
fn judge_apart<F>(
    hub: &Arc<Hub>,
    peer: Option<EndpointId>,
    hash: Hash,
    reply: impl FnOnce(Result<(), AbortReason>) -> F + Send + 'static,
) where
    F: Future<Output = ()> + Send,
{
    let hub = hub.clone();
    tokio::spawn(async move { reply(judge(&hub, peer, hash).await).await });
}

async fn judge(hub: &Arc<Hub>, peer: Option<EndpointId>, hash: Hash) -> Result<(), AbortReason> {
    let Some(peer) = peer else {
        return Err(AbortReason::Permission);
    };
    let who = peer.to_string();
    let seen = hub.link_seen(&who);
    let (allowed, cap) = hub
        .with_ctx(move |ctx| {
            let allowed = may_fetch(ctx, &who, hash) && stems_allowed(ctx, &who, seen);
            (allowed, peer_kbps(ctx, Way::Up, &who))
        })
        .await;
    hub.caps.set(Way::Up, peer, cap);
    tracing::debug!(%peer, hash = %hash.fmt_short(), allowed, "blob request");
    if !allowed {
        tracing::warn!(%peer, hash = %hash.fmt_short(), "blob request refused: no shared project uses it, or the stems policy keeps stems off this link");
        return Err(AbortReason::Permission);
    }
    Ok(())
}

/// Whether `peer` is a member of a project here that references `hash`.
fn may_fetch(ctx: &mut crate::request::Context, peer: &str, hash: Hash) -> bool {
    let Ok(rows) = ctx.store().and_then(|s| Ok(s.projects()?)) else {
        return false;
    };
    let hex = hash.to_hex().to_string();
    rows.iter().any(|row| {
        let Ok(p) = ctx.doc(&row.id) else {
            return false;
        };
        let is_member = members(&yrs::Transact::transact(&p.doc), &p.roots)
            .iter()
            .any(|m| m == peer);
        is_member
            && ProjectView::of(&p)
                .tracks
                .iter()
                .flat_map(|t| &t.clips)
                .any(|c| c.blob == hex)
    })
}
