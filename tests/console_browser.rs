//! The status page in a real browser (issue 15): the real `heartsink serve` on loopback with
//! read and admin tokens, a `heartsink load` fleet of which a part stops, and Debian's headless
//! Chromium driven over WebDriver by Selenium (tests/browser/console.py, which reports what each
//! view shows). Asserted here: the page's counts are the API's, the stale filter shows exactly
//! the stopped amphorae, the detail view shows the listeners, the charts have data on the first
//! load, a read token is offered no admin action and an admin token is; a screenshot of each
//! view is written under target/screenshots/.
//!
//! `#[ignore]`d: it needs the browser, installed by scripts/setup-browser.sh; scripts/test runs
//! it with the paths that script prints (HEARTSINK_BROWSER_PYTHON, HEARTSINK_CHROMIUM,
//! HEARTSINK_CHROMEDRIVER).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{wait_until, Daemon};
use serde_json::{json, Value};

const KEY: &str = "console-key";
const ADMIN: &str = "console-admin-token-0123456789";
const READ: &str = "console-read-token-0123456789";

fn env_path(var: &str, default: &str) -> PathBuf {
    let p = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(p.exists(), "{} is missing ({var}): run scripts/setup-browser.sh", p.display());
    p
}

/// A `heartsink load` child; killed on drop.
struct Fleet(Child);

impl Fleet {
    fn start(d: &Daemon, amphorae: u64, rate: &str, seconds: f64, seed: u64) -> Fleet {
        let child = Command::new(env!("CARGO_BIN_EXE_heartsink"))
            .args(["load", "--target", &d.heartbeat.to_string(), "--key", KEY])
            .args(["--amphorae", &amphorae.to_string(), "--rate", rate])
            .args(["--duration", &seconds.to_string(), "--seed", &seed.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Fleet(child)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every amphora id, through the list's pages.
fn ids(d: &Daemon, filter: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let path = match &marker {
            Some(m) => format!("/v1/amphorae?limit=7&{filter}&marker={m}"),
            None => format!("/v1/amphorae?limit=7&{filter}"),
        };
        let (code, page) = d.get(&path);
        assert_eq!(code, 200, "{path}: {page}");
        out.extend(page["amphorae"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_owned()));
        match page["next_marker"].as_str() {
            Some(m) => marker = Some(m.to_owned()),
            None => return out,
        }
    }
}

fn start(dir: &Path) -> Daemon {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("admin ops {ADMIN}\nread viewer {READ}\n")).unwrap();
    let cfg = dir.join("heartsink.toml");
    std::fs::write(
        &cfg,
        "[liveness]\nheartbeat_timeout = 3.0\nhealth_check_interval = 0.5\nheartbeat_interval = 1.0\n\
         startup_grace = 1.0\n\n[[registry.types]]\nname = \"echo\"\nscore_expr = \"100\"\n\
         lock_at_first_register = false\n",
    )
    .unwrap();
    Daemon::start(&["--config", cfg.to_str().unwrap(), "--key", KEY, "--admin-tokens-file", tokens.to_str().unwrap()])
        .with_token(ADMIN)
}

#[test]
#[ignore = "needs Chromium, its driver and Selenium: scripts/setup-browser.sh (scripts/test runs it)"]
fn the_status_page_shows_what_the_api_says_in_a_real_browser() {
    let python =
        env_path("HEARTSINK_BROWSER_PYTHON", concat!(env!("CARGO_MANIFEST_DIR"), "/target/peers/browser/bin/python"));
    let chromium = env_path("HEARTSINK_CHROMIUM", "/usr/bin/chromium");
    let driver = env_path("HEARTSINK_CHROMEDRIVER", "/usr/bin/chromedriver");
    let shots = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/screenshots"));
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path());

    // Fleet A keeps beating; fleet B (5 amphorae) stops after 3 s and goes stale.
    let _a = Fleet::start(&d, 30, "60", 120.0, 1);
    let a_ids: BTreeSet<String> = wait_until("fleet A known", Duration::from_secs(10), || {
        let s: BTreeSet<String> = ids(&d, "").into_iter().collect();
        (s.len() == 30).then_some(s)
    });
    let _b = Fleet::start(&d, 5, "10", 3.0, 2);
    let all: BTreeSet<String> = wait_until("fleet B known", Duration::from_secs(10), || {
        let s: BTreeSet<String> = ids(&d, "").into_iter().collect();
        (s.len() == 35).then_some(s)
    });
    let stopped: BTreeSet<String> = all.difference(&a_ids).cloned().collect();
    wait_until("fleet B stale", Duration::from_secs(20), || {
        let s: BTreeSet<String> = ids(&d, "liveness=stale").into_iter().collect();
        (s == stopped).then_some(())
    });
    // Two services, for the services view and its lock action.
    let (code, _, body) = d.request(
        "POST",
        "/v1/services",
        Some(ADMIN),
        Some(
            &json!([{"type": "echo", "addr": "127.0.0.1:7001"}, {"type": "echo", "addr": "127.0.0.1:7002"}])
                .to_string(),
        ),
    );
    assert_eq!(code, 200, "{body}");
    // The history holds a few samples before the page first loads.
    wait_until("history samples", Duration::from_secs(10), || {
        let (_, h) = d.get("/v1/history");
        (h["samples"].as_array().unwrap().len() >= 3).then_some(())
    });

    let started = Instant::now();
    let out = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/console.py"))
        .env("HEARTSINK_URL", format!("http://{}", d.admin))
        .env("HEARTSINK_READ_TOKEN", READ)
        .env("HEARTSINK_ADMIN_TOKEN", ADMIN)
        .env("HEARTSINK_CHROMIUM", &chromium)
        .env("HEARTSINK_CHROMEDRIVER", &driver)
        .env("HEARTSINK_SCREENSHOTS", &shots)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "console.py failed after {:?}: {stderr}", started.elapsed());
    let page: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    eprintln!("the page showed: {page:#}");

    // Without a token the page asks for one; with the read token it says so.
    assert_eq!(page["asked_for_token"], true);
    assert!(page["role_shown"].as_str().unwrap().contains("read"), "{}", page["role_shown"]);

    // The overview's counts are the API's (the fleet is steady: A alive, B stale).
    let stats = d.stats();
    let census = &stats["liveness"]["census"];
    let ov = &page["overview"];
    assert_eq!(ov["tracked"], stats["liveness"]["tracked"]);
    assert_eq!(ov["tracked"], 35);
    assert_eq!(ov["stale"], census["by_liveness"]["stale"]);
    assert_eq!(ov["stale"], stopped.len());
    assert_eq!(ov["alive"], census["by_liveness"]["alive"]);
    assert_eq!(ov["unhealthy"], census["unhealthy"]);
    assert_eq!(ov["by_status"], census["by_status"]);
    // The same census in the metrics.
    let metrics = d.get_text("/metrics");
    let metric = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {metrics}"));
        line[name.len()..].trim().parse().unwrap()
    };
    assert_eq!(metric("heartsink_amphorae_by_status{status=\"ONLINE\",liveness=\"stale\"} "), stopped.len() as f64);
    assert_eq!(metric("heartsink_amphorae_unhealthy "), stopped.len() as f64);
    assert_eq!(ov["keys"].as_array().unwrap().len(), stats["keys"]["fingerprints"].as_array().unwrap().len());
    // The charts drew the history on the first load.
    for c in ["chart-ingest", "chart-drops", "chart-p99"] {
        assert!(ov["charts"][c].as_u64().unwrap() >= 3, "{c} has no data: {ov}");
    }
    assert!(ov["polylines"].as_u64().unwrap() >= 1);

    // Live refresh every 2 s, and the page was never reloaded.
    assert!(page["refreshes_in_5_s"].as_u64().unwrap() >= 2, "{}", page["refreshes_in_5_s"]);
    assert_eq!(page["never_reloaded"], true);

    // The list puts the stale ones first; the stale filter shows exactly the stopped ones.
    let list: Vec<String> = page["list"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    assert_eq!(list.len(), 35);
    let first: BTreeSet<String> = list[..stopped.len()].iter().cloned().collect();
    assert_eq!(first, stopped, "unhealthy first");
    let api_list = ids(&d, "unhealthy_first=1");
    assert_eq!(list, api_list, "the page's order is the API's");
    let stale: BTreeSet<String> =
        page["stale_filter"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    assert_eq!(stale, stopped);

    // The detail view of a stopped one shows its listeners and its transition to stale.
    let detail = &page["detail"];
    let id = detail["id"].as_str().unwrap();
    assert!(stopped.contains(id));
    let (_, a) = d.get(&format!("/v1/amphorae/{id}"));
    let listeners: Vec<&str> = a["listeners"].as_array().unwrap().iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert!(!listeners.is_empty());
    assert_eq!(
        detail["listeners"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect::<Vec<_>>(),
        listeners
    );
    assert!(detail["members"].as_u64().unwrap() >= 1);
    assert!(a["recent_transitions"].as_array().unwrap().iter().any(|t| t["to"] == "stale"), "{a}");
    assert!(detail["transitions"].as_u64().unwrap() >= 3, "the stale transition is shown");
    assert!(detail["summary"].as_str().unwrap().contains(&a["seq"].to_string()));

    // Read: no admin action anywhere; admin: failover and forget, and the services' locks.
    assert_eq!(page["read_admin_actions"], 0);
    for view in ["failovers", "services", "volumes"] {
        assert_eq!(page[format!("read_actions_{view}")], 0, "{view}");
    }
    assert!(page["admin_role_shown"].as_str().unwrap().contains("admin"));
    let actions: Vec<&str> = page["admin_actions"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(actions, ["Fail over…", "Forget…"]);
    assert_eq!(page["admin_actions_services"], 2);
    // Each action asks first: a forget not confirmed forgets nothing; a confirmed failover and
    // a confirmed lock are done.
    assert!(page["forget_question"].as_str().unwrap().contains(id), "{}", page["forget_question"]);
    assert_eq!(d.get(&format!("/v1/amphorae/{id}")).0, 200, "not forgotten");
    assert!(page["failover_question"].as_str().unwrap().contains(id));
    let (_, fo) = d.get("/v1/failovers?limit=1000");
    assert!(
        fo["failovers"].as_array().unwrap().iter().any(|r| r["amphora"] == id && r["reason"] == "manual"),
        "a manual failover of {id}: {fo}"
    );
    assert!(page["lock_prompt"].as_str().unwrap().contains("127.0.0.1:7001"), "{}", page["lock_prompt"]);
    assert!(page["lock_question"].as_str().unwrap().contains("at 42"));
    let (_, services) = d.get("/v1/services?type=echo");
    let locked = services.as_array().unwrap().iter().find(|s| s["addr"] == "127.0.0.1:7001").unwrap();
    assert_eq!((&locked["score"], &locked["locked"]), (&json!(42), &json!(true)), "{services}");
    assert!(page["locked_row"].as_str().unwrap().contains("locked"), "{}", page["locked_row"]);
    assert_eq!(page["console_errors"], json!([]));

    for name in [
        "token",
        "overview",
        "amphorae",
        "amphorae-stale",
        "amphora",
        "failovers",
        "services",
        "volumes",
        "cluster",
        "amphora-admin",
    ] {
        let p = shots.join(format!("{name}.png"));
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1000, "{} missing or empty", p.display());
    }
}
