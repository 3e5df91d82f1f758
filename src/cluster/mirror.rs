//! The `cluster-mirror` thread: followers follow the control plane's state in etcd.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam::channel::Sender;

use super::{ClusterConfig, ClusterInput, Shared};
use crate::control::cluster::TableRow;
use crate::etcd::{Client, EtcdError};

/// A row under `prefix` (its key relative to it), if the key is one.
pub(super) fn row(prefix: &str, key: Vec<u8>, value: Option<Vec<u8>>) -> Option<TableRow> {
    let key = String::from_utf8(key).ok()?;
    Some((key.strip_prefix(prefix)?.to_owned(), value))
}

/// How long a mirror's watch waits for an event before it checks in again.
const MIRROR_IDLE: Duration = Duration::from_secs(2);

/// The `cluster-mirror` thread: the control plane's state in etcd (`tables/`), read whole
/// once and then followed by a watch from the revision after it, so the cost follows changes,
/// never the number of volumes. The control thread applies it while this member does not
/// lead (a leader is the state's only writer and holds it already). After a compaction or a
/// lost connection it reads the whole state again.
pub(super) fn mirror(
    cfg: &ClusterConfig,
    client: &Client,
    control: &Sender<ClusterInput>,
    shared: &Shared,
    stop: &AtomicBool,
) {
    let prefix = cfg.key("tables/");
    let mut from: Option<i64> = None;
    while !stop.load(Ordering::SeqCst) {
        let start = match from {
            Some(rev) => rev + 1,
            None => match client.range_prefix(&prefix) {
                Ok((kvs, rev)) => {
                    let rows = kvs.into_iter().filter_map(|kv| row(&prefix, kv.key, Some(kv.value))).collect();
                    let _ = control.send(ClusterInput::Tables { full: true, rows });
                    shared.tables_revision.store(rev.max(0) as u64, Ordering::Release);
                    from = Some(rev);
                    rev + 1
                }
                Err(e) => {
                    tracing::debug!(error = %e, "control-plane state not read: tried again");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let mut watch = match client.watch_prefix(&prefix, start, MIRROR_IDLE) {
            Ok(w) => w,
            Err(EtcdError::Compacted { .. }) => {
                from = None;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "control-plane watch not opened: tried again");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        while !stop.load(Ordering::SeqCst) {
            if shared.mirror_resync.swap(false, Ordering::AcqRel) {
                from = None;
                break;
            }
            match watch.next_event() {
                Ok(ev) => {
                    let value = (ev.kind == crate::etcd::EventKind::Put).then_some(ev.kv.value);
                    if let Some(r) = row(&prefix, ev.kv.key, value) {
                        let _ = control.send(ClusterInput::Tables { full: false, rows: vec![r] });
                    }
                    shared.tables_revision.store(watch.revision().max(0) as u64, Ordering::Release);
                    from = Some(watch.revision());
                }
                Err(EtcdError::Compacted { .. }) => {
                    from = None;
                    break;
                }
                Err(_) => {
                    from = Some(watch.revision());
                    break;
                }
            }
        }
    }
}
