//! An in-memory object store with fault injection, for unit tests of the
//! uploader, cold reads and recovery logic. Never the only test of a code
//! path: the same paths also run against the local directory and a real S3
//! server.
//!
//! Lives on one executor (`Rc`, `RefCell`); never holds a borrow across an
//! `.await`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ops::Range;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use super::{body_len, ObjectBody, ObjectError, ObjectFuture, ObjectInfo, ObjectStore, StoreStats};

#[derive(Default)]
struct Faults {
    /// Fail this many of the next calls (any kind).
    fail_next: u32,
    /// Every call fails while set.
    down: bool,
    /// Puts are applied but answered with an error (a lost response).
    lose_put_responses: u32,
    delay: Option<Duration>,
}

#[derive(Default)]
struct Inner {
    objects: RefCell<BTreeMap<String, (Bytes, i64)>>,
    faults: RefCell<Faults>,
    stats: Cell<StoreStats>,
}

/// Cheap to clone; clones share the objects (so a test can look inside).
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Rc<Inner>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// The next `n` calls fail with a retriable error.
    pub fn fail_next(&self, n: u32) {
        self.inner.faults.borrow_mut().fail_next = n;
    }

    /// While down, every call fails with a retriable error.
    pub fn set_down(&self, down: bool) {
        self.inner.faults.borrow_mut().down = down;
    }

    /// The next `n` puts are stored but answered with an error.
    pub fn lose_put_responses(&self, n: u32) {
        self.inner.faults.borrow_mut().lose_put_responses = n;
    }

    /// Every call takes this long.
    pub fn set_delay(&self, d: Option<Duration>) {
        self.inner.faults.borrow_mut().delay = d;
    }

    pub fn keys(&self) -> Vec<String> {
        self.inner.objects.borrow().keys().cloned().collect()
    }

    pub fn object(&self, key: &str) -> Option<Bytes> {
        self.inner.objects.borrow().get(key).map(|(b, _)| b.clone())
    }

    pub fn stats(&self) -> StoreStats {
        self.inner.stats.get()
    }

    fn count(&self, f: impl FnOnce(&mut StoreStats)) {
        let mut s = self.inner.stats.get();
        f(&mut s);
        self.inner.stats.set(s);
    }

    /// Waits the configured delay, then applies the failure faults.
    async fn enter(&self) -> Result<(), ObjectError> {
        let delay = self.inner.faults.borrow().delay;
        if let Some(d) = delay {
            glommio::timer::sleep(d).await;
        }
        let mut f = self.inner.faults.borrow_mut();
        if f.down {
            drop(f);
            self.count(|s| s.failures += 1);
            return Err(ObjectError::Io("injected: store is down".into()));
        }
        if f.fail_next > 0 {
            f.fail_next -= 1;
            drop(f);
            self.count(|s| s.failures += 1);
            return Err(ObjectError::Http {
                status: 503,
                message: "injected: SlowDown".into(),
            });
        }
        Ok(())
    }

    async fn do_put(&self, key: &str, body: ObjectBody) -> Result<(), ObjectError> {
        self.enter().await?;
        let len = body_len(&body);
        let mut whole = Vec::with_capacity(len as usize);
        for b in &body {
            whole.extend_from_slice(b);
        }
        self.inner
            .objects
            .borrow_mut()
            .insert(key.to_string(), (Bytes::from(whole), now_ms()));
        self.count(|s| {
            s.puts += 1;
            s.bytes_put += len;
        });
        let mut f = self.inner.faults.borrow_mut();
        if f.lose_put_responses > 0 {
            f.lose_put_responses -= 1;
            return Err(ObjectError::Io(
                "injected: put applied, response lost".into(),
            ));
        }
        Ok(())
    }

    async fn do_get(&self, key: &str, range: Range<u64>) -> Result<Bytes, ObjectError> {
        self.enter().await?;
        let obj = self
            .object(key)
            .ok_or_else(|| ObjectError::NotFound(key.into()))?;
        if range.start > range.end || range.end > obj.len() as u64 {
            return Err(ObjectError::Invalid(format!(
                "range {range:?} of {key} ({} bytes)",
                obj.len()
            )));
        }
        self.count(|s| {
            s.gets += 1;
            s.bytes_got += range.end - range.start;
        });
        Ok(obj.slice(range.start as usize..range.end as usize))
    }
}

impl ObjectStore for MemStore {
    fn put<'a>(&'a self, key: &'a str, body: ObjectBody) -> ObjectFuture<'a, ()> {
        Box::pin(self.do_put(key, body))
    }

    fn get_range<'a>(&'a self, key: &'a str, range: Range<u64>) -> ObjectFuture<'a, Bytes> {
        Box::pin(self.do_get(key, range))
    }

    fn head<'a>(&'a self, key: &'a str) -> ObjectFuture<'a, Option<ObjectInfo>> {
        Box::pin(async move {
            self.enter().await?;
            self.count(|s| s.heads += 1);
            Ok(self
                .inner
                .objects
                .borrow()
                .get(key)
                .map(|(b, t)| ObjectInfo {
                    key: key.to_string(),
                    size: b.len() as u64,
                    last_modified_ms: Some(*t),
                }))
        })
    }

    fn delete_many<'a>(&'a self, keys: &'a [String]) -> ObjectFuture<'a, ()> {
        Box::pin(async move {
            self.enter().await?;
            let mut objects = self.inner.objects.borrow_mut();
            for k in keys {
                objects.remove(k);
            }
            drop(objects);
            self.count(|s| s.deletes += keys.len() as u64);
            Ok(())
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> ObjectFuture<'a, Vec<ObjectInfo>> {
        Box::pin(async move {
            self.enter().await?;
            self.count(|s| s.lists += 1);
            Ok(self
                .inner
                .objects
                .borrow()
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, (b, t))| ObjectInfo {
                    key: k.clone(),
                    size: b.len() as u64,
                    last_modified_ms: Some(*t),
                })
                .collect())
        })
    }

    fn stats(&self) -> StoreStats {
        MemStore::stats(self)
    }

    fn describe(&self) -> String {
        "mem://".into()
    }
}
