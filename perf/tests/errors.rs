//! Runs the `perf` binary against a scripted fake broker on 127.0.0.1 to
//! check that failures are reported, counted and end in a non-zero exit,
//! and that a healthy run exits 0 with batches a Kafka decoder accepts.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{
    decode_request_header_from_buffer, Decodable, Encodable, HeaderVersion, StrBytes,
};
use kafka_protocol::records::RecordBatchDecoder;

#[derive(Clone, Copy, PartialEq)]
enum Script {
    Healthy,
    RejectProduce,
    DropAfterProduce,
    MissingTopic,
    DenyCreate,
}

struct FakeBroker {
    port: u16,
    records: Arc<AtomicUsize>,
}

fn start(script: Script) -> FakeBroker {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let records = Arc::new(AtomicUsize::new(0));
    let seen = records.clone();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = seen.clone();
            thread::spawn(move || serve(stream, port, script, seen));
        }
    });
    FakeBroker { port, records }
}

fn respond<R: Encodable + HeaderVersion>(
    out: &mut TcpStream,
    correlation_id: i32,
    version: i16,
    resp: &R,
) {
    let mut body = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut body, R::header_version(version))
        .unwrap();
    resp.encode(&mut body, version).unwrap();
    let mut frame = BytesMut::new();
    frame.put_u32(body.len() as u32);
    frame.extend_from_slice(&body);
    let _ = out.write_all(&frame);
}

fn serve(mut s: TcpStream, port: u16, script: Script, records: Arc<AtomicUsize>) {
    let mut produces = 0;
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return;
        }
        let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
        if s.read_exact(&mut buf).is_err() {
            return;
        }
        let mut buf = Bytes::from(buf);
        let header = decode_request_header_from_buffer(&mut buf).unwrap();
        let (key, v, id) = (
            header.request_api_key,
            header.request_api_version,
            header.correlation_id,
        );
        match ApiKey::try_from(key).unwrap() {
            ApiKey::ApiVersions => {
                let range = |k: ApiKey, min, max| {
                    ApiVersion::default()
                        .with_api_key(k as i16)
                        .with_min_version(min)
                        .with_max_version(max)
                };
                let resp = ApiVersionsResponse::default().with_api_keys(vec![
                    range(ApiKey::Produce, 3, 9),
                    range(ApiKey::Fetch, 4, 12),
                    range(ApiKey::ListOffsets, 1, 7),
                    range(ApiKey::Metadata, 1, 12),
                    range(ApiKey::ApiVersions, 0, 3),
                    range(ApiKey::CreateTopics, 2, 7),
                ]);
                respond(&mut s, id, v, &resp);
            }
            ApiKey::Metadata => {
                let req = MetadataRequest::decode(&mut buf, v).unwrap();
                let topics =
                    req.topics
                        .unwrap_or_default()
                        .into_iter()
                        .map(|t| {
                            let t0 = MetadataResponseTopic::default().with_name(t.name);
                            if matches!(script, Script::MissingTopic | Script::DenyCreate) {
                                t0.with_error_code(3)
                            } else {
                                t0.with_partitions(vec![MetadataResponsePartition::default()
                                    .with_leader_id(BrokerId(0))])
                            }
                        })
                        .collect();
                let resp = MetadataResponse::default()
                    .with_brokers(vec![MetadataResponseBroker::default()
                        .with_node_id(BrokerId(0))
                        .with_host(StrBytes::from_static_str("127.0.0.1"))
                        .with_port(port as i32)])
                    .with_controller_id(BrokerId(0))
                    .with_topics(topics);
                respond(&mut s, id, v, &resp);
            }
            ApiKey::CreateTopics => {
                let req = CreateTopicsRequest::decode(&mut buf, v).unwrap();
                let topics = req
                    .topics
                    .into_iter()
                    .map(|t| {
                        CreatableTopicResult::default()
                            .with_name(t.name)
                            .with_error_code(44)
                            .with_error_message(Some(StrBytes::from_static_str("no topics here")))
                    })
                    .collect();
                respond(
                    &mut s,
                    id,
                    v,
                    &CreateTopicsResponse::default().with_topics(topics),
                );
            }
            ApiKey::Produce => {
                produces += 1;
                if script == Script::DropAfterProduce && produces > 3 {
                    return; // closes the connection with requests in flight
                }
                let req = ProduceRequest::decode(&mut buf, v).unwrap();
                let mut topics = Vec::new();
                for t in req.topic_data {
                    let mut parts = Vec::new();
                    for p in t.partition_data {
                        let mut batch = p.records.clone().unwrap();
                        let set = RecordBatchDecoder::decode(&mut batch)
                            .expect("perf sends valid batches");
                        assert!(!batch.has_remaining(), "exactly one batch per partition");
                        records.fetch_add(set.records.len(), Ordering::Relaxed);
                        let r = PartitionProduceResponse::default().with_index(p.index);
                        parts.push(if script == Script::RejectProduce {
                            r.with_error_code(87)
                                .with_error_message(Some(StrBytes::from_static_str("bad batch")))
                        } else {
                            r
                        });
                    }
                    topics.push(
                        TopicProduceResponse::default()
                            .with_name(t.name)
                            .with_partition_responses(parts),
                    );
                }
                respond(
                    &mut s,
                    id,
                    v,
                    &ProduceResponse::default().with_responses(topics),
                );
            }
            _ => return,
        }
    }
}

fn perf(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_perf"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn produce(broker: &FakeBroker, extra: &[&str]) -> (i32, String) {
    let b = format!("127.0.0.1:{}", broker.port);
    let mut args = vec![
        "produce", "-q", "-b", &b, "-t", "t", "--warmup", "0", "--rate", "5000",
    ];
    args.extend_from_slice(extra);
    perf(&args)
}

#[test]
fn healthy_run_exits_zero_and_sends_decodable_batches() {
    let broker = start(Script::Healthy);
    let (code, text) = produce(
        &broker,
        &["-n", "2000", "--compression", "lz4", "--keys", "random"],
    );
    assert_eq!(code, 0, "{text}");
    assert!(broker.records.load(Ordering::Relaxed) >= 2000, "{text}");
    assert!(text.contains("2000"), "{text}");
}

#[test]
fn rejected_batches_are_counted_and_fail_the_run() {
    let broker = start(Script::RejectProduce);
    let (code, text) = produce(&broker, &["-d", "5"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("records failed: InvalidRecord: bad batch"),
        "{text}"
    );
    assert!(text.contains("run stopped"), "{text}");
}

#[test]
fn connection_drop_mid_run_is_reported() {
    let broker = start(Script::DropAfterProduce);
    let (code, text) = produce(&broker, &["-d", "5"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("lost"), "{text}");
}

#[test]
fn missing_topic_is_an_error() {
    let broker = start(Script::MissingTopic);
    let b = format!("127.0.0.1:{}", broker.port);
    let (code, text) = perf(&["consume", "-q", "-b", &b, "-t", "nope"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("topic 'nope' does not exist"), "{text}");
}

#[test]
fn refused_topic_creation_is_an_error() {
    let broker = start(Script::DenyCreate);
    let (code, text) = produce(&broker, &["-d", "1"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("CreateTopics rejected by broker: PolicyViolation"),
        "{text}"
    );
    assert!(text.contains("no topics here"), "{text}");
}
