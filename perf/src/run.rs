//! Runs a workload against a bootstrap server and turns what the producers
//! and consumers measured into a `Report`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cluster::{Cluster, StartFrom, TopicLayout};
use crate::control::RunControl;
use crate::error::Result;
use crate::fetcher::{ConsumeStats, Consumers};
use crate::producer::{self, ProduceOutcome};
use crate::progress::ProgressLine;
use crate::report::{ConsumeFigures, ProduceFigures, Report};
use crate::schedule::Clock;
use crate::throughput::MB;
use crate::workload::{Mode, Workload};

/// How long e2e waits for consumers to catch up after the producers end.
const DRAIN: Duration = Duration::from_secs(10);

/// Runs `w` against `bootstrap`. Failures inside the run (rejected
/// batches, lost connections) end up in the report; failures before it
/// starts (no broker, missing topic) are errors.
pub async fn execute(w: &Workload, bootstrap: &str, label: &str, progress: bool) -> Result<Report> {
    let cluster = Cluster::discover(bootstrap).await?;
    let control = Arc::new(RunControl::default());
    let ctrl_c = {
        let control = control.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                control.abort("interrupted".to_string());
            }
        })
    };
    let _progress = progress.then(|| {
        ProgressLine::start(
            control.clone(),
            w.mode != Mode::Consume,
            w.mode != Mode::Produce,
        )
    });
    let started_at_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut report = Report {
        label: label.to_string(),
        mode: w.mode.name().to_string(),
        bootstrap: bootstrap.to_string(),
        started_at_unix_s,
        settings: w.describe().into_iter().collect(),
        ..Report::default()
    };
    match w.mode {
        Mode::Produce => {
            let layout = cluster
                .ensure_topic(&w.produce.topic, w.partitions, w.replication_factor)
                .await?;
            let clock = Clock::start();
            let outcome =
                producer::run(&cluster, &layout, &w.produce, clock, control.clone()).await?;
            report.produce = Some(produce_figures(&outcome));
        }
        Mode::Consume => {
            let layout = cluster.topic(&w.produce.topic).await?;
            let (consumers, clock, measure_start) =
                start_consumers(&cluster, &layout, w, w.from, &control).await?;
            wait_for_consumers(w, &control, clock, measure_start).await;
            let stats = consumers.stop().await;
            report.consume = Some(consume_figures(&stats, measure_start, false));
        }
        Mode::EndToEnd => {
            let layout = cluster
                .ensure_topic(&w.produce.topic, w.partitions, w.replication_factor)
                .await?;
            let (consumers, clock, _) =
                start_consumers(&cluster, &layout, w, StartFrom::Latest, &control).await?;
            let outcome =
                producer::run(&cluster, &layout, &w.produce, clock, control.clone()).await?;
            let drain_until = tokio::time::Instant::now() + DRAIN;
            while control.consumed.load(Ordering::Relaxed) < control.acked.load(Ordering::Relaxed)
                && tokio::time::Instant::now() < drain_until
                && !control.stopped()
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let stats = consumers.stop().await;
            report.produce = Some(produce_figures(&outcome));
            report.consume = Some(consume_figures(&stats, outcome.measure_start_ns, true));
            let (acked, consumed) = (
                control.acked.load(Ordering::Relaxed),
                control.consumed.load(Ordering::Relaxed),
            );
            if consumed < acked && control.fatal().is_none() {
                control.abort(format!(
                    "consumers received {consumed} of {acked} acknowledged records within {} s",
                    DRAIN.as_secs()
                ));
            }
        }
    }
    ctrl_c.abort();
    report.error = control.fatal();
    Ok(report)
}

/// Consume mode ends after the duration, the record count, or when no
/// record has come for the idle timeout.
/// Starts consumers on every partition of `layout` from `from`, and the
/// run's clock; returns them with the time measurement starts (after warm-up).
async fn start_consumers(
    cluster: &Cluster,
    layout: &TopicLayout,
    w: &Workload,
    from: StartFrom,
    control: &Arc<RunControl>,
) -> Result<(Consumers, Clock, u64)> {
    let all: Vec<i32> = (0..layout.partitions() as i32).collect();
    let offsets = cluster.offsets(layout, &all, from).await?;
    let clock = Clock::start();
    let measure_start = w.produce.warmup.as_nanos() as u64;
    let consumers = Consumers::start(
        cluster,
        layout,
        &w.fetch,
        &offsets,
        clock,
        control.clone(),
        measure_start,
    )
    .await?;
    Ok((consumers, clock, measure_start))
}

async fn wait_for_consumers(w: &Workload, control: &RunControl, clock: Clock, measure_start: u64) {
    let end = w
        .produce
        .duration
        .map(|d| measure_start + d.as_nanos() as u64);
    let mut last_count = 0;
    let mut last_change = clock.now_ns();
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = clock.now_ns();
        let consumed = control.consumed.load(Ordering::Relaxed);
        if consumed != last_count {
            last_count = consumed;
            last_change = now;
        }
        let idle = now - last_change >= w.idle_timeout.as_nanos() as u64;
        if control.stopped()
            || end.is_some_and(|e| now >= e)
            || w.produce.records.is_some_and(|n| consumed >= n)
            || idle
        {
            return;
        }
    }
}

fn per_sec(n: f64, window_ns: u64) -> f64 {
    if window_ns == 0 {
        0.0
    } else {
        n / (window_ns as f64 / 1e9)
    }
}

fn produce_figures(o: &ProduceOutcome) -> ProduceFigures {
    let s = &o.stats;
    let window = o.window_ns();
    ProduceFigures {
        records: s.records,
        mb: s.bytes as f64 / MB,
        window_s: window as f64 / 1e9,
        records_per_sec: per_sec(s.records as f64, window),
        mb_per_sec: per_sec(s.bytes as f64 / MB, window),
        failed: s.failed,
        errors: s.errors.clone(),
        latency: s.latency.summary(),
        timeline: s.timeline.seconds(window),
    }
}

fn consume_figures(s: &ConsumeStats, measure_start: u64, e2e: bool) -> ConsumeFigures {
    let window = s.last_record_ns.saturating_sub(measure_start);
    ConsumeFigures {
        records: s.records,
        mb: s.bytes as f64 / MB,
        window_s: window as f64 / 1e9,
        records_per_sec: per_sec(s.records as f64, window),
        mb_per_sec: per_sec(s.bytes as f64 / MB, window),
        failed_fetches: s.failed_fetches,
        errors: s.errors.clone(),
        e2e_latency: e2e.then(|| s.e2e.summary()),
        timeline: s.timeline.seconds(window),
    }
}
