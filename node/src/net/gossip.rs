//! Project gossip: one iroh-gossip topic per project (id = BLAKE3(secret ‖
//! project id), so only holders of the secret find it) carrying signed
//! notices (`notice`): "my addresses", "I have stem H", "I changed
//! something". They turn a star of invite links into a mesh — members learn
//! each other's addresses and dial each other — and tell a node where else a
//! stem can be fetched. Only members pass the endpoint gate, and a notice
//! counts only if its signed author is a member of the project.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iroh::{EndpointAddr, EndpointId};
use iroh_gossip::TopicId;
use iroh_gossip::api::{Event, GossipReceiver};
use meshstudio_store::Hash;
use serde_json::Value;
use tokio_stream::StreamExt;

use super::hub::Hub;
use super::notice::{self, Body, MAX_NOTICE_ADDRS, Payload};
use super::{fetch, peers};
use crate::project::doc::members;

/// Gossip's message limit; notices stay well below it (`MAX_NOTICE_BYTES`).
pub const GOSSIP_MAX_MESSAGE_BYTES: usize = 4096;
/// Least time between two "update" notices for one project.
const UPDATE_NOTICE_EVERY: Duration = Duration::from_secs(2);
/// Request ops that can make a project reference stems it did not before.
const STEM_OPS: &[&str] = &["import", "undo", "redo"];

/// The topic of a project: only those who know its secret can derive it.
pub fn topic(secret: &[u8; 32], project: &str) -> TopicId {
    let mut h = blake3::Hasher::new();
    h.update(secret);
    h.update(project.as_bytes());
    TopicId::from_bytes(*h.finalize().as_bytes())
}

/// Joins `project`'s topic (once), says where we are, and handles notices.
pub async fn join(hub: Arc<Hub>, project: String, secret: [u8; 32], bootstrap: Vec<EndpointId>) {
    if let Some(joined) = hub.topic(&project) {
        if !bootstrap.is_empty() {
            let _ = joined.join_peers(bootstrap).await;
        }
        return;
    }
    let sub = match hub
        .gossip
        .subscribe(topic(&secret, &project), bootstrap)
        .await
    {
        Ok(sub) => sub,
        Err(e) => {
            tracing::warn!(%project, error = %e, "cannot join the project's gossip topic");
            return;
        }
    };
    let (sender, receiver) = sub.split();
    hub.set_topic(&project, sender);
    tokio::spawn(receive(hub, project, receiver));
}

async fn receive(hub: Arc<Hub>, project: String, mut receiver: GossipReceiver) {
    while let Some(event) = receiver.next().await {
        match event {
            Ok(Event::Received(msg)) => on_notice(&hub, &project, &msg.content).await,
            Ok(Event::NeighborUp(peer)) => {
                tracing::debug!(%project, %peer, "gossip neighbor up");
                // A new neighbor missed what we said before.
                say_where_we_are(&hub, &project).await;
                announce_stems(&hub, &project, true).await;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(%project, error = %e, "gossip topic ended");
                break;
            }
        }
    }
    hub.drop_topic(&project);
}

async fn on_notice(hub: &Arc<Hub>, project: &str, bytes: &[u8]) {
    let payload = match notice::decode(bytes, project) {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(%project, error = %e, "gossip notice refused");
            return;
        }
    };
    let Ok(author) = payload.author.parse::<EndpointId>() else {
        return;
    };
    if payload.author == hub.me || !is_member(hub, project, &payload.author).await {
        return;
    }
    match payload.body {
        // A replayed, older notice must not undo newer addresses.
        Body::Addrs { addrs } if hub.newer_addrs(author, payload.time_ms) => {
            learned_addrs(hub, author, addrs).await
        }
        Body::Addrs { .. } => {}
        Body::HaveBlob { hash } => {
            let Ok(hash) = hash.parse::<Hash>() else {
                return;
            };
            hub.add_provider(hash, author);
            // Re-announcements reach us for stems we hold: nothing to do then.
            if !hub.blobs.blobs().has(hash).await.unwrap_or(false) {
                tokio::spawn(fetch::fetch_missing(
                    hub.clone(),
                    project.to_string(),
                    author,
                ));
            }
        }
        Body::Update => hub.ensure_dialing(EndpointAddr::new(author)),
    }
}

async fn is_member(hub: &Arc<Hub>, project: &str, node: &str) -> bool {
    let (project, node) = (project.to_string(), node.to_string());
    hub.with_ctx(move |ctx| {
        ctx.doc(&project)
            .map(|p| members(&yrs::Transact::transact(&p.doc), &p.roots).contains(&node))
            .unwrap_or(false)
    })
    .await
}

/// A member's addresses: used for dialing now, and remembered for restarts.
pub(crate) async fn learned_addrs(hub: &Arc<Hub>, author: EndpointId, addrs: Vec<SocketAddr>) {
    let addr = hub.through_relay(peers::addr(author, &addrs));
    hub.book.add_endpoint_info(addr.clone());
    let record = peers::record(&addrs);
    let id = author.to_string();
    hub.with_ctx(move |ctx| {
        if let Ok(store) = ctx.store() {
            let _ = store.write(|w| w.put_peer(&id, &record));
        }
    })
    .await;
    hub.ensure_dialing(addr);
}

/// Signs `body` and broadcasts it on `project`'s topic (if joined).
pub async fn say(hub: &Hub, project: &str, body: Body) {
    let Some(sender) = hub.topic(project) else {
        return;
    };
    let payload = Payload {
        project: project.to_string(),
        author: hub.me.clone(),
        time_ms: crate::request::now_ms(),
        body,
    };
    match notice::encode(hub.endpoint.secret_key(), &payload) {
        Ok(bytes) => {
            if let Err(e) = sender.broadcast(bytes::Bytes::from(bytes)).await {
                tracing::debug!(%project, error = %e, "gossip broadcast failed");
            }
        }
        Err(e) => tracing::warn!(%project, error = %e, "notice not sent"),
    }
}

async fn say_where_we_are(hub: &Hub, project: &str) {
    let addrs: Vec<SocketAddr> = hub
        .endpoint
        .addr()
        .ip_addrs()
        .copied()
        .take(MAX_NOTICE_ADDRS)
        .collect();
    say(hub, project, Body::Addrs { addrs }).await;
}

/// Announces the project's stems held here; `again` repeats ones already
/// announced (for a new neighbor).
pub async fn announce_stems(hub: &Arc<Hub>, project: &str, again: bool) {
    let p = project.to_string();
    let referenced = hub.with_ctx(move |ctx| fetch::referenced(ctx, &p)).await;
    for hash in referenced {
        if !hub.blobs.blobs().has(hash).await.unwrap_or(false)
            || !(hub.mark_announced(project, hash) || again)
        {
            continue;
        }
        say(
            hub,
            project,
            Body::HaveBlob {
                hash: hash.to_hex(),
            },
        )
        .await;
    }
}

/// Follows the node's local change events: they are announced (at most
/// every [`UPDATE_NOTICE_EVERY`] per project: the notice only says "dial
/// me", connected members get every edit through sync anyway), and stems
/// an import, undo or redo brought are offered. Applied peer updates
/// (`sync`) are not announced again: their author did that, and fetched
/// stems are offered by the fetch itself.
pub async fn follow_changes(hub: Arc<Hub>) {
    let mut changes = hub.changes.subscribe();
    let mut last_notice: HashMap<String, Instant> = HashMap::new();
    loop {
        let change: Value = match changes.recv().await {
            Ok(c) => c,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        let Some(project) = change["project"].as_str() else {
            continue;
        };
        if change["op"] == "sync" {
            continue;
        }
        let due = last_notice
            .get(project)
            .is_none_or(|t| t.elapsed() >= UPDATE_NOTICE_EVERY);
        if due {
            last_notice.insert(project.to_string(), Instant::now());
            say(&hub, project, Body::Update).await;
        }
        if STEM_OPS.contains(&change["op"].as_str().unwrap_or_default()) {
            announce_stems(&hub, project, false).await;
        }
    }
}

/// Joins the topics of every project that has a secret; bootstraps from
/// the other members.
pub async fn join_all(hub: &Arc<Hub>) {
    let me = hub.me.clone();
    let projects: Vec<(String, [u8; 32], Vec<EndpointId>)> = hub
        .with_ctx(move |ctx| {
            let rows = ctx
                .store()
                .and_then(|s| Ok(s.projects()?))
                .unwrap_or_default();
            rows.into_iter()
                .filter_map(|row| {
                    let secret = crate::request::existing_secret(ctx, &row.id)?;
                    let p = ctx.doc(&row.id).ok()?;
                    let others = members(&yrs::Transact::transact(&p.doc), &p.roots)
                        .into_iter()
                        .filter(|m| *m != me)
                        .filter_map(|m| m.parse().ok());
                    Some((row.id, secret, others.collect()))
                })
                .collect()
        })
        .await;
    for (project, secret, bootstrap) in projects {
        join(hub.clone(), project, secret, bootstrap).await;
    }
}
