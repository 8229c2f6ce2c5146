//! The one piece of MP4 that symphonia 0.6 reads but does not apply: the
//! audio track's edit list, which is how AAC encoders say "drop the first
//! 1024+ priming samples and stop at the true length". Without it every
//! imported m4a would start ~21 ms late.
//!
//! A minimal, bounded box walker: it seeks over everything but the few
//! small boxes it needs and gives up quietly (`None`) on anything odd,
//! leaving the decode to symphonia's own checks.

use std::io::{Read, Seek, SeekFrom};

/// Largest box body we read into memory (mvhd, mdhd, hdlr, elst are tiny).
const MAX_SMALL_BOX_BYTES: u64 = 64 * 1024;
/// Boxes nest moov/trak/mdia or moov/trak/edts: never deeper than this.
const MAX_DEPTH: usize = 4;
/// Top-level and per-container box counts we walk before giving up.
const MAX_BOXES_PER_LEVEL: usize = 4096;

/// What to cut from the decoded audio, in frames at the track's sample rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edit {
    pub skip_frames: u64,
    pub keep_frames: Option<u64>,
}

#[derive(Debug, Default)]
struct Track {
    is_audio: bool,
    media_timescale: u64,
    media_duration: u64,
    /// (segment duration in movie ticks, media time in media ticks)
    edit: Option<(u64, i64)>,
}

struct BoxHeader {
    kind: [u8; 4],
    body_start: u64,
    body_len: u64,
}

fn read_header<R: Read + Seek>(r: &mut R, end: u64) -> Option<BoxHeader> {
    let start = r.stream_position().ok()?;
    if start + 8 > end {
        return None;
    }
    let mut h = [0u8; 8];
    r.read_exact(&mut h).ok()?;
    let size32 = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as u64;
    let kind = [h[4], h[5], h[6], h[7]];
    let (size, header_len) = match size32 {
        0 => (end - start, 8),
        1 => {
            let mut l = [0u8; 8];
            r.read_exact(&mut l).ok()?;
            (u64::from_be_bytes(l), 16)
        }
        n => (n, 8),
    };
    if size < header_len || start.checked_add(size)? > end {
        return None;
    }
    Some(BoxHeader {
        kind,
        body_start: start + header_len,
        body_len: size - header_len,
    })
}

fn read_body<R: Read + Seek>(r: &mut R, h: &BoxHeader) -> Option<Vec<u8>> {
    if h.body_len > MAX_SMALL_BOX_BYTES {
        return None;
    }
    let mut b = vec![0u8; h.body_len as usize];
    r.seek(SeekFrom::Start(h.body_start)).ok()?;
    r.read_exact(&mut b).ok()?;
    Some(b)
}

fn be_u32(b: &[u8], at: usize) -> Option<u64> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?) as u64)
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// (timescale, duration) from an mvhd or mdhd body (version 0 or 1).
fn timescale_and_duration(b: &[u8]) -> Option<(u64, u64)> {
    match b.first()? {
        0 => Some((be_u32(b, 12)?, be_u32(b, 16)?)),
        1 => Some((be_u32(b, 20)?, be_u64(b, 24)?)),
        _ => None,
    }
}

/// The first edit that maps media (media_time ≠ -1).
fn first_edit(b: &[u8]) -> Option<(u64, i64)> {
    let version = *b.first()?;
    let count = be_u32(b, 4)? as usize;
    let entry_len = if version == 1 { 20 } else { 12 };
    (0..count.min(b.len() / entry_len)).find_map(|i| {
        let at = 8 + i * entry_len;
        let (dur, time) = if version == 1 {
            (be_u64(b, at)?, be_u64(b, at + 8)? as i64)
        } else {
            (be_u32(b, at)?, be_u32(b, at + 4)? as u32 as i32 as i64)
        };
        (time >= 0).then_some((dur, time))
    })
}

/// Walks the children of a box, calling `visit` on each header.
fn walk<R: Read + Seek>(
    r: &mut R,
    start: u64,
    end: u64,
    mut visit: impl FnMut(&mut R, &BoxHeader) -> Option<()>,
) -> Option<()> {
    r.seek(SeekFrom::Start(start)).ok()?;
    for _ in 0..MAX_BOXES_PER_LEVEL {
        let Some(h) = read_header(r, end) else {
            return Some(());
        };
        visit(r, &h)?;
        r.seek(SeekFrom::Start(h.body_start + h.body_len)).ok()?;
    }
    None
}

fn read_track<R: Read + Seek>(r: &mut R, trak: &BoxHeader, depth: usize) -> Option<Track> {
    let mut t = Track::default();
    walk(
        r,
        trak.body_start,
        trak.body_start + trak.body_len,
        |r, h| {
            match &h.kind {
                b"mdhd" => {
                    (t.media_timescale, t.media_duration) =
                        timescale_and_duration(&read_body(r, h)?)?;
                }
                b"hdlr" => t.is_audio = read_body(r, h)?.get(8..12) == Some(b"soun".as_slice()),
                b"elst" => t.edit = first_edit(&read_body(r, h)?),
                b"mdia" | b"edts" if depth < MAX_DEPTH => {
                    let inner = read_track(r, h, depth + 1)?;
                    t.is_audio |= inner.is_audio;
                    if inner.media_timescale != 0 {
                        (t.media_timescale, t.media_duration) =
                            (inner.media_timescale, inner.media_duration);
                    }
                    t.edit = t.edit.or(inner.edit);
                }
                _ => {}
            }
            Some(())
        },
    )?;
    Some(t)
}

/// An edit list as found, in the file's own time units.
#[derive(Debug)]
pub struct RawEdit {
    track: Track,
    movie_timescale: u64,
}

impl RawEdit {
    /// The edit in frames at the decoder's output `rate`.
    pub fn at_rate(&self, rate: u32) -> Option<Edit> {
        to_frames(&self.track, self.movie_timescale, rate)
    }
}

/// The edit list of the first audio track; `None` when the file has none
/// or is not an MP4.
pub fn audio_edit<R: Read + Seek>(r: &mut R) -> Option<RawEdit> {
    let file_end = r.seek(SeekFrom::End(0)).ok()?;
    let mut moov = None;
    walk(r, 0, file_end, |_, h| {
        if &h.kind == b"moov" {
            moov = Some(BoxHeader {
                kind: h.kind,
                body_start: h.body_start,
                body_len: h.body_len,
            });
        }
        Some(())
    })?;
    let moov = moov?;
    let mut movie_timescale = 0;
    let mut audio = None;
    walk(
        r,
        moov.body_start,
        moov.body_start + moov.body_len,
        |r, h| {
            match &h.kind {
                b"mvhd" => movie_timescale = timescale_and_duration(&read_body(r, h)?)?.0,
                b"trak" if audio.is_none() => {
                    audio = read_track(r, h, 1).filter(|t| t.is_audio);
                }
                _ => {}
            }
            Some(())
        },
    )?;
    let track = audio?;
    track.edit?;
    Some(RawEdit {
        track,
        movie_timescale,
    })
}

fn to_frames(t: &Track, movie_timescale: u64, rate: u32) -> Option<Edit> {
    let (segment, media_time) = t.edit?;
    if t.media_timescale == 0 || movie_timescale == 0 {
        return None;
    }
    let media_time = media_time as u64;
    let mut keep = (segment as u128 * t.media_timescale as u128 / movie_timescale as u128) as u64;
    // The segment is rounded to the coarse movie timescale (often ms); when
    // the media duration agrees within one tick, it is the exact length.
    let exact = t.media_duration.saturating_sub(media_time);
    if keep.abs_diff(exact) <= t.media_timescale.div_ceil(movie_timescale) {
        keep = exact;
    }
    let frames = |ticks: u64| (ticks as u128 * rate as u128 / t.media_timescale as u128) as u64;
    Some(Edit {
        skip_frames: frames(media_time),
        keep_frames: (segment > 0).then(|| frames(keep)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(body);
        b
    }

    fn be(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    /// What ffmpeg writes for 71042 frames of AAC at 48 kHz.
    fn ffmpeg_like_m4a() -> Vec<u8> {
        let mvhd = bx(b"mvhd", &be(&[0, 0, 0, 1000, 1481]));
        let mdhd = bx(b"mdhd", &be(&[0, 0, 0, 48_000, 72_066]));
        let hdlr = bx(b"hdlr", &[&be(&[0, 0])[..], b"soun"].concat());
        let elst = bx(b"elst", &be(&[0, 1, 1480, 1024, 0x0001_0000]));
        let trak = bx(
            b"trak",
            &[bx(b"edts", &elst), bx(b"mdia", &[mdhd, hdlr].concat())].concat(),
        );
        [
            bx(b"ftyp", b"M4A \0\0\0\0"),
            bx(b"moov", &[mvhd, trak].concat()),
        ]
        .concat()
    }

    #[test]
    fn ffmpeg_edit_list_gives_the_exact_length() {
        let edit = audio_edit(&mut Cursor::new(ffmpeg_like_m4a())).and_then(|e| e.at_rate(48_000));
        assert_eq!(
            edit,
            Some(Edit {
                skip_frames: 1024,
                keep_frames: Some(71_042)
            })
        );
    }

    #[test]
    fn every_truncation_is_harmless() {
        let file = ffmpeg_like_m4a();
        for len in 0..file.len() {
            let _ = audio_edit(&mut Cursor::new(&file[..len]));
        }
    }

    #[test]
    fn garbage_gives_no_edit() {
        assert!(audio_edit(&mut Cursor::new(vec![0xffu8; 100])).is_none());
        assert!(audio_edit(&mut Cursor::new(Vec::new())).is_none());
    }
}
