//! The worker threads: one per core, each popping batches from its own ring. A heartbeat batch
//! goes through the [`Pipeline`] (verify → inflate → parse → apply per shard, changes to the
//! control thread); a batch from a lane's socket goes to that lane (for example the confd
//! responder), which the engine was given at start and never names. Every batch returns to the
//! free list.

use std::io;
use std::thread::JoinHandle;

use super::pipeline::Pipeline;
use super::ring::{BatchKind, FreeList, RingRx};
use super::Lane;

/// Starts worker `index` on `ring`.
pub(super) fn spawn(
    index: usize,
    ring: RingRx,
    free: FreeList,
    mut pipeline: Pipeline,
    mut lanes: Vec<Box<dyn Lane>>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(format!("worker-{index}")).spawn(move || {
        while let Some(batch) = ring.pop() {
            match batch.kind {
                BatchKind::Heartbeat => {
                    pipeline.process_timed(batch.timed(), batch.recv_ns);
                }
                BatchKind::Lane(n) => {
                    if let Some(lane) = lanes.get_mut(usize::from(n)) {
                        lane.process(&batch);
                    }
                }
            }
            free.give(batch);
        }
    })
}
