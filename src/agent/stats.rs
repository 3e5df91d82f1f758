//! Stat collectors (reference §3.1): `system` (`stat.cpu`), `volume` (`stat.io`, `stat.space`,
//! `tag.vol`) and `static`.
//!
//! The `/proc` parsers and the percentage arithmetic are pure functions over text and numbers,
//! tested on fixed samples; the collectors only read the files and remember the previous sample.
//! Every percentage is an *idle* percentage in `0..=100` (100 = idle or empty), as the
//! conscience's score expressions expect. The first sample of a collector is measured since
//! boot; later ones over the interval since the previous sample.

use std::path::{Path, PathBuf};

use crate::proto::service::{ServiceBeat, TagValue};

use super::config::StatConfig;

/// Why a collector produced nothing this round (the watcher then reports the service down).
#[derive(Debug)]
#[non_exhaustive]
pub enum StatError {
    /// A file or path could not be read or examined (a `/proc` file, the volume path).
    Read(PathBuf, std::io::Error),
    /// A `/proc` file did not have the expected format (an unusual kernel or a container that
    /// fakes it): the path names it.
    Format(&'static str),
    /// The volume's filesystem reports no blocks (`/proc`, `/sys`): not a volume.
    NoSpace(PathBuf),
}

impl std::fmt::Display for StatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatError::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            StatError::Format(p) => write!(f, "unexpected format of {p}"),
            StatError::NoSpace(p) => write!(f, "the filesystem of {} has no blocks", p.display()),
        }
    }
}

impl std::error::Error for StatError {}

/// One stat collector.
pub trait Collector: Send {
    /// Measures and writes its tags into `beat`.
    fn collect(&mut self, beat: &mut ServiceBeat) -> Result<(), StatError>;
}

/// CPU time counters from the aggregate `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTimes {
    /// `idle + iowait`.
    pub idle: u64,
    /// `user + nice + system + idle + iowait + irq + softirq + steal` (guest time is already
    /// counted in user and nice).
    pub total: u64,
}

/// Parses the `cpu ` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let mut v = [0u64; 8];
    let mut fields = line.split_ascii_whitespace().skip(1);
    // Kernels before 2.6.11 have fewer columns; at least user, nice, system, idle are needed.
    for (i, slot) in v.iter_mut().enumerate() {
        match fields.next() {
            Some(f) => *slot = f.parse().ok()?,
            None if i >= 4 => break,
            None => return None,
        }
    }
    let total = v.iter().try_fold(0u64, |a, &x| a.checked_add(x))?;
    Some(CpuTimes { idle: v[3].checked_add(v[4])?, total })
}

/// CPU idle percent between two samples, or since boot without a previous one; `None` when no
/// time passed (or the counters went backwards).
pub fn cpu_idle_percent(prev: Option<CpuTimes>, now: CpuTimes) -> Option<f64> {
    let (idle, total) = match prev {
        Some(p) => (now.idle.checked_sub(p.idle)?, now.total.checked_sub(p.total)?),
        None => (now.idle, now.total),
    };
    (total > 0).then(|| (100.0 * idle as f64 / total as f64).clamp(0.0, 100.0))
}

/// The `(major, minor)` of a Linux `dev_t` (glibc's encoding, as `stat.st_dev` holds it).
pub fn dev_major_minor(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// The "milliseconds spent doing I/Os" counter (`io_ticks`, the 10th statistic) of device
/// `major:minor` in `/proc/diskstats`; `None` when the device is not listed.
pub fn parse_diskstats_io_ticks(text: &str, major: u32, minor: u32) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut f = l.split_ascii_whitespace();
        let ma: u32 = f.next()?.parse().ok()?;
        let mi: u32 = f.next()?.parse().ok()?;
        if (ma, mi) != (major, minor) {
            return None;
        }
        // name, then reads, reads merged, sectors read, ms reading, writes, writes merged,
        // sectors written, ms writing, I/Os in progress, ms doing I/Os.
        f.nth(10)?.parse().ok()
    })
}

/// The uptime in milliseconds from `/proc/uptime`.
pub fn parse_uptime_ms(text: &str) -> Option<u64> {
    let secs: f64 = text.split_ascii_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some((secs * 1000.0) as u64)
}

/// A device's busy-time sample: `io_ticks` and the uptime it was read at, both in ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoSample {
    /// Milliseconds the device spent doing I/O.
    pub io_ticks: u64,
    /// Uptime at the sample, ms.
    pub uptime_ms: u64,
}

/// I/O idle percent between two samples (since boot without a previous one); `None` when no
/// time passed. Clamped to `0..=100` (the counters are sampled at slightly different times).
pub fn io_idle_percent(prev: Option<IoSample>, now: IoSample) -> Option<f64> {
    let (busy, span) = match prev {
        Some(p) => (now.io_ticks.saturating_sub(p.io_ticks), now.uptime_ms.checked_sub(p.uptime_ms)?),
        None => (now.io_ticks, now.uptime_ms),
    };
    (span > 0).then(|| (100.0 - 100.0 * busy as f64 / span as f64).clamp(0.0, 100.0))
}

fn read(path: &'static str) -> Result<String, StatError> {
    std::fs::read_to_string(path).map_err(|e| StatError::Read(PathBuf::from(path), e))
}

/// `system`: `stat.cpu` from `/proc/stat`.
#[derive(Debug, Default)]
pub struct SystemStats {
    prev: Option<CpuTimes>,
    last: Option<f64>,
}

impl Collector for SystemStats {
    fn collect(&mut self, beat: &mut ServiceBeat) -> Result<(), StatError> {
        let now = parse_proc_stat(&read("/proc/stat")?).ok_or(StatError::Format("/proc/stat"))?;
        if let Some(pct) = cpu_idle_percent(self.prev, now) {
            self.last = Some(pct);
        }
        self.prev = Some(now);
        beat.set_tag("stat.cpu", TagValue::Float(round2(self.last.unwrap_or(100.0))));
        Ok(())
    }
}

/// `volume`: `stat.io`, `stat.space` and `tag.vol` for a path.
#[derive(Debug)]
pub struct VolumeStats {
    path: PathBuf,
    prev: Option<IoSample>,
    last: Option<f64>,
}

impl VolumeStats {
    /// A collector for the volume holding `path`.
    pub fn new(path: &Path) -> VolumeStats {
        VolumeStats { path: path.to_owned(), prev: None, last: None }
    }

    fn io_idle(&mut self) -> Result<f64, StatError> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(&self.path).map_err(|e| StatError::Read(self.path.clone(), e))?.dev();
        let (major, minor) = dev_major_minor(dev);
        let Some(io_ticks) = parse_diskstats_io_ticks(&read("/proc/diskstats")?, major, minor) else {
            // tmpfs, overlay, a container without the device: no I/O figure to give.
            self.prev = None;
            return Ok(100.0);
        };
        let uptime_ms = parse_uptime_ms(&read("/proc/uptime")?).ok_or(StatError::Format("/proc/uptime"))?;
        let now = IoSample { io_ticks, uptime_ms };
        if let Some(pct) = io_idle_percent(self.prev, now) {
            self.last = Some(pct);
        }
        self.prev = Some(now);
        Ok(self.last.unwrap_or(100.0))
    }
}

impl Collector for VolumeStats {
    fn collect(&mut self, beat: &mut ServiceBeat) -> Result<(), StatError> {
        let io = self.io_idle()?;
        let space = crate::io::fs_space(&self.path).map_err(|e| StatError::Read(self.path.clone(), e))?;
        let free = space.free_percent().ok_or_else(|| StatError::NoSpace(self.path.clone()))?;
        beat.set_tag("stat.io", TagValue::Float(round2(io)));
        beat.set_tag("stat.space", TagValue::Float(round2(free)));
        beat.set_tag("tag.vol", TagValue::Str(self.path.display().to_string()));
        Ok(())
    }
}

/// `static`: fixed tags and stats.
#[derive(Debug)]
pub struct StaticStats {
    tags: Vec<(String, TagValue)>,
}

impl Collector for StaticStats {
    fn collect(&mut self, beat: &mut ServiceBeat) -> Result<(), StatError> {
        for (name, value) in &self.tags {
            beat.set_tag(name, value.clone());
        }
        Ok(())
    }
}

/// Two decimals are plenty for an idle percentage and keep the JSON short.
fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Builds the collector a configuration describes.
pub fn build(cfg: &StatConfig) -> Box<dyn Collector> {
    match cfg {
        StatConfig::System => Box::new(SystemStats::default()),
        StatConfig::Volume { path } => Box::new(VolumeStats::new(path)),
        StatConfig::Static { tags } => Box::new(StaticStats { tags: tags.clone() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  4705 356 584 3699176 23 0 28 0 7 0\n\
                        cpu0 1393 280 234 852556 22 0 27 0 0 0\n\
                        intr 114930548 113199788 3 0 5 263 0 4 [... lots more numbers ...]\n";

    #[test]
    fn proc_stat() {
        let t = parse_proc_stat(STAT).expect("parses");
        assert_eq!(t, CpuTimes { idle: 3699176 + 23, total: 4705 + 356 + 584 + 3699176 + 23 + 28 });
        // Old kernels: four columns.
        assert_eq!(parse_proc_stat("cpu 1 2 3 4\n"), Some(CpuTimes { idle: 4, total: 10 }));
        assert_eq!(parse_proc_stat("cpu 1 2 3\n"), None);
        assert_eq!(parse_proc_stat("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_proc_stat("cpu 1 x 3 4\n"), None);
        assert_eq!(parse_proc_stat(""), None);
    }

    #[test]
    fn cpu_idle_deltas() {
        let a = CpuTimes { idle: 900, total: 1000 };
        assert_eq!(cpu_idle_percent(None, a), Some(90.0));
        let b = CpuTimes { idle: 925, total: 1100 };
        assert_eq!(cpu_idle_percent(Some(a), b), Some(25.0));
        assert_eq!(cpu_idle_percent(Some(b), b), None, "no time passed");
        assert_eq!(cpu_idle_percent(Some(b), a), None, "counters went back");
    }

    #[test]
    fn dev_numbers() {
        // makedev(8, 1), makedev(259, 65536) and makedev(0x1005, 0x12345) as glibc encodes them.
        assert_eq!(dev_major_minor(0x801), (8, 1));
        assert_eq!(dev_major_minor(0x1001_0300), (259, 65536));
        assert_eq!(dev_major_minor(0x1000_1230_0545), (0x1005, 0x12345));
    }

    const DISKSTATS: &str = "   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n\
        \x20  8       0 sda 9000 120 800000 4000 5000 300 900000 7000 0 6500 11000 0 0 0 0 100 200\n\
        \x20  8       1 sda1 8900 120 790000 3900 5000 300 900000 7000 2 6400 10900\n";

    #[test]
    fn diskstats() {
        assert_eq!(parse_diskstats_io_ticks(DISKSTATS, 8, 0), Some(6500));
        assert_eq!(parse_diskstats_io_ticks(DISKSTATS, 8, 1), Some(6400));
        assert_eq!(parse_diskstats_io_ticks(DISKSTATS, 7, 0), Some(0));
        assert_eq!(parse_diskstats_io_ticks(DISKSTATS, 8, 2), None);
        assert_eq!(parse_diskstats_io_ticks("8 3 sdb 1 2 3\n", 8, 3), None, "too few columns");
        assert_eq!(parse_diskstats_io_ticks("", 8, 0), None);
    }

    #[test]
    fn uptime_and_io_idle() {
        assert_eq!(parse_uptime_ms("12345.67 40000.00\n"), Some(12_345_670));
        assert_eq!(parse_uptime_ms("x"), None);
        let a = IoSample { io_ticks: 1_000, uptime_ms: 10_000 };
        assert_eq!(io_idle_percent(None, a), Some(90.0));
        let b = IoSample { io_ticks: 1_250, uptime_ms: 11_000 };
        assert_eq!(io_idle_percent(Some(a), b), Some(75.0));
        // Busy longer than the interval (sampling skew) clamps to 0.
        let c = IoSample { io_ticks: 3_000, uptime_ms: 11_500 };
        assert_eq!(io_idle_percent(Some(b), c), Some(0.0));
        assert_eq!(io_idle_percent(Some(b), b), None);
    }

    #[test]
    fn collectors_on_this_machine() {
        let mut beat = ServiceBeat::default();
        let mut sys = SystemStats::default();
        sys.collect(&mut beat).expect("system");
        sys.collect(&mut beat).expect("system again");
        let cpu = beat.tag("stat.cpu").and_then(TagValue::as_f64).expect("stat.cpu");
        assert!((0.0..=100.0).contains(&cpu));
        let dir = std::env::temp_dir();
        let mut vol = VolumeStats::new(&dir);
        vol.collect(&mut beat).expect("volume");
        vol.collect(&mut beat).expect("volume again");
        for t in ["stat.io", "stat.space"] {
            let v = beat.tag(t).and_then(TagValue::as_f64).expect(t);
            assert!((0.0..=100.0).contains(&v), "{t} = {v}");
        }
        assert_eq!(beat.tag("tag.vol").and_then(TagValue::as_str), Some(dir.display().to_string().as_str()));
        assert!(VolumeStats::new(Path::new("/nonexistent/heartsink")).collect(&mut beat).is_err());
        let mut st = StaticStats { tags: vec![("stat.x".into(), TagValue::Int(3))] };
        st.collect(&mut beat).expect("static");
        assert_eq!(beat.tag("stat.x"), Some(&TagValue::Int(3)));
    }
}
