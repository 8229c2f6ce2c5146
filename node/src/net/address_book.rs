//! The address book: where each node can be reached now, as a signed
//! record in a private Kademlia DHT that runs among known peers (on the
//! discovery plane, next to mDNS). A site whose peers all moved finds them
//! again through any node it still reaches — a member of another project,
//! a hub — even when no shared project's gossip could tell it.
//!
//! A record is keyed by the node id and holds an address notice signed by
//! that node (the same signed format gossip uses, bound to the book instead
//! of a project), so a holder can neither forge nor alter it; the newest
//! one wins. Nodes keep records only of nodes they share a project with:
//! a stranger cannot fill a node's memory, nor look a node up through one
//! that does not know it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use iroh::{EndpointId, SecretKey};
use libp2p::kad::{self, store::RecordStore};
use libp2p::{Multiaddr, PeerId, StreamProtocol, identity};

use super::notice::{self, Body, MAX_NOTICE_ADDRS, Payload};

/// The DHT's protocol: private, so it never meets a public Kademlia network.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/meshstudio/kad/1.0.0");
/// What a record's signed notice is bound to, in place of a project id.
const SCOPE: &str = "meshstudio/address-book";
/// Record keys: this prefix, then the node's 32-byte id.
const KEY_PREFIX: &[u8] = b"/ms/addr/";
/// A record from further ahead than this is refused: newest wins, so a
/// record from the future would pin an address for good.
const MAX_CLOCK_AHEAD_MS: i64 = 10 * 60 * 1000;
/// How long a stored record lives without being put again.
pub const RECORD_TTL: Duration = Duration::from_secs(60 * 60);
/// A node puts its record again this often (and whenever it changes).
pub const REPUBLISH: Duration = Duration::from_secs(10 * 60);
/// A node is looked up at most this often while it cannot be reached.
const LOOKUP_EVERY: Duration = Duration::from_secs(5);
/// How long one DHT query may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(15);

/// The record key for `id`.
pub fn key(id: &EndpointId) -> kad::RecordKey {
    kad::RecordKey::new(&[KEY_PREFIX, id.as_bytes()].concat())
}

/// This node's record: its addresses now, signed.
pub fn record(secret: &SecretKey, addrs: &[SocketAddr], time_ms: i64) -> Option<kad::Record> {
    let payload = Payload {
        project: SCOPE.into(),
        author: secret.public().to_string(),
        time_ms,
        body: Body::Addrs {
            addrs: addrs.iter().take(MAX_NOTICE_ADDRS).copied().collect(),
        },
    };
    let value = notice::encode(secret, &payload).ok()?;
    Some(kad::Record::new(key(&secret.public()), value))
}

/// A checked record: whose it is, when it was made, where that node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: EndpointId,
    pub time_ms: i64,
    pub addrs: Vec<SocketAddr>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("not an address-book key")]
    Key,
    #[error(transparent)]
    Notice(#[from] notice::NoticeError),
    #[error("signed by another node than its key names")]
    Author,
    #[error("not an address notice")]
    Body,
    #[error("made {0} ms in the future")]
    Future(i64),
}

/// Checks a record from the DHT: key, size, signature, author, time.
pub fn check(record: &kad::Record, now_ms: i64) -> Result<Entry, RecordError> {
    let id = record
        .key
        .as_ref()
        .strip_prefix(KEY_PREFIX)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| EndpointId::from_bytes(&b).ok())
        .ok_or(RecordError::Key)?;
    let payload = notice::decode(&record.value, SCOPE)?;
    if payload.author != id.to_string() {
        return Err(RecordError::Author);
    }
    if payload.time_ms > now_ms.saturating_add(MAX_CLOCK_AHEAD_MS) {
        return Err(RecordError::Future(payload.time_ms - now_ms));
    }
    let Body::Addrs { addrs } = payload.body else {
        return Err(RecordError::Body);
    };
    Ok(Entry {
        id,
        time_ms: payload.time_ms,
        addrs,
    })
}

/// Stores a record another node put here if it checks out, belongs to a
/// node we share a project with, and is newer than the one we hold.
pub fn accept_put(
    store: &mut kad::store::MemoryStore,
    record: kad::Record,
    is_member: impl Fn(&EndpointId) -> bool,
    now_ms: i64,
) -> Result<Entry, String> {
    let entry = check(&record, now_ms).map_err(|e| e.to_string())?;
    if !is_member(&entry.id) {
        return Err("a record of a node we share no project with".into());
    }
    let held = store
        .get(&record.key)
        .and_then(|r| check(&r, now_ms).ok())
        .map_or(i64::MIN, |e| e.time_ms);
    if entry.time_ms <= held {
        return Err("older than the record held".into());
    }
    let mut record = record;
    record.expires = Some(Instant::now() + RECORD_TTL);
    store.put(record).map_err(|e| e.to_string())?;
    Ok(entry)
}

/// The libp2p id of an iroh node (the same ed25519 key).
pub fn peer_id(id: &EndpointId) -> Option<PeerId> {
    let ed = identity::ed25519::PublicKey::try_from_bytes(id.as_bytes()).ok()?;
    Some(identity::PublicKey::from(ed).to_peer_id())
}

/// Where a node's discovery plane listens, given its iroh address: the same
/// IP and port number, over TCP (see `discovery::spawn`).
pub fn discovery_addr(peer: &PeerId, addr: &SocketAddr) -> Multiaddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) => libp2p::multiaddr::Protocol::Ip4(ip),
        std::net::IpAddr::V6(ip) => libp2p::multiaddr::Protocol::Ip6(ip),
    };
    Multiaddr::empty()
        .with(ip)
        .with(libp2p::multiaddr::Protocol::Tcp(addr.port()))
        .with(libp2p::multiaddr::Protocol::P2p(*peer))
}

/// Whether an address can mean another machine: not loopback, link-local
/// or unspecified (a peer's `127.0.0.1` is not where we find it).
pub fn routable(addr: &SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => {
            !(ip.is_loopback() || ip.is_link_local() || ip.is_unspecified())
        }
        std::net::IpAddr::V6(ip) => {
            !(ip.is_loopback() || ip.is_unspecified() || (ip.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Rate limit for lookups: a node nobody can reach is asked for at most
/// once per `LOOKUP_EVERY`.
#[derive(Default)]
pub struct Lookups {
    last: HashMap<EndpointId, Instant>,
}

impl Lookups {
    /// `true` if `id` may be looked up now (and notes that it is).
    pub fn due(&mut self, id: EndpointId, now: Instant) -> bool {
        self.last
            .retain(|_, t| now.saturating_duration_since(*t) < LOOKUP_EVERY);
        if self.last.contains_key(&id) {
            return false;
        }
        self.last.insert(id, now);
        true
    }
}

/// What this node last put, to know when to put again.
#[derive(Default)]
pub struct Published {
    addrs: Vec<SocketAddr>,
    at: Option<Instant>,
    /// A peer joined the routing table since: it should hold our record too.
    new_peers: bool,
}

impl Published {
    pub fn new_peer(&mut self) {
        self.new_peers = true;
    }

    /// `true` if the record should be put now, with these addresses.
    pub fn due(&self, addrs: &[SocketAddr], now: Instant) -> bool {
        !addrs.is_empty()
            && (self.addrs != addrs
                || self.new_peers
                || self
                    .at
                    .is_none_or(|t| now.saturating_duration_since(t) >= REPUBLISH))
    }

    pub fn put(&mut self, addrs: Vec<SocketAddr>, now: Instant) {
        *self = Published {
            addrs,
            at: Some(now),
            new_peers: false,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(seed: u8) -> SecretKey {
        SecretKey::from_bytes(&[seed; 32])
    }

    fn addrs(s: &str) -> Vec<SocketAddr> {
        s.split(',').map(|a| a.parse().expect("addr")).collect()
    }

    #[test]
    fn a_record_checks_out_and_says_where_its_node_is() {
        let a = secret(1);
        let r = record(&a, &addrs("10.0.0.1:7000,[fd00::1]:7000"), 1_000).expect("fits");
        let e = check(&r, 1_000).expect("valid");
        assert_eq!(e.id, a.public());
        assert_eq!(e.time_ms, 1_000);
        assert_eq!(e.addrs, addrs("10.0.0.1:7000,[fd00::1]:7000"));
    }

    #[test]
    fn forged_moved_and_future_records_are_refused() {
        let (a, b) = (secret(1), secret(2));
        let here = addrs("10.0.0.1:7000");
        // B's signed record under A's key: a holder pointing A elsewhere.
        let mut moved = record(&b, &here, 1).expect("fits");
        moved.key = key(&a.public());
        assert_eq!(check(&moved, 1), Err(RecordError::Author));
        let mut flipped = record(&a, &here, 1).expect("fits");
        let at = flipped.value.len() / 3;
        flipped.value[at] ^= 1;
        assert!(check(&flipped, 1).is_err());
        let ahead = record(&a, &here, 1 + MAX_CLOCK_AHEAD_MS + 1).expect("fits");
        assert!(matches!(check(&ahead, 1), Err(RecordError::Future(_))));
        let mut short = record(&a, &here, 1).expect("fits");
        short.key = kad::RecordKey::new(&KEY_PREFIX);
        assert_eq!(check(&short, 1), Err(RecordError::Key));
        let junk = kad::Record::new(key(&a.public()), vec![0xff; 100_000]);
        assert!(check(&junk, 1).is_err());
    }

    #[test]
    fn the_newest_record_of_a_member_wins() {
        let a = secret(1);
        let peer = peer_id(&a.public()).expect("ed25519");
        let mut store = kad::store::MemoryStore::new(peer);
        let member = |id: &EndpointId| *id == a.public();
        let new = record(&a, &addrs("10.0.0.2:7000"), 2_000).expect("fits");
        let old = record(&a, &addrs("10.0.0.1:7000"), 1_000).expect("fits");
        assert!(accept_put(&mut store, new, member, 2_000).is_ok());
        assert!(accept_put(&mut store, old, member, 2_000).is_err());
        let held = store.get(&key(&a.public())).expect("held");
        assert_eq!(
            check(&held, 2_000).expect("valid").addrs,
            addrs("10.0.0.2:7000")
        );
        let stranger = record(&secret(9), &addrs("10.0.0.9:1"), 3_000).expect("fits");
        assert!(accept_put(&mut store, stranger, member, 3_000).is_err());
    }

    #[test]
    fn peers_are_found_on_their_iroh_port_over_tcp() {
        let a = secret(1).public();
        let peer = peer_id(&a).expect("ed25519");
        let addr = discovery_addr(&peer, &"10.0.0.1:7000".parse().expect("addr"));
        assert_eq!(
            addr.to_string(),
            format!("/ip4/10.0.0.1/tcp/7000/p2p/{peer}")
        );
        assert!(routable(&"10.0.0.1:1".parse().expect("addr")));
        assert!(!routable(&"127.0.0.1:1".parse().expect("addr")));
        assert!(!routable(&"[fe80::1]:1".parse().expect("addr")));
    }

    #[test]
    fn lookups_and_puts_are_paced() {
        let (mut l, t) = (Lookups::default(), Instant::now());
        let a = secret(1).public();
        assert!(l.due(a, t));
        assert!(!l.due(a, t + Duration::from_secs(1)));
        assert!(l.due(a, t + LOOKUP_EVERY));
        let mut p = Published::default();
        let here = addrs("10.0.0.1:7000");
        assert!(p.due(&here, t));
        p.put(here.clone(), t);
        assert!(!p.due(&here, t + Duration::from_secs(1)));
        assert!(p.due(&addrs("10.0.0.2:7000"), t));
        assert!(p.due(&here, t + REPUBLISH));
        p.new_peer();
        assert!(p.due(&here, t));
        assert!(!p.due(&[], t));
    }
}
