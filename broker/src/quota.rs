//! Client quotas: what the metadata keeps (per entity, its quota values),
//! how an alteration is checked and a filter matched (as Kafka's
//! ClientQuotaControlManager and ClientQuotasImage do), which quota applies
//! to a request (Kafka's default quota callback), and the byte-rate sensors
//! that turn traffic over a quota into a throttle time.
//!
//! Pure logic: the controller thread validates with it, every shard matches
//! and resolves with it, and each shard owns its own `Throttle` (Kafka
//! enforces a quota per broker; here every shard is a node and enforces it
//! alone). No I/O and no clock: callers pass the time.

use std::collections::{BTreeMap, HashMap};

use kafka_protocol::ResponseError;

use crate::metadata::CommandError;

pub const USER: &str = "user";
pub const CLIENT_ID: &str = "client-id";
pub const IP: &str = "ip";

pub const PRODUCER_BYTE_RATE: &str = "producer_byte_rate";
pub const CONSUMER_BYTE_RATE: &str = "consumer_byte_rate";
const REQUEST_PERCENTAGE: &str = "request_percentage";
const CONTROLLER_MUTATION_RATE: &str = "controller_mutation_rate";
const CONNECTION_CREATION_RATE: &str = "connection_creation_rate";

/// The user of a connection that has not authenticated (a PLAINTEXT
/// listener), as Kafka names it; a SASL connection's user is the one it
/// authenticated as.
pub const ANONYMOUS: &str = "ANONYMOUS";

/// A quota entity: entity type -> name (`None`: the type's default), sorted
/// by type.
pub type QuotaEntity = Vec<(String, Option<String>)>;

/// Quota changes of one entity: key, new value or `None` (removed).
pub type QuotaOps = Vec<(String, Option<f64>)>;

/// Every entity's quota values, as the metadata image holds them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientQuotas {
    pub entities: BTreeMap<QuotaEntity, BTreeMap<String, f64>>,
}

/// Whether a quota key takes whole numbers (Kafka's LONG and INT) or any
/// number (DOUBLE).
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Whole,
    Any,
}

fn key_type(entity: &QuotaEntity, key: &str) -> Option<KeyType> {
    let has = |t: &str| entity.iter().any(|(k, _)| k == t);
    if has(IP) {
        return (key == CONNECTION_CREATION_RATE).then_some(KeyType::Whole);
    }
    match key {
        PRODUCER_BYTE_RATE | CONSUMER_BYTE_RATE => Some(KeyType::Whole),
        REQUEST_PERCENTAGE | CONTROLLER_MUTATION_RATE => Some(KeyType::Any),
        _ => None,
    }
}

fn invalid(m: String) -> CommandError {
    CommandError::new(ResponseError::InvalidRequest, m)
}

/// Kafka's text for an entity in error messages.
fn entity_text(entity: &[(String, Option<String>)]) -> String {
    let parts: Vec<String> = entity
        .iter()
        .map(|(t, n)| format!("{t}={}", n.as_deref().unwrap_or("<default>")))
        .collect();
    format!("ClientQuotaEntity(entries={{{}}})", parts.join(", "))
}

/// Checks an entity as Kafka does and returns it sorted by type.
pub fn check_entity(entity: &[(String, Option<String>)]) -> Result<QuotaEntity, CommandError> {
    if entity.is_empty() {
        return Err(invalid("Invalid empty client quota entity".into()));
    }
    let mut out: QuotaEntity = Vec::with_capacity(entity.len());
    for (t, n) in entity {
        if out.iter().any(|(k, _)| k == t) {
            return Err(invalid(format!(
                "Invalid empty client quota entity, duplicate entity entry {t}"
            )));
        }
        if !matches!(t.as_str(), USER | CLIENT_ID | IP) {
            return Err(invalid(format!("Unhandled client quota entity type: {t}")));
        }
        if n.as_deref() == Some("") {
            return Err(invalid(format!("Empty {t} not supported")));
        }
        out.push((t.clone(), n.clone()));
    }
    out.sort();
    let has_ip = out.iter().any(|(t, _)| t == IP);
    if has_ip && out.len() > 1 {
        return Err(invalid("Invalid empty client quota entity".into()));
    }
    if let Some((_, Some(ip))) = out.iter().find(|(t, _)| t == IP) {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(format!(
                "{ip} is not a valid IP or resolvable host."
            )));
        }
    }
    Ok(out)
}

/// Checks one alteration of `entity` (each op: key, new value or `None` to
/// remove) against the current quotas, and returns the changes to record:
/// `(key, value)` pairs, only those that change something.
pub fn check_alteration(
    quotas: &ClientQuotas,
    entity: &[(String, Option<String>)],
    ops: &[(String, Option<f64>)],
) -> Result<(QuotaEntity, QuotaOps), CommandError> {
    let entity = check_entity(entity)?;
    let mut seen = std::collections::HashSet::new();
    for (k, _) in ops {
        if !seen.insert(k.as_str()) {
            return Err(invalid(format!(
                "Duplicate quota key {k} not updating quota for this entity {}",
                entity_text(&entity)
            )));
        }
    }
    let current = quotas.entities.get(&entity);
    let mut changes = Vec::new();
    for (k, v) in ops {
        match v {
            None => {
                if current.is_some_and(|c| c.contains_key(k)) {
                    changes.push((k.clone(), None));
                }
            }
            Some(v) => {
                let Some(kind) = key_type(&entity, k) else {
                    return Err(invalid(format!("Invalid configuration key {k}")));
                };
                if !v.is_finite() {
                    return Err(invalid(format!("Configuration {k} must be a number")));
                }
                if kind == KeyType::Whole && (v - v.round()).abs() > 1e-6 {
                    return Err(invalid(format!("Configuration {k} must be a Long value")));
                }
                if current.and_then(|c| c.get(k)) != Some(v) {
                    changes.push((k.clone(), Some(*v)));
                }
            }
        }
    }
    Ok((entity, changes))
}

impl ClientQuotas {
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    /// Applies one committed change.
    pub fn apply(&mut self, entity: &QuotaEntity, key: &str, value: Option<f64>) {
        match value {
            Some(v) => {
                self.entities
                    .entry(entity.clone())
                    .or_default()
                    .insert(key.to_string(), v);
            }
            None => {
                if let Some(values) = self.entities.get_mut(entity) {
                    values.remove(key);
                    if values.is_empty() {
                        self.entities.remove(entity);
                    }
                }
            }
        }
    }

    /// The entities a DescribeClientQuotas filter matches, as Kafka's
    /// ClientQuotasImage.describe finds them. `exact`: type -> name (`None`:
    /// the default entity); `specified`: types that must be present with any
    /// name. `strict`: only entities with exactly the filter's types.
    pub fn describe<'a>(
        &'a self,
        exact: &'a [(String, Option<String>)],
        specified: &'a [String],
        strict: bool,
    ) -> impl Iterator<Item = (&'a QuotaEntity, &'a BTreeMap<String, f64>)> + 'a {
        let everything = exact.is_empty() && specified.is_empty();
        self.entities.iter().filter(move |(entity, _)| {
            if everything {
                return !strict;
            }
            let exact_ok = exact
                .iter()
                .all(|(t, n)| entity.iter().any(|(et, en)| et == t && en == n));
            let specified_ok = specified
                .iter()
                .all(|t| entity.iter().any(|(et, _)| et == t));
            let size_ok = !strict || entity.len() == exact.len() + specified.len();
            exact_ok && specified_ok && size_ok
        })
    }

    fn value(&self, entity: &[(&str, Option<&str>)], key: &str) -> Option<f64> {
        // Entities are few and keys sorted by type: build the key to look up.
        let want: QuotaEntity = entity
            .iter()
            .map(|(t, n)| (t.to_string(), n.map(str::to_string)))
            .collect();
        self.entities.get(&want)?.get(key).copied()
    }

    /// The quota `key` that applies to `user` and `client_id`, and the
    /// sensor it is measured on, in the order of Kafka's default quota
    /// callback: user and client, user and default client, user, default
    /// user and client, default user and default client, default user,
    /// client, default client. A quota set on a user alone is shared by all
    /// its clients (the sensor's client part is empty); one set per client
    /// is measured per client.
    pub fn resolve(&self, user: &str, client_id: &str, key: &str) -> Option<(f64, SensorKey)> {
        let (u, c) = (Some(user), Some(client_id));
        let order: [Lookup; 8] = [
            (&[(CLIENT_ID, c), (USER, u)], Tags::Both),
            (&[(CLIENT_ID, None), (USER, u)], Tags::Both),
            (&[(USER, u)], Tags::User),
            (&[(CLIENT_ID, c), (USER, None)], Tags::Both),
            (&[(CLIENT_ID, None), (USER, None)], Tags::Both),
            (&[(USER, None)], Tags::User),
            (&[(CLIENT_ID, c)], Tags::Client),
            (&[(CLIENT_ID, None)], Tags::Client),
        ];
        order.iter().find_map(|(entity, tags)| {
            let v = self.value(entity, key)?;
            let sensor = match tags {
                Tags::Both => SensorKey::new(user, client_id),
                Tags::User => SensorKey::new(user, ""),
                Tags::Client => SensorKey::new("", client_id),
            };
            Some((v, sensor))
        })
    }
}

/// Which parts of the request's identity a quota's sensor is keyed by.
#[derive(Clone, Copy)]
enum Tags {
    Both,
    User,
    Client,
}

/// An entity to look a quota up under, sorted by type, and its sensor's tags.
type Lookup<'a> = (&'a [(&'a str, Option<&'a str>)], Tags);

/// Which traffic a sensor measures, and for whom.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SensorKey {
    pub user: String,
    pub client_id: String,
}

impl SensorKey {
    fn new(user: &str, client_id: &str) -> SensorKey {
        SensorKey {
            user: user.to_string(),
            client_id: client_id.to_string(),
        }
    }
}

/// Kafka's `quota.window.num` and `quota.window.size.seconds` defaults: the
/// rate is measured over 11 windows of one second.
const SAMPLES: usize = 11;
const WINDOW_MS: u64 = 1000;

/// A byte rate over the last `SAMPLES` windows, as Kafka's `Rate` measures
/// it: bytes in the live windows over the time they span, at least
/// `SAMPLES - 1` windows (so one burst after a quiet spell is not a rate).
#[derive(Debug, Clone, Default)]
struct RateSensor {
    /// `(window start ms, bytes)`, oldest first.
    windows: std::collections::VecDeque<(u64, f64)>,
    last_ms: u64,
}

impl RateSensor {
    fn record(&mut self, now_ms: u64, bytes: f64) {
        let start = now_ms - now_ms % WINDOW_MS;
        match self.windows.back_mut() {
            Some((s, b)) if *s == start => *b += bytes,
            _ => self.windows.push_back((start, bytes)),
        }
        self.expire(now_ms);
        self.last_ms = now_ms;
    }

    fn expire(&mut self, now_ms: u64) {
        let span = SAMPLES as u64 * WINDOW_MS;
        while self
            .windows
            .front()
            .is_some_and(|(s, _)| s + span <= now_ms)
        {
            self.windows.pop_front();
        }
    }

    /// `(bytes per second, the span it was measured over in ms)`.
    fn rate(&self, now_ms: u64) -> (f64, f64) {
        let total: f64 = self.windows.iter().map(|(_, b)| b).sum();
        let oldest = self.windows.front().map_or(now_ms, |(s, _)| *s);
        let elapsed = (now_ms - oldest).max((SAMPLES as u64 - 1) * WINDOW_MS) as f64;
        (total * 1000.0 / elapsed, elapsed)
    }
}

/// Sensors a shard keeps at most; beyond it the least recently used go
/// (a client inventing client ids cannot grow the map without bound).
const MAX_SENSORS: usize = 10_000;

/// The longest throttle: the whole measured span, as Kafka caps it.
pub const MAX_THROTTLE_MS: u64 = SAMPLES as u64 * WINDOW_MS;

/// A shard's byte-rate sensors for one kind of traffic (produce or fetch).
#[derive(Debug, Default)]
pub struct Throttle {
    sensors: HashMap<SensorKey, RateSensor>,
}

impl Throttle {
    /// Records `bytes` against `key` at `now_ms` and returns how long the
    /// client must wait (ms, 0 when within `bound` bytes per second), as
    /// Kafka computes it: `(rate - bound) / bound * span`, at most
    /// `MAX_THROTTLE_MS`.
    pub fn record(&mut self, key: &SensorKey, bound: f64, now_ms: u64, bytes: usize) -> u64 {
        if !self.sensors.contains_key(key) && self.sensors.len() >= MAX_SENSORS {
            self.evict(now_ms);
        }
        let sensor = self.sensors.entry(key.clone()).or_default();
        sensor.record(now_ms, bytes as f64);
        let (rate, span) = sensor.rate(now_ms);
        if bound <= 0.0 {
            return MAX_THROTTLE_MS;
        }
        if rate <= bound {
            return 0;
        }
        let ms = (rate - bound) / bound * span;
        (ms.ceil() as u64).min(MAX_THROTTLE_MS)
    }

    /// Takes back `bytes` recorded against `key` (a response that was not
    /// sent as measured), as Kafka's `unrecordQuotaSensor`.
    pub fn unrecord(&mut self, key: &SensorKey, now_ms: u64, bytes: usize) {
        if let Some(sensor) = self.sensors.get_mut(key) {
            sensor.record(now_ms, -(bytes as f64));
        }
    }

    fn evict(&mut self, now_ms: u64) {
        let span = SAMPLES as u64 * WINDOW_MS;
        self.sensors.retain(|_, s| s.last_ms + span > now_ms);
        if self.sensors.len() >= MAX_SENSORS {
            let mut ages: Vec<u64> = self.sensors.values().map(|s| s.last_ms).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            self.sensors.retain(|_, s| s.last_ms > cut);
        }
    }

    pub fn len(&self) -> usize {
        self.sensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sensors.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(parts: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        parts
            .iter()
            .map(|(t, n)| (t.to_string(), n.map(str::to_string)))
            .collect()
    }

    fn set(q: &mut ClientQuotas, entity: &[(&str, Option<&str>)], key: &str, v: f64) {
        let (entity, changes) =
            check_alteration(q, &e(entity), &[(key.to_string(), Some(v))]).unwrap();
        for (k, v) in changes {
            q.apply(&entity, &k, v);
        }
    }

    #[test]
    fn alterations_are_checked_as_kafka_checks_them() {
        let q = ClientQuotas::default();
        let err = |entity: &[(&str, Option<&str>)], key: &str, v: f64| {
            check_alteration(&q, &e(entity), &[(key.to_string(), Some(v))])
                .unwrap_err()
                .message
        };
        assert_eq!(
            err(&[], PRODUCER_BYTE_RATE, 1.0),
            "Invalid empty client quota entity"
        );
        assert_eq!(
            err(&[("group", Some("g"))], PRODUCER_BYTE_RATE, 1.0),
            "Unhandled client quota entity type: group"
        );
        assert_eq!(
            err(&[(USER, Some(""))], PRODUCER_BYTE_RATE, 1.0),
            "Empty user not supported"
        );
        assert_eq!(
            err(&[(USER, Some("a"))], "bogus", 1.0),
            "Invalid configuration key bogus"
        );
        assert_eq!(
            err(&[(CLIENT_ID, Some("c"))], PRODUCER_BYTE_RATE, 1.5),
            "Configuration producer_byte_rate must be a Long value"
        );
        assert_eq!(
            err(&[(IP, Some("1.2.3.4"))], PRODUCER_BYTE_RATE, 1.0),
            "Invalid configuration key producer_byte_rate"
        );
        assert_eq!(
            err(&[(IP, Some("not-an-ip"))], CONNECTION_CREATION_RATE, 1.0),
            "not-an-ip is not a valid IP or resolvable host."
        );
        assert_eq!(
            err(
                &[(IP, None), (USER, Some("a"))],
                CONNECTION_CREATION_RATE,
                1.0
            ),
            "Invalid empty client quota entity"
        );
        // A double where doubles are allowed; a removal of what is not set
        // changes nothing.
        let (_, changes) = check_alteration(
            &q,
            &e(&[(USER, Some("a"))]),
            &[
                (REQUEST_PERCENTAGE.to_string(), Some(12.5)),
                (CONSUMER_BYTE_RATE.to_string(), None),
            ],
        )
        .unwrap();
        assert_eq!(changes, vec![(REQUEST_PERCENTAGE.to_string(), Some(12.5))]);
        let dup = check_alteration(
            &q,
            &e(&[(USER, Some("a"))]),
            &[
                (PRODUCER_BYTE_RATE.to_string(), Some(1.0)),
                (PRODUCER_BYTE_RATE.to_string(), None),
            ],
        )
        .unwrap_err();
        assert!(dup
            .message
            .starts_with("Duplicate quota key producer_byte_rate"));
    }

    #[test]
    fn describe_matches_as_kafka_does() {
        let mut q = ClientQuotas::default();
        set(&mut q, &[(USER, Some("alice"))], PRODUCER_BYTE_RATE, 100.0);
        set(
            &mut q,
            &[(USER, Some("alice")), (CLIENT_ID, Some("c1"))],
            CONSUMER_BYTE_RATE,
            5.0,
        );
        set(&mut q, &[(CLIENT_ID, None)], PRODUCER_BYTE_RATE, 7.0);
        fn count(
            q: &ClientQuotas,
            exact: &[(&str, Option<&str>)],
            spec: &[&str],
            strict: bool,
        ) -> usize {
            let exact = e(exact);
            let spec: Vec<String> = spec.iter().map(|s| s.to_string()).collect();
            q.describe(&exact, &spec, strict).count()
        }
        let names = |exact: &[(&str, Option<&str>)], spec: &[&str], strict: bool| {
            count(&q, exact, spec, strict)
        };
        assert_eq!(names(&[], &[], false), 3);
        assert_eq!(names(&[], &[], true), 0);
        assert_eq!(names(&[(USER, Some("alice"))], &[], false), 2);
        assert_eq!(names(&[(USER, Some("alice"))], &[], true), 1);
        assert_eq!(names(&[(USER, Some("alice"))], &[CLIENT_ID], false), 1);
        assert_eq!(names(&[(CLIENT_ID, None)], &[], true), 1);
        assert_eq!(names(&[], &[CLIENT_ID], false), 2);
        assert_eq!(names(&[(USER, Some("bob"))], &[], false), 0);
        // Removing the last value removes the entity.
        let (entity, changes) = check_alteration(
            &q,
            &e(&[(CLIENT_ID, None)]),
            &[(PRODUCER_BYTE_RATE.to_string(), None)],
        )
        .unwrap();
        for (k, v) in changes {
            q.apply(&entity, &k, v);
        }
        assert_eq!(count(&q, &[], &[], false), 2);
    }

    #[test]
    fn resolution_follows_kafkas_precedence() {
        let mut q = ClientQuotas::default();
        let p = PRODUCER_BYTE_RATE;
        assert_eq!(q.resolve("u", "c", p), None);
        set(&mut q, &[(CLIENT_ID, None)], p, 8.0);
        assert_eq!(q.resolve("u", "c", p), Some((8.0, SensorKey::new("", "c"))));
        set(&mut q, &[(CLIENT_ID, Some("c"))], p, 7.0);
        assert_eq!(q.resolve("u", "c", p), Some((7.0, SensorKey::new("", "c"))));
        set(&mut q, &[(USER, None)], p, 6.0);
        assert_eq!(q.resolve("u", "c", p), Some((6.0, SensorKey::new("u", ""))));
        set(&mut q, &[(USER, None), (CLIENT_ID, None)], p, 5.0);
        assert_eq!(
            q.resolve("u", "c", p),
            Some((5.0, SensorKey::new("u", "c")))
        );
        set(&mut q, &[(USER, None), (CLIENT_ID, Some("c"))], p, 4.0);
        assert_eq!(q.resolve("u", "c", p).unwrap().0, 4.0);
        set(&mut q, &[(USER, Some("u"))], p, 3.0);
        assert_eq!(q.resolve("u", "c", p), Some((3.0, SensorKey::new("u", ""))));
        set(&mut q, &[(USER, Some("u")), (CLIENT_ID, None)], p, 2.0);
        assert_eq!(q.resolve("u", "c", p).unwrap().0, 2.0);
        set(&mut q, &[(USER, Some("u")), (CLIENT_ID, Some("c"))], p, 1.0);
        assert_eq!(
            q.resolve("u", "c", p),
            Some((1.0, SensorKey::new("u", "c")))
        );
        // Another client of another user falls back to the defaults.
        assert_eq!(q.resolve("v", "d", p).unwrap().0, 5.0);
        assert_eq!(q.resolve("u", "c", CONSUMER_BYTE_RATE), None);
    }

    #[test]
    fn throttle_holds_a_client_to_its_rate() {
        // A client sending 10 KB every 100 ms (100 KB/s) against a bound
        // of 20 KB/s, waiting out every throttle as a Kafka client does:
        // over a minute of simulated time it gets about the bound through.
        let mut t = Throttle::default();
        let key = SensorKey::new(ANONYMOUS, "c");
        let (mut now, mut sent) = (0u64, 0u64);
        while now < 60_000 {
            let wait = t.record(&key, 20_000.0, now, 10_000);
            sent += 10_000;
            assert!(wait <= MAX_THROTTLE_MS);
            now += 100 + wait;
        }
        let rate = sent as f64 * 1000.0 / now as f64;
        assert!((18_000.0..=23_000.0).contains(&rate), "rate {rate}");
        // Within its quota nothing waits.
        let mut t = Throttle::default();
        for i in 0..100 {
            assert_eq!(t.record(&key, 200_000.0, i * 100, 10_000), 0);
        }
        // A throttled Fetch sent empty: its bytes are taken back, and what
        // was delivered alone is measured (Kafka's unrecordQuotaSensor), so
        // a consumer that only ever gets empty answers gets through once
        // the rate allows.
        let mut t = Throttle::default();
        assert_eq!(t.record(&key, 20_000.0, 0, 150_000), 0);
        assert!(t.record(&key, 20_000.0, 100, 100_000) > 0);
        t.unrecord(&key, 100, 100_000);
        assert_eq!(t.record(&key, 20_000.0, 200, 50_000), 0);
    }

    #[test]
    fn sensors_stay_bounded() {
        let mut t = Throttle::default();
        for i in 0..(MAX_SENSORS as u64 * 3) {
            t.record(&SensorKey::new("", &i.to_string()), 1e9, i, 1);
        }
        assert!(t.len() <= MAX_SENSORS);
    }
}
