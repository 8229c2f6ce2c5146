//! Invite tickets: everything a laptop needs to join a project — the
//! project id, its secret, and who invited it and where to reach them —
//! as one copy-pasteable line. Parsed with limits; a checksum catches
//! typos before any network traffic.
//!
//! Format: `msjoin1` + base32 (lowercase, no padding) of
//! `json ‖ blake3(json)[..4]`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

const PREFIX: &str = "msjoin1";
/// Longest ticket we read, in characters (a real one is ~450).
pub const MAX_TICKET_CHARS: usize = 4096;
/// Addresses a ticket may carry.
const MAX_TICKET_ADDRS: usize = 16;
const CHECKSUM_BYTES: usize = 4;
const SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The project id (a UUID).
    pub project: String,
    /// The project secret, hex: only members know it.
    pub secret: String,
    /// The inviting node's id (hex ed25519 public key).
    pub inviter: String,
    /// Where the inviter listens.
    pub addrs: Vec<SocketAddr>,
    /// The relay the inviter is reachable through, if its node uses one
    /// (`up --relay`): the way in to a site behind NAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    #[error("not a meshstudio ticket (they start with {PREFIX})")]
    Prefix,
    #[error("the ticket is longer than {MAX_TICKET_CHARS} characters")]
    TooLong,
    #[error("the ticket is damaged (copy it again, whole)")]
    Damaged,
    #[error("the ticket is malformed: {0}")]
    Malformed(String),
}

impl Ticket {
    pub fn encode(&self) -> String {
        let mut bytes = serde_json::to_vec(self).expect("tickets serialize");
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(&sum.as_bytes()[..CHECKSUM_BYTES]);
        format!(
            "{PREFIX}{}",
            data_encoding::BASE32_NOPAD
                .encode(&bytes)
                .to_ascii_lowercase()
        )
    }

    pub fn decode(text: &str) -> Result<Ticket, TicketError> {
        let text = text.trim();
        if text.len() > MAX_TICKET_CHARS {
            return Err(TicketError::TooLong);
        }
        let body = text.strip_prefix(PREFIX).ok_or(TicketError::Prefix)?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| TicketError::Damaged)?;
        if bytes.len() <= CHECKSUM_BYTES {
            return Err(TicketError::Damaged);
        }
        let (json, sum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
        if blake3::hash(json).as_bytes()[..CHECKSUM_BYTES] != *sum {
            return Err(TicketError::Damaged);
        }
        let ticket: Ticket =
            serde_json::from_slice(json).map_err(|e| TicketError::Malformed(e.to_string()))?;
        ticket.validate()?;
        Ok(ticket)
    }

    fn validate(&self) -> Result<(), TicketError> {
        let bad = |what: &str| Err(TicketError::Malformed(what.to_string()));
        if uuid::Uuid::parse_str(&self.project).is_err() {
            return bad("project id");
        }
        if decode_hex::<SECRET_BYTES>(&self.secret).is_none() {
            return bad("project secret");
        }
        if self.inviter.parse::<iroh::EndpointId>().is_err() {
            return bad("inviter id");
        }
        if (self.addrs.is_empty() && self.relay.is_none()) || self.addrs.len() > MAX_TICKET_ADDRS {
            return bad("addresses");
        }
        if self
            .relay
            .as_ref()
            .is_some_and(|r| r.parse::<iroh::RelayUrl>().is_err())
        {
            return bad("relay URL");
        }
        Ok(())
    }

    /// The relay named in the ticket (checked on decode).
    pub fn relay_url(&self) -> Option<iroh::RelayUrl> {
        self.relay.as_ref().and_then(|r| r.parse().ok())
    }

    pub fn secret_bytes(&self) -> [u8; SECRET_BYTES] {
        decode_hex(&self.secret).expect("validated on decode")
    }
}

/// `N` bytes from exactly `2N` lowercase or uppercase hex digits.
pub fn decode_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(hex.as_bytes())
        .ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ticket {
        Ticket {
            project: "aa108902-d4a5-44b4-8374-b251d18a049b".into(),
            secret: "ab".repeat(32),
            inviter: iroh::SecretKey::from_bytes(&[7; 32]).public().to_string(),
            addrs: vec!["127.0.0.1:4433".parse().unwrap()],
            relay: None,
        }
    }

    #[test]
    fn round_trips() {
        let t = sample();
        let text = t.encode();
        assert!(text.starts_with("msjoin1") && text.len() < 600, "{text}");
        assert_eq!(Ticket::decode(&text).unwrap(), t);
        assert_eq!(
            Ticket::decode(&format!("  {text}\n")).unwrap(),
            t,
            "whitespace is fine"
        );
    }

    #[test]
    fn damage_is_caught() {
        let text = sample().encode();
        assert_eq!(Ticket::decode("hello"), Err(TicketError::Prefix));
        assert_eq!(
            Ticket::decode(&text[..text.len() - 3]),
            Err(TicketError::Damaged)
        );
        let mut flipped = text.clone().into_bytes();
        let i = flipped.len() / 2;
        flipped[i] = if flipped[i] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            Ticket::decode(&String::from_utf8(flipped).unwrap()),
            Err(TicketError::Damaged)
        );
        assert_eq!(Ticket::decode(&"x".repeat(5000)), Err(TicketError::TooLong));
        for cut in 0..text.len() {
            let _ = Ticket::decode(&text[..cut]);
        }
    }

    #[test]
    fn a_relay_travels_in_the_ticket_and_is_checked() {
        let mut t = sample();
        t.relay = Some("http://10.0.0.1:3340/".into());
        let back = Ticket::decode(&t.encode()).unwrap();
        assert_eq!(
            back.relay_url(),
            Some("http://10.0.0.1:3340".parse().unwrap())
        );
        t.addrs.clear();
        assert!(
            Ticket::decode(&t.encode()).is_ok(),
            "a relay alone is a way in"
        );
        t.relay = Some("not a url".into());
        assert!(matches!(
            Ticket::decode(&t.encode()),
            Err(TicketError::Malformed(_))
        ));
        // Tickets from before relays still read.
        assert_eq!(Ticket::decode(&sample().encode()).unwrap().relay, None);
    }
}
