//! `clip move|trim|rm`: placing and cutting clips on the timeline. Times
//! come in seconds and are stored as 48 kHz frames.

use serde_json::{Value, json};

use super::{Context, RequestError, Result, edit, resolve, song_frames, writable};
use crate::project::ProjectView;
use crate::project::doc::key;
use crate::project::ops::Change;

const FRAMES_PER_SECOND: f64 = 48_000.0;

fn set(track: &str, clip: &str, k: &str, v: i64) -> Change {
    Change::SetClip {
        track: track.into(),
        clip: clip.into(),
        key: k.into(),
        value: json!(v),
        expect: None,
    }
}

pub fn move_to(ctx: &mut Context, project: &str, clip: &str, to_seconds: f64) -> Result<Value> {
    let start = song_frames(to_seconds, "--to")?;
    let p = writable(ctx, project)?;
    let (t, c) = resolve::clip(&p, clip)?;
    edit(ctx, &p, "move clip", vec![set(&t, &c, key::START, start)])?;
    Ok(json!({ "project": p.id, "clip": c, "start": start }))
}

/// Cuts `head` seconds off the clip's start (it stays where it played)
/// and `tail` seconds off its end.
pub fn trim(ctx: &mut Context, project: &str, clip: &str, head: f64, tail: f64) -> Result<Value> {
    let (head, tail) = (song_frames(head, "--head")?, song_frames(tail, "--tail")?);
    let p = writable(ctx, project)?;
    let (t, c) = resolve::clip(&p, clip)?;
    let view = ProjectView::of(&p);
    let current = view
        .tracks
        .iter()
        .flat_map(|t| &t.clips)
        .find(|x| x.id == c)
        .expect("resolved");
    let length = current.length - head - tail;
    if length <= 0 {
        return Err(RequestError::Invalid(format!(
            "trimming {:.3} s from a {:.3} s clip leaves nothing",
            (head + tail) as f64 / FRAMES_PER_SECOND,
            current.length as f64 / FRAMES_PER_SECOND
        )));
    }
    let changes = vec![
        set(&t, &c, key::START, current.start + head),
        set(&t, &c, key::OFFSET, current.offset + head),
        set(&t, &c, key::LENGTH, length),
    ];
    edit(ctx, &p, "trim clip", changes)?;
    Ok(json!({ "project": p.id, "clip": c, "start": current.start + head, "length": length }))
}

/// Clip gain and fades; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ClipChanges {
    pub gain_db: Option<f64>,
    pub fade_in_seconds: Option<f64>,
    pub fade_out_seconds: Option<f64>,
}

/// Gains beyond these are typos, not mixes.
const GAIN_RANGE_DB: std::ops::RangeInclusive<f64> = -120.0..=24.0;

pub fn set_fields(ctx: &mut Context, project: &str, clip: &str, c: &ClipChanges) -> Result<Value> {
    if let Some(g) = c.gain_db.filter(|g| !GAIN_RANGE_DB.contains(g)) {
        return Err(RequestError::Invalid(format!(
            "gain {g} dB is outside -120..24"
        )));
    }
    let fade_in = c
        .fade_in_seconds
        .map(|s| song_frames(s, "--fade-in"))
        .transpose()?;
    let fade_out = c
        .fade_out_seconds
        .map(|s| song_frames(s, "--fade-out"))
        .transpose()?;
    let p = writable(ctx, project)?;
    let (t, id) = resolve::clip(&p, clip)?;
    let mut changes = Vec::new();
    if let Some(g) = c.gain_db {
        let value = json!(g);
        changes.push(Change::SetClip {
            track: t.clone(),
            clip: id.clone(),
            key: key::GAIN_DB.into(),
            value,
            expect: None,
        });
    }
    changes.extend(fade_in.map(|f| set(&t, &id, key::FADE_IN, f)));
    changes.extend(fade_out.map(|f| set(&t, &id, key::FADE_OUT, f)));
    edit(ctx, &p, "change clip", changes)?;
    Ok(json!({ "project": p.id, "clip": id }))
}

pub fn remove(ctx: &mut Context, project: &str, clip: &str) -> Result<Value> {
    let p = writable(ctx, project)?;
    let (t, c) = resolve::clip(&p, clip)?;
    edit(
        ctx,
        &p,
        "remove clip",
        vec![Change::RemoveClip {
            track: t,
            clip: c.clone(),
        }],
    )?;
    Ok(json!({ "project": p.id, "removed": c }))
}
