//! The project model: one yrs document per project, persisted through the
//! store's update log, plus reading it back as plain data.
//!
//! Owns the document schema (what keys exist and how entities nest) and
//! local edits. Knows nothing about audio decoding, the CLI or the network;
//! remote updates arrive here as bytes with the `NET` origin.

pub mod cache;
pub mod doc;
pub mod ops;
pub mod view;

#[cfg(test)]
mod convergence;

pub use doc::ProjectDoc;
pub use view::ProjectView;
