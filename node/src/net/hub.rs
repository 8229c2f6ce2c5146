//! What the network handlers share: the node's request context (the one
//! way to the database), the endpoint, who the members are, and the change
//! channel that makes live sessions push new state.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use iroh::address_lookup::MemoryLookup;
use iroh::endpoint::{AfterHandshakeOutcome, Connection, EndpointHooks};
use iroh::{Endpoint, EndpointAddr, EndpointId};
use iroh_gossip::api::GossipSender;
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
    /// Signalled whenever a stem fetch ends, arrived or not (for `sync
    /// --wait`, and rounds waiting for the stems the mix needs).
    pub stem_arrived: tokio::sync::Notify,
    /// One downloader (and its connection pool) for every fetch.
    pub downloader: iroh_blobs::api::downloader::Downloader,
    /// Stem bytes received since the node started.
    pub received: std::sync::atomic::AtomicU64,
    /// Live sync connections by peer id, for `status`.
    pub connections: Mutex<HashMap<String, Connection>>,
    /// Catch-up state of every live (project, peer) session, for `sync --wait`.
    pub sessions: Mutex<HashMap<(String, String), SessionProgress>>,
    pub gossip: iroh_gossip::Gossip,
    /// Addresses of members learned from tickets, gossip and memory, for
    /// dialing by id (sync, blobs, gossip).
    pub book: MemoryLookup,
    pub net: Mutex<NetState>,
    /// The relay this node uses (`up --relay`), if any: a community shares
    /// one, so every peer is also dialled through it.
    pub relay: Option<iroh::RelayUrl>,
    /// The node's download cap and peers' caps on stems (`rate_limit`).
    pub caps: super::rate_limit::Caps,
    /// Requests to the discovery plane, once it runs.
    pub discovery: std::sync::OnceLock<tokio::sync::mpsc::Sender<super::discovery::Command>>,
}

/// Who we talk to: joined topics, peers being dialed, stem providers.
#[derive(Default)]
pub struct NetState {
    topics: HashMap<String, GossipSender>,
    dialing: HashSet<EndpointId>,
    /// Time of the newest address notice heard from each member.
    addrs_time: HashMap<EndpointId, i64>,
    /// Members that said they hold a stem, newest first.
    providers: HashMap<meshstudio_store::Hash, Vec<EndpointId>>,
    announced: HashSet<(String, meshstudio_store::Hash)>,
    /// Stems the stems policy held back (each said once in the log).
    held_back: HashSet<meshstudio_store::Hash>,
    /// Stems being downloaded now (so two sessions never fetch one twice),
    /// with the bytes of each already here.
    fetching: HashMap<meshstudio_store::Hash, u64>,
    /// Stem bytes received per second, smoothed.
    rate: f64,
    /// `received` at the last rate tick.
    received_at_tick: u64,
}

/// How often the receive rate is measured, and how much each measurement
/// weighs against the ones before (exponential smoothing).
pub const RATE_TICK: std::time::Duration = std::time::Duration::from_secs(1);
const RATE_WEIGHT: f64 = 0.3;

/// Most providers remembered per stem.
const MAX_PROVIDERS: usize = 8;

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
    /// whether that path is direct or through a relay, and whether it looks
    /// like a LAN or a remote link (`policy::seen`; a `link:` mark wins).
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
                    "link": selected.as_ref().map(|p| seen_of(p)),
                    "stem_caps_kbps": id.parse().map(|id| self.caps.report(&id)).ok(),
                })
            })
            .collect();
        out.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        out
    }

    /// `true` if an address notice from `author` at `time_ms` is the newest
    /// yet (and remembers it as such).
    pub fn newer_addrs(&self, author: EndpointId, time_ms: i64) -> bool {
        let mut net = self.net_state();
        let newest = net.addrs_time.entry(author).or_insert(i64::MIN);
        let newer = time_ms > *newest;
        *newest = (*newest).max(time_ms);
        newer
    }

    /// Claims `hash` for downloading; `false` if a fetch already runs.
    pub fn start_fetch(&self, hash: meshstudio_store::Hash) -> bool {
        let mut net = self.net_state();
        if net.fetching.contains_key(&hash) {
            return false;
        }
        net.fetching.insert(hash, 0);
        true
    }

    /// A fetch of `hash` now has `present` bytes, `new` of them just received.
    pub fn fetch_progress(&self, hash: meshstudio_store::Hash, present: u64, new: u64) {
        self.received
            .fetch_add(new, std::sync::atomic::Ordering::Relaxed);
        self.net_state().fetching.insert(hash, present);
    }

    /// Bytes here of a stem being fetched (0 if none runs).
    pub fn partial_bytes(&self, hash: meshstudio_store::Hash) -> u64 {
        self.net_state().fetching.get(&hash).copied().unwrap_or(0)
    }

    /// Stem bytes received per second lately.
    pub fn receive_rate(&self) -> f64 {
        self.net_state().rate
    }

    /// Measures the receive rate every [`RATE_TICK`], for as long as the node runs.
    pub async fn measure_rate(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RATE_TICK);
        loop {
            tick.tick().await;
            let now = self.received.load(std::sync::atomic::Ordering::Relaxed);
            let mut net = self.net_state();
            let sample = (now - net.received_at_tick) as f64 / RATE_TICK.as_secs_f64();
            net.rate += RATE_WEIGHT * (sample - net.rate);
            net.received_at_tick = now;
        }
    }

    pub fn end_fetch(&self, hash: meshstudio_store::Hash) {
        self.net_state().fetching.remove(&hash);
        // Also when it failed: rounds waiting for it to end go on.
        self.stem_arrived.notify_waiters();
    }

    /// Whether a fetch of `hash` runs now (in any round).
    pub fn is_fetching(&self, hash: &meshstudio_store::Hash) -> bool {
        self.net_state().fetching.contains_key(hash)
    }

    fn net_state(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.net.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn topic(&self, project: &str) -> Option<GossipSender> {
        self.net_state().topics.get(project).cloned()
    }

    pub fn set_topic(&self, project: &str, sender: GossipSender) {
        self.net_state().topics.insert(project.to_string(), sender);
    }

    pub fn drop_topic(&self, project: &str) {
        self.net_state().topics.remove(project);
    }

    pub fn add_provider(&self, hash: meshstudio_store::Hash, peer: EndpointId) {
        let mut net = self.net_state();
        let list = net.providers.entry(hash).or_default();
        list.retain(|p| *p != peer);
        list.insert(0, peer);
        list.truncate(MAX_PROVIDERS);
    }

    /// Peers to fetch `hash` from: `first`, then members that announced it,
    /// then peers with a live session on `project`.
    pub fn providers(
        &self,
        project: &str,
        hash: meshstudio_store::Hash,
        first: EndpointId,
    ) -> Vec<EndpointId> {
        let mut out = vec![first];
        let announced = self.net_state().providers.get(&hash).cloned();
        out.extend(announced.unwrap_or_default());
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        out.extend(
            sessions
                .keys()
                .filter(|(p, _)| p == project)
                .filter_map(|(_, peer)| peer.parse::<EndpointId>().ok()),
        );
        let mut seen = HashSet::new();
        out.retain(|p| seen.insert(*p));
        out
    }

    /// `true` the first time the stems policy holds `hash` back.
    pub fn mark_held_back(&self, hash: meshstudio_store::Hash) -> bool {
        self.net_state().held_back.insert(hash)
    }

    /// `true` the first time `hash` is announced on `project`.
    pub fn mark_announced(&self, project: &str, hash: meshstudio_store::Hash) -> bool {
        self.net_state()
            .announced
            .insert((project.to_string(), hash))
    }

    /// Keeps a connection to `addr`'s node: dials it (with backoff, for as
    /// long as the node runs) unless that already happens — and then, if
    /// `addr` brings addresses and no connection is up, tries them once at
    /// once: the running dialer may be waiting out its backoff on addresses
    /// the peer has left.
    pub fn ensure_dialing(self: &Arc<Self>, addr: EndpointAddr) {
        let peer = addr.id.to_string();
        if peer == self.me {
            return;
        }
        let fresh = addr.ip_addrs().next().is_some();
        let addr = self.through_relay(addr);
        if addr.relay_urls().next().is_some() {
            self.book.add_endpoint_info(addr.clone());
        }
        if fresh {
            self.book.add_endpoint_info(addr.clone());
            let addrs = addr.ip_addrs().copied().collect();
            self.tell_discovery(super::discovery::Command::Known(addr.id, addrs));
        }
        if self.net_state().dialing.insert(addr.id) {
            tokio::spawn(super::sync::dial_forever(self.clone(), addr));
        } else if fresh && !self.is_connected(&peer) {
            let hub = self.clone();
            tokio::spawn(async move {
                if let Err(e) = super::sync::dial(hub, addr).await {
                    tracing::debug!(%peer, error = %e, "dial at new addresses failed");
                }
            });
        }
    }

    /// `addr` with our relay added (if we use one and it names none): a
    /// peer at a site behind NAT is reached there.
    pub fn through_relay(&self, addr: EndpointAddr) -> EndpointAddr {
        match &self.relay {
            Some(relay) if addr.relay_urls().next().is_none() => addr.with_relay_url(relay.clone()),
            _ => addr,
        }
    }

    /// Asks the discovery plane for something; dropped if it does not run
    /// or is busy (every request is repeated later by whoever made it).
    pub fn tell_discovery(&self, command: super::discovery::Command) {
        if let Some(tx) = self.discovery.get() {
            let _ = tx.try_send(command);
        }
    }

    /// How the link to `peer` looks now (`policy::seen`), if connected.
    pub fn link_seen(&self, peer: &str) -> Option<&'static str> {
        let live = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        seen_on(live.get(peer)?)
    }

    pub fn is_connected(&self, peer: &str) -> bool {
        let live = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        live.contains_key(peer)
    }

    /// Re-reads every project's member list into the gate.
    pub async fn refresh_members(self: &Arc<Self>) {
        let set = self
            .with_ctx(|ctx| member_union(ctx).unwrap_or_default())
            .await;
        *self.members.write().unwrap_or_else(|p| p.into_inner()) = set;
    }
}

/// How `conn`'s selected path looks: `lan` or `remote` (`policy::seen`).
pub fn seen_on(conn: &Connection) -> Option<&'static str> {
    let paths = conn.paths();
    paths.iter().find(|p| p.is_selected()).map(|p| seen_of(&p))
}

/// How a path looks: `lan` or `remote` (`policy::seen`).
fn seen_of(path: &iroh::endpoint::Path<'_>) -> &'static str {
    let ip = match path.remote_addr() {
        iroh::TransportAddr::Ip(addr) => Some(addr.ip()),
        _ => None,
    };
    super::policy::seen(path.is_relay(), ip)
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
