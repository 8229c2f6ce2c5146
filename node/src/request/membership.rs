//! `invite` and `join`: how a laptop becomes a member of a project. Both
//! need the running node (its network endpoint). A join writes nothing
//! until the inviter has proved it knows the project's secret.

use serde_json::{Value, json};

use super::{Context, ProjectRecord, RequestError, Result, now_ms, project_secret, resolve};
use crate::net::hub::member_union;
use crate::net::policy::stems_allowed;
use crate::net::rate_limit::{Way, peer_kbps};
use crate::net::ticket::Ticket;
use crate::net::{fetch, gossip, join, peers, push, sync, wire};
use crate::project::ProjectDoc;

pub fn invite(ctx: &mut Context, project: &str) -> Result<Value> {
    let net = ctx.net("invite")?;
    let p = resolve::project(ctx.store()?, project)?;
    let secret = project_secret(ctx, &p.id)?;
    if let Some(hub) = net.hub.upgrade() {
        // Joiners will find us on the project's topic.
        net.runtime
            .spawn(gossip::join(hub, p.id.clone(), secret, Vec::new()));
    }
    let addrs: Vec<_> = net.endpoint.addr().ip_addrs().copied().collect();
    let ticket = Ticket {
        project: p.id.clone(),
        secret: data_encoding::HEXLOWER.encode(&secret),
        inviter: net.endpoint.id().to_string(),
        addrs,
        relay: our_relay(&net).map(|r| r.to_string()),
    };
    Ok(json!({ "project": p.id, "name": p.name(), "ticket": ticket.encode() }))
}

pub fn join(ctx: &mut Context, text: &str) -> Result<Value> {
    let net = ctx.net("join")?;
    let ticket = Ticket::decode(text).map_err(|e| RequestError::Invalid(e.to_string()))?;
    if ctx.store()?.project(&ticket.project)?.is_some() {
        return Err(RequestError::Invalid(format!(
            "already a member of {}",
            ticket.project
        )));
    }
    let me = ctx.node_id()?;
    let pace = net.hub.upgrade().and_then(|hub| {
        hub.caps
            .pace_to_ask(peer_kbps(ctx, Way::Down, &ticket.inviter))
    });
    // Stems now, unasked, only if the stems policy lets them over any
    // link: how this one runs (relayed? LAN?) is known once the session
    // is up, and then that session fetches them.
    let send_stems = stems_allowed(ctx, &ticket.inviter, Some("remote"));
    let asking = join::ask(
        &net.endpoint,
        &ticket,
        &me,
        our_relay(&net),
        pace,
        send_stems,
    );
    let joined = net
        .runtime
        .block_on(asking)
        .map_err(RequestError::Invalid)?;
    wire::decode_update(&joined.state)
        .map_err(|e| RequestError::Invalid(format!("the inviter sent {e}")))?;
    store_joined(ctx, &ticket, &joined.state)?;
    let p = ProjectDoc::load(ctx.store()?, &ticket.project)?;
    if let Some(hub) = net.hub.upgrade() {
        *hub.members.write().unwrap_or_else(|e| e.into_inner()) = member_union(ctx)?;
        let inviter = ticket.inviter.parse().expect("validated with the ticket");
        let used = fetch::referenced(ctx, &ticket.project);
        let listed = joined.sent.len();
        let taken = net.runtime.block_on(push::take(&hub, &used, joined.sent));
        let _runtime = net.runtime.enter();
        // Already connected (a member of another of its projects): the
        // connection's sessions were opened when it came up.
        net.runtime.spawn(sync::open_session(
            hub.clone(),
            ticket.inviter.clone(),
            ticket.project.clone(),
        ));
        let addr = peers::addr(inviter, &ticket.addrs);
        hub.ensure_dialing(match ticket.relay_url() {
            Some(relay) => addr.with_relay_url(relay),
            None => addr,
        });
        // The stems start now, from the inviter, over the join's own
        // connection, with the state just joined: no new handshake and no
        // waiting for the sync session's round trips (on a 300 ms link,
        // about a second).
        if send_stems {
            net.runtime.spawn(fetch::fetch_joined(
                hub.clone(),
                ticket.project.clone(),
                inviter,
                joined.conn,
                listed,
                taken,
            ));
        }
        let secret = ticket.secret_bytes();
        net.runtime.spawn(gossip::join(
            hub,
            ticket.project.clone(),
            secret,
            vec![inviter],
        ));
    }
    Ok(json!({ "project": ticket.project, "name": p.name(), "inviter": ticket.inviter }))
}

/// The project record (with the secret), its state, and the inviter as a
/// remembered peer — in one transaction.
fn store_joined(ctx: &mut Context, ticket: &Ticket, state: &[u8]) -> Result<()> {
    let record = ProjectRecord {
        created: now_ms(),
        secret: Some(ticket.secret.clone()),
    };
    let record = serde_json::to_vec(&record).expect("json");
    let peer = peers::record(&ticket.addrs);
    ctx.store()?.write(|w| {
        w.put_project(&ticket.project, &record)?;
        w.append_update(&ticket.project, state)?;
        w.put_peer(&ticket.inviter, &peer)
    })?;
    Ok(())
}

/// The relay this node uses, if any.
fn our_relay(net: &crate::request::NetHandle) -> Option<iroh::RelayUrl> {
    net.hub.upgrade().and_then(|h| h.relay.clone())
}
