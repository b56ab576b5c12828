//! The HTTP server's accept loop: every connection is bounded in time and in number, so that
//! connections that never become requests cannot starve the honest ones.
//!
//! A new connection must send its first request's headers within the header timeout (counted
//! from the accept), and each later request's headers within it from their first byte; between
//! requests a keep-alive connection may wait for the idle timeout. At the connection cap, the
//! connection idle the longest (waiting for headers or for its next request) is closed to make
//! room, so a flood of silent connections costs an honest sender nothing; only when every
//! connection is inside a request is a newcomer answered `503` at once. Hyper's own answers to
//! malformed requests get the API's JSON error body here, as every other error does.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service as _;

use crate::config::ConnectionLimits;
use crate::metrics::Metrics;
use crate::proxy::TrustedProxies;

/// How a listener serves its connections.
#[derive(Clone, Default)]
pub struct Serving {
    pub limits: ConnectionLimits,
    /// HTTPS with this configuration; plain HTTP without.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Whose forwarding header names the client.
    pub proxies: Arc<TrustedProxies>,
}

/// Serves `router` on `listener` until `shutdown` fires; then stops accepting, lets requests
/// in progress finish, and returns once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    serving: Serving,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let limits = serving.limits;
    let tls = serving.tls.map(tokio_rustls::TlsAcceptor::from);
    let table = Arc::new(Table::default());
    let tasks = TaskTracker::new();
    let epoch = Instant::now();
    // One sweep closes every connection past its deadline: no timer per connection or request.
    // It goes on while stopping: a connection trickling its headers must not hold the stop.
    let sweeping = tokio::spawn(sweep(table.clone(), limits, metrics.clone()));
    let mut next_id = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of files (EMFILE) or a connection reset before it was accepted: make
                    // room and go on; never stop serving.
                    if metrics.may_log_rejection() {
                        tracing::warn!(error = %e, "accepting a connection failed");
                    }
                    if table.evict_idlest() {
                        Metrics::add(&metrics.connections_evicted);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if table.len() >= limits.max_connections {
            if table.evict_idlest() {
                Metrics::add(&metrics.connections_evicted);
            } else {
                Metrics::add(&metrics.connections_refused);
                let answer = json_answer(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "every connection is busy; try again in a second",
                    "retry-after: 1\r\n",
                );
                tasks.spawn(refuse(stream, answer));
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let conn = Arc::new(Conn::new(next_id, epoch));
        table.insert(conn.clone());
        let (router, metrics, shutdown, table, tls, proxies) = (
            router.clone(),
            metrics.clone(),
            shutdown.clone(),
            table.clone(),
            tls.clone(),
            serving.proxies.clone(),
        );
        tasks.spawn(async move {
            Metrics::add(&metrics.connections_open);
            let peer = Peer {
                address: peer,
                proxies,
            };
            match tls {
                None => {
                    let stream = Tracked::new(stream, conn.clone());
                    serve_connection(stream, peer, router, &conn, shutdown).await;
                }
                Some(tls) => {
                    // The handshake is bounded by the header timeout like any first request:
                    // the sweep closes a connection that never finishes it.
                    let handshake = tokio::select! {
                        done = tls.accept(stream) => done.ok(),
                        () = conn.close.notified() => None,
                        () = shutdown.cancelled() => None,
                    };
                    if let Some(stream) = handshake {
                        // Tracked inside TLS: it reads requests and writes answers in clear.
                        let stream = Tracked::new(stream, conn.clone());
                        serve_connection(stream, peer, router, &conn, shutdown).await;
                    }
                }
            }
            table.remove(conn.id);
            metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    tasks.close();
    tasks.wait().await;
    sweeping.abort();
}

/// How often connections are checked against their deadlines: a timeout is honoured within
/// this much of its time.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// Closes, every [`SWEEP_EVERY`], the connections whose headers or next request are overdue.
async fn sweep(table: Arc<Table>, limits: ConnectionLimits, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let mut conns = table.conns.lock().expect("connection table");
        conns.retain(|_, conn| {
            let overdue = conn.deadline(&limits).is_some_and(|d| d <= now);
            if overdue {
                Metrics::add(&metrics.connections_timed_out);
                conn.close.notify_one();
            }
            !overdue
        });
    }
}

/// Who is at the other end of a connection.
struct Peer {
    address: SocketAddr,
    proxies: Arc<TrustedProxies>,
}

async fn serve_connection<S>(
    stream: S,
    peer: Peer,
    router: Router,
    conn: &Arc<Conn>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A peer reaching an IPv6 socket over IPv4 is the IPv4 address it is (`::ffff:1.2.3.4`
    // would never match an allow-list entry of `1.2.3.4`).
    let address = SocketAddr::new(peer.address.ip().to_canonical(), peer.address.port());
    let proxies = peer.proxies;
    let service = {
        let conn = conn.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            // Handlers, allow-lists, rate limits and logs see the client: the peer, or the
            // address a trusted proxy forwarded for.
            let client = SocketAddr::new(
                proxies.client(address.ip(), request.headers()),
                address.port(),
            );
            request.extensions_mut().insert(ConnectInfo(client));
            conn.request_started();
            let response = router.clone().call(request);
            let conn = conn.clone();
            async move {
                let response = response.await;
                conn.request_finished();
                response
            }
        })
    };
    let io = TokioIo::new(stream);
    let serving = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(serving);
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = serving.as_mut() => return,
            // Evicted to make room, or overdue.
            () = conn.close.notified() => return,
            () = shutdown.cancelled(), if !stopping => {
                stopping = true;
                serving.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Answers a connection that cannot be served and closes it, after reading what the client
/// sent (for at most a second): closing a socket with unread bytes would reset it, and the
/// client would lose the answer.
async fn refuse(mut stream: TcpStream, answer: Vec<u8>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

/// The open connections, for the accept loop to find the idlest.
#[derive(Default)]
struct Table {
    conns: Mutex<HashMap<u64, Arc<Conn>, foldhash::fast::RandomState>>,
}

impl Table {
    fn len(&self) -> usize {
        self.conns.lock().expect("connection table").len()
    }

    fn insert(&self, conn: Arc<Conn>) {
        self.conns
            .lock()
            .expect("connection table")
            .insert(conn.id, conn);
    }

    fn remove(&self, id: u64) {
        self.conns.lock().expect("connection table").remove(&id);
    }

    /// Closes the connection that has waited longest outside a request; false when every
    /// connection is inside one.
    fn evict_idlest(&self) -> bool {
        let mut conns = self.conns.lock().expect("connection table");
        let idlest = conns
            .values()
            .filter(|c| !c.busy())
            .min_by_key(|c| c.waiting_since.load(Ordering::Relaxed))
            .map(|c| c.id);
        match idlest.and_then(|id| conns.remove(&id)) {
            Some(conn) => {
                conn.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// What the accept loop and the connection's own task know of one connection.
struct Conn {
    id: u64,
    epoch: Instant,
    /// Requests handed to the router, and those it has answered.
    started: AtomicU64,
    finished: AtomicU64,
    /// Milliseconds since `epoch` at which the connection began waiting: its accept, or the
    /// answer to its last request.
    waiting_since: AtomicU64,
    /// Milliseconds since `epoch` of the first byte of the next request (0: none yet).
    head_since: AtomicU64,
    /// Tells the connection's task to close it.
    close: Notify,
}

impl Conn {
    fn new(id: u64, epoch: Instant) -> Self {
        let conn = Self {
            id,
            epoch,
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            waiting_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            close: Notify::new(),
        };
        conn.waiting_since.store(conn.now_ms(), Ordering::Relaxed);
        conn
    }

    fn now_ms(&self) -> u64 {
        // At least 1, so that 0 can mean "not set".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn busy(&self) -> bool {
        self.started.load(Ordering::Relaxed) > self.finished.load(Ordering::Relaxed)
    }

    fn request_started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
    }

    fn request_finished(&self) {
        self.waiting_since.store(self.now_ms(), Ordering::Relaxed);
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes arrived outside a request: the first of them starts the header timeout.
    fn bytes_arrived(&self) {
        if !self.busy() && self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// When the connection is to be closed if nothing changes; none while inside a request.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        if self.busy() {
            return None;
        }
        let at = |ms: u64, after: Duration| self.epoch + Duration::from_millis(ms) + after;
        let waiting = self.waiting_since.load(Ordering::Relaxed);
        if self.started.load(Ordering::Relaxed) == 0 {
            // The first request's headers are due from the accept.
            return Some(at(waiting, limits.header_timeout));
        }
        Some(match self.head_since.load(Ordering::Relaxed) {
            0 => at(waiting, limits.idle_timeout),
            head => at(head, limits.header_timeout),
        })
    }
}

/// A connection's socket, watched: reads outside a request start the header timeout, and a
/// response hyper writes on its own (to a request it could not parse) is given a JSON body.
struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
    /// Response heads written so far: one more than the router answered is hyper's own.
    heads: u64,
    /// A replacement answer still to be written, and how much of it is.
    pending: Option<(Vec<u8>, usize)>,
}

impl<S: AsyncWrite + Unpin> Tracked<S> {
    fn new(inner: S, conn: Arc<Conn>) -> Self {
        Self {
            inner,
            conn,
            heads: 0,
            pending: None,
        }
    }

    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    *written += n;
                    if *written == bytes.len() {
                        self.pending = None;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Whether `buf` starts a response the router did not make; it is then queued with a body.
    fn replace_own_answer(&mut self, buf: &[u8]) -> bool {
        if !buf.starts_with(b"HTTP/1.") {
            return false;
        }
        if self.heads < self.conn.started.load(Ordering::Relaxed) {
            self.heads += 1;
            return false;
        }
        self.pending = Some((malformed_answer(buf), 0));
        true
    }
}

/// The JSON answer for hyper's own response head `head` (400, 414, 431, 505 …).
fn malformed_answer(head: &[u8]) -> Vec<u8> {
    let status = head
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| http::StatusCode::from_u16(s).ok())
        .unwrap_or(http::StatusCode::BAD_REQUEST);
    let (code, detail) = match status.as_u16() {
        414 => ("uri_too_long", "the request's target is too long"),
        431 => (
            "headers_too_large",
            "the request's headers are too many or too large",
        ),
        505 => (
            "http_version_not_supported",
            "only HTTP/1.0 and HTTP/1.1 are served",
        ),
        _ => ("malformed_request", "the request is not valid HTTP/1.1"),
    };
    json_answer(status, code, detail, "")
}

/// A whole response with the API's error body, written straight to a socket that is then
/// closed.
fn json_answer(status: http::StatusCode, code: &str, detail: &str, headers: &str) -> Vec<u8> {
    let body = serde_json::json!({"code": code, "detail": detail}).to_string();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\nconnection: close\r\n\
         {headers}content-length: {}\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.conn.bytes_arrived();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.poll_pending(cx)?.is_pending() {
            return Poll::Pending;
        }
        if this.replace_own_answer(buf) {
            // What hyper wrote is answered for; the replacement goes out on the next flush.
            let _ = this.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.poll_pending(cx)?.is_pending() {
            return Poll::Pending;
        }
        if let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && this.replace_own_answer(first)
        {
            let _ = this.poll_pending(cx)?;
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_pending(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_pending(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Raises the process's soft limit of open files to its hard limit, and returns the limit in
/// force: each connection holds a file, and the default soft limit (often 1,024) is far below
/// what a flood of connections takes.
pub fn raise_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Ok(limit.rlim_cur)
}

/// The connection cap to use: the configured one, kept `reserve` files below the file limit
/// (the database, the log, delivery connections and the listener need theirs).
pub fn connection_cap(configured: usize, file_limit: u64) -> usize {
    const RESERVE: u64 = 512;
    let room = file_limit.saturating_sub(RESERVE).max(16);
    configured.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// Answers every plain-HTTP request with a permanent redirect to the same path over HTTPS:
/// at `public_url` when it is an `https://` URL, else at the request's host on `https_port`.
/// `308` keeps the method and body, so a webhook posted to `http://` is posted again to
/// `https://` by senders that follow redirects.
pub fn https_redirect(https_port: u16, public_url: Option<String>) -> Router {
    let base = public_url
        .filter(|u| u.starts_with("https://"))
        .map(|u| u.trim_end_matches('/').to_owned());
    Router::new().fallback(move |uri: http::Uri, headers: http::HeaderMap| {
        let base = base.clone();
        async move {
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let origin = match base {
                Some(base) => base,
                None => {
                    let host = headers
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .and_then(|h| h.parse::<http::uri::Authority>().ok());
                    let Some(host) = host else {
                        return http::Response::builder()
                            .status(http::StatusCode::BAD_REQUEST)
                            .header(http::header::CONTENT_TYPE, "application/json")
                            .body(axum::body::Body::from(
                                r#"{"code":"https_required","detail":"this address serves only redirects to HTTPS; send a Host header or use https://"}"#,
                            ))
                            .expect("a static response");
                    };
                    match https_port {
                        443 => format!("https://{}", host.host()),
                        port => format!("https://{}:{port}", host.host()),
                    }
                }
            };
            http::Response::builder()
                .status(http::StatusCode::PERMANENT_REDIRECT)
                .header(http::header::LOCATION, format!("{origin}{path}"))
                .body(axum::body::Body::empty())
                .expect("a redirect")
        }
    })
}
