//! The studio commands: identity, settings, projects, tracks, imports,
//! stories and lyrics. Each becomes one `Request` for `execute()`; this
//! module only parses arguments and prints replies.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::Value;

use super::progress::{self, Bars};
use super::{Failure, report_line};
use crate::client::Remote;
use crate::request::{Context, Request, RequestError, TrackChanges, execute};

#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// Create a project.
    New { name: String },
    /// List projects.
    List,
    /// Show a project's tracks, clips, stories and lyrics.
    Show { project: String },
}

#[derive(Debug, Subcommand)]
pub enum TrackCmd {
    /// Add an empty track.
    Add { project: String, name: String },
    /// Change a track's mixer settings or name.
    #[command(allow_negative_numbers = true)]
    Set {
        project: String,
        track: String,
        /// Track gain in dB (-120..24).
        #[arg(long, value_name = "DB")]
        gain: Option<f64>,
        /// Pan position, -1 (left) .. 1 (right).
        #[arg(long, value_name = "X")]
        pan: Option<f64>,
        #[arg(long, conflicts_with = "unmute")]
        mute: bool,
        #[arg(long)]
        unmute: bool,
        #[arg(long, conflicts_with = "unsolo")]
        solo: bool,
        #[arg(long)]
        unsolo: bool,
        /// New name.
        #[arg(long, value_name = "NEW")]
        name: Option<String>,
    },
    /// Remove a track and its clips.
    Rm { project: String, track: String },
}

#[derive(Debug, Subcommand)]
pub enum ClipCmd {
    /// Move a clip to start at SECONDS in the song.
    #[command(allow_negative_numbers = true)]
    Move {
        project: String,
        clip: String,
        #[arg(long, value_name = "SECONDS")]
        to: f64,
    },
    /// Cut the start (--head) and/or end (--tail) off a clip.
    #[command(allow_negative_numbers = true)]
    Trim {
        project: String,
        clip: String,
        /// Seconds to cut from the start; the rest stays where it played.
        #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
        head: f64,
        /// Seconds to cut from the end.
        #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
        tail: f64,
    },
    /// Set a clip's gain and fades.
    #[command(allow_negative_numbers = true)]
    Set {
        project: String,
        clip: String,
        /// Clip gain in dB (-120..24).
        #[arg(long, value_name = "DB")]
        gain: Option<f64>,
        /// Linear fade-in length.
        #[arg(long, value_name = "SECONDS")]
        fade_in: Option<f64>,
        /// Linear fade-out length.
        #[arg(long, value_name = "SECONDS")]
        fade_out: Option<f64>,
    },
    /// Remove a clip (its stem stays until `gc`).
    Rm { project: String, clip: String },
}

#[derive(Debug, Subcommand)]
pub enum MarkerCmd {
    /// Mark a moment in the song (verse, chorus, "the good take").
    #[command(allow_negative_numbers = true)]
    Add {
        project: String,
        /// Where, in seconds.
        seconds: f64,
        name: String,
    },
    /// Remove a marker (by id, id prefix or unique name).
    Rm { project: String, marker: String },
}

#[derive(Debug, Subcommand)]
pub enum CommentCmd {
    /// Comment on the project, a track (--track) or a moment (--at).
    #[command(allow_negative_numbers = true)]
    Add {
        project: String,
        text: String,
        #[arg(long, value_name = "TRACK")]
        track: Option<String>,
        #[arg(long, value_name = "SECONDS")]
        at: Option<f64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoryCmd {
    /// Add a story or note for the other sites.
    Add { project: String, text: String },
}

/// Turns the `track set` flags into changes.
pub fn track_changes(
    gain: Option<f64>,
    pan: Option<f64>,
    mute: (bool, bool),
    solo: (bool, bool),
    name: Option<String>,
) -> TrackChanges {
    let flag = |(on, off): (bool, bool)| {
        if on {
            Some(true)
        } else if off {
            Some(false)
        } else {
            None
        }
    };
    TrackChanges {
        name,
        gain_db: gain,
        pan,
        mute: flag(mute),
        solo: flag(solo),
    }
}

/// Absolute paths, so the request means the same wherever it runs.
pub fn absolute(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths
        .into_iter()
        .map(|p| std::path::absolute(&p).unwrap_or(p))
        .collect()
}

/// Runs one request against the data dir and prints its reply.
pub fn run(data_dir: &Path, request: Request, json: bool) -> Result<(), Failure> {
    let mut ctx = Context::new(data_dir.to_path_buf());
    let long_work = request.uses_engine()
        || matches!(
            request,
            Request::Import { .. } | Request::Mixdown { .. } | Request::SyncWait { .. }
        );
    let bars = Bars::new(progress::wanted(json) && long_work);
    let observer = bars.file(Path::new(label(&request)));
    let human = describe(&request);
    let (result, closed) = match Remote::find(data_dir) {
        Some(node) => (node.execute(&request, &observer), Ok(())),
        None => {
            recover_first(&mut ctx, &request);
            (execute(&mut ctx, request, &observer), ctx.close())
        }
    };
    observer.done();
    let reply = match (result, closed) {
        (Ok(v), Ok(())) => v,
        (Err(RequestError::Cancelled), _) => return Err(Failure::Cancelled),
        (Err(e), _) | (Ok(_), Err(e)) => return Err(report_line(&e.to_string())),
    };
    for warning in reply["warnings"].as_array().into_iter().flatten() {
        eprintln!(
            "meshstudio: warning: {}",
            warning.as_str().unwrap_or_default()
        );
    }
    if json {
        println!("{reply}");
    } else {
        print_human(human, &reply);
    }
    Ok(())
}

/// Takes a crash interrupted become clips before anything else runs, and
/// the user hears about it (`recover` itself reports them in its reply).
fn recover_first(ctx: &mut Context, request: &Request) {
    if matches!(
        request,
        Request::Recover | Request::Init { .. } | Request::Id
    ) {
        return;
    }
    if !crate::request::record::pending(ctx) {
        return;
    }
    match crate::request::record::recover(ctx) {
        Ok(takes) => {
            for t in takes {
                eprintln!("meshstudio: {}", crate::request::record::recovered_line(&t));
            }
        }
        Err(e) => eprintln!("meshstudio: {e}"),
    }
}

fn label(r: &Request) -> &'static str {
    match r {
        Request::Mixdown { .. } => "mixdown",
        Request::SyncWait { .. } => "stems",
        Request::Record(_) => "recording",
        Request::Play(_) => "playing",
        Request::Calibrate(_) => "calibrating",
        _ => "import",
    }
}

/// `status`: what the running node says about itself; an error when none runs.
pub fn status(data_dir: &Path, json: bool) -> Result<(), Failure> {
    let Some(node) = Remote::find(data_dir) else {
        return Err(report_line(&format!(
            "no node is running for {}; start one with `meshstudio up`",
            data_dir.display()
        )));
    };
    let v = node
        .status()
        .map_err(|e| report_line(&format!("the node did not answer: {e}")))?;
    if json {
        println!("{v}");
        return Ok(());
    }
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    println!(
        "node {}  (pid {}, up {} s)",
        s("id"),
        v["pid"],
        v["uptime_seconds"]
    );
    println!("  api:      http://{}", s("api"));
    let addrs: Vec<String> = v["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    println!("  network:  {}", addrs.join(", "));
    println!("  data:     {}", s("data_dir"));
    match v["projects"].as_u64() {
        Some(n) => println!("  projects: {n}"),
        None => println!("  projects: (busy with a request)"),
    }
    let peers = v["peers"].as_array().cloned().unwrap_or_default();
    if peers.is_empty() {
        println!("  peers:    none connected");
    }
    for p in peers {
        let rtt = p["rtt_ms"]
            .as_f64()
            .map_or_else(String::new, |r| format!(", rtt {r:.1} ms"));
        let caps = &p["stem_caps_kbps"];
        let cap = |way: &str| {
            caps[way]
                .as_u64()
                .map(|k| format!(", stems {way} ≤ {k} kbit/s"))
        };
        let caps: String = ["up", "down"].into_iter().filter_map(cap).collect();
        println!(
            "  peer {}  {} {} ({} link){rtt}{caps}",
            &p["id"].as_str().unwrap_or_default()
                [..16.min(p["id"].as_str().unwrap_or_default().len())],
            p["path"].as_str().unwrap_or("?"),
            p["address"].as_str().unwrap_or("?"),
            p["link"].as_str().unwrap_or("?"),
        );
    }
    for p in v["sync"].as_array().into_iter().flatten() {
        println!(
            "  project {}: {}",
            p["name"].as_str().unwrap_or("?"),
            sync_line(p)
        );
    }
    Ok(())
}

/// One project's stem transfer state, for people.
fn sync_line(p: &Value) -> String {
    let (stems, missing) = (
        p["stems"].as_u64().unwrap_or(0),
        p["missing"].as_u64().unwrap_or(0),
    );
    if missing == 0 {
        return format!("all {stems} stems here");
    }
    let mb = |b: f64| b / 1e6;
    let to_go = mb(p["bytes_to_go"].as_f64().unwrap_or(0.0));
    let rate = mb(p["rate_bytes_per_s"].as_f64().unwrap_or(0.0));
    let eta = p["eta_seconds"].as_f64().map_or_else(
        || "waiting for a provider".into(),
        |s| format!("about {s:.0} s left"),
    );
    format!("{missing} of {stems} stems missing, {to_go:.1} MB to go at {rate:.1} MB/s, {eta}")
}

/// Which human rendering a reply gets.
#[derive(Clone, Copy)]
enum Human {
    Id,
    Init,
    Show,
    List,
    Lyrics,
    Invite,
    Devices,
    Take,
    Played,
    Calibrated,
    Recovered,
    Summary,
}

fn print_devices(v: &Value) {
    for (title, key) in [("inputs", "inputs"), ("outputs", "outputs")] {
        println!("{title}:");
        let list = v[key].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            println!("  none");
        }
        for d in list {
            let mark = if d["default"] == true { "*" } else { " " };
            let rates: Vec<String> = d["rates"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| format!("{}", r.as_u64().unwrap_or(0) / 1000))
                .collect();
            println!(
                "{mark} {}  {}  ({} ch, {} kHz)",
                d["id"].as_str().unwrap_or("?"),
                d["name"].as_str().unwrap_or("?"),
                d["channels"],
                rates.join("/"),
            );
        }
    }
    println!("midi inputs:");
    let ports = v["midi_inputs"].as_array().cloned().unwrap_or_default();
    match v["midi_error"].as_str() {
        Some(e) => println!("  none: {e}"),
        None if ports.is_empty() => println!("  none"),
        None => {}
    }
    for p in ports {
        println!("  {}", p.as_str().unwrap_or("?"));
    }
}

fn describe(r: &Request) -> Human {
    match r {
        Request::Id => Human::Id,
        Request::Init { .. } => Human::Init,
        Request::ProjectShow { .. } => Human::Show,
        Request::ProjectList => Human::List,
        Request::Lyrics { .. } => Human::Lyrics,
        Request::Invite { .. } => Human::Invite,
        Request::Devices => Human::Devices,
        Request::Record(_) => Human::Take,
        Request::Play(_) => Human::Played,
        Request::Calibrate(_) => Human::Calibrated,
        Request::Recover => Human::Recovered,
        _ => Human::Summary,
    }
}

fn print_human(kind: Human, v: &Value) {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    match kind {
        Human::Id => println!("{}", s("id")),
        Human::Init => {
            let verb = if v["created"] == true {
                "created"
            } else {
                "already set up"
            };
            println!("node {} ({verb}) in {}", s("id"), s("data_dir"));
        }
        Human::List => {
            for p in v.as_array().into_iter().flatten() {
                println!(
                    "{}  {}",
                    p["id"].as_str().unwrap_or_default(),
                    p["name"].as_str().unwrap_or_default()
                );
            }
        }
        Human::Show => print_project(v),
        Human::Lyrics => println!("{}", s("lyrics")),
        Human::Invite => {
            println!(
                "Invite to {} — give this ticket to the other studio only:",
                s("name")
            );
            println!("{}", s("ticket"));
        }
        Human::Summary => println!("{v}"),
        Human::Devices => print_devices(v),
        Human::Take if v["notes"].is_u64() => println!(
            "recorded {} notes ({:.1} s) into MIDI track {:?} at {:.1} s (clip {}); {} xruns",
            v["notes"],
            v["seconds"].as_f64().unwrap_or(0.0),
            s("track_name"),
            v["start"].as_f64().unwrap_or(0.0) / 48_000.0,
            s("clip"),
            v["engine"]["xruns"],
        ),
        Human::Take => {
            let e = &v["engine"];
            println!(
                "recorded {:.1} s into track {:?} at {:.1} s (clip {}); {} xruns",
                v["seconds"].as_f64().unwrap_or(0.0),
                s("track_name"),
                v["start"].as_f64().unwrap_or(0.0) / 48_000.0,
                s("clip"),
                e["xruns"],
            );
        }
        Human::Played => println!(
            "played {:.1} s; {} xruns",
            v["frames"].as_f64().unwrap_or(0.0) / 48_000.0,
            v["xruns"]
        ),
        Human::Calibrated => println!(
            "round trip {} ms ({:.2} ms beyond what the devices report, spread {:.2} ms); stored for this device pair",
            v["round_trip_ms"]
                .as_f64()
                .map_or_else(|| "?".into(), |r| format!("{r:.1}")),
            v["residual_ms"].as_f64().unwrap_or(0.0),
            v["spread_ms"].as_f64().unwrap_or(0.0),
        ),
        Human::Recovered => {
            let takes = v["recovered"].as_array().cloned().unwrap_or_default();
            if takes.is_empty() {
                println!("no interrupted takes");
            }
            for t in takes {
                println!("{}", crate::request::record::recovered_line(&t));
            }
        }
    }
}

fn print_project(v: &Value) {
    let f = |x: &Value| x.as_f64().unwrap_or_default();
    println!(
        "{}  {}",
        v["name"].as_str().unwrap_or_default(),
        v["id"].as_str().unwrap_or_default()
    );
    println!(
        "tempo {} bpm, {}/{}",
        f(&v["tempo"]),
        v["beats_per_bar"],
        v["beat_unit"]
    );
    for t in v["tracks"].as_array().into_iter().flatten() {
        let flags = [
            (t["kind"] == "midi", " midi"),
            (t["mute"] == true, " muted"),
            (t["solo"] == true, " solo"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, s)| *s)
        .collect::<String>();
        println!(
            "  track {}  {:<20} gain {:+.1} dB  pan {:+.2}{flags}",
            &t["id"].as_str().unwrap_or_default()
                [..8.min(t["id"].as_str().unwrap_or_default().len())],
            t["name"].as_str().unwrap_or_default(),
            f(&t["gain_db"]),
            f(&t["pan"])
        );
        for c in t["clips"].as_array().into_iter().flatten() {
            println!(
                "    clip at {:>9.3} s, {:>8.3} s long  {}",
                f(&c["start"]) / 48_000.0,
                f(&c["length"]) / 48_000.0,
                c["source"].as_str().unwrap_or_default()
            );
        }
    }
    for m in v["markers"].as_array().into_iter().flatten() {
        let at = m["at"].as_f64().unwrap_or_default() / 48_000.0;
        println!(
            "  marker at {at:>9.3} s  {}",
            m["name"].as_str().unwrap_or_default()
        );
    }
    for c in v["comments"].as_array().into_iter().flatten() {
        let about = c["at"]
            .as_f64()
            .map(|f| format!(" at {:.3} s", f / 48_000.0))
            .unwrap_or_default();
        println!(
            "  comment by {}{about}: {}",
            c["author"].as_str().unwrap_or("?"),
            c["text"].as_str().unwrap_or_default()
        );
    }
    for st in v["stories"].as_array().into_iter().flatten() {
        println!(
            "  story by {}: {}",
            st["author"].as_str().unwrap_or("?"),
            st["text"].as_str().unwrap_or_default()
        );
    }
}
