//! The admin API's tokens, TLS and safe default (issue 15) on the real `heartsink serve` over
//! loopback: every route × {no token, read token, admin token, wrong token}; refused mutations
//! change nothing; SIGHUP reloads of tokens and certificates; HTTPS, plain HTTP to the HTTPS
//! port, the limits over TLS; the refusal of a non-loopback admin address without tokens.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client, heartbeat, uuid, wait_until, Daemon};
use heartsink::api::routes::ROUTES;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

const ADMIN: &str = "adm1n-t0ken-AAAAAAAAAAAAAAAA";
const READ: &str = "r3ad-t0ken-BBBBBBBBBBBBBBBB";
const WRONG: &str = "wr0ng-t0ken-CCCCCCCCCCCCCCCC";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn tokens_file(dir: &Path) -> PathBuf {
    write(dir, "tokens", &format!("# role name token\nadmin ops {ADMIN}\nread viewer {READ}  # dashboards\n"))
}

/// A daemon with the two tokens (and `extra` flags); its own helpers use the admin token.
fn start(dir: &Path, extra: &[&str]) -> Daemon {
    let tokens = tokens_file(dir);
    let mut args = vec!["--admin-tokens-file", tokens.to_str().unwrap()];
    args.extend_from_slice(extra);
    Daemon::start(&args).with_token(ADMIN)
}

/// A concrete path for a route pattern.
fn concrete(pattern: &str) -> String {
    let amphora = uuid(1, 999);
    pattern
        .replace("/v1/amphorae/{id}", &format!("/v1/amphorae/{amphora}"))
        .replace("{id}", "7")
        .replace("{name}", "p1")
}

fn assert_no_token_in(d: &Daemon) {
    let text = d.stderr_text();
    for t in [ADMIN, READ, WRONG] {
        assert!(!text.contains(t), "a token reached the log: {text}");
    }
}

#[test]
fn every_route_with_every_kind_of_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &["--log-level", "info"]);
    let exempt = ["/healthz", "/metrics", "/v1/cluster/digest", "/v1/cluster/view"];
    assert!(ROUTES.len() >= 30, "{} routes", ROUTES.len());
    for r in ROUTES {
        let path = concrete(r.path);
        let body = r.mutating().then_some("{}");
        let what = format!("{} {}", r.method, r.path);
        let (admin, _, _) = d.request(r.method, &path, Some(ADMIN), body);
        assert!(![401, 403, 405].contains(&admin), "{what} with the admin token: {admin}");
        for token in [None, Some(WRONG), Some(READ)] {
            let (status, challenge, v) = d.request(r.method, &path, token, body);
            let want = if exempt.contains(&r.path) {
                admin
            } else if token == Some(READ) {
                if r.mutating() {
                    403
                } else {
                    admin
                }
            } else {
                401
            };
            if [401, 403].contains(&want) {
                assert_eq!(status, want, "{what} with {token:?}");
                assert_eq!(v["status"], want, "{what} with {token:?}: JSON error body {v}");
                assert!(v["error"].is_string(), "{what}: {v}");
                let c = challenge.unwrap_or_default();
                assert!(c.starts_with("Bearer"), "{what} with {token:?}: WWW-Authenticate {c:?}");
            } else {
                assert!(![401, 403].contains(&status), "{what} with {token:?}: {status}");
            }
        }
    }
    // Unknown paths need a token too (nothing tells what exists); the status page's static
    // files do not (they hold no data), and there is nothing else under /ui/.
    assert_eq!(d.request("GET", "/v1/nope", None, None).0, 401);
    assert_eq!(d.request("GET", "/v1/nope", Some(READ), None).0, 404);
    assert_eq!(d.request("GET", "/", None, None).0, 200);
    assert_eq!(d.request("GET", "/ui/app.js", None, None).0, 200);
    assert_eq!(d.request("GET", "/ui/nope.js", None, None).0, 404);
    assert_eq!(d.request("POST", "/", None, Some("{}")).0, 404, "only GET serves the page");
    // Who the page is talking for: the role decides which actions it offers.
    for (token, name, role) in [(ADMIN, "ops", "admin"), (READ, "viewer", "read")] {
        let (status, _, v) = d.request("GET", "/v1/whoami", Some(token), None);
        assert_eq!(
            (status, v["name"].as_str(), v["role"].as_str(), v["auth"].as_bool()),
            (200, Some(name), Some(role), Some(true))
        );
    }
    assert_eq!(d.request("GET", "/v1/whoami", Some(WRONG), None).0, 401);
    assert_eq!(d.request("GET", "/healthz", None, None).0, 200);
    let metrics = d.get_text("/metrics");
    assert!(metrics.contains("heartsink_admin_unauthorized_total "), "{metrics}");
    assert!(metrics.contains("heartsink_admin_forbidden_total "), "{metrics}");
    // The audit line of a refused and of an allowed mutation.
    d.wait_stderr("audit");
    let log = d.stderr_text();
    assert!(
        log.lines().any(|l| l.contains("audit")
            && l.contains("token=viewer")
            && l.contains("method=DELETE")
            && l.contains("route=/v1/volumes/{id}")
            && l.contains("target=7")
            && l.contains("status=403")),
        "{log}"
    );
    assert!(log.lines().any(|l| l.contains("audit") && l.contains("token=ops") && l.contains("status=404")), "{log}");
    assert!(log.lines().any(|l| l.contains("audit") && l.contains("token=?") && l.contains("status=401")), "{log}");
    assert!(!log.lines().any(|l| l.contains("audit") && l.contains("method=GET")), "reads are not audited: {log}");
    assert_no_token_in(&d);
}

#[test]
fn mutations_without_the_admin_role_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &["--key", "insecure"]);
    client().send_to(&heartbeat(1, 1, 5, "insecure"), d.heartbeat).unwrap();
    let id = uuid(1, 1);
    wait_until("the amphora is tracked", Duration::from_secs(10), || {
        (d.get(&format!("/v1/amphorae/{id}")).0 == 200).then_some(())
    });
    let amphora = format!("/v1/amphorae/{id}");
    let mutations = [
        ("PATCH", amphora.clone(), r#"{"zone": "rack-9"}"#),
        ("PUT", amphora.clone(), r#"{"zone": "rack-9"}"#),
        ("DELETE", amphora.clone(), ""),
        ("POST", format!("{amphora}/failover"), ""),
        ("POST", "/v1/volumes".into(), r#"{"size": 1024}"#),
        ("POST", "/v1/pools".into(), r#"{"name": "p", "targets": "1,x"}"#),
    ];
    let read_back = |d: &Daemon| {
        let (c, a) = d.get(&amphora);
        assert_eq!(c, 200, "{a}");
        (a["zone"].clone(), d.get("/v1/volumes").1, d.get("/v1/pools").1, d.get("/v1/failovers").1)
    };
    let before = read_back(&d);
    assert_eq!(before.0, Value::Null);
    for (method, path, body) in &mutations {
        for (token, want) in [(None, 401), (Some(WRONG), 401), (Some(READ), 403)] {
            let (status, _, _) = d.request(method, path, token, Some(body));
            assert_eq!(status, want, "{method} {path} with {token:?}");
        }
    }
    assert_eq!(read_back(&d), before, "a refused mutation changed something");
    // The same requests with the admin token do change it (so the read-back above can see it).
    assert_eq!(d.request("PATCH", &amphora, Some(ADMIN), Some(r#"{"zone": "rack-9"}"#)).0, 200);
    assert_eq!(d.request("POST", "/v1/volumes", Some(ADMIN), Some(r#"{"size": 1024}"#)).0, 201);
    let after = read_back(&d);
    assert_eq!(after.0, "rack-9");
    assert_ne!(after.1, before.1);
    d.wait_stderr("route=/v1/volumes target=- status=201");
    assert_no_token_in(&d);
}

#[test]
fn metrics_auth_puts_metrics_behind_the_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "c.toml", "[admin]\nmetrics_auth = true\n");
    let d = start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    assert_eq!(d.request("GET", "/metrics", None, None).0, 401);
    assert_eq!(d.request("GET", "/metrics", Some(READ), None).0, 200);
    assert_eq!(d.request("GET", "/healthz", None, None).0, 200);
}

#[test]
fn sighup_reloads_the_tokens_and_a_bad_file_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(dir.path(), "tokens", &format!("admin ops {ADMIN}\n"));
    let d = Daemon::start(&["--admin-tokens-file", tokens.to_str().unwrap()]);
    let status = |t: &str| d.request("GET", "/v1/stats", Some(t), None).0;
    assert_eq!((status(ADMIN), status(READ)), (200, 401));
    // The admin token removed, a read token added.
    std::fs::write(&tokens, format!("read viewer {READ}\n")).unwrap();
    d.signal(libc::SIGHUP);
    wait_until("the new token works", Duration::from_secs(10), || (status(READ) == 200).then_some(()));
    assert_eq!(status(ADMIN), 401, "a removed token still works");
    d.wait_stderr("admin tokens reloaded");
    assert!(d.stderr_text().contains("chmod 600"), "a world-readable tokens file is not warned of");
    // A malformed file, then one without tokens: refused, the running tokens stay.
    for (text, why) in [(format!("admin {ADMIN}\n"), "line 1"), ("# all commented out\n".to_owned(), "has no token")] {
        std::fs::write(&tokens, text).unwrap();
        d.signal(libc::SIGHUP);
        d.wait_stderr(why);
        assert_eq!((status(READ), status(ADMIN)), (200, 401), "after a bad file ({why})");
    }
    assert!(d.stderr_text().contains("reload failed"), "{}", d.stderr_text());
    assert_no_token_in(&d);
}

#[test]
fn a_malformed_tokens_file_stops_the_start_with_its_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write(dir.path(), "tokens", &format!("# ok\nadmin ops {ADMIN}\nsuper root {WRONG}\n"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_heartsink"))
        .args(["serve", "--heartbeat-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--no-confd"])
        .args(["--admin-tokens-file", tokens.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("line 3") && err.contains("ROLE must be `read` or `admin`"), "{err}");
    assert!(!err.contains(WRONG) && !err.contains(ADMIN), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_non_loopback_admin_address_needs_tokens_or_admin_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let base = ["serve", "--heartbeat-addr", "127.0.0.1:0", "--confd-addr", "127.0.0.1:0", "--admin-addr", "0.0.0.0:0"];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_heartsink"))
        .args(base)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("refusing to serve the admin API on 0.0.0.0:0"), "{err}");
    assert!(err.contains("--admin-tokens-file") && err.contains("--admin-insecure"), "{err}");
    assert!(out.stdout.is_empty());
    // Explicitly insecure: it serves, and says so.
    let mut args = base.to_vec();
    args.push("--admin-insecure");
    let d = Daemon::start_raw(&args);
    assert!(d.admin.ip().is_unspecified(), "{}", d.admin);
    d.wait_stderr("without tokens on a non-loopback address");
    // With tokens: it serves, and warns that they travel in clear text without TLS.
    let tokens = tokens_file(dir.path());
    let mut args = base.to_vec();
    args.extend(["--admin-tokens-file", tokens.to_str().unwrap()]);
    let d = Daemon::start_raw(&args);
    d.wait_stderr("clear text");
    let local = SocketAddr::from(([127, 0, 0, 1], d.admin.port()));
    let r = ureq::get(&format!("http://{local}/v1/stats")).set("authorization", &format!("Bearer {ADMIN}")).call();
    assert_eq!(r.map(|r| r.status()).ok(), Some(200));
}

// --- TLS -------------------------------------------------------------------------------------

/// A self-signed certificate for `localhost` and 127.0.0.1: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

#[allow(deprecated)] // the ring provider, as the daemon uses (see src/api/tls.rs)
fn client_config(trusted: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(trusted.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends `request` over TLS, trusting only `trusted`; the whole answer until the server closes.
fn https(addr: SocketAddr, trusted: &str, request: &str) -> std::io::Result<String> {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(client_config(trusted), name).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp(addr));
    tls.write_all(request.as_bytes())?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn get_over_tls(addr: SocketAddr, trusted: &str, path: &str, token: Option<&str>) -> std::io::Result<String> {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    https(addr, trusted, &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"))
}

fn status_of(response: &str) -> u16 {
    response.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status line: {response:?}"))
}

fn start_tls(dir: &Path, cert: &str, key: &str) -> (Daemon, PathBuf, PathBuf) {
    let (c, k) = (write(dir, "cert.pem", cert), write(dir, "key.pem", key));
    let cfg = write(dir, "c.toml", "[admin]\nheader_timeout = 1.0\nidle_timeout = 2.0\n");
    let tokens = tokens_file(dir);
    let d = Daemon::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--admin-tls-cert",
        c.to_str().unwrap(),
        "--admin-tls-key",
        k.to_str().unwrap(),
        "--admin-tokens-file",
        tokens.to_str().unwrap(),
    ]);
    (d, c, k)
}

fn tls_failures(addr: SocketAddr, trusted: &str) -> u64 {
    let text = get_over_tls(addr, trusted, "/metrics", None).unwrap();
    let line = text.lines().find(|l| l.starts_with("heartsink_admin_tls_handshake_failures_total ")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn https_serves_and_plain_http_to_the_tls_port_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed();
    let (mut d, _, _) = start_tls(dir.path(), &cert, &key);
    let r = get_over_tls(d.admin, &cert, "/healthz", None).unwrap();
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(r.contains(r#"{"status":"ok"}"#), "{r}");
    // Tokens over TLS.
    assert_eq!(status_of(&get_over_tls(d.admin, &cert, "/v1/stats", None).unwrap()), 401);
    assert_eq!(status_of(&get_over_tls(d.admin, &cert, "/v1/stats", Some(READ)).unwrap()), 200);
    assert_eq!(tls_failures(d.admin, &cert), 0);

    // Plain HTTP to the TLS port: a plain 400 saying to use https, then closed.
    let mut s = tcp(d.admin);
    s.write_all(b"GET /v1/stats HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(answer.contains("https://"), "{answer}");
    // A TLS record of garbage, and a certificate the client does not trust: both fail.
    let mut s = tcp(d.admin);
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(!String::from_utf8_lossy(&rest).contains("HTTP/1.1"), "{rest:?}");
    let (other, _) = self_signed();
    assert!(get_over_tls(d.admin, &other, "/healthz", None).is_err(), "an untrusted certificate was accepted");
    // The daemon still serves, and counted each failure (the client's refusal of the
    // certificate is seen by the server as a failed handshake too).
    assert_eq!(status_of(&get_over_tls(d.admin, &cert, "/healthz", None).unwrap()), 200);
    wait_until("the failures counted", Duration::from_secs(5), || (tls_failures(d.admin, &cert) >= 3).then_some(()));
    assert!(d.child.try_wait().unwrap().is_none(), "the daemon died");
    assert_no_token_in(&d);
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn the_server_limits_apply_to_tls_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed();
    let (d, _, _) = start_tls(dir.path(), &cert, &key);
    // A client that connects and never starts the handshake is closed within the head timeout.
    let t = Instant::now();
    let mut s = tcp(d.admin);
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "an answer to nothing");
    assert!(t.elapsed() < Duration::from_secs(4), "closed after {:?}", t.elapsed());
    // A head that stalls after the handshake is answered 408 over TLS, like plain HTTP.
    let t = Instant::now();
    let r = https(d.admin, &cert, "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ").unwrap();
    assert_eq!(status_of(&r), 408, "{r}");
    assert!(t.elapsed() < Duration::from_secs(5), "408 after {:?}", t.elapsed());
    assert_eq!(status_of(&get_over_tls(d.admin, &cert, "/healthz", None).unwrap()), 200);
}

#[test]
fn sighup_reloads_the_certificate_and_a_bad_one_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a_cert, a_key) = self_signed();
    let (d, cert, key) = start_tls(dir.path(), &a_cert, &a_key);
    assert!(get_over_tls(d.admin, &a_cert, "/healthz", None).is_ok());
    let (b_cert, b_key) = self_signed();
    std::fs::write(&cert, &b_cert).unwrap();
    std::fs::write(&key, &b_key).unwrap();
    d.signal(libc::SIGHUP);
    wait_until("the new certificate is served", Duration::from_secs(10), || {
        get_over_tls(d.admin, &b_cert, "/healthz", None).ok()
    });
    assert!(get_over_tls(d.admin, &a_cert, "/healthz", None).is_err(), "the old certificate is still served");
    d.wait_stderr("admin TLS certificate reloaded");
    // A broken certificate, then a key that is not the certificate's: refused, B stays.
    for (c, k, why) in
        [("garbage\n", b_key.as_str(), "no PEM CERTIFICATE block"), (a_cert.as_str(), b_key.as_str(), "does not fit")]
    {
        std::fs::write(&cert, c).unwrap();
        std::fs::write(&key, k).unwrap();
        d.signal(libc::SIGHUP);
        d.wait_stderr(why);
        let r = get_over_tls(d.admin, &b_cert, "/healthz", None).unwrap();
        assert_eq!(status_of(&r), 200, "{why}: {r}");
    }
}
