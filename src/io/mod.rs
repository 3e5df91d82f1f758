//! Sockets: socket2 set-up, batched receive (`recvmmsg`) and send (`sendmmsg`), and the
//! kernel's drop counter (`SO_RXQ_OVFL`). This is the only module with `unsafe`; each block
//! says why it is sound.

mod udp;

pub use udp::{bind_udp, BoundUdp, RecvBatch, SendBatch};
