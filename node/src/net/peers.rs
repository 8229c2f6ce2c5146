//! Remembered peers: a node id with the addresses it was last seen at, as
//! kept in the store's peers table (a JSON record) and as dialed.

use std::net::SocketAddr;

use iroh::{EndpointAddr, EndpointId};

/// Most addresses remembered per peer.
pub const MAX_PEER_ADDRS: usize = 16;

/// What to dial: the id, with its direct addresses.
pub fn addr(id: EndpointId, addrs: &[SocketAddr]) -> EndpointAddr {
    addrs
        .iter()
        .take(MAX_PEER_ADDRS)
        .fold(EndpointAddr::new(id), |a, ip| a.with_ip_addr(*ip))
}

/// The stored record for a peer's addresses.
pub fn record(addrs: &[SocketAddr]) -> Vec<u8> {
    let addrs = &addrs[..addrs.len().min(MAX_PEER_ADDRS)];
    serde_json::to_vec(&serde_json::json!({ "addrs": addrs })).expect("json")
}

/// The addresses in a stored record (none if it is unreadable).
pub fn parse_record(bytes: &[u8]) -> Vec<SocketAddr> {
    #[derive(serde::Deserialize)]
    struct Record {
        addrs: Vec<SocketAddr>,
    }
    serde_json::from_slice::<Record>(bytes)
        .map(|r| r.addrs)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_garbage_reads_as_none() {
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:4000".parse().unwrap(),
            "[::1]:5".parse().unwrap(),
        ];
        assert_eq!(parse_record(&record(&addrs)), addrs);
        assert!(parse_record(b"{\"addrs\": 5}").is_empty());
        assert!(parse_record(b"").is_empty());
    }
}
