//! `meshstudio up`: open everything, bind the network endpoint and the
//! local API, run until Ctrl-C or SIGTERM, then close everything in order
//! so nothing is lost.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use iroh::endpoint::presets;
use iroh::{Endpoint, RelayMode, RelayUrl, SecretKey};
use iroh_blobs::api::downloader::Downloader;
use meshstudio_store::{StoreError, init_identity};

use super::api::{ApiState, router};
use super::info::{self, NodeInfo};
use super::logging;
use crate::net::hub::{Gate, Hub, member_union};
use crate::net::join::JoinProtocol;
use crate::net::sync::SyncProtocol;
use crate::net::{JOIN_ALPN, SYNC_ALPN};
use crate::net::{blob_gate, discovery, gossip, peers};
use crate::request::{Context, NetHandle, RequestError};

/// The API's usual address; taken → a free port (several nodes on one machine).
pub const DEFAULT_API: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 7878);
/// Where the endpoint listens unless `--bind` says otherwise: every
/// interface, a port the OS picks.
const DEFAULT_BIND: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
/// Worker threads of the node's runtime (requests run on blocking threads).
const RUNTIME_THREADS: usize = 2;

#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// Where the network endpoint listens.
    pub bind: Option<SocketAddr>,
    /// Where the local API listens; `None` = 127.0.0.1:7878 or a free port.
    pub api: Option<SocketAddr>,
    /// A self-hosted relay; none by default (offline is the normal case).
    pub relay: Option<RelayUrl>,
    /// No LAN discovery (mDNS).
    pub no_discovery: bool,
    /// The most the node sends, all peers together, in kbit/s.
    pub max_upload_kbps: Option<u32>,
    /// The most stem bytes the node takes in, all peers together, in kbit/s.
    pub max_download_kbps: Option<u32>,
}

pub fn up(data_dir: &Path, opts: UpOptions) -> Result<(), String> {
    let (secret, _) = init_identity(data_dir).map_err(|e| e.to_string())?;
    let mut ctx = Context::new(data_dir.to_path_buf());
    match ctx.store() {
        Err(RequestError::Store(StoreError::Locked { .. })) => {
            return Err(already_running(data_dir));
        }
        Err(e) => return Err(e.to_string()),
        Ok(_) => {}
    }
    let _log = logging::init(data_dir)?;
    // A take a crash interrupted becomes a clip before anything syncs.
    match crate::request::record::recover(&mut ctx) {
        Ok(takes) => {
            for t in takes {
                let line = crate::request::record::recovered_line(&t);
                tracing::info!("{line}");
                eprintln!("meshstudio: {line}");
            }
        }
        Err(e) => tracing::warn!(error = %e, "interrupted takes stay in takes/"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_THREADS)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let ctx = Arc::new(Mutex::new(ctx));
    let result = runtime.block_on(serve(data_dir, &opts, &secret.0, ctx.clone()));
    info::remove(data_dir, std::process::id());
    // Dropping the runtime ends every network task, and with them their
    // hold on the context, so it can be closed properly below.
    drop(runtime);
    let ctx = Arc::try_unwrap(ctx)
        .ok()
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()));
    if let Some(ctx) = ctx {
        ctx.close().map_err(|e| e.to_string())?;
    }
    tracing::info!("node stopped");
    result
}

fn already_running(data_dir: &Path) -> String {
    match info::read(data_dir).filter(|i| info::pid_alive(i.pid)) {
        Some(i) => format!(
            "a node is already running for {} (pid {}, API {}); stop it first",
            data_dir.display(),
            i.pid,
            i.api
        ),
        None => format!(
            "the database in {} is in use by another meshstudio process",
            data_dir.display()
        ),
    }
}

async fn serve(
    data_dir: &Path,
    opts: &UpOptions,
    secret: &[u8; 32],
    ctx: Arc<Mutex<Context>>,
) -> Result<(), String> {
    let hub = start_network(opts, secret, ctx.clone()).await?;
    let protocols = mount(&hub);
    start_background(&hub, opts, secret).await;
    let served = serve_api(data_dir, opts.api, ctx, &hub).await;
    tracing::info!("stopping: closing the endpoint");
    // Shutting the router down also shuts the blob store (it serves it).
    let shut = protocols.shutdown().await.map_err(|e| e.to_string());
    hub.ctx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .forget_blobs();
    served.and(shut)
}

/// Binds the endpoint and opens everything the network side shares.
async fn start_network(
    opts: &UpOptions,
    secret: &[u8; 32],
    ctx: Arc<Mutex<Context>>,
) -> Result<Arc<Hub>, String> {
    let members = {
        let mut locked = ctx.lock().unwrap_or_else(|p| p.into_inner());
        Arc::new(RwLock::new(
            member_union(&mut locked).map_err(|e| e.to_string())?,
        ))
    };
    let caps = crate::net::rate_limit::Caps::new(opts.max_download_kbps)?;
    let endpoint = bind_endpoint(opts, &caps, secret, Gate(members.clone())).await?;
    // Opening the blob store blocks on a runtime of its own: not on this one.
    let opener = ctx.clone();
    let blobs = tokio::task::spawn_blocking(move || {
        opener.lock().unwrap_or_else(|p| p.into_inner()).blob_api()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let gossip = iroh_gossip::Gossip::builder()
        .max_message_size(gossip::GOSSIP_MAX_MESSAGE_BYTES)
        .spawn(endpoint.clone());
    let book = iroh::address_lookup::MemoryLookup::new();
    endpoint
        .address_lookup()
        .map_err(|e| e.to_string())?
        .add(book.clone());
    let hub = Arc::new(Hub {
        gossip,
        book,
        net: Mutex::new(Default::default()),
        discovery: Default::default(),
        relay: opts.relay.clone(),
        caps,
        downloader: blob_downloader(&blobs, &endpoint),
        blobs,
        stem_arrived: Default::default(),
        received: Default::default(),
        connections: Mutex::new(Default::default()),
        sessions: Mutex::new(Default::default()),
        ctx: ctx.clone(),
        me: endpoint.id().to_string(),
        endpoint,
        members,
        changes: super::api::change_channel(),
    });
    let net = NetHandle {
        endpoint: hub.endpoint.clone(),
        runtime: tokio::runtime::Handle::current(),
        hub: Arc::downgrade(&hub),
    };
    ctx.lock().unwrap_or_else(|p| p.into_inner()).set_net(net);
    Ok(hub)
}

/// One handler per ALPN on the node's router.
fn mount(hub: &Arc<Hub>) -> iroh::protocol::Router {
    let blobs = iroh_blobs::BlobsProtocol::new(&hub.blobs, Some(blob_gate::spawn(hub.clone())));
    let join = JoinProtocol {
        hub: hub.clone(),
        blobs: blobs.clone(),
    };
    iroh::protocol::Router::builder(hub.endpoint.clone())
        .accept(SYNC_ALPN, SyncProtocol(hub.clone()))
        .accept(JOIN_ALPN, join)
        .accept(iroh_gossip::ALPN, hub.gossip.clone())
        .accept(iroh_blobs::ALPN, blobs)
        .spawn()
}

/// Discovery, redials of remembered peers, project topics and the
/// node's watchers.
async fn start_background(hub: &Arc<Hub>, opts: &UpOptions, secret: &[u8; 32]) {
    let bind = opts.bind.unwrap_or(DEFAULT_BIND);
    if discovery::wanted(bind, opts.no_discovery) {
        // Without discovery the node still syncs with the members it knows.
        if let Err(e) = discovery::spawn(hub.clone(), secret, bind.ip()) {
            tracing::warn!(error = %e, "discovery and the address book are off");
        }
    }
    // After discovery starts: remembered peers also seed the address book.
    redial_remembered(hub).await;
    gossip::join_all(hub).await;
    tokio::spawn(gossip::follow_changes(hub.clone()));
    tokio::spawn(hub.clone().measure_rate());
    tokio::spawn(watch_for_stalls());
}

/// Serves the local API until Ctrl-C, SIGTERM or a `stop` request; the
/// node's info file tells the CLI where.
async fn serve_api(
    data_dir: &Path,
    api: Option<SocketAddr>,
    ctx: Arc<Mutex<Context>>,
    hub: &Arc<Hub>,
) -> Result<(), String> {
    let listener = bind_api(api).await?;
    let api = listener.local_addr().map_err(|e| e.to_string())?;
    let state = Arc::new(ApiState {
        ctx,
        token: info::new_token(),
        id: hub.me.clone(),
        data_dir: data_dir.to_path_buf(),
        api,
        addresses: hub.endpoint.bound_sockets(),
        started: Instant::now(),
        shutting_down: Arc::new(AtomicBool::new(false)),
        stopping: tokio::sync::watch::channel(false).0,
        changes: hub.changes.clone(),
        hub: hub.clone(),
    });
    let node = NodeInfo {
        pid: std::process::id(),
        api,
        token: state.token.clone(),
        id: hub.me.clone(),
        started_ms: crate::request::now_ms(),
    };
    info::write(data_dir, &node)
        .map_err(|e| format!("cannot write {}: {e}", info::path(data_dir).display()))?;
    announce(&state);
    let (stop, stopping) = (state.shutting_down.clone(), state.stopping.clone());
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            stop.store(true, Ordering::SeqCst);
            stopping.send_replace(true);
        })
        .await
        .map_err(|e| format!("API server: {e}"))
}

fn announce(s: &ApiState) {
    let addrs: Vec<String> = s.addresses.iter().map(|a| a.to_string()).collect();
    println!("node {}", s.id);
    println!("  network: {}", addrs.join(", "));
    println!("  api:     http://{}", s.api);
    println!("  data:    {}", s.data_dir.display());
    tracing::info!(id = %s.id, api = %s.api, network = ?addrs, "node up");
}

/// Starts redialing every remembered peer (sync resumes by itself).
async fn redial_remembered(hub: &Arc<Hub>) {
    let peers = hub
        .with_ctx(|ctx| {
            ctx.store()
                .ok()
                .and_then(|s| s.peers().ok())
                .unwrap_or_default()
        })
        .await;
    for (id, record) in peers {
        let Ok(id) = id.parse::<iroh::EndpointId>() else {
            continue;
        };
        hub.ensure_dialing(peers::addr(id, &peers::parse_record(&record)));
    }
}

/// How often the stall watch looks, and how late it may be woken before
/// it says so: a runtime blocked this long stops every connection (no
/// packets read, none sent, no acks), which from outside looks like a
/// link going quiet.
const STALL_TICK: Duration = Duration::from_millis(50);
const STALL_REPORTED: Duration = Duration::from_millis(200);

/// Logs when the async runtime could not run a task for a while
/// (blocking work on its threads, or the machine starved of CPU).
async fn watch_for_stalls() {
    let mut last = Instant::now();
    loop {
        tokio::time::sleep(STALL_TICK).await;
        let late = last.elapsed().saturating_sub(STALL_TICK);
        if late >= STALL_REPORTED {
            tracing::warn!(
                late_ms = late.as_millis() as u64,
                "the node's event loop was held up"
            );
        }
        last = Instant::now();
    }
}

/// Environment: the QUIC congestion controller (`bbr`: ours, a BBR-like
/// model of the path's bottleneck that tolerates random loss, cubic on
/// short paths — `net/congestion.rs`; `bbr3`: noq's BBRv3 as is, `cubic`,
/// `newreno`), for measuring links; the default is `bbr`.
const CONGESTION_ENV: &str = "MESHSTUDIO_CONGESTION";
/// Ours: a site's link loses packets to noise, not only to congestion, and
/// loss-based controllers (cubic, new reno) slow down for every loss;
/// `scripts/bench/sync` measures both through the link emulator.
const DEFAULT_CONGESTION: &str = "bbr";

type ControllerFactory = Arc<dyn iroh::endpoint::ControllerFactory + Send + Sync>;

fn congestion_controller(max_upload_kbps: Option<u32>) -> Result<ControllerFactory, String> {
    let cap = max_upload_kbps
        .map(crate::net::upload_cap::UploadCap::new)
        .transpose()?;
    use noq_proto::congestion::{Bbr3Config, CubicConfig, NewRenoConfig};
    let name = std::env::var(CONGESTION_ENV).unwrap_or_else(|_| DEFAULT_CONGESTION.into());
    Ok(match name.as_str() {
        "bbr" => Arc::new(crate::net::congestion::Factory::new(cap)),
        _ if cap.is_some() => {
            return Err(format!(
                "--max-upload-kbps needs the default congestion control, not {CONGESTION_ENV}={name}"
            ));
        }
        "bbr3" => Arc::new(Bbr3Config::default()),
        "cubic" => Arc::new(CubicConfig::default()),
        "newreno" => Arc::new(NewRenoConfig::default()),
        other => {
            return Err(format!(
                "{CONGESTION_ENV}={other}: choose bbr, bbr3, cubic or newreno"
            ));
        }
    })
}

/// How long the stem downloader waits for a provider's connection. A QUIC
/// handshake whose first packets are lost waits out probe timeouts of a
/// second and more: on a 300 ms, 3 % loss link iroh-blobs' default of 1 s
/// failed the fetch that follows a join, and the retry came 2 s later.
const BLOB_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a provider's connection stays open with no fetch on it: the
/// next round of stems (a take recorded minutes later) then starts at the
/// rate the connection has learnt, not from a new handshake and start-up.
const BLOB_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

fn blob_downloader(blobs: &iroh_blobs::api::Store, endpoint: &Endpoint) -> Downloader {
    let mut pool = iroh_blobs::util::connection_pool::Options::default();
    pool.connect_timeout = BLOB_CONNECT_TIMEOUT;
    pool.idle_timeout = BLOB_IDLE_TIMEOUT;
    Downloader::builder(blobs, endpoint)
        .pool_options(pool)
        .build()
}

async fn bind_endpoint(
    opts: &UpOptions,
    caps: &crate::net::rate_limit::Caps,
    secret: &[u8; 32],
    gate: Gate,
) -> Result<Endpoint, String> {
    let relay = match &opts.relay {
        Some(url) => RelayMode::custom([url.clone()]),
        None => RelayMode::Disabled,
    };
    let relay_tls = super::relay::client_trust(opts.relay.as_ref());
    let bind = opts.bind.unwrap_or(DEFAULT_BIND);
    let controller = congestion_controller(opts.max_upload_kbps)?;
    let transport = crate::net::transport::config(controller, caps.download_window())?;
    Endpoint::builder(presets::Minimal)
        .transport_config(transport)
        .secret_key(SecretKey::from_bytes(secret))
        .hooks(gate)
        .relay_mode(relay)
        .ca_tls_config(relay_tls)
        .clear_ip_transports()
        .bind_addr(bind)
        .map_err(|e| format!("--bind {bind}: {e}"))?
        .bind()
        .await
        .map_err(|e| format!("cannot bind the network endpoint on {bind}: {e}"))
}

/// Binds the API; the default port falls back to a free one, an explicit
/// address does not.
async fn bind_api(explicit: Option<SocketAddr>) -> Result<tokio::net::TcpListener, String> {
    let addr = explicit.unwrap_or(DEFAULT_API);
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if explicit.is_none() && e.kind() == std::io::ErrorKind::AddrInUse => {
            let free = SocketAddr::new(addr.ip(), 0);
            let l = tokio::net::TcpListener::bind(free)
                .await
                .map_err(|e| format!("API: {e}"))?;
            let port = l.local_addr().map(|a| a.port()).unwrap_or_default();
            println!("API port {} is taken; using {port}", addr.port());
            Ok(l)
        }
        Err(e) => Err(format!("cannot listen for the API on {addr}: {e}")),
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested");
}
