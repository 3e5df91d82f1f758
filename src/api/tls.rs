//! TLS for the admin API: rustls (on the `ring` provider) through tokio-rustls, with a
//! certificate that a reload replaces without a restart.
//!
//! `[admin] tls_cert` (PEM: the server certificate first, then its chain) and `tls_key` (PEM:
//! PKCS#8, PKCS#1 or SEC1) are read and checked together (the key must match the certificate)
//! at start and on every SIGHUP; a bad new pair keeps the running one (the reload fails and
//! says why). New connections get the new certificate; open ones keep theirs. HTTP/1.1 only
//! (ALPN `http/1.1`), TLS 1.2 and 1.3 with rustls' safe defaults.
//!
//! A connection's first byte decides: a TLS handshake record (`0x16`) is handshaken within the
//! head timeout, anything else (plain HTTP to the HTTPS port) is answered a plain-text `400`
//! saying to use `https://` and closed. Either failure is counted
//! (`heartsink_admin_tls_handshake_failures_total`) and logged at debug level; the server keeps
//! serving. The server's limits and timeouts apply to TLS connections as to plain ones: the
//! connection slot is taken before the handshake, which is bounded by the head timeout.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Largest certificate or key file read, bytes.
pub const MAX_PEM_FILE: u64 = 1 << 20;

/// Why a certificate and key cannot be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// Only one of `tls_cert` and `tls_key` is configured: give both.
    Incomplete,
    /// A file could not be read (missing, unreadable, over 1 MiB).
    Read(PathBuf, io::Error),
    /// The certificate file holds no PEM `CERTIFICATE` block, or a malformed one.
    Certificate(PathBuf, String),
    /// The key file holds no PEM private key, or a malformed one.
    Key(PathBuf, String),
    /// The key is not usable with the certificate (unsupported type, or not the certificate's key).
    Mismatch(String),
    /// rustls refused the configuration.
    Config(String),
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Incomplete => {
                write!(f, "admin TLS needs both tls_cert and tls_key (--admin-tls-cert, --admin-tls-key)")
            }
            TlsError::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            TlsError::Certificate(p, m) => write!(f, "admin TLS certificate {}: {m}", p.display()),
            TlsError::Key(p, m) => write!(f, "admin TLS key {}: {m}", p.display()),
            TlsError::Mismatch(m) => write!(f, "admin TLS key does not fit the certificate: {m}"),
            TlsError::Config(m) => write!(f, "admin TLS configuration: {m}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// rustls on `ring`: rustls 0.23.48 deprecates it for lacking post-quantum key exchange (its
/// `aws-lc-rs` provider has it, but needs cmake and nasm to build). The admin API keeps
/// X25519, P-256 and P-384 key exchange; revisit when `ring` gains ML-KEM or the build may
/// need those tools.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain with its key, read and checked.
#[derive(Clone, Debug)]
pub struct CertPair(Arc<CertifiedKey>);

impl CertPair {
    /// Reads `cert` (PEM chain, server certificate first) and `key` (PEM private key) and
    /// checks that the key is the certificate's.
    pub fn load(cert: &Path, key: &Path) -> Result<CertPair, TlsError> {
        let cert_pem = crate::util::read_bounded(cert, MAX_PEM_FILE).map_err(|e| TlsError::Read(cert.to_owned(), e))?;
        let key_pem = crate::util::read_bounded(key, MAX_PEM_FILE).map_err(|e| TlsError::Read(key.to_owned(), e))?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Certificate(cert.to_owned(), e.to_string()))?;
        if chain.is_empty() {
            return Err(TlsError::Certificate(cert.to_owned(), "no PEM CERTIFICATE block".into()));
        }
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            let why = match e {
                rustls::pki_types::pem::Error::NoItemsFound => "no PEM private key block".to_owned(),
                e => e.to_string(),
            };
            TlsError::Key(key.to_owned(), why)
        })?;
        let ck = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| TlsError::Mismatch(e.to_string()))?;
        Ok(CertPair(Arc::new(ck)))
    }
}

/// Hands the current certificate to each handshake.
#[derive(Debug)]
struct Resolver(Arc<arc_swap::ArcSwap<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The admin server's TLS: the acceptor and the certificate a reload replaces.
pub struct AdminTls {
    current: Arc<arc_swap::ArcSwap<CertifiedKey>>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for AdminTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminTls").finish_non_exhaustive()
    }
}

impl AdminTls {
    /// TLS serving `pair`.
    pub fn new(pair: CertPair) -> Result<AdminTls, TlsError> {
        let current = Arc::new(arc_swap::ArcSwap::new(pair.0));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(current.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(AdminTls { current, acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)) })
    }

    /// Serves `pair` from the next handshake on.
    pub fn replace(&self, pair: CertPair) {
        self.current.store(pair.0);
    }

    pub(crate) fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }
}

/// A connection: plain TCP, or TLS over it.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Why a TLS connection was not established.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    /// The client spoke something else first (plain HTTP): answer it a plain `400`.
    NotTls(TcpStream),
    /// The handshake failed or the connection closed.
    Failed(io::Error),
}

/// Establishes TLS on `tcp` (the caller bounds the time).
pub(crate) async fn handshake(tls: &AdminTls, tcp: TcpStream) -> Result<Stream, HandshakeError> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(0) => return Err(HandshakeError::Failed(io::ErrorKind::UnexpectedEof.into())),
        Ok(_) if first[0] != 0x16 => return Err(HandshakeError::NotTls(tcp)),
        Ok(_) => {}
        Err(e) => return Err(HandshakeError::Failed(e)),
    }
    tls.acceptor().accept(tcp).await.map(|s| Stream::Tls(Box::new(s))).map_err(HandshakeError::Failed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn bad_files_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a pem file\n").unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(matches!(CertPair::load(&missing, &junk), Err(TlsError::Read(..))));
        let e = CertPair::load(&junk, &junk).unwrap_err();
        assert!(matches!(e, TlsError::Certificate(..)) && e.to_string().contains("junk.pem"), "{e}");
        let a = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key, other_key) = (dir.path().join("c"), dir.path().join("k"), dir.path().join("o"));
        std::fs::write(&cert, a.cert.pem()).unwrap();
        std::fs::write(&key, a.signing_key.serialize_pem()).unwrap();
        std::fs::write(&other_key, b.signing_key.serialize_pem()).unwrap();
        assert!(matches!(CertPair::load(&cert, &junk), Err(TlsError::Key(..))));
        assert!(matches!(CertPair::load(&cert, &other_key), Err(TlsError::Mismatch(_))));
        let pair = CertPair::load(&cert, &key).unwrap();
        let tls = AdminTls::new(pair).unwrap();
        tls.replace(CertPair::load(&cert, &key).unwrap());
    }
}
