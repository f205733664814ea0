//! The S3 backend against a real S3-compatible server (moto), directly and
//! through `scripts/objstore/fault_proxy.py`, which injects 500s, 503
//! SlowDowns, latency, connections reset mid-body, applied-but-unanswered
//! PUT/POSTs and outages.
//!
//! Each test starts its own moto (`scripts/objstore/s3-server --port 0`)
//! and proxy on free loopback ports and kills them when it ends, panics
//! included. With `S3_TEST_ENDPOINT=http://host:port` set, the tests use
//! that server instead (credentials from `S3_TEST_ACCESS_KEY_ID` /
//! `S3_TEST_SECRET_ACCESS_KEY`, default `test`/`test`; each test makes its
//! own bucket). Without moto installed the tests print a SKIP line and pass.

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use storage::object::s3::{S3Config, S3Store};
use storage::object::{ErrorCounts, ObjectError, ObjectStore};

const MIB: usize = 1024 * 1024;
const MOTO_PIN: &str = "moto[server]==5.2.1";

/// A child process killed (and reaped) when the test ends, however it ends.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("storage/ is inside the workspace")
        .to_path_buf()
}

fn log_file(name: &str) -> Stdio {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.log"));
    std::fs::File::create(path).map_or(Stdio::null(), Stdio::from)
}

/// Starts `script args` and waits for the stdout line starting with
/// `marker`; `None` if the process exits first with status 3 (not
/// installed).
fn start(script: &str, args: &[&str], marker: &str, log: &str) -> Option<(Proc, String)> {
    let child = Command::new("python3")
        .arg(repo_root().join(script))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file(log))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 {script}: {e}"));
    let mut proc = Proc { child };
    let stdout = proc.child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.starts_with(marker) => return Some((proc, line)),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(status)) = proc.child.try_wait() {
                    if status.code() == Some(3) {
                        return None;
                    }
                    panic!("{script} exited with {status}; see {log}.log in the target tmp dir");
                }
                assert!(Instant::now() < deadline, "{script} did not start in 60 s");
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = proc.child.wait().expect("wait");
                if status.code() == Some(3) {
                    return None;
                }
                panic!("{script} exited with {status}; see {log}.log in the target tmp dir");
            }
        }
    }
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// The S3 server of one test: moto started here, or `S3_TEST_ENDPOINT`.
struct Server {
    _moto: Option<Proc>,
    endpoint: String,
}

fn s3_server(test: &str) -> Option<Server> {
    if let Ok(endpoint) = std::env::var("S3_TEST_ENDPOINT") {
        return Some(Server {
            _moto: None,
            endpoint,
        });
    }
    let args = ["--port", "0", "--no-install"];
    match start(
        "scripts/objstore/s3-server",
        &args,
        "S3_SERVER",
        &format!("moto-{test}"),
    ) {
        Some((proc, line)) => Some(Server {
            endpoint: field(&line, "url").to_string(),
            _moto: Some(proc),
        }),
        None => {
            // Straight to stderr: the test harness captures `eprintln!` of
            // passing tests, and this line must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIP {test}: moto is not installed, so the S3 backend was NOT tested. \
                 Install it with: PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install '{MOTO_PIN}' ***\n"
            );
            None
        }
    }
}

/// The fault proxy in front of `upstream`.
struct FaultProxy {
    _proc: Proc,
    data: String,
    control: String,
}

fn fault_proxy(upstream: &str, test: &str, args: &[&str]) -> FaultProxy {
    let mut all = vec!["--upstream", upstream];
    all.extend_from_slice(args);
    let (proc, line) = start(
        "scripts/objstore/fault_proxy.py",
        &all,
        "FAULT_PROXY",
        &format!("proxy-{test}"),
    )
    .expect("the fault proxy needs only python3");
    FaultProxy {
        data: field(&line, "data").to_string(),
        control: field(&line, "control").to_string(),
        _proc: proc,
    }
}

/// One blocking HTTP call to the proxy's control port; the body of the
/// answer. Called through `spawn_blocking` from inside an executor.
fn control_call(base: &str, method: &str, path: &str, body: &str) -> String {
    let addr = base.strip_prefix("http://").expect("http control url");
    let mut s = std::net::TcpStream::connect(addr).expect("connect to proxy control");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read control answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "control {path}: {head}");
    body.to_string()
}

async fn control(base: &str, method: &'static str, path: &'static str, body: &str) -> String {
    let (base, body) = (base.to_string(), body.to_string());
    glommio::executor()
        .spawn_blocking(move || control_call(&base, method, path, &body))
        .await
}

/// A counter from the proxy's `/__stats` JSON.
fn stat(json: &str, name: &str) -> u64 {
    let needle = format!("\"{name}\": ");
    let start = json
        .find(&needle)
        .unwrap_or_else(|| panic!("{name} in {json}"))
        + needle.len();
    json[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{test}-{}-{nanos}", std::process::id())
}

fn config(endpoint: &str, bucket: &str) -> S3Config {
    S3Config {
        endpoint: endpoint.to_string(),
        bucket: bucket.to_string(),
        prefix: "broker-test/".to_string(),
        access_key_id: std::env::var("S3_TEST_ACCESS_KEY_ID").unwrap_or_else(|_| "test".into()),
        secret_access_key: std::env::var("S3_TEST_SECRET_ACCESS_KEY")
            .unwrap_or_else(|_| "test".into()),
        region: std::env::var("S3_TEST_REGION").unwrap_or_else(|_| "us-east-1".into()),
        // Generous: CI runs these next to other test binaries on 2 cores.
        request_timeout_ms: 20_000,
        retry_base_ms: 2,
        retry_cap_ms: 50,
        max_attempts: 10,
        ..S3Config::default()
    }
}

fn run<Fut: Future<Output = ()> + 'static>(f: impl FnOnce() -> Fut + Send + 'static) {
    glommio::LocalExecutorBuilder::default()
        .spawn(f)
        .expect("executor")
        .join()
        .expect("test task");
}

/// Deterministic bytes that differ at every offset of every object.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `data` as a body of unevenly sized chunks, so that parts and ranges
/// cross chunk boundaries.
fn chunked(data: &[u8], chunk: usize) -> Vec<Bytes> {
    data.chunks(chunk).map(Bytes::copy_from_slice).collect()
}

fn assert_retriable(err: &ObjectError) {
    assert!(
        err.is_retriable(),
        "expected a retriable error, got {err:?}"
    );
}

#[test]
fn basic_operations_against_moto() {
    let Some(server) = s3_server("basic") else {
        return;
    };
    // `localhost` instead of the address: the name goes through the
    // resolver on the blocking pool (and its cache).
    let endpoint = if std::env::var("S3_TEST_ENDPOINT").is_ok() {
        server.endpoint.clone()
    } else {
        server.endpoint.replace("127.0.0.1", "localhost")
    };
    let bucket = unique("basic");
    run(move || async move {
        let store = S3Store::new(config(&endpoint, &bucket)).unwrap();
        store.create_bucket().await.unwrap();
        store
            .create_bucket()
            .await
            .expect("creating it again is fine");
        assert!(store.describe().contains(&bucket));

        let data = pattern(1, 3 * MIB + 123);
        store.put("a/one", chunked(&data, 777_777)).await.unwrap();
        let info = store.head("a/one").await.unwrap().expect("just written");
        assert_eq!((info.key.as_str(), info.size), ("a/one", data.len() as u64));
        let age = info.last_modified_ms.expect("moto sends Last-Modified");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!(
            (now_ms - age).abs() < 600_000,
            "Last-Modified {age} vs now {now_ms}"
        );

        let len = data.len() as u64;
        for range in [
            0..1,
            0..len,
            5..777_790,
            len - 10..len,
            1_000_000..2_500_000,
        ] {
            let got = store.get_range("a/one", range.clone()).await.unwrap();
            assert_eq!(
                &got[..],
                &data[range.start as usize..range.end as usize],
                "{range:?}"
            );
        }
        assert!(store.get_range("a/one", 3..3).await.unwrap().is_empty());
        let past = store
            .get_range("a/one", len - 5..len + 5)
            .await
            .unwrap_err();
        assert!(!past.is_retriable(), "{past:?}");
        let beyond = store
            .get_range("a/one", len + 10..len + 20)
            .await
            .unwrap_err();
        assert!(!beyond.is_retriable(), "{beyond:?}");

        assert_eq!(store.head("a/missing").await.unwrap(), None);
        assert_eq!(
            store.get_range("a/missing", 0..1).await.unwrap_err(),
            ObjectError::NotFound("a/missing".into())
        );

        // Empty objects, overwrites, odd key characters.
        store.put("a/empty", vec![]).await.unwrap();
        assert_eq!(store.head("a/empty").await.unwrap().unwrap().size, 0);
        store
            .put("a/one", vec![Bytes::from_static(b"v2")])
            .await
            .unwrap();
        assert_eq!(&store.get_range("a/one", 0..2).await.unwrap()[..], b"v2");
        let odd = "a/sp ace+plus=eq&amp%25/ü";
        store
            .put(odd, vec![Bytes::from_static(b"odd")])
            .await
            .unwrap();
        assert_eq!(&store.get_range(odd, 0..3).await.unwrap()[..], b"odd");

        let listed = store.list("a/").await.unwrap();
        let keys: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, vec!["a/empty", "a/one", odd]);

        let doomed = vec![
            "a/one".to_string(),
            "a/never-was".to_string(),
            odd.to_string(),
        ];
        store.delete_many(&doomed).await.unwrap();
        assert_eq!(store.head("a/one").await.unwrap(), None);
        assert_eq!(store.list("a/").await.unwrap().len(), 1);
        store.delete_many(&[]).await.unwrap();

        let stats = store.stats();
        assert_eq!(stats.failures, 3, "{stats:?}"); // past end x2, not found
        assert_eq!(stats.retries, 0, "{stats:?}");
        // A range running past the end comes back short (invalid); one
        // starting past it is refused (HTTP 416, a client error).
        let by_cause = ErrorCounts {
            invalid: 1,
            client: 1,
            not_found: 1,
            ..ErrorCounts::default()
        };
        assert_eq!(stats.errors, by_cause, "{stats:?}");
        assert!(stats.puts >= 4 && stats.bytes_put >= len, "{stats:?}");
        let pool = store.pool_stats();
        if std::env::var("S3_TEST_ENDPOINT").is_err() {
            assert_eq!(
                pool.resolutions, 1,
                "the resolved address is cached: {pool:?}"
            );
        }
    });
}

#[test]
fn list_and_delete_cross_the_1000_key_pages() {
    let Some(server) = s3_server("list") else {
        return;
    };
    let bucket = unique("list");
    let endpoint = server.endpoint.clone();
    run(move || async move {
        let store = Rc::new(S3Store::new(config(&endpoint, &bucket)).unwrap());
        store.create_bucket().await.unwrap();
        const N: usize = 1234;
        let keys: Vec<String> = (0..N).map(|i| format!("many/{i:05}")).collect();
        let started = Instant::now();
        futures::stream::iter(keys.iter().enumerate())
            .map(|(i, k)| {
                let store = store.clone();
                async move { store.put(k, vec![Bytes::from(vec![7u8; i % 50])]).await }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await
            .unwrap();
        let put_time = started.elapsed();
        store
            .put("other/x", vec![Bytes::from_static(b"x")])
            .await
            .unwrap();

        let requests_before = store.pool_stats().requests;
        let listed = store.list("many/").await.unwrap();
        assert_eq!(
            store.pool_stats().requests - requests_before,
            2,
            "1234 keys take two pages (S3 and moto send at most 1000 keys a page)"
        );
        assert_eq!(listed.len(), N);
        for (i, (o, k)) in listed.iter().zip(&keys).enumerate() {
            assert_eq!(&o.key, k);
            assert_eq!(o.size, (i % 50) as u64);
            assert!(o.last_modified_ms.is_some());
        }
        assert_eq!(store.list("many/0012").await.unwrap().len(), 10);
        assert_eq!(store.list("").await.unwrap().len(), N + 1);

        store.delete_many(&keys).await.unwrap();
        assert!(store.list("many/").await.unwrap().is_empty());
        assert_eq!(store.list("").await.unwrap().len(), 1);
        let stats = store.stats();
        assert_eq!(stats.deletes, N as u64);
        assert_eq!(stats.failures, 0, "{stats:?}");
        println!(
            "{N} small PUTs, 16 in flight: {:.0} PUT/s; pool {:?}",
            N as f64 / put_time.as_secs_f64(),
            store.pool_stats()
        );
    });
}

#[test]
fn multipart_40_mib_in_5_mib_parts() {
    let Some(server) = s3_server("multipart") else {
        return;
    };
    let bucket = unique("multipart");
    let endpoint = server.endpoint.clone();
    run(move || async move {
        let store = S3Store::new(config(&endpoint, &bucket)).unwrap();
        store.create_bucket().await.unwrap();
        let data = pattern(42, 40 * MIB + 4321);
        let started = Instant::now();
        store
            .put_multipart("big", chunked(&data, 3 * MIB + 17), 5 * MIB)
            .await
            .unwrap();
        let put_time = started.elapsed();
        let len = data.len() as u64;
        assert_eq!(store.head("big").await.unwrap().unwrap().size, len);

        let part = 5 * MIB as u64;
        for range in [
            part - 100..part + 100,
            3 * part - 1..3 * part + 1,
            0..2 * part + 7,
            7 * part + 3..len,
            len - 1..len,
        ] {
            let got = store.get_range("big", range.clone()).await.unwrap();
            assert_eq!(
                &got[..],
                &data[range.start as usize..range.end as usize],
                "bytes {range:?}"
            );
        }
        let started = Instant::now();
        let all = store.get_range("big", 0..len).await.unwrap();
        let get_time = started.elapsed();
        assert!(all == data, "whole object differs");

        // Small bodies take the single-PUT path.
        store
            .put_multipart("small", vec![Bytes::from_static(b"tiny")], 5 * MIB)
            .await
            .unwrap();
        assert_eq!(store.head("small").await.unwrap().unwrap().size, 4);
        let stats = store.stats();
        assert_eq!((stats.failures, stats.retries), (0, 0), "{stats:?}");
        println!(
            "multipart PUT 40 MiB: {:.1} MiB/s; GET 40 MiB: {:.1} MiB/s (moto, {} build)",
            40.0 / put_time.as_secs_f64(),
            40.0 / get_time.as_secs_f64(),
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        );
    });
}

#[test]
fn faults_are_ridden_out() {
    let Some(server) = s3_server("faults") else {
        return;
    };
    let proxy = fault_proxy(
        &server.endpoint,
        "faults",
        &[
            "--error500",
            "0.2",
            "--slowdown503",
            "0.2",
            "--reset-body",
            "0.2",
            "--drop-response",
            "0.2",
            "--latency-prob",
            "0.2",
            "--latency-ms",
            "20",
        ],
    );
    let bucket = unique("faults");
    let (data_url, control_url) = (proxy.data.clone(), proxy.control.clone());
    run(move || async move {
        let mut cfg = config(&data_url, &bucket);
        // 20% of each fault fails about half the attempts; 40 attempts make
        // giving up (0.6^40) practically impossible.
        cfg.max_attempts = 40;
        cfg.retry_base_ms = 1;
        cfg.retry_cap_ms = 20;
        cfg.max_connections = 8;
        let store = Rc::new(S3Store::new(cfg).unwrap());
        store.create_bucket().await.unwrap();

        const N: usize = 60;
        let objects: Vec<(String, Vec<u8>)> = (0..N)
            .map(|i| (format!("f/{i:03}"), pattern(i as u64, 20_000 + i * 3_001)))
            .collect();
        futures::stream::iter(&objects)
            .map(|(k, d)| {
                let store = store.clone();
                async move { store.put(k, chunked(d, 8_192)).await }
            })
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await
            .unwrap();
        futures::stream::iter(&objects)
            .map(|(k, d)| {
                let store = store.clone();
                async move {
                    let range = 100..d.len() as u64 - 100;
                    let got = store.get_range(k, range.clone()).await?;
                    assert_eq!(&got[..], &d[100..d.len() - 100], "{k}");
                    let info = store.head(k).await?.expect("written");
                    assert_eq!(info.size, d.len() as u64);
                    Ok::<(), ObjectError>(())
                }
            })
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await
            .unwrap();

        let big = pattern(99, 12 * MIB + 5);
        store
            .put_multipart("f/big", chunked(&big, MIB), 5 * MIB)
            .await
            .unwrap();
        for range in [5 * MIB as u64 - 3..5 * MIB as u64 + 3, 0..big.len() as u64] {
            let got = store.get_range("f/big", range.clone()).await.unwrap();
            assert!(
                got[..] == big[range.start as usize..range.end as usize],
                "{range:?}"
            );
        }

        let listed = store.list("f/").await.unwrap();
        assert_eq!(listed.len(), N + 1);
        let keys: Vec<String> = listed.into_iter().map(|o| o.key).collect();
        store.delete_many(&keys).await.unwrap();
        assert!(store.list("f/").await.unwrap().is_empty());

        let stats = store.stats();
        assert_eq!(stats.failures, 0, "{stats:?}");
        assert!(stats.retries > 0, "{stats:?}");
        // Each injected fault shows under its cause: 503 SlowDown as
        // throttling, 500 as a server error, cut bodies and lost answers as
        // I/O.
        let e = stats.errors;
        assert!(e.throttled > 0 && e.server > 0 && e.io > 0, "{stats:?}");
        assert_eq!((e.client, e.not_found, e.config), (0, 0, 0), "{stats:?}");
        let injected = control(&control_url, "GET", "/__stats", "").await;
        for fault in [
            "error500",
            "slowdown503",
            "reset_body",
            "drop_response",
            "latency",
        ] {
            assert!(
                stat(&injected, fault) > 0,
                "no {fault} was injected: {injected}"
            );
        }
        println!(
            "faults injected: {injected}store: {stats:?}\npool: {:?}",
            store.pool_stats()
        );
    });
}

#[test]
fn connections_are_capped_and_reused() {
    let Some(server) = s3_server("pool") else {
        return;
    };
    // moto closes every connection after one answer; the proxy keeps them
    // alive, as S3 does, and its latency makes the requests overlap.
    let proxy = fault_proxy(
        &server.endpoint,
        "pool",
        &["--latency-prob", "1.0", "--latency-ms", "20"],
    );
    let bucket = unique("pool");
    let data_url = proxy.data.clone();
    run(move || async move {
        let mut cfg = config(&data_url, &bucket);
        cfg.max_connections = 4;
        let store = Rc::new(S3Store::new(cfg).unwrap());
        store.create_bucket().await.unwrap();
        store
            .put("p/k", vec![Bytes::from_static(b"pooled")])
            .await
            .unwrap();
        for _ in 0..2 {
            futures::stream::iter(0..32)
                .map(|_| {
                    let store = store.clone();
                    async move { store.get_range("p/k", 0..6).await }
                })
                .buffer_unordered(32)
                .try_collect::<Vec<Bytes>>()
                .await
                .unwrap();
        }
        let pool = store.pool_stats();
        assert_eq!(pool.peak_open, 4, "{pool:?}");
        assert!(pool.open <= 4, "{pool:?}");
        assert_eq!(
            pool.dialed, 4,
            "keep-alive connections are reused: {pool:?}"
        );
        assert_eq!(pool.reused, pool.requests - 4, "{pool:?}");
    });
}

#[test]
fn outage_gives_a_retriable_error_then_recovers() {
    let Some(server) = s3_server("outage") else {
        return;
    };
    let proxy = fault_proxy(&server.endpoint, "outage", &[]);
    let bucket = unique("outage");
    let (data_url, control_url) = (proxy.data.clone(), proxy.control.clone());
    run(move || async move {
        let mut cfg = config(&data_url, &bucket);
        cfg.max_attempts = 4;
        cfg.retry_base_ms = 5;
        cfg.retry_cap_ms = 20;
        cfg.request_timeout_ms = 500;
        let store = S3Store::new(cfg).unwrap();
        store.create_bucket().await.unwrap();
        let body = vec![Bytes::from_static(b"before the outage")];
        store.put("o/k", body.clone()).await.unwrap();

        for mode in ["refuse", "reset"] {
            control(
                &control_url,
                "POST",
                "/__faults",
                &format!("{{\"outage\": \"{mode}\"}}"),
            )
            .await;
            let started = Instant::now();
            let put = store.put("o/k2", body.clone()).await.unwrap_err();
            assert_retriable(&put);
            let get = store.get_range("o/k", 0..6).await.unwrap_err();
            assert_retriable(&get);
            let list = store.list("o/").await.unwrap_err();
            assert_retriable(&list);
            // Three calls of 4 attempts, each attempt refused or reset at
            // once, plus at most 5 + 10 + 20 ms of backoff per call.
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{mode}: {:?}",
                started.elapsed()
            );
            control(&control_url, "POST", "/__faults", "{\"outage\": null}").await;
            assert_eq!(&store.get_range("o/k", 0..6).await.unwrap()[..], b"before");
            store.put("o/k2", body.clone()).await.unwrap();
        }

        // A server that stops answering: every attempt times out.
        control(
            &control_url,
            "POST",
            "/__faults",
            r#"{"latency": 1.0, "latency_ms": 3000}"#,
        )
        .await;
        let started = Instant::now();
        let slow = store.head("o/k").await.unwrap_err();
        assert_eq!(slow, ObjectError::Timeout(500));
        assert!(
            started.elapsed() < Duration::from_millis(4 * 500 + 1000),
            "{:?}",
            started.elapsed()
        );
        control(&control_url, "POST", "/__faults", r#"{"latency": 0.0}"#).await;
        assert_eq!(store.head("o/k").await.unwrap().unwrap().size, 17);

        let stats = store.stats();
        assert_eq!(stats.failures, 7, "{stats:?}");
        // At least 3 retries per failed call; a few more when a connection
        // reset by the outage is only found dead when reused afterwards.
        assert!(stats.retries >= 7 * 3, "{stats:?}");
        // Refused and reset attempts are I/O errors; the silent server's
        // four attempts timed out.
        assert!(stats.errors.io >= 6 * 4, "{stats:?}");
        assert_eq!(stats.errors.timeout, 4, "{stats:?}");
        assert_eq!(
            (stats.errors.throttled, stats.errors.server),
            (0, 0),
            "{stats:?}"
        );
        let injected = control(&control_url, "GET", "/__stats", "").await;
        assert!(stat(&injected, "outage_reset") > 0, "{injected}");
    });
}
