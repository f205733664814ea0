//! `perf`: the benchmark tool (stub until its own issue lands).
fn main() {
    eprintln!("perf: not implemented yet");
    std::process::exit(2);
}
