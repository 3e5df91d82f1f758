//! A watch: one streamed `POST /v3/watch` (chunked HTTP/1.1, one JSON message per line) read
//! as a blocking stream of events with a read-idle timeout.
//!
//! The read-idle timeout is what keeps a watch from hanging on a hung member: a SIGSTOPped
//! member keeps its TCP connections open, so without it a follower waits until the member
//! resumes (etcd.md 4.4: 20 s and more). On [`EtcdError::WatchIdle`] the caller checks the
//! state with a unary call (which fails over) and watches again from [`Watch::revision`] + 1.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use serde_json::Value;

use super::client::{transport, Client, LEADER_HEADER, MAX_BODY};
use super::types::{WatchEvent, WatchMessage};
use super::{decode, EtcdError};

/// The largest watch message read (one line of the stream).
const MAX_LINE: u64 = MAX_BODY;

/// A watch on a key or a prefix, from [`Client::watch_prefix`] or [`Client::watch_key`].
///
/// [`Watch::next_event`] blocks until the next event, and fails with
/// [`EtcdError::WatchIdle`] when nothing arrived for the idle timeout,
/// [`EtcdError::Compacted`] when the start revision was compacted away,
/// [`EtcdError::WatchCanceled`] or [`EtcdError::WatchClosed`] when the member ended the watch,
/// [`EtcdError::Unavailable`] when it lost its leader. After an error the watch is over (it
/// returns the same error again): open a new one from [`Watch::revision`] + 1, or, after
/// `Compacted`, list again and watch from the list's revision + 1. Dropping it closes the
/// connection.
pub struct Watch {
    reader: BufReader<ureq3::BodyReader<'static>>,
    endpoint: String,
    idle: Duration,
    line: Vec<u8>,
    pending: VecDeque<WatchEvent>,
    /// Every event of a revision up to this one has been handed out.
    revision: i64,
    failed: Option<EtcdError>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("endpoint", &self.endpoint)
            .field("revision", &self.revision)
            .field("pending", &self.pending.len())
            .field("failed", &self.failed)
            .finish()
    }
}

impl Watch {
    /// Opens the watch `create` on the first endpoint that confirms it.
    pub(crate) fn open(
        client: &Client,
        create: Value,
        start_revision: i64,
        idle: Duration,
    ) -> Result<Watch, EtcdError> {
        let payload = serde_json::to_vec(&create).map_err(|e| EtcdError::Decode(format!("request: {e}")))?;
        let idle = idle.max(Duration::from_millis(1));
        client.rotate(|endpoint| {
            let mut resp = client
                .stream_agent()
                .post(format!("{endpoint}/v3/watch"))
                .config()
                .timeout_per_read(Some(idle))
                .build()
                .header("content-type", "application/json")
                .header(LEADER_HEADER, "true")
                .send(&payload[..])
                .map_err(|e| transport(endpoint, e))?;
            let status = resp.status().as_u16();
            if status != 200 {
                let body =
                    resp.body_mut().with_config().limit(64 << 10).read_to_vec().map_err(|e| transport(endpoint, e))?;
                return Err(decode::error_body(status, &body));
            }
            let mut w = Watch {
                reader: BufReader::new(resp.into_body().into_reader()),
                endpoint: endpoint.to_owned(),
                idle,
                line: Vec::new(),
                pending: VecDeque::new(),
                revision: (start_revision - 1).max(0),
                failed: None,
            };
            // The first message confirms the watch. Failing to get it is the endpoint's
            // failure: the rotation moves on.
            let first = w.read_message().map_err(|e| match e {
                EtcdError::WatchIdle { .. } => EtcdError::Timeout { endpoint: endpoint.to_owned() },
                EtcdError::WatchClosed => {
                    EtcdError::Unreachable { endpoint: endpoint.to_owned(), reason: "watch stream closed".into() }
                }
                other => other,
            })?;
            if !first.created {
                return Err(EtcdError::Decode("watch: the first message is not the creation".into()));
            }
            if start_revision <= 0 {
                // From the next change: everything up to the creation's revision is history.
                w.revision = first.revision;
            }
            w.absorb(first);
            match &w.failed {
                Some(e) => Err(e.clone()),
                None => Ok(w),
            }
        })
    }

    /// The next event, blocking until one arrives, the idle timeout passes, or the watch
    /// ends (see [`Watch`]).
    pub fn next_event(&mut self) -> Result<WatchEvent, EtcdError> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                // Events of one revision (a txn) come together: the revision counts as handed
                // out once its last event is.
                let rev = e.kv.mod_revision;
                let more_of_rev = self.pending.front().is_some_and(|n| n.kv.mod_revision == rev);
                self.revision = self.revision.max(if more_of_rev { rev - 1 } else { rev });
                return Ok(e);
            }
            if let Some(e) = &self.failed {
                return Err(e.clone());
            }
            match self.read_message() {
                Ok(msg) => self.absorb(msg),
                Err(e) => self.failed = Some(e),
            }
        }
    }

    /// Every event of a revision up to this one has been handed out by
    /// [`Watch::next_event`]: a new watch from `revision() + 1` continues without a gap or a
    /// repeat.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The endpoint serving the watch.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Queues a message's events and records a cancel.
    fn absorb(&mut self, msg: WatchMessage) {
        if msg.events.is_empty() && !msg.created && !msg.canceled {
            // A progress notification: everything up to its revision has been sent.
            self.revision = self.revision.max(msg.revision);
        }
        self.pending.extend(msg.events);
        if msg.canceled {
            self.failed = Some(if msg.compact_revision > 0 {
                EtcdError::Compacted { compact_revision: Some(msg.compact_revision) }
            } else {
                EtcdError::WatchCanceled { reason: msg.cancel_reason }
            });
        }
    }

    /// Reads and decodes the next non-empty line.
    fn read_message(&mut self) -> Result<WatchMessage, EtcdError> {
        loop {
            self.line.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE + 1)
                .read_until(b'\n', &mut self.line)
                .map_err(|e| self.io_error(e))?;
            if n == 0 {
                return Err(EtcdError::WatchClosed);
            }
            if self.line.len() as u64 > MAX_LINE {
                return Err(EtcdError::Decode(format!("watch: a message over {MAX_LINE} bytes")));
            }
            if self.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return decode::watch_message(&self.line);
        }
    }

    fn io_error(&self, e: std::io::Error) -> EtcdError {
        match e.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => EtcdError::WatchIdle { idle: self.idle },
            std::io::ErrorKind::UnexpectedEof => EtcdError::WatchClosed,
            _ => match ureq3::Error::from(e) {
                ureq3::Error::Timeout(_) => EtcdError::WatchIdle { idle: self.idle },
                other => EtcdError::Unreachable { endpoint: self.endpoint.clone(), reason: other.to_string() },
            },
        }
    }
}
