//! `gc`: removes stems no project references (orphans left by a crash
//! between storing a blob and committing its clip, or by removed clips)
//! and leftover scratch files. Holding the database lock means no other
//! meshstudio process is importing meanwhile.

use std::collections::HashSet;

use meshstudio_store::Hash;
use serde_json::{Value, json};

use super::{Context, Result};
use crate::project::{ProjectDoc, ProjectView};

pub fn run(ctx: &mut Context) -> Result<Value> {
    let store = ctx.store()?;
    let mut keep: HashSet<Hash> = HashSet::new();
    for row in store.projects()? {
        let view = ProjectView::of(&ProjectDoc::load(store, &row.id)?);
        let blobs = view
            .tracks
            .iter()
            .flat_map(|t| &t.clips)
            .flat_map(|c| std::iter::once(c.blob.as_str()).chain(c.master.as_deref()));
        keep.extend(blobs.filter_map(|b| b.parse::<Hash>().ok()));
    }
    let scratch_removed = clear_scratch(ctx)?;
    let dir = ctx.data_dir().to_path_buf();
    let report = ctx.block_on(meshstudio_store::gc(&dir, &keep))??;
    Ok(json!({
        "referenced": keep.len(),
        "tags_dropped": report.tags_dropped,
        "blobs_before": report.blobs_before,
        "blobs_after": report.blobs_after,
        "scratch_files_removed": scratch_removed,
    }))
}

/// Deletes everything in `<data-dir>/tmp` (encodes and exports of
/// processes that died).
fn clear_scratch(ctx: &Context) -> Result<usize> {
    let dir = ctx.data_dir().join("tmp");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let gone = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed += usize::from(gone.is_ok());
    }
    Ok(removed)
}
