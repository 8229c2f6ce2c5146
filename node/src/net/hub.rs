//! What the network handlers share: the node's request context (the one
//! way to the database), the endpoint, who the members are, and the change
//! channel that makes live sessions push new state.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use iroh::Endpoint;
use iroh::endpoint::{AfterHandshakeOutcome, Connection, EndpointHooks};
use serde_json::Value;
use tokio::sync::broadcast;

use super::JOIN_ALPN;
use crate::project::doc::members;
use crate::request::Context;

/// QUIC close code for a peer that is not a member.
pub const NOT_A_MEMBER: u32 = 403;

pub struct Hub {
    pub ctx: Arc<Mutex<Context>>,
    pub endpoint: Endpoint,
    /// This node's id (hex).
    pub me: String,
    /// Union of all projects' member lists.
    pub members: Arc<RwLock<HashSet<String>>>,
    pub changes: broadcast::Sender<Value>,
    /// The stem store, served to members and filled from them.
    pub blobs: iroh_blobs::api::Store,
    /// Stems being downloaded now, so two sessions never fetch one twice.
    pub fetching: Mutex<HashSet<meshstudio_store::Hash>>,
    /// Live sync connections by peer id, for `status`.
    pub connections: Mutex<HashMap<String, Connection>>,
    /// Catch-up state of every live (project, peer) session, for `sync --wait`.
    pub sessions: Mutex<HashMap<(String, String), SessionProgress>>,
}

/// How far one project's session with one peer has got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionProgress {
    /// The peer's catch-up diff has been applied here.
    pub got_catch_up: bool,
    /// Our catch-up diff has been sent to the peer.
    pub sent_catch_up: bool,
}

impl Hub {
    /// Runs `f` with the locked context on a blocking thread.
    pub async fn with_ctx<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Context) -> T + Send + 'static,
    ) -> T {
        let ctx = self.ctx.clone();
        tokio::task::spawn_blocking(move || {
            let mut ctx = ctx.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut ctx)
        })
        .await
        .expect("context work does not panic")
    }

    pub fn progress(&self, project: &str, peer: &str, f: impl FnOnce(&mut SessionProgress)) {
        let mut all = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        f(all
            .entry((project.to_string(), peer.to_string()))
            .or_default());
    }

    pub fn session_ended(&self, project: &str, peer: &str) {
        let mut all = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        all.remove(&(project.to_string(), peer.to_string()));
    }

    /// Peers whose session on `project` has caught up both ways.
    pub fn caught_up(&self, project: &str) -> Vec<String> {
        let all = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .filter(|((p, _), s)| p == project && s.got_catch_up && s.sent_catch_up)
            .map(|((_, peer), _)| peer.clone())
            .collect()
    }

    pub fn connected(&self, peer: &str, conn: &Connection) {
        let mut live = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        live.insert(peer.to_string(), conn.clone());
    }

    pub fn disconnected(&self, peer: &str, conn: &Connection) {
        let mut live = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        if live
            .get(peer)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            live.remove(peer);
        }
    }

    /// Connected peers: id, address and round-trip time of the path in use,
    /// and whether that path is direct or through a relay.
    pub fn peer_report(&self) -> Vec<Value> {
        let live = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Value> = live
            .iter()
            .map(|(id, conn)| {
                let paths = conn.paths();
                let selected = paths.iter().find(|p| p.is_selected());
                serde_json::json!({
                    "id": id,
                    "connected": true,
                    "address": selected.as_ref().map(|p| format!("{:?}", p.remote_addr())),
                    "rtt_ms": selected.as_ref().map(|p| p.rtt().as_secs_f64() * 1000.0),
                    "path": selected.as_ref().map(|p| if p.is_relay() { "relay" } else { "direct" }),
                })
            })
            .collect();
        out.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        out
    }

    /// Re-reads every project's member list into the gate.
    pub async fn refresh_members(self: &Arc<Self>) {
        let set = self
            .with_ctx(|ctx| member_union(ctx).unwrap_or_default())
            .await;
        *self.members.write().unwrap_or_else(|p| p.into_inner()) = set;
    }
}

/// Every node that is a member of any project here.
pub fn member_union(ctx: &mut Context) -> Result<HashSet<String>, crate::request::RequestError> {
    let mut all = HashSet::new();
    for row in ctx.store()?.projects()? {
        let p = ctx.doc(&row.id)?;
        let txn = yrs::Transact::transact(&p.doc);
        all.extend(members(&txn, &p.roots));
    }
    Ok(all)
}

/// Admits members on every protocol and strangers only to the join
/// handshake (which checks the ticket's secret before anything else).
#[derive(Debug)]
pub struct Gate(pub Arc<RwLock<HashSet<String>>>);

impl EndpointHooks for Gate {
    async fn after_handshake(&self, conn: &Connection) -> AfterHandshakeOutcome {
        let peer = conn.remote_id().to_string();
        let member = self
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&peer);
        if member || conn.alpn() == JOIN_ALPN {
            AfterHandshakeOutcome::accept()
        } else {
            tracing::info!(%peer, "connection from a non-member refused");
            AfterHandshakeOutcome::Reject {
                error_code: NOT_A_MEMBER.into(),
                reason: b"not a member".to_vec(),
            }
        }
    }
}
