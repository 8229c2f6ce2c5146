//! Gossip notices: small, signed messages on a project's topic. The gossip
//! layer only knows the last hop, so each notice names its author and is
//! signed with the author's node key over the project id and the body;
//! a receiver checks size, signature, project and membership before acting.
//! Notices only hint (dial this member, it has this stem, it changed
//! something): state itself travels over sync and blobs, verified there.

use std::net::SocketAddr;

use iroh::{EndpointId, SecretKey, Signature};
use serde::{Deserialize, Serialize};

/// Largest notice on the wire. Gossip silently drops a link whose message
/// exceeds its maximum, so senders check this before broadcasting.
pub const MAX_NOTICE_BYTES: usize = 2048;
/// Most addresses one notice carries.
pub const MAX_NOTICE_ADDRS: usize = 16;
/// Signed messages are bound to this context.
const SIGNING_CONTEXT: &[u8] = b"meshstudio/notice/1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    /// The author has new state for the project.
    Update,
    /// The author holds this stem and serves it to members.
    HaveBlob { hash: String },
    /// Where the author can be reached now.
    Addrs { addrs: Vec<SocketAddr> },
}

/// What is signed: everything a receiver acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub project: String,
    pub author: String,
    /// Milliseconds since the epoch; also makes each notice unique (gossip
    /// drops a message identical to one it has seen).
    pub time_ms: i64,
    pub body: Body,
}

#[derive(Debug, Serialize, Deserialize)]
struct Signed {
    payload: String,
    signature: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoticeError {
    #[error("a notice of {0} bytes (limit {MAX_NOTICE_BYTES})")]
    TooLarge(usize),
    #[error("a malformed notice")]
    Malformed,
    #[error("a notice whose signature does not match its author")]
    BadSignature,
    #[error("a notice for another project")]
    WrongProject,
}

fn signed_bytes(payload: &str) -> Vec<u8> {
    [SIGNING_CONTEXT, payload.as_bytes()].concat()
}

/// Signs and encodes a notice; refuses one that would exceed the limit.
pub fn encode(key: &SecretKey, payload: &Payload) -> Result<Vec<u8>, NoticeError> {
    if let Body::Addrs { addrs } = &payload.body
        && addrs.len() > MAX_NOTICE_ADDRS
    {
        return Err(NoticeError::Malformed);
    }
    let text = serde_json::to_string(payload).map_err(|_| NoticeError::Malformed)?;
    let signature = key.sign(&signed_bytes(&text));
    let signed = Signed {
        payload: text,
        signature: data_encoding::HEXLOWER.encode(&signature.to_bytes()),
    };
    let bytes = serde_json::to_vec(&signed).map_err(|_| NoticeError::Malformed)?;
    if bytes.len() > MAX_NOTICE_BYTES {
        return Err(NoticeError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes a notice received on `project`'s topic and checks its signature.
pub fn decode(bytes: &[u8], project: &str) -> Result<Payload, NoticeError> {
    if bytes.len() > MAX_NOTICE_BYTES {
        return Err(NoticeError::TooLarge(bytes.len()));
    }
    let signed: Signed = serde_json::from_slice(bytes).map_err(|_| NoticeError::Malformed)?;
    let payload: Payload =
        serde_json::from_str(&signed.payload).map_err(|_| NoticeError::Malformed)?;
    let author: EndpointId = payload.author.parse().map_err(|_| NoticeError::Malformed)?;
    let sig: [u8; 64] = data_encoding::HEXLOWER
        .decode(signed.signature.as_bytes())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(NoticeError::Malformed)?;
    author
        .verify(&signed_bytes(&signed.payload), &Signature::from_bytes(&sig))
        .map_err(|_| NoticeError::BadSignature)?;
    if payload.project != project {
        return Err(NoticeError::WrongProject);
    }
    if matches!(&payload.body, Body::Addrs { addrs } if addrs.len() > MAX_NOTICE_ADDRS) {
        return Err(NoticeError::Malformed);
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_bytes(&[seed; 32])
    }

    fn payload(author: &SecretKey, body: Body) -> Payload {
        Payload {
            project: "p1".into(),
            author: author.public().to_string(),
            time_ms: 1,
            body,
        }
    }

    #[test]
    fn a_signed_notice_round_trips() {
        let k = key(1);
        let addrs = vec!["127.0.0.1:4000".parse().unwrap()];
        let p = payload(&k, Body::Addrs { addrs });
        assert_eq!(decode(&encode(&k, &p).unwrap(), "p1"), Ok(p));
    }

    #[test]
    fn forged_altered_misplaced_and_huge_notices_are_refused() {
        let (a, b) = (key(1), key(2));
        // Signed by b but claiming a as author.
        let forged = encode(&b, &payload(&a, Body::Update)).unwrap();
        assert_eq!(decode(&forged, "p1"), Err(NoticeError::BadSignature));
        // One byte of the payload changed after signing.
        let good = encode(&a, &payload(&a, Body::HaveBlob { hash: "aa".into() })).unwrap();
        let text = String::from_utf8(good.clone()).unwrap();
        let altered = text.replacen("aa", "ab", 1).into_bytes();
        assert_eq!(decode(&altered, "p1"), Err(NoticeError::BadSignature));
        assert_eq!(decode(&good, "p2"), Err(NoticeError::WrongProject));
        assert!(decode(&vec![b'x'; MAX_NOTICE_BYTES + 1], "p1").is_err());
        assert_eq!(decode(b"{}", "p1"), Err(NoticeError::Malformed));
        let many = vec!["127.0.0.1:1".parse().unwrap(); MAX_NOTICE_ADDRS + 1];
        assert!(encode(&a, &payload(&a, Body::Addrs { addrs: many })).is_err());
    }

    #[test]
    fn an_oversize_notice_is_not_sent() {
        let a = key(1);
        let hash = "h".repeat(MAX_NOTICE_BYTES);
        assert!(matches!(
            encode(&a, &payload(&a, Body::HaveBlob { hash })),
            Err(NoticeError::TooLarge(_))
        ));
    }

    /// Every input the notice fuzzer kept is handled without a panic.
    #[test]
    fn fuzz_corpus_replays_without_panic() {
        let count = crate::wire::replay_corpus("notice", |data| {
            assert!(
                decode(data, "p1").is_err(),
                "an unsigned corpus notice passed"
            );
        });
        assert!(count >= 3, "the notice corpus has only {count} files");
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..400 {
            let bytes = crate::wire::garbage(&mut x, len);
            let _ = decode(&bytes, "p1");
        }
    }
}
