#![no_main]
//! Fuzz entry point: the body lives in `fuzz/src/cases/request.rs`, which the
//! corpus replay (`broker/tests/fuzz_corpus.rs`) runs in the unit tests.

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::cases::request::run(data));
