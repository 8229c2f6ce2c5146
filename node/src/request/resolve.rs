//! Naming things on the command line: an id, a unique id prefix of at least
//! `MIN_PREFIX_CHARS`, or a unique name. Ambiguity is an error that lists
//! the candidates, never a guess.

use meshstudio_store::Store;
use yrs::MapRef;

use super::{RequestError, Result};
use crate::project::doc::child_map;
use crate::project::{ProjectDoc, ProjectView};

/// Shorter prefixes would match by accident too often.
pub const MIN_PREFIX_CHARS: usize = 6;

/// Picks the one candidate `arg` names: (id, name) pairs in, id out.
pub fn pick(what: &str, arg: &str, candidates: &[(String, String)]) -> Result<String> {
    if let Some((id, _)) = candidates.iter().find(|(id, _)| id == arg) {
        return Ok(id.clone());
    }
    let by_prefix: Vec<_> = if arg.len() >= MIN_PREFIX_CHARS {
        candidates
            .iter()
            .filter(|(id, _)| id.starts_with(arg))
            .collect()
    } else {
        Vec::new()
    };
    let matches = if by_prefix.is_empty() {
        candidates.iter().filter(|(_, name)| name == arg).collect()
    } else {
        by_prefix
    };
    match matches.as_slice() {
        [(id, _)] => Ok(id.clone()),
        [] => Err(RequestError::Invalid(format!("no {what} named {arg:?}"))),
        many => {
            let list: Vec<String> = many.iter().map(|(id, n)| format!("{id} ({n})")).collect();
            Err(RequestError::Invalid(format!(
                "{arg:?} names {} {what}s: {}; use an id",
                many.len(),
                list.join(", ")
            )))
        }
    }
}

/// Loads the project `arg` names.
pub fn project(store: &Store, arg: &str) -> Result<ProjectDoc> {
    let mut candidates = Vec::new();
    for row in store.projects()? {
        let name = ProjectDoc::load(store, &row.id)?.name();
        candidates.push((row.id, name));
    }
    let id = pick("project", arg, &candidates)?;
    Ok(ProjectDoc::load(store, &id)?)
}

/// The id and map of the track `arg` names.
pub fn track(p: &ProjectDoc, arg: &str) -> Result<(String, MapRef)> {
    let view = ProjectView::of(p);
    let candidates: Vec<_> = view
        .tracks
        .iter()
        .map(|t| (t.id.clone(), t.name.clone()))
        .collect();
    let id = pick("track", arg, &candidates)?;
    let txn = yrs::Transact::transact(&p.doc);
    let map = child_map(&txn, &p.roots.tracks, &id).expect("the id came from this doc");
    Ok((id, map))
}

/// (track id, clip id) of the clip `arg` names (its id, an id prefix, or
/// its source file name if unique).
pub fn clip(p: &ProjectDoc, arg: &str) -> Result<(String, String)> {
    let view = ProjectView::of(p);
    let clips: Vec<(String, String, String)> = view
        .tracks
        .iter()
        .flat_map(|t| {
            t.clips
                .iter()
                .map(|c| (t.id.clone(), c.id.clone(), c.source.clone()))
        })
        .collect();
    let candidates: Vec<_> = clips
        .iter()
        .map(|(_, c, s)| (c.clone(), s.clone()))
        .collect();
    let id = pick("clip", arg, &candidates)?;
    let (track, _, _) = clips
        .into_iter()
        .find(|(_, c, _)| *c == id)
        .expect("picked from these");
    Ok((track, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn ids_prefixes_and_names() {
        let cands = c(&[
            ("abcdef12", "Vocals"),
            ("abcdef34", "Drums"),
            ("99887766", "Vocals"),
        ]);
        assert_eq!(pick("track", "abcdef12", &cands).unwrap(), "abcdef12");
        assert_eq!(pick("track", "998877", &cands).unwrap(), "99887766");
        assert_eq!(pick("track", "Drums", &cands).unwrap(), "abcdef34");
        let err = pick("track", "abcdef", &cands).unwrap_err().to_string();
        assert!(
            err.contains("abcdef12") && err.contains("abcdef34"),
            "{err}"
        );
        let err = pick("track", "Vocals", &cands).unwrap_err().to_string();
        assert!(err.contains("2 tracks"), "{err}");
        assert!(
            pick("track", "abc", &cands).is_err(),
            "prefixes under 6 chars don't count"
        );
    }
}
