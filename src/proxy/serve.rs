//! The proxy's listener: HTTP/1.1 from clients (keep-alive, upgrades), forwarded to upstreams
//! over pooled keep-alive connections.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::framing::{HEAD_LIMIT, Refusal, Verdicts, Watched};
use super::pool::{Lease, ProxyBody, SendError};
use super::{Backend, InFlight, Proxy, Upstream};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1). `Trailer`
/// is not among them: it announces the body's trailers, which are forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// An upstream's response body. It keeps its upstream counted as in flight until it is fully
/// sent, and then gives the connection back to the upstream's pool.
struct Guarded {
    body: Incoming,
    in_flight: InFlight,
    lease: Option<Lease>,
    idle_timeout: Duration,
    ended: bool,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // Read to the end: the connection can carry another request. Otherwise it is closed
        // (the client went away mid-body), since its unread rest would reach the next request.
        if self.ended || self.body.is_end_stream() {
            if let Some(lease) = self.lease.take() {
                self.in_flight.0.pool.give_back(lease, self.idle_timeout);
            }
        }
    }
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn page(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>{code}</title><h1>{code}</h1><p>{text}</p>\n",
        code = status,
        text = text.replace('&', "&amp;").replace('<', "&lt;"),
    );
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::SERVER, "dropship")
        .body(
            Full::new(Bytes::from(html))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("a static response builds")
}

/// Drops hop-by-hop headers, and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: one pass to see, instead of a lookup per name.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// The request's host (from `Host`, or an absolute URI), lowercase, without a port or a final
/// dot; borrowed when it already is so.
fn host_of<'a>(
    header: Option<&'a HeaderValue>,
    authority: Option<&'a Authority>,
) -> Option<Cow<'a, str>> {
    let raw = match header {
        Some(value) => value.to_str().ok()?,
        None => authority?.as_str(),
    };
    let host = match raw.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) && !name.ends_with(']') => {
            name
        }
        _ => raw,
    };
    let host = host.trim_end_matches('.');
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// Picks the certificate for the host a client names (SNI). A client that names none (one that
/// connects to an IP address, or a very old one) gets the first configured certificate, as
/// nginx's default server does; a host no certificate covers gets none.
#[derive(Debug)]
struct BySni {
    hosts: rustls::server::ResolvesServerCertUsingSni,
    without_sni: Option<Arc<rustls::sign::CertifiedKey>>,
}

impl rustls::server::ResolvesServerCert for BySni {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        match hello.server_name() {
            Some(_) => self.hosts.resolve(hello),
            None => self.without_sni.clone(),
        }
    }
}

/// The TLS settings for `[proxy] certificates`: each certificate served for its hosts, chosen
/// by the client's SNI.
pub fn tls_acceptor(
    certificates: &[crate::config::CertificateEntry],
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    // aws-lc's x25519 and AES-GCM are hand-written assembly, as OpenSSL's are; with *ring*'s
    // portable x25519, a quarter of a handshake's time went to the key exchange
    // (docs/benchmarks.md, TLS profile).
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // The server picks: AES-128-GCM with SHA-256 first. A handshake's key schedule is mostly
    // hashing, and SHA-256 has CPU instructions of its own (SHA-NI) where SHA-384 has none, so
    // this halves the hashing cost of each handshake (docs/benchmarks.md, TLS profile).
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let provider = std::sync::Arc::new(provider);
    let mut resolver = rustls::server::ResolvesServerCertUsingSni::new();
    let mut first = None;
    for entry in certificates {
        let chain = CertificateDer::pem_file_iter(&entry.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("reading certificates from {}", entry.cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(&entry.key)
            .with_context(|| format!("reading the private key {}", entry.key.display()))?;
        let key = provider
            .key_provider
            .load_private_key(key)
            .with_context(|| format!("loading the private key {}", entry.key.display()))?;
        let certified = rustls::sign::CertifiedKey::new(chain, key);
        first.get_or_insert_with(|| std::sync::Arc::new(certified.clone()));
        for host in &entry.hosts {
            resolver
                .add(&host.to_ascii_lowercase(), certified.clone())
                .with_context(|| format!("certificate {} for {host}", entry.cert.display()))?;
        }
    }
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(std::sync::Arc::new(BySni {
            hosts: resolver,
            without_sni: first,
        }));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    // Stateless session tickets (encrypted with a key rotated every 6 hours), so that every
    // client may resume, not only the last 256 of the default in-memory cache; and one ticket
    // a connection, which is what one connection resumes with (every ticket costs the client a
    // session to store).
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().context("TLS session tickets")?;
    config.send_tls13_tickets = 1;
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// What the requests of one client connection share.
struct Connection {
    remote: SocketAddr,
    /// The client's address as `X-Forwarded-For` carries it.
    client: HeaderValue,
    /// The connection's place under `[proxy] max_connections`, held by an upgrade's tunnel too.
    _permit: OwnedSemaphorePermit,
    /// What the connection's reader saw of each request's framing.
    verdicts: Arc<Verdicts>,
    /// Requests read so far.
    requests: std::sync::atomic::AtomicU64,
}

/// What every connection of one listener shares.
struct Forwarder {
    proxy: Proxy,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    scheme: HeaderValue,
}

/// Connections waiting to be accepted, per worker listener.
const BACKLOG: i32 = 1024;

/// Serves the proxy at `address` until `shutdown` on `workers` threads, each with a
/// single-threaded runtime and a listener of its own on that address (`SO_REUSEPORT`: the
/// kernel spreads new connections over them), as nginx's workers do, so that a client
/// connection and its requests stay on one thread (the upstream pools are shared by all
/// workers). Plain HTTP, or HTTPS with `tls`; the workers share `[proxy] max_connections`.
///
/// Returns the address bound (its port chosen if `address` gave 0) and a future that ends when
/// every worker has.
pub fn serve_on_workers(
    address: SocketAddr,
    proxy: Proxy,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
    workers: usize,
) -> anyhow::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    use anyhow::Context;
    let cap = crate::listen::Cap::new(proxy.settings().max_connections);
    // An address another process (an earlier Dropship still running) listens at is refused
    // here: `SO_REUSEPORT` alone would share it with that process without a word.
    let probe = std::net::TcpListener::bind(address)
        .with_context(|| format!("binding the proxy to {address}"))?;
    let mut bound = probe.local_addr()?;
    drop(probe);
    // Every listener first, so that a failure leaves no worker running.
    let mut listeners = Vec::new();
    for _ in 0..workers.max(1) {
        let listener =
            reuse_port_listener(bound).with_context(|| format!("binding the proxy to {bound}"))?;
        // The others bind the port the first got.
        bound = listener.local_addr()?;
        listeners.push(listener);
    }
    let mut ended = Vec::new();
    for (worker, listener) in listeners.into_iter().enumerate() {
        let (proxy, tls, shutdown, cap) =
            (proxy.clone(), tls.clone(), shutdown.clone(), cap.clone());
        let (done, end) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("proxy-{worker}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(async move {
                        tokio::spawn(keep_a_timer_pending());
                        match TcpListener::from_std(listener) {
                            Ok(listener) => {
                                let gate = crate::listen::Gate::sharing(listener, cap, "proxy");
                                serve_gate(gate, proxy, tls, shutdown).await;
                            }
                            Err(error) => tracing::error!(%error, worker, "proxy listener"),
                        }
                    }),
                    Err(error) => tracing::error!(%error, worker, "proxy runtime"),
                }
                drop(done);
            })
            .context("starting a proxy worker")?;
        ended.push(end);
    }
    Ok((bound, async move {
        for end in ended {
            let _ = end.await;
        }
    }))
}

/// How often a proxy worker's heartbeat timer fires.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Keeps a timer pending on this worker's runtime, [`HEARTBEAT`] away at most. Tokio's timer
/// wakes its driver (an eventfd write, then one more `epoll_wait` round) for every new timer
/// earlier than the next one it knew of when it last parked, and for every new timer when it
/// knew of none: on an idle worker, each request's response timeout did, about one extra
/// wake-up per three requests at 5,000 requests/s (docs/benchmarks.md, paced profile). With
/// this timer pending, the timeouts of requests (seconds away) come after it and wake nothing.
async fn keep_a_timer_pending() {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// Serves `connection` until it ends, or until `shutdown`: then it finishes the request under
/// way, if any, and closes.
async fn until_shutdown<C>(connection: C, shutdown: &CancellationToken) -> Result<(), hyper::Error>
where
    C: std::future::Future<Output = Result<(), hyper::Error>> + GracefulConnection,
{
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful();
            connection.await
        }
    }
}

/// A hyper connection that can be asked to close once its request under way is answered.
trait GracefulConnection {
    fn graceful(self: Pin<&mut Self>);
}

impl<I, S> GracefulConnection for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = ProxyBody>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// A listening socket at `address` that other sockets may listen at too (`SO_REUSEPORT`).
fn reuse_port_listener(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Serves the proxy through `gate` until `shutdown`: plain HTTP, or HTTPS with `tls`.
async fn serve_gate(
    gate: crate::listen::Gate,
    proxy: Proxy,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let idle = proxy.settings().idle_timeout;
    let scheme = HeaderValue::from_static(if tls.is_some() { "https" } else { "http" });
    let forwarder = Arc::new(Forwarder { proxy, scheme });
    while let Some((stream, remote, permit)) = gate.accept(&shutdown).await {
        let forwarder = forwarder.clone();
        let (tls, shutdown) = (tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            let verdicts = Arc::new(Verdicts::default());
            // Held by the connection's requests, and by the tunnel of an upgrade it hands off.
            let connection = Arc::new(Connection {
                remote,
                client: HeaderValue::from_str(&remote.ip().to_string())
                    .expect("an IP address is a valid header value"),
                _permit: permit,
                verdicts: verdicts.clone(),
                requests: Default::default(),
            });
            let service = hyper::service::service_fn(move |request| {
                let (forwarder, connection) = (forwarder.clone(), connection.clone());
                async move {
                    let response = forwarder.handle(connection, request).await;
                    Ok::<_, Infallible>(response)
                }
            });
            let builder = {
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(idle)
                    .max_buf_size(HEAD_LIMIT);
                builder
            };
            let result = match tls {
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(idle, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%error, %remote, "TLS handshake");
                            return;
                        }
                        Err(_) => return,
                    };
                    let connection = builder
                        .serve_connection(TokioIo::new(Watched::new(stream, verdicts)), service)
                        .with_upgrades();
                    until_shutdown(connection, &shutdown).await
                }
                None => {
                    let connection = builder
                        .serve_connection(TokioIo::new(Watched::new(stream, verdicts)), service)
                        .with_upgrades();
                    until_shutdown(connection, &shutdown).await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, %remote, "proxy connection");
            }
        });
    }
    if !gate.close_and_drain(crate::listen::SHUTDOWN_GRACE).await {
        tracing::warn!(grace = ?crate::listen::SHUTDOWN_GRACE, "proxy connections still open after shutdown; closing them");
    }
}

impl Forwarder {
    /// Answers one request, counting it by route and status.
    async fn handle(
        &self,
        connection: Arc<Connection>,
        request: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let mut backend = None;
        let number = connection
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let response = match connection.verdicts.refusal(number) {
            None => self.forward(connection, request, &mut backend).await,
            Some(why) => {
                let mut refused = match why {
                    Refusal::Framing => page(
                        StatusCode::BAD_REQUEST,
                        "The request gives both Content-Length and Transfer-Encoding.",
                    ),
                    Refusal::HeadTooLarge => page(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "The request's head is over 64 KiB.",
                    ),
                    Refusal::Unfollowed => page(
                        StatusCode::BAD_REQUEST,
                        "An earlier request on this connection was malformed.",
                    ),
                };
                // What follows on the connection is never read.
                refused
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                refused
            }
        };
        let counters = backend
            .as_ref()
            .map_or(&self.proxy.inner.unrouted, |b: &Arc<Backend>| &b.counters);
        counters.count(response.status().as_u16());
        response
    }

    async fn forward(
        &self,
        connection: Arc<Connection>,
        request: Request<Incoming>,
        found: &mut Option<Arc<Backend>>,
    ) -> Response<ProxyBody> {
        let proxy = &self.proxy;
        let (mut parts, body) = request.into_parts();
        let host_header = parts.headers.get(header::HOST).cloned();
        let authority = parts.uri.authority().cloned();
        let Some(host) = host_of(host_header.as_ref(), authority.as_ref()) else {
            return page(StatusCode::BAD_REQUEST, "The request names no host.");
        };
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let path = path_and_query.as_str();
        let Some(backend) = proxy.find(&host, path) else {
            return page(
                StatusCode::NOT_FOUND,
                &format!("No app is served at {host}{path}."),
            );
        };
        // The route counts the answer; a switch during the request updates it in place.
        let backend = found.insert(backend);
        let client_upgrade =
            self.forwarding_headers(&connection, &mut parts, &host, host_header.as_ref());
        // Sent in origin form; an upstream learns the host from `Host`.
        parts.uri = Uri::from(path_and_query.clone());
        // hyper frames the body again on the way out from what it knows of it (its length, or
        // chunks: `Transfer-Encoding` was stripped above as hop-by-hop).
        let mut request = Request::from_parts(parts, body.boxed());
        // Upstreams that refused a connection: a retry goes elsewhere.
        let mut tried: Vec<Arc<Upstream>> = Vec::new();
        let settings = proxy.settings();
        loop {
            let Some(in_flight) = proxy.pick_current(backend, &host, path, &tried) else {
                return page(
                    StatusCode::BAD_GATEWAY,
                    &format!("No healthy upstream for {host}{path}."),
                );
            };
            let upstream = &in_flight.0;
            let sent = upstream.pool.send(
                &upstream.address,
                request,
                settings.connect_timeout,
                settings.idle_timeout,
            );
            match tokio::time::timeout(settings.response_timeout, sent).await {
                Err(_) => {
                    return page(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!("{host}{path} did not answer in time."),
                    );
                }
                // Never sent, so it can go to another upstream, whatever its method or body.
                Ok(Err(SendError::Connect {
                    error,
                    request: unsent,
                })) => {
                    proxy.eject(upstream);
                    tracing::warn!(upstream = %upstream.address, container = %upstream.container, %error, "upstream refused; ejected");
                    if tried.len() < 2 {
                        tried.push(upstream.clone());
                        request = *unsent;
                        continue;
                    }
                    return page(
                        StatusCode::BAD_GATEWAY,
                        &format!("The app at {host}{path} could not be reached."),
                    );
                }
                Ok(Err(SendError::Failed(error))) => {
                    tracing::warn!(upstream = %upstream.address, %error, "upstream failed");
                    return page(
                        StatusCode::BAD_GATEWAY,
                        &format!("The app at {host}{path} failed to answer."),
                    );
                }
                Ok(Ok((response, lease))) => {
                    return match client_upgrade {
                        Some(client_upgrade)
                            if response.status() == StatusCode::SWITCHING_PROTOCOLS =>
                        {
                            tunnel(connection, response, client_upgrade, in_flight, lease)
                        }
                        _ => {
                            let (mut parts, body) = response.into_parts();
                            strip_hop_by_hop(&mut parts.headers);
                            let body = Guarded {
                                body,
                                in_flight,
                                lease: Some(lease),
                                idle_timeout: settings.idle_timeout,
                                ended: false,
                            };
                            Response::from_parts(parts, body.boxed())
                        }
                    };
                }
            }
        }
    }

    /// Readies the request's headers for the upstream: hop-by-hop ones removed (an upgrade's
    /// own put back), `X-Forwarded-For`, `-Proto` and `-Host` set, and `Host` where the
    /// request named its host only in its URI. Returns the client's side of an upgrade it
    /// asks for.
    fn forwarding_headers(
        &self,
        connection: &Connection,
        parts: &mut http::request::Parts,
        host: &str,
        host_header: Option<&HeaderValue>,
    ) -> Option<OnUpgrade> {
        let upgrade = is_upgrade(&parts.headers);
        let client_upgrade = upgrade
            .then(|| parts.extensions.remove::<OnUpgrade>())
            .flatten();
        let upgrade_protocol = upgrade
            .then(|| parts.headers.get(header::UPGRADE).cloned())
            .flatten();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(protocol) = upgrade_protocol {
            parts.headers.insert(header::UPGRADE, protocol);
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        let forwarded_for = match parts.headers.get(X_FORWARDED_FOR) {
            Some(earlier) => earlier
                .to_str()
                .ok()
                .and_then(|earlier| {
                    HeaderValue::from_str(&format!("{earlier}, {}", connection.remote.ip())).ok()
                })
                .unwrap_or_else(|| connection.client.clone()),
            None => connection.client.clone(),
        };
        parts.headers.insert(X_FORWARDED_FOR, forwarded_for);
        parts.headers.insert(X_FORWARDED_PROTO, self.scheme.clone());
        let forwarded_host = match host_header {
            Some(value) if value.as_bytes() == host.as_bytes() => Some(value.clone()),
            _ => HeaderValue::from_str(host).ok(),
        };
        if let Some(value) = forwarded_host {
            if host_header.is_none() {
                parts.headers.insert(header::HOST, value.clone());
            }
            parts.headers.insert(X_FORWARDED_HOST, value);
        }
        client_upgrade
    }
}

/// An upstream's `101`: both sides' upgraded connections are joined, holding the upstream's
/// place and the connection, and the client gets the `101`.
fn tunnel(
    connection: Arc<Connection>,
    mut response: Response<Incoming>,
    client_upgrade: OnUpgrade,
    in_flight: InFlight,
    lease: Lease,
) -> Response<ProxyBody> {
    let upstream_upgrade = hyper::upgrade::on(&mut response);
    connection.verdicts.upgraded();
    tokio::spawn(async move {
        let _held = (in_flight, lease, connection);
        if let (Ok(a), Ok(b)) = (client_upgrade.await, upstream_upgrade.await) {
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b)).await;
        }
    });
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port_and_case() {
        let host = |value: &'static str| {
            host_of(Some(&HeaderValue::from_static(value)), None).map(Cow::into_owned)
        };
        assert_eq!(
            host("Shop.Example.com:8080").as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(host("[::1]").as_deref(), Some("[::1]"));
        let authority = Authority::from_static("shop.test:80");
        assert!(matches!(
            host_of(None, Some(&authority)),
            Some(Cow::Borrowed("shop.test"))
        ));
    }

    #[test]
    fn connection_named_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert!(headers.get("x-secret-hop").is_none() && headers.get("connection").is_none());
        assert!(headers.get("x-kept").is_some());
    }

    /// More clients than any in-memory session cache holds each resume: the session lives in
    /// its ticket, not in the server.
    #[tokio::test]
    async fn every_client_resumes_its_tls_session() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const CLIENTS: usize = 300;
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["shop.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let acceptor = tls_acceptor(&[crate::config::CertificateEntry {
            hosts: vec!["shop.test".into()],
            cert: cert_path,
            key: key_path,
        }])
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut stream) = acceptor.accept(stream).await {
                        let _ = stream.write_all(b"hi").await;
                        let _ = stream.shutdown().await;
                    }
                });
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let client_config = || {
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth()
        };
        // Every client's own session store; each reads to the end, so it takes its ticket.
        let connect = async |connector: &tokio_rustls::TlsConnector| {
            let stream = tokio::net::TcpStream::connect(address).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("shop.test").unwrap();
            let mut stream = connector.connect(name, stream).await.unwrap();
            let mut text = Vec::new();
            stream.read_to_end(&mut text).await.unwrap();
            assert_eq!(text, b"hi");
            stream.get_ref().1.handshake_kind()
        };
        let connectors: Vec<_> = (0..CLIENTS)
            .map(|_| tokio_rustls::TlsConnector::from(Arc::new(client_config())))
            .collect();
        for connector in &connectors {
            assert_eq!(connect(connector).await, Some(rustls::HandshakeKind::Full));
        }
        let mut resumed = 0;
        for connector in &connectors {
            if connect(connector).await == Some(rustls::HandshakeKind::Resumed) {
                resumed += 1;
            }
        }
        assert_eq!(resumed, CLIENTS, "clients that resumed their session");
    }
}
