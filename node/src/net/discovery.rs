//! The discovery plane: libp2p (TCP + noise + yamux) next to iroh, only
//! to find members — all project data still flows over iroh.
//!
//! One identity: the node's 32-byte secret is both its iroh key and its
//! libp2p ed25519 key, so a peer found here is dialled over iroh as the
//! same key. mDNS finds nodes on the LAN with no configuration; once a
//! libp2p connection is up, identify tells each side the other's iroh
//! addresses (in its agent version: the connection is authenticated by
//! noise with that very key, and iroh authenticates again when it dials).
//! A member's addresses then go where gossip's go: the address book, the
//! remembered peers, and a dialer — and sync starts by itself.
//!
//! Discovery only uses the interfaces the node is bound to: a node bound
//! to loopback runs none (nothing multicasts off it), nor does one started
//! with `--no-discovery`. libp2p-mdns has no interface filter — it
//! answers on every non-loopback interface of the machine — so mDNS runs
//! only for a node bound to all interfaces (the default); one bound to a
//! single address keeps the address book but not mDNS, and says so.
//!
//! The same plane runs the address book (`address_book`): a private
//! Kademlia DHT among known peers. Each node's libp2p TCP port has its iroh
//! UDP port's number, so every remembered iroh address of a peer also says
//! where to reach its address book.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iroh::EndpointId;
use libp2p::futures::StreamExt;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, identify, identity, kad, mdns, noise, tcp, yamux};
use tokio::sync::mpsc;

use super::address_book::{self as book, Lookups, Published};
use super::hub::Hub;

/// Identify's protocol version: private, so no other libp2p network talks to ours.
const IDENTIFY_PROTOCOL: &str = "/meshstudio/id/1.0.0";
/// What the agent version starts with; the iroh addresses follow.
const AGENT_PREFIX: &str = "meshstudio/1 iroh=";
/// Most iroh addresses we announce or accept from one peer.
const MAX_PEER_ADDRS: usize = 8;
/// Longest agent version we parse.
const MAX_AGENT_BYTES: usize = 512;
/// mDNS: how long an answer stays valid, and how often we ask. The crate's
/// defaults (6 min / 5 min) notice a laptop that arrives far too late.
const MDNS_TTL: Duration = Duration::from_secs(60);
const MDNS_QUERY_INTERVAL: Duration = Duration::from_secs(5);
/// A discovery connection with nothing to do closes after this.
const IDLE_CONNECTION: Duration = Duration::from_secs(60);
/// Requests waiting for the discovery task; more are dropped (and repeated
/// by their senders).
const COMMAND_QUEUE: usize = 256;
/// Most peers remembered as found by mDNS.
const MAX_LAN_PEERS: usize = 1024;
/// How often the node checks whether its record must be put again.
const PUBLISH_CHECK: Duration = Duration::from_secs(2);

/// Requests to the discovery plane from the rest of the node.
#[derive(Debug)]
pub enum Command {
    /// A peer's iroh addresses: its address book listens there over TCP.
    Known(EndpointId, Vec<SocketAddr>),
    /// A member cannot be reached where we knew it: look up its record.
    LookUp(EndpointId),
}

#[derive(NetworkBehaviour)]
struct Discovery {
    mdns: Toggle<mdns::tokio::Behaviour>,
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
}

type Swarm = libp2p::Swarm<Discovery>;

/// Whether discovery may run for a node bound to `bind`: never on loopback.
pub fn wanted(bind: SocketAddr, disabled: bool) -> bool {
    !disabled && !bind.ip().is_loopback()
}

/// Whether mDNS may run for a node bound to `bind`: only when bound to every
/// interface, since it would answer on all of them anyway.
fn mdns_wanted(bind: IpAddr) -> bool {
    bind.is_unspecified()
}

/// Starts the discovery plane for `hub`'s node, listening on `bind`'s IP.
pub fn spawn(hub: Arc<Hub>, secret: &[u8; 32], bind: IpAddr) -> Result<(), String> {
    let mut swarm = build(secret, agent_version(&hub), bind)?;
    listen(&mut swarm, bind, iroh_port(&hub, bind))?;
    let (tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let _ = hub.discovery.set(tx);
    let plane = Plane {
        hub,
        swarm,
        seen: HashMap::new(),
        on_lan: HashSet::new(),
        lookups: Lookups::default(),
        published: Published::default(),
    };
    tokio::spawn(plane.run(commands));
    Ok(())
}

fn build(secret: &[u8; 32], agent: String, bind: IpAddr) -> Result<Swarm, String> {
    let mut copy = *secret; // ed25519_from_bytes zeroizes what it is given
    let key = identity::Keypair::ed25519_from_bytes(&mut copy).map_err(|e| e.to_string())?;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| format!("discovery transport: {e}"))?
        .with_behaviour(|key| {
            let id = key.public().to_peer_id();
            let config = mdns::Config {
                ttl: MDNS_TTL,
                query_interval: MDNS_QUERY_INTERVAL,
                enable_ipv6: bind.is_ipv6(),
            };
            let mdns = mdns_wanted(bind)
                .then(|| mdns::tokio::Behaviour::new(config, id))
                .transpose()?;
            if mdns.is_none() {
                tracing::info!(%bind, "LAN discovery (mDNS) is off: it would answer on every interface, not only {bind}; bind to 0.0.0.0 to use it");
            }
            let mdns = Toggle::from(mdns);
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version(agent),
            );
            let kad =
                kad::Behaviour::with_config(id, kad::store::MemoryStore::new(id), kad_config());
            Ok(Discovery {
                mdns,
                identify,
                kad,
            })
        })
        .map_err(|e| format!("discovery: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION))
        .build();
    // Every node serves the book: a small private network has no node that
    // could confirm an external address, so automatic mode would stay a
    // client and store nothing.
    swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
    Ok(swarm)
}

fn kad_config() -> kad::Config {
    let mut config = kad::Config::new(book::PROTOCOL);
    config
        .set_record_ttl(Some(book::RECORD_TTL))
        // We put our record again ourselves, with a fresh time and addresses.
        .set_publication_interval(None)
        .set_query_timeout(book::QUERY_TIMEOUT)
        // Records others put are checked before they are kept (Plane::on_kad).
        .set_record_filtering(kad::StoreInserts::FilterBoth);
    config
}

/// The port number of the node's iroh socket on `bind`'s address family.
fn iroh_port(hub: &Hub, bind: IpAddr) -> Option<u16> {
    hub.endpoint
        .bound_sockets()
        .into_iter()
        .find(|s| s.is_ipv4() == bind.is_ipv4())
        .map(|s| s.port())
}

/// Listens on TCP at the iroh port's number, so peers that know where our
/// iroh is know where our address book is; if that port is taken, on any
/// (then only mDNS and peers that dialled us find it).
fn listen(swarm: &mut Swarm, bind: IpAddr, port: Option<u16>) -> Result<(), String> {
    let at = |port: u16| -> Multiaddr {
        let ip = match bind {
            IpAddr::V4(ip) => libp2p::multiaddr::Protocol::Ip4(ip),
            IpAddr::V6(ip) => libp2p::multiaddr::Protocol::Ip6(ip),
        };
        Multiaddr::empty()
            .with(ip)
            .with(libp2p::multiaddr::Protocol::Tcp(port))
    };
    if let Some(port) = port {
        match swarm.listen_on(at(port)) {
            Ok(_) => return Ok(()),
            Err(e) => tracing::warn!(port, error = %e, "address book not on the iroh port"),
        }
    }
    swarm
        .listen_on(at(0))
        .map(|_| ())
        .map_err(|e| format!("discovery cannot listen on {bind}: {e}"))
}

/// The discovery task's state.
struct Plane {
    hub: Arc<Hub>,
    swarm: Swarm,
    /// The IP each connected peer's connection comes from.
    seen: HashMap<PeerId, IpAddr>,
    /// Peers mDNS found (the others came through the address book).
    on_lan: HashSet<PeerId>,
    lookups: Lookups,
    published: Published,
}

impl Plane {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut publish = tokio::time::interval(PUBLISH_CHECK);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event),
                Some(command) = commands.recv() => self.on_command(command),
                _ = publish.tick() => self.publish(),
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Known(id, addrs) => {
                let Some(peer) = book::peer_id(&id).filter(|_| id != self.hub.endpoint.id()) else {
                    return;
                };
                for addr in addrs.iter().filter(|a| book::routable(a)) {
                    let at = book::discovery_addr(&peer, addr);
                    self.swarm.behaviour_mut().kad.add_address(&peer, at);
                }
            }
            Command::LookUp(id) => {
                if self.lookups.due(id, Instant::now()) {
                    tracing::debug!(peer = %id, "looking the peer up in the address book");
                    self.swarm.behaviour_mut().kad.get_record(book::key(&id));
                }
            }
        }
    }

    /// Puts our record when our addresses changed, a peer joined, or it is
    /// time to renew it.
    fn publish(&mut self) {
        let addrs: Vec<SocketAddr> = self
            .hub
            .endpoint
            .addr()
            .ip_addrs()
            .filter(|a| book::routable(a))
            .copied()
            .collect();
        let now = Instant::now();
        if !self.published.due(&addrs, now) {
            return;
        }
        let secret = self.hub.endpoint.secret_key();
        if let Some(record) = book::record(secret, &addrs, crate::request::now_ms()) {
            let kad = &mut self.swarm.behaviour_mut().kad;
            if let Err(e) = kad.put_record(record, kad::Quorum::One) {
                tracing::warn!(error = %e, "address record not stored");
            }
        }
        self.published.put(addrs, now);
    }

    fn on_event(&mut self, event: SwarmEvent<DiscoveryEvent>) {
        match event {
            SwarmEvent::Behaviour(DiscoveryEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if self.on_lan.len() >= MAX_LAN_PEERS {
                        self.on_lan.clear(); // a flood of answers; only the log's wording suffers
                    }
                    self.on_lan.insert(peer);
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        tracing::debug!(%peer, %addr, "discovered on the LAN");
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                // Where the peer is now, as its own connection shows: its iroh
                // port at this address still works after it moved.
                if let Some(ip) = ip_of(endpoint.get_remote_address()) {
                    self.seen.insert(peer_id, ip);
                }
            }
            SwarmEvent::Behaviour(DiscoveryEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => self.identified(peer_id, info),
            SwarmEvent::Behaviour(DiscoveryEvent::Kad(event)) => self.on_kad(event),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.seen.remove(&peer_id);
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                tracing::debug!(%error, "discovery dial failed");
            }
            _ => {}
        }
    }

    /// A peer said who it is: where its iroh and its address book listen.
    fn identified(&mut self, peer: PeerId, info: identify::Info) {
        if info.protocols.contains(&book::PROTOCOL) {
            // Its own listen addresses, not the connection's ephemeral port;
            // loopback ones would point others at themselves.
            for addr in info.listen_addrs {
                if socket_of(&addr).is_some_and(|a| book::routable(&a)) {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                }
            }
        }
        let mut addrs = parse_agent(&info.agent_version);
        if let (Some(ip), Some(port)) = (self.seen.get(&peer), addrs.first().map(|a| a.port())) {
            let observed = SocketAddr::new(*ip, port);
            if !addrs.contains(&observed) {
                addrs.insert(0, observed);
                addrs.truncate(MAX_PEER_ADDRS);
            }
        }
        let how = if self.on_lan.contains(&peer) {
            "found a member on the LAN"
        } else {
            "found a member through the address book's peers"
        };
        if let Some(id) = endpoint_id(&peer) {
            // Off the swarm's task: learning an address waits on the request context.
            tokio::spawn(heard_of(self.hub.clone(), id, addrs, how));
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutingUpdated {
                is_new_peer: true, ..
            } => self.published.new_peer(),
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            } => {
                let hub = &self.hub;
                let store = self.swarm.behaviour_mut().kad.store_mut();
                match book::accept_put(
                    store,
                    record,
                    |id| is_member(hub, id),
                    crate::request::now_ms(),
                ) {
                    Ok(entry) => tracing::debug!(peer = %entry.id, "address record kept"),
                    Err(why) => tracing::debug!(%source, %why, "address record refused"),
                }
            }
            kad::Event::OutboundQueryProgressed {
                result:
                    kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(kad::PeerRecord {
                        record,
                        ..
                    }))),
                ..
            } => self.found(&record),
            kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::PutRecord(result),
                ..
            } => tracing::debug!(ok = result.is_ok(), "address record put"),
            _ => {}
        }
    }

    /// A lookup found a record: if it is a member's newest, dial it there.
    fn found(&mut self, record: &kad::Record) {
        let entry = match book::check(record, crate::request::now_ms()) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::info!(error = %e, "address record refused");
                return;
            }
        };
        if entry.id == self.hub.endpoint.id() || !self.hub.newer_addrs(entry.id, entry.time_ms) {
            return;
        }
        let addrs = entry.addrs.into_iter().filter(book::routable).collect();
        tokio::spawn(heard_of(
            self.hub.clone(),
            entry.id,
            addrs,
            "found a member in the address book",
        ));
    }
}

fn is_member(hub: &Hub, id: &EndpointId) -> bool {
    hub.members
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&id.to_string())
}

/// The socket address a libp2p `/ip…/tcp/…` address names.
fn socket_of(addr: &Multiaddr) -> Option<SocketAddr> {
    let ip = ip_of(addr)?;
    match addr.iter().nth(1)? {
        libp2p::multiaddr::Protocol::Tcp(port) => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

/// The IP a libp2p address points at.
fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next()? {
        libp2p::multiaddr::Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        libp2p::multiaddr::Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

/// A peer told us its iroh addresses (or the book did): if it is a member,
/// dial it there.
async fn heard_of(hub: Arc<Hub>, id: EndpointId, addrs: Vec<SocketAddr>, how: &'static str) {
    if !is_member(&hub, &id) || addrs.is_empty() {
        return;
    }
    tracing::info!(peer = %id, ?addrs, "{how}");
    super::gossip::learned_addrs(&hub, id, addrs).await;
}

/// This node's iroh addresses, as identify carries them.
fn agent_version(hub: &Hub) -> String {
    let addrs: Vec<String> = hub
        .endpoint
        .addr()
        .ip_addrs()
        .take(MAX_PEER_ADDRS)
        .map(ToString::to_string)
        .collect();
    format!("{AGENT_PREFIX}{}", addrs.join(","))
}

/// The iroh addresses in a peer's agent version (bounded; junk is skipped).
fn parse_agent(agent: &str) -> Vec<SocketAddr> {
    if agent.len() > MAX_AGENT_BYTES {
        return Vec::new();
    }
    let Some(list) = agent.strip_prefix(AGENT_PREFIX) else {
        return Vec::new();
    };
    list.split(',')
        .filter_map(|a| a.parse().ok())
        .filter(|a: &SocketAddr| !a.ip().is_unspecified())
        .take(MAX_PEER_ADDRS)
        .collect()
}

/// The iroh id behind an ed25519 PeerId (its identity multihash holds the key).
fn endpoint_id(peer: &PeerId) -> Option<EndpointId> {
    let hash = peer.as_ref();
    if hash.code() != 0x00 {
        return None; // a hashed key (RSA, …): not one of ours
    }
    let key = identity::PublicKey::try_decode_protobuf(hash.digest()).ok()?;
    let ed = key.try_into_ed25519().ok()?;
    EndpointId::from_bytes(&ed.to_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_secret_is_the_same_node_in_both_worlds() {
        let secret = [7u8; 32];
        let iroh_id = iroh::SecretKey::from_bytes(&secret).public();
        let mut copy = secret;
        let key = identity::Keypair::ed25519_from_bytes(&mut copy).expect("32 bytes");
        assert_eq!(endpoint_id(&key.public().to_peer_id()), Some(iroh_id));
    }

    #[test]
    fn agent_versions_are_parsed_with_limits() {
        let agent = "meshstudio/1 iroh=10.0.0.1:4433,[fd00::1]:4433,junk,0.0.0.0:1";
        assert_eq!(
            parse_agent(agent),
            vec![
                "10.0.0.1:4433".parse::<SocketAddr>().expect("addr"),
                "[fd00::1]:4433".parse().expect("addr")
            ]
        );
        assert!(parse_agent("rust-libp2p/0.57").is_empty());
        let many = format!("{AGENT_PREFIX}{}", vec!["10.0.0.1:1"; 20].join(","));
        assert_eq!(parse_agent(&many).len(), MAX_PEER_ADDRS);
        let long = format!("{AGENT_PREFIX}{}", "1".repeat(MAX_AGENT_BYTES));
        assert!(parse_agent(&long).is_empty());
    }

    #[test]
    fn loopback_nodes_run_no_discovery() {
        assert!(!wanted("127.0.0.1:0".parse().expect("addr"), false));
        assert!(!wanted("0.0.0.0:0".parse().expect("addr"), true));
        assert!(wanted("0.0.0.0:0".parse().expect("addr"), false));
        assert!(wanted("10.1.0.2:0".parse().expect("addr"), false));
        assert!(mdns_wanted("0.0.0.0".parse().expect("ip")));
        assert!(mdns_wanted("::".parse().expect("ip")));
        assert!(
            !mdns_wanted("10.1.0.2".parse().expect("ip")),
            "one interface: no mDNS"
        );
    }
}
