//! The command line: argument parsing, one module per command, and the
//! plumbing they share (atomic output files, progress, Ctrl-C). Owns how
//! things look to a person at a terminal; knows no audio format details
//! (those are meshstudio-codec's).

mod decode;
mod encode;
mod job;
mod probe;
pub(crate) mod progress;
mod studio;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// meshstudio — a backpack music studio that syncs with its sister studios.
///
/// Every audio file a studio brings becomes an Ogg Opus stem at 48 kHz:
/// small enough to trade over slow links, sample-accurate so takes line up.
#[derive(Debug, Parser)]
#[command(name = "meshstudio", version, propagate_version = true)]
struct Cli {
    /// Where this node keeps its data [default: $MESHSTUDIO_DIR, else ~/.local/share/meshstudio].
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Encode audio files (wav, flac, mp3, ogg, opus, m4a) to Ogg Opus stems.
    ///
    /// `encode IN OUT.opus` encodes one file. `encode IN... --out-dir D`
    /// encodes every input to D/<name>.opus, several files at once.
    /// Output is resampled to 48 kHz; more than two channels fold down to stereo.
    Encode(EncodeArgs),
    /// Decode any audio file (an .opus stem above all) to a 48 kHz WAV file.
    Decode(DecodeArgs),
    /// Show what an audio file holds: format, channels, rate, duration, loudness.
    Probe(ProbeArgs),
    /// Run this laptop's node until Ctrl-C: it owns the data dir, serves the
    /// local API (other commands go through it), finds the other members on
    /// the LAN (mDNS) and syncs with every member it can reach.
    Up {
        /// Where the network endpoint listens [default: 0.0.0.0, any port].
        #[arg(long, value_name = "ADDR:PORT")]
        bind: Option<std::net::SocketAddr>,
        /// Where the local API listens [default: 127.0.0.1:7878, or a free port if taken].
        #[arg(long, value_name = "ADDR:PORT")]
        api: Option<std::net::SocketAddr>,
        /// A self-hosted relay for reaching sites behind NAT [default: none].
        #[arg(long, value_name = "URL")]
        relay: Option<iroh::RelayUrl>,
        /// Do not look for members on the LAN (mDNS). A node bound to
        /// loopback never does.
        #[arg(long)]
        no_discovery: bool,
        /// The most this node uploads, to all peers together, in kbit/s
        /// (a site that pays per byte) [default: no limit].
        #[arg(long, value_name = "KBPS")]
        max_upload_kbps: Option<u32>,
        /// The most stems this node downloads, from all peers together, in
        /// kbit/s [default: no limit]. Per peer: `config set
        /// max-download-kbps:<node id> KBPS` (and max-upload-kbps:<node id>).
        #[arg(long, value_name = "KBPS")]
        max_download_kbps: Option<u32>,
    },
    /// Run a relay for sites behind NAT, on a machine they can all reach.
    ///
    /// The relay introduces nodes to each other, helps them punch through
    /// NAT, and carries their encrypted traffic when no direct path exists.
    /// It needs no data dir and stores nothing. Sites then start their
    /// nodes with `meshstudio up --relay http://THIS-MACHINE:PORT`.
    Relay {
        /// Where the relay listens (HTTP).
        #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:3340")]
        bind: std::net::SocketAddr,
    },
    /// Is a node running for this data dir, and what is it doing?
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Set up this node: its key, database and site name. Safe to run again.
    Init {
        /// This studio's name, shown to the other sites.
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print this node's id.
    Id,
    /// Change a setting: `author` (who is at the laptop), `site`.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Create, list and show projects.
    Project {
        #[command(subcommand)]
        cmd: studio::ProjectCmd,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Add, change and remove tracks.
    Track {
        #[command(subcommand)]
        cmd: studio::TrackCmd,
        #[arg(long, global = true)]
        json: bool,
    },
    /// Import audio files into a project as stems, and MIDI files (.mid) as MIDI tracks.
    #[command(allow_negative_numbers = true)]
    ///
    /// Without --track each audio file gets a new track named after it, and
    /// each track of a MIDI file that plays notes becomes a MIDI track; with
    /// --track everything goes on that track (created if needed), one file
    /// after another. MIDI plays through the General MIDI SoundFont
    /// (`config set soundfont FILE.sf2`; default: Debian's TimGM6mb).
    Import {
        project: String,
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Put the clips on this track.
        #[arg(long, value_name = "NAME")]
        track: Option<String>,
        /// Where in the song the first clip starts.
        #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
        at: f64,
        #[arg(long)]
        json: bool,
    },
    /// Move, trim and remove clips. Clips are named by id, id prefix, or source file name.
    Clip {
        #[command(subcommand)]
        cmd: studio::ClipCmd,
        #[arg(long, global = true)]
        json: bool,
    },
    /// Write one WAV per track (post-fader, full song length) into DIR.
    ExportStems {
        project: String,
        dir: PathBuf,
        #[arg(long, value_enum, default_value = "s16")]
        format: SampleFormat,
        #[arg(long)]
        json: bool,
    },
    /// Write a MIDI track (its clips as placed in the song) to a Standard
    /// MIDI File at the song's tempo and meter.
    ExportMidi {
        project: String,
        /// The MIDI track: id, id prefix or name.
        track: String,
        /// The .mid file to write.
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Remove stems no project uses any more, and leftovers of interrupted work.
    Gc {
        #[arg(long)]
        json: bool,
    },
    /// List sound inputs and outputs: id, name, default, sample rates,
    /// formats, buffer sizes (the node's view when one runs).
    Devices {
        #[arg(long)]
        json: bool,
    },
    /// Print an invite ticket for a project (needs a running node). The ticket
    /// is the last line of output; it holds the project's secret: share it
    /// only with the studio you invite.
    Invite {
        project: String,
        #[arg(long)]
        json: bool,
    },
    /// Join a project with a ticket from `meshstudio invite` (needs a running node).
    Join {
        ticket: String,
        #[arg(long)]
        json: bool,
    },
    /// Is a project in sync with a member? With --wait, wait until it is: a
    /// member connected, caught up both ways, every stem here (needs a node).
    Sync {
        project: String,
        #[arg(long)]
        wait: bool,
        /// Give up after this long (with --wait).
        #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
        timeout: f64,
        #[arg(long)]
        json: bool,
    },
    /// Undo this node's last edit to a project (never another site's).
    Undo {
        project: String,
        #[arg(long)]
        json: bool,
    },
    /// Redo the last undone edit.
    Redo {
        project: String,
        #[arg(long)]
        json: bool,
    },
    /// Bounce a project to one stereo 48 kHz file, from its Opus stems.
    Mixdown(MixdownArgs),
    /// Record a take from the mic (or a WAV file) into a track, until
    /// --seconds or Ctrl-C. With --overdub the song plays while you record
    /// and the take is placed so it lines up with what you heard (the
    /// device round trip compensated; run `calibrate` once per device pair
    /// for the last few ms). A crash keeps all but the last second.
    Record(RecordCli),
    /// Play a project through the speakers (or into a WAV file) in real time; Ctrl-C stops.
    Play(PlayCli),
    /// Measure the round trip from an output to an input: loop them (a
    /// cable, or the sound server's monitor) and run this once; overdubs on
    /// that pair then line up to the millisecond.
    Calibrate(CalibrateCli),
    /// Turn takes a crash interrupted into clips (also done before the next command).
    Recover {
        #[arg(long)]
        json: bool,
    },
    /// Stop the recording or playback the node is running.
    Stop {
        #[arg(long)]
        json: bool,
    },
    /// Markers on the song's timeline.
    #[command(allow_negative_numbers = true)]
    Marker {
        #[command(subcommand)]
        cmd: studio::MarkerCmd,
        #[arg(long, global = true)]
        json: bool,
    },
    /// Comments on a project, its tracks and moments.
    Comment {
        #[command(subcommand)]
        cmd: studio::CommentCmd,
        #[arg(long, global = true)]
        json: bool,
    },
    /// Stories and notes traded between sites.
    Story {
        #[command(subcommand)]
        cmd: studio::StoryCmd,
        #[arg(long, global = true)]
        json: bool,
    },
    /// Show a project's lyrics, or replace them with a file's text.
    Lyrics {
        project: String,
        /// A UTF-8 text file with the new lyrics.
        #[arg(long, value_name = "FILE")]
        set: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
#[command(allow_negative_numbers = true)]
struct MixdownArgs {
    project: String,
    /// The file to write: .wav or .opus.
    out: PathBuf,
    /// WAV sample format.
    #[arg(long, value_enum, default_value = "s16")]
    format: SampleFormat,
    /// Bring the mix to this integrated loudness (LUFS, e.g. -14), never
    /// letting the true peak above -1 dBTP.
    #[arg(long, value_name = "LUFS")]
    normalize: Option<f64>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct RecordCli {
    project: String,
    /// The track to record into (created if missing); default: a new track
    /// "Take" ("MIDI" for a MIDI take).
    #[arg(long)]
    track: Option<String>,
    /// Record this MIDI input (a name from `meshstudio devices`, or a
    /// unique part of one) instead of audio: notes, velocity, sustain
    /// pedal and pitch bend, heard through the General MIDI synth.
    #[arg(long, value_name = "PORT", conflicts_with_all = ["input", "monitor", "fast"])]
    midi: Option<String>,
    /// Input device id (`meshstudio devices`) or a WAV file; default: the default input.
    #[arg(long, value_name = "DEVICE|FILE.wav")]
    input: Option<String>,
    /// Where playback, monitoring and the click go: a device id or a WAV file.
    #[arg(long, value_name = "DEVICE|FILE.wav")]
    output: Option<String>,
    /// Send the click to its own output (the performer's headphones).
    #[arg(long, value_name = "DEVICE|FILE.wav")]
    click_output: Option<String>,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long, value_name = "N")]
    seconds: Option<f64>,
    /// Where on the timeline the take starts (seconds).
    #[arg(long, value_name = "S", default_value_t = 0.0)]
    at: f64,
    /// Play a click (the project's tempo and time signature) while recording.
    #[arg(long)]
    click: bool,
    /// Bars of click before the take starts.
    #[arg(long, value_name = "BARS", default_value_t = 0)]
    count_in: u32,
    /// Hear the input through the output while recording.
    #[arg(long)]
    monitor: bool,
    /// Play the project while recording, and line the take up with it.
    #[arg(long)]
    overdub: bool,
    /// Device buffer size in frames (smaller: less latency, more risk of dropouts).
    #[arg(long, value_name = "FRAMES")]
    buffer: Option<u32>,
    /// With WAV files on both sides: run as fast as possible, not in real time.
    #[arg(long)]
    fast: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct PlayCli {
    project: String,
    /// Start here (seconds).
    #[arg(long, value_name = "S", default_value_t = 0.0)]
    from: f64,
    /// Stop here (seconds); default: the song's end.
    #[arg(long, value_name = "S")]
    to: Option<f64>,
    /// Output device id or a WAV file (32-bit float, 48 kHz stereo).
    #[arg(long, value_name = "DEVICE|FILE.wav")]
    output: Option<String>,
    /// Device buffer size in frames.
    #[arg(long, value_name = "FRAMES")]
    buffer: Option<u32>,
    /// With --output FILE.wav: render as fast as possible.
    #[arg(long)]
    fast: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct CalibrateCli {
    /// Input device id; default: the default input.
    #[arg(long, value_name = "DEVICE")]
    input: Option<String>,
    /// Output device id; default: the default output.
    #[arg(long, value_name = "DEVICE")]
    output: Option<String>,
    /// Device buffer size in frames (calibrate with the size you record with).
    #[arg(long, value_name = "FRAMES")]
    buffer: Option<u32>,
    #[arg(long)]
    json: bool,
}

/// A port as the request carries it: files as absolute paths.
fn port_arg(text: Option<String>) -> Option<String> {
    use crate::audio::engine::Port;
    let text = text?;
    Some(match Port::parse(Some(&text)) {
        Port::File(path) => std::path::absolute(&path)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned(),
        _ => text,
    })
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// Set KEY to VALUE. Keys: author (who is at the laptop), site (this
    /// studio's name), stem-bitrate (kbit/s of imported stems, 32–512;
    /// default 128 stereo / 96 mono), click-level-db (the metronome's
    /// level, -60..0; default -10), soundfont (the .sf2 MIDI tracks play
    /// through; default /usr/share/sounds/sf2/TimGM6mb.sf2), stems-policy
    /// (always, lan-only or never: which links stems may cross, both ways;
    /// state always syncs), stems-policy:<node id> (the same for one peer),
    /// link:<node id> (lan or remote; unmarked, judged by the path in use),
    /// max-upload-kbps:<node id> and max-download-kbps:<node id> (caps on
    /// the stems this node sends that peer or takes from it, 16–10000000
    /// kbit/s, or none).
    #[command(allow_negative_numbers = true)]
    Set { key: String, value: String },
}

#[derive(Debug, clap::Args)]
struct EncodeArgs {
    /// Input file, then the output .opus file; with --out-dir, all are inputs.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Write each input to DIR/<input name>.opus.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Target bitrate in kbit/s, 32–512 [default: 128 for stereo, 96 for mono].
    #[arg(long, value_name = "KBPS", value_parser = meshstudio_codec::limits::parse_bitrate_kbps)]
    bitrate: Option<u32>,
    /// Files encoded at once with --out-dir [default: number of cores].
    #[arg(long, short, value_name = "N")]
    jobs: Option<usize>,
    /// Print one JSON object per encoded file instead of text; no progress bar.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SampleFormat {
    /// 16-bit integer
    S16,
    /// 24-bit integer
    S24,
    /// 32-bit float
    F32,
}

#[derive(Debug, clap::Args)]
struct DecodeArgs {
    /// The file to decode.
    input: PathBuf,
    /// The WAV file to write.
    output: PathBuf,
    /// Sample format of the WAV file.
    #[arg(long, value_enum, default_value = "s16")]
    format: SampleFormat,
    /// Print a JSON summary instead of text; no progress bar.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ProbeArgs {
    /// The file to look at.
    file: PathBuf,
    /// Print JSON instead of text; no progress bar.
    #[arg(long)]
    json: bool,
}

impl From<SampleFormat> for crate::request::SampleFormat {
    fn from(f: SampleFormat) -> Self {
        match f {
            SampleFormat::S16 => Self::S16,
            SampleFormat::S24 => Self::S24,
            SampleFormat::F32 => Self::F32,
        }
    }
}

/// How a command failed, mapped to the exit status.
pub(crate) enum Failure {
    /// Already reported on stderr.
    Reported,
    /// Stopped by Ctrl-C; nothing was left behind.
    Cancelled,
}

/// Exit status after Ctrl-C, as shells report SIGINT.
const EXIT_CANCELLED: u8 = 130;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    meshstudio_codec::install_panic_hook();
    meshstudio_node::wire::install_panic_hook();
    progress::install_interrupt_handler();
    let result = match cli.command {
        Command::Encode(args) => encode::run(args),
        Command::Decode(args) => decode::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Relay { bind } => crate::node::relay::run(bind).map_err(|e| report_line(&e)),
        other => studio_command(cli.data_dir.as_deref(), other),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Reported) => ExitCode::FAILURE,
        Err(Failure::Cancelled) => {
            eprintln!("meshstudio: cancelled; no output was written");
            ExitCode::from(EXIT_CANCELLED)
        }
    }
}

/// Runs a command that works on the node's data.
fn studio_command(data_dir: Option<&std::path::Path>, command: Command) -> Result<(), Failure> {
    use crate::request::Request as R;
    use studio::{ClipCmd, CommentCmd, MarkerCmd, ProjectCmd, StoryCmd, TrackCmd};
    let dir =
        meshstudio_store::resolve_data_dir(data_dir).map_err(|e| report_line(&e.to_string()))?;
    let (request, json) = match command {
        Command::Up {
            bind,
            api,
            relay,
            no_discovery,
            max_upload_kbps,
            max_download_kbps,
        } => {
            let opts = crate::node::UpOptions {
                bind,
                api,
                relay,
                no_discovery,
                max_upload_kbps,
                max_download_kbps,
            };
            return crate::node::up(&dir, opts).map_err(|e| report_line(&e));
        }
        Command::Status { json } => return studio::status(&dir, json),
        Command::Init { site, json } => (R::Init { site }, json),
        Command::Id => (R::Id, false),
        Command::Config {
            cmd: ConfigCmd::Set { key, value },
        } => (R::ConfigSet { key, value }, false),
        Command::Project { cmd, json } => match cmd {
            ProjectCmd::New { name } => (R::ProjectNew { name }, json),
            ProjectCmd::List => (R::ProjectList, json),
            ProjectCmd::Show { project } => (R::ProjectShow { project }, json),
        },
        Command::Track { cmd, json } => match cmd {
            TrackCmd::Add { project, name } => (R::TrackAdd { project, name }, json),
            TrackCmd::Set {
                project,
                track,
                gain,
                pan,
                mute,
                unmute,
                solo,
                unsolo,
                name,
            } => {
                let changes =
                    studio::track_changes(gain, pan, (mute, unmute), (solo, unsolo), name);
                (
                    R::TrackSet {
                        project,
                        track,
                        changes,
                    },
                    json,
                )
            }
            TrackCmd::Rm { project, track } => (R::TrackRm { project, track }, json),
        },
        Command::Import {
            project,
            files,
            track,
            at,
            json,
        } => {
            let files = studio::absolute(files);
            (
                R::Import {
                    project,
                    files,
                    track,
                    at_seconds: at,
                },
                json,
            )
        }
        Command::Story {
            cmd: StoryCmd::Add { project, text },
            json,
        } => (R::StoryAdd { project, text }, json),
        Command::Lyrics { project, set, json } => {
            let set = match set {
                Some(path) => {
                    Some(std::fs::read_to_string(&path).map_err(|e| report("read", &path, &e))?)
                }
                None => None,
            };
            (R::Lyrics { project, set }, json)
        }
        Command::Clip { cmd, json } => match cmd {
            ClipCmd::Move { project, clip, to } => (
                R::ClipMove {
                    project,
                    clip,
                    to_seconds: to,
                },
                json,
            ),
            ClipCmd::Trim {
                project,
                clip,
                head,
                tail,
            } => (
                R::ClipTrim {
                    project,
                    clip,
                    head_seconds: head,
                    tail_seconds: tail,
                },
                json,
            ),
            ClipCmd::Set {
                project,
                clip,
                gain,
                fade_in,
                fade_out,
            } => {
                let changes = crate::request::ClipChanges {
                    gain_db: gain,
                    fade_in_seconds: fade_in,
                    fade_out_seconds: fade_out,
                };
                (
                    R::ClipSet {
                        project,
                        clip,
                        changes,
                    },
                    json,
                )
            }
            ClipCmd::Rm { project, clip } => (R::ClipRm { project, clip }, json),
        },
        Command::ExportStems {
            project,
            dir,
            format,
            json,
        } => {
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            (
                R::ExportStems {
                    project,
                    dir,
                    format: format.into(),
                },
                json,
            )
        }
        Command::ExportMidi {
            project,
            track,
            out,
            json,
        } => {
            let out = std::path::absolute(&out).unwrap_or(out);
            (
                R::ExportMidi {
                    project,
                    track,
                    out,
                },
                json,
            )
        }
        Command::Gc { json } => (R::Gc, json),
        Command::Devices { json } => (R::Devices, json),
        Command::Marker { cmd, json } => match cmd {
            MarkerCmd::Add {
                project,
                seconds,
                name,
            } => (
                R::MarkerAdd {
                    project,
                    at_seconds: seconds,
                    name,
                },
                json,
            ),
            MarkerCmd::Rm { project, marker } => (R::MarkerRm { project, marker }, json),
        },
        Command::Comment {
            cmd:
                CommentCmd::Add {
                    project,
                    text,
                    track,
                    at,
                },
            json,
        } => {
            let args = crate::request::CommentArgs {
                project,
                text,
                track,
                at_seconds: at,
            };
            (R::CommentAdd(args), json)
        }
        Command::Sync {
            project,
            wait,
            timeout,
            json,
        } => {
            let timeout_seconds = if wait { timeout } else { 0.0 };
            (
                R::SyncWait {
                    project,
                    timeout_seconds,
                },
                json,
            )
        }
        Command::Invite { project, json } => (R::Invite { project }, json),
        Command::Join { ticket, json } => (R::Join { ticket }, json),
        Command::Undo { project, json } => (R::Undo { project }, json),
        Command::Redo { project, json } => (R::Redo { project }, json),
        Command::Mixdown(a) => {
            let format = a.format.into();
            let out = std::path::absolute(&a.out).unwrap_or(a.out);
            let request = R::Mixdown {
                project: a.project,
                out,
                format,
                normalize: a.normalize,
            };
            (request, a.json)
        }
        Command::Record(a) => {
            let args = crate::request::record::RecordArgs {
                project: a.project,
                track: a.track,
                input: port_arg(a.input),
                output: port_arg(a.output),
                click_output: port_arg(a.click_output),
                seconds: a.seconds,
                at_seconds: a.at,
                click: a.click,
                count_in_bars: a.count_in,
                monitor: a.monitor,
                overdub: a.overdub,
                buffer_frames: a.buffer,
                fast: a.fast,
                midi: a.midi,
            };
            (R::Record(args), a.json)
        }
        Command::Play(a) => {
            let args = crate::request::record::PlayArgs {
                project: a.project,
                from_seconds: a.from,
                to_seconds: a.to,
                output: port_arg(a.output),
                buffer_frames: a.buffer,
                fast: a.fast,
            };
            (R::Play(args), a.json)
        }
        Command::Calibrate(a) => {
            let args = crate::request::record::CalibrateArgs {
                input: a.input,
                output: a.output,
                buffer_frames: a.buffer,
            };
            (R::Calibrate(args), a.json)
        }
        Command::Recover { json } => (R::Recover, json),
        Command::Stop { json } => (R::Stop, json),
        Command::Encode(_) | Command::Decode(_) | Command::Probe(_) | Command::Relay { .. } => {
            unreachable!("handled above")
        }
    };
    studio::run(&dir, request, json)
}

/// Prints one error line and returns how to exit.
pub(crate) fn report_line(message: &str) -> Failure {
    eprintln!("meshstudio: {message}");
    Failure::Reported
}

/// Prints one error line for a file and returns how to exit.
pub(crate) fn report(verb: &str, path: &std::path::Path, err: &dyn std::fmt::Display) -> Failure {
    eprintln!("meshstudio: cannot {verb} {:?}: {err}", path);
    Failure::Reported
}
