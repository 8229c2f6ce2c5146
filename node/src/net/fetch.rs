//! Stems follow state: after a peer's update is applied, every blob the
//! project references and this node lacks is downloaded from that peer —
//! BLAKE3-verified, resumed from where a broken transfer stopped (the store
//! keeps partial data), never fetched twice, tagged so `gc` keeps it.

use std::sync::Arc;

use iroh::EndpointId;
use iroh::endpoint::Connection;
use meshstudio_store::{Hash, keep_stem};
use tokio_stream::StreamExt;

use super::hub::Hub;
use super::policy::stems_allowed;
use super::rate_limit::{Pace, Way, peer_kbps};
use crate::project::ProjectView;
use crate::project::view::TrackView;

/// A project's stems: hash and size (when the importer recorded it).
pub struct ProjectStems {
    pub id: String,
    pub name: String,
    pub stems: Vec<(Hash, Option<u64>)>,
}

/// The stems a project's clips use, each once: hash and recorded size.
fn stems_of(view: &ProjectView) -> Vec<(Hash, Option<u64>)> {
    let mut stems: Vec<(Hash, Option<u64>)> = view
        .tracks
        .iter()
        .flat_map(|t| &t.clips)
        .filter_map(|c| Some((c.blob.parse().ok()?, c.blob_bytes.map(|b| b as u64))))
        .collect();
    stems.sort_by_key(|(h, _)| *h);
    stems.dedup_by_key(|(h, _)| *h);
    stems
}

/// Which stems come first: those the song as mixed now needs, then the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// On an audible track (not muted; soloed, if any track is).
    Heard,
    /// On a muted (or not soloed) track.
    Silent,
}

/// The project's stems in download order: the ones the mix needs now before
/// the rest, and within each, the newest clips first — the take a site just
/// recorded is what the other site wants to hear. A clip's age comes from
/// its time-ordered (v7) id; older (v4) ids count as oldest.
pub fn in_priority(tracks: &[TrackView]) -> Vec<(Hash, Tier)> {
    let soloing = tracks.iter().any(|t| t.solo);
    let mut clips: Vec<(Tier, std::cmp::Reverse<u64>, Hash)> = Vec::new();
    for track in tracks {
        let heard = !track.mute && (!soloing || track.solo);
        let tier = if heard { Tier::Heard } else { Tier::Silent };
        for clip in &track.clips {
            let Ok(hash) = clip.blob.parse() else {
                continue;
            };
            clips.push((tier, std::cmp::Reverse(made_ms(&clip.id)), hash));
        }
    }
    clips.sort();
    let mut seen = std::collections::HashSet::new();
    clips
        .into_iter()
        .filter(|(_, _, hash)| seen.insert(*hash))
        .map(|(tier, _, hash)| (hash, tier))
        .collect()
}

/// When a clip was made, from its v7 id (0 for other ids).
fn made_ms(id: &str) -> u64 {
    uuid::Uuid::parse_str(id)
        .ok()
        .and_then(|u| u.get_timestamp())
        .map_or(0, |t| {
            let (secs, nanos) = t.to_unix();
            secs * 1000 + u64::from(nanos / 1_000_000)
        })
}

/// Every project's stems, for the status report.
pub fn all_stems(ctx: &mut crate::request::Context) -> Vec<ProjectStems> {
    let rows = ctx.store().and_then(|s| Ok(s.projects()?));
    let mut out = Vec::new();
    for row in rows.unwrap_or_default() {
        let Ok(p) = ctx.doc(&row.id) else { continue };
        let view = ProjectView::of(&p);
        out.push(ProjectStems {
            stems: stems_of(&view),
            id: row.id,
            name: view.name,
        });
    }
    out
}

/// What each project still lacks: stems missing, bytes to go (of the stems
/// whose size is known), the node's receive rate and the time left at it.
pub async fn sync_report(hub: &Hub, projects: Vec<ProjectStems>) -> Vec<serde_json::Value> {
    let rate = hub.receive_rate();
    let mut out = Vec::new();
    for p in projects {
        let (mut missing, mut to_go) = (0u64, 0u64);
        for (hash, bytes) in &p.stems {
            if hub.blobs.blobs().has(*hash).await.unwrap_or(false) {
                continue;
            }
            missing += 1;
            to_go += bytes.unwrap_or(0).saturating_sub(hub.partial_bytes(*hash));
        }
        let eta = (to_go > 0 && rate >= 1.0).then(|| (to_go as f64 / rate).ceil());
        out.push(serde_json::json!({
            "project": p.id,
            "name": p.name,
            "stems": p.stems.len(),
            "missing": missing,
            "bytes_to_go": to_go,
            "rate_bytes_per_s": rate.round(),
            "eta_seconds": eta,
        }));
    }
    out
}

/// Blobs `project` references, as far as they parse, in download order.
pub fn wanted(ctx: &mut crate::request::Context, project: &str) -> Vec<(Hash, Tier)> {
    ctx.doc(project)
        .map(|p| in_priority(&ProjectView::of(&p).tracks))
        .unwrap_or_default()
}

/// Blobs `project` references, as far as they parse.
pub fn referenced(ctx: &mut crate::request::Context, project: &str) -> Vec<Hash> {
    wanted(ctx, project)
        .into_iter()
        .map(|(hash, _)| hash)
        .collect()
}

/// Stems downloaded at once: enough to keep both ends' cores busy on a
/// fast link (one QUIC stream each, one connection per provider).
const FETCHES_AT_ONCE: usize = 4;

/// Downloads what `project` needs, asking `peer` first, in priority order
/// (`in_priority`): stems the mix does not need start only once the ones
/// it needs are here, so a slow link brings the audible song first.
pub async fn fetch_missing(hub: Arc<Hub>, project: String, peer: EndpointId) {
    fetch_round(hub, project, peer, None).await;
}

/// A joiner's first round over the join's own connection (`join.rs`),
/// which closes when the round ends: first the stems the inviter sends
/// unasked (`push`: `listed` streams, of which it takes `taken`, each
/// marked as being fetched before the join returned); then any it did not
/// send, or that failed, are asked for.
pub async fn fetch_joined(
    hub: Arc<Hub>,
    project: String,
    inviter: EndpointId,
    conn: Connection,
    listed: usize,
    taken: Vec<Hash>,
) {
    if super::push::receive(&hub, &conn, inviter, listed, &taken).await > 0 {
        super::gossip::announce_stems(&hub, &project, false).await;
    }
    fetch_round(hub, project, inviter, Some(conn.clone())).await;
    conn.close(0u32.into(), b"joined");
}

/// One round of `fetch_missing`; `via`, an open connection to `peer`,
/// carries the stems `peer` may send before the downloader is asked.
async fn fetch_round(hub: Arc<Hub>, project: String, peer: EndpointId, via: Option<Connection>) {
    let p = project.clone();
    let wanted = hub.with_ctx(move |ctx| wanted(ctx, &p)).await;
    let heard: Vec<Hash> = wanted
        .iter()
        .filter(|(_, tier)| *tier == Tier::Heard)
        .map(|(hash, _)| *hash)
        .collect();
    let mut running = tokio::task::JoinSet::new();
    let (mut got, mut heard_done) = (false, false);
    let mut policy = Verdicts::default();
    for (hash, tier) in wanted {
        if !claim(&hub, hash).await {
            continue; // here already, or another session is fetching it
        }
        if tier == Tier::Silent && !heard_done {
            // The mix's stems first: all of them here (or given up on, here
            // and in other rounds) before the rest start.
            while let Some(done) = running.join_next().await {
                got |= done.unwrap_or(false);
            }
            until_fetched(&hub, &heard).await;
            heard_done = true;
        }
        while running.len() >= FETCHES_AT_ONCE {
            got |= running
                .join_next()
                .await
                .is_some_and(|r| r.unwrap_or(false));
        }
        let providers =
            allowed_providers(&hub, hub.providers(&project, hash, peer), &mut policy).await;
        if providers.is_empty() {
            if hub.mark_held_back(hash) {
                tracing::info!(hash = %hash.fmt_short(), "stem held back: the stems policy keeps it off every link it is on");
            }
            hub.end_fetch(hash);
            continue;
        }
        let hub = hub.clone();
        let via = via.clone().filter(|_| providers.contains(&peer));
        running.spawn(async move {
            let result = match via {
                Some(conn) => fetch_over(&hub, hash, peer, conn, providers).await,
                None => fetch_one(&hub, hash, providers)
                    .await
                    .map(|()| Via::Downloader),
            };
            match &result {
                Ok(via) => tracing::info!(hash = %hash.fmt_short(), ?via, "stem received"),
                Err(e) => {
                    tracing::warn!(%peer, hash = %hash.fmt_short(), error = %e, "stem fetch failed")
                }
            }
            hub.end_fetch(hash);
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

/// Marks `hash` as being fetched by the caller, unless it is here already
/// or another round is fetching it.
pub async fn claim(hub: &Hub, hash: Hash) -> bool {
    !hub.blobs.blobs().has(hash).await.unwrap_or(false) && hub.start_fetch(hash)
}

/// Each provider's stems policy, read once per round, not once per stem.
type Verdicts = std::collections::HashMap<EndpointId, bool>;

/// The `candidates` the stems policy lets stems come from over the link
/// each is on; a provider not judged yet this round is judged now (and
/// its download cap set).
async fn allowed_providers(
    hub: &Arc<Hub>,
    candidates: Vec<EndpointId>,
    verdicts: &mut Verdicts,
) -> Vec<EndpointId> {
    let unknown: Vec<_> = candidates
        .iter()
        .filter(|p| !verdicts.contains_key(*p))
        .map(|p| (*p, hub.link_seen(&p.to_string())))
        .collect();
    if !unknown.is_empty() {
        let judged = hub
            .with_ctx(move |ctx| {
                let judge = |(p, seen): (EndpointId, Option<&str>)| {
                    let id = p.to_string();
                    let cap = peer_kbps(ctx, Way::Down, &id);
                    (p, stems_allowed(ctx, &id, seen), cap)
                };
                unknown.into_iter().map(judge).collect::<Vec<_>>()
            })
            .await;
        for (p, allowed, cap) in judged {
            verdicts.insert(p, allowed);
            hub.caps.set(Way::Down, p, cap);
        }
    }
    candidates.into_iter().filter(|p| verdicts[p]).collect()
}

/// How often a round waiting for other rounds' fetches looks again (their
/// end is also signalled; this bounds a missed signal).
const FETCH_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits until none of `hashes` is being fetched by any round.
async fn until_fetched(hub: &Hub, hashes: &[Hash]) {
    while hashes.iter().any(|h| hub.is_fetching(h)) {
        let _ = tokio::time::timeout(FETCH_POLL, hub.stem_arrived.notified()).await;
    }
}

/// Downloads `hash`, trying `providers` in turn; each resumes from what
/// is already here (verified), so a peer serving bad data costs only the
/// chunk that failed verification. The node's download cap and the
/// provider's hold each arriving chunk (`rate_limit`): the downloader stops
/// reading while they wait, and QUIC flow control holds the sender.
async fn fetch_one(hub: &Hub, hash: Hash, providers: Vec<EndpointId>) -> Result<(), String> {
    use iroh_blobs::api::downloader::DownloadProgressItem as Item;
    let download = hub.downloader.download(hash, providers);
    let mut items = download.stream().await.map_err(|e| e.to_string())?;
    // Progress is the bytes present; each provider's first report includes
    // what was here before it, which is not newly received.
    let mut last: Option<u64> = None;
    let mut provider_cap = None;
    while let Some(item) = items.next().await {
        match item {
            Item::TryProvider { id, .. } => {
                last = None;
                provider_cap = hub.caps.of(Way::Down, &id);
            }
            Item::Progress(present) => {
                let new = last.map_or(0, |l| present.saturating_sub(l));
                last = Some(present);
                arrived(hub, hash, present, new, provider_cap.as_deref()).await;
            }
            Item::Error(e) => return Err(e.to_string()),
            Item::DownloadError => return Err("no provider could send it".into()),
            Item::ProviderFailed { .. } | Item::PartComplete { .. } => {}
        }
    }
    keep_stem(&hub.blobs, hash).await.map_err(|e| e.to_string())
}

/// Counts `new` bytes of `hash` (`present` in all) and holds the transfer
/// for the node's download cap and the provider's.
async fn arrived(hub: &Hub, hash: Hash, present: u64, new: u64, provider_cap: Option<&Pace>) {
    hub.fetch_progress(hash, present, new);
    for pace in hub.caps.download.iter().chain(provider_cap) {
        pace.take(new).await;
    }
}

/// How a stem came (logged: the tests check that a joiner's stems use
/// the join's connection).
#[derive(Debug, Clone, Copy)]
pub enum Via {
    /// Sent unasked by the inviter right after the join (`push`).
    Pushed,
    JoinConnection,
    Downloader,
}

/// Downloads `hash` from `provider` over `conn`, resuming from what is
/// here; if that fails, `fetch_one` tries `providers` as usual.
async fn fetch_over(
    hub: &Hub,
    hash: Hash,
    provider: EndpointId,
    conn: Connection,
    providers: Vec<EndpointId>,
) -> Result<Via, String> {
    match get_over(hub, hash, provider, conn).await {
        Ok(()) => keep_stem(&hub.blobs, hash)
            .await
            .map(|()| Via::JoinConnection)
            .map_err(|e| e.to_string()),
        Err(e) => {
            tracing::info!(hash = %hash.fmt_short(), error = %e, "stem fetch over the join's connection failed; trying again");
            fetch_one(hub, hash, providers)
                .await
                .map(|()| Via::Downloader)
        }
    }
}

/// One request for `hash` over `conn`, counted and paced as the
/// downloader's progress is.
async fn get_over(
    hub: &Hub,
    hash: Hash,
    provider: EndpointId,
    conn: Connection,
) -> Result<(), String> {
    let remote = hub.blobs.remote();
    let here = remote
        .local(hash)
        .await
        .map_err(|e| e.to_string())?
        .local_bytes();
    follow(hub, hash, provider, here, remote.fetch(conn, hash)).await
}

/// Follows a transfer of `hash` from `provider` (`here` bytes of it were
/// here before) to its end: each new chunk counted and held for the
/// download caps.
pub async fn follow(
    hub: &Hub,
    hash: Hash,
    provider: EndpointId,
    here: u64,
    progress: iroh_blobs::api::remote::GetProgress,
) -> Result<(), String> {
    use iroh_blobs::api::remote::GetProgressItem as Item;
    let provider_cap = hub.caps.of(Way::Down, &provider);
    let mut items = std::pin::pin!(progress.stream());
    // Progress is the payload bytes this request has read so far.
    let mut read = 0;
    while let Some(item) = items.next().await {
        match item {
            Item::Progress(total) => {
                let new = total.saturating_sub(read);
                read = total;
                arrived(hub, hash, here + read, new, provider_cap.as_deref()).await;
            }
            Item::Done(_) => return Ok(()),
            Item::Error(e) => return Err(e.to_string()),
        }
    }
    Err("the transfer ended without a result".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::view::ClipView;

    fn clip(id: String, seed: u8) -> ClipView {
        ClipView {
            id,
            blob: Hash::from([seed; 32]).to_hex().to_string(),
            blob_bytes: None,
            channels: 2,
            master: None,
            start: 0,
            offset: 0,
            length: 48_000,
            gain_db: 0.0,
            fade_in: 0,
            fade_out: 0,
            source: String::new(),
        }
    }

    fn track(mute: bool, solo: bool, clips: Vec<ClipView>) -> TrackView {
        TrackView {
            id: String::new(),
            name: String::new(),
            order: 0.0,
            kind: "audio".into(),
            gain_db: 0.0,
            pan: 0.0,
            mute,
            solo,
            clips,
        }
    }

    fn v7(ms: u64) -> String {
        let ts =
            uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, (ms % 1000) as u32 * 1_000_000);
        uuid::Uuid::new_v7(ts).to_string()
    }

    fn order(tracks: &[TrackView]) -> Vec<(u8, Tier)> {
        in_priority(tracks)
            .into_iter()
            .map(|(h, t)| (h.as_bytes()[0], t))
            .collect()
    }

    #[test]
    fn the_mix_comes_first_and_the_newest_take_first_within_it() {
        let old = uuid::Uuid::new_v4().to_string();
        let tracks = vec![
            track(true, false, vec![clip(v7(5_000), 1)]),
            track(false, false, vec![clip(v7(1_000), 2), clip(old, 3)]),
            track(false, false, vec![clip(v7(9_000), 4), clip(v7(2_000), 2)]),
        ];
        assert_eq!(
            order(&tracks),
            vec![
                (4, Tier::Heard),
                (2, Tier::Heard), // used twice: once, at its best place
                (3, Tier::Heard), // an id without a time counts as oldest
                (1, Tier::Silent),
            ]
        );
    }

    #[test]
    fn a_solo_silences_the_other_tracks() {
        let tracks = vec![
            track(false, false, vec![clip(v7(9_000), 1)]),
            track(false, true, vec![clip(v7(1_000), 2)]),
        ];
        assert_eq!(order(&tracks), vec![(2, Tier::Heard), (1, Tier::Silent)]);
    }
}
