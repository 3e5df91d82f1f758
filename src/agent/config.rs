//! The agent's TOML configuration.
//!
//! ```toml
//! sinks = ["127.0.0.1:5555"]      # where heartbeats go (UDP), default 127.0.0.1:5555
//! key = "secret"                  # heartbeat HMAC key, or key_file = "/etc/heartsink/key"
//!                                 # (its first non-empty line); neither: "insecure", with a warning
//! rise = 1                        # results in a row to go up, 1..=64
//! fall = 1                        # results in a row to go down, 1..=64
//! check_interval = 1.0            # seconds between rounds
//! timeout = 5.0                   # per-check timeout, seconds
//! deregister_on_exit = true       # a final tag.up=false heartbeat on SIGTERM/SIGINT
//!
//! [log]                           # as for `heartsink serve`
//! level = "info"
//! format = "text"
//!
//! [[service]]
//! type = "rawx"                   # required: 1–64 bytes of [a-z0-9_-]
//! host = "127.0.0.1"              # required: an IP address
//! port = 6000                     # required: 1..=65535
//! location = "dc1.rack1.host1.vol1"   # → tag.loc
//! slots = ["rawx-ssd", "rawx-even"]   # → tag.slots = "rawx-ssd,rawx-even"
//! service_id = "rawx-1"               # → the message's "id" (≤ 36 characters)
//! # rise, fall, check_interval, timeout, deregister_on_exit: override the global values
//! checks = [{type = "tcp"}, {type = "http", uri = "/status", timeout = 2.0, rise = 2, fall = 3}]
//! stats = [{type = "system"}, {type = "volume", path = "/var/lib/rawx"},
//!          {type = "static", stats = {"stat.x" = 1}, tags = {"tag.vol" = "/var/lib/rawx"}}]
//! ```
//!
//! Error rules (reference §3.1): the file's schema is checked first, and any fault there (an
//! unknown key, a wrong type, an unknown check or stat type, a static stat not named `stat.*`
//! or a static tag not named `tag.*`) or in a global value is a [`AgentConfigError`]: the agent
//! does not start. A `[[service]]` entry that parses but cannot be watched (a missing `type`,
//! `host` or `port`, a host that is not an IP address, a bad type, id or location, a rise or fall
//! out of range) fails that watcher only: it is reported in [`AgentConfig::rejected`] and the
//! others run. Two entries with the same `host:port` are both rejected.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::LogConfig;
use crate::proto::keyring::INSECURE_DEFAULT_KEY;
use crate::proto::service::{TagValue, MAX_ID_CHARS, MAX_TAG_STR, MAX_TYPE_LEN};

/// Largest `rise` or `fall`: the history of a check is a 64-bit shift register.
pub const MAX_RISE_FALL: u32 = 64;

/// Why the agent's configuration cannot be used at all.
#[derive(Debug)]
#[non_exhaustive]
pub enum AgentConfigError {
    /// The configuration file or the key file could not be read.
    Read(PathBuf, std::io::Error),
    /// The file is not valid TOML for this schema (unknown key, wrong type, unknown check or stat
    /// type); the message names the key and line.
    Parse(PathBuf, Box<toml::de::Error>),
    /// A global value is out of range or inconsistent (no sink, a bad rise, fall, interval or
    /// timeout, a bad key), or a static stat or tag is misnamed; the message says which and why.
    Invalid(String),
}

impl std::fmt::Display for AgentConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentConfigError::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            AgentConfigError::Parse(p, e) => write!(f, "invalid agent configuration in {}: {e}", p.display()),
            AgentConfigError::Invalid(m) => write!(f, "invalid agent configuration: {m}"),
        }
    }
}

impl std::error::Error for AgentConfigError {}

/// What a check probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connect to the service address succeeds.
    Tcp,
    /// `GET http://addr{uri}` answers 200 (redirects are not followed).
    Http {
        /// Path and query, starting with `/`.
        uri: String,
    },
}

/// One check of a service, with its settings resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckConfig {
    /// What to probe.
    pub kind: CheckKind,
    /// Longest a probe may take; longer counts as a failure.
    pub timeout: Duration,
    /// Successes in a row to go up.
    pub rise: u32,
    /// Failures in a row to go down.
    pub fall: u32,
}

/// One stat collector of a service.
#[derive(Clone, Debug, PartialEq)]
pub enum StatConfig {
    /// `stat.cpu`: CPU idle percent over the last interval (`/proc/stat`).
    System,
    /// `stat.io` (I/O idle percent of the path's device, `/proc/diskstats`; 100 when the
    /// device is unknown), `stat.space` (free percent of its filesystem), `tag.vol` (the path).
    Volume {
        /// A path on the volume.
        path: PathBuf,
    },
    /// Fixed tags and stats.
    Static {
        /// `(name, value)` pairs, `stat.*` then `tag.*`.
        tags: Vec<(String, TagValue)>,
    },
}

/// One watched service, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceConfig {
    /// Service type.
    pub kind: String,
    /// `host:port`.
    pub addr: SocketAddr,
    /// Logical id, sent as the message's `id`.
    pub service_id: Option<String>,
    /// `tag.loc`.
    pub location: Option<String>,
    /// `tag.slots`, comma-joined.
    pub slots: Vec<String>,
    /// Seconds between rounds.
    pub check_interval: Duration,
    /// Send a final `tag.up=false` heartbeat on a graceful exit.
    pub deregister_on_exit: bool,
    /// Checks, in order (the first failure short-circuits the rest).
    pub checks: Vec<CheckConfig>,
    /// Stat collectors, run while the service is up.
    pub stats: Vec<StatConfig>,
}

/// A `[[service]]` entry that cannot be watched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Position in the file, from 0.
    pub index: usize,
    /// `type@host:port` as far as known.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// UDP destinations of every heartbeat.
    pub sinks: Vec<SocketAddr>,
    /// The heartbeat key's bytes.
    pub key: Vec<u8>,
    /// True when no key was configured and the insecure default is used.
    pub insecure_key: bool,
    /// Logging.
    pub log: LogConfig,
    /// The services to watch.
    pub services: Vec<ServiceConfig>,
    /// The entries that fail (each one's watcher only).
    pub rejected: Vec<Rejected>,
}

fn default_sinks() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 5555))]
}
fn one() -> u32 {
    1
}
fn one_second() -> f64 {
    1.0
}
fn five_seconds() -> f64 {
    5.0
}
fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default = "default_sinks")]
    sinks: Vec<SocketAddr>,
    key: Option<String>,
    key_file: Option<PathBuf>,
    #[serde(default = "one")]
    rise: u32,
    #[serde(default = "one")]
    fall: u32,
    #[serde(default = "one_second")]
    check_interval: f64,
    #[serde(default = "five_seconds")]
    timeout: f64,
    #[serde(default = "yes")]
    deregister_on_exit: bool,
    #[serde(default)]
    log: LogConfig,
    #[serde(default, rename = "service")]
    services: Vec<ServiceFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    location: Option<String>,
    #[serde(default)]
    slots: Vec<String>,
    service_id: Option<String>,
    rise: Option<u32>,
    fall: Option<u32>,
    check_interval: Option<f64>,
    timeout: Option<f64>,
    deregister_on_exit: Option<bool>,
    #[serde(default)]
    checks: Vec<CheckFile>,
    #[serde(default)]
    stats: Vec<StatFile>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum CheckFile {
    Tcp { timeout: Option<f64>, rise: Option<u32>, fall: Option<u32> },
    Http { uri: String, timeout: Option<f64>, rise: Option<u32>, fall: Option<u32> },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum StatFile {
    System {},
    Volume {
        path: PathBuf,
    },
    Static {
        #[serde(default)]
        stats: toml::Table,
        #[serde(default)]
        tags: toml::Table,
    },
}

fn seconds(what: &str, v: f64) -> Result<Duration, String> {
    if v.is_finite() && v > 0.0 && v <= 86_400.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!("{what} must be a number of seconds in (0, 86400], not {v}"))
    }
}

fn rise_fall(what: &str, v: u32) -> Result<u32, String> {
    if (1..=MAX_RISE_FALL).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{what} must be in 1..={MAX_RISE_FALL}, not {v}"))
    }
}

fn tag_value(name: &str, v: &toml::Value) -> Result<TagValue, String> {
    Ok(match v {
        toml::Value::Integer(i) => TagValue::Int(*i),
        toml::Value::Float(f) if f.is_finite() => TagValue::Float(*f),
        toml::Value::Boolean(b) => TagValue::Bool(*b),
        toml::Value::String(s) if s.len() <= MAX_TAG_STR => TagValue::Str(s.clone()),
        _ => {
            return Err(format!(
                "static {name}: a value must be an integer, a finite float, a boolean or a short string"
            ))
        }
    })
}

fn static_tags(stats: &toml::Table, tags: &toml::Table) -> Result<Vec<(String, TagValue)>, String> {
    let mut out = Vec::new();
    for (prefix, table) in [("stat.", stats), ("tag.", tags)] {
        for (name, v) in table {
            if name.len() <= prefix.len() || !name.starts_with(prefix) {
                return Err(format!("static {name:?}: names in this table must start with {prefix:?}"));
            }
            let value = tag_value(name, v)?;
            if prefix == "stat." && value.as_f64().is_none() {
                return Err(format!("static {name}: a stat must be a number"));
            }
            if name == "tag.up" {
                return Err("static tag.up: set by the checks, not configurable".to_owned());
            }
            out.push((name.clone(), value));
        }
    }
    Ok(out)
}

struct Globals {
    rise: u32,
    fall: u32,
    check_interval: f64,
    timeout: f64,
    deregister_on_exit: bool,
}

fn service(s: ServiceFile, g: &Globals) -> Result<ServiceConfig, String> {
    let kind = s.kind.ok_or("missing required key `type`")?;
    let host = s.host.ok_or("missing required key `host`")?;
    let port = s.port.ok_or("missing required key `port`")?;
    if kind.is_empty()
        || kind.len() > MAX_TYPE_LEN
        || !kind.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
    {
        return Err(format!("type {kind:?} must be 1-{MAX_TYPE_LEN} characters of [a-z0-9_-]"));
    }
    let ip: IpAddr = host.parse().map_err(|_| format!("host {host:?} must be an IP address"))?;
    if ip.is_unspecified() || port == 0 {
        return Err(format!("{host}:{port} is not a usable service address"));
    }
    if let Some(id) = &s.service_id {
        if id.is_empty() || id.chars().count() > MAX_ID_CHARS || id.chars().any(char::is_control) {
            return Err(format!("service_id {id:?} must be 1-{MAX_ID_CHARS} characters"));
        }
    }
    if let Some(loc) = &s.location {
        if loc.is_empty() || loc.len() > MAX_TAG_STR {
            return Err("location must be 1-1024 bytes".to_owned());
        }
    }
    if s.slots.iter().any(|x| x.is_empty() || x.contains(',')) || s.slots.join(",").len() > MAX_TAG_STR {
        return Err("slots must be non-empty names without commas (1024 bytes in all)".to_owned());
    }
    let rise = rise_fall("rise", s.rise.unwrap_or(g.rise))?;
    let fall = rise_fall("fall", s.fall.unwrap_or(g.fall))?;
    let timeout = s.timeout.unwrap_or(g.timeout);
    let mut checks = Vec::with_capacity(s.checks.len());
    for c in s.checks {
        let (kind, t, r, f) = match c {
            CheckFile::Tcp { timeout, rise, fall } => (CheckKind::Tcp, timeout, rise, fall),
            CheckFile::Http { uri, timeout, rise, fall } => {
                if !uri.starts_with('/') || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(format!("http check uri {uri:?} must start with / and hold no spaces"));
                }
                (CheckKind::Http { uri }, timeout, rise, fall)
            }
        };
        checks.push(CheckConfig {
            kind,
            timeout: seconds("check timeout", t.unwrap_or(timeout))?,
            rise: rise_fall("check rise", r.unwrap_or(rise))?,
            fall: rise_fall("check fall", f.unwrap_or(fall))?,
        });
    }
    let mut stats = Vec::with_capacity(s.stats.len());
    for st in s.stats {
        stats.push(match st {
            StatFile::System {} => StatConfig::System,
            StatFile::Volume { path } => {
                // The path is sent as tag.vol.
                if path.as_os_str().is_empty() || path.display().to_string().len() > MAX_TAG_STR {
                    return Err("volume path must be 1-1024 bytes".to_owned());
                }
                StatConfig::Volume { path }
            }
            // Already checked when the file was read (a fault there fails the whole file).
            StatFile::Static { stats, tags } => StatConfig::Static { tags: static_tags(&stats, &tags)? },
        });
    }
    Ok(ServiceConfig {
        kind,
        addr: SocketAddr::new(ip, port),
        service_id: s.service_id,
        location: s.location,
        slots: s.slots,
        check_interval: seconds("check_interval", s.check_interval.unwrap_or(g.check_interval))?,
        deregister_on_exit: s.deregister_on_exit.unwrap_or(g.deregister_on_exit),
        checks,
        stats,
    })
}

fn first_key_line(text: &str) -> Option<&str> {
    text.lines().map(|l| l.strip_suffix('\r').unwrap_or(l)).find(|l| !l.is_empty())
}

impl AgentConfig {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<AgentConfig, AgentConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| AgentConfigError::Read(path.to_owned(), e))?;
        AgentConfig::parse(&text, path)
    }

    /// Validates configuration text (`path` names it in errors and anchors nothing else).
    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, AgentConfigError> {
        let f: FileConfig = toml::from_str(text).map_err(|e| AgentConfigError::Parse(path.to_owned(), Box::new(e)))?;
        let invalid = AgentConfigError::Invalid;
        // Schema-level faults of the static collectors fail the whole file.
        for s in &f.services {
            for st in &s.stats {
                if let StatFile::Static { stats, tags } = st {
                    static_tags(stats, tags).map_err(invalid)?;
                }
            }
        }
        if f.sinks.is_empty() {
            return Err(invalid("sinks must name at least one ip:port".to_owned()));
        }
        rise_fall("rise", f.rise).map_err(invalid)?;
        rise_fall("fall", f.fall).map_err(invalid)?;
        seconds("check_interval", f.check_interval).map_err(invalid)?;
        seconds("timeout", f.timeout).map_err(invalid)?;
        let (key, insecure_key) = match (f.key, &f.key_file) {
            (Some(_), Some(_)) => return Err(invalid("give key or key_file, not both".to_owned())),
            (Some(k), None) if k.is_empty() => return Err(invalid("key is empty".to_owned())),
            (Some(k), None) => (k.into_bytes(), false),
            (None, Some(p)) => {
                let text = std::fs::read_to_string(p).map_err(|e| AgentConfigError::Read(p.clone(), e))?;
                let k = first_key_line(&text).ok_or_else(|| invalid(format!("key file {} has no key", p.display())))?;
                (k.as_bytes().to_vec(), false)
            }
            (None, None) => (INSECURE_DEFAULT_KEY.as_bytes().to_vec(), true),
        };
        let g = Globals {
            rise: f.rise,
            fall: f.fall,
            check_interval: f.check_interval,
            timeout: f.timeout,
            deregister_on_exit: f.deregister_on_exit,
        };
        let mut rejected = Vec::new();
        let mut services: Vec<(usize, ServiceConfig)> = Vec::new();
        for (index, s) in f.services.into_iter().enumerate() {
            let name = format!(
                "{}@{}:{}",
                s.kind.as_deref().unwrap_or("?"),
                s.host.as_deref().unwrap_or("?"),
                s.port.map_or_else(|| "?".to_owned(), |p| p.to_string())
            );
            match service(s, &g) {
                Ok(svc) => services.push((index, svc)),
                Err(reason) => rejected.push(Rejected { index, name, reason }),
            }
        }
        // Two services on one address: both are dropped (reference §3.1, [HEAD]).
        let mut kept = Vec::with_capacity(services.len());
        for (i, (index, svc)) in services.iter().enumerate() {
            let clash = services.iter().enumerate().any(|(j, (_, o))| i != j && o.addr == svc.addr);
            if clash {
                rejected.push(Rejected {
                    index: *index,
                    name: format!("{}@{}", svc.kind, svc.addr),
                    reason: format!("another service is also configured on {}", svc.addr),
                });
            } else {
                kept.push(svc.clone());
            }
        }
        rejected.sort_by_key(|r| r.index);
        Ok(AgentConfig { sinks: f.sinks, key, insecure_key, log: f.log, services: kept, rejected })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, AgentConfigError> {
        AgentConfig::parse(text, Path::new("agent.toml"))
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("must fail").to_string()
    }

    #[test]
    fn defaults() {
        let c = parse("").expect("empty file");
        assert_eq!(c.sinks, default_sinks());
        assert_eq!((c.key.as_slice(), c.insecure_key), (&b"insecure"[..], true));
        assert!(c.services.is_empty() && c.rejected.is_empty());
        let c = parse("[[service]]\ntype = \"rawx\"\nhost = \"127.0.0.1\"\nport = 6000\n").expect("one service");
        let s = &c.services[0];
        assert_eq!(s.addr, "127.0.0.1:6000".parse().unwrap());
        assert_eq!(s.check_interval, Duration::from_secs(1));
        assert!(s.deregister_on_exit);
        assert!(s.checks.is_empty() && s.stats.is_empty());
    }

    #[test]
    fn full_example_and_overrides() {
        let c = parse(
            r#"
            sinks = ["127.0.0.1:5555", "[::1]:5556"]
            key = "k"
            rise = 2
            fall = 3
            check_interval = 0.5
            timeout = 2.0
            deregister_on_exit = false
            [log]
            level = "debug"
            [[service]]
            type = "rawx"
            host = "::1"
            port = 6000
            location = "dc1.rack1"
            slots = ["rawx-ssd", "rawx-even"]
            service_id = "rawx-1"
            fall = 4
            checks = [{type = "tcp"}, {type = "http", uri = "/status", timeout = 0.25, rise = 5}]
            stats = [{type = "system"}, {type = "volume", path = "/tmp"},
                     {type = "static", stats = {"stat.x" = 1.5}, tags = {"tag.vol" = "/x", "tag.n" = 3}}]
            "#,
        )
        .expect("parses");
        assert_eq!(c.sinks.len(), 2);
        assert_eq!((c.key.as_slice(), c.insecure_key), (&b"k"[..], false));
        let s = &c.services[0];
        assert_eq!(s.addr, "[::1]:6000".parse().unwrap());
        assert_eq!(s.check_interval, Duration::from_millis(500));
        assert!(!s.deregister_on_exit);
        assert_eq!(
            s.checks[0],
            CheckConfig { kind: CheckKind::Tcp, timeout: Duration::from_secs(2), rise: 2, fall: 4 }
        );
        assert_eq!(
            s.checks[1],
            CheckConfig {
                kind: CheckKind::Http { uri: "/status".into() },
                timeout: Duration::from_millis(250),
                rise: 5,
                fall: 4
            }
        );
        assert_eq!(s.stats[0], StatConfig::System);
        assert_eq!(s.stats[1], StatConfig::Volume { path: "/tmp".into() });
        let StatConfig::Static { tags } = &s.stats[2] else { panic!("static") };
        assert!(tags.contains(&("stat.x".into(), TagValue::Float(1.5))));
        assert!(tags.contains(&("tag.n".into(), TagValue::Int(3))));
    }

    #[test]
    fn missing_required_key_fails_that_service_only() {
        let c = parse(
            r#"
            [[service]]
            type = "rawx"
            host = "127.0.0.1"
            [[service]]
            type = "rawx"
            host = "127.0.0.1"
            port = 6001
            [[service]]
            host = "127.0.0.1"
            port = 6002
            [[service]]
            type = "rawx"
            host = "localhost"
            port = 6003
            [[service]]
            type = "rawx"
            host = "127.0.0.1"
            port = 6004
            rise = 0
            "#,
        )
        .expect("parses");
        assert_eq!(c.services.len(), 1);
        assert_eq!(c.services[0].addr.port(), 6001);
        let r: Vec<(usize, &str)> = c.rejected.iter().map(|r| (r.index, r.reason.as_str())).collect();
        assert_eq!(r.len(), 4);
        assert_eq!(r[0], (0, "missing required key `port`"));
        assert_eq!(r[1], (2, "missing required key `type`"));
        assert!(r[2].1.contains("IP address"), "{r:?}");
        assert!(r[3].1.contains("rise"), "{r:?}");
        assert_eq!(c.rejected[0].name, "rawx@127.0.0.1:?");
    }

    #[test]
    fn same_address_drops_both() {
        let c = parse(
            r#"
            [[service]]
            type = "rawx"
            host = "127.0.0.1"
            port = 6000
            [[service]]
            type = "meta2"
            host = "127.0.0.1"
            port = 6000
            [[service]]
            type = "rawx"
            host = "127.0.0.1"
            port = 6001
            "#,
        )
        .expect("parses");
        assert_eq!(c.services.len(), 1);
        assert_eq!(c.services[0].addr.port(), 6001);
        assert_eq!(c.rejected.iter().map(|r| r.index).collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn config_errors() {
        let svc = "[[service]]\ntype = \"rawx\"\nhost = \"127.0.0.1\"\nport = 6000\n";
        assert!(err(&format!("{svc}checks = [{{type = \"asn1\"}}]")).contains("asn1"));
        assert!(err(&format!("{svc}checks = [{{type = \"http\"}}]")).contains("uri"));
        assert!(err(&format!("{svc}checks = [{{type = \"tcp\", uri = \"/\"}}]")).contains("uri"));
        assert!(err(&format!("{svc}stats = [{{type = \"disk\"}}]")).contains("disk"));
        assert!(err(&format!("{svc}stats = [{{type = \"static\", stats = {{\"cpu\" = 1}}}}]")).contains("stat."));
        assert!(
            err(&format!("{svc}stats = [{{type = \"static\", stats = {{\"stat.x\" = \"a\"}}}}]")).contains("number")
        );
        assert!(err(&format!("{svc}stats = [{{type = \"static\", tags = {{\"tag.x\" = [1]}}}}]")).contains("tag.x"));
        assert!(err(&format!("{svc}stats = [{{type = \"static\", tags = {{\"tag.up\" = true}}}}]")).contains("tag.up"));
        assert!(err(&format!("{svc}colour = 1")).contains("colour"));
        assert!(err("colour = 1").contains("colour"));
        assert!(err("sinks = []").contains("sinks"));
        assert!(err("sinks = [\"localhost:5555\"]").contains("sinks"));
        assert!(err("rise = 0").contains("rise"));
        assert!(err("fall = 65").contains("fall"));
        assert!(err("check_interval = 0").contains("check_interval"));
        assert!(err("timeout = -1.0").contains("timeout"));
        assert!(err("key = \"a\"\nkey_file = \"/x\"").contains("not both"));
        assert!(err("key = \"\"").contains("empty"));
        assert!(err("key_file = \"/nonexistent/heartsink.key\"").contains("cannot read"));
    }

    #[test]
    fn key_file_first_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("key");
        std::fs::write(&p, "\r\nsecret\r\nold\n").expect("write");
        let c = parse(&format!("key_file = {:?}", p.display().to_string())).expect("parses");
        assert_eq!((c.key.as_slice(), c.insecure_key), (&b"secret"[..], false));
        std::fs::write(&p, "\n\n").expect("write");
        assert!(err(&format!("key_file = {:?}", p.display().to_string())).contains("no key"));
    }
}
