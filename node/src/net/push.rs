//! A joiner's first stems, sent unasked. The inviter starts them right
//! after the join's answer, over the join's own connection: a joiner that
//! had to ask first (it learns the stems' hashes from the state in the
//! answer) got its first stem byte a round trip later — on a 300 ms link,
//! 0.3 s of a 16 s transfer.
//!
//! The joiner asks for this (`send_stems` in its join request) only when
//! its stems policy lets stems over any link; the inviter sends only what
//! its own policy lets over the link the join came on, paced to the caps
//! of both sides, in download order (`fetch::in_priority`). After the
//! state, the join stream carries the list of hashes to come; then each
//! stem has a unidirectional stream of its own: its 32-byte hash, then
//! iroh-blobs' response to a request for the whole blob, BLAKE3-verified
//! by the joiner like any fetched stem. A stem that fails here is fetched
//! the usual way afterwards (`fetch::fetch_joined`).

use std::collections::HashSet;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use iroh::EndpointId;
use iroh::endpoint::{Connection, VarInt};
use iroh_blobs::protocol::GetRequest;
use iroh_blobs::provider::events::EventSender;
use iroh_blobs::util::{RecvStream, SendStream};
use meshstudio_store::{Hash, keep_stem};

use super::fetch::{self, follow};
use super::hub::{Hub, seen_on};
use super::policy::stems_allowed;
use super::rate_limit::{Pace, Way, peer_kbps, take_all};
use super::wire::MAX_PUSHED_STEMS;

/// Stream error code: the joiner does not take this stem (not a stem of
/// the project it joined, fetched already, or listed twice).
const NOT_WANTED: u32 = 1;
/// How long a joiner waits for the next listed stem's stream once the one
/// before it is in. The inviter opens it as soon as the previous stem is
/// written, so it comes with that stem's last bytes; the wait only bounds
/// an inviter that listed more than it sends.
const NEXT_STEM_WAIT: Duration = Duration::from_secs(60);

/// The stems of `project` the inviter sends `joiner` over `conn`: those it
/// holds, in download order, if its stems policy lets stems over this
/// link. Also sets the joiner's upload cap, as a request would.
pub async fn choose(
    hub: &Arc<Hub>,
    project: &str,
    joiner: EndpointId,
    conn: &Connection,
) -> Vec<Hash> {
    let seen = seen_on(conn);
    let (project, who) = (project.to_string(), joiner.to_string());
    let (allowed, cap, wanted) = hub
        .with_ctx(move |ctx| {
            let allowed = stems_allowed(ctx, &who, seen);
            let cap = peer_kbps(ctx, Way::Up, &who);
            (allowed, cap, fetch::wanted(ctx, &project))
        })
        .await;
    hub.caps.set(Way::Up, joiner, cap);
    if !allowed {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (hash, _) in wanted.into_iter().take(MAX_PUSHED_STEMS) {
        if hub.blobs.blobs().has(hash).await.unwrap_or(false) {
            out.push(hash);
        }
    }
    out
}

/// Sends each of `stems` on a stream of its own, in order: a stem is
/// handed to QUIC as soon as the receive window takes it, so several go
/// at once, and each goes ahead of those after it.
pub async fn send(hub: Arc<Hub>, conn: Connection, joiner: EndpointId, stems: Vec<Hash>) {
    for (place, hash) in (0..).zip(stems) {
        if let Err(e) = send_one(&hub, &conn, joiner, hash, -place).await {
            tracing::info!(%joiner, hash = %hash.fmt_short(), error = %e, "sending a stem unasked failed");
            if conn.close_reason().is_some() {
                return;
            }
        }
    }
}

async fn send_one(
    hub: &Hub,
    conn: &Connection,
    joiner: EndpointId,
    hash: Hash,
    priority: i32,
) -> Result<(), String> {
    let mut send = conn.open_uni().await.map_err(|e| e.to_string())?;
    send.set_priority(priority).map_err(|e| e.to_string())?;
    send.write_all(hash.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let writer = Paced {
        inner: send,
        paces: hub.caps.to(&joiner),
    };
    let pair = iroh_blobs::provider::StreamPair::new(
        conn.stable_id() as u64,
        Nothing,
        writer,
        EventSender::DEFAULT,
    );
    iroh_blobs::provider::handle_get(pair, hub.blobs.clone(), GetRequest::blob(hash))
        .await
        .map_err(|e| e.to_string())
}

/// Of the stems the inviter listed (`sent`), those the joiner takes: stems
/// the joined project uses (`used`) that are not here, each claimed
/// (`fetch::claim`) before any sync session could start a round that
/// fetched it again.
pub async fn take(hub: &Hub, used: &[Hash], sent: Vec<Hash>) -> Vec<Hash> {
    let mut taken = Vec::new();
    for hash in sent {
        if used.contains(&hash) && fetch::claim(hub, hash).await {
            taken.push(hash);
        }
    }
    taken
}

/// Takes in, as they come, the `streams` stems the inviter listed: those
/// in `taken` (each already marked as being fetched here; their marks
/// end here), the others stopped. Returns how many arrived whole and
/// verified.
pub async fn receive(
    hub: &Arc<Hub>,
    conn: &Connection,
    inviter: EndpointId,
    streams: usize,
    taken: &[Hash],
) -> usize {
    let mut left: HashSet<Hash> = taken.iter().copied().collect();
    let mut got = 0;
    // One stream per listed stem, whatever becomes of each.
    for _ in 0..streams {
        let next = tokio::time::timeout(NEXT_STEM_WAIT, conn.accept_uni()).await;
        let Ok(Ok(mut recv)) = next else { break };
        let mut hash = [0u8; 32];
        if recv.read_exact(&mut hash).await.is_err() {
            continue;
        }
        let hash = Hash::from(hash);
        if !left.remove(&hash) {
            recv.stop(NOT_WANTED.into()).ok();
            continue;
        }
        match receive_one(hub, conn, inviter, hash, recv).await {
            Ok(()) => {
                got += 1;
                let via = fetch::Via::Pushed;
                tracing::info!(hash = %hash.fmt_short(), ?via, "stem received");
            }
            Err(e) => {
                tracing::info!(%inviter, hash = %hash.fmt_short(), error = %e, "a stem sent unasked failed; it is fetched again")
            }
        }
        hub.end_fetch(hash);
    }
    for hash in left {
        hub.end_fetch(hash);
    }
    got
}

async fn receive_one(
    hub: &Hub,
    conn: &Connection,
    inviter: EndpointId,
    hash: Hash,
    recv: iroh::endpoint::RecvStream,
) -> Result<(), String> {
    let pair = iroh_blobs::get::StreamPair::new(conn.stable_id() as u64, recv, Nothing);
    // The whole blob is coming, so it is read as a whole: the joiner takes
    // only stems it neither holds nor is fetching (a part that another
    // project's interrupted fetch left here is simply written again).
    let progress = hub.blobs.remote().execute_get(pair, GetRequest::blob(hash));
    follow(hub, hash, inviter, 0, progress).await?;
    keep_stem(&hub.blobs, hash).await.map_err(|e| e.to_string())
}

/// The side of a stream pair that carries nothing: the request the inviter
/// answers was never sent (the join asked for it), so its reader is empty
/// and the joiner's writer drops what iroh-blobs would send.
struct Nothing;

impl RecvStream for Nothing {
    async fn recv_bytes(&mut self, _len: usize) -> io::Result<Bytes> {
        Ok(Bytes::new())
    }

    async fn recv_bytes_exact(&mut self, len: usize) -> io::Result<Bytes> {
        self.recv_exact(&mut vec![0; len])
            .await
            .map(|()| Bytes::new())
    }

    async fn recv_exact(&mut self, target: &mut [u8]) -> io::Result<()> {
        if target.is_empty() {
            Ok(())
        } else {
            Err(io::ErrorKind::UnexpectedEof.into())
        }
    }

    fn stop(&mut self, _code: VarInt) -> io::Result<()> {
        Ok(())
    }

    fn id(&self) -> u64 {
        0
    }
}

impl SendStream for Nothing {
    async fn send_bytes(&mut self, _bytes: Bytes) -> io::Result<()> {
        Ok(())
    }

    async fn send(&mut self, _buf: &[u8]) -> io::Result<()> {
        Ok(())
    }

    async fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn reset(&mut self, _code: VarInt) -> io::Result<()> {
        Ok(())
    }

    async fn stopped(&mut self) -> io::Result<Option<VarInt>> {
        Ok(None)
    }

    fn id(&self) -> u64 {
        0
    }
}

/// A stream whose writes wait for the joiner's paces first (its upload cap
/// here, the pace it asked for), as the blob gate holds a requested
/// stem's chunks.
struct Paced {
    inner: iroh::endpoint::SendStream,
    paces: Vec<Arc<Pace>>,
}

impl Paced {
    async fn wait(&self, bytes: usize) {
        take_all(&self.paces, bytes as u64).await;
    }
}

impl SendStream for Paced {
    async fn send_bytes(&mut self, bytes: Bytes) -> io::Result<()> {
        self.wait(bytes.len()).await;
        self.inner.send_bytes(bytes).await
    }

    async fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        self.wait(buf.len()).await;
        SendStream::send(&mut self.inner, buf).await
    }

    async fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn reset(&mut self, code: VarInt) -> io::Result<()> {
        SendStream::reset(&mut self.inner, code)
    }

    async fn stopped(&mut self) -> io::Result<Option<VarInt>> {
        SendStream::stopped(&mut self.inner).await
    }

    fn id(&self) -> u64 {
        SendStream::id(&self.inner)
    }
}
