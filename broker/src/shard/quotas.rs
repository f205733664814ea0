//! Client quota enforcement on a shard. Produce is measured by request
//! size against `producer_byte_rate` as each request is read, so a client
//! over its quota has its connection read nothing more for the throttle
//! time even while it pipelines requests. Fetch is measured by the record
//! bytes of its response against `consumer_byte_rate`; fetches of a
//! connection run one at a time, so muting after the response is enough.
//! Either way the response carries `throttle_time_ms` (KIP-219) and the
//! client's rate falls to its quota on average. A Fetch over its quota is
//! answered without its records, and its bytes are taken back from the
//! sensor, as Kafka answers it (`getThrottledResponse`): what a throttled
//! consumer receives is what its quota allows.
//!
//! Runs on the shard serving the request; owns the shard's sensors. Costs
//! nothing while no quota is set. Never awaits.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{ApiKey, ResponseKind};
use net::Reply;

use crate::quota::{self, ClientQuotas, Throttle};

/// A shard's byte-rate sensors.
pub struct QuotaSensors {
    base: Instant,
    produce: RefCell<Throttle>,
    fetch: RefCell<Throttle>,
}

impl Default for QuotaSensors {
    fn default() -> Self {
        QuotaSensors {
            base: Instant::now(),
            produce: RefCell::default(),
            fetch: RefCell::default(),
        }
    }
}

/// Record bytes a Fetch reply carries (by value or spliced in).
fn fetch_bytes(reply: &Reply) -> usize {
    let ResponseKind::Fetch(resp) = &reply.body else {
        return 0;
    };
    let inline: usize = resp
        .responses
        .iter()
        .flat_map(|t| &t.partitions)
        .filter_map(|p| p.records.as_ref().map(|r| r.len()))
        .sum();
    let spliced: usize = reply
        .spliced
        .iter()
        .map(|s| s.parts.iter().map(|b| b.len()).sum::<usize>())
        .sum();
    inline.saturating_sub(reply.spliced.len() * net::codec::PLACEHOLDER_LEN) + spliced
}

/// A throttled Fetch's answer: every partition as it was (high watermark,
/// log start, errors) but with no records, so the consumer fetches the
/// same offsets again once the throttle passes.
fn strip_records(reply: &mut Reply) {
    let ResponseKind::Fetch(resp) = &mut reply.body else {
        return;
    };
    for p in resp.responses.iter_mut().flat_map(|t| &mut t.partitions) {
        if p.records.is_some() {
            p.records = Some(bytes::Bytes::new());
        }
    }
    reply.spliced.clear();
}

fn ms_i32(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

impl QuotaSensors {
    /// Records `bytes` of `user` (the SASL principal, else Kafka's
    /// ANONYMOUS) and `client_id`: the throttle, and the sensor recorded.
    fn record(
        &self,
        sensors: &RefCell<Throttle>,
        quotas: &ClientQuotas,
        key: &str,
        (user, client_id): (Option<&str>, &str),
        bytes: usize,
    ) -> (Duration, Option<quota::SensorKey>) {
        let user = user.unwrap_or(quota::ANONYMOUS);
        let Some((bound, sensor)) = quotas.resolve(user, client_id, key) else {
            return (Duration::ZERO, None);
        };
        let now_ms = self.now_ms();
        let ms = sensors.borrow_mut().record(&sensor, bound, now_ms, bytes);
        (Duration::from_millis(ms), Some(sensor))
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// A Produce request of `bytes` from `client` (user, client id) was
    /// read: its throttle.
    pub fn produce_read(
        &self,
        quotas: &ClientQuotas,
        client: (Option<&str>, &str),
        bytes: usize,
    ) -> Duration {
        if quotas.is_empty() {
            return Duration::ZERO;
        }
        self.record(
            &self.produce,
            quotas,
            quota::PRODUCER_BYTE_RATE,
            client,
            bytes,
        )
        .0
    }

    /// A Fetch of `client` (user, client id) is answered with `reply`:
    /// measures it and, if the client is over its quota, takes its records
    /// out (and their bytes back from the sensor) and mutes the connection
    /// after it.
    pub fn fetch_answered(
        &self,
        quotas: &ClientQuotas,
        client: (Option<&str>, &str),
        reply: &mut Reply,
    ) -> Duration {
        if quotas.is_empty() {
            return Duration::ZERO;
        }
        let bytes = fetch_bytes(reply);
        let (d, sensor) = self.record(
            &self.fetch,
            quotas,
            quota::CONSUMER_BYTE_RATE,
            client,
            bytes,
        );
        if !d.is_zero() {
            if let Some(sensor) = sensor {
                self.fetch
                    .borrow_mut()
                    .unrecord(&sensor, self.now_ms(), bytes);
            }
            strip_records(reply);
            reply.mute = reply.mute.max(d);
        }
        d
    }
}

/// Puts a throttle time into a Produce or Fetch response.
pub fn set_throttle_time(reply: &mut Reply, d: Duration) {
    if d.is_zero() {
        return;
    }
    match &mut reply.body {
        ResponseKind::Produce(r) => r.throttle_time_ms = r.throttle_time_ms.max(ms_i32(d)),
        ResponseKind::Fetch(r) => r.throttle_time_ms = r.throttle_time_ms.max(ms_i32(d)),
        _ => {}
    }
}

/// Whether Fetch requests must keep their client id for the quota check.
pub fn fetch_measured(quotas: &ClientQuotas, api: ApiKey) -> bool {
    !quotas.is_empty() && api == ApiKey::Fetch
}
