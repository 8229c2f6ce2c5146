//! `mixdown`: the project rendered to one WAV or Ogg Opus file through the
//! same `render()` live playback will use. Deterministic: fixed summation
//! order, no dither, so the same project and stems give the same bytes on
//! every node. Reads the Opus stems and plays MIDI clips through the
//! SoundFont synth; a missing stem is an error naming it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshstudio_codec::midi::{MAX_SMF_BYTES, MidiEvent, merge_tracks, parse_smf};
use meshstudio_codec::{
    AudioReader, Loudness, Observer, OggOpusWriter, OpusSettings, WavFormat, WavWriter,
    channels::default_layout,
};
use meshstudio_store::Hash;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Context, RequestError, Result, resolve};
use crate::atomic::{AtomicFile, TrackedWriter, read_capped};
use crate::audio::mixdown::{ClipSource, MixError, mixdown};
use crate::audio::render::{Mix, MixClip, MixTrack};
use crate::audio::stem::StemClip;
use crate::audio::synth::{DEFAULT_SOUNDFONT, MidiClip, SoundFont};
use crate::project::ProjectView;

const RATE_HZ: u32 = 48_000;
/// `--normalize` never lets the true peak above this.
pub const MAX_TRUE_PEAK_DBTP: f64 = -1.0;
/// Loudness targets we accept, in LUFS.
const NORMALIZE_RANGE_LUFS: std::ops::RangeInclusive<f64> = -40.0..=-5.0;

/// WAV sample format of a mixdown.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleFormat {
    #[default]
    S16,
    S24,
    F32,
}

impl From<SampleFormat> for WavFormat {
    fn from(f: SampleFormat) -> Self {
        match f {
            SampleFormat::S16 => WavFormat::Int16,
            SampleFormat::S24 => WavFormat::Int24,
            SampleFormat::F32 => WavFormat::Float32,
        }
    }
}

/// What the output file is, from its extension.
#[derive(Clone, Copy)]
enum Kind {
    Wav(WavFormat),
    Opus,
}

fn kind_of(out: &Path, format: SampleFormat) -> Result<Kind> {
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("wav") => Ok(Kind::Wav(format.into())),
        Some("opus") => Ok(Kind::Opus),
        _ => Err(RequestError::Invalid(format!(
            "{}: a mixdown is a .wav or .opus file",
            out.display()
        ))),
    }
}

/// A clip's stem: its blob, the name people know it by, and whether it
/// is a MIDI clip (a Standard MIDI File) rather than Ogg Opus audio.
struct StemRef {
    hash: Hash,
    name: String,
    midi: bool,
}

/// The mix and, per (track, clip), its stem.
fn mix_of(view: &ProjectView) -> (Mix, Vec<Vec<Option<StemRef>>>) {
    let frames = |v: i64| v.max(0) as u64;
    let mut stems = Vec::new();
    let tracks = view
        .tracks
        .iter()
        .map(|t| {
            stems.push(
                t.clips
                    .iter()
                    .map(|c| {
                        c.blob.parse().ok().map(|hash| StemRef {
                            hash,
                            name: c.source.clone(),
                            midi: t.kind == MIDI_KIND,
                        })
                    })
                    .collect(),
            );
            MixTrack {
                gain_db: t.gain_db as f32,
                pan: t.pan as f32,
                mute: t.mute,
                solo: t.solo,
                clips: t
                    .clips
                    .iter()
                    .map(|c| MixClip {
                        start: frames(c.start),
                        offset: frames(c.offset),
                        length: frames(c.length),
                        gain_db: c.gain_db as f32,
                        fade_in: frames(c.fade_in),
                        fade_out: frames(c.fade_out),
                    })
                    .collect(),
            }
        })
        .collect();
    (Mix { tracks }, stems)
}

pub fn run(
    ctx: &mut Context,
    project: &str,
    out: &Path,
    format: SampleFormat,
    normalize: Option<f64>,
    progress: &dyn Observer,
) -> Result<Value> {
    let kind = kind_of(out, format)?;
    if let Some(t) = normalize.filter(|t| !NORMALIZE_RANGE_LUFS.contains(t)) {
        return Err(RequestError::Invalid(format!(
            "--normalize {t} LUFS is outside -40..-5"
        )));
    }
    let view = ProjectView::of(&resolve::project(ctx.store()?, project)?);
    let song = SongAudio::load(ctx, &view)?;
    let (mix, open) = (&song.mix, |t: usize, c: usize| song.open(t, c));
    let target = AtomicFile::create(out).map_err(|e| write_err(out, e))?;
    let mut writer = target.writer().map_err(|e| write_err(out, e))?;
    let (frames, applied) = match normalize {
        None => (bounce(mix, &open, kind, &mut writer, 1.0, progress)?, None),
        Some(lufs) => bounce_normalized(
            mix,
            &open,
            kind,
            &mut writer,
            lufs,
            song.scratch.path(),
            progress,
        )?,
    };
    std::io::Write::flush(&mut writer).map_err(|e| write_err(out, e))?;
    drop(writer);
    target.commit().map_err(|e| write_err(out, e))?;
    Ok(json!({
        "project": view.id,
        "output": out,
        "frames": frames,
        "normalize": applied,
        "warnings": song.warnings,
    }))
}

/// `export-stems`: one full-length WAV per track, post-fader (gain and
/// pan applied, mute and solo ignored), all as long as the song so they
/// line up from 0 in any other tool.
pub fn export_tracks(
    ctx: &mut Context,
    project: &str,
    dir: &Path,
    format: SampleFormat,
    progress: &dyn Observer,
) -> Result<Value> {
    let view = ProjectView::of(&resolve::project(ctx.store()?, project)?);
    let song = SongAudio::load(ctx, &view)?;
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e))?;
    let mut written = Vec::new();
    for (i, track) in view.tracks.iter().enumerate() {
        let only = only_track(&song.mix, i);
        let open = |t: usize, c: usize| song.open(t, c);
        let out = dir.join(format!("{:02} {}.wav", i + 1, file_safe(&track.name)));
        let target = AtomicFile::create(&out).map_err(|e| write_err(&out, e))?;
        let mut writer = target.writer().map_err(|e| write_err(&out, e))?;
        bounce(
            &only,
            &open,
            Kind::Wav(format.into()),
            &mut writer,
            1.0,
            progress,
        )?;
        std::io::Write::flush(&mut writer).map_err(|e| write_err(&out, e))?;
        drop(writer);
        target.commit().map_err(|e| write_err(&out, e))?;
        written.push(json!({ "track": track.id, "name": track.name, "file": out }));
    }
    Ok(json!({ "project": view.id, "stems": written, "warnings": song.warnings }))
}

/// The mix with every track but `keep` muted (muted clips still set the length).
fn only_track(mix: &Mix, keep: usize) -> Mix {
    let tracks = mix.tracks.iter().enumerate();
    Mix {
        tracks: tracks
            .map(|(i, t)| MixTrack {
                mute: i != keep,
                solo: false,
                ..t.clone()
            })
            .collect(),
    }
}

/// A track name usable as a file name on any system.
fn file_safe(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || " -_.()".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = cleaned.trim().trim_start_matches('.');
    if trimmed.is_empty() {
        "track".into()
    } else {
        trimmed.chars().take(64).collect()
    }
}

fn write_err(out: &Path, e: impl std::fmt::Display) -> RequestError {
    RequestError::Invalid(format!("cannot write {}: {e}", out.display()))
}

fn scratch_dir(ctx: &Context) -> Result<tempfile::TempDir> {
    let base = ctx.data_dir().join("tmp");
    std::fs::create_dir_all(&base).map_err(|e| write_err(&base, e))?;
    tempfile::Builder::new()
        .prefix("mixdown-")
        .tempdir_in(&base)
        .map_err(|e| write_err(&base, e))
}

/// A song ready to render: its mix, every Opus stem copied out of the blob
/// store into a scratch dir (deleted on drop), every MIDI clip parsed, and
/// the SoundFont when there are MIDI clips. Mixdown, export-stems, live
/// playback and overdubs all render through one.
pub struct SongAudio {
    pub mix: Mix,
    stems: Vec<Vec<Option<StemRef>>>,
    files: BTreeMap<Hash, PathBuf>,
    midi: BTreeMap<Hash, Arc<[MidiEvent]>>,
    font: Option<SoundFont>,
    /// What a person should know about how this will sound (a different SoundFont).
    pub warnings: Vec<String>,
    scratch: tempfile::TempDir,
}

impl SongAudio {
    pub fn load(ctx: &mut Context, view: &ProjectView) -> Result<SongAudio> {
        let (mix, stems) = mix_of(view);
        let scratch = scratch_dir(ctx)?;
        let source = |t: usize, c: usize| view.tracks[t].clips[c].source.clone();
        let files = fetch_stems(ctx, &stems, scratch.path(), source)?;
        let mut midi = BTreeMap::new();
        for stem in stems.iter().flatten().flatten().filter(|s| s.midi) {
            if let std::collections::btree_map::Entry::Vacant(slot) = midi.entry(stem.hash) {
                slot.insert(midi_events(&files[&stem.hash], &stem.name, &stem.hash)?);
            }
        }
        let (font, warnings) = match midi.is_empty() {
            true => (None, Vec::new()),
            false => {
                let font = local_soundfont(ctx)?;
                let warnings = soundfont_warning(view, &font).into_iter().collect();
                (Some(font), warnings)
            }
        };
        Ok(SongAudio {
            mix,
            stems,
            files,
            midi,
            font,
            warnings,
            scratch,
        })
    }

    /// Opens clip `c` of track `t` at its offset.
    pub fn open(&self, t: usize, c: usize) -> Result<Box<dyn ClipSource>, MixError> {
        let stem = self.stems[t][c].as_ref().expect("checked by fetch_stems");
        let clip = &self.mix.tracks[t].clips[c];
        if stem.midi {
            // The clip plays what export-midi writes for it: its window of
            // events, notes started before the window left out.
            let font = self.font.as_ref().expect("loaded with the MIDI clips");
            let window = super::midi::Window {
                start: 0,
                offset: clip.offset,
                length: clip.length,
            };
            let events = super::midi::place(window, &self.midi[&stem.hash]);
            return MidiClip::open(font, events.into(), 0, (t, c), &stem.name)
                .map(|m| Box::new(m) as Box<dyn ClipSource>);
        }
        StemClip::open(&self.files[&stem.hash], clip.offset, (t, c), &stem.name)
            .map(|s| Box::new(s) as Box<dyn ClipSource>)
    }
}

/// A track kind: MIDI tracks' clips are Standard MIDI Files.
pub const MIDI_KIND: &str = "midi";
/// Setting: the SoundFont MIDI tracks play through.
pub const SOUNDFONT_KEY: &str = "soundfont";

/// The SoundFont this node plays MIDI with: the `soundfont` setting, else Debian's GM font.
pub fn local_soundfont(ctx: &mut Context) -> Result<SoundFont> {
    let path = ctx
        .store()?
        .setting(SOUNDFONT_KEY)?
        .unwrap_or_else(|| DEFAULT_SOUNDFONT.into());
    SoundFont::load(Path::new(&path)).map_err(|e| {
        RequestError::Invalid(format!(
            "MIDI tracks need a General MIDI SoundFont (.sf2): {e}; install Debian's \
             timgm6mb-soundfont, or choose one with `meshstudio config set soundfont FILE.sf2`"
        ))
    })
}

/// A warning when the project was made with another SoundFont than ours.
fn soundfont_warning(view: &ProjectView, font: &SoundFont) -> Option<String> {
    let hash = view.soundfont_hash.as_deref()?;
    (hash != font.hash).then(|| {
        format!(
            "this project's MIDI tracks were made with the SoundFont {} ({}); this node plays \
             them with {} ({}), so they sound different here than at other sites",
            view.soundfont.as_deref().unwrap_or("?"),
            hash.chars().take(12).collect::<String>(),
            font.name,
            &font.hash[..12],
        )
    })
}

/// A MIDI clip's events, read from the blob store.
pub fn clip_midi(
    ctx: &mut Context,
    clip: &crate::project::view::ClipView,
) -> Result<Arc<[MidiEvent]>> {
    let stem = StemRef {
        hash: clip.blob.parse().map_err(|_| {
            RequestError::Invalid(format!("MIDI clip {}: bad blob id", clip.source))
        })?,
        name: clip.source.clone(),
        midi: true,
    };
    let scratch = scratch_dir(ctx)?;
    let files = fetch_stems(ctx, &[vec![Some(stem)]], scratch.path(), |_, _| {
        clip.source.clone()
    })?;
    let (hash, path) = files.iter().next().expect("one stem fetched");
    midi_events(path, &clip.source, hash)
}

/// Reads a MIDI clip's file: every track's events, merged in time order.
fn midi_events(path: &Path, name: &str, hash: &Hash) -> Result<Arc<[MidiEvent]>> {
    let fail = |why: String| {
        RequestError::Invalid(format!(
            "MIDI clip {name} ({}): {why}",
            &hash.to_hex()[..12]
        ))
    };
    let bytes = read_capped(path, MAX_SMF_BYTES as u64).map_err(|e| fail(e.to_string()))?;
    let tracks = parse_smf(&bytes).map_err(|e| fail(e.to_string()))?;
    Ok(merge_tracks(tracks).into())
}

/// Copies every stem the mix needs out of the blob store; fails naming
/// every stem this node doesn't have (yet).
fn fetch_stems(
    ctx: &mut Context,
    stems: &[Vec<Option<StemRef>>],
    dir: &Path,
    source: impl Fn(usize, usize) -> String,
) -> Result<BTreeMap<Hash, PathBuf>> {
    let mut missing = Vec::new();
    let mut files = BTreeMap::new();
    for (t, track) in stems.iter().enumerate() {
        for (c, stem) in track.iter().enumerate() {
            let Some(stem) = stem else {
                missing.push(format!("{} (bad blob id)", source(t, c)));
                continue;
            };
            if files.contains_key(&stem.hash) {
                continue;
            }
            if !ctx.has_blob(stem.hash)? {
                missing.push(format!("{} ({})", stem.name, &stem.hash.to_hex()[..12]));
                continue;
            }
            let ext = if stem.midi { "mid" } else { "opus" };
            let path = dir.join(format!("{}.{ext}", stem.hash.to_hex()));
            ctx.export_blob(stem.hash, &path)?;
            files.insert(stem.hash, path);
        }
    }
    if !missing.is_empty() {
        return Err(RequestError::Invalid(format!(
            "stems missing on this node (not synced yet?): {}",
            missing.join(", ")
        )));
    }
    Ok(files)
}

/// Where rendered blocks go: a WAV or an Ogg Opus file, scaled by `gain`.
enum Output<'a> {
    Wav(WavWriter<&'a mut TrackedWriter>),
    Opus(OggOpusWriter<&'a mut TrackedWriter>),
}

impl<'a> Output<'a> {
    fn new(kind: Kind, w: &'a mut TrackedWriter) -> Result<Self> {
        let made = match kind {
            Kind::Wav(f) => WavWriter::new(w, 2, RATE_HZ, f).map(Output::Wav),
            Kind::Opus => OggOpusWriter::new(w, 2, RATE_HZ, OpusSettings::for_channels(2), 24)
                .map(Output::Opus),
        };
        made.map_err(|e| RequestError::Invalid(format!("cannot start the output: {e}")))
    }

    fn write(&mut self, block: &[f32]) -> Result<(), MixError> {
        let r = match self {
            Output::Wav(w) => w.write(block),
            Output::Opus(w) => w.write(block),
        };
        r.map_err(|e| MixError::Sink(e.to_string()))
    }

    fn finish(self) -> Result<()> {
        let r = match self {
            Output::Wav(w) => w.finish(),
            Output::Opus(w) => w.finish().map(|_| ()),
        };
        r.map_err(|e| RequestError::Invalid(format!("cannot finish the output: {e}")))
    }
}

fn mix_err(e: MixError) -> RequestError {
    match e {
        MixError::Cancelled => RequestError::Cancelled,
        other => RequestError::Invalid(other.to_string()),
    }
}

/// Renders the mix into `w`, every sample scaled by `gain`.
fn bounce(
    mix: &Mix,
    open: &crate::audio::mixdown::OpenClip,
    kind: Kind,
    w: &mut TrackedWriter,
    gain: f32,
    progress: &dyn Observer,
) -> Result<u64> {
    let mut output = Output::new(kind, w)?;
    let mut scaled = Vec::new();
    let frames = mixdown(
        mix,
        open,
        &mut |block: &[f32]| {
            scaled.clear();
            scaled.extend(block.iter().map(|x| x * gain));
            output.write(&scaled)
        },
        progress,
    )
    .map_err(mix_err)?;
    output.finish()?;
    Ok(frames)
}

/// Renders once to a float scratch file while measuring loudness, then
/// writes the output with the gain that reaches `target` LUFS without
/// letting the true peak above `MAX_TRUE_PEAK_DBTP`.
fn bounce_normalized(
    mix: &Mix,
    open: &crate::audio::mixdown::OpenClip,
    kind: Kind,
    w: &mut TrackedWriter,
    target: f64,
    scratch: &Path,
    progress: &dyn Observer,
) -> Result<(u64, Option<Value>)> {
    let raw = scratch.join("raw.wav");
    let raw_file = std::fs::File::create(&raw).map_err(|e| write_err(&raw, e))?;
    let mut raw_writer = WavWriter::new(
        std::io::BufWriter::new(raw_file),
        2,
        RATE_HZ,
        WavFormat::Float32,
    )
    .map_err(|e| write_err(&raw, e))?;
    let mut meter = Loudness::new(&default_layout(2), RATE_HZ)
        .map_err(|e| RequestError::Invalid(e.to_string()))?;
    let frames = mixdown(
        mix,
        open,
        &mut |block: &[f32]| {
            meter
                .push(block)
                .map_err(|e| MixError::Sink(e.to_string()))?;
            raw_writer
                .write(block)
                .map_err(|e| MixError::Sink(e.to_string()))
        },
        progress,
    )
    .map_err(mix_err)?;
    raw_writer.finish().map_err(|e| write_err(&raw, e))?;
    let measured = meter
        .finish()
        .map_err(|e| RequestError::Invalid(e.to_string()))?;
    let (gain_db, note) = normalize_gain(target, measured.integrated_lufs, measured.true_peak_dbtp);
    copy_with_gain(&raw, kind, w, 10f64.powf(gain_db / 20.0) as f32)?;
    let applied = json!({
        "target_lufs": target,
        "measured_lufs": measured.integrated_lufs,
        "gain_db": gain_db,
        "note": note,
    });
    Ok((frames, Some(applied)))
}

/// The gain (dB) for `target`, and a note when it had to be limited.
pub fn normalize_gain(target: f64, lufs: Option<f64>, peak: Option<f64>) -> (f64, Option<String>) {
    let Some(lufs) = lufs else {
        return (
            0.0,
            Some("the mix is silent or too short to measure; no gain applied".into()),
        );
    };
    let wanted = target - lufs;
    match peak {
        Some(peak) if peak + wanted > MAX_TRUE_PEAK_DBTP => {
            let gain = MAX_TRUE_PEAK_DBTP - peak;
            let note = format!(
                "gain reduced from {wanted:+.1} dB to {gain:+.1} dB to keep the true peak at {MAX_TRUE_PEAK_DBTP} dBTP; the mix will measure {:.1} LUFS",
                lufs + gain
            );
            (gain, Some(note))
        }
        _ => (wanted, None),
    }
}

fn copy_with_gain(raw: &Path, kind: Kind, w: &mut TrackedWriter, gain: f32) -> Result<()> {
    let read_err = |e: meshstudio_codec::CodecError| write_err(raw, e);
    let mut reader = AudioReader::open(raw).map_err(read_err)?;
    let mut output = Output::new(kind, w)?;
    let mut scaled = Vec::new();
    while let Some(block) = reader.read_block().map_err(read_err)? {
        scaled.clear();
        scaled.extend(block.iter().map(|x| x * gain));
        output.write(&scaled).map_err(mix_err)?;
    }
    output.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_respects_the_peak_ceiling() {
        assert_eq!(normalize_gain(-14.0, Some(-20.0), Some(-10.0)), (6.0, None));
        let (gain, note) = normalize_gain(-14.0, Some(-20.0), Some(-3.0));
        assert_eq!(gain, 2.0);
        assert!(note.unwrap().contains("true peak"));
        assert_eq!(normalize_gain(-14.0, None, None).0, 0.0);
    }
}
