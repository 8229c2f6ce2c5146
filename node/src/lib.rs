//! The parts of the node that other build targets need as a library: the
//! checks on network input (sync frames, gossip notices), driven by the
//! fuzzers in `node/fuzz`, and the QUIC transport settings, which
//! `examples/quic_ceiling.rs` measures. The binary uses these same modules
//! (one copy of the code).

#[path = "net/notice.rs"]
pub mod notice;
#[path = "net/transport.rs"]
pub mod transport;
#[path = "net/update_shape.rs"]
pub mod update_shape;
#[path = "net/wire.rs"]
pub mod wire;
