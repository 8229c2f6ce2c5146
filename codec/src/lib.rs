//! meshstudio-codec: audio formats, and nothing else.
//!
//! Knows how to turn any audio file a studio has (wav, flac, mp3, ogg
//! vorbis, ogg opus, m4a/aac) into 48 kHz samples and those into Ogg Opus
//! stems or WAV files, sample-accurately and in bounded memory; measures
//! loudness and draws waveform summaries. Reads and writes Standard MIDI
//! Files too, as events on the same 48 kHz timeline.
//!
//! Knows nothing about the network, the database, projects or the CLI: it
//! reads from `Read + Seek` and writes to `Write`. Callers name files in
//! error messages; temp files and renames are the caller's job.

pub mod analysis;
pub mod channels;
pub mod decode;
pub mod error;
pub mod flac;
pub mod fuzzing;
mod guard;
pub mod limits;
pub mod midi;
mod mp4_edit;
pub mod ogg_opus;
pub mod pipeline;
pub mod resample;
pub mod wav;

pub use analysis::{Loudness, LoudnessReport, Waveform};
pub use decode::{AudioReader, SourceInfo};
pub use error::{CodecError, Result};
pub use flac::{FlacReport, encode_flac};
pub use guard::install_panic_hook;
pub use midi::{MidiEvent, MidiTrack, SmfTiming, merge_tracks, parse_smf, write_smf};
pub use ogg_opus::{OggOpusReader, OggOpusWriter, OpusSettings};
pub use pipeline::{
    DecodeReport, EncodeReport, Observer, ProbeReport, Quiet, decode_wav, encode_opus, probe,
};
pub use wav::{WavFormat, WavWriter};
