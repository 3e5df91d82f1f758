//! The typed values the client takes and returns: keys and values are bytes, revisions and
//! counts `i64` (etcd's int64), leases a [`LeaseId`].

/// A lease id. etcd's int64; shown in hex, as etcd shows it in the keys it makes
/// (`hb/election/<hex id>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// One key-value pair as etcd stores it (`mvccpb.KeyValue`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty for the pair of a DELETE event).
    pub value: Vec<u8>,
    /// The revision of the key's last creation (0 for the pair of a DELETE event).
    pub create_revision: i64,
    /// The revision of the key's last change.
    pub mod_revision: i64,
    /// Changes since the key's creation (1 after the first put; 0 once deleted).
    pub version: i64,
    /// The lease the key is bound to, if any.
    pub lease: Option<LeaseId>,
}

/// The answer to a range request (`RangeResponse`): also what a [`TxnOp::Range`] gives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    /// The store revision the range was read at (header revision).
    pub revision: i64,
    /// The pairs, in key order.
    pub kvs: Vec<Kv>,
    /// More pairs are in the range than the request's limit let through.
    pub more: bool,
    /// How many pairs the whole range holds.
    pub count: i64,
}

/// The answer to a put (`PutResponse`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResponse {
    /// The revision the put created (header revision).
    pub revision: i64,
    /// The pair before the put, when asked for and there was one.
    pub prev_kv: Option<Kv>,
}

/// The answer to a delete (`DeleteRangeResponse`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteResponse {
    /// The store revision after the delete (header revision; unchanged when nothing was deleted).
    pub revision: i64,
    /// How many keys were deleted.
    pub deleted: i64,
    /// The deleted pairs, when asked for.
    pub prev_kvs: Vec<Kv>,
}

/// How a [`Compare`] compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// The key's field equals the operand.
    Equal,
    /// The key's field differs from the operand.
    NotEqual,
    /// The key's field is greater than the operand.
    Greater,
    /// The key's field is less than the operand.
    Less,
}

/// What a [`Compare`] looks at, with the operand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's create revision (0: the key does not exist).
    CreateRevision(i64),
    /// The key's last modification revision.
    ModRevision(i64),
    /// The key's version (0: the key does not exist).
    Version(i64),
    /// The key's value (bytewise).
    Value(Vec<u8>),
}

/// One condition of a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// The key compared.
    pub key: Vec<u8>,
    /// How.
    pub op: CompareOp,
    /// Against what.
    pub target: CompareTarget,
}

impl Compare {
    /// Compares the key's create revision (`CreateRevision(0)` with [`CompareOp::Equal`]:
    /// "the key does not exist", the create-if-absent test).
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Compare {
        Compare { key: key.into(), op, target: CompareTarget::CreateRevision(revision) }
    }

    /// Compares the key's last modification revision.
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Compare {
        Compare { key: key.into(), op, target: CompareTarget::ModRevision(revision) }
    }

    /// Compares the key's version.
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Compare {
        Compare { key: key.into(), op, target: CompareTarget::Version(version) }
    }

    /// Compares the key's value.
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Compare {
        Compare { key: key.into(), op, target: CompareTarget::Value(value.into()) }
    }
}

/// One operation of a [`Txn`] branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// Put `value` at `key`, bound to `lease` if given.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease to bind the key to.
        lease: Option<LeaseId>,
    },
    /// Delete `key`, or every key in `[key, range_end)`.
    Delete {
        /// The key, or the range's start.
        key: Vec<u8>,
        /// The range's end (exclusive); `None`: only `key`.
        range_end: Option<Vec<u8>>,
    },
    /// Read `key`, or every key in `[key, range_end)`.
    Range {
        /// The key, or the range's start.
        key: Vec<u8>,
        /// The range's end (exclusive); `None`: only `key`.
        range_end: Option<Vec<u8>>,
    },
}

impl TxnOp {
    /// A put, bound to `lease` if given.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: Option<LeaseId>) -> TxnOp {
        TxnOp::Put { key: key.into(), value: value.into(), lease }
    }

    /// A delete of one key.
    pub fn delete(key: impl Into<Vec<u8>>) -> TxnOp {
        TxnOp::Delete { key: key.into(), range_end: None }
    }

    /// A delete of every key under `prefix`.
    pub fn delete_prefix(prefix: impl Into<Vec<u8>>) -> TxnOp {
        let (key, end) = prefix_range(prefix.into());
        TxnOp::Delete { key, range_end: Some(end) }
    }

    /// A read of one key.
    pub fn get(key: impl Into<Vec<u8>>) -> TxnOp {
        TxnOp::Range { key: key.into(), range_end: None }
    }

    /// A read of every key under `prefix`.
    pub fn get_prefix(prefix: impl Into<Vec<u8>>) -> TxnOp {
        let (key, end) = prefix_range(prefix.into());
        TxnOp::Range { key, range_end: Some(end) }
    }
}

/// A transaction: if every `compare` holds, the `success` operations run, else the `failure`
/// ones, atomically at one revision. etcd allows at most 128 operations per branch by default
/// (`--max-txn-ops`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    /// The conditions (all must hold).
    pub compare: Vec<Compare>,
    /// Run when every condition holds.
    pub success: Vec<TxnOp>,
    /// Run otherwise.
    pub failure: Vec<TxnOp>,
}

impl Txn {
    /// An empty transaction (no condition: the success branch runs).
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Adds conditions.
    pub fn when(mut self, compare: impl IntoIterator<Item = Compare>) -> Txn {
        self.compare.extend(compare);
        self
    }

    /// Adds operations to the success branch.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Txn {
        self.success.extend(ops);
        self
    }

    /// Adds operations to the failure branch.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Txn {
        self.failure.extend(ops);
        self
    }
}

/// The answer of one operation of the branch a [`Txn`] ran, in the branch's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResponse {
    /// Of a [`TxnOp::Put`].
    Put(PutResponse),
    /// Of a [`TxnOp::Delete`].
    Delete(DeleteResponse),
    /// Of a [`TxnOp::Range`].
    Range(RangeResponse),
}

/// The answer to a [`Txn`] (`TxnResponse`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResponse {
    /// Every condition held: the success branch ran (else the failure branch).
    pub succeeded: bool,
    /// The store revision after the transaction (header revision).
    pub revision: i64,
    /// One answer per operation of the branch that ran.
    pub responses: Vec<OpResponse>,
}

/// What a watch event says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or changed.
    Put,
    /// The key was deleted (or its lease expired or was revoked).
    Delete,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The pair after the change; for a delete only `key` and `mod_revision` (the delete's
    /// revision) are set.
    pub kv: Kv,
    /// The pair before the change, when the watch asked for it and there was one.
    pub prev_kv: Option<Kv>,
}

/// One message of a watch stream (`WatchResponse`), as [`decode::watch_message`] reads it.
///
/// [`decode::watch_message`]: super::decode::watch_message
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchMessage {
    /// The header revision: the store revision when the message was sent. Events of revisions
    /// up to it may still follow while a watch catches up from an old revision.
    pub revision: i64,
    /// The watch's id on its stream.
    pub watch_id: i64,
    /// The answer to the create request.
    pub created: bool,
    /// The server canceled the watch; no message follows.
    pub canceled: bool,
    /// With `canceled`: the watch started below this compacted revision (0: another reason).
    pub compact_revision: i64,
    /// With `canceled`: the reason etcd gives, if any.
    pub cancel_reason: String,
    /// The changes, in revision order.
    pub events: Vec<WatchEvent>,
}

/// The end of the range holding every key that starts with `prefix` (etcd's
/// `clientv3.GetPrefixRangeEnd`): the prefix with its last byte below 0xff incremented and
/// the rest dropped; `[0]` (every key) for an empty or all-0xff prefix.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The `[key, range_end)` of every key that starts with `prefix`; for an empty prefix,
/// `([0], [0])`: every key (etcd refuses an empty key).
pub fn prefix_range(prefix: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    let end = prefix_end(&prefix);
    (prefix, end)
}
