//! A structural walk over yrs' v1 wire formats (updates and state vectors)
//! before yrs decodes them. yrs trusts its input more than a peer deserves:
//! declared counts reserve memory up front, nested values recurse without a
//! depth limit, clocks wrap, client ids ≥ 2^53 trip assertions, and an update
//! naming one client in two struct sections makes yrs 0.28.1 write to freed
//! memory while applying its delete set (found by the sync fuzzer). The walk
//! reads every field the way yrs will, so what it accepts is exactly what
//! yrs then decodes, and refuses:
//! - a count larger than the bytes left could hold;
//! - a client id above 2^53 − 1, a client twice in one section;
//! - clock ranges that overflow yrs' 32-bit clocks, empty ranges;
//! - content kinds meshstudio documents never contain (legacy JSON, rich
//!   text embeds and formats, sub-documents, XML types);
//! - `Any` values nested deeper than [`MAX_ANY_DEPTH`];
//! - trailing bytes.

use std::collections::HashSet;

/// Largest client id yrs accepts (it asserts on larger ones).
pub const MAX_CLIENT_ID: u64 = (1 << 53) - 1;
/// Deepest nesting of `Any` arrays and maps (yrs decodes them recursively).
pub const MAX_ANY_DEPTH: usize = 32;
/// Fewest bytes a block takes (a GC or skip block: info and length).
const MIN_BLOCK_BYTES: usize = 2;
/// Longest varint: 10 bytes carry 64 bits.
const MAX_VARINT_BYTES: usize = 10;

// Block info: flags in the high bits, the content kind in the low four.
const HAS_ORIGIN: u8 = 0x80;
const HAS_RIGHT_ORIGIN: u8 = 0x40;
const HAS_PARENT_SUB: u8 = 0x20;
const UNUSED_INFO_BIT: u8 = 0x10;
const BLOCK_GC: u8 = 0;
const BLOCK_SKIP: u8 = 10;
const CONTENT_DELETED: u8 = 1;
const CONTENT_BINARY: u8 = 3;
const CONTENT_STRING: u8 = 4;
const CONTENT_TYPE: u8 = 7;
const CONTENT_ANY: u8 = 8;
// Shared types a nested branch may be: array, map, text.
const TYPE_ARRAY: u8 = 0;
const TYPE_MAP: u8 = 1;
const TYPE_TEXT: u8 = 2;

/// Why a message's shape was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShapeError(pub &'static str);

type Walk<T> = Result<T, ShapeError>;

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, len: usize) -> Walk<&'a [u8]> {
        if len > self.left() {
            return Err(ShapeError("ends early"));
        }
        let out = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(out)
    }

    fn u8(&mut self) -> Walk<u8> {
        Ok(self.take(1)?[0])
    }

    /// An unsigned varint, refused past 64 bits.
    fn var(&mut self) -> Walk<u64> {
        let mut value = 0u64;
        for i in 0..MAX_VARINT_BYTES {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if i == MAX_VARINT_BYTES - 1 && bits > 1 {
                return Err(ShapeError("varint overflows 64 bits"));
            }
            value |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ShapeError("varint too long"))
    }

    /// A varint that must fit yrs' 32-bit fields (yrs would silently wrap).
    fn var_u32(&mut self) -> Walk<u32> {
        u32::try_from(self.var()?).map_err(|_| ShapeError("value exceeds 32 bits"))
    }

    /// A signed varint (its first byte has a sign bit); only its length matters.
    fn skip_signed(&mut self) -> Walk<()> {
        for _ in 0..MAX_VARINT_BYTES {
            if self.u8()? & 0x80 == 0 {
                return Ok(());
            }
        }
        Err(ShapeError("varint too long"))
    }

    /// A count of items each taking at least `min_bytes`, checked against what is left.
    fn count(&mut self, min_bytes: usize) -> Walk<u32> {
        let n = self.var_u32()?;
        if (n as usize).saturating_mul(min_bytes) > self.left() {
            return Err(ShapeError("a count claims more than the bytes left"));
        }
        Ok(n)
    }

    fn client(&mut self) -> Walk<u64> {
        let id = self.var()?;
        if id > MAX_CLIENT_ID {
            return Err(ShapeError("client id above 2^53"));
        }
        Ok(id)
    }

    /// A length-prefixed byte string; returns its length.
    fn buf(&mut self) -> Walk<usize> {
        let len = self.var_u32()? as usize;
        Ok(self.take(len)?.len())
    }

    /// A length-prefixed UTF-8 string; returns its length in bytes.
    fn string(&mut self) -> Walk<usize> {
        let len = self.var_u32()? as usize;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| ShapeError("a string is not UTF-8"))?;
        Ok(len)
    }

    fn skip(&mut self, len: usize) -> Walk<()> {
        self.take(len).map(|_| ())
    }

    fn skip_string(&mut self) -> Walk<()> {
        self.string().map(|_| ())
    }

    fn skip_buf(&mut self) -> Walk<()> {
        self.buf().map(|_| ())
    }

    fn id(&mut self) -> Walk<()> {
        self.client()?;
        self.var_u32()?;
        Ok(())
    }

    fn end(&self) -> Walk<()> {
        if self.left() != 0 {
            return Err(ShapeError("trailing bytes"));
        }
        Ok(())
    }
}

/// Checks a v1 state vector: `count × (client, clock)`.
pub fn check_state_vector(bytes: &[u8]) -> Walk<()> {
    let mut r = Reader { bytes, pos: 0 };
    let mut seen = HashSet::new();
    for _ in 0..r.count(2)? {
        if !seen.insert(r.client()?) {
            return Err(ShapeError("a client appears twice"));
        }
        r.var_u32()?;
    }
    r.end()
}

/// Checks a v1 update: struct sections per client, then the delete set.
pub fn check_update(bytes: &[u8]) -> Walk<()> {
    let mut r = Reader { bytes, pos: 0 };
    let mut seen = HashSet::new();
    for _ in 0..r.count(3)? {
        let blocks = r.count(MIN_BLOCK_BYTES)?;
        if !seen.insert(r.client()?) {
            return Err(ShapeError("a client has two struct sections"));
        }
        let mut clock = u64::from(r.var_u32()?);
        for _ in 0..blocks {
            clock += block(&mut r)?;
            if clock > u64::from(u32::MAX) {
                return Err(ShapeError("clocks overflow 32 bits"));
            }
        }
    }
    delete_set(&mut r)?;
    r.end()
}

/// One block; returns an upper bound of the clock range it takes.
fn block(r: &mut Reader) -> Walk<u64> {
    let info = r.u8()?;
    if info == BLOCK_GC || info == BLOCK_SKIP {
        return nonempty(r.var_u32()?);
    }
    if info & UNUSED_INFO_BIT != 0 {
        return Err(ShapeError("unknown block flags"));
    }
    if info & HAS_ORIGIN != 0 {
        r.id()?;
    }
    if info & HAS_RIGHT_ORIGIN != 0 {
        r.id()?;
    }
    if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
        // No origins: the parent is spelled out, a root name or an item id.
        if r.var()? == 1 {
            r.string()?;
        } else {
            r.id()?;
        }
        if info & HAS_PARENT_SUB != 0 {
            r.string()?;
        }
    }
    content(r, info & 0x0f)
}

fn content(r: &mut Reader, kind: u8) -> Walk<u64> {
    match kind {
        CONTENT_DELETED => nonempty(r.var_u32()?),
        CONTENT_BINARY => r.buf().map(|_| 1),
        // A string's clock length is in UTF-16 units, never more than its bytes.
        CONTENT_STRING => r.string().map(|len| len as u64),
        CONTENT_TYPE => match r.u8()? {
            TYPE_ARRAY | TYPE_MAP | TYPE_TEXT => Ok(1),
            _ => Err(ShapeError("a shared type meshstudio does not use")),
        },
        CONTENT_ANY => {
            let n = r.count(1)?;
            for _ in 0..n {
                any(r, 0)?;
            }
            Ok(u64::from(n))
        }
        _ => Err(ShapeError("a content kind meshstudio does not use")),
    }
}

/// One lib0 `Any` value, nested at most [`MAX_ANY_DEPTH`] deep.
fn any(r: &mut Reader, depth: usize) -> Walk<()> {
    if depth >= MAX_ANY_DEPTH {
        return Err(ShapeError("values nested too deep"));
    }
    match r.u8()? {
        // undefined, null, false, true
        126 | 127 | 120 | 121 => {}
        125 => r.skip_signed()?,
        124 => r.skip(4)?,
        122 | 123 => r.skip(8)?,
        119 => r.skip_string()?,
        118 => {
            for _ in 0..r.count(2)? {
                r.string()?;
                any(r, depth + 1)?;
            }
        }
        117 => {
            for _ in 0..r.count(1)? {
                any(r, depth + 1)?;
            }
        }
        116 => r.skip_buf()?,
        _ => return Err(ShapeError("an unknown value tag")),
    }
    Ok(())
}

fn delete_set(r: &mut Reader) -> Walk<()> {
    let mut seen = HashSet::new();
    for _ in 0..r.count(2)? {
        if !seen.insert(r.client()?) {
            return Err(ShapeError("a client appears twice in the delete set"));
        }
        for _ in 0..r.count(2)? {
            let clock = u64::from(r.var_u32()?);
            let len = nonempty(r.var_u32()?)?;
            if clock + len > u64::from(u32::MAX) {
                return Err(ShapeError("a deleted range overflows 32 bits"));
            }
        }
    }
    Ok(())
}

fn nonempty(len: u32) -> Walk<u64> {
    if len == 0 {
        return Err(ShapeError("an empty range"));
    }
    Ok(u64::from(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::encoder::Encode;
    use yrs::{Any, Array, Map, MapPrelim, ReadTxn, StateVector, Text, Transact};

    /// A document using every kind of content meshstudio writes.
    fn rich_doc() -> yrs::Doc {
        let doc = yrs::Doc::with_client_id(7);
        let tracks = doc.get_or_insert_map("tracks");
        let lyrics = doc.get_or_insert_text("lyrics");
        let log = doc.get_or_insert_array("log");
        let mut txn = doc.transact_mut();
        let nested = Any::from(vec![Any::from(1.5), Any::Null, Any::from("x")]);
        let track = tracks.insert(&mut txn, "t1", MapPrelim::from([("gain", nested)]));
        track.insert(&mut txn, "name", "Drums ü ☃");
        track.insert(&mut txn, "big", i64::MAX);
        track.insert(&mut txn, "neg", -3i64);
        track.insert(&mut txn, "bytes", Any::Buffer(vec![1u8, 2, 3].into()));
        lyrics.insert(&mut txn, 0, "la la 𝄞 la");
        lyrics.remove_range(&mut txn, 2, 3);
        log.insert(&mut txn, 0, true);
        tracks.remove(&mut txn, "t1");
        drop(txn);
        doc
    }

    #[test]
    fn real_updates_and_state_vectors_pass() {
        let doc = rich_doc();
        let txn = doc.transact();
        let full = txn.encode_state_as_update_v1(&StateVector::default());
        assert_eq!(check_update(&full), Ok(()));
        assert_eq!(check_state_vector(&txn.state_vector().encode_v1()), Ok(()));
        let empty = yrs::Doc::new();
        let none = empty
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        assert_eq!(check_update(&none), Ok(()));
    }

    #[test]
    fn trailing_bytes_and_truncation_are_refused() {
        let doc = rich_doc();
        let mut full = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        for cut in 0..full.len() {
            assert!(check_update(&full[..cut]).is_err(), "cut at {cut}");
        }
        full.push(0);
        assert_eq!(check_update(&full), Err(ShapeError("trailing bytes")));
    }

    /// The fuzzer's yrs 0.28.1 use-after-free: three struct sections for
    /// client 1 with overlapping clocks, then a delete.
    #[test]
    fn a_client_in_two_struct_sections_is_refused() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/corpus/sync_frame/crash-yrs-uaf-duplicate-client"
        );
        let frame = std::fs::read(path).expect("committed");
        assert_eq!(
            check_update(&frame[1..]),
            Err(ShapeError("a client has two struct sections"))
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        // One struct section (client 5, clock 0) with one block: Any content
        // under the root "root", holding one value of arrays in arrays.
        let mut u = vec![1, 1, 5, 0, CONTENT_ANY, 1, 4, b'r', b'o', b'o', b't', 1];
        u.extend(std::iter::repeat_n(117u8, 100).flat_map(|tag| [tag, 1]));
        u.push(126);
        u.push(0);
        assert_eq!(check_update(&u), Err(ShapeError("values nested too deep")));
    }

    #[test]
    fn big_counts_ids_and_clocks_are_refused() {
        // 500 M state-vector entries in 9 bytes.
        let bomb = [0x80, 0xca, 0xb5, 0xee, 0x01, 1, 2, 3, 4];
        assert!(check_state_vector(&bomb).is_err());
        assert!(check_update(&bomb).is_err());
        // A client id of 2^53.
        let sv = [1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10, 0];
        assert_eq!(
            check_state_vector(&sv),
            Err(ShapeError("client id above 2^53"))
        );
        // A GC block of 2^32 − 1 starting at clock 5.
        let gc = [1, 1, 1, 5, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 0];
        assert_eq!(
            check_update(&gc),
            Err(ShapeError("clocks overflow 32 bits"))
        );
        // A deleted range of length 0.
        let ds = [0, 1, 1, 1, 3, 0];
        assert_eq!(check_update(&ds), Err(ShapeError("an empty range")));
    }
}
