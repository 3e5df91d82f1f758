//! Bearer tokens for the admin API, and the audit line of every mutating request.
//!
//! The tokens file (`[admin] tokens_file`, `--admin-tokens-file`) holds one token per line as
//! `ROLE NAME TOKEN`: `ROLE` is `read` (every `GET`/`HEAD` route) or `admin` (every route);
//! `NAME` (1–64 letters, digits or `._-@:`, unique) is what logs and the audit line show;
//! `TOKEN` is 16–4096 visible ASCII characters, unique. A field starting with `#` starts a
//! comment. A malformed line is refused with its number, never its content (a token pasted
//! into the wrong field must not reach a log). The file is re-read on SIGHUP; a bad file keeps
//! the running tokens.
//!
//! With at least one token, every request needs `Authorization: Bearer TOKEN` except:
//! - `/healthz` (load balancers and orchestrators probe it without credentials);
//! - `/metrics`, unless `[admin] metrics_auth = true`;
//! - `/` and `/ui/…`: the status page's static files, which hold no data (the page asks for a
//!   token and sends it with each API call). Only static files may be served there;
//! - `POST /v1/cluster/digest`: cluster peers' digests carry their own authentication (an HMAC
//!   with the heartbeat key, from a live member only).
//!
//! No or an unknown token is `401` with `WWW-Authenticate: Bearer`; a `read` token on a
//! mutating route (any method but `GET` and `HEAD`) is `403`. Both carry the API's JSON error
//! body. A presented token is compared with every configured one in constant time: SHA-256
//! digests, each compared with `subtle`, the match selected without a branch or an early exit.
//!
//! Every mutating request, allowed or refused, gets one line on the `audit` log target:
//! `token` (its name; `-` without tokens configured or without a token presented, `?` for an
//! unknown one), `method`, `route` (the path pattern), `target` (the path's ids, `-` when none)
//! and `status`. Peers' digests are logged at debug level (twice a second per peer).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::routes;
use super::AdminCounters;

/// Longest accepted token, bytes.
pub const MAX_TOKEN: usize = 4096;
/// Shortest accepted token, bytes.
pub const MIN_TOKEN: usize = 16;
/// Longest token name, characters.
pub const MAX_NAME: usize = 64;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `GET` and `HEAD` routes.
    Read,
    /// Every route.
    Admin,
}

impl Role {
    /// `read` or `admin`, as the tokens file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

/// Who sent a request the layer let through (a request extension, for `GET /v1/whoami`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (`-`: none needed or none configured).
    pub name: String,
    /// What it may do (`admin` when no token is configured: authentication is off).
    pub role: Role,
    /// Whether tokens are configured.
    pub auth: bool,
}

/// One configured token: its name, role, and the SHA-256 digest of its value (the value itself
/// is not kept).
#[derive(Clone)]
pub struct Token {
    name: String,
    role: Role,
    digest: [u8; 32],
}

impl Token {
    /// The token's name (what the logs show).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The token's role.
    pub fn role(&self) -> Role {
        self.role
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

/// Why a tokens file cannot be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum TokensError {
    /// The file could not be read (missing, unreadable, over 1 MiB, not UTF-8).
    Read(PathBuf, std::io::Error),
    /// A line is malformed: the reason names the field, never its value.
    Line {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong and the expected form.
        reason: String,
    },
    /// The file has no token (only comments or blank lines): refused rather than serving
    /// without authentication, which is what a truncated file would otherwise mean.
    Empty(PathBuf),
}

impl std::fmt::Display for TokensError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokensError::Read(p, e) => write!(f, "cannot read the admin tokens file {}: {e}", p.display()),
            TokensError::Line { path, line, reason } => {
                write!(f, "admin tokens file {} line {line}: {reason}", path.display())
            }
            TokensError::Empty(p) => write!(
                f,
                "admin tokens file {} has no token (expected lines `ROLE NAME TOKEN`, ROLE read or admin)",
                p.display()
            ),
        }
    }
}

impl std::error::Error for TokensError {}

/// The configured tokens (empty: authentication off).
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    entries: Vec<Token>,
}

fn valid_name(n: &str) -> bool {
    (1..=MAX_NAME).contains(&n.chars().count())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | ':'))
}

impl Tokens {
    /// No tokens: every request is allowed.
    pub fn none() -> Tokens {
        Tokens::default()
    }

    /// Reads and parses a tokens file (at most 1 MiB).
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text = crate::util::read_bounded_string(path, crate::util::MAX_KEY_FILE)
            .map_err(|e| TokensError::Read(path.to_owned(), e))?;
        Tokens::parse(&text, path)
    }

    /// Parses a tokens file's text (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Tokens, TokensError> {
        let mut entries: Vec<(Token, usize)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let bad = |reason: String| TokensError::Line { path: path.to_owned(), line: n, reason };
            let fields: Vec<&str> = line.split_whitespace().take_while(|f| !f.starts_with('#')).collect();
            let [role, name, token] = fields[..] else {
                if fields.is_empty() {
                    continue;
                }
                return Err(bad(format!("expected `ROLE NAME TOKEN` (3 fields), found {}", fields.len())));
            };
            let role = match role {
                "read" => Role::Read,
                "admin" => Role::Admin,
                _ => return Err(bad("ROLE must be `read` or `admin`".into())),
            };
            if !valid_name(name) {
                return Err(bad(format!("NAME must be 1 to {MAX_NAME} letters, digits or . _ - @ :")));
            }
            if !(MIN_TOKEN..=MAX_TOKEN).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad(format!("TOKEN must be {MIN_TOKEN} to {MAX_TOKEN} visible ASCII characters")));
            }
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if let Some((_, other)) = entries.iter().find(|(t, _)| t.name == name) {
                return Err(bad(format!("NAME is already used on line {other}")));
            }
            if let Some((_, other)) = entries.iter().find(|(t, _)| t.digest == digest) {
                return Err(bad(format!("the same TOKEN as on line {other}")));
            }
            entries.push((Token { name: name.to_owned(), role, digest }, n));
        }
        if entries.is_empty() {
            return Err(TokensError::Empty(path.to_owned()));
        }
        Ok(Tokens { entries: entries.into_iter().map(|(t, _)| t).collect() })
    }

    /// True when no token is configured (authentication off).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The configured token equal to `presented`: its digest is compared with every token's in
    /// constant time, without an early exit, so the time taken tells nothing of which token
    /// (or which prefix) matched.
    pub fn verify(&self, presented: &[u8]) -> Option<&Token> {
        let digest = Sha256::digest(presented);
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, t) in self.entries.iter().enumerate() {
            let eq = t.digest.ct_eq(digest.as_slice());
            index = u32::conditional_select(&index, &u32::try_from(i).unwrap_or(u32::MAX), eq);
            found |= eq;
        }
        if bool::from(found) {
            self.entries.get(index as usize)
        } else {
            None
        }
    }
}

/// The admin API's authentication state, swapped whole on reload.
#[derive(Debug)]
pub struct AdminAuth {
    tokens: arc_swap::ArcSwap<Tokens>,
    metrics_auth: AtomicBool,
}

impl Default for AdminAuth {
    fn default() -> AdminAuth {
        AdminAuth::new(Tokens::none(), false)
    }
}

impl AdminAuth {
    /// Authentication with `tokens` (none: off); `metrics_auth` puts `/metrics` behind them.
    pub fn new(tokens: Tokens, metrics_auth: bool) -> AdminAuth {
        AdminAuth { tokens: arc_swap::ArcSwap::from_pointee(tokens), metrics_auth: AtomicBool::new(metrics_auth) }
    }

    /// Replaces the tokens and the `metrics_auth` setting (a reload); requests in progress
    /// finish with the old ones.
    pub fn replace(&self, tokens: Tokens, metrics_auth: bool) {
        self.tokens.store(Arc::new(tokens));
        self.metrics_auth.store(metrics_auth, Ordering::Relaxed);
    }

    /// The tokens in use.
    pub fn tokens(&self) -> Arc<Tokens> {
        self.tokens.load_full()
    }

    /// Decides a request (sans-IO): `Ok(name)` to serve it (`-` when no token is needed or
    /// configured), or the refusal.
    pub fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> Result<String, Refusal> {
        self.caller(method, path, headers).map(|c| c.name)
    }

    /// As [`AdminAuth::check`], with the caller's role.
    pub fn caller(&self, method: &Method, path: &str, headers: &HeaderMap) -> Result<Caller, Refusal> {
        let tokens = self.tokens.load();
        if tokens.is_empty() {
            // No tokens: whoever reaches the port is admin, so a web page in an operator's
            // browser must not be able to act through it (cross-site requests, DNS rebinding).
            if let Some(why) = cross_site(headers) {
                return Err(Refusal::CrossSite(why));
            }
            return Ok(Caller { name: "-".into(), role: Role::Admin, auth: false });
        }
        if exempt(method, path, self.metrics_auth.load(Ordering::Relaxed)) {
            return Ok(Caller { name: "-".into(), role: Role::Read, auth: true });
        }
        let Some(presented) = bearer(headers) else { return Err(Refusal::Missing) };
        match tokens.verify(presented) {
            None => Err(Refusal::Unknown),
            Some(t) if t.role == Role::Read && routes::mutating(method.as_str()) => {
                Err(Refusal::ReadOnly(t.name.clone()))
            }
            Some(t) => Ok(Caller { name: t.name.clone(), role: t.role, auth: true }),
        }
    }
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header: `401`.
    Missing,
    /// A token that is not configured: `401`.
    Unknown,
    /// A `read` token (its name) on a mutating route: `403`.
    ReadOnly(String),
    /// No tokens configured, and the request came from a web page of another origin (its
    /// `Origin` is not its `Host`) or of a name that is not an address (neither an IP address
    /// nor `localhost`: DNS rebinding): `403`.
    CrossSite(&'static str),
}

/// Why a request to an admin API without tokens looks like a browser's cross-site request.
/// Only browsers send `Origin` (on every request but a same-origin `GET`): a request with one
/// must come from a page of this very address, an IP address or `localhost` (a page reached
/// through a name may be a DNS-rebinding attacker's). Clients without `Origin` (curl,
/// scrapers, the cluster's peers) are never refused here.
fn cross_site(headers: &HeaderMap) -> Option<&'static str> {
    let origin = headers.get(header::ORIGIN)?;
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let own = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .is_some_and(|(_, authority)| authority.trim_end_matches('/') == host);
    if !own {
        return Some("a request from a web page of another origin");
    }
    let name = match host.rsplit_once(':') {
        Some((n, p)) if !n.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !host.ends_with(']') => n,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let address = name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok();
    (!address).then_some("a web page reached through a name, not an address (DNS rebinding?): configure tokens")
}

impl Refusal {
    /// The answer: status, JSON error body, `WWW-Authenticate`.
    fn response(&self) -> Response {
        let (status, message, challenge) = match self {
            Refusal::Missing => (
                401,
                "authentication required: send Authorization: Bearer <token>",
                r#"Bearer realm="heartsink admin""#,
            ),
            Refusal::Unknown => (401, "unknown token", r#"Bearer realm="heartsink admin", error="invalid_token""#),
            Refusal::ReadOnly(_) => (
                403,
                "this token has the read role; changes need an admin token",
                r#"Bearer realm="heartsink admin", error="insufficient_scope""#,
            ),
            Refusal::CrossSite(why) => (403, *why, r#"Bearer realm="heartsink admin""#),
        };
        let mut r = super::error(status, message).into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        r
    }

    /// The token name for the audit line.
    fn who(&self) -> &str {
        match self {
            Refusal::Missing => "-",
            Refusal::Unknown => "?",
            Refusal::ReadOnly(name) => name,
            Refusal::CrossSite(_) => "-",
        }
    }
}

/// Paths served without a token (see the module documentation), split as the router splits
/// them so that no spelling of a protected path can pass for an exempt one.
pub fn exempt(method: &Method, path: &str, metrics_auth: bool) -> bool {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments[..] {
        ["healthz"] | [""] => true,
        ["ui", ..] => true,
        ["metrics"] => !metrics_auth,
        ["v1", "cluster", "digest" | "view"] => method == Method::POST,
        _ => false,
    }
}

/// The token of an `Authorization: Bearer TOKEN` header (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = v.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// What the authentication layer shares.
#[derive(Clone, Debug)]
pub(crate) struct AuthLayer {
    pub(crate) auth: Arc<AdminAuth>,
    pub(crate) counters: Arc<AdminCounters>,
}

/// The middleware: refuses what the tokens do not allow and writes the audit line of every
/// mutating request.
pub(crate) async fn layer(
    State(st): State<AuthLayer>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let decision = st.auth.caller(&method, &path, req.headers());
    let (who, resp) = match decision {
        Ok(caller) => {
            let who = caller.name.clone();
            req.extensions_mut().insert(caller);
            (who, next.run(req).await)
        }
        Err(refusal) => {
            // A refused request's body is not read: the connection closes after the answer.
            let h = req.headers();
            let body = h.contains_key(header::TRANSFER_ENCODING)
                || h.get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
            let counter = if matches!(refusal, Refusal::ReadOnly(_)) {
                &st.counters.forbidden
            } else {
                &st.counters.unauthorized
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let mut resp = refusal.response();
            if body {
                resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            (refusal.who().to_owned(), resp)
        }
    };
    if routes::mutating(method.as_str()) {
        audit(&who, &method, &path, resp.status().as_u16());
    }
    resp
}

/// The audit line of a mutating request.
fn audit(who: &str, method: &Method, path: &str, status: u16) {
    let (route, target) = match routes::find(method.as_str(), path) {
        Some((r, t)) if !t.is_empty() => (r.path, t.join(",")),
        Some((r, _)) => (r.path, "-".to_owned()),
        None => ("(none)", "-".to_owned()),
    };
    if route == "/v1/cluster/digest" || route == "/v1/cluster/view" {
        tracing::debug!(target: "audit", token = %who, method = %method, route = %route, target = %target, status, "admin request");
    } else {
        tracing::info!(target: "audit", token = %who, method = %method, route = %route, target = %target, status, "admin request");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    const A: &str = "admin-token-0123456789";
    const R: &str = "read-token-0123456789";

    fn tokens() -> Tokens {
        let text = format!("# comment\n\nadmin ops {A}  # trailing comment\nread  viewer {R}\r\n");
        Tokens::parse(&text, Path::new("t")).unwrap()
    }

    /// Without tokens: a web page of another origin, or a Host that is a name (DNS
    /// rebinding), is refused; the page itself, curl and the cluster's peers are not.
    #[test]
    fn without_tokens_cross_site_requests_and_rebound_names_are_refused() {
        let auth = AdminAuth::new(Tokens::none(), false);
        let post = Method::POST;
        let with = |pairs: &[(header::HeaderName, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
            }
            auth.check(&post, "/v1/volumes", &h)
        };
        assert_eq!(with(&[]), Ok("-".into()));
        assert_eq!(with(&[(header::HOST, "127.0.0.1:9555")]), Ok("-".into()));
        assert_eq!(with(&[(header::HOST, "[::1]:9555")]), Ok("-".into()));
        assert_eq!(
            with(&[(header::HOST, "localhost:9555"), (header::ORIGIN, "http://localhost:9555")]),
            Ok("-".into())
        );
        let refused = |r: Result<String, Refusal>| matches!(r, Err(Refusal::CrossSite(_)));
        assert!(refused(with(&[(header::HOST, "127.0.0.1:9555"), (header::ORIGIN, "http://evil.example")])));
        assert!(refused(with(&[(header::HOST, "127.0.0.1:9555"), (header::ORIGIN, "null")])));
        assert!(refused(with(&[
            (header::HOST, "rebind.evil.example:9555"),
            (header::ORIGIN, "http://rebind.evil.example:9555")
        ])));
        // Not a browser: no Origin, whatever the Host.
        assert_eq!(with(&[(header::HOST, "heartsink.example:9555")]), Ok("-".into()));
    }

    fn headers(token: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = token {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {t}")).unwrap());
        }
        h
    }

    #[test]
    fn the_file_format_and_its_errors_name_the_line_never_the_token() {
        let t = tokens();
        assert_eq!(t.len(), 2);
        assert_eq!(t.verify(A.as_bytes()).map(|t| (t.name(), t.role())), Some(("ops", Role::Admin)));
        assert_eq!(t.verify(R.as_bytes()).map(|t| (t.name(), t.role())), Some(("viewer", Role::Read)));
        assert!(t.verify(b"admin-token-012345678").is_none());
        assert!(t.verify(b"").is_none());
        let secret = "s3cret-s3cret-s3cret";
        for (text, line, what) in [
            (format!("admin ops {A}\nadmin {secret}"), 2, "3 fields"),
            (format!("root ops {secret}"), 1, "ROLE"),
            (format!("{secret} ops admin"), 1, "ROLE"),
            (format!("read bad/name {secret}"), 1, "NAME"),
            ("read short abc".to_owned(), 1, "TOKEN"),
            (format!("read x {secret}é"), 1, "TOKEN"),
            (format!("read x {secret}\nadmin x {A}"), 2, "NAME is already used on line 1"),
            (format!("read x {secret}\nadmin y {secret}"), 2, "the same TOKEN as on line 1"),
            (format!("read x {secret} extra"), 1, "found 4"),
        ] {
            let e = Tokens::parse(&text, Path::new("f")).unwrap_err().to_string();
            assert!(e.contains(&format!("line {line}:")) && e.contains(what), "{text:?}: {e}");
            assert!(!e.contains(secret) && !e.contains(A), "the message shows a token: {e}");
        }
        assert!(matches!(Tokens::parse("# nothing\n\n", Path::new("f")), Err(TokensError::Empty(_))));
        // A `#` inside a token is part of it; one starting a field starts a comment.
        let t = Tokens::parse("admin a abc#def-0123456789", Path::new("f")).unwrap();
        assert!(t.verify(b"abc#def-0123456789").is_some());
    }

    #[test]
    fn access_by_role_and_exempt_paths() {
        let auth = AdminAuth::new(tokens(), false);
        let (get, post, delete) = (Method::GET, Method::POST, Method::DELETE);
        assert_eq!(auth.check(&get, "/v1/stats", &headers(None)), Err(Refusal::Missing));
        assert_eq!(auth.check(&get, "/v1/stats", &headers(Some("wrong-token-0123456789"))), Err(Refusal::Unknown));
        assert_eq!(auth.check(&get, "/v1/stats", &headers(Some(R))), Ok("viewer".into()));
        assert_eq!(auth.check(&delete, "/v1/pools/p", &headers(Some(R))), Err(Refusal::ReadOnly("viewer".into())));
        assert_eq!(auth.check(&delete, "/v1/pools/p", &headers(Some(A))), Ok("ops".into()));
        assert_eq!(auth.check(&get, "/nope", &headers(None)), Err(Refusal::Missing), "unknown paths too");
        for path in ["/healthz", "/healthz/", "/metrics", "/", "/ui/app.js"] {
            assert_eq!(auth.check(&get, path, &headers(None)), Ok("-".into()), "{path}");
        }
        assert_eq!(auth.check(&post, "/v1/cluster/digest", &headers(None)), Ok("-".into()));
        assert!(auth.check(&get, "/v1/cluster", &headers(None)).is_err());
        assert!(auth.check(&get, "//metrics/x", &headers(None)).is_err());
        auth.replace(tokens(), true);
        assert_eq!(auth.check(&get, "/metrics", &headers(None)), Err(Refusal::Missing));
        let open = AdminAuth::default();
        assert_eq!(open.check(&delete, "/v1/pools/p", &headers(None)), Ok("-".into()));
    }

    #[test]
    fn the_bearer_scheme() {
        let mut h = HeaderMap::new();
        for (v, want) in [
            ("Bearer abc", Some(&b"abc"[..])),
            ("bearer  abc ", Some(b"abc")),
            ("Basic abc", None),
            ("Bearer ", None),
            ("Bear", None),
        ] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            assert_eq!(bearer(&h), want, "{v:?}");
        }
    }
}
