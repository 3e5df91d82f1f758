//! Failover records and the actions that carry them out.
//!
//! A record is created when the liveness rules pick a stale amphora (or an operator asks), and
//! moves `pending → in_progress → done | failed`; a candidate held back by the circuit breaker
//! is recorded as `stopped` and becomes `pending` when the breaker releases it. A `pending` or
//! `stopped` record of a stale amphora that is heard again before its action starts is
//! `cancelled`, never executed. The action runs
//! on a small pool of `failover_threads` threads, never on the control thread: log only (the
//! default), a command that gets the record as JSON on stdin (exit status 0 = done), or an HTTP
//! POST of the record (2xx = done). A failing action is retried `retries` times with
//! `retry_delay` between attempts, each bounded by `timeout`.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::channel::{self, Receiver, Sender};
use serde::{Deserialize, Serialize};

use super::liveness::secs_ns;
use super::SettingError;
use crate::proto::octavia::Uuid;

/// Why a failover was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverReason {
    /// No liveness refresh for `heartbeat_timeout`.
    Stale,
    /// Asked for through the admin API.
    Manual,
}

/// Where a failover is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverState {
    /// Decided, waiting for a free failover thread.
    Pending,
    /// The action is running.
    InProgress,
    /// The action succeeded.
    Done,
    /// The action failed on every attempt.
    Failed,
    /// Held back by the circuit breaker (`failover_threshold`).
    Stopped,
    /// Pending or stopped, never started: the amphora was heard again first.
    Cancelled,
}

impl FailoverState {
    /// The name used in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverState::Pending => "pending",
            FailoverState::InProgress => "in_progress",
            FailoverState::Done => "done",
            FailoverState::Failed => "failed",
            FailoverState::Stopped => "stopped",
            FailoverState::Cancelled => "cancelled",
        }
    }

    /// Every state.
    pub const ALL: [FailoverState; 6] = [
        FailoverState::Pending,
        FailoverState::InProgress,
        FailoverState::Done,
        FailoverState::Failed,
        FailoverState::Stopped,
        FailoverState::Cancelled,
    ];
}

/// One failover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRecord {
    /// Record id (increasing).
    pub id: u64,
    /// The amphora.
    pub amphora: Uuid,
    /// Why.
    pub reason: FailoverReason,
    /// Where it is.
    pub state: FailoverState,
    /// The amphora's first accepted heartbeat, ns since the epoch.
    pub first_seen_ns: u64,
    /// Its last liveness refresh, ns since the epoch.
    pub last_seen_ns: u64,
    /// When it was declared stale (manual: when asked), ns since the epoch.
    pub stale_since_ns: u64,
    /// Record creation, ns since the epoch.
    pub created_ns: u64,
    /// Last change, ns since the epoch.
    pub updated_ns: u64,
    /// Action attempts made.
    pub attempts: u32,
    /// The action (`log`, `command`, `http`).
    pub action: String,
    /// The last attempt's error.
    pub error: Option<String>,
}

/// The failover action, from the `[failover]` configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// `log` (default), `command` or `http`.
    pub action: String,
    /// `command`: program and arguments; the record comes as JSON on stdin.
    pub command: Vec<String>,
    /// `http`: the URL the record is POSTed to.
    pub url: String,
    /// Attempts after the first failure.
    pub retries: u32,
    /// Seconds between attempts.
    pub retry_delay: f64,
    /// Seconds one attempt may take.
    pub timeout: f64,
}

impl Default for FailoverConfig {
    fn default() -> FailoverConfig {
        FailoverConfig {
            action: "log".into(),
            command: Vec::new(),
            url: String::new(),
            retries: 3,
            retry_delay: 2.0,
            timeout: 30.0,
        }
    }
}

impl FailoverConfig {
    /// Checks the values; the message names the setting.
    pub fn validate(&self) -> Result<(), SettingError> {
        match self.action.as_str() {
            "log" => {}
            "command" if self.command.is_empty() => {
                return Err(SettingError::new(
                    "failover.command",
                    "[program, args...] when failover.action = \"command\"",
                ))
            }
            "command" => {}
            "http" if !(self.url.starts_with("http://") || self.url.starts_with("https://")) => {
                return Err(SettingError::new("failover.url", "\"http://...\" when failover.action = \"http\""))
            }
            "http" => {}
            other => return Err(SettingError::new("failover.action", format!("log, command or http, not {other:?}"))),
        }
        if !(self.timeout.is_finite() && self.timeout > 0.0) {
            return Err(SettingError::new("failover.timeout", "a positive number of seconds"));
        }
        if !(self.retry_delay.is_finite() && self.retry_delay >= 0.0) {
            return Err(SettingError::new("failover.retry_delay", "a non-negative number of seconds"));
        }
        Ok(())
    }
}

/// What became of one record's action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Record id.
    pub id: u64,
    /// Succeeded.
    pub ok: bool,
    /// Attempts made.
    pub attempts: u32,
    /// Last error.
    pub error: Option<String>,
    /// Cluster mode: the action was not run because this member could not claim the record
    /// under its term (it no longer leads); the record stays pending for the leader.
    pub fenced: bool,
}

/// Cluster mode: called on a failover thread before a record's action runs; it commits the
/// record as `in_progress` under this member's leader term (a fenced etcd transaction) and
/// fails when the member no longer leads, so no deposed leader runs an action.
pub type Claim = Arc<dyn Fn(&FailoverRecord) -> Result<(), String> + Send + Sync>;

/// What runs failover actions: the [`Executor`]'s threads in the daemon, a
/// [`ManualRunner`] in deterministic tests.
pub trait Runner: Send + std::fmt::Debug {
    /// The action's name (recorded in each record).
    fn action(&self) -> String;
    /// Hands a record (in state `in_progress`) over to be carried out.
    fn run(&mut self, rec: FailoverRecord);
    /// Outcomes since the last call.
    fn outcomes(&mut self) -> Vec<Outcome>;
    /// Replaces the action settings (on reload).
    fn set_config(&mut self, cfg: FailoverConfig);
    /// Lets running actions finish, stops, and returns their outcomes.
    fn stop(&mut self) -> Vec<Outcome>;
}

/// A runner that carries out nothing by itself: tests see what was started and decide each
/// outcome. Clones share their state, so a test keeps one and hands another to the control
/// plane.
#[derive(Clone, Debug, Default)]
pub struct ManualRunner(Arc<parking_lot::Mutex<ManualRuns>>);

/// What a [`ManualRunner`] saw and what it will report.
#[derive(Debug, Default)]
pub struct ManualRuns {
    /// Records handed over, in order.
    pub started: Vec<FailoverRecord>,
    /// Outcomes the test queued, returned by the next [`Runner::outcomes`].
    pub finished: Vec<Outcome>,
}

impl ManualRunner {
    /// The shared state.
    pub fn runs(&self) -> parking_lot::MutexGuard<'_, ManualRuns> {
        self.0.lock()
    }
}

impl Runner for ManualRunner {
    fn action(&self) -> String {
        "manual".into()
    }
    fn run(&mut self, rec: FailoverRecord) {
        self.0.lock().started.push(rec);
    }
    fn outcomes(&mut self) -> Vec<Outcome> {
        std::mem::take(&mut self.0.lock().finished)
    }
    fn set_config(&mut self, _cfg: FailoverConfig) {}
    fn stop(&mut self) -> Vec<Outcome> {
        self.outcomes()
    }
}

impl Runner for Executor {
    fn action(&self) -> String {
        Executor::action(self)
    }
    fn run(&mut self, rec: FailoverRecord) {
        Executor::run(self, rec)
    }
    fn outcomes(&mut self) -> Vec<Outcome> {
        Executor::outcomes(self).collect()
    }
    fn set_config(&mut self, cfg: FailoverConfig) {
        Executor::set_config(self, cfg)
    }
    fn stop(&mut self) -> Vec<Outcome> {
        Executor::stop(self)
    }
}

/// The pool of failover threads.
#[derive(Debug)]
pub struct Executor {
    tx: Option<Sender<FailoverRecord>>,
    results: Receiver<Outcome>,
    config: Arc<ArcSwap<FailoverConfig>>,
    threads: Vec<JoinHandle<()>>,
}

impl Executor {
    /// Starts `threads` failover threads.
    pub fn spawn(config: FailoverConfig, threads: usize) -> std::io::Result<Executor> {
        Executor::spawn_claiming(config, threads, None)
    }

    /// Starts `threads` failover threads that first [`Claim`] each record (cluster mode).
    pub fn spawn_claiming(config: FailoverConfig, threads: usize, claim: Option<Claim>) -> std::io::Result<Executor> {
        let (tx, rx) = channel::unbounded::<FailoverRecord>();
        let (out_tx, results) = channel::unbounded();
        let config = Arc::new(ArcSwap::from_pointee(config));
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let out = out_tx.clone();
            let cfg = config.clone();
            let claim = claim.clone();
            handles.push(std::thread::Builder::new().name(format!("failover-{i}")).spawn(move || {
                while let Ok(rec) = rx.recv() {
                    let claimed = claim.as_ref().map_or(Ok(()), |c| c(&rec));
                    let outcome = match claimed {
                        Ok(()) => run_with_retries(&cfg.load(), &rec),
                        Err(e) => {
                            tracing::warn!(amphora = %rec.amphora, failover = rec.id, error = %e, "failover not run: this member could not claim it as leader");
                            Outcome { id: rec.id, ok: false, attempts: 0, error: Some(e), fenced: true }
                        }
                    };
                    if out.send(outcome).is_err() {
                        break;
                    }
                }
            })?);
        }
        Ok(Executor { tx: Some(tx), results, config, threads: handles })
    }

    /// Replaces the action settings (on reload); running attempts finish with the old ones.
    pub fn set_config(&self, cfg: FailoverConfig) {
        self.config.store(Arc::new(cfg));
    }

    /// The action's name.
    pub fn action(&self) -> String {
        self.config.load().action.clone()
    }

    /// Hands a record (in state `in_progress`) to a free thread.
    pub fn run(&self, rec: FailoverRecord) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(rec);
        }
    }

    /// Outcomes so far.
    pub fn outcomes(&self) -> impl Iterator<Item = Outcome> + '_ {
        self.results.try_iter()
    }

    /// Lets running actions finish (bounded by their timeouts), then stops the threads.
    pub fn stop(&mut self) -> Vec<Outcome> {
        self.tx = None;
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
        self.results.try_iter().collect()
    }
}

fn run_with_retries(cfg: &FailoverConfig, rec: &FailoverRecord) -> Outcome {
    let mut attempts = 0;
    let mut error = None;
    for attempt in 0..=cfg.retries {
        if attempt > 0 {
            std::thread::sleep(Duration::from_nanos(secs_ns(cfg.retry_delay)));
        }
        attempts += 1;
        match run_once(cfg, rec) {
            Ok(()) => return Outcome { id: rec.id, ok: true, attempts, error: None, fenced: false },
            Err(e) => {
                tracing::warn!(amphora = %rec.amphora, failover = rec.id, attempt = attempts, error = %e, "failover action failed");
                error = Some(e.to_string());
            }
        }
    }
    Outcome { id: rec.id, ok: false, attempts, error, fenced: false }
}

/// Why one attempt of a failover action failed (kept, as text, in the record's `error`).
#[derive(Debug)]
#[non_exhaustive]
pub enum ActionError {
    /// `action = "command"` with no `command`: fix the configuration.
    NoCommand,
    /// The command could not be started or waited for (not found, not executable).
    Spawn(String, std::io::Error),
    /// The command exited unsuccessfully.
    Exit(String, std::process::ExitStatus),
    /// The command or the HTTP request took longer than `failover.timeout`.
    Timeout(String, Duration),
    /// The webhook answered with a status outside 2xx.
    Status(String, u16),
    /// The webhook could not be reached.
    Http(String, Box<ureq::Error>),
    /// The configured action is none of `log`, `command`, `http`.
    UnknownAction(String),
}

impl std::fmt::Display for ActionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActionError::NoCommand => f.write_str("no command configured"),
            ActionError::Spawn(prog, e) => write!(f, "{prog}: {e}"),
            ActionError::Exit(prog, status) => write!(f, "{prog} exited with {status}"),
            ActionError::Timeout(what, t) => write!(f, "{what} timed out after {t:?}"),
            ActionError::Status(url, code) => write!(f, "{url} answered {code}"),
            ActionError::Http(url, e) => write!(f, "{url}: {e}"),
            ActionError::UnknownAction(a) => write!(f, "unknown action {a:?}"),
        }
    }
}

impl std::error::Error for ActionError {}

fn run_once(cfg: &FailoverConfig, rec: &FailoverRecord) -> Result<(), ActionError> {
    let timeout = Duration::from_nanos(secs_ns(cfg.timeout));
    // Serialising our own plain record cannot fail.
    let body = serde_json::to_vec(rec).unwrap_or_default();
    match cfg.action.as_str() {
        "log" => {
            tracing::warn!(amphora = %rec.amphora, failover = rec.id, reason = ?rec.reason, "FAILOVER (action: log only)");
            Ok(())
        }
        "command" => {
            let (prog, args) = cfg.command.split_first().ok_or(ActionError::NoCommand)?;
            let mut child = Command::new(prog)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| ActionError::Spawn(prog.clone(), e))?;
            if let Some(mut stdin) = child.stdin.take() {
                // A command that does not read its stdin is not an error.
                let _ = stdin.write_all(&body);
            }
            let start = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(status)) if status.success() => return Ok(()),
                    Ok(Some(status)) => return Err(ActionError::Exit(prog.clone(), status)),
                    Ok(None) if start.elapsed() > timeout => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(ActionError::Timeout(prog.clone(), timeout));
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                    Err(e) => return Err(ActionError::Spawn(prog.clone(), e)),
                }
            }
        }
        "http" => {
            let agent = ureq::AgentBuilder::new().timeout(timeout).build();
            match agent.post(&cfg.url).set("Content-Type", "application/json").send_bytes(&body) {
                Ok(r) if (200..300).contains(&r.status()) => Ok(()),
                Ok(r) => Err(ActionError::Status(cfg.url.clone(), r.status())),
                Err(ureq::Error::Status(code, _)) => Err(ActionError::Status(cfg.url.clone(), code)),
                Err(e) => Err(ActionError::Http(cfg.url.clone(), Box::new(e))),
            }
        }
        other => Err(ActionError::UnknownAction(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64) -> FailoverRecord {
        FailoverRecord {
            id,
            amphora: Uuid::from_bytes([1; 16]),
            reason: FailoverReason::Stale,
            state: FailoverState::InProgress,
            first_seen_ns: 1,
            last_seen_ns: 2,
            stale_since_ns: 3,
            created_ns: 4,
            updated_ns: 4,
            attempts: 0,
            action: "command".into(),
            error: None,
        }
    }

    #[test]
    fn command_gets_the_record_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("rec.json");
        let cfg = FailoverConfig {
            action: "command".into(),
            command: vec!["sh".into(), "-c".into(), format!("cat > {}", out.display())],
            ..FailoverConfig::default()
        };
        let o = run_with_retries(&cfg, &rec(7));
        assert!(o.ok, "{o:?}");
        let got: FailoverRecord = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(got, rec(7));
    }

    #[test]
    fn failing_command_is_retried_then_failed() {
        let cfg = FailoverConfig {
            action: "command".into(),
            command: vec!["false".into()],
            retries: 2,
            retry_delay: 0.0,
            ..FailoverConfig::default()
        };
        let o = run_with_retries(&cfg, &rec(1));
        assert!(!o.ok);
        assert_eq!(o.attempts, 3);
        assert!(o.error.unwrap().contains("exited"));
    }

    #[test]
    fn slow_command_times_out() {
        let cfg = FailoverConfig {
            action: "command".into(),
            command: vec!["sleep".into(), "5".into()],
            retries: 0,
            timeout: 0.2,
            ..FailoverConfig::default()
        };
        let start = Instant::now();
        let o = run_with_retries(&cfg, &rec(1));
        assert!(!o.ok && o.error.unwrap().contains("timed out"));
        assert!(start.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn http_posts_the_record() {
        use std::io::{BufRead, Read, Write};
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/failover", server.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            // A one-request HTTP/1.1 server: read the head, then Content-Length bytes.
            let (stream, _) = server.accept().unwrap();
            let mut r = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            (&stream).write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n").unwrap();
            String::from_utf8(body).unwrap()
        });
        let cfg = FailoverConfig { action: "http".into(), url, ..FailoverConfig::default() };
        let o = run_with_retries(&cfg, &rec(3));
        assert!(o.ok, "{o:?}");
        let body: FailoverRecord = serde_json::from_str(&h.join().unwrap()).unwrap();
        assert_eq!(body.id, 3);
    }

    #[test]
    fn validate_names_the_setting() {
        let bad = FailoverConfig { action: "http".into(), ..FailoverConfig::default() };
        assert_eq!(bad.validate().unwrap_err().key, "failover.url");
        let bad = FailoverConfig { action: "email".into(), ..FailoverConfig::default() };
        assert!(bad.validate().is_err());
        assert!(FailoverConfig::default().validate().is_ok());
    }

    #[test]
    fn executor_runs_and_reports() {
        let mut e = Executor::spawn(FailoverConfig::default(), 2).unwrap();
        e.run(rec(1));
        e.run(rec(2));
        let mut got = e.stop();
        got.sort_by_key(|o| o.id);
        assert_eq!(got.iter().map(|o| (o.id, o.ok)).collect::<Vec<_>>(), vec![(1, true), (2, true)]);
    }
}
