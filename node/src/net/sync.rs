//! `meshstudio/sync/1`: y-sync of project documents between members. One
//! bi-stream per shared project on a connection. Both sides first prove
//! they know the project's secret (bound to both authenticated ids), then
//! exchange state vectors and the diffs they imply — on every connection,
//! so a reconnect always catches up — and then push new updates live.
//!
//! Remote updates are checked (size, counts, panic boundary) and applied
//! with the `NET` origin; a peer that sends garbage is dropped and nothing
//! of it is applied or stored.

use std::sync::Arc;
use std::time::Duration;

use iroh::EndpointAddr;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use iroh::protocol::{AcceptError, ProtocolHandler};
use serde_json::json;
use tokio::sync::mpsc;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, StateVector, Transact};

use super::hub::Hub;
use super::proof::{self, Purpose};
use super::rate_limit::{Way, peer_kbps};
use super::wire::{self, HELLO, Hello, MAX_SYNC_FRAME_BYTES, STEP1, STEP2, UPDATE};
use super::{SYNC_ALPN, frame};
use crate::project::doc::{NET, members};
use crate::request::project_secret;

/// Frames read ahead of the session loop.
const FRAMES_IN_FLIGHT: usize = 16;
/// Redial backoff: first wait and ceiling. The ceiling bounds how long a
/// link that came back stays unused.
const REDIAL_FIRST: Duration = Duration::from_millis(500);
const REDIAL_MAX: Duration = Duration::from_secs(10);
/// A dial to a peer that is away fails after this instead of the QUIC
/// handshake timeout, so the next attempt comes sooner.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a session asks its peer again for stems still missing here
/// (the peer may have been fetching them itself: store-and-forward).
const STEM_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Frame(#[from] frame::FrameError),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("{0}")]
    Refused(String),
    #[error("connection: {0}")]
    Connection(String),
}

/// The handler mounted on the node's router.
#[derive(Debug, Clone)]
pub struct SyncProtocol(pub Arc<Hub>);

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl ProtocolHandler for SyncProtocol {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let peer = conn.remote_id().to_string();
        tracing::info!(%peer, "sync connection in");
        self.0.connected(&peer, &conn);
        let _ = accept_streams(self.0.clone(), conn.clone(), peer.clone()).await;
        self.0.disconnected(&peer, &conn);
        Ok(())
    }
}

/// The peer's hello, checked: a project we hold, the peer a member of it,
/// a valid proof. Returns the project's secret.
async fn check_hello(hub: &Arc<Hub>, peer: &str, hello: &Hello) -> Result<[u8; 32], SyncError> {
    let (project, peer_s) = (hello.project.clone(), peer.to_string());
    let secret = hub
        .with_ctx(move |ctx| -> Option<[u8; 32]> {
            let p = ctx.doc(&project).ok()?;
            let is_member = members(&p.doc.transact(), &p.roots).contains(&peer_s);
            is_member
                .then(|| project_secret(ctx, &project).ok())
                .flatten()
        })
        .await
        .ok_or_else(|| SyncError::Refused(format!("not a member of {}", hello.project)))?;
    if !proof::check(
        &hello.proof,
        &secret,
        Purpose::Sync,
        &hello.project,
        peer,
        &hub.me,
    ) {
        return Err(SyncError::Refused("wrong proof".into()));
    }
    Ok(secret)
}

async fn read_hello(recv: &mut RecvStream) -> Result<Hello, SyncError> {
    let f = frame::read(recv, wire::MAX_HELLO_BYTES)
        .await?
        .ok_or_else(|| SyncError::Connection("closed before hello".into()))?;
    match wire::split(&f)? {
        (HELLO, body) => Ok(wire::decode_hello(body)?),
        _ => Err(SyncError::Refused("expected hello".into())),
    }
}

async fn send_hello(
    hub: &Arc<Hub>,
    send: &mut SendStream,
    secret: &[u8; 32],
    project: &str,
    peer: &str,
) -> Result<(), SyncError> {
    let proof = proof::make(secret, Purpose::Sync, project, &hub.me, peer);
    let peer_s = peer.to_string();
    let own = hub
        .with_ctx(move |ctx| peer_kbps(ctx, Way::Down, &peer_s))
        .await;
    let hello = serde_json::to_vec(&Hello {
        project: project.into(),
        proof,
        pace_kbps: hub.caps.pace_to_ask(own),
    })
    .expect("json");
    Ok(frame::write(send, &wire::frame(HELLO, &hello)).await?)
}

async fn accept_stream(
    hub: Arc<Hub>,
    peer: &str,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), SyncError> {
    let hello = read_hello(&mut recv).await?;
    let secret = check_hello(&hub, peer, &hello).await?;
    hub.caps.asked(peer, hello.pace_kbps);
    send_hello(&hub, &mut send, &secret, &hello.project, peer).await?;
    session(hub, hello.project, peer.to_string(), send, recv, false).await
}

/// Dials `addr` and syncs every project both sides are members of, until
/// the connection ends.
pub async fn dial(hub: Arc<Hub>, addr: EndpointAddr) -> Result<(), SyncError> {
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, hub.endpoint.connect(addr, SYNC_ALPN))
        .await
        .map_err(|_| SyncError::Connection("timed out".into()))?
        .map_err(|e| SyncError::Connection(e.to_string()))?;
    let peer = conn.remote_id().to_string();
    tracing::info!(%peer, "sync connection out");
    hub.connected(&peer, &conn);
    let result = run_dialed(&hub, &conn, &peer).await;
    hub.disconnected(&peer, &conn);
    conn.close(0u32.into(), b"done");
    result
}

/// The dialer's side of a connection: a session per shared project, and
/// those the peer opens on it later (a project one of us joined since).
async fn run_dialed(hub: &Arc<Hub>, conn: &Connection, peer: &str) -> Result<(), SyncError> {
    let peer = peer.to_string();
    let peer_s = peer.clone();
    let shared: Vec<(String, [u8; 32])> =
        hub.with_ctx(move |ctx| shared_projects(ctx, &peer_s)).await;
    let mut sessions = tokio::task::JoinSet::new();
    for (project, secret) in shared {
        let (send, recv) = open_stream(hub, conn, &peer, &project, &secret).await?;
        sessions.spawn(session(
            hub.clone(),
            project,
            peer.clone(),
            send,
            recv,
            true,
        ));
    }
    sessions.spawn(accept_streams(hub.clone(), conn.clone(), peer.clone()));
    while let Some(done) = sessions.join_next().await {
        if let Ok(Err(e)) = done {
            tracing::warn!(%peer, error = %e, "sync session ended");
        }
    }
    Ok(())
}

/// Sessions `peer` opens on `conn`, until it closes.
async fn accept_streams(hub: Arc<Hub>, conn: Connection, peer: String) -> Result<(), SyncError> {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (hub, peer) = (hub.clone(), peer.clone());
        tokio::spawn(async move {
            if let Err(e) = accept_stream(hub, &peer, send, recv).await {
                tracing::warn!(%peer, error = %e, "sync session ended");
            }
        });
    }
    Ok(())
}

/// Opens `project`'s stream on `conn`: hellos both ways, the peer's proof
/// checked.
async fn open_stream(
    hub: &Arc<Hub>,
    conn: &Connection,
    peer: &str,
    project: &str,
    secret: &[u8; 32],
) -> Result<(SendStream, RecvStream), SyncError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| SyncError::Connection(e.to_string()))?;
    send_hello(hub, &mut send, secret, project, peer).await?;
    let hello = read_hello(&mut recv).await?;
    if hello.project != project
        || !proof::check(&hello.proof, secret, Purpose::Sync, project, peer, &hub.me)
    {
        return Err(SyncError::Refused(
            "the peer could not prove membership".into(),
        ));
    }
    hub.caps.asked(peer, hello.pace_kbps);
    Ok((send, recv))
}

/// Starts `project`'s session with `peer` on the connection already up
/// between us, if one is: a project joined while connected (the
/// connection's sessions were opened when it came up).
pub async fn open_session(hub: Arc<Hub>, peer: String, project: String) {
    let conn = hub
        .connections
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&peer)
        .cloned();
    let Some(conn) = conn else {
        return; // the dialer will open it with the others
    };
    let p = project.clone();
    let secret = hub.with_ctx(move |ctx| project_secret(ctx, &p).ok()).await;
    let Some(secret) = secret else { return };
    let opened = open_stream(&hub, &conn, &peer, &project, &secret).await;
    let result = match opened {
        Ok((send, recv)) => session(hub, project, peer.clone(), send, recv, true).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::warn!(%peer, error = %e, "sync session ended");
    }
}

fn apply_and_store(
    ctx: &mut crate::request::Context,
    project: &str,
    update: yrs::Update,
    bytes: &[u8],
) -> Result<Option<serde_json::Value>, SyncError> {
    let refused = |e: crate::request::RequestError| SyncError::Refused(e.to_string());
    let p = ctx.doc(project).map_err(refused)?;
    let before = p.doc.transact().state_vector();
    let mut applied = Ok(());
    wire::guarded_apply(|| {
        applied = p.doc.transact_mut_with(NET).apply_update(update);
        applied.is_ok()
    })?;
    let after = p.doc.transact().state_vector();
    if before == after && !p.doc.transact().has_missing_updates() {
        return Ok(None);
    }
    let store = ctx.store().map_err(refused)?;
    let seq = store
        .write(|w| w.append_update(project, bytes))
        .map_err(|e| SyncError::Refused(e.to_string()))?;
    ctx.doc_wrote(project, seq);
    Ok(Some(p.clocks()))
}

/// Projects here that `peer` is a member of, with their secrets.
fn shared_projects(ctx: &mut crate::request::Context, peer: &str) -> Vec<(String, [u8; 32])> {
    let Ok(rows) = ctx.store().and_then(|s| Ok(s.projects()?)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for row in rows {
        let Ok(p) = ctx.doc(&row.id) else {
            continue;
        };
        let is_member = members(&p.doc.transact(), &p.roots)
            .iter()
            .any(|m| m == peer);
        // Only shared projects: asking for a secret may create one.
        if let Some(secret) = is_member
            .then(|| project_secret(ctx, &row.id).ok())
            .flatten()
        {
            out.push((row.id, secret));
        }
    }
    out
}

/// Keeps dialing `addr` with backoff, so sync resumes by itself when a
/// link comes back.
pub async fn dial_forever(hub: Arc<Hub>, addr: EndpointAddr) {
    let mut wait = REDIAL_FIRST;
    let peer = addr.id.to_string();
    loop {
        // The peer may have dialed us: one connection is enough.
        if hub.is_connected(&peer) {
            wait = REDIAL_FIRST;
        } else {
            match dial(hub.clone(), addr.clone()).await {
                Ok(()) => wait = REDIAL_FIRST,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "sync dial failed");
                    // It may have moved: ask the address book where it is now.
                    hub.tell_discovery(super::discovery::Command::LookUp(addr.id));
                }
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(REDIAL_MAX);
    }
}

/// One project's sync on one stream: catch up, then push and pull live.
/// `dialed`: this side opened the stream.
async fn session(
    hub: Arc<Hub>,
    project: String,
    peer: String,
    mut send: SendStream,
    recv: RecvStream,
    dialed: bool,
) -> Result<(), SyncError> {
    let mut changes = hub.changes.subscribe();
    let mut frames = spawn_reader(recv);
    // A sync partner is a gossip neighbor too. The opener says so: its
    // gossip connection makes us neighbors on both sides. Both saying so
    // raced into two gossip connections (each dialing before the other's
    // arrived), and the second one's handshake and hole punching took
    // ~20 KB from a joiner's first stems on a 1 Mbit/s link.
    if let (true, Some(topic), Ok(id)) = (dialed, hub.topic(&project), peer.parse()) {
        let _ = topic.join_peers(vec![id]).await;
    }
    let sv = our_state_vector(&hub, &project).await;
    frame::write(&mut send, &wire::frame(STEP1, &sv.encode_v1())).await?;
    let mut peer_sv: Option<StateVector> = None;
    let result = session_loop(
        &hub,
        &project,
        &peer,
        &mut send,
        &mut frames,
        &mut changes,
        &mut peer_sv,
    )
    .await;
    hub.session_ended(&project, &peer);
    result
}

async fn session_loop(
    hub: &Arc<Hub>,
    project: &str,
    peer: &str,
    send: &mut SendStream,
    frames: &mut mpsc::Receiver<Result<Vec<u8>, SyncError>>,
    changes: &mut tokio::sync::broadcast::Receiver<serde_json::Value>,
    peer_sv: &mut Option<StateVector>,
) -> Result<(), SyncError> {
    let mut retry = tokio::time::interval(STEM_RETRY);
    loop {
        tokio::select! {
            _ = retry.tick() => {
                if let Ok(id) = peer.parse() {
                    tokio::spawn(super::fetch::fetch_missing(hub.clone(), project.to_string(), id));
                }
            }
            f = frames.recv() => {
                let Some(f) = f else { return Ok(()) };
                handle(hub, project, peer, send, peer_sv, f?).await?;
            }
            change = changes.recv() => {
                let concerns_us = change.as_ref().map_or(true, |c| c["project"] == project);
                if let (true, Some(sv)) = (concerns_us, peer_sv.as_mut()) {
                    push(hub, project, send, sv).await?;
                }
            }
        }
    }
}

/// Reads frames on a task of its own (a frame read is not cancel-safe).
fn spawn_reader(mut recv: RecvStream) -> mpsc::Receiver<Result<Vec<u8>, SyncError>> {
    let (tx, rx) = mpsc::channel(FRAMES_IN_FLIGHT);
    tokio::spawn(async move {
        loop {
            let next = frame::read(&mut recv, MAX_SYNC_FRAME_BYTES).await;
            let stop = !matches!(next, Ok(Some(_)));
            let sent = match next {
                Ok(Some(f)) => tx.send(Ok(f)).await,
                Ok(None) => return,
                Err(e) => tx.send(Err(e.into())).await,
            };
            if stop || sent.is_err() {
                return;
            }
        }
    });
    rx
}

async fn handle(
    hub: &Arc<Hub>,
    project: &str,
    peer: &str,
    send: &mut SendStream,
    peer_sv: &mut Option<StateVector>,
    f: Vec<u8>,
) -> Result<(), SyncError> {
    match wire::split(&f)? {
        (STEP1, body) => {
            let sv = wire::decode_state_vector(body)?;
            let (diff, ours) = diff_for(hub, project, &sv).await;
            frame::write(send, &wire::frame(STEP2, &diff)).await?;
            // The peer now has what we had when the diff was made.
            *peer_sv = Some(ours);
            hub.progress(project, peer, |s| s.sent_catch_up = true);
        }
        (kind @ (STEP2 | UPDATE), body) => {
            let clocks = apply_remote(hub, project, body.to_vec()).await?;
            let applied = clocks.is_some();
            if kind == STEP2 {
                hub.progress(project, peer, |s| s.got_catch_up = true);
            }
            if let Some(clocks) = clocks {
                let change =
                    json!({ "op": "sync", "project": project, "from": peer, "clocks": clocks });
                let _ = hub.changes.send(change);
            }
            // After the catch-up, and whenever new state arrives, get its stems.
            if let (true, Ok(id)) = (applied || kind == STEP2, peer.parse()) {
                tokio::spawn(super::fetch::fetch_missing(
                    hub.clone(),
                    project.to_string(),
                    id,
                ));
            }
        }
        _ => return Err(SyncError::Refused("unexpected message".into())),
    }
    Ok(())
}

/// Sends the peer what it lacks, if anything.
async fn push(
    hub: &Arc<Hub>,
    project: &str,
    send: &mut SendStream,
    peer_sv: &mut StateVector,
) -> Result<(), SyncError> {
    let (diff, ours) = diff_for(hub, project, peer_sv).await;
    if diff != [0, 0] {
        frame::write(send, &wire::frame(UPDATE, &diff)).await?;
    }
    *peer_sv = ours;
    Ok(())
}

async fn our_state_vector(hub: &Arc<Hub>, project: &str) -> StateVector {
    let project = project.to_string();
    hub.with_ctx(move |ctx| {
        let p = ctx.doc(&project).ok()?;
        let sv = p.doc.transact().state_vector();
        Some(sv)
    })
    .await
    .unwrap_or_default()
}

/// What a peer at `sv` lacks, and our state vector that diff brings it to
/// — read together, so an update arriving in between is not assumed sent.
async fn diff_for(hub: &Arc<Hub>, project: &str, sv: &StateVector) -> (Vec<u8>, StateVector) {
    let (project, peer_sv) = (project.to_string(), sv.clone());
    hub.with_ctx(move |ctx| {
        let p = ctx.doc(&project).ok()?;
        let txn = p.doc.transact();
        Some((txn.encode_state_as_update_v1(&peer_sv), txn.state_vector()))
    })
    .await
    .unwrap_or_else(|| (vec![0, 0], sv.clone()))
}

/// Applies a peer's update and stores it; the document's clocks after it,
/// or `None` if it changed nothing.
async fn apply_remote(
    hub: &Arc<Hub>,
    project: &str,
    bytes: Vec<u8>,
) -> Result<Option<serde_json::Value>, SyncError> {
    let update = wire::decode_update(&bytes)?;
    let project = project.to_string();
    let applied = hub
        .with_ctx(move |ctx| {
            let result = apply_and_store(ctx, &project, update, &bytes);
            if result.is_err() {
                // The cached document may hold what the database does not.
                ctx.forget_doc(&project);
            }
            result
        })
        .await?;
    if applied.is_some() {
        hub.refresh_members().await;
    }
    Ok(applied)
}
