//! `undo` / `redo`: this node's own edits, newest first, across restarts.
//! Entries live in the store's undo log; an undone entry stays (marked) so
//! it can be redone, until a new edit ends the redo chain.

use meshstudio_store::Store;
use serde_json::{Value, json};

use super::{Context, RequestError, Result, writable};
use crate::project::ops::{self, UndoEntry};

/// The project's undo log: (seq, entry), oldest first.
pub fn entries(store: &Store, project: &str) -> Result<Vec<(u64, UndoEntry)>> {
    let mut out = Vec::new();
    for (seq, bytes) in store.undo_log(project)? {
        let entry = serde_json::from_slice(&bytes).map_err(|e| {
            RequestError::Invalid(format!("undo log entry {seq} is unreadable: {e}"))
        })?;
        out.push((seq, entry));
    }
    Ok(out)
}

/// The trailing run of undone entries: what redo can bring back, oldest first.
pub fn redo_chain(log: &[(u64, UndoEntry)]) -> &[(u64, UndoEntry)] {
    let live = log
        .iter()
        .rposition(|(_, e)| !e.undone)
        .map_or(0, |i| i + 1);
    &log[live..]
}

/// Undoes (or with `redo`, redoes) one edit of this node.
pub fn step(ctx: &mut Context, project: &str, redo: bool) -> Result<Value> {
    let p = writable(ctx, project)?;
    let log = entries(ctx.store()?, &p.id)?;
    let chain = redo_chain(&log);
    let target = if redo {
        chain.first()
    } else {
        log[..log.len() - chain.len()].last()
    };
    let Some((seq, entry)) = target.cloned() else {
        let what = if redo { "redo" } else { "undo" };
        return Err(RequestError::Invalid(format!(
            "nothing to {what} in this project"
        )));
    };
    let changes = if redo { &entry.forward } else { &entry.inverse };
    let (skipped, update) = p.edit(|txn, roots| ops::replay(txn, roots, changes));
    let marked = UndoEntry {
        undone: !redo,
        ..entry.clone()
    };
    let bytes = serde_json::to_vec(&marked).expect("entries serialize");
    ctx.store()?.write(|w| {
        if update != [0, 0] {
            w.append_update(&p.id, &update)?;
        }
        w.set_undo(&p.id, seq, &bytes)
    })?;
    Ok(json!({
        "project": p.id,
        "redo": redo,
        "edit": entry.label,
        "skipped_changed_elsewhere": skipped,
    }))
}
