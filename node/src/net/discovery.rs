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
//! with `--no-discovery`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use iroh::EndpointId;
use libp2p::futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, identify, identity, mdns, noise, tcp, yamux};

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

#[derive(NetworkBehaviour)]
struct Discovery {
    mdns: mdns::tokio::Behaviour,
    identify: identify::Behaviour,
}

/// Whether discovery may run for a node bound to `bind`: never on loopback.
pub fn wanted(bind: SocketAddr, disabled: bool) -> bool {
    !disabled && !bind.ip().is_loopback()
}

/// Starts the discovery plane for `hub`'s node, listening on `bind`'s IP.
pub fn spawn(hub: Arc<Hub>, secret: &[u8; 32], bind: IpAddr) -> Result<(), String> {
    let mut copy = *secret; // ed25519_from_bytes zeroizes what it is given
    let key = identity::Keypair::ed25519_from_bytes(&mut copy).map_err(|e| e.to_string())?;
    let agent = agent_version(&hub);
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| format!("discovery transport: {e}"))?
        .with_behaviour(|key| {
            let config = mdns::Config {
                ttl: MDNS_TTL,
                query_interval: MDNS_QUERY_INTERVAL,
                enable_ipv6: bind.is_ipv6(),
            };
            let mdns = mdns::tokio::Behaviour::new(config, key.public().to_peer_id())?;
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version(agent),
            );
            Ok(Discovery { mdns, identify })
        })
        .map_err(|e| format!("discovery: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION))
        .build();
    let listen: Multiaddr = match bind {
        IpAddr::V4(ip) => format!("/ip4/{ip}/tcp/0"),
        IpAddr::V6(ip) => format!("/ip6/{ip}/tcp/0"),
    }
    .parse()
    .map_err(|e| format!("discovery address: {e}"))?;
    swarm
        .listen_on(listen)
        .map_err(|e| format!("discovery cannot listen on {bind}: {e}"))?;
    tokio::spawn(async move {
        let mut seen = HashMap::new();
        loop {
            let event = swarm.select_next_some().await;
            on_event(&hub, &mut swarm, &mut seen, event);
        }
    });
    Ok(())
}

fn on_event(
    hub: &Arc<Hub>,
    swarm: &mut libp2p::Swarm<Discovery>,
    seen: &mut HashMap<PeerId, IpAddr>,
    event: SwarmEvent<DiscoveryEvent>,
) {
    match event {
        SwarmEvent::Behaviour(DiscoveryEvent::Mdns(mdns::Event::Discovered(found))) => {
            for (peer, addr) in found {
                if !swarm.is_connected(&peer) {
                    tracing::debug!(%peer, %addr, "discovered on the LAN");
                    let _ = swarm.dial(addr);
                }
            }
        }
        SwarmEvent::ConnectionEstablished {
            peer_id, endpoint, ..
        } => {
            // Where the peer is now, as its own connection shows: its iroh
            // port at this address still works after it moved.
            if let Some(ip) = ip_of(endpoint.get_remote_address()) {
                seen.insert(peer_id, ip);
            }
        }
        SwarmEvent::Behaviour(DiscoveryEvent::Identify(identify::Event::Received {
            peer_id,
            info,
            ..
        })) => {
            let mut addrs = parse_agent(&info.agent_version);
            if let (Some(ip), Some(port)) = (seen.get(&peer_id), addrs.first().map(|a| a.port())) {
                let observed = SocketAddr::new(*ip, port);
                if !addrs.contains(&observed) {
                    addrs.insert(0, observed);
                    addrs.truncate(MAX_PEER_ADDRS);
                }
            }
            // Off the swarm's task: learning an address waits on the request context.
            tokio::spawn(heard_of(hub.clone(), peer_id, addrs));
        }
        SwarmEvent::ConnectionClosed {
            peer_id,
            num_established: 0,
            ..
        } => {
            seen.remove(&peer_id);
        }
        SwarmEvent::OutgoingConnectionError { error, .. } => {
            tracing::debug!(%error, "discovery dial failed");
        }
        _ => {}
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

/// A peer told us its iroh addresses: if it is a member, dial it there.
async fn heard_of(hub: Arc<Hub>, peer: PeerId, addrs: Vec<SocketAddr>) {
    let Some(id) = endpoint_id(&peer) else {
        return;
    };
    let member = hub
        .members
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&id.to_string());
    if !member || addrs.is_empty() {
        return;
    }
    tracing::info!(peer = %id, ?addrs, "found a member on the LAN");
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
    }
}
