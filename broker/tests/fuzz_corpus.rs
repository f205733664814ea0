//! Replays every stored fuzz corpus input (`fuzz/corpus/TARGET/*`) through
//! its target's body (`fuzz/src/cases`), as plain code: no libFuzzer, no
//! sanitizer, no instrumented build. Each input that once reached new code,
//! and each crash that was fixed, so stays a regression test in every run of
//! the unit tests. Mutating runs that look for new inputs are `scripts/fuzz`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[allow(dead_code)] // each target uses its own share of the helpers
#[path = "../../fuzz/src/cases/mod.rs"]
mod cases;

/// Runs `run` on every input of `target`'s corpus, and fails naming each
/// input that panicked (its panic message is printed above).
fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "corpus {} is empty", dir.display());
    let mut failed = Vec::new();
    for input in &inputs {
        let data = std::fs::read(input).expect("corpus input reads");
        if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            failed.push(input.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} corpus inputs panicked:\n{}",
        failed.len(),
        inputs.len(),
        failed.join("\n")
    );
}

/// One test per target, named after it, replaying its corpus.
macro_rules! replay_tests {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                replay(stringify!($target), cases::$target::run);
            }
        )*
    };
}

replay_tests!(
    coordinator_records,
    frame,
    metadata,
    object,
    record_batch,
    request,
    sasl,
    wal_recovery,
);
