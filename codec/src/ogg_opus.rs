//! Ogg Opus files per RFC 7845: the writer that makes our stems and the
//! reader that plays them (and Ogg Opus imports) back at 48 kHz.
//!
//! Sample accuracy lives here: the writer records the encoder lookahead as
//! pre-skip and the true length in the last granule position; the reader
//! drops the pre-skip and trims the end to that granule.

use std::io::{Read, Seek, Write};

use ogg::{PacketReader, PacketWriteEndInfo, PacketWriter};

use crate::error::{CodecError, Result};
use crate::limits::*;

const FORMAT: &str = "ogg opus";
/// The Ogg stream serial of stems. Fixed, not random, so that the same audio
/// encoded at two sites gives the same bytes and therefore the same blob hash;
/// our files hold one logical stream, so uniqueness within the file holds.
const STEM_SERIAL: u32 = 0x6d73_7464; // "mstd"
const OPUS_HEAD_MAGIC: &[u8; 8] = b"OpusHead";
const OPUS_TAGS_MAGIC: &[u8; 8] = b"OpusTags";
const OPUS_HEAD_LEN: usize = 19;

/// The identification header (RFC 7845 §5.1), mapping families 0 and 1 only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusHead {
    pub channels: u8,
    pub pre_skip: u16,
    pub input_rate: u32,
    /// Q7.8 dB, applied on decode.
    pub output_gain: i16,
    pub mapping_family: u8,
}

impl OpusHead {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(OPUS_HEAD_LEN);
        b.extend_from_slice(OPUS_HEAD_MAGIC);
        b.push(1); // version
        b.push(self.channels);
        b.extend_from_slice(&self.pre_skip.to_le_bytes());
        b.extend_from_slice(&self.input_rate.to_le_bytes());
        b.extend_from_slice(&self.output_gain.to_le_bytes());
        b.push(self.mapping_family);
        b
    }

    pub fn parse(b: &[u8]) -> Result<Self> {
        if b.len() < OPUS_HEAD_LEN || &b[..8] != OPUS_HEAD_MAGIC {
            return Err(CodecError::malformed(
                FORMAT,
                "first packet is not an OpusHead",
            ));
        }
        if b[8] & 0xF0 != 0 {
            return Err(CodecError::Unsupported(format!(
                "Ogg Opus version {}",
                b[8]
            )));
        }
        let head = OpusHead {
            channels: b[9],
            pre_skip: u16::from_le_bytes([b[10], b[11]]),
            input_rate: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
            output_gain: i16::from_le_bytes([b[16], b[17]]),
            mapping_family: b[18],
        };
        if head.channels == 0 {
            return Err(CodecError::malformed(
                FORMAT,
                "OpusHead declares 0 channels",
            ));
        }
        let single_stream = match head.mapping_family {
            0 => head.channels <= 2,
            // Family 1 with one or two channels is one (coupled) stream, like family 0.
            1 => head.channels <= 2 && b.len() >= OPUS_HEAD_LEN + 2 + head.channels as usize,
            _ => false,
        };
        if !single_stream {
            return Err(CodecError::Unsupported(format!(
                "multichannel Ogg Opus ({} channels, mapping family {}); convert to stereo first",
                head.channels, head.mapping_family
            )));
        }
        Ok(head)
    }
}

/// Encoder settings. Defaults equal opusenc's: complexity 10, unconstrained
/// VBR, 20 ms frames, the "audio" application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusSettings {
    pub bitrate_kbps: u32,
    pub complexity: i32,
    /// OpusHead output gain in Q7.8 dB, applied by every decoder (RFC 7845
    /// §5.1): how a stem can be loudness-normalised without re-encoding.
    pub output_gain_q8: i16,
}

impl OpusSettings {
    /// opusenc-like defaults: 128 kbit/s for stereo, 96 for mono.
    pub fn for_channels(channels: usize) -> Self {
        let bitrate_kbps = if channels >= 2 { 128 } else { 96 };
        OpusSettings {
            bitrate_kbps,
            complexity: 10,
            output_gain_q8: 0,
        }
    }

    pub fn with_bitrate(mut self, kbps: Option<u32>) -> Result<Self> {
        if let Some(kbps) = kbps {
            if !(MIN_BITRATE_KBPS..=MAX_BITRATE_KBPS).contains(&kbps) {
                return Err(CodecError::Limit(format!(
                    "bitrate {kbps} kbit/s is outside {MIN_BITRATE_KBPS}..={MAX_BITRATE_KBPS}"
                )));
            }
            self.bitrate_kbps = kbps;
        }
        Ok(self)
    }
}

fn opus_channels(channels: usize) -> Result<opus::Channels> {
    match channels {
        1 => Ok(opus::Channels::Mono),
        2 => Ok(opus::Channels::Stereo),
        n => Err(CodecError::Unsupported(format!(
            "{n} channels in an Opus stream"
        ))),
    }
}

fn enc_err(e: opus::Error) -> CodecError {
    CodecError::Encoder(e.to_string())
}

/// Streams 48 kHz interleaved f32 into an Ogg Opus file.
pub struct OggOpusWriter<W: Write> {
    encoder: opus::Encoder,
    pages: PacketWriter<'static, W>,
    channels: usize,
    pre_skip: u64,
    /// One 20 ms frame being filled.
    frame: Vec<f32>,
    frame_fill: usize,
    /// The last encoded packet, held back until we know whether it ends the stream.
    pending: Option<Vec<u8>>,
    packet_buf: Vec<u8>,
    samples_in: u64,
    samples_encoded: u64,
    packets_in_page: u32,
}

impl<W: Write> OggOpusWriter<W> {
    /// Writes both headers. `input_rate` is the rate of the original file;
    /// `lsb_depth` its bit depth (as opusenc passes it to the encoder).
    pub fn new(
        out: W,
        channels: usize,
        input_rate: u32,
        settings: OpusSettings,
        lsb_depth: u32,
    ) -> Result<Self> {
        let mut encoder = opus::Encoder::new(
            STEM_RATE_HZ,
            opus_channels(channels)?,
            opus::Application::Audio,
        )
        .map_err(enc_err)?;
        encoder
            .set_bitrate(opus::Bitrate::Bits(settings.bitrate_kbps as i32 * 1000))
            .map_err(enc_err)?;
        encoder
            .set_complexity(settings.complexity)
            .map_err(enc_err)?;
        encoder.set_vbr(true).map_err(enc_err)?;
        encoder.set_vbr_constraint(false).map_err(enc_err)?;
        encoder
            .set_lsb_depth(lsb_depth.clamp(8, 24) as i32)
            .map_err(enc_err)?;
        let pre_skip = encoder.get_lookahead().map_err(enc_err)?;
        let head = OpusHead {
            channels: channels as u8,
            pre_skip: pre_skip as u16,
            input_rate,
            output_gain: settings.output_gain_q8,
            mapping_family: 0,
        };
        let mut pages = PacketWriter::new(out);
        pages.write_packet(head.to_bytes(), STEM_SERIAL, PacketWriteEndInfo::EndPage, 0)?;
        pages.write_packet(opus_tags(), STEM_SERIAL, PacketWriteEndInfo::EndPage, 0)?;
        Ok(OggOpusWriter {
            encoder,
            pages,
            channels,
            pre_skip: pre_skip as u64,
            frame: vec![0.0; OPUS_FRAME_SAMPLES * channels],
            frame_fill: 0,
            pending: None,
            packet_buf: vec![0; MAX_ENCODED_FRAME_BYTES],
            samples_in: 0,
            samples_encoded: 0,
            packets_in_page: 0,
        })
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Samples per channel accepted so far.
    pub fn samples_written(&self) -> u64 {
        self.samples_in
    }

    /// Appends interleaved 48 kHz samples.
    pub fn write(&mut self, mut samples: &[f32]) -> Result<()> {
        self.samples_in += (samples.len() / self.channels) as u64;
        if self.samples_in > MAX_STEM_FRAMES {
            return Err(CodecError::Limit(format!(
                "longer than {} hours",
                MAX_DURATION_SECONDS / 3600
            )));
        }
        while !samples.is_empty() {
            let room = self.frame.len() - self.frame_fill;
            let take = room.min(samples.len());
            self.frame[self.frame_fill..self.frame_fill + take].copy_from_slice(&samples[..take]);
            self.frame_fill += take;
            samples = &samples[take..];
            if self.frame_fill == self.frame.len() {
                self.encode_frame()?;
            }
        }
        Ok(())
    }

    fn encode_frame(&mut self) -> Result<()> {
        let len = self
            .encoder
            .encode_float(&self.frame, &mut self.packet_buf)
            .map_err(enc_err)?;
        self.frame_fill = 0;
        self.samples_encoded += OPUS_FRAME_SAMPLES as u64;
        let packet = self.packet_buf[..len].to_vec();
        if let Some(previous) = self.pending.replace(packet) {
            // Not the last packet: its granule is simply what has been encoded
            // before the one now pending.
            let granule = self.samples_encoded - OPUS_FRAME_SAMPLES as u64;
            self.packets_in_page += 1;
            let end = if self.packets_in_page >= PACKETS_PER_OGG_PAGE {
                self.packets_in_page = 0;
                PacketWriteEndInfo::EndPage
            } else {
                PacketWriteEndInfo::NormalPacket
            };
            self.pages
                .write_packet(previous, STEM_SERIAL, end, granule)?;
        }
        Ok(())
    }

    /// Pads the encoder past its lookahead, writes the last page with the
    /// exact end granule, and returns the sink and the samples per channel.
    pub fn finish(mut self) -> Result<(W, u64)> {
        let needed = self.samples_in + self.pre_skip;
        while self.samples_encoded < needed || self.pending.is_none() {
            let fill = self.frame_fill;
            self.frame[fill..].fill(0.0);
            self.frame_fill = self.frame.len();
            self.encode_frame()?;
        }
        let last = self
            .pending
            .take()
            .expect("loop above leaves one packet pending");
        self.pages
            .write_packet(last, STEM_SERIAL, PacketWriteEndInfo::EndStream, needed)?;
        let mut out = self.pages.into_inner();
        out.flush()?;
        Ok((out, self.samples_in))
    }
}

fn opus_tags() -> Vec<u8> {
    let vendor = format!(
        "meshstudio-codec {} ({})",
        env!("CARGO_PKG_VERSION"),
        opus::version()
    );
    let comment = b"ENCODER=meshstudio";
    let mut b = Vec::new();
    b.extend_from_slice(OPUS_TAGS_MAGIC);
    b.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    b.extend_from_slice(vendor.as_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&(comment.len() as u32).to_le_bytes());
    b.extend_from_slice(comment);
    b
}

/// True when `prefix` (the first bytes of a file) starts an Ogg Opus stream.
pub fn looks_like_ogg_opus(prefix: &[u8]) -> bool {
    if prefix.len() < 27 || &prefix[..4] != b"OggS" {
        return false;
    }
    let body = 27 + prefix[26] as usize;
    prefix.get(body..body + 8) == Some(OPUS_HEAD_MAGIC.as_slice())
}

fn ogg_err(e: ogg::OggReadError) -> CodecError {
    match e {
        ogg::OggReadError::ReadError(io) => classify_io(io),
        other => CodecError::malformed(FORMAT, other.to_string()),
    }
}

fn classify_io(e: std::io::Error) -> CodecError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        CodecError::Truncated("the Ogg stream ends mid-page".into())
    } else {
        CodecError::Io(e)
    }
}

/// Decodes an Ogg Opus stream to interleaved 48 kHz f32, pre-skip dropped,
/// end trimmed, output gain applied.
pub struct OggOpusReader<R: Read + Seek> {
    packets: PacketReader<R>,
    decoder: opus::Decoder,
    head: OpusHead,
    serial: u32,
    /// Output samples per channel still to drop (pre-skip).
    skip: usize,
    /// Samples per channel produced after pre-skip.
    produced: u64,
    pcm: Vec<f32>,
    finished: bool,
}

impl<R: Read + Seek> OggOpusReader<R> {
    pub fn new(input: R) -> Result<Self> {
        let mut packets = PacketReader::new(input);
        let first = packets
            .read_packet()
            .map_err(ogg_err)?
            .ok_or_else(|| CodecError::Truncated("empty Ogg stream".into()))?;
        let head = OpusHead::parse(&first.data)?;
        let serial = first.stream_serial();
        let tags = next_packet_of(&mut packets, serial)?
            .ok_or_else(|| CodecError::Truncated("no OpusTags header".into()))?;
        if tags.len() > MAX_OPUS_HEADER_BYTES || !tags.starts_with(OPUS_TAGS_MAGIC) {
            return Err(CodecError::malformed(
                FORMAT,
                "second packet is not OpusTags",
            ));
        }
        let channels = opus_channels(head.channels as usize)?;
        let mut decoder = opus::Decoder::new(STEM_RATE_HZ, channels)
            .map_err(|e| CodecError::malformed(FORMAT, e.to_string()))?;
        decoder
            .set_gain(head.output_gain as i32)
            .map_err(|e| CodecError::malformed(FORMAT, e.to_string()))?;
        Ok(OggOpusReader {
            packets,
            decoder,
            skip: head.pre_skip as usize,
            head,
            serial,
            produced: 0,
            pcm: vec![0.0; MAX_OPUS_FRAME_SAMPLES * channels as usize],
            finished: false,
        })
    }

    pub fn head(&self) -> &OpusHead {
        &self.head
    }

    pub fn channels(&self) -> usize {
        self.head.channels as usize
    }

    /// The next block of decoded samples, or `None` at the end of the stream.
    pub fn read_block(&mut self) -> Result<Option<&[f32]>> {
        Ok(self.read_range()?.map(|r| &self.pcm[r]))
    }

    pub(crate) fn block(&self) -> &[f32] {
        &self.pcm
    }

    /// Decodes the next packet; the range of `block()` it filled.
    pub(crate) fn read_range(&mut self) -> Result<Option<std::ops::Range<usize>>> {
        let ch = self.channels();
        loop {
            if self.finished {
                return Ok(None);
            }
            let Some(packet) = self.packets.read_packet().map_err(ogg_err)? else {
                return Err(CodecError::Truncated(
                    "the Ogg Opus stream ends without its last page".into(),
                ));
            };
            if packet.stream_serial() != self.serial {
                continue; // another logical stream (e.g. a video track)
            }
            if packet.data.len() > MAX_OPUS_PACKET_BYTES {
                return Err(CodecError::Limit(format!(
                    "an Opus packet of {} bytes",
                    packet.data.len()
                )));
            }
            let n = self
                .decoder
                .decode_float(&packet.data, &mut self.pcm, false)
                .map_err(|e| CodecError::malformed(FORMAT, format!("opus packet: {e}")))?;
            let mut start = self.skip.min(n);
            self.skip -= start;
            let mut end = n;
            if packet.last_in_stream() {
                self.finished = true;
                end = self.trim_end(packet.absgp_page(), start, n)?;
                start = start.min(end);
            }
            self.produced += (end - start) as u64;
            if self.produced > MAX_STEM_FRAMES {
                return Err(CodecError::Limit(format!(
                    "longer than {} hours",
                    MAX_DURATION_SECONDS / 3600
                )));
            }
            if end > start {
                return Ok(Some(start * ch..end * ch));
            }
        }
    }

    /// Where the last packet's output ends, from the final granule position.
    fn trim_end(&self, granule: u64, start: usize, n: usize) -> Result<usize> {
        let total = granule
            .checked_sub(self.head.pre_skip as u64)
            .ok_or_else(|| {
                CodecError::malformed(FORMAT, "final granule position is before the pre-skip")
            })?;
        let already = self.produced;
        let want = total.saturating_sub(already) as usize;
        Ok((start + want).min(n))
    }
}

fn next_packet_of<R: Read + Seek>(
    packets: &mut PacketReader<R>,
    serial: u32,
) -> Result<Option<Vec<u8>>> {
    while let Some(p) = packets.read_packet().map_err(ogg_err)? {
        if p.stream_serial() == serial {
            return Ok(Some(p.data));
        }
    }
    Ok(None)
}

/// The granule position of the last page in the final `tail` bytes of a
/// file, used to know an Ogg Opus file's length without decoding it.
pub fn last_granule(tail: &[u8]) -> Option<u64> {
    let mut i = tail.len().checked_sub(27)?;
    loop {
        if &tail[i..i + 4] == b"OggS" && tail[i + 4] == 0 {
            let gp = u64::from_le_bytes(tail[i + 6..i + 14].try_into().ok()?);
            if gp != u64::MAX {
                return Some(gp);
            }
        }
        i = i.checked_sub(1)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn sine(frames: usize, channels: usize) -> Vec<f32> {
        (0..frames * channels)
            .map(|i| ((i / channels) as f32 * 440.0 * std::f32::consts::TAU / 48_000.0).sin() * 0.5)
            .collect()
    }

    fn roundtrip(frames: usize, channels: usize) -> Vec<f32> {
        roundtrip_with(frames, channels, OpusSettings::for_channels(channels))
    }

    fn roundtrip_with(frames: usize, channels: usize, settings: OpusSettings) -> Vec<f32> {
        let mut w = OggOpusWriter::new(Vec::new(), channels, 44_100, settings, 16).unwrap();
        for block in sine(frames, channels).chunks(1000 * channels) {
            w.write(block).unwrap();
        }
        let (bytes, n) = w.finish().unwrap();
        assert_eq!(n, frames as u64);
        let mut r = OggOpusReader::new(Cursor::new(bytes)).unwrap();
        assert_eq!(r.head().input_rate, 44_100);
        let mut out = Vec::new();
        while let Some(block) = r.read_block().unwrap() {
            out.extend_from_slice(block);
        }
        out
    }

    #[test]
    fn sample_counts_survive_the_round_trip() {
        for frames in [0, 1, 959, 960, 961, 48_000, 100_003] {
            for ch in [1, 2] {
                assert_eq!(
                    roundtrip(frames, ch).len(),
                    frames * ch,
                    "{frames} frames, {ch} ch"
                );
            }
        }
    }

    #[test]
    fn output_gain_is_applied_on_decode() {
        let rms = |x: &[f32]| (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        let plain = roundtrip(48_000, 1);
        let mut quieter = OpusSettings::for_channels(1);
        quieter.output_gain_q8 = -6 * 256;
        let quieter = roundtrip_with(48_000, 1, quieter);
        let db = 20.0 * (rms(&quieter[4800..]) / rms(&plain[4800..])).log10();
        assert!((db + 6.0).abs() < 0.1, "gain came out as {db} dB");
    }

    #[test]
    fn head_round_trips_and_rejects_garbage() {
        let head = OpusHead {
            channels: 2,
            pre_skip: 312,
            input_rate: 44_100,
            output_gain: -256,
            mapping_family: 0,
        };
        assert_eq!(OpusHead::parse(&head.to_bytes()).unwrap(), head);
        assert!(OpusHead::parse(b"OpusHead").is_err());
        let mut six = head.to_bytes();
        six[9] = 6;
        assert!(matches!(
            OpusHead::parse(&six),
            Err(CodecError::Unsupported(_))
        ));
    }

    #[test]
    fn bitrate_limits_are_enforced() {
        let s = OpusSettings::for_channels(2);
        assert!(s.with_bitrate(Some(31)).is_err());
        assert!(s.with_bitrate(Some(513)).is_err());
        assert_eq!(s.with_bitrate(Some(64)).unwrap().bitrate_kbps, 64);
    }
}
