//! The node's QUIC transport settings, in one place: the node's endpoint
//! and `node/examples/quic_ceiling.rs` (the transport's own throughput,
//! measured next to the node's by `scripts/bench/blobs`) build them here.

use std::sync::Arc;
use std::time::Duration;

use iroh::Endpoint;
use iroh::endpoint::{ControllerFactory, MtuDiscoveryConfig, QuicTransportConfig, VarInt, presets};
use noq_proto::congestion::CubicConfig;

/// The QUIC datagram size a connection starts with (UDP payload bytes):
/// what fits every 1500-byte path, IPv6 and PPPoE's 1492 too, instead of
/// noq's 1200 — ~4 % less framing on the wire from the first packet. A
/// path that cannot carry it loses the packets, and black-hole detection
/// falls back to 1200.
pub const INITIAL_MTU: u16 = 1452;
/// The round trip assumed before one is measured: a lost handshake packet
/// is sent again after three times this. noq's 333 ms (RFC 9002's figure)
/// made a join or a stem connection on a 300 ms link that lost one wait a
/// whole second; at 100 ms such a link sends a few handshake packets twice
/// (each a few hundred bytes) and a lost one costs 0.3 s.
pub const INITIAL_RTT: Duration = Duration::from_millis(100);
/// The largest one MTU discovery tries: all a 1500-byte IPv4 path carries
/// (and the most iroh accepts: its endpoint advertises a 1472-byte
/// `max_udp_payload_size`, not configurable). noq stops at 1452 by
/// default, the IPv6 figure; on IPv4 the extra 20 bytes are 1.4 % less
/// framing per packet, and an IPv6 path loses one probe and stays at 1452.
pub const MTU_UPPER_BOUND: u16 = 1472;
/// What a peer may send ahead of what we have read on one stream. noq
/// keeps each stream frame it receives as a buffer of its own, and when a
/// stream holds more than 2048 of them that compaction cannot bring down
/// to 1024, it kills the whole connection ("too many gaps in stream
/// buffer") — and a frame that fills its packet is never compacted. So
/// the window must fit 1024 frames: with 16 KiB writes a frame carries
/// ≥ 1.09 KB on average even at QUIC's smallest datagrams (1200 B), and
/// 1 MiB is ≤ ~960 of them. At 4 MiB (tried for long links) a reader that
/// fell ~3 MB behind a fast sender — loopback, a LAN, a busy laptop —
/// lost the connection: `net::transport`'s test shows it. The price: one
/// stream carries at most 1 MiB per round trip (42 Mbit/s at 200 ms), and
/// stems download four at a time, each on a stream of its own.
pub const STREAM_RECEIVE_WINDOW: u64 = 1 << 20;
/// The same for all streams of a connection together: up to four stems
/// download at once, each a stream, plus project sync. Bounded so a member
/// cannot make us buffer much more.
pub const RECEIVE_WINDOW: u64 = 16 << 20;

/// The transport config every connection of a node uses; `window` replaces
/// both receive windows (a download cap keeps them small, so a capped
/// node does not invite more than its cap in flight), the stream's never
/// above `STREAM_RECEIVE_WINDOW`.
pub fn config(
    controller: Arc<dyn ControllerFactory + Send + Sync>,
    window: Option<u64>,
) -> Result<QuicTransportConfig, String> {
    let mut mtu_discovery = MtuDiscoveryConfig::default();
    mtu_discovery.upper_bound(MTU_UPPER_BOUND);
    let (window, stream_window) = match window {
        Some(window) => (window, window.min(STREAM_RECEIVE_WINDOW)),
        None => (RECEIVE_WINDOW, STREAM_RECEIVE_WINDOW),
    };
    let window = VarInt::from_u64(window).map_err(|e| e.to_string())?;
    let stream_window = VarInt::from_u64(stream_window).map_err(|e| e.to_string())?;
    Ok(QuicTransportConfig::builder()
        .initial_mtu(INITIAL_MTU)
        .initial_rtt(INITIAL_RTT)
        .mtu_discovery_config(Some(mtu_discovery))
        .congestion_controller_factory(controller)
        .receive_window(window)
        .stream_receive_window(stream_window)
        .build())
}

/// An endpoint on 127.0.0.1 with these settings and cubic (what the
/// node's controller runs on a path this short), accepting `alpns`: the
/// transport alone, for its test here and `examples/quic_ceiling.rs`.
pub async fn loopback_endpoint(alpns: Vec<Vec<u8>>) -> Result<Endpoint, String> {
    let transport = config(Arc::new(CubicConfig::default()), None)?;
    Endpoint::builder(presets::Minimal)
        .transport_config(transport)
        .alpns(alpns)
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")
        .map_err(|e| e.to_string())?
        .bind()
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;
    use iroh::EndpointAddr;

    use super::*;

    const ALPN: &[u8] = b"meshstudio/test-window/0";
    /// Several windows' worth, written the way iroh-blobs writes a stem.
    const SENT: usize = 8 << 20;
    const CHUNK: usize = 16 * 1024;
    /// How long the reader waits for a whole window to arrive unread.
    const FILL_TIMEOUT: Duration = Duration::from_secs(20);
    const POLL: Duration = Duration::from_millis(5);

    fn pattern(at: usize) -> u8 {
        (at % 251) as u8
    }

    /// A fast sender and a reader that takes nothing until a whole stream
    /// window has arrived: the connection lives, every byte arrives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_a_whole_window_behind_keeps_its_connection() {
        let server = loopback_endpoint(vec![ALPN.to_vec()]).await.expect("bound");
        let client = loopback_endpoint(Vec::new()).await.expect("bound");
        let at = *server.bound_sockets().first().expect("a socket");
        let addr = EndpointAddr::new(server.id()).with_ip_addr(at);
        let sender = tokio::spawn(async move {
            let conn = client.connect(addr, ALPN).await.expect("connected");
            let mut send = conn.open_uni().await.expect("a stream");
            let data = Bytes::from((0..SENT).map(pattern).collect::<Vec<_>>());
            for at in (0..SENT).step_by(CHUNK) {
                if send.write_chunk(data.slice(at..at + CHUNK)).await.is_err() {
                    break;
                }
            }
            send.finish().ok();
            conn.closed().await;
            client.close().await;
        });
        let conn = server
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("accepted");
        let mut recv = conn.accept_uni().await.expect("a stream");
        let deadline = Instant::now() + FILL_TIMEOUT;
        while conn.stats().udp_rx.bytes < STREAM_RECEIVE_WINDOW
            && conn.close_reason().is_none()
            && Instant::now() < deadline
        {
            tokio::time::sleep(POLL).await;
        }
        let got = recv.read_to_end(SENT).await.expect("the connection held");
        assert_eq!(got.len(), SENT);
        assert!(got.iter().enumerate().all(|(at, b)| *b == pattern(at)));
        conn.close(0u32.into(), b"done");
        sender.await.expect("the sender finished");
        server.close().await;
    }
}
