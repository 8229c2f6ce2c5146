//! `meshstudio/join/1`: a laptop with an invite ticket becomes a member.
//! The joiner proves it holds the ticket's secret (bound to both node ids);
//! the inviter checks that before anything else, adds the joiner to the
//! project's members and answers with its own proof and the project state.
//! The joiner checks the inviter's proof before writing anything.
//!
//! An admitted joiner gets its first stems over this very connection: sent
//! unasked right after the answer when it asked for that (`push`), else
//! fetched with iroh-blobs' protocol, judged by the blob gate like any
//! other request. Either way the first stem byte comes sooner than over a
//! new connection, whose handshake could only start once the state had
//! named the stems.

use std::sync::Arc;

use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};
use serde::{Deserialize, Serialize};

use super::hub::Hub;
use super::proof::{self, Purpose};
use super::ticket::Ticket;
use super::wire::{
    MAX_HELLO_BYTES, MAX_PUSH_LIST_BYTES, MAX_SYNC_FRAME_BYTES, decode_hashes, encode_hashes,
};
use super::{JOIN_ALPN, frame, push};
use crate::project::ProjectDoc;
use crate::project::doc::add_member;
use crate::request::{Context, now_ms, project_secret};
use meshstudio_store::Hash;

#[derive(Debug, Serialize, Deserialize)]
struct JoinAsk {
    project: String,
    proof: String,
    /// The pace the joiner's download caps allow from the inviter (kbit/s):
    /// the first stems come over this connection, before any sync hello
    /// could ask for it.
    #[serde(default)]
    pace_kbps: Option<u32>,
    /// Send the stems now, unasked (`push`): the joiner's stems policy lets
    /// them over any link. Older joiners ask for each.
    #[serde(default)]
    send_stems: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct JoinAnswer {
    ok: bool,
    proof: String,
    error: String,
}

/// The inviter's side, mounted on the node's router: the hub, and the
/// node's blobs protocol (with its gate) that serves an admitted joiner.
#[derive(Debug, Clone)]
pub struct JoinProtocol {
    pub hub: Arc<Hub>,
    pub blobs: iroh_blobs::BlobsProtocol,
}

impl ProtocolHandler for JoinProtocol {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let peer = conn.remote_id().to_string();
        let (mut send, mut recv) = conn.accept_bi().await?;
        let ask = frame::read(&mut recv, MAX_HELLO_BYTES)
            .await
            .map_err(AcceptError::from_err)?
            .and_then(|f| serde_json::from_slice::<JoinAsk>(&f).ok());
        let pace = ask.as_ref().and_then(|a| a.pace_kbps);
        let send_stems = ask.as_ref().is_some_and(|a| a.send_stems);
        let project = ask.as_ref().map(|a| a.project.clone()).unwrap_or_default();
        let (answer, state) = match ask {
            Some(ask) => admit(&self.hub, &peer, ask).await,
            None => (refusal("malformed join request"), Vec::new()),
        };
        tracing::info!(%peer, ok = answer.ok, "join request");
        let bytes = serde_json::to_vec(&answer).expect("json");
        frame::write(&mut send, &bytes)
            .await
            .map_err(AcceptError::from_err)?;
        frame::write(&mut send, &state)
            .await
            .map_err(AcceptError::from_err)?;
        if answer.ok {
            // Before any stem goes: the pace applies to the first.
            self.hub.caps.asked(&peer, pace);
        }
        if answer.ok && send_stems {
            let joiner = conn.remote_id();
            let stems = push::choose(&self.hub, &project, joiner, &conn).await;
            let list: Vec<[u8; 32]> = stems.iter().map(|h| *h.as_bytes()).collect();
            frame::write(&mut send, &encode_hashes(&list))
                .await
                .map_err(AcceptError::from_err)?;
            tokio::spawn(push::send(self.hub.clone(), conn.clone(), joiner, stems));
        }
        send.finish().map_err(AcceptError::from_err)?;
        if answer.ok {
            // Stems it asks for (those not sent, or that failed) come
            // through the blobs protocol on this connection.
            return self.blobs.accept(conn).await;
        }
        conn.closed().await;
        Ok(())
    }
}

fn refusal(why: &str) -> JoinAnswer {
    JoinAnswer {
        ok: false,
        proof: String::new(),
        error: why.to_string(),
    }
}

/// Checks the joiner's proof; if good, adds it to the members and returns
/// the welcome and the full project state.
async fn admit(hub: &Arc<Hub>, joiner: &str, ask: JoinAsk) -> (JoinAnswer, Vec<u8>) {
    let (me, joiner) = (hub.me.clone(), joiner.to_string());
    let project = ask.project.clone();
    let out = hub
        .with_ctx(move |ctx| -> Result<(JoinAnswer, Vec<u8>), String> {
            let store = ctx.store().map_err(|e| e.to_string())?;
            if store
                .project(&ask.project)
                .map_err(|e| e.to_string())?
                .is_none()
            {
                return Err("no such project here".into());
            }
            let secret = project_secret(ctx, &ask.project).map_err(|e| e.to_string())?;
            if !proof::check(
                &ask.proof,
                &secret,
                Purpose::Join,
                &ask.project,
                &joiner,
                &me,
            ) {
                return Err("the ticket's secret is wrong".into());
            }
            let state = add_and_share(ctx, &ask.project, &joiner, &me)?;
            let welcome = proof::make(&secret, Purpose::Welcome, &ask.project, &me, &joiner);
            Ok((
                JoinAnswer {
                    ok: true,
                    proof: welcome,
                    error: String::new(),
                },
                state,
            ))
        })
        .await;
    hub.refresh_members().await;
    if out.is_ok() {
        // The member list changed: live sessions pass it on to the others.
        let _ = hub
            .changes
            .send(serde_json::json!({ "op": "join", "project": project }));
    }
    out.unwrap_or_else(|why| (refusal(&why), Vec::new()))
}

/// Adds `joiner` to the project's members (persisted) and returns the state.
fn add_and_share(
    ctx: &mut Context,
    project: &str,
    joiner: &str,
    me: &str,
) -> Result<Vec<u8>, String> {
    let store = ctx.store().map_err(|e| e.to_string())?;
    let p = ProjectDoc::load(store, project).map_err(|e| e.to_string())?;
    let (_, update) = p.edit(|txn, roots| add_member(txn, roots, joiner, me, now_ms()));
    store
        .write(|w| w.append_update(project, &update).map(|_| ()))
        .map_err(|e| e.to_string())?;
    Ok(p.full_state())
}

/// What an admitted joiner takes away: the project state, the open
/// connection (for the first stems; closing it ends the join) and the
/// stems the inviter is sending on it unasked, in order.
pub struct Joined {
    pub state: Vec<u8>,
    pub conn: Connection,
    pub sent: Vec<Hash>,
}

/// The joiner's side: asks the inviter (for the stems at most `pace_kbps`:
/// `Caps::pace_to_ask`; sent unasked if `send_stems`), checks its proof.
/// Writes nothing.
pub async fn ask(
    endpoint: &iroh::Endpoint,
    ticket: &Ticket,
    me: &str,
    our_relay: Option<iroh::RelayUrl>,
    pace_kbps: Option<u32>,
    send_stems: bool,
) -> Result<Joined, String> {
    let inviter: iroh::EndpointId = ticket
        .inviter
        .parse()
        .map_err(|_| "bad inviter id".to_string())?;
    let mut addr = super::peers::addr(inviter, &ticket.addrs);
    // The ticket's relay, else ours: a community shares one.
    if let Some(relay) = ticket.relay_url().or(our_relay) {
        addr = addr.with_relay_url(relay);
    }
    let conn = endpoint
        .connect(addr, JOIN_ALPN)
        .await
        .map_err(|e| format!("cannot reach the inviter: {e}"))?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let secret = ticket.secret_bytes();
    let proof = proof::make(&secret, Purpose::Join, &ticket.project, me, &ticket.inviter);
    let ask = serde_json::to_vec(&JoinAsk {
        project: ticket.project.clone(),
        proof,
        pace_kbps,
        send_stems,
    })
    .expect("json");
    frame::write(&mut send, &ask)
        .await
        .map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let answer = frame::read(&mut recv, MAX_HELLO_BYTES)
        .await
        .map_err(|e| e.to_string())?;
    let answer: JoinAnswer = answer
        .and_then(|a| serde_json::from_slice(&a).ok())
        .ok_or("the inviter sent no answer")?;
    if !answer.ok {
        return Err(format!("the inviter refused: {}", answer.error));
    }
    let genuine = proof::check(
        &answer.proof,
        &secret,
        Purpose::Welcome,
        &ticket.project,
        &ticket.inviter,
        me,
    );
    if !genuine {
        return Err("the inviter could not prove it knows the project secret".into());
    }
    let state = frame::read(&mut recv, MAX_SYNC_FRAME_BYTES)
        .await
        .map_err(|e| e.to_string())?;
    let state = state.ok_or("the inviter sent no project state")?;
    let sent = if send_stems {
        read_sent(&mut recv).await?
    } else {
        Vec::new()
    };
    Ok(Joined { state, conn, sent })
}

/// The list of stems the inviter sends unasked; none from an inviter that
/// does not (an older one ends the stream after the state).
async fn read_sent(recv: &mut iroh::endpoint::RecvStream) -> Result<Vec<Hash>, String> {
    let list = frame::read(recv, MAX_PUSH_LIST_BYTES)
        .await
        .map_err(|e| e.to_string())?;
    let hashes =
        decode_hashes(&list.unwrap_or_default()).map_err(|e| format!("the inviter sent {e}"))?;
    Ok(hashes.into_iter().map(Hash::from).collect())
}
