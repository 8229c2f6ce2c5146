//! Hard limits on what the codec accepts. Anything outside them is an error
//! naming the limit, never a panic or an unbounded allocation.

/// The only rate stems are stored at.
pub const STEM_RATE_HZ: u32 = 48_000;
/// Inputs with more channels than this are rejected (7.1 is the most a studio brings).
pub const MAX_INPUT_CHANNELS: usize = 8;
/// Lowest and highest input sample rates we resample from.
pub const MIN_INPUT_RATE_HZ: u32 = 8_000;
pub const MAX_INPUT_RATE_HZ: u32 = 384_000;
/// Longest input we accept: a whole day of recording is not a stem.
pub const MAX_DURATION_SECONDS: u64 = 6 * 3600;
/// Most frames one decoded packet may hold before we call the file hostile.
pub const MAX_FRAMES_PER_PACKET: usize = 1 << 20;
/// Largest Opus packet we accept from a file: 120 ms of 1275-byte frames (RFC 6716 §3.2.5 bound).
pub const MAX_OPUS_PACKET_BYTES: usize = 48 * 1275;
/// Largest Ogg Opus header packet (OpusTags may carry cover art).
pub const MAX_OPUS_HEADER_BYTES: usize = 16 << 20;
/// Longest Opus packet duration (120 ms at 48 kHz), per channel.
pub const MAX_OPUS_FRAME_SAMPLES: usize = 5760;
/// Encoder frame: 20 ms at 48 kHz, the opusenc default.
pub const OPUS_FRAME_SAMPLES: usize = 960;
/// Output buffer for one encoded Opus frame (libopus' recommended maximum).
pub const MAX_ENCODED_FRAME_BYTES: usize = 4000;
/// Ogg pages are flushed after this many packets (1 s of audio), like opusenc.
pub const PACKETS_PER_OGG_PAGE: u32 = 50;
/// Bitrate range the CLI accepts, in kbit/s.
pub const MIN_BITRATE_KBPS: u32 = 32;
pub const MAX_BITRATE_KBPS: u32 = 512;

/// Parses a bitrate in kbit/s and checks it against the accepted range.
pub fn parse_bitrate_kbps(s: &str) -> Result<u32, String> {
    let kbps: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of kbit/s"))?;
    if (MIN_BITRATE_KBPS..=MAX_BITRATE_KBPS).contains(&kbps) {
        Ok(kbps)
    } else {
        Err(format!(
            "{kbps} is outside {MIN_BITRATE_KBPS}..={MAX_BITRATE_KBPS} kbit/s"
        ))
    }
}
/// Frames handed from stage to stage in the streaming pipeline.
pub const BLOCK_FRAMES: usize = 4096;

/// Most 48 kHz frames a stem may hold.
pub const MAX_STEM_FRAMES: u64 = MAX_DURATION_SECONDS * STEM_RATE_HZ as u64;
