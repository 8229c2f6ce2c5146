//! The sync protocol's messages and the checks remote bytes pass before
//! yrs sees them. yrs' decoders trust declared counts (a 9-byte state
//! vector claiming 500 M entries allocates ~1 GB) and assert on some
//! malformed input in debug builds, and yrs 0.28.1 corrupts memory on one
//! malformed update shape, so: every message's structure is walked first
//! (`update_shape`), and decoding runs inside a panic boundary.

use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::{Deserialize, Serialize};
use yrs::updates::decoder::Decode;
use yrs::{StateVector, Update};

use crate::update_shape;

/// Largest sync frame: a whole project's state in one update.
pub const MAX_SYNC_FRAME_BYTES: usize = 32 << 20;
/// Largest hello / join frame (JSON with ids and proofs).
pub const MAX_HELLO_BYTES: usize = 4 << 10;

/// Message kinds, the first byte of a sync frame.
pub const HELLO: u8 = 1;
pub const STEP1: u8 = 2;
pub const STEP2: u8 = 3;
pub const UPDATE: u8 = 4;

/// The first message each side of a sync stream sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub project: String,
    pub proof: String,
    /// The most stem bytes the sender of this hello wants from its peer, in
    /// kbit/s (its download caps): the peer paces its uploads to it, so no
    /// receive buffer fills at link speed first. Older nodes send none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pace_kbps: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("an empty frame")]
    Empty,
    #[error("unknown message kind {0}")]
    Kind(u8),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("{what}: {why}")]
    Shape {
        what: &'static str,
        why: update_shape::ShapeError,
    },
}

/// Splits a frame into its kind and body.
pub fn split(frame: &[u8]) -> Result<(u8, &[u8]), WireError> {
    let (&kind, body) = frame.split_first().ok_or(WireError::Empty)?;
    if !(HELLO..=UPDATE).contains(&kind) {
        return Err(WireError::Kind(kind));
    }
    Ok((kind, body))
}

pub fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(body.len() + 1);
    f.push(kind);
    f.extend_from_slice(body);
    f
}

thread_local! {
    /// Set while this thread runs guarded yrs code.
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` inside the panic boundary, flagged so the panic hook stays quiet.
fn boundary<T>(f: impl FnOnce() -> T) -> Option<T> {
    let was = GUARDED.with(|g| g.replace(true));
    let out = catch_unwind(AssertUnwindSafe(f)).ok();
    GUARDED.with(|g| g.set(was));
    out
}

/// Keeps panics caught by the boundary quiet (the peer is just dropped);
/// other panics go to the hook installed before. Call once at startup.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !GUARDED.with(std::cell::Cell::get) {
            previous(info);
        }
    }));
}

fn guarded<T>(what: &'static str, f: impl FnOnce() -> Option<T>) -> Result<T, WireError> {
    boundary(f).flatten().ok_or(WireError::Malformed(what))
}

pub fn decode_state_vector(bytes: &[u8]) -> Result<StateVector, WireError> {
    check_shape("state vector", update_shape::check_state_vector(bytes))?;
    guarded("state vector", || StateVector::decode_v1(bytes).ok())
}

/// Decodes an update whose whole structure passed [`update_shape`] first.
pub fn decode_update(bytes: &[u8]) -> Result<Update, WireError> {
    check_shape("update", update_shape::check_update(bytes))?;
    guarded("update", || Update::decode_v1(bytes).ok())
}

fn check_shape(
    what: &'static str,
    shape: Result<(), update_shape::ShapeError>,
) -> Result<(), WireError> {
    shape.map_err(|why| WireError::Shape { what, why })
}

pub fn decode_hello(bytes: &[u8]) -> Result<Hello, WireError> {
    if bytes.len() > MAX_HELLO_BYTES {
        return Err(WireError::Malformed("hello (too long)"));
    }
    serde_json::from_slice(bytes).map_err(|_| WireError::Malformed("hello"))
}

/// Most stems an inviter sends a joiner unasked (its list is one frame of
/// 32-byte hashes: 128 KiB at most).
pub const MAX_PUSHED_STEMS: usize = 4096;
/// Largest frame of a pushed-stems list.
pub const MAX_PUSH_LIST_BYTES: usize = MAX_PUSHED_STEMS * 32;

/// The stems an inviter is about to send, in sending order.
pub fn encode_hashes(hashes: &[[u8; 32]]) -> Vec<u8> {
    hashes.concat()
}

pub fn decode_hashes(bytes: &[u8]) -> Result<Vec<[u8; 32]>, WireError> {
    if bytes.len() > MAX_PUSH_LIST_BYTES || !bytes.len().is_multiple_of(32) {
        return Err(WireError::Malformed("stem list"));
    }
    let mut out = Vec::with_capacity(bytes.len() / 32);
    for chunk in bytes.chunks_exact(32) {
        out.push(
            chunk
                .try_into()
                .map_err(|_| WireError::Malformed("stem list"))?,
        );
    }
    Ok(out)
}

/// Runs `f` (applying a decoded update) inside a panic boundary.
pub fn guarded_apply(f: impl FnOnce() -> bool) -> Result<(), WireError> {
    match boundary(f) {
        Some(true) => Ok(()),
        _ => Err(WireError::Malformed("update (does not apply)")),
    }
}

/// The whole receive path of one sync frame against a document that has
/// content: split, decode, and apply or answer. Returns whether the frame
/// was accepted. The fuzz target and its corpus replay call this.
pub fn receive_into(doc: &yrs::Doc, frame: &[u8]) -> bool {
    use yrs::{ReadTxn, Transact};
    let Ok((kind, body)) = split(frame) else {
        return false;
    };
    match kind {
        HELLO => decode_hello(body).is_ok(),
        STEP1 => decode_state_vector(body)
            .map(|sv| doc.transact().encode_state_as_update_v1(&sv))
            .is_ok(),
        _ => match decode_update(body) {
            Ok(update) => {
                guarded_apply(|| doc.transact_mut_with("net").apply_update(update).is_ok()).is_ok()
            }
            Err(_) => false,
        },
    }
}

/// `len` bytes of a fixed xorshift stream continuing from `state`: test
/// input that looks random but is the same every run.
pub fn garbage(state: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *state as u8
        })
        .collect()
}

/// Feeds every file of the committed fuzz corpus `name` (under
/// `node/fuzz/corpus/`) to `f`; returns how many there were. For the tests
/// that replay what the fuzzers kept.
#[cfg(test)]
pub(crate) fn replay_corpus(name: &str, mut f: impl FnMut(&[u8])) -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus is committed") {
        f(&std::fs::read(entry.expect("readable").path()).expect("readable"));
        count += 1;
    }
    count
}

/// A small document with a map and text, the fuzzer's target.
pub fn fuzz_doc() -> yrs::Doc {
    use yrs::{Map, Text, Transact};
    let doc = yrs::Doc::with_client_id(1);
    let tracks = doc.get_or_insert_map("tracks");
    let lyrics = doc.get_or_insert_text("lyrics");
    let mut txn = doc.transact_mut();
    tracks.insert(&mut txn, "t", "Drums");
    lyrics.insert(&mut txn, 0, "la la");
    drop(txn);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::ReadTxn;
    use yrs::updates::encoder::Encode;

    proptest::proptest! {
        #[test]
        fn any_bytes_make_a_stem_list_or_a_clean_refusal(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            match decode_hashes(&bytes) {
                Ok(hashes) => proptest::prop_assert_eq!(encode_hashes(&hashes), bytes),
                Err(_) => proptest::prop_assert!(!bytes.len().is_multiple_of(32)),
            }
        }
    }

    #[test]
    fn a_stem_list_round_trips_and_a_bad_one_is_refused() {
        let hashes = vec![[1u8; 32], [2u8; 32]];
        assert_eq!(decode_hashes(&encode_hashes(&hashes)).unwrap(), hashes);
        assert_eq!(decode_hashes(&[]).unwrap(), Vec::<[u8; 32]>::new());
        assert!(decode_hashes(&[0u8; 33]).is_err(), "not whole hashes");
        let too_many = vec![0u8; MAX_PUSH_LIST_BYTES + 32];
        assert!(decode_hashes(&too_many).is_err(), "over the limit");
    }

    #[test]
    fn an_inflated_count_is_refused_before_decoding() {
        // 500 M entries in 9 bytes: yrs would allocate ~1 GB before failing.
        let bomb = [0x80, 0xca, 0xb5, 0xee, 0x01, 1, 2, 3, 4];
        assert!(matches!(
            decode_state_vector(&bomb),
            Err(WireError::Shape { .. })
        ));
        assert!(matches!(decode_update(&bomb), Err(WireError::Shape { .. })));
    }

    #[test]
    fn real_messages_pass() {
        let doc = yrs::Doc::new();
        let text = yrs::Transact::transact(&doc).state_vector().encode_v1();
        assert!(decode_state_vector(&text).is_ok());
        let update =
            yrs::Transact::transact(&doc).encode_state_as_update_v1(&StateVector::default());
        assert!(decode_update(&update).is_ok());
    }

    /// Every input the sync fuzzer kept is handled without a panic.
    #[test]
    fn fuzz_corpus_replays_without_panic() {
        let count = replay_corpus("sync_frame", |data| {
            let _ = receive_into(&fuzz_doc(), data);
        });
        assert!(count >= 4, "the sync_frame corpus has only {count} files");
    }

    /// Found by the fuzzer: an update with a client id ≥ 2^53 trips a yrs
    /// debug assertion; it must come back as a rejection.
    #[test]
    fn a_yrs_assertion_is_a_rejection() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/corpus/sync_frame/crash-yrs-client-id-assert"
        );
        let frame = std::fs::read(path).expect("committed");
        assert!(!receive_into(&fuzz_doc(), &frame));
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for len in 0..300 {
            let bytes = garbage(&mut x, len);
            let _ = decode_state_vector(&bytes);
            let _ = decode_update(&bytes);
            let _ = decode_hello(&bytes);
            let _ = split(&bytes);
        }
    }
}
