//! Sockets: socket2 set-up, batched receive (`recvmmsg`) and send (`sendmmsg`), and the
//! kernel's drop counter (`SO_RXQ_OVFL`). This is the only module with `unsafe`; each block
//! says why it is sound.

mod udp;

pub use udp::{bind_udp, BoundUdp, RecvBatch, SendBatch};

/// Sends SIGKILL to the process group `pgid` (a child started with its own group).
pub fn kill_process_group(pgid: u32) {
    if let Ok(pgid) = libc::pid_t::try_from(pgid) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}
