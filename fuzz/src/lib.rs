//! The fuzz crate's library: the target bodies and their helpers, in
//! `cases/` so that the corpus replay in the main workspace can compile the
//! same source (see `cases/mod.rs`).

pub mod cases;
