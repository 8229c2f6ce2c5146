//! The network side of a node: who may talk to it and what they say.
//! One handler type per ALPN on the node's iroh `Router`; every byte from
//! a peer is hostile until proven otherwise (size-limited frames, counts
//! checked before decoding, decoding inside a panic boundary).
//!
//! Knows the wire formats and the membership rules; what an update means
//! is the project model's business, where it is stored the store's.

pub mod address_book;
pub mod blob_gate;
pub mod bottleneck;
pub mod congestion;
pub mod discovery;
pub mod fetch;
pub mod frame;
pub mod gossip;
pub mod hub;
pub mod join;
pub mod pacer_slack;
pub mod peers;
pub mod policy;
pub mod proof;
pub mod push;
pub mod rate_limit;
pub mod sync;
pub mod ticket;
pub mod upload_cap;
pub mod wait;
pub use meshstudio_node::{notice, transport, wire};

/// Joining a project with an invite ticket.
pub const JOIN_ALPN: &[u8] = b"meshstudio/join/1";
/// y-sync of project documents between members.
pub const SYNC_ALPN: &[u8] = b"meshstudio/sync/1";
