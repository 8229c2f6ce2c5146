//! `record`, `play`, `calibrate`, `recover` and `stop`: the requests that
//! run the audio engine. The engine runs without the request context
//! (a node keeps syncing while you record); the context is taken only to
//! prepare and to commit the take. A take streams to
//! `<data-dir>/takes/<id>.wav` (a MIDI take: `<id>.mev`, the messages as
//! played) under a `recordings` row, so after a crash `recover` (run
//! before the next command) turns it into a clip.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use meshstudio_codec::resample::Resample;
use meshstudio_codec::{
    AudioReader, MidiEvent, MidiTrack, Observer, WavFormat, WavWriter, encode_flac,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::bounce::{SongAudio, local_soundfont};
use super::imports::{self, NewClip, TrackKind};
use super::{Context, RequestError, Result, resolve, song_frames, writable};
use crate::audio::calibrate::{self, SignalFeed};
use crate::audio::click::Click;
use crate::audio::engine::{self, Feed, MidiPlan, Outcome, Port, Session, TakePlan};
use crate::audio::midi_in::{ARRIVAL_RING, MidiInputs, Midir};
use crate::audio::mixdown::{MixError, OpenClip, Player};
use crate::audio::render::{CHANNELS, db_to_gain};
use crate::audio::synth::SoundFont;
use crate::audio::take::{Align, MemTake, MidiLog, WavTake, read_midi_log};
use crate::project::ProjectView;

/// Where in-progress takes live, inside the data dir.
pub const TAKES_DIR: &str = "takes";
/// Settings: the click's level (dB) and each device pair's calibration.
pub const CLICK_LEVEL_KEY: &str = "click-level-db";
const DEFAULT_CLICK_DB: f64 = -10.0;
const CALIBRATION_PREFIX: &str = "calibration:";
/// Longest take: as long as the longest stem we accept.
const MAX_TAKE_SECONDS: f64 = 6.0 * 3600.0;
/// Count-ins longer than this are typos.
const MAX_COUNT_IN_BARS: u32 = 16;
/// Device buffers we ask for, in frames.
const BUFFER_RANGE: std::ops::RangeInclusive<u32> = 16..=8192;
/// Threads reading stems for live playback.
const PLAY_THREADS: usize = 2;

/// One engine session at a time per process: the node owns the devices.
static BUSY: AtomicBool = AtomicBool::new(false);
/// `meshstudio stop` asks the running session to end.
static STOP: AtomicBool = AtomicBool::new(false);
/// The take this process is recording: not a crash's leftover, so
/// `recover` leaves it alone.
static ACTIVE_TAKE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Marks a take as being recorded here while it lives.
struct Active;

impl Active {
    fn mark(id: &str) -> Active {
        if let Ok(mut slot) = ACTIVE_TAKE.lock() {
            *slot = Some(id.to_string());
        }
        Active
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Ok(mut slot) = ACTIVE_TAKE.lock() {
            *slot = None;
        }
    }
}

fn is_active(id: &str) -> bool {
    ACTIVE_TAKE
        .lock()
        .is_ok_and(|slot| slot.as_deref() == Some(id))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecordArgs {
    pub project: String,
    pub track: Option<String>,
    pub input: Option<String>,
    pub output: Option<String>,
    pub click_output: Option<String>,
    pub seconds: Option<f64>,
    pub at_seconds: f64,
    pub click: bool,
    pub count_in_bars: u32,
    pub monitor: bool,
    pub overdub: bool,
    pub buffer_frames: Option<u32>,
    pub fast: bool,
    /// Record this MIDI input port instead of audio.
    pub midi: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PlayArgs {
    pub project: String,
    pub from_seconds: f64,
    pub to_seconds: Option<f64>,
    pub output: Option<String>,
    pub buffer_frames: Option<u32>,
    pub fast: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CalibrateArgs {
    pub input: Option<String>,
    pub output: Option<String>,
    pub buffer_frames: Option<u32>,
}

/// What a `recordings` row keeps about a take in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TakeRow {
    project: String,
    track: Option<String>,
    at: i64,
    file: String,
    started_ms: i64,
    /// A MIDI take: its log's frames are output frames, output frame 0
    /// being timeline frame `origin` (before `at` by the count-in).
    #[serde(default)]
    midi: bool,
    #[serde(default)]
    origin: i64,
}

/// Access to the request context, for work that must not hold it throughout.
pub trait WithContext {
    fn with<R>(&self, f: impl FnOnce(&mut Context) -> R) -> R;
}

impl WithContext for std::sync::Mutex<Context> {
    fn with<R>(&self, f: impl FnOnce(&mut Context) -> R) -> R {
        f(&mut self.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The context held for the whole request (the CLI without a node).
pub struct Held<'a>(pub std::cell::RefCell<&'a mut Context>);

impl WithContext for Held<'_> {
    fn with<R>(&self, f: impl FnOnce(&mut Context) -> R) -> R {
        f(&mut self.0.borrow_mut())
    }
}

/// Claims the engine for one session; dropped = released.
struct Claim;

impl Claim {
    fn take() -> Result<Claim> {
        if BUSY.swap(true, Ordering::AcqRel) {
            return Err(RequestError::Invalid(
                "already recording or playing; end that first (`meshstudio stop`)".into(),
            ));
        }
        STOP.store(false, Ordering::Release);
        Ok(Claim)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        BUSY.store(false, Ordering::Release);
    }
}

/// Ends the session running in this process; false if none runs.
pub fn stop() -> bool {
    let running = BUSY.load(Ordering::Acquire);
    if running {
        STOP.store(true, Ordering::Release);
    }
    running
}

/// The caller's observer, seen by the engine (`stop`: also stopped by
/// `meshstudio stop`) or by the commit (never cancelled: a take that was
/// captured is always kept).
struct Forward<'a> {
    inner: &'a dyn Observer,
    stop: bool,
}

impl<'a> Forward<'a> {
    fn stoppable(inner: &'a dyn Observer) -> Self {
        Forward { inner, stop: true }
    }

    fn uncancellable(inner: &'a dyn Observer) -> Self {
        Forward { inner, stop: false }
    }
}

impl Observer for Forward<'_> {
    fn total(&self, frames: Option<u64>) {
        self.inner.total(frames);
    }
    fn advance(&self, frames: u64) {
        self.inner.advance(frames);
    }
    fn cancelled(&self) -> bool {
        self.stop && (self.inner.cancelled() || STOP.load(Ordering::Acquire))
    }
}

fn invalid(text: impl Into<String>) -> RequestError {
    RequestError::Invalid(text.into())
}

fn engine_err(e: engine::EngineError) -> RequestError {
    invalid(e.to_string())
}

fn check_buffer(buffer: Option<u32>) -> Result<()> {
    match buffer {
        Some(b) if !BUFFER_RANGE.contains(&b) => Err(invalid(format!(
            "--buffer {b}: choose {} to {} frames",
            BUFFER_RANGE.start(),
            BUFFER_RANGE.end()
        ))),
        _ => Ok(()),
    }
}

/// A path port made absolute relative to nothing: requests carry absolute paths.
fn port(text: Option<&str>) -> Port {
    Port::parse(text)
}

/// The song (and click) as the engine's output feed.
struct SongFeed<'a> {
    player: Option<Player<'a>>,
    /// Timeline frame of output frame 0 (negative during a count-in).
    start: i64,
    click: Option<Click>,
    /// Keep playing silence (and clicks) after the song ends: recording.
    endless: bool,
}

impl Feed for SongFeed<'_> {
    fn fill(
        &mut self,
        frame: u64,
        main: &mut [f32],
        click: Option<&mut [f32]>,
    ) -> std::result::Result<usize, String> {
        let pos = self.start + frame as i64;
        let frames = main.len() / CHANNELS;
        let lead = (-pos).clamp(0, frames as i64) as usize;
        let mut done = lead;
        let mut ended = self.player.is_none();
        if let Some(player) = &mut self.player {
            while done < frames {
                let n = player
                    .next_block(&mut main[done * CHANNELS..])
                    .map_err(|e| e.to_string())?;
                if n == 0 {
                    ended = true;
                    break;
                }
                done += n;
            }
        }
        if let Some(c) = &self.click {
            c.add(pos, click.unwrap_or(main));
        }
        Ok(if self.endless || !ended { frames } else { done })
    }
}

/// `record`: captures a take and adds it as a clip.
pub fn record(cx: &impl WithContext, args: &RecordArgs, obs: &dyn Observer) -> Result<Value> {
    check_buffer(args.buffer_frames)?;
    if args.count_in_bars > MAX_COUNT_IN_BARS {
        return Err(invalid(format!(
            "--count-in: at most {MAX_COUNT_IN_BARS} bars"
        )));
    }
    if let Some(s) = args
        .seconds
        .filter(|s| !(s.is_finite() && *s > 0.0 && *s <= MAX_TAKE_SECONDS))
    {
        return Err(invalid(format!(
            "--seconds {s}: give 0 to {MAX_TAKE_SECONDS} s"
        )));
    }
    let at = song_frames(args.at_seconds, "--at")?;
    check_midi_args(args)?;
    let _claim = Claim::take()?;
    let prep = cx.with(|ctx| prepare_take(ctx, args, at))?;
    let player_open = |t: usize, c: usize| prep.song.as_ref().expect("song loaded").open(t, c);
    let open: &OpenClip = &player_open;
    let outcome = match &args.midi {
        Some(port) => run_midi_take(&prep, args, port, at, open, obs),
        None => run_take(&prep, args, at, open, obs),
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            cx.with(|ctx| discard_take(ctx, &prep.id));
            return Err(e);
        }
    };
    let retime = drift_ratio(&outcome);
    let saved = cx.with(|ctx| commit_take(ctx, &prep.id, retime, &Forward::uncancellable(obs)))?;
    let Some(mut reply) = saved else {
        let nothing = match &args.midi {
            Some(port) => format!(
                "no notes arrived from {port:?} ({} MIDI messages)",
                outcome.midi_events
            ),
            None => "no audio arrived".into(),
        };
        let why = outcome.error.unwrap_or(nothing);
        return Err(invalid(format!("nothing was recorded: {why}")));
    };
    reply["engine"] = serde_json::to_value(&outcome).expect("outcomes serialize");
    if let Some(e) = &outcome.error {
        return Err(invalid(format!(
            "{e} — the take so far ({:.1} s) is saved as clip {} on track {:?}",
            reply["seconds"].as_f64().unwrap_or(0.0),
            reply["clip"].as_str().unwrap_or("?"),
            reply["track_name"].as_str().unwrap_or("?"),
        )));
    }
    Ok(reply)
}

/// `--midi` records a keyboard, not audio: the audio-only options do not apply.
fn check_midi_args(args: &RecordArgs) -> Result<()> {
    if args.midi.is_none() {
        return Ok(());
    }
    let clash = [
        (args.input.is_some(), "--input"),
        (args.fast, "--fast"),
        (args.monitor, "--monitor"),
    ];
    match clash.iter().find(|(set, _)| *set) {
        Some((_, flag)) => Err(invalid(format!(
            "--midi records a keyboard (heard through the synth); {flag} is for audio takes"
        ))),
        None => Ok(()),
    }
}

/// What recording needs from the context, gathered before the devices open.
struct Prepared {
    id: String,
    _active: Active,
    path: PathBuf,
    song: Option<SongAudio>,
    click: Click,
    wants_click: bool,
    residual_seconds: f64,
    /// The synth's font, for a MIDI take.
    font: Option<SoundFont>,
}

fn prepare_take(ctx: &mut Context, args: &RecordArgs, at: i64) -> Result<Prepared> {
    let p = writable(ctx, &args.project)?;
    let view = ProjectView::of(&p);
    let level_db = ctx
        .store()?
        .setting(CLICK_LEVEL_KEY)?
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(DEFAULT_CLICK_DB);
    let click = Click::new(view.tempo, view.beats_per_bar, db_to_gain(level_db as f32));
    let song = if args.overdub {
        Some(SongAudio::load(ctx, &view)?)
    } else {
        None
    };
    let residual_seconds = calibration(ctx, args.input.as_deref(), args.output.as_deref())?
        .map_or(0.0, |c| c.residual_ms / 1000.0);
    let midi = args.midi.is_some();
    let font = if midi {
        Some(local_soundfont(ctx)?)
    } else {
        None
    };
    let id = uuid::Uuid::new_v4().to_string();
    // Before the row exists: a `recover` meanwhile must not take it.
    let active = Active::mark(&id);
    let dir = ctx.data_dir().join(TAKES_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| invalid(format!("{}: {e}", dir.display())))?;
    let path = dir.join(format!("{id}.{}", if midi { "mev" } else { "wav" }));
    let row = TakeRow {
        project: p.id.clone(),
        track: args.track.clone(),
        at,
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        started_ms: super::now_ms(),
        midi,
        origin: at - click.bars_frames(args.count_in_bars),
    };
    let bytes = serde_json::to_vec(&row).expect("rows serialize");
    ctx.store()?.write(|w| w.put_recording(&id, &bytes))?;
    Ok(Prepared {
        id,
        _active: active,
        path,
        song,
        click,
        wants_click: args.click || args.count_in_bars > 0,
        residual_seconds,
        font,
    })
}

/// What the performer hears while recording: the song (an overdub) from
/// timeline frame `start` and the click, which after a count-in alone
/// stops at `at`.
fn take_feed<'a>(
    prep: &'a Prepared,
    args: &RecordArgs,
    at: i64,
    start: i64,
    open: &'a OpenClip,
) -> Result<Box<dyn Feed + 'a>> {
    let mut click = prep.click;
    if !args.click {
        click = click.until(at);
    }
    let player = match &prep.song {
        Some(song) => {
            let from = start.max(0) as u64;
            Some(Player::new(&song.mix, open, from..u64::MAX, PLAY_THREADS).map_err(mix_err)?)
        }
        None => None,
    };
    Ok(Box::new(SongFeed {
        player,
        start,
        click: prep.wants_click.then_some(click),
        endless: true,
    }))
}

fn run_take(
    prep: &Prepared,
    args: &RecordArgs,
    at: i64,
    open: &OpenClip,
    obs: &dyn Observer,
) -> Result<Outcome> {
    let lead = prep.click.bars_frames(args.count_in_bars);
    let start = at - lead;
    let plays = args.overdub || prep.wants_click || args.monitor;
    let feed = match plays {
        true => Some(take_feed(prep, args, at, start, open)?),
        false => None,
    };
    let input = port(args.input.as_deref());
    let output = plays.then(|| port(args.output.as_deref()));
    let timestamps = input.is_file() == output.as_ref().is_none_or(Port::is_file);
    let align = if plays {
        Align::Timeline {
            lead_seconds: lead as f64 / 48_000.0,
            residual_seconds: prep.residual_seconds,
            timestamps,
        }
    } else {
        Align::Start
    };
    let path = prep.path.clone();
    let session = Session {
        input: Some(input),
        output,
        click_output: args.click_output.as_deref().map(|c| port(Some(c))),
        buffer: args.buffer_frames,
        fast: args.fast,
        monitor: args.monitor,
        feed,
        take: Some(TakePlan {
            open: Box::new(move |ch, rate| {
                Ok(Box::new(WavTake::create(&path, ch, rate)?)
                    as Box<dyn crate::audio::take::TakeSink>)
            }),
            align,
            seconds: args.seconds,
        }),
        midi: None,
    };
    obs.total(args.seconds.map(|s| (s * 48_000.0) as u64));
    engine::run(session, &Forward::stoppable(obs)).map_err(engine_err)
}

/// A MIDI take: the keyboard on `port` plays through the synth on the
/// output (with the song and click as asked) and its messages go to the log.
fn run_midi_take(
    prep: &Prepared,
    args: &RecordArgs,
    port_name: &str,
    at: i64,
    open: &OpenClip,
    obs: &dyn Observer,
) -> Result<Outcome> {
    let lead = prep.click.bars_frames(args.count_in_bars);
    let feed = match args.overdub || prep.wants_click {
        true => Some(take_feed(prep, args, at, at - lead, open)?),
        false => None,
    };
    let (tx, rx) = rtrb::RingBuffer::new(ARRIVAL_RING);
    let _connection = Midir.connect(port_name, tx).map_err(invalid)?;
    let font = prep.font.as_ref().expect("loaded for a MIDI take");
    let synth = font.synth().map_err(invalid)?;
    let log =
        MidiLog::create(&prep.path).map_err(|e| invalid(format!("cannot write the take: {e}")))?;
    let session = Session {
        input: None,
        output: Some(port(args.output.as_deref())),
        click_output: args.click_output.as_deref().map(|c| port(Some(c))),
        buffer: args.buffer_frames,
        fast: false,
        monitor: false,
        feed,
        take: None,
        midi: Some(MidiPlan {
            arrivals: rx,
            synth,
            log,
            until_frame: args
                .seconds
                .map(|s| lead.max(0) as u64 + (s * 48_000.0) as u64),
        }),
    };
    obs.total(
        args.seconds
            .map(|s| (s * 48_000.0) as u64 + lead.max(0) as u64),
    );
    engine::run(session, &Forward::stoppable(obs)).map_err(engine_err)
}

/// Turns a MIDI take's log into a clip at `row.at` on a MIDI track. `None`
/// if no note was played (row and log removed too).
fn commit_midi_take(
    ctx: &mut Context,
    id: &str,
    row: &TakeRow,
    log: &Path,
) -> Result<Option<Value>> {
    // A log that is missing, or was torn before its header reached the
    // disk, holds nothing; any other read error is reported, and the take
    // stays for a later `recover`.
    let played = match read_midi_log(log) {
        Ok(played) => played,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::InvalidData) => Vec::new(),
        Err(e) => return Err(invalid(format!("cannot read take {id}: {e}"))),
    };
    let take = super::midi::take_events(&played, row.at - row.origin);
    if !take.iter().any(MidiEvent::is_note_on) {
        discard_take(ctx, id);
        return Ok(None);
    }
    let p = resolve::project(ctx.store()?, &row.project)?;
    let name = row.track.clone().unwrap_or_else(|| "MIDI".into());
    let end_frame = take.last().map_or(0, |e| e.frame);
    let notes = take.iter().filter(|e| e.is_note_on()).count();
    let track = MidiTrack {
        name: name.clone(),
        events: take,
        end_frame,
    };
    let new = take_clip(row, id, &name, None, TrackKind::Midi);
    let clip = imports::add_midi_clip(ctx, &p, new, &track)?;
    discard_take(ctx, id);
    let mut reply = take_reply(&p.id, row, &name, &clip);
    reply["seconds"] = json!(end_frame as f64 / 48_000.0);
    reply["notes"] = json!(notes);
    Ok(Some(reply))
}

/// Where a take's clip goes: the row's track (or a new one called `name`) at the row's start.
fn take_clip<'a>(
    row: &TakeRow,
    id: &str,
    name: &'a str,
    master: Option<meshstudio_store::Hash>,
    kind: TrackKind,
) -> NewClip<'a> {
    NewClip {
        track: name,
        reuse: row.track.is_some(),
        start: row.at,
        source: format!("take {}", &id[..8]),
        master,
        kind,
    }
}

/// What `record` and `recover` say about a take that became a clip.
fn take_reply(project: &str, row: &TakeRow, name: &str, clip: &imports::AddedClip) -> Value {
    json!({
        "project": project,
        "track": clip.track,
        "track_name": name,
        "clip": clip.clip,
        "blob": clip.blob,
        "start": row.at,
        "length": clip.frames,
        "seconds": clip.frames as f64 / 48_000.0,
    })
}

fn mix_err(e: MixError) -> RequestError {
    invalid(e.to_string())
}

/// A take that never started: row and file go.
fn discard_take(ctx: &mut Context, id: &str) {
    if let Ok(store) = ctx.store() {
        let _ = store.write(|w| w.remove_recording(id));
    }
    for ext in ["wav", "mev"] {
        let _ = std::fs::remove_file(ctx.data_dir().join(TAKES_DIR).join(format!("{id}.{ext}")));
    }
}

/// Drift below this is measurement noise, or too little to hear (10 ppm:
/// 1.8 ms after three minutes).
const MIN_CORRECTED_DRIFT_PPM: f64 = 10.0;
/// Drift beyond this (1 %) is not drift: the take is left as captured.
const MAX_CORRECTED_DRIFT_PPM: f64 = 10_000.0;

/// The take's retiming onto the output's clock, when separate devices drifted apart.
fn drift_ratio(outcome: &Outcome) -> Option<f64> {
    if !outcome.separate_devices {
        return None;
    }
    // More than 1 % is a broken clock or a broken estimate, not drift.
    if outcome
        .drift_ppm
        .is_some_and(|p| p.abs() > MAX_CORRECTED_DRIFT_PPM)
    {
        tracing::warn!(ppm = ?outcome.drift_ppm, "the devices' drift is implausible; the take is not retimed");
        return None;
    }
    let ppm = outcome
        .drift_ppm
        .filter(|p| p.abs() >= MIN_CORRECTED_DRIFT_PPM)?;
    Some(1.0 + ppm / 1e6)
}

/// Turns the take `id` into a clip: FLAC master and Opus stem into the
/// blob store, the clip committed, then the row and file removed. `None`
/// if the take holds no audio (row and file removed too). `retime`: output
/// frames per take frame, when the devices' clocks drifted apart (a take
/// recovered after a crash is not retimed: its drift was not measured).
fn commit_take(
    ctx: &mut Context,
    id: &str,
    retime: Option<f64>,
    obs: &dyn Observer,
) -> Result<Option<Value>> {
    let rows = ctx.store()?.recordings()?;
    let Some((_, bytes)) = rows.into_iter().find(|(k, _)| k == id) else {
        return Err(invalid(format!("take {id} is not in progress")));
    };
    let row: TakeRow = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(format!("take {id}: damaged record: {e}")))?;
    let path = ctx
        .data_dir()
        .join(TAKES_DIR)
        .join(Path::new(&row.file).file_name().unwrap_or_default());
    if row.midi {
        return commit_midi_take(ctx, id, &row, &path);
    }
    let frames = AudioReader::open(&path)
        .ok()
        .and_then(|r| r.info().frames)
        .unwrap_or(0);
    if frames == 0 {
        discard_take(ctx, id);
        return Ok(None);
    }
    let retimed = match retime {
        Some(ratio) => Some(retime_take(ctx, &path, ratio)?),
        None => None,
    };
    let path = retimed.as_ref().map_or(path, |t| t.path().to_path_buf());
    let master = store_master(ctx, &path, obs)?;
    let p = resolve::project(ctx.store()?, &row.project)?;
    let name = row.track.clone().unwrap_or_else(|| "Take".into());
    let clip = imports::encode_and_add(
        ctx,
        &p,
        &path,
        take_clip(&row, id, &name, Some(master), TrackKind::Audio),
        obs,
    )?;
    discard_take(ctx, id);
    let mut reply = take_reply(&p.id, &row, &name, &clip);
    reply["master"] = json!(master.to_hex().to_string());
    Ok(Some(reply))
}

/// The take resampled by `ratio` (its clock onto the output's), as a
/// float WAV scratch file deleted on drop.
fn retime_take(ctx: &Context, take: &Path, ratio: f64) -> Result<tempfile::NamedTempFile> {
    let fail = |e: String| invalid(format!("cannot retime the take: {e}"));
    let mut reader = AudioReader::open(take).map_err(|e| fail(e.to_string()))?;
    let (channels, rate) = (reader.info().channels, reader.info().sample_rate);
    let mut resample = Resample::retime(ratio, channels).map_err(|e| fail(e.to_string()))?;
    let dir = ctx.data_dir().join("tmp");
    std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
    let temp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| fail(e.to_string()))?;
    let out = std::io::BufWriter::new(temp.as_file());
    let mut writer =
        WavWriter::new(out, channels, rate, WavFormat::Float32).map_err(|e| fail(e.to_string()))?;
    let mut block = Vec::new();
    while let Some(samples) = reader.read_block().map_err(|e| fail(e.to_string()))? {
        block.clear();
        resample
            .push(samples, &mut block)
            .map_err(|e| fail(e.to_string()))?;
        writer.write(&block).map_err(|e| fail(e.to_string()))?;
    }
    block.clear();
    resample
        .finish(&mut block)
        .map_err(|e| fail(e.to_string()))?;
    writer.write(&block).map_err(|e| fail(e.to_string()))?;
    writer.finish().map_err(|e| fail(e.to_string()))?;
    Ok(temp)
}

/// Encodes the take to FLAC and adds it to the blob store.
fn store_master(
    ctx: &mut Context,
    take: &Path,
    obs: &dyn Observer,
) -> Result<meshstudio_store::Hash> {
    let fail = |e: String| invalid(format!("cannot store the take's master: {e}"));
    let reader = AudioReader::open(take).map_err(|e| fail(e.to_string()))?;
    let dir = ctx.data_dir().join("tmp");
    std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
    let temp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| fail(e.to_string()))?;
    let out = std::io::BufWriter::new(temp.as_file());
    let (out, _) = encode_flac(reader, out, obs).map_err(|e| fail(e.to_string()))?;
    out.into_inner()
        .map_err(|e| fail(e.to_string()))?
        .sync_all()
        .map_err(|e| fail(e.to_string()))?;
    ctx.import_blob(temp.path())
}

/// Restores every take a crashed process left behind; one line per take.
pub fn recover(ctx: &mut Context) -> Result<Vec<Value>> {
    let mut restored = Vec::new();
    let rows = ctx.store()?.recordings()?;
    for (id, _) in rows.into_iter().filter(|(id, _)| !is_active(id)) {
        match commit_take(ctx, &id, None, &meshstudio_codec::Quiet) {
            Ok(Some(reply)) => restored.push(reply),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(take = %id, error = %e, "cannot recover take");
                return Err(invalid(format!("cannot recover take {id}: {e}")));
            }
        }
    }
    Ok(restored)
}

/// "recovered an interrupted take: …" for one recovered take.
pub fn recovered_line(t: &Value) -> String {
    format!(
        "recovered an interrupted take: {:.1} s on track {:?} at {:.1} s (clip {})",
        t["seconds"].as_f64().unwrap_or(0.0),
        t["track_name"].as_str().unwrap_or("?"),
        t["start"].as_f64().unwrap_or(0.0) / 48_000.0,
        t["clip"].as_str().unwrap_or("?"),
    )
}

/// Whether takes wait to be recovered (cheap: one read transaction).
pub fn pending(ctx: &mut Context) -> bool {
    ctx.store()
        .ok()
        .and_then(|s| s.recordings().ok())
        .is_some_and(|r| !r.is_empty())
}

/// `play`: the song through the output, from `--from` to `--to`.
pub fn play(cx: &impl WithContext, args: &PlayArgs, obs: &dyn Observer) -> Result<Value> {
    check_buffer(args.buffer_frames)?;
    let from = song_frames(args.from_seconds, "--from")? as u64;
    let to = match args.to_seconds {
        Some(t) => song_frames(t, "--to")? as u64,
        None => u64::MAX,
    };
    if to <= from {
        return Err(invalid("--to must come after --from"));
    }
    let _claim = Claim::take()?;
    let (song, id) = cx.with(|ctx| -> Result<_> {
        let view = ProjectView::of(&resolve::project(ctx.store()?, &args.project)?);
        Ok((SongAudio::load(ctx, &view)?, view.id))
    })?;
    let open_clip = |t: usize, c: usize| song.open(t, c);
    let open: &OpenClip = &open_clip;
    let player = Player::new(&song.mix, open, from..to, PLAY_THREADS).map_err(mix_err)?;
    let end = crate::audio::mixdown::song_frames(&song.mix).min(to);
    obs.total(Some(end.saturating_sub(from)));
    let session = Session {
        input: None,
        output: Some(port(args.output.as_deref())),
        click_output: None,
        buffer: args.buffer_frames,
        fast: args.fast,
        monitor: false,
        feed: Some(Box::new(SongFeed {
            player: Some(player),
            start: from as i64,
            click: None,
            endless: false,
        })),
        take: None,
        midi: None,
    };
    let outcome = engine::run(session, &Forward::stoppable(obs)).map_err(engine_err)?;
    if let Some(e) = outcome.error {
        return Err(invalid(e));
    }
    Ok(json!({
        "project": id,
        "from": from,
        "frames": outcome.played_frames.min(end.saturating_sub(from)),
        "output": outcome.output,
        "stopped": outcome.stopped,
        "xruns": outcome.xruns,
        "underrun_frames": outcome.underrun_frames,
        "output_latency_ms": outcome.output_latency_ms,
    }))
}

/// A device pair's stored calibration.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Calibration {
    residual_ms: f64,
    round_trip_ms: Option<f64>,
    spread_ms: f64,
}

fn calibration_key(input: Option<&str>, output: Option<&str>) -> String {
    format!(
        "{CALIBRATION_PREFIX}{}|{}",
        input.unwrap_or("default"),
        output.unwrap_or("default")
    )
}

fn calibration(
    ctx: &mut Context,
    input: Option<&str>,
    output: Option<&str>,
) -> Result<Option<Calibration>> {
    let key = calibration_key(input, output);
    Ok(ctx
        .store()?
        .setting(&key)?
        .and_then(|v| serde_json::from_str(&v).ok()))
}

/// Clean runs a calibration takes the median of: the loop through a sound
/// server varies by up to a block from one stream start to the next
/// (measured here: runs of one calibration 1.2–6 ms apart at 256-frame
/// buffers), which one run cannot tell; five outvote two outliers.
const CALIBRATION_RUNS: usize = 5;
/// Runs tried in all before giving up on getting clean ones.
const CALIBRATION_TRIES: usize = 10;
/// Bursts further apart than this mean the run was disturbed.
const MAX_SPREAD_SECONDS: f64 = 0.002;

/// One calibration run: the engine's outcome and what it found.
fn calibrate_once(
    args: &CalibrateArgs,
    obs: &dyn Observer,
) -> Result<(Outcome, std::result::Result<calibrate::Measured, String>)> {
    let session = Session {
        input: Some(port(args.input.as_deref())),
        output: Some(port(args.output.as_deref())),
        click_output: None,
        buffer: args.buffer_frames,
        fast: false,
        monitor: false,
        feed: Some(Box::new(SignalFeed::new())),
        take: Some(TakePlan {
            open: Box::new(|_, _| {
                Ok(Box::new(MemTake::default()) as Box<dyn crate::audio::take::TakeSink>)
            }),
            align: Align::Start,
            seconds: Some(calibrate::capture_seconds()),
        }),
        midi: None,
    };
    let outcome = engine::run(session, &Forward::stoppable(obs)).map_err(engine_err)?;
    if let Some(e) = &outcome.error {
        return Err(invalid(e.clone()));
    }
    if outcome.stopped {
        return Err(RequestError::Cancelled);
    }
    let offset = outcome.stream_offset_seconds.unwrap_or(0.0);
    let m = calibrate::measure(
        &outcome.samples,
        outcome.take_channels,
        outcome.take_rate,
        offset,
    );
    Ok((outcome, m))
}

/// `calibrate`: measures the loop from output to input and stores it. A
/// run with xruns or disagreeing bursts is repeated: a disturbed
/// measurement would misplace every later overdub.
pub fn calibrate(cx: &impl WithContext, args: &CalibrateArgs, obs: &dyn Observer) -> Result<Value> {
    check_buffer(args.buffer_frames)?;
    let _claim = Claim::take()?;
    cx.with(|ctx| ctx.store().map(|_| ()))?;
    let mut runs = Vec::new();
    let mut tries = 0;
    let mut why = String::new();
    while runs.len() < CALIBRATION_RUNS && tries < CALIBRATION_TRIES {
        tries += 1;
        match calibrate_once(args, obs)? {
            (outcome, Ok(m)) if outcome.xruns == 0 && m.spread_seconds <= MAX_SPREAD_SECONDS => {
                runs.push((outcome, m));
            }
            (outcome, found) => {
                why = found.err().unwrap_or_else(|| {
                    format!(
                        "{} dropouts; close other programs or try a larger --buffer",
                        outcome.xruns
                    )
                });
                tracing::info!(tries, %why, "calibration run disturbed; again");
            }
        }
    }
    if runs.is_empty() {
        return Err(invalid(format!("calibration failed {tries} times: {why}")));
    }
    runs.sort_by(|a, b| a.1.residual_seconds.total_cmp(&b.1.residual_seconds));
    let between = runs[runs.len() - 1].1.residual_seconds - runs[0].1.residual_seconds;
    let (outcome, mut m) = runs.swap_remove(runs.len() / 2);
    m.spread_seconds = m.spread_seconds.max(between);
    let devices = outcome.input_latency_ms.zip(outcome.output_latency_ms);
    let cal = Calibration {
        residual_ms: m.residual_seconds * 1000.0,
        round_trip_ms: devices.map(|(i, o)| i + o + m.residual_seconds * 1000.0),
        spread_ms: m.spread_seconds * 1000.0,
    };
    let key = calibration_key(args.input.as_deref(), args.output.as_deref());
    let text = serde_json::to_string(&cal).expect("json");
    cx.with(|ctx| -> Result<()> { Ok(ctx.store()?.write(|w| w.set_setting(&key, &text))?) })?;
    Ok(json!({
        "input": outcome.input,
        "output": outcome.output,
        "round_trip_ms": cal.round_trip_ms,
        "residual_ms": cal.residual_ms,
        "spread_ms": cal.spread_ms,
        "bursts_found": m.found,
        "input_latency_ms": outcome.input_latency_ms,
        "output_latency_ms": outcome.output_latency_ms,
        "xruns": outcome.xruns,
        "runs": runs.len() + 1,
        "tries": tries,
    }))
}
