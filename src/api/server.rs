//! The admin HTTP server: hyper's HTTP/1 connections under an axum router, on a small tokio
//! runtime of its own (two worker threads and a bounded blocking pool), off the hot path.
//!
//! What a hostile or broken client can and cannot do (issue 16):
//! - **Headers** are read into a buffer of at most [`AdminLimits::max_header_bytes`]; a longer
//!   head is answered `431` and the connection closed, without reading the rest.
//! - **Bodies** are bounded per route (`413` when the declared or the received length is
//!   larger, before reading it) and must arrive within [`AdminLimits::body_timeout`] (`408`).
//! - **A request head** must arrive within [`AdminLimits::header_timeout`] of its first byte
//!   (`408`); a connection with no request in progress is closed after
//!   [`AdminLimits::idle_timeout`].
//! - **Connections** are tasks, not threads, at most [`AdminLimits::max_connections`] at once.
//!   At the limit, the connection idle the longest is closed to make room (as nginx reuses
//!   keep-alive connections); when every connection has a request in progress, the newcomer is
//!   answered `503` and closed.
//! - **Control-thread calls** (which wait up to 30 s for a durable answer) run on the blocking
//!   pool, at most [`CONTROL_CALLS`] at once, so a stalled control thread never holds an async
//!   worker: `/healthz` and the snapshot reads stay fast.
//! - **A panic** in a handler is caught (`CatchPanicLayer`), answered `500`, counted
//!   (`heartsink_admin_panics_total`) and logged; a panic anywhere else in a connection's task
//!   is caught, counted and logged too. The server keeps serving.
//! - **TLS** (`tls.rs`), when configured, is handshaken inside the connection's slot and within
//!   [`AdminLimits::header_timeout`]; every limit above then applies to it as to plain HTTP.
//! - **Tokens** (`auth.rs`) are checked by a layer around the whole router, before any route.
//! - **Stop** closes idle connections at once, lets requests in progress finish for at most
//!   [`STOP_GRACE`], then drops whatever is left.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};

use super::auth::AdminAuth;
use super::tls::{AdminTls, HandshakeError, Stream};
use super::ApiContext;

/// Control-thread calls in progress at once; further requests wait (asynchronously).
pub const CONTROL_CALLS: usize = 4;
/// How long [`AdminServer::stop`] lets requests in progress finish.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 100;
/// Smallest accepted [`AdminLimits::max_header_bytes`] (hyper's minimum read buffer).
pub const MIN_HEADER_BYTES: usize = 8192;

/// The admin server's limits (`[admin]` in the configuration).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdminLimits {
    /// Largest request head (request line and headers), bytes; larger is `431`.
    pub max_header_bytes: usize,
    /// Time from a request's first byte to the end of its head; then `408` and close.
    pub header_timeout: Duration,
    /// Time to receive a whole request body; then `408` and close.
    pub body_timeout: Duration,
    /// A connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
    /// Connections at once.
    pub max_connections: usize,
}

impl Default for AdminLimits {
    fn default() -> AdminLimits {
        AdminLimits {
            max_header_bytes: 16 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// The admin server's own counters (`/metrics`: `heartsink_admin_*`).
#[derive(Debug, Default)]
pub struct AdminCounters {
    /// Connections open now.
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections refused with `503` (every connection had a request in progress).
    pub refused: AtomicU64,
    /// Idle connections closed to make room for a new one.
    pub evicted: AtomicU64,
    /// Requests whose head or body did not arrive in time.
    pub timeouts: AtomicU64,
    /// Panics caught.
    pub panics: AtomicU64,
    /// Requests refused `401` (no token or an unknown one).
    pub unauthorized: AtomicU64,
    /// Requests refused `403` (a read token on a mutating route).
    pub forbidden: AtomicU64,
    /// TLS connections that failed before a request: a failed or timed-out handshake, or
    /// plain HTTP to the TLS port.
    pub tls_failures: AtomicU64,
}

impl AdminCounters {
    /// Counts and logs a caught panic.
    pub fn panicked(&self, where_: &str, payload: &(dyn std::any::Any + Send)) {
        self.panics.fetch_add(1, Ordering::Relaxed);
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        tracing::error!(r#where = where_, panic = %msg, "admin server caught a panic; still serving");
    }
}

/// How the admin server serves: limits, tokens, TLS.
#[derive(Clone, Debug, Default)]
pub struct AdminOptions {
    /// Limits and timeouts.
    pub limits: AdminLimits,
    /// Tokens (none configured: every request is allowed).
    pub auth: Arc<AdminAuth>,
    /// TLS (`None`: plain HTTP).
    pub tls: Option<Arc<AdminTls>>,
}

/// What the request handlers share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) ctx: Arc<ApiContext>,
    pub(crate) registry: prometheus_client::registry::Registry,
    pub(crate) limits: AdminLimits,
    pub(crate) counters: Arc<AdminCounters>,
    pub(crate) control: Arc<Semaphore>,
}

/// One connection's state, as its watchdog and the eviction see it.
#[derive(Debug)]
struct ConnState {
    /// Requests handed to the router and not answered yet.
    in_flight: AtomicU32,
    /// When the current request's first byte arrived (ms since the server's start, +1; 0: none).
    head_started: AtomicU64,
    /// Last request answered, or the accept (ms since the server's start).
    last: AtomicU64,
    /// Asked to close to make room.
    evicted: AtomicBool,
    /// Wakes the watchdog on any change above.
    changed: Notify,
}

#[derive(Debug)]
struct Conns {
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Conns {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.epoch + Duration::from_millis(ms))
    }

    /// Asks the connection idle the longest to close; false when every one is busy.
    fn evict_one(&self) -> bool {
        let open = self.open.lock();
        let victim = open
            .values()
            .filter(|c| c.in_flight.load(Ordering::Acquire) == 0 && !c.evicted.load(Ordering::Acquire))
            .min_by_key(|c| c.last.load(Ordering::Relaxed));
        match victim {
            Some(c) => {
                c.evicted.store(true, Ordering::Release);
                c.changed.notify_one();
                true
            }
            None => false,
        }
    }
}

/// The running admin server.
pub struct AdminServer {
    runtime: Option<tokio::runtime::Runtime>,
    local: SocketAddr,
    shutdown: watch::Sender<bool>,
    conns: Arc<Conns>,
    counters: Arc<AdminCounters>,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer").field("local", &self.local).finish()
    }
}

impl AdminServer {
    /// Binds `addr` and serves plain HTTP without tokens, with the default [`AdminLimits`].
    pub fn start(addr: SocketAddr, ctx: Arc<ApiContext>) -> io::Result<AdminServer> {
        AdminServer::start_with(addr, ctx, AdminOptions::default())
    }

    /// Binds `addr` and serves on a runtime of its own as `options` say.
    pub fn start_with(addr: SocketAddr, ctx: Arc<ApiContext>, options: AdminOptions) -> io::Result<AdminServer> {
        let limits = options.limits;
        if limits.max_header_bytes < MIN_HEADER_BYTES || limits.max_connections == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("admin limits: max_header_bytes must be ≥ {MIN_HEADER_BYTES} and max_connections ≥ 1"),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(CONTROL_CALLS + 2)
            .thread_name("admin")
            .enable_all()
            .build()?;
        let listener = runtime.block_on(async { TcpListener::bind(addr).await })?;
        let local = listener.local_addr()?;
        let counters = Arc::new(AdminCounters::default());
        let shared = Arc::new(Shared {
            registry: super::metrics::registry(ctx.clone(), counters.clone()),
            ctx,
            limits,
            counters: counters.clone(),
            control: Arc::new(Semaphore::new(CONTROL_CALLS)),
        });
        let app = super::router(shared, options.auth);
        let conns =
            Arc::new(Conns { epoch: Instant::now(), next_id: AtomicU64::new(0), open: Mutex::new(HashMap::new()) });
        let (shutdown, stop_rx) = watch::channel(false);
        let server = Server { app, limits, tls: options.tls, conns: conns.clone(), counters: counters.clone() };
        runtime.spawn(accept_loop(listener, Arc::new(server), stop_rx));
        Ok(AdminServer { runtime: Some(runtime), local, shutdown, conns, counters })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The server's counters.
    pub fn counters(&self) -> &Arc<AdminCounters> {
        &self.counters
    }

    /// Stops serving: closes the listener and idle connections at once, lets requests in
    /// progress finish for at most [`STOP_GRACE`], then drops the rest.
    pub fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(rt) = self.runtime.take() {
            let conns = self.conns.clone();
            rt.block_on(async move {
                let deadline = tokio::time::Instant::now() + STOP_GRACE;
                while !conns.open.lock().is_empty() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            rt.shutdown_timeout(Duration::from_millis(200));
        }
    }
}

impl Drop for AdminServer {
    /// Dropped without [`AdminServer::stop`] (an error path): stop at once, waiting for nothing.
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            let _ = self.shutdown.send(true);
            rt.shutdown_background();
        }
    }
}

/// A whole HTTP/1.1 response closing the connection, with the API's JSON error body.
fn raw_error(status: u16, reason: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({"error": message, "status": status}).to_string();
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Polls a future, turning a panic into `Err(payload)`.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(p) => Poll::Ready(Err(p)),
        }
    }
}

/// What every connection task shares.
struct Server {
    app: axum::Router,
    limits: AdminLimits,
    tls: Option<Arc<AdminTls>>,
    conns: Arc<Conns>,
    counters: Arc<AdminCounters>,
}

async fn accept_loop(listener: TcpListener, server: Arc<Server>, mut stop: watch::Receiver<bool>) {
    let (conns, counters) = (&server.conns, &server.counters);
    let slots = Arc::new(Semaphore::new(server.limits.max_connections));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let freed = conns.evict_one();
                let got = if freed {
                    tokio::time::timeout(Duration::from_millis(100), slots.clone().acquire_owned()).await.ok()
                } else {
                    None
                };
                match got {
                    Some(Ok(p)) => {
                        counters.evicted.fetch_add(1, Ordering::Relaxed);
                        p
                    }
                    _ => {
                        counters.refused.fetch_add(1, Ordering::Relaxed);
                        // A TLS client could not read a plain answer: it is only closed.
                        if server.tls.is_none() {
                            let _ = stream.try_write(&raw_error(503, "Service Unavailable", "too many connections"));
                        }
                        continue;
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        let id = conns.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            in_flight: AtomicU32::new(0),
            head_started: AtomicU64::new(0),
            last: AtomicU64::new(conns.now_ms()),
            evicted: AtomicBool::new(false),
            changed: Notify::new(),
        });
        conns.open.lock().insert(id, state.clone());
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move {
            server.counters.connections.fetch_add(1, Ordering::Relaxed);
            let fut = connection(stream, &server, state, stop);
            if let Err(p) = CatchUnwind(Box::pin(fut)).await {
                server.counters.panicked("connection", &*p);
            }
            server.conns.open.lock().remove(&id);
            server.counters.connections.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// One connection: the TLS handshake when configured (within the head timeout, given up when
/// the connection is evicted), then its requests.
async fn connection(tcp: TcpStream, server: &Server, state: Arc<ConnState>, stop: watch::Receiver<bool>) {
    let stream = match &server.tls {
        None => Stream::Plain(tcp),
        Some(tls) => {
            let evicted = async {
                loop {
                    state.changed.notified().await;
                    if state.evicted.load(Ordering::Acquire) {
                        return;
                    }
                }
            };
            let shake = tokio::time::timeout(server.limits.header_timeout, super::tls::handshake(tls, tcp));
            let failed = |why: &dyn std::fmt::Display| {
                server.counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %why, "admin TLS handshake failed");
            };
            let r = tokio::select! {
                r = shake => r,
                _ = evicted => return,
            };
            match r {
                Ok(Ok(s)) => s,
                Ok(Err(HandshakeError::NotTls(mut tcp))) => {
                    failed(&"plain HTTP (or another protocol) on the TLS port");
                    let resp = raw_error(400, "Bad Request", "this port serves HTTPS: use https://");
                    let write = async {
                        tcp.write_all(&resp).await?;
                        tcp.shutdown().await
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
                    return;
                }
                Ok(Err(HandshakeError::Failed(e))) => return failed(&e),
                Err(_) => return failed(&"not completed within the head timeout"),
            }
        }
    };
    serve_conn(stream, server, state, stop).await;
}

/// The socket, noting when a request's first byte arrives.
struct Tracked {
    stream: Stream,
    state: Arc<ConnState>,
    conns: Arc<Conns>,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before
            && self.state.in_flight.load(Ordering::Acquire) == 0
            && self.state.head_started.load(Ordering::Relaxed) == 0
        {
            self.state.head_started.store(self.conns.now_ms() + 1, Ordering::Relaxed);
            self.state.changed.notify_one();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Marks a request in progress until dropped (answered, or its connection gone).
struct InFlight {
    state: Arc<ConnState>,
    conns: Arc<Conns>,
}

impl InFlight {
    fn new(state: Arc<ConnState>, conns: Arc<Conns>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        state.head_started.store(0, Ordering::Relaxed);
        state.changed.notify_one();
        InFlight { state, conns }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.last.store(self.conns.now_ms(), Ordering::Relaxed);
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.state.changed.notify_one();
    }
}

enum End {
    Done,
    HeadTimeout,
    Idle,
    Evicted,
}

async fn serve_conn(stream: Stream, server: &Server, state: Arc<ConnState>, mut stop: watch::Receiver<bool>) {
    let (app, limits, conns, counters) = (server.app.clone(), server.limits, server.conns.clone(), &*server.counters);
    let (st, cs) = (state.clone(), conns.clone());
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let guard = InFlight::new(st.clone(), cs.clone());
        let call = tower::ServiceExt::oneshot(app.clone(), req.map(axum::body::Body::new));
        async move {
            let r = call.await;
            drop(guard);
            r
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .max_buf_size(limits.max_header_bytes)
        .max_headers(MAX_HEADERS)
        .keep_alive(true)
        // A backstop only: the watchdog below closes idle and slow connections first.
        .header_read_timeout(limits.idle_timeout + limits.header_timeout + Duration::from_secs(1));
    let io = TokioIo::new(Tracked { stream, state: state.clone(), conns: conns.clone() });
    let mut conn = builder.serve_connection(io, svc);
    let mut stopping = *stop.borrow();
    if stopping {
        Pin::new(&mut conn).graceful_shutdown();
    }
    let end = loop {
        let deadline = if state.in_flight.load(Ordering::Acquire) > 0 {
            None
        } else {
            match state.head_started.load(Ordering::Relaxed) {
                0 => Some((conns.at(state.last.load(Ordering::Relaxed)) + limits.idle_timeout, End::Idle)),
                t => Some((conns.at(t - 1) + limits.header_timeout, End::HeadTimeout)),
            }
        };
        let (at, why) = match deadline {
            Some((at, why)) => (at, Some(why)),
            None => (tokio::time::Instant::now() + Duration::from_secs(3600), None),
        };
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "admin connection ended with an error");
                }
                break End::Done;
            }
            _ = tokio::time::sleep_until(at) => {
                if let Some(why) = why {
                    break why;
                }
            }
            _ = state.changed.notified() => {
                if state.evicted.load(Ordering::Acquire) && state.in_flight.load(Ordering::Acquire) == 0 {
                    break End::Evicted;
                }
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
        }
    };
    match end {
        End::Done | End::Idle | End::Evicted => {}
        End::HeadTimeout => {
            counters.timeouts.fetch_add(1, Ordering::Relaxed);
            let mut stream = conn.into_parts().io.into_inner().stream;
            let resp = raw_error(408, "Request Timeout", "request head not received in time");
            let write = async {
                stream.write_all(&resp).await?;
                stream.shutdown().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
        }
    }
}

/// Reads a request body of at most `limit` bytes within `timeout`.
pub(crate) async fn read_body(
    body: axum::body::Body,
    declared: Option<u64>,
    limit: usize,
    timeout: Duration,
) -> Result<axum::body::Bytes, BodyError> {
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            Err(if too_large { BodyError::TooLarge } else { BodyError::Read(e.to_string()) })
        }
    }
}

/// Why a request body was not read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Larger than the route's limit.
    TooLarge,
    /// Not received within the body timeout.
    Timeout,
    /// The connection failed or the framing was wrong.
    Read(String),
}

/// Runs `f` (a blocking control-thread call) on the blocking pool, at most [`CONTROL_CALLS`]
/// at once; `None` when no slot came free within 30 s or `f` panicked.
pub(crate) async fn blocking<T: Send + 'static>(shared: &Shared, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let permit =
        tokio::time::timeout(Duration::from_secs(30), shared.control.clone().acquire_owned()).await.ok()?.ok()?;
    let r = tokio::task::spawn_blocking(move || {
        let r = f();
        drop(permit);
        r
    })
    .await;
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            if e.is_panic() {
                shared.counters.panicked("control call", &*e.into_panic());
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn a_panic_in_a_connection_task_is_caught() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let r = rt.block_on(CatchUnwind(Box::pin(async { panic!("in a connection") as u8 })));
        let counters = AdminCounters::default();
        counters.panicked("connection", &*r.err().unwrap());
        assert_eq!(counters.panics.load(Ordering::Relaxed), 1);
        assert_eq!(rt.block_on(CatchUnwind(Box::pin(async { 7 }))).ok(), Some(7));
    }
}
