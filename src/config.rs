//! Configuration: a TOML file (`--config`), overridden by command-line flags, validated once.
//!
//! Every key is optional; unknown keys are rejected with the key's name. The embedded default
//! (no file at all) listens on `127.0.0.1:5555/udp` and `127.0.0.1:9555/tcp` with the key
//! `insecure`. A full example with the defaults is in the README.
//!
//! One path, at start and on every reload: [`Validated::load`] reads the file, applies the
//! flags, checks every value (service type expressions compiled, the log filter parsed,
//! Cinder's fix-ups applied and returned as warnings), reads the key files and the confd
//! configuration. Only then does anything bind; a reload that fails keeps the running
//! configuration. The engine, control and confd configurations are built side by side from
//! the result.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::confd::proto::HmacKey;
use crate::confd::server::ConfdState;
use crate::engine::{EngineConfig, Settings};
use crate::proto::inflate::Backend;
use crate::proto::keyring::{Keyring, INSECURE_DEFAULT_KEY};

/// Why a configuration cannot be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    Read(PathBuf, std::io::Error),
    /// The file is not valid TOML for this schema (unknown key, wrong type); the message names
    /// the key and line.
    Parse(PathBuf, Box<toml::de::Error>),
    /// A value is out of range; the message names the key and the expected form.
    Invalid(String),
    /// A value in this file is out of range; the inner error names the key and the expected form.
    InFile(PathBuf, Box<ConfigError>),
    /// A setting of the control plane is out of range.
    Setting(crate::control::SettingError),
    /// The confd configuration (`config.data`) does not load; the message names the file.
    Confd(String),
    /// A reload that would cut every sender or client off, refused: the running
    /// configuration stays; the message says why and what to do.
    ReloadRefused(String),
    /// The admin tokens file (`[admin] tokens_file`) does not load; the message names the
    /// file and the line.
    AdminTokens(crate::api::auth::TokensError),
    /// The admin TLS certificate or key (`[admin] tls_cert`, `tls_key`) does not load.
    AdminTls(crate::api::tls::TlsError),
}

impl From<crate::control::SettingError> for ConfigError {
    fn from(e: crate::control::SettingError) -> ConfigError {
        ConfigError::Setting(e)
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            ConfigError::Parse(p, e) => write!(f, "invalid configuration in {}: {e}", p.display()),
            ConfigError::Invalid(m) => write!(f, "invalid configuration: {m}"),
            ConfigError::InFile(p, e) => write!(f, "{}: {e}", p.display()),
            ConfigError::Setting(e) => write!(f, "invalid configuration: {e}"),
            ConfigError::Confd(m) => write!(f, "confd configuration: {m}"),
            ConfigError::ReloadRefused(m) => write!(f, "reload refused, the running configuration stays: {m}"),
            ConfigError::AdminTokens(e) => write!(f, "{e}"),
            ConfigError::AdminTls(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[heartbeat]`: the UDP ingest.
    pub heartbeat: HeartbeatConfig,
    /// `[admin]`: the HTTP API.
    pub admin: AdminConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
    /// `[confd]`: the signed UDP query server.
    pub confd: ConfdConfig,
    /// `[store]`: the durable state.
    pub store: StoreConfig,
    /// `[liveness]`: Octavia's health manager rules.
    pub liveness: crate::control::liveness::LivenessConfig,
    /// `[failover]`: the failover action.
    pub failover: crate::control::failover::FailoverConfig,
    /// `[service]`: Cinder's lifecycle timing (this daemon as a service).
    pub service: crate::control::LifecycleConfig,
    /// `[registry]`: the service registry's types and pool refresh (`[services]` is accepted
    /// as its former name).
    #[serde(alias = "services")]
    pub registry: crate::control::services::ServicesConfig,
    /// `[scheduler]`: the volume scheduler.
    pub scheduler: crate::control::volumes::SchedulerConfig,
    /// `[cluster]`: cluster mode on etcd (no `etcd` endpoint: the embedded single node).
    pub cluster: crate::cluster::ClusterConfig,
}

/// `[confd]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConfdConfig {
    /// Serve confd at all.
    pub enabled: bool,
    /// UDP listen address.
    pub addr: SocketAddr,
    /// HMAC key files; each file's whole content is one key (Ganeti's `hmac.key`, newline
    /// included). None: the key `insecure` (with a warning).
    pub key_files: Vec<PathBuf>,
    /// A Ganeti `config.data` to answer request types 0–11 from (reloaded when it changes).
    pub config: Option<PathBuf>,
    /// Replay cache entries (each answered request's signature, kept for its ±300 s window;
    /// rounded up to a power of two; a restart applies a change).
    pub replay_cache: usize,
    /// Reply bytes per second per source address (0: unlimited).
    pub reply_budget: u64,
    /// Reply bytes per second for the whole server (0: unlimited).
    pub reply_budget_total: u64,
}

impl Default for ConfdConfig {
    fn default() -> ConfdConfig {
        ConfdConfig {
            enabled: true,
            addr: SocketAddr::from(([127, 0, 0, 1], crate::confd::proto::DEFAULT_PORT)),
            key_files: Vec::new(),
            config: None,
            replay_cache: crate::confd::replay::DEFAULT_CAPACITY,
            reply_budget: crate::confd::budget::DEFAULT_PER_SOURCE,
            reply_budget_total: crate::confd::budget::DEFAULT_TOTAL,
        }
    }
}

/// `[store]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The data directory (created if missing).
    pub data_dir: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig { data_dir: PathBuf::from("heartsink-data") }
    }
}

/// `[heartbeat]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// UDP listen address.
    pub addr: SocketAddr,
    /// Accepted keys (each used as its UTF-8 bytes), tried in order.
    pub keys: Vec<String>,
    /// Files with one key per line (re-read on SIGHUP).
    pub key_files: Vec<PathBuf>,
    /// `SO_RCVBUF` to ask for, bytes.
    pub rcvbuf: usize,
    /// Largest datagram, bytes (≤ 65536).
    pub max_datagram: usize,
    /// Cap on inflated JSON, bytes.
    pub max_inflated: usize,
    /// Receive threads.
    pub rx_threads: usize,
    /// Worker threads; 0 = one per core.
    pub workers: usize,
    /// Batches per worker ring.
    pub ring_batches: usize,
    /// Datagrams per batch.
    pub batch_packets: usize,
    /// Datagrams per `recvmmsg`.
    pub recv_batch: usize,
    /// Microseconds a worker reading its own socket keeps asking an empty socket again before
    /// it sleeps (0: off; at most 10,000).
    pub busy_poll_us: u32,
    /// `SO_BUSY_POLL` of the heartbeat sockets, microseconds (0: not set; at most 10,000).
    pub so_busy_poll_us: u32,
    /// State shards.
    pub shards: usize,
    /// Inflate back-end: `small` (heartsink's own, for small messages; the default),
    /// `libdeflate` or `zlib-rs` (kept for comparison; see `proto::inflate::Backend`).
    pub inflate: Backend,
    /// Sequence window restart gap, milliseconds: the silence after which a low `seq`, or two
    /// rising refused ones, count as an agent restart.
    pub restart_gap_ms: u64,
    /// Serve with the built-in key `insecure` on a non-loopback address (heartbeat or confd
    /// socket) anyway; `serve` refuses to otherwise.
    pub allow_insecure_key: bool,
}

impl Default for HeartbeatConfig {
    fn default() -> HeartbeatConfig {
        let e = EngineConfig::default();
        HeartbeatConfig {
            addr: e.heartbeat_addr,
            keys: Vec::new(),
            key_files: Vec::new(),
            rcvbuf: e.rcvbuf,
            max_datagram: e.max_datagram,
            max_inflated: e.settings.max_inflated,
            rx_threads: e.rx_threads,
            workers: 0,
            ring_batches: e.ring_batches,
            batch_packets: e.batch_packets,
            recv_batch: e.recv_batch,
            busy_poll_us: e.busy_poll_us,
            so_busy_poll_us: e.so_busy_poll_us,
            shards: e.shards,
            inflate: e.inflate,
            restart_gap_ms: e.settings.restart_gap_ns / 1_000_000,
            allow_insecure_key: false,
        }
    }
}

/// `[admin]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// HTTP listen address.
    pub addr: SocketAddr,
    /// Largest request head, bytes (8192..=1 MiB); larger is `431`.
    pub max_header_bytes: usize,
    /// Seconds from a request's first byte to the end of its head (`408`).
    pub header_timeout: f64,
    /// Seconds to receive a whole request body (`408`).
    pub body_timeout: f64,
    /// Seconds a connection with no request in progress stays open.
    pub idle_timeout: f64,
    /// Connections at once (1..=65536); at the limit the longest idle one is closed, or the
    /// newcomer is answered `503`.
    pub max_connections: usize,
    /// Bearer tokens, one per line as `ROLE NAME TOKEN` (re-read on SIGHUP; see
    /// [`crate::api::auth`]). None: no authentication.
    pub tokens_file: Option<PathBuf>,
    /// With tokens, `/metrics` needs one too (a `read` token is enough).
    pub metrics_auth: bool,
    /// PEM certificate chain (server certificate first): serve HTTPS (re-read on SIGHUP).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Serve on a non-loopback address without tokens anyway (refused otherwise).
    pub insecure: bool,
}

impl Default for AdminConfig {
    fn default() -> AdminConfig {
        let l = crate::api::AdminLimits::default();
        AdminConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 9555)),
            max_header_bytes: l.max_header_bytes,
            header_timeout: l.header_timeout.as_secs_f64(),
            body_timeout: l.body_timeout.as_secs_f64(),
            idle_timeout: l.idle_timeout.as_secs_f64(),
            max_connections: l.max_connections,
            tokens_file: None,
            metrics_auth: false,
            tls_cert: None,
            tls_key: None,
            insecure: false,
        }
    }
}

impl AdminConfig {
    /// Checks the ranges; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let min = crate::api::MIN_HEADER_BYTES;
        if !(min..=(1 << 20)).contains(&self.max_header_bytes) {
            return Err(format!("admin.max_header_bytes must be in {min}..=1048576"));
        }
        for (name, v) in [
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if !(0.01..=3600.0).contains(&v) {
                return Err(format!("admin.{name} must be in 0.01..=3600 seconds"));
            }
        }
        if !(1..=65536).contains(&self.max_connections) {
            return Err("admin.max_connections must be in 1..=65536".into());
        }
        Ok(())
    }

    /// The settings that a reload cannot change (the socket, the limits, TLS on or off,
    /// `insecure`), to tell whether a restart is needed.
    pub fn restart_part(&self) -> (SocketAddr, crate::api::AdminLimits, bool, bool) {
        (self.addr, self.limits(), self.tls_cert.is_some(), self.insecure)
    }

    /// The admin server's limits.
    pub fn limits(&self) -> crate::api::AdminLimits {
        let secs = |s: f64| std::time::Duration::try_from_secs_f64(s).unwrap_or_default();
        crate::api::AdminLimits {
            max_header_bytes: self.max_header_bytes,
            header_timeout: secs(self.header_timeout),
            body_timeout: secs(self.body_timeout),
            idle_timeout: secs(self.idle_timeout),
            max_connections: self.max_connections,
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `heartsink=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig { format: LogFormat::Text, level: "info".into() }
    }
}

/// Command-line overrides (see `heartsink serve --help`).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--heartbeat-addr`.
    pub heartbeat_addr: Option<SocketAddr>,
    /// `--admin-addr`.
    pub admin_addr: Option<SocketAddr>,
    /// `--key`, repeatable.
    pub keys: Vec<String>,
    /// `--key-file`, repeatable.
    pub key_files: Vec<PathBuf>,
    /// `--workers`.
    pub workers: Option<usize>,
    /// `--rx-threads`.
    pub rx_threads: Option<usize>,
    /// `--rcvbuf`.
    pub rcvbuf: Option<usize>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--confd-addr`.
    pub confd_addr: Option<SocketAddr>,
    /// `--confd-key-file`, repeatable.
    pub confd_key_files: Vec<PathBuf>,
    /// `--confd-config`.
    pub confd_config: Option<PathBuf>,
    /// `--no-confd`.
    pub no_confd: bool,
    /// `--allow-insecure-key`.
    pub allow_insecure_key: bool,
    /// `--etcd`, repeatable.
    pub etcd: Vec<String>,
    /// `--node`.
    pub node: Option<String>,
    /// `--admin-tokens-file`.
    pub admin_tokens_file: Option<PathBuf>,
    /// `--admin-tls-cert`.
    pub admin_tls_cert: Option<PathBuf>,
    /// `--admin-tls-key`.
    pub admin_tls_key: Option<PathBuf>,
    /// `--admin-insecure`.
    pub admin_insecure: bool,
}

impl Config {
    /// Reads `path` (or the embedded default when `None`), applies `o`, and checks every value
    /// (see [`Validated::load`] for everything a daemon needs).
    pub fn load(path: Option<&Path>, o: &Overrides) -> Result<Config, ConfigError> {
        let mut c = Config::read(path, o)?;
        c.validate().map_err(|e| in_file(path, e))?;
        Ok(c)
    }

    /// Parses and checks a configuration file's text, as [`Config::load`] does for a file
    /// (sans-IO: the `config` fuzz target runs it on arbitrary text). Key files and the confd
    /// configuration it names are not read.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut c: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse(PathBuf::from("<text>"), Box::new(e)))?;
        c.validate()?;
        Ok(c)
    }

    /// Reads `path` (or the embedded default when `None`) and applies `o`, unchecked.
    fn read(path: Option<&Path>, o: &Overrides) -> Result<Config, ConfigError> {
        let mut c = match path {
            Some(p) => {
                let text = crate::util::read_bounded_string(p, crate::util::MAX_CONFIG_FILE)
                    .map_err(|e| ConfigError::Read(p.to_owned(), e))?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse(p.to_owned(), Box::new(e)))?
            }
            None => Config::default(),
        };
        if let Some(a) = o.heartbeat_addr {
            c.heartbeat.addr = a;
        }
        if let Some(a) = o.admin_addr {
            c.admin.addr = a;
        }
        if let Some(p) = &o.admin_tokens_file {
            c.admin.tokens_file = Some(p.clone());
        }
        if let Some(p) = &o.admin_tls_cert {
            c.admin.tls_cert = Some(p.clone());
        }
        if let Some(p) = &o.admin_tls_key {
            c.admin.tls_key = Some(p.clone());
        }
        c.admin.insecure |= o.admin_insecure;
        if !o.keys.is_empty() || !o.key_files.is_empty() {
            c.heartbeat.keys = o.keys.clone();
            c.heartbeat.key_files = o.key_files.clone();
        }
        if let Some(w) = o.workers {
            c.heartbeat.workers = w;
        }
        if let Some(n) = o.rx_threads {
            c.heartbeat.rx_threads = n;
        }
        if let Some(n) = o.rcvbuf {
            c.heartbeat.rcvbuf = n;
        }
        if let Some(f) = o.log_format {
            c.log.format = f;
        }
        if let Some(l) = &o.log_level {
            c.log.level = l.clone();
        }
        if let Some(d) = &o.data_dir {
            c.store.data_dir = d.clone();
        }
        if let Some(a) = o.confd_addr {
            c.confd.addr = a;
        }
        if !o.confd_key_files.is_empty() {
            c.confd.key_files = o.confd_key_files.clone();
        }
        if let Some(p) = &o.confd_config {
            c.confd.config = Some(p.clone());
        }
        if o.allow_insecure_key {
            c.heartbeat.allow_insecure_key = true;
        }
        if o.no_confd {
            c.confd.enabled = false;
        }
        if !o.etcd.is_empty() {
            c.cluster.etcd = o.etcd.clone();
        }
        if let Some(n) = &o.node {
            c.cluster.node = n.clone();
        }
        if c.cluster.enabled() && c.cluster.node.is_empty() {
            c.cluster.node = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "localhost".into());
        }
        Ok(c)
    }

    /// Checks every value; Cinder's fix-ups are applied and returned as warnings.
    fn validate(&mut self) -> Result<Vec<String>, ConfigError> {
        let h = &self.heartbeat;
        let check = |ok: bool, msg: &str| if ok { Ok(()) } else { Err(ConfigError::Invalid(msg.to_owned())) };
        check((64..=65536).contains(&h.max_datagram), "heartbeat.max_datagram must be in 64..=65536")?;
        check((1024..=(64 << 20)).contains(&h.max_inflated), "heartbeat.max_inflated must be in 1 KiB..=64 MiB")?;
        check(h.rx_threads <= 64, "heartbeat.rx_threads must be in 0..=64")?;
        check(h.busy_poll_us <= 10_000, "heartbeat.busy_poll_us must be in 0..=10000")?;
        check(
            h.busy_poll_us == 0 || h.rx_threads == 0,
            "heartbeat.busy_poll_us applies to workers reading their own socket: it needs heartbeat.rx_threads = 0",
        )?;
        check(h.so_busy_poll_us <= 10_000, "heartbeat.so_busy_poll_us must be in 0..=10000")?;
        check(h.workers <= 1024, "heartbeat.workers must be at most 1024 (0 = one per core)")?;
        check((1..=65536).contains(&h.ring_batches), "heartbeat.ring_batches must be in 1..=65536")?;
        check((1..=4096).contains(&h.batch_packets), "heartbeat.batch_packets must be in 1..=4096")?;
        check((1..=1024).contains(&h.recv_batch), "heartbeat.recv_batch must be in 1..=1024")?;
        check((1..=65536).contains(&h.shards), "heartbeat.shards must be in 1..=65536")?;
        check(h.rcvbuf <= (1 << 30), "heartbeat.rcvbuf must be at most 1 GiB")?;
        use crate::confd::replay::{MAX_CAPACITY, MIN_CAPACITY};
        check(
            (MIN_CAPACITY..=MAX_CAPACITY).contains(&self.confd.replay_cache),
            &format!("confd.replay_cache must be in {MIN_CAPACITY}..={MAX_CAPACITY} entries"),
        )?;
        self.admin.validate().map_err(ConfigError::Invalid)?;
        if self.admin.tls_cert.is_some() != self.admin.tls_key.is_some() {
            return Err(ConfigError::AdminTls(crate::api::tls::TlsError::Incomplete));
        }
        check(
            !(self.cluster.enabled() && self.admin.tls_cert.is_some()),
            "admin.tls_cert is not supported in cluster mode yet: members send their digests to each other's \
             admin address over plain HTTP",
        )?;
        self.liveness.validate()?;
        self.cluster.validate(self.liveness.heartbeat_timeout).map_err(ConfigError::Invalid)?;
        self.failover.validate()?;
        let mut warnings = Vec::new();
        warnings.extend(self.service.validate()?);
        let r = &self.registry;
        check(
            r.world_refresh_interval.is_finite() && r.world_refresh_interval >= crate::control::MIN_INTERVAL_S,
            "registry.world_refresh_interval must be a number of seconds, at least 0.01",
        )?;
        crate::registry::Registry::new(r.types.clone())
            .map_err(|e| ConfigError::Invalid(format!("registry.types: {e}")))?;
        let s = &self.scheduler;
        check(
            s.tick_interval.is_finite() && s.tick_interval >= crate::control::MIN_INTERVAL_S,
            "scheduler.tick_interval must be a number of seconds, at least 0.01",
        )?;
        check(s.delay.is_finite() && s.delay >= 0.0, "scheduler.delay must be a non-negative number of seconds")?;
        // A bare word that is not a level parses as a target name and silently logs nothing
        // useful: every directive must be a level or `target=level`.
        let levels = ["trace", "debug", "info", "warn", "error", "off"];
        let bad = |why: String| {
            ConfigError::Invalid(format!(
                "log.level {:?} must be a level ({}) or directives such as \"info,heartsink=debug\": {why}",
                self.log.level,
                levels.join(", ")
            ))
        };
        for d in self.log.level.split(',').map(str::trim) {
            if !(d.contains('=') || levels.contains(&d.to_ascii_lowercase().as_str())) {
                return Err(bad(format!("{d:?} is neither")));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| bad(e.to_string()))?;
        Ok(warnings)
    }

    /// The keys: configured strings, then each key file's lines. No key configured at all gives
    /// the `insecure` default (the caller warns); a key file without keys is an error.
    pub fn keys(&self) -> Result<(Vec<String>, bool), ConfigError> {
        let mut keys = self.heartbeat.keys.clone();
        for f in &self.heartbeat.key_files {
            let text = crate::util::read_bounded_string(f, crate::util::MAX_KEY_FILE)
                .map_err(|e| ConfigError::Read(f.clone(), e))?;
            let before = keys.len();
            keys.extend(
                text.lines().map(|l| l.strip_suffix('\r').unwrap_or(l)).filter(|l| !l.is_empty()).map(str::to_owned),
            );
            if keys.len() == before {
                return Err(ConfigError::Invalid(format!("key file {} has no keys", f.display())));
            }
        }
        if keys.is_empty() {
            return Ok((vec![INSECURE_DEFAULT_KEY.to_owned()], true));
        }
        Ok((keys, false))
    }

    /// The reloadable settings.
    pub fn settings(&self) -> Settings {
        Settings {
            max_inflated: self.heartbeat.max_inflated,
            restart_gap_ns: self.heartbeat.restart_gap_ms.saturating_mul(1_000_000),
            max_delay_ns: self.liveness.max_delay_ns(),
        }
    }

    /// The control thread's settings.
    pub fn control(&self) -> crate::control::ControlConfig {
        crate::control::ControlConfig {
            liveness: self.liveness.clone(),
            failover: self.failover.clone(),
            lifecycle: self.service.clone(),
            data_dir: Some(self.store.data_dir.clone()),
            seed: rand::random(),
            services: self.registry.clone(),
            scheduler: self.scheduler.clone(),
            fresh_store: false,
        }
    }

    /// The confd keys: each key file's whole content; none configured gives `insecure` (the
    /// caller warns).
    pub fn confd_keys(&self) -> Result<(Vec<Vec<u8>>, bool), ConfigError> {
        if self.confd.key_files.is_empty() {
            return Ok((vec![INSECURE_DEFAULT_KEY.as_bytes().to_vec()], true));
        }
        self.confd
            .key_files
            .iter()
            .map(|f| match crate::util::read_bounded(f, crate::util::MAX_KEY_FILE) {
                Ok(k) if !k.is_empty() => Ok(k),
                Ok(_) => Err(ConfigError::Invalid(format!("confd key file {} is empty", f.display()))),
                Err(e) => Err(ConfigError::Read(f.clone(), e)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|k| (k, false))
    }

    /// The engine configuration with `keyring`.
    pub fn engine(&self, keyring: Keyring) -> EngineConfig {
        let h = &self.heartbeat;
        let d = EngineConfig::default();
        EngineConfig {
            heartbeat_addr: h.addr,
            rx_threads: h.rx_threads,
            workers: if h.workers == 0 { d.workers } else { h.workers },
            rcvbuf: h.rcvbuf,
            max_datagram: h.max_datagram,
            recv_batch: h.recv_batch,
            busy_poll_us: h.busy_poll_us,
            so_busy_poll_us: h.so_busy_poll_us,
            ring_batches: h.ring_batches,
            batch_packets: h.batch_packets,
            batch_bytes: d.batch_bytes.max(h.max_datagram),
            shards: h.shards,
            inflate: h.inflate,
            settings: self.settings(),
            keyring,
        }
    }
}

/// The keys a running daemon uses, to judge a reload ([`Validated::check_reload`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeysInUse {
    /// Heartbeat keys.
    pub keys: Vec<String>,
    /// The heartbeat keyring is the built-in `insecure` key.
    pub insecure_keys: bool,
    /// confd uses the built-in `insecure` key.
    pub insecure_confd: bool,
}

/// A configuration checked in full, with what it points at read: the only way to a running
/// daemon's settings, at start and on reload.
#[derive(Debug)]
pub struct Validated {
    /// The configuration.
    pub config: Config,
    /// Heartbeat keys, in the order they are tried.
    pub keys: Vec<String>,
    /// No heartbeat key was configured: the built-in `insecure` key is in use.
    pub insecure_keys: bool,
    /// confd keys and configuration.
    pub confd: ConfdState,
    /// No confd key file was configured: the built-in `insecure` key is in use.
    pub insecure_confd: bool,
    /// What was fixed up (Cinder's rules); log each once.
    pub warnings: Vec<String>,
    /// The admin API's tokens (empty: none configured).
    pub admin_tokens: crate::api::auth::Tokens,
    /// The admin API's certificate and key, when TLS is configured.
    pub admin_tls: Option<crate::api::tls::CertPair>,
}

/// A validation error, with the file it came from when there is one.
fn in_file(path: Option<&Path>, e: ConfigError) -> ConfigError {
    match path {
        Some(p) => ConfigError::InFile(p.to_owned(), Box::new(e)),
        None => e,
    }
}

impl Validated {
    /// Reads and checks everything: the file (or the embedded default), the flags, the key
    /// files and the confd configuration.
    pub fn load(path: Option<&Path>, o: &Overrides) -> Result<Validated, ConfigError> {
        let mut config = Config::read(path, o)?;
        let warnings = config.validate().map_err(|e| in_file(path, e))?;
        let (keys, insecure_keys) = config.keys()?;
        let (confd_keys, insecure_confd) = config.confd_keys()?;
        let mut confd =
            ConfdState::load(confd_keys.iter().map(|k| HmacKey::new(k)).collect(), config.confd.config.clone())
                .map_err(ConfigError::Confd)?;
        let c = &config.confd;
        confd.limits = crate::confd::server::ConfdLimits {
            reply: crate::confd::budget::ReplyLimits { per_source: c.reply_budget, total: c.reply_budget_total },
            replay_cache: c.replay_cache,
        };
        let admin_tokens = match &config.admin.tokens_file {
            Some(p) => crate::api::auth::Tokens::load(p).map_err(ConfigError::AdminTokens)?,
            None => crate::api::auth::Tokens::none(),
        };
        let admin_tls = match (&config.admin.tls_cert, &config.admin.tls_key) {
            (Some(c), Some(k)) => Some(crate::api::tls::CertPair::load(c, k).map_err(ConfigError::AdminTls)?),
            _ => None,
        };
        Ok(Validated { config, keys, insecure_keys, confd, insecure_confd, warnings, admin_tokens, admin_tls })
    }

    /// Whether this configuration may replace `running` on a reload. Refused: falling back to
    /// the built-in `insecure` key (heartbeat or confd) when real keys are in use, which is what
    /// an empty or truncated file written by configuration management looks like; and a
    /// heartbeat keyring that keeps none of the running keys, which would drop every sender at
    /// once (rotate in two steps: add the new key, reload, then drop the old one).
    pub fn check_reload(&self, running: &KeysInUse) -> Result<(), ConfigError> {
        let refuse = |m: String| Err(ConfigError::ReloadRefused(m));
        if self.insecure_keys && !running.insecure_keys {
            return refuse(format!(
                "it configures no heartbeat key (heartbeat.keys, heartbeat.key_files or --key) and would fall \
                 back to the built-in key \"insecure\" instead of the {} running",
                running.keys.len()
            ));
        }
        if !running.insecure_keys && !self.keys.iter().any(|k| running.keys.contains(k)) {
            return refuse(
                "it keeps none of the running heartbeat keys, so every sender would be dropped at once; rotate in \
                 two steps (add the new key, reload, then remove the old one and reload again)"
                    .into(),
            );
        }
        if self.insecure_confd && !running.insecure_confd && self.config.confd.enabled {
            return refuse(
                "it configures no confd key file (confd.key_files or --confd-key-file) and would fall back to the \
                 built-in key \"insecure\""
                    .into(),
            );
        }
        Ok(())
    }

    /// The keys this configuration puts in use (kept by the daemon to judge the next reload).
    pub fn keys_in_use(&self) -> KeysInUse {
        KeysInUse { keys: self.keys.clone(), insecure_keys: self.insecure_keys, insecure_confd: self.insecure_confd }
    }

    /// Refuses the built-in key `insecure` (Octavia's devstack default, known to anyone) on a
    /// socket other machines can reach: `heartbeat` and `confd` (`None`: not served) are the
    /// addresses the sockets bind (at start, the configured ones; on reload, the running ones). Loopback addresses are
    /// fine; `[heartbeat] allow_insecure_key` (`--allow-insecure-key`) accepts the risk.
    pub fn check_exposure(&self, heartbeat: SocketAddr, confd: Option<SocketAddr>) -> Result<(), ConfigError> {
        if self.config.heartbeat.allow_insecure_key {
            return Ok(());
        }
        let exposed = |a: SocketAddr| !a.ip().to_canonical().is_loopback();
        let refuse = |socket: &str, addr: SocketAddr, fix: &str| {
            ConfigError::Invalid(format!(
                "refusing to serve the {socket} socket on {addr} (not a loopback address) with the built-in \
                 key \"insecure\": anyone who knows Octavia's devstack default could use it. {fix}, or bind it \
                 to 127.0.0.1, or pass --allow-insecure-key ([heartbeat] allow_insecure_key = true) to accept \
                 the risk"
            ))
        };
        if self.insecure_keys && exposed(heartbeat) {
            return Err(refuse(
                "heartbeat",
                heartbeat,
                "Configure a key (--key, --key-file, [heartbeat] keys or key_files)",
            ));
        }
        match confd {
            Some(a) if self.insecure_confd && exposed(a) => {
                Err(refuse("confd", a, "Configure a key file (--confd-key-file, [confd] key_files)"))
            }
            _ => Ok(()),
        }
    }

    /// Refuses to serve the admin API on `admin` (the address it binds, checked at start; a
    /// reload can neither move it nor turn tokens off) when it is not a loopback address and no
    /// token is configured: anyone who reaches it could delete amphorae, start failovers or
    /// change the registry. `[admin] insecure` (`--admin-insecure`) accepts the risk.
    pub fn check_admin_exposure(&self, admin: SocketAddr) -> Result<(), ConfigError> {
        if self.config.admin.insecure || !self.admin_tokens.is_empty() || admin.ip().to_canonical().is_loopback() {
            return Ok(());
        }
        Err(ConfigError::Invalid(format!(
            "refusing to serve the admin API on {admin} (not a loopback address) without tokens: anyone who can \
             reach it could delete amphorae, start failovers or change the registry. Configure tokens \
             (--admin-tokens-file or [admin] tokens_file, lines `ROLE NAME TOKEN`; see the README), or bind it to \
             127.0.0.1, or pass --admin-insecure ([admin] insecure = true) to serve it without authentication"
        )))
    }

    /// The keyring of reload `generation`.
    pub fn keyring(&self, generation: u64) -> Keyring {
        Keyring::from_strs(&self.keys, generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("write");
        f
    }

    #[test]
    fn empty_and_missing_files() {
        let c = Config::load(None, &Overrides::default()).expect("default");
        assert_eq!(c.heartbeat.addr.to_string(), "127.0.0.1:5555");
        assert_eq!(c.admin.addr.to_string(), "127.0.0.1:9555");
        assert_eq!(c.keys().expect("keys"), (vec!["insecure".to_owned()], true));
        let f = write("");
        assert_eq!(Config::load(Some(f.path()), &Overrides::default()).expect("empty file"), c);
        assert!(matches!(
            Config::load(Some(Path::new("/nonexistent")), &Overrides::default()),
            Err(ConfigError::Read(..))
        ));
    }

    #[test]
    fn unknown_keys_are_named() {
        let f = write("[heartbeat]\nadress = \"127.0.0.1:1\"\n");
        let e = Config::load(Some(f.path()), &Overrides::default()).expect_err("unknown key");
        assert!(e.to_string().contains("adress"), "{e}");
    }

    #[test]
    fn flags_override_the_file() {
        let f = write("[heartbeat]\naddr = \"127.0.0.1:1\"\nkeys = [\"a\"]\nworkers = 3\n");
        let o = Overrides { keys: vec!["b".into()], workers: Some(1), ..Overrides::default() };
        let c = Config::load(Some(f.path()), &o).expect("loads");
        assert_eq!(c.heartbeat.addr.port(), 1);
        assert_eq!(c.heartbeat.workers, 1);
        assert_eq!(c.keys().expect("keys").0, vec!["b".to_owned()]);
    }

    #[test]
    fn key_files_one_key_per_line() {
        let k = write("first\r\n\nsecond key\n");
        let o = Overrides { key_files: vec![k.path().to_owned()], keys: vec!["cli".into()], ..Overrides::default() };
        let c = Config::load(None, &o).expect("loads");
        assert_eq!(c.keys().expect("keys"), (vec!["cli".into(), "first".into(), "second key".into()], false));
        let empty = write("\n");
        let o = Overrides { key_files: vec![empty.path().to_owned()], ..Overrides::default() };
        assert!(Config::load(None, &o).expect("loads").keys().is_err());
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let f = write("[heartbeat]\nmax_datagram = 70000\n");
        assert!(matches!(
            Config::load(Some(f.path()), &Overrides::default()),
            Err(ConfigError::InFile(_, e)) if matches!(*e, ConfigError::Invalid(_))
        ));
        let f = write("[liveness]\nheartbeat_timeout = -1\n");
        let e = Config::load(Some(f.path()), &Overrides::default()).expect_err("negative timeout");
        assert!(e.to_string().contains("liveness.heartbeat_timeout"), "{e}");
        assert!(e.to_string().contains(&f.path().display().to_string()), "names the file: {e}");
        let f = write("[log]\nlevel = \"garbage\"\n");
        let e = Config::load(Some(f.path()), &Overrides::default()).expect_err("bad filter");
        assert!(e.to_string().contains("log.level"), "{e}");
    }

    #[test]
    fn score_expressions_are_compiled_before_anything_binds() {
        let f = write("[[registry.types]]\nname = \"x\"\nscore_expr = \"((\"\n");
        let e = Config::load(Some(f.path()), &Overrides::default()).expect_err("bad expression");
        assert!(e.to_string().contains("registry.types"), "{e}");
    }

    #[test]
    fn a_reload_never_falls_back_to_the_insecure_key_nor_drops_every_key() {
        let keys = write("k1\nk2\n");
        let o = Overrides { key_files: vec![keys.path().to_owned()], ..Overrides::default() };
        let running = Validated::load(None, &o).expect("running").keys_in_use();
        let empty = write("");
        let truncated = Validated::load(Some(empty.path()), &Overrides::default()).expect("an empty file loads");
        let e = truncated.check_reload(&running).expect_err("falls back to insecure");
        assert!(e.to_string().contains("insecure"), "{e}");
        let o = Overrides { keys: vec!["k9".into()], ..Overrides::default() };
        let e = Validated::load(None, &o).expect("loads").check_reload(&running).expect_err("drops every key");
        assert!(e.to_string().contains("none of the running heartbeat keys"), "{e}");
        let o = Overrides { keys: vec!["k2".into(), "k3".into()], ..Overrides::default() };
        assert!(Validated::load(None, &o).expect("loads").check_reload(&running).is_ok(), "a rotation keeps one");
        let insecure = Validated::load(None, &Overrides::default()).expect("default");
        let keys = Validated::load(None, &Overrides { keys: vec!["k".into()], ..Overrides::default() }).expect("keys");
        assert!(keys.check_reload(&insecure.keys_in_use()).is_ok(), "adding keys to an insecure daemon is fine");
    }

    #[test]
    fn admin_tokens_tls_and_the_safe_default() {
        let loopback: SocketAddr = "127.0.0.1:9555".parse().expect("addr");
        let public: SocketAddr = "0.0.0.0:9555".parse().expect("addr");
        let open = Validated::load(None, &Overrides::default()).expect("default");
        assert!(open.admin_tokens.is_empty() && open.admin_tls.is_none());
        assert!(open.check_admin_exposure(loopback).is_ok());
        let e = open.check_admin_exposure(public).expect_err("public without tokens");
        assert!(e.to_string().contains("--admin-insecure"), "{e}");
        let insecure = Overrides { admin_insecure: true, ..Overrides::default() };
        assert!(Validated::load(None, &insecure).expect("loads").check_admin_exposure(public).is_ok());
        let tokens = write("admin ops 0123456789abcdef0123\n");
        let o = Overrides { admin_tokens_file: Some(tokens.path().to_owned()), ..Overrides::default() };
        let v = Validated::load(None, &o).expect("tokens");
        assert_eq!(v.admin_tokens.len(), 1);
        assert!(v.check_admin_exposure(public).is_ok());
        let bad = write("admin ops\n");
        let o = Overrides { admin_tokens_file: Some(bad.path().to_owned()), ..Overrides::default() };
        let e = Validated::load(None, &o).expect_err("malformed");
        assert!(matches!(e, ConfigError::AdminTokens(_)) && e.to_string().contains("line 1"), "{e}");
        let half = write("[admin]\ntls_cert = \"/nonexistent\"\n");
        let e = Validated::load(Some(half.path()), &Overrides::default()).expect_err("no key");
        assert!(e.to_string().contains("both tls_cert and tls_key"), "{e}");
        let cluster = write(
            "[admin]\ntls_cert = \"c\"\ntls_key = \"k\"\n[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nnode = \"a\"\n",
        );
        let e = Validated::load(Some(cluster.path()), &Overrides::default()).expect_err("cluster and TLS");
        assert!(e.to_string().contains("cluster mode"), "{e}");
        let mut changed = open.config.admin.clone();
        changed.tokens_file = Some("t".into());
        changed.metrics_auth = true;
        assert_eq!(changed.restart_part(), open.config.admin.restart_part(), "tokens reload without a restart");
        changed.tls_cert = Some("c".into());
        assert_ne!(changed.restart_part(), open.config.admin.restart_part(), "TLS on needs a restart");
    }

    #[test]
    fn services_is_the_former_name_of_registry() {
        let f = write("[services]\nworld_refresh_interval = 7.0\n");
        let c = Config::load(Some(f.path()), &Overrides::default()).expect("alias");
        assert_eq!(c.registry.world_refresh_interval, 7.0);
    }

    #[test]
    fn service_down_time_is_fixed_up_with_a_warning() {
        let f = write("[service]\nreport_interval = 10.0\nservice_down_time = 5.0\n");
        let v = Validated::load(Some(f.path()), &Overrides::default()).expect("loads");
        assert_eq!(v.config.service.service_down_time, 25.0);
        assert_eq!(v.warnings.len(), 1, "{:?}", v.warnings);
    }
}
