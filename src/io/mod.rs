//! Sockets: socket2 set-up, batched receive (`recvmmsg`) and send (`sendmmsg`), the kernel's
//! drop counter (`SO_RXQ_OVFL`); `statvfs` for the agent's volume stats; and signals and CPU time of
//! child processes for the benches. This is the only
//! module with `unsafe`; each block says why it is sound.

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

/// Returns the allocator's free pages to the kernel (glibc `malloc_trim(0)`; nothing on other
/// C libraries). Called once after the restore, whose row buffers would otherwise stay in the
/// heap as resident memory the daemon never uses again.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim(3) takes no pointer and only releases memory no allocation uses.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Lowers the calling thread's scheduling priority to nice `nice` (Linux: priorities are per
/// thread). Background work (the store writer) then yields the CPU to the packet path when
/// both want it. Returns false when the kernel refused.
pub fn lower_thread_priority(nice: i32) -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid(2) and setpriority(2) take plain integers and touch no memory of ours.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid);
            let Ok(tid) = libc::id_t::try_from(tid) else { return false };
            libc::setpriority(libc::PRIO_PROCESS, tid, nice) == 0
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = nice;
        false
    }
}

/// Sends signal `sig` (e.g. `libc::SIGTERM`) to process `pid`; false when it could not be sent.
pub fn signal(pid: u32, sig: i32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// CPU seconds (user + system) process `pid` has used so far, from `/proc/PID/stat`; `None`
/// when the process is gone or the file does not read as expected.
pub fn process_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields are counted after the
    // last ')'. Field 3 (state) comes first; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf(3) has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// CPU time the calling thread has used, ns (`CLOCK_THREAD_CPUTIME_ID`): what a measurement on
/// a shared machine should count (0 if the clock cannot be read).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime(2) writes one timespec through a valid pointer to a local.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// Context switches of every thread of process `pid` so far, (voluntary, involuntary), from
/// `/proc/PID/task/*/status`; `None` when the process is gone. (Threads that have exited no
/// longer count.)
pub fn process_ctxt_switches(pid: u32) -> Option<(u64, u64)> {
    let mut total = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        for line in status.lines() {
            let mut parts = line.split(':');
            let (Some(k), Some(v)) = (parts.next(), parts.next()) else { continue };
            let n: u64 = v.trim().parse().unwrap_or(0);
            match k {
                "voluntary_ctxt_switches" => total.0 += n,
                "nonvoluntary_ctxt_switches" => total.1 += n,
                _ => {}
            }
        }
    }
    Some(total)
}

/// Size and free space of a filesystem, from `statvfs(3)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsSpace {
    /// Size of the filesystem, bytes.
    pub total_bytes: u64,
    /// Bytes available to unprivileged users (`f_bavail`).
    pub available_bytes: u64,
}

impl FsSpace {
    /// Available space as a percentage of the size, or `None` for a filesystem without blocks
    /// (`/proc`, `/sys`).
    pub fn free_percent(&self) -> Option<f64> {
        (self.total_bytes > 0).then(|| 100.0 * self.available_bytes as f64 / self.total_bytes as f64)
    }
}

/// The space of the filesystem holding `path`.
// The statvfs fields are u64 on 64-bit Linux but narrower on some 32-bit targets.
#[allow(clippy::useless_conversion)]
pub fn fs_space(path: &std::path::Path) -> std::io::Result<FsSpace> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated string that outlives the call, and `st` points to writable
    // memory for one `statvfs`, which the call fills when it returns 0.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the whole struct.
    let st = unsafe { st.assume_init() };
    let unit = u64::from(if st.f_frsize > 0 { st.f_frsize } else { st.f_bsize });
    Ok(FsSpace {
        total_bytes: u64::from(st.f_blocks).saturating_mul(unit),
        available_bytes: u64::from(st.f_bavail).saturating_mul(unit),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_space_of_the_temp_dir() {
        let s = fs_space(&std::env::temp_dir()).expect("statvfs");
        assert!(s.total_bytes > 0 && s.available_bytes <= s.total_bytes, "{s:?}");
        let pct = s.free_percent().expect("has blocks");
        assert!((0.0..=100.0).contains(&pct));
        assert!(fs_space(std::path::Path::new("/nonexistent/heartsink")).is_err());
        assert!(fs_space(std::path::Path::new("a\0b")).is_err());
    }
}
