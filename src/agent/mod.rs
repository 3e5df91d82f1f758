//! `heartsink agent`: the service watcher (the conscience agent of reference §3).
//!
//! For each configured service, a watcher thread runs the service's checks every
//! `check_interval`, smooths each check's results with rise/fall, collects stats while the
//! service is up, and sends a signed service heartbeat ([`crate::proto::service`], in the
//! Octavia envelope) with `tag.up` and a rising `seq` to every sink over UDP. Send errors are
//! counted and logged, never fatal.
//!
//! Lifecycle: signals are registered first, then the configuration is read (a fault in the file
//! stops here with exit code 2; a `[[service]]` that cannot be watched is logged and skipped, see
//! [`config`]), then the watchers start and exactly one JSON line goes to stdout,
//! `{"agent":"started","services":N}`; logs go to stderr. A supervisor looks at the watchers
//! every second and replaces one that ended or panicked with a fresh one built from the same
//! configuration (reference §3.4). SIGTERM or SIGINT stop the watchers (a check in progress
//! finishes, bounded by its timeout); each then sends a final `tag.up=false` heartbeat when
//! `deregister_on_exit` is set (the default here), and the process exits 0.
//!
//! `--once` runs one round per service (each check once: its first result is its status), sends
//! the heartbeats, prints them as one JSON array on stdout and exits.
//!
//! The parts are sans-IO where it matters: [`check::RiseFall`] is pure, the `/proc` parsers of
//! [`stats`] are pure functions, and [`watcher::Watcher`] takes any [`check::Check`] and
//! [`stats::Collector`].

pub mod check;
pub mod config;
pub mod stats;
pub mod watcher;

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::{LogConfig, LogFormat};

use self::config::{AgentConfig, AgentConfigError, ServiceConfig};
use self::watcher::{initial_seq, Sink, Watcher};

/// How often the supervisor replaces watchers that ended (reference §3.4).
pub const SUPERVISOR_PERIOD: Duration = Duration::from_secs(1);

/// What `heartsink agent` was asked to do.
#[derive(Clone, Debug)]
pub struct AgentArgs {
    /// `--config FILE`.
    pub config: PathBuf,
    /// `--once`: one round, print the heartbeats, exit.
    pub once: bool,
}

/// Why the agent could not run.
#[derive(Debug)]
#[non_exhaustive]
pub enum AgentError {
    /// The configuration is unusable; the message says where.
    Config(AgentConfigError),
    /// The signal handlers could not be installed.
    Signals(std::io::Error),
    /// A UDP socket could not be opened (`--once`; the daemon retries instead).
    Socket(std::io::Error),
    /// stdout is closed.
    Stdout(std::io::Error),
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::Config(e) => e.fmt(f),
            AgentError::Signals(e) => write!(f, "cannot install signal handlers: {e}"),
            AgentError::Socket(e) => write!(f, "cannot open a UDP socket: {e}"),
            AgentError::Stdout(e) => write!(f, "cannot write to stdout: {e}"),
        }
    }
}

impl std::error::Error for AgentError {}

impl From<AgentConfigError> for AgentError {
    fn from(e: AgentConfigError) -> AgentError {
        AgentError::Config(e)
    }
}

/// A stop flag that sleepers wake up on.
#[derive(Debug, Default)]
struct Stop {
    stopped: Mutex<bool>,
    cv: Condvar,
}

impl Stop {
    fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps for `d` or until stopped; true when stopped.
    fn sleep(&self, d: Duration) -> bool {
        let guard = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self.cv.wait_timeout_while(guard, d, |stopped| !*stopped).unwrap_or_else(|e| e.into_inner());
        *guard
    }
}

/// What every watcher shares.
struct Shared {
    sinks: Vec<std::net::SocketAddr>,
    key: Vec<u8>,
    stop: Stop,
}

fn init_logging(log: &LogConfig) {
    // As `heartsink serve` does: stderr, ANSI colours only on a terminal.
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(&log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter);
    let _ = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn print_line(line: &str) -> Result<(), AgentError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).map_err(AgentError::Stdout)
}

/// One watcher's life: rounds until stopped, then the final DOWN heartbeat.
fn watch(cfg: &ServiceConfig, shared: &Shared) -> std::io::Result<()> {
    let mut sink = Sink::new(&shared.sinks, &shared.key)?;
    let mut w = Watcher::new(cfg, initial_seq());
    loop {
        let beat = w.round();
        // Stopped during the round: at exit only the DOWN heartbeat is sent.
        if shared.stop.is_stopped() {
            break;
        }
        sink.send(beat);
        if shared.stop.sleep(cfg.check_interval) {
            break;
        }
    }
    if cfg.deregister_on_exit {
        let beat = w.down_beat();
        let seq = beat.seq;
        sink.send(beat);
        tracing::info!(service = %cfg.addr, r#type = %cfg.kind, seq, "sent the final down heartbeat");
    }
    tracing::debug!(service = %cfg.addr, sent = sink.sent, errors = sink.errors, "watcher stopped");
    Ok(())
}

fn spawn(cfg: &Arc<ServiceConfig>, shared: &Arc<Shared>) -> Option<JoinHandle<std::io::Result<()>>> {
    let (c, s) = (cfg.clone(), shared.clone());
    match std::thread::Builder::new().name(format!("watch {}", cfg.addr)).spawn(move || watch(&c, &s)) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::error!(service = %cfg.addr, error = %e, "cannot start a watcher thread; retrying");
            None
        }
    }
}

/// A supervised watcher.
struct Slot {
    cfg: Arc<ServiceConfig>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

impl Slot {
    /// Replaces the watcher if it ended (reference §3.4).
    fn supervise(&mut self, shared: &Arc<Shared>) {
        if self.handle.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let svc = self.cfg.addr;
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(Ok(()))) => tracing::error!(service = %svc, "watcher ended; restarting it"),
            Some(Ok(Err(e))) => tracing::error!(service = %svc, error = %e, "watcher failed; restarting it"),
            Some(Err(_)) => tracing::error!(service = %svc, "watcher panicked; restarting it"),
            None => {}
        }
        self.handle = spawn(&self.cfg, shared);
    }

    fn join(self) {
        if let Some(h) = self.handle {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(service = %self.cfg.addr, error = %e, "watcher failed"),
                Err(_) => tracing::error!(service = %self.cfg.addr, "watcher panicked"),
            }
        }
    }
}

/// Runs the agent until SIGTERM/SIGINT (or one round with `--once`).
pub fn run(args: &AgentArgs) -> Result<(), AgentError> {
    // Registered before anything else, so that a signal during start-up stops cleanly.
    let signals = match args.once {
        true => None,
        false => Some(Signals::new([SIGTERM, SIGINT]).map_err(AgentError::Signals)?),
    };
    let cfg = AgentConfig::load(&args.config)?;
    init_logging(&cfg.log);
    if cfg.insecure_key {
        tracing::warn!(
            "no heartbeat key configured: signing with the insecure default key \"insecure\"; set key or key_file"
        );
    }
    for r in &cfg.rejected {
        tracing::error!(entry = r.index, service = %r.name, reason = %r.reason, "service not watched");
    }
    let Some(mut signals) = signals else {
        return once(&cfg);
    };
    let shared = Arc::new(Shared { sinks: cfg.sinks.clone(), key: cfg.key.clone(), stop: Stop::default() });
    let mut slots: Vec<Slot> = cfg
        .services
        .iter()
        .map(|s| {
            let cfg = Arc::new(s.clone());
            let handle = spawn(&cfg, &shared);
            Slot { cfg, handle }
        })
        .collect();
    let handle = signals.handle();
    let sig_shared = shared.clone();
    let sig_thread = std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!(signal = sig, "stopping");
            sig_shared.stop.stop();
        }
    });
    print_line(&serde_json::json!({"agent": "started", "services": slots.len()}).to_string())?;
    tracing::info!(services = slots.len(), rejected = cfg.rejected.len(), sinks = ?cfg.sinks, "heartsink agent running");
    if slots.is_empty() {
        tracing::warn!("no service to watch");
    }
    while !shared.stop.sleep(SUPERVISOR_PERIOD) {
        for slot in &mut slots {
            slot.supervise(&shared);
        }
    }
    for slot in slots {
        slot.join();
    }
    handle.close();
    let _ = sig_thread.join();
    tracing::info!("stopped");
    Ok(())
}

/// `--once`: one round per service, sent and printed (the documents exactly as sent).
fn once(cfg: &AgentConfig) -> Result<(), AgentError> {
    let mut out = String::from("[");
    for (i, svc) in cfg.services.iter().enumerate() {
        let mut sink = Sink::new(&cfg.sinks, &cfg.key).map_err(AgentError::Socket)?;
        let mut w = Watcher::new(svc, initial_seq());
        if i > 0 {
            out.push(',');
        }
        // serde_json writes UTF-8.
        out.push_str(&String::from_utf8_lossy(sink.send(w.round())));
    }
    out.push(']');
    print_line(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_wakes_sleepers() {
        let stop = Arc::new(Stop::default());
        assert!(!stop.sleep(Duration::from_millis(1)));
        let s = stop.clone();
        let t = std::thread::spawn(move || s.sleep(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        stop.stop();
        assert!(t.join().expect("join"));
        assert!(stop.is_stopped());
        assert!(stop.sleep(Duration::from_secs(30)));
    }

    #[test]
    fn supervisor_replaces_a_failed_watcher() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let shared =
            Arc::new(Shared { sinks: vec![rx.local_addr().expect("addr")], key: b"k".to_vec(), stop: Stop::default() });
        let cfg = Arc::new(ServiceConfig {
            kind: "rawx".into(),
            addr: "127.0.0.1:6000".parse().expect("addr"),
            service_id: None,
            location: None,
            slots: Vec::new(),
            check_interval: Duration::from_millis(10),
            deregister_on_exit: true,
            checks: Vec::new(),
            stats: Vec::new(),
        });
        let failed = std::thread::spawn(|| Err(std::io::Error::other("socket trouble")));
        while !failed.is_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut slot = Slot { cfg, handle: Some(failed) };
        slot.supervise(&shared);
        // A fresh watcher runs and sends.
        let mut buf = [0u8; 2048];
        assert!(rx.recv(&mut buf).expect("a heartbeat from the new watcher") > 64);
        assert!(slot.handle.as_ref().is_some_and(|h| !h.is_finished()));
        // A running watcher is left alone.
        slot.supervise(&shared);
        shared.stop.stop();
        slot.join();
    }
}
