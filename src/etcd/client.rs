//! The unary calls, the endpoint rotation and the reachability a status page shows.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;

use super::types::{prefix_range, DeleteResponse, Kv, LeaseId, RangeResponse, Txn, TxnResponse};
use super::watch::Watch;
use super::{decode, encode, EtcdError};

/// The largest unary answer read (a range page of big values stays far below it).
pub(crate) const MAX_BODY: u64 = 64 << 20;
/// The largest error body read.
const MAX_ERROR_BODY: u64 = 64 << 10;

/// A blocking etcd v3 client over the JSON gateway of one cluster's members.
///
/// Cheap to share between threads (`&Client` is enough: calls take `&self`); HTTP/1.1
/// connections are pooled per endpoint. See the [module docs](super) for the retry rules.
pub struct Client {
    endpoints: Vec<String>,
    /// The endpoint tried first: the one that answered last.
    current: AtomicUsize,
    timeout: Duration,
    page_size: i64,
    agent: ureq3::Agent,
    /// For watches: no overall timeout, a connect and response-header timeout per call and
    /// the read-idle timeout per watch.
    stream_agent: ureq3::Agent,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    /// Whether the last call got an answer from etcd (any answer but "unavailable").
    reachable: bool,
    /// The last failure of an endpoint, with the endpoint and when.
    last_error: Option<(Instant, String)>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .field("current", &self.current.load(Ordering::Relaxed))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Client {
    /// The per-call timeout etcd.md recommends: long enough for a loaded member, short
    /// enough that three tries fit in a 5 s lease.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1500);
    /// Pairs per page of [`Client::range_prefix`].
    pub const DEFAULT_PAGE_SIZE: u32 = 1000;

    /// A client of the members at `endpoints` (`http://host:port` or `host:port`, the members'
    /// client URLs), with `timeout` for every unary call (try [`Client::DEFAULT_TIMEOUT`]).
    /// Nothing is sent yet.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Result<Client, EtcdError> {
        if endpoints.is_empty() {
            return Err(EtcdError::BadEndpoint("no endpoint given".into()));
        }
        let endpoints = endpoints.iter().map(|e| normalize(e)).collect::<Result<Vec<_>, _>>()?;
        let timeout = timeout.max(Duration::from_millis(1));
        let agent = ureq3::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(timeout))
            .user_agent("heartsink")
            .build()
            .new_agent();
        let stream_agent = ureq3::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(timeout))
            .timeout_send_request(Some(timeout))
            .timeout_send_body(Some(timeout))
            .timeout_recv_response(Some(timeout))
            .user_agent("heartsink")
            .build()
            .new_agent();
        Ok(Client {
            endpoints,
            current: AtomicUsize::new(0),
            timeout,
            page_size: i64::from(Client::DEFAULT_PAGE_SIZE),
            agent,
            stream_agent,
            health: Mutex::new(Health::default()),
        })
    }

    /// The same client with `n` pairs per page of [`Client::range_prefix`] (at least 1).
    pub fn with_page_size(mut self, n: u32) -> Client {
        self.page_size = i64::from(n.max(1));
        self
    }

    /// The endpoints, normalized to `http://host:port`.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The endpoint the next call tries first (the one that answered last).
    pub fn endpoint(&self) -> &str {
        &self.endpoints[self.current.load(Ordering::Relaxed) % self.endpoints.len()]
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the last call got an answer from etcd: false before the first call and after
    /// a call that failed on every endpoint (unreachable, timed out, unavailable).
    pub fn reachable(&self) -> bool {
        self.health.lock().reachable
    }

    /// The last failure of an endpoint (even one a rotation then got past), with how long ago
    /// it was: for status pages.
    pub fn last_error(&self) -> Option<(Duration, String)> {
        self.health.lock().last_error.as_ref().map(|(at, e)| (at.elapsed(), e.clone()))
    }

    // -----------------------------------------------------------------------------------------
    // Leases.

    /// Grants a lease of `ttl_secs` seconds (etcd may grant more: it has a minimum TTL, about
    /// 2 s with default election settings; the first keepalive tells the TTL granted).
    pub fn lease_grant(&self, ttl_secs: i64) -> Result<LeaseId, EtcdError> {
        self.call("/lease/grant", &encode::lease_grant(ttl_secs), decode::lease_grant).map(|(id, _)| id)
    }

    /// Renews a lease: `Some(ttl)` while it lives, `None` when it has expired or was revoked
    /// (etcd answers such a keepalive with no TTL, not with an error). Send one every TTL/3,
    /// and compute the holder's deadline from the *send* time of the last one answered.
    pub fn lease_keepalive(&self, id: LeaseId) -> Result<Option<i64>, EtcdError> {
        self.call("/lease/keepalive", &encode::lease_id(id), decode::lease_keepalive)
    }

    /// Revokes a lease, deleting every key bound to it at once. [`EtcdError::LeaseNotFound`]
    /// when it is already gone.
    pub fn lease_revoke(&self, id: LeaseId) -> Result<(), EtcdError> {
        self.call("/lease/revoke", &encode::lease_id(id), decode::header_only).map(|_| ())
    }

    // -----------------------------------------------------------------------------------------
    // Keys.

    /// Puts `value` at `key`, bound to `lease` if given; returns the revision of the put.
    /// [`EtcdError::LeaseNotFound`] when the lease is gone.
    pub fn put(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        lease: Option<LeaseId>,
    ) -> Result<i64, EtcdError> {
        self.call("/kv/put", &encode::put(key.as_ref(), value.as_ref(), lease), decode::put).map(|p| p.revision)
    }

    /// Reads one key: the pair if it exists, and the store revision read at.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<(Option<Kv>, i64), EtcdError> {
        let r = self.call("/kv/range", &encode::range(key.as_ref(), None, 0, 0), decode::range)?;
        let key = key.as_ref();
        Ok((r.kvs.into_iter().find(|kv| kv.key == key), r.revision))
    }

    /// Reads every key under `prefix` (all keys for an empty prefix), in key order, and the
    /// store revision they were read at. Reads pages of [`Client::with_page_size`] pairs, all
    /// at the first page's revision, so the list is one consistent snapshot; a compaction
    /// between pages fails with [`EtcdError::Compacted`] (read again).
    pub fn range_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<(Vec<Kv>, i64), EtcdError> {
        let (mut key, end) = prefix_range(prefix.as_ref().to_vec());
        let mut all = Vec::new();
        let mut revision = 0;
        loop {
            let page: RangeResponse =
                self.call("/kv/range", &encode::range(&key, Some(&end), self.page_size, revision), decode::range)?;
            if revision == 0 {
                revision = page.revision;
            }
            if !page.more {
                all.extend(page.kvs);
                return Ok((all, revision));
            }
            // The next page starts just after the last key read, which must move forward (a
            // server that says "more" without doing so would keep this loop going).
            let next = match page.kvs.last() {
                Some(last) if last.key >= key => {
                    let mut next = last.key.clone();
                    next.push(0);
                    next
                }
                _ => return Err(EtcdError::Decode("range: \"more\" without progress".into())),
            };
            all.extend(page.kvs);
            key = next;
        }
    }

    /// Deletes one key: how many keys were deleted (0 or 1) and the store revision after.
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<(i64, i64), EtcdError> {
        let d: DeleteResponse =
            self.call("/kv/deleterange", &encode::delete(key.as_ref(), None), decode::delete_range)?;
        Ok((d.deleted, d.revision))
    }

    /// Deletes every key under `prefix` (all keys for an empty prefix): how many were deleted
    /// and the store revision after.
    pub fn delete_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<(i64, i64), EtcdError> {
        let (key, end) = prefix_range(prefix.as_ref().to_vec());
        let d: DeleteResponse =
            self.call("/kv/deleterange", &encode::delete(&key, Some(&end)), decode::delete_range)?;
        Ok((d.deleted, d.revision))
    }

    /// Runs a transaction. A compare that does not hold is `succeeded: false`, not an error.
    pub fn txn(&self, txn: &Txn) -> Result<TxnResponse, EtcdError> {
        self.call("/kv/txn", &encode::txn(txn), decode::txn)
    }

    /// Compacts the history up to `revision` (members run periodic auto-compaction as well);
    /// returns the header revision.
    pub fn compact(&self, revision: i64) -> Result<i64, EtcdError> {
        self.call("/kv/compaction", &encode::compaction(revision), decode::header_only)
    }

    // -----------------------------------------------------------------------------------------
    // Watches.

    /// Watches every key under `prefix` from `start_revision` (0: from the next change), with
    /// a read-idle timeout `idle`; the events carry the previous pair. Opening tries the
    /// endpoints in turn like a unary call, and returns once etcd has confirmed the watch.
    pub fn watch_prefix(
        &self,
        prefix: impl AsRef<[u8]>,
        start_revision: i64,
        idle: Duration,
    ) -> Result<Watch, EtcdError> {
        let (key, end) = prefix_range(prefix.as_ref().to_vec());
        Watch::open(self, encode::watch_create(&key, Some(&end), start_revision, true), start_revision, idle)
    }

    /// Watches one key from `start_revision` (0: from the next change), with a read-idle
    /// timeout `idle`; see [`Client::watch_prefix`].
    pub fn watch_key(&self, key: impl AsRef<[u8]>, start_revision: i64, idle: Duration) -> Result<Watch, EtcdError> {
        Watch::open(self, encode::watch_create(key.as_ref(), None, start_revision, true), start_revision, idle)
    }

    // -----------------------------------------------------------------------------------------
    // The rotation.

    /// Tries `attempt` on each endpoint in turn from the current one, until one gives an
    /// answer that is not [retryable](EtcdError::is_retryable).
    pub(crate) fn rotate<T>(&self, mut attempt: impl FnMut(&str) -> Result<T, EtcdError>) -> Result<T, EtcdError> {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut last = None;
        for i in 0..n {
            let idx = (first + i) % n;
            let endpoint = &self.endpoints[idx];
            match attempt(endpoint) {
                Err(e) if e.is_retryable() => {
                    self.health.lock().last_error = Some((Instant::now(), format!("{endpoint}: {e}")));
                    last = Some(e);
                }
                answer => {
                    if idx != first {
                        self.current.store(idx, Ordering::Relaxed);
                    }
                    self.health.lock().reachable = true;
                    return answer;
                }
            }
        }
        self.health.lock().reachable = false;
        Err(last.unwrap_or_else(|| EtcdError::BadEndpoint("no endpoint".into())))
    }

    /// One unary call: `POST {endpoint}/v3{path}` with `body`, the answer read by `decode`.
    fn call<T>(&self, path: &str, body: &Value, decode: fn(&[u8]) -> Result<T, EtcdError>) -> Result<T, EtcdError> {
        let payload = serde_json::to_vec(body).map_err(|e| EtcdError::Decode(format!("request: {e}")))?;
        self.rotate(|endpoint| {
            let url = format!("{endpoint}/v3{path}");
            let mut resp = self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .header(LEADER_HEADER, "true")
                .send(&payload[..])
                .map_err(|e| transport(endpoint, e))?;
            let status = resp.status().as_u16();
            let limit = if status == 200 { MAX_BODY } else { MAX_ERROR_BODY };
            let bytes = resp.body_mut().with_config().limit(limit).read_to_vec().map_err(|e| transport(endpoint, e))?;
            if status == 200 {
                decode(&bytes)
            } else {
                Err(decode::error_body(status, &bytes))
            }
        })
    }

    pub(crate) fn stream_agent(&self) -> &ureq3::Agent {
        &self.stream_agent
    }
}

/// The gRPC metadata `hasleader: true` (etcd's `WithRequireLeader`): a member without a leader
/// answers "no leader" at once instead of after etcd's own request timeout, and cancels the
/// watches it serves when it loses its leader.
pub(crate) const LEADER_HEADER: &str = "grpc-metadata-hasleader";

/// `host:port` or `http://host:port` (a trailing `/` allowed) as `http://host:port`.
fn normalize(e: &str) -> Result<String, EtcdError> {
    let t = e.trim();
    let hostport = t.strip_prefix("http://").unwrap_or(t).trim_end_matches('/');
    let ok = !hostport.is_empty()
        && !hostport.contains("://")
        && !hostport.contains('/')
        && !hostport.chars().any(char::is_whitespace)
        && hostport.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if ok {
        Ok(format!("http://{hostport}"))
    } else {
        Err(EtcdError::BadEndpoint(format!("{e:?}: expected [http://]host:port")))
    }
}

/// A transport failure with `endpoint`.
pub(crate) fn transport(endpoint: &str, e: ureq3::Error) -> EtcdError {
    match e {
        ureq3::Error::Timeout(_) => EtcdError::Timeout { endpoint: endpoint.into() },
        ureq3::Error::Io(io) if matches!(io.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {
            EtcdError::Timeout { endpoint: endpoint.into() }
        }
        ureq3::Error::BodyExceedsLimit(n) => EtcdError::Decode(format!("answer of {endpoint} over {n} bytes")),
        other => EtcdError::Unreachable { endpoint: endpoint.into(), reason: other.to_string() },
    }
}
