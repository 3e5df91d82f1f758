//! What the workers tell the control thread: the change records that cross from the data plane
//! to the control plane. A leaf module (it imports only the models), so that both sides can
//! name the type without importing each other, as `quinn-proto/src/shared.rs` does.
//!
//! Only transitions travel here, never a heartbeat that merely refreshes an amphora: the
//! control thread's work grows with changes, not with the fleet or the packet rate.

use crate::proto::octavia::Uuid;
use crate::state::OperatingStatus;

/// A transition the control thread must know about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// An amphora seen for the first time, with the operating status its first heartbeat set
    /// (the control thread need not read the shard for it).
    New {
        /// Amphora id.
        id: Uuid,
        /// Its rolled-up operating status after the first heartbeat.
        status: OperatingStatus,
    },
    /// A stale amphora refreshed its liveness again.
    Revived(Uuid),
    /// An amphora's rolled-up operating status changed.
    Status {
        /// Amphora id.
        id: Uuid,
        /// Previous status.
        from: OperatingStatus,
        /// New status.
        to: OperatingStatus,
    },
}
