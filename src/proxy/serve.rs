//! The proxy's listener: HTTP/1.1 from clients (keep-alive, upgrades), forwarded to upstreams
//! over pooled keep-alive connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use super::{Backend, InFlight, Proxy};

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1). `Trailer`
/// is not among them: it announces the body's trailers, which are forwarded.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// A response body that keeps its upstream counted as in flight until it is fully sent.
struct Guarded {
    body: ProxyBody,
    _in_flight: Option<InFlight>,
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
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

/// The request's host, lowercase, without a port.
fn host_of<B>(request: &Request<B>) -> Option<String> {
    let raw = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))?;
    let host = match raw.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) && !name.ends_with(']') => {
            name
        }
        _ => raw.as_str(),
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

/// The TLS settings for `[proxy] certificates`: each certificate served for its hosts, chosen
/// by the client's SNI.
pub fn tls_acceptor(
    certificates: &[crate::config::CertificateEntry],
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut resolver = rustls::server::ResolvesServerCertUsingSni::new();
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
        .with_cert_resolver(std::sync::Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

/// Serves the proxy on `listener` until `shutdown`: plain HTTP, or HTTPS with `tls`.
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let settings = proxy.settings().clone();
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(settings.connect_timeout));
    connector.set_nodelay(true);
    let client: Client<HttpConnector, ProxyBody> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(settings.idle_timeout)
        .pool_timer(TokioTimer::new())
        .build(connector);
    let scheme = if tls.is_some() { "https" } else { "http" };
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "proxy accept");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let client = client.clone();
        let tls = tls.clone();
        let idle = settings.idle_timeout;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let proxy = proxy.clone();
                let client = client.clone();
                async move {
                    Ok::<_, Infallible>(handle(&proxy, &client, remote, scheme, request).await)
                }
            });
            let builder = {
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.timer(TokioTimer::new()).header_read_timeout(idle);
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
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await
                }
                None => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, %remote, "proxy connection");
            }
        });
    }
}

/// Answers one request, counting it by route and status.
async fn handle(
    proxy: &Proxy,
    client: &Client<HttpConnector, ProxyBody>,
    remote: SocketAddr,
    scheme: &'static str,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let mut backend = None;
    let response = forward(proxy, client, remote, scheme, request, &mut backend).await;
    let counters = backend
        .as_ref()
        .map_or(&proxy.inner.unrouted, |b: &Arc<Backend>| &b.counters);
    counters.count(response.status().as_u16());
    response
}

async fn forward(
    proxy: &Proxy,
    client: &Client<HttpConnector, ProxyBody>,
    remote: SocketAddr,
    scheme: &'static str,
    mut request: Request<Incoming>,
    found: &mut Option<Arc<Backend>>,
) -> Response<ProxyBody> {
    let Some(host) = host_of(&request) else {
        return page(StatusCode::BAD_REQUEST, "The request names no host.");
    };
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let Some(mut backend) = proxy.find(&host, &path) else {
        return page(
            StatusCode::NOT_FOUND,
            &format!("No app is served at {host}{path}."),
        );
    };
    *found = Some(backend.clone());
    let upgrade = is_upgrade(request.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let upgrade_headers = upgrade.then(|| {
        (
            parts.headers.get(header::UPGRADE).cloned(),
            parts.headers.get(header::CONNECTION).cloned(),
        )
    });
    strip_hop_by_hop(&mut parts.headers);
    if let Some((Some(protocol), _)) = &upgrade_headers {
        parts.headers.insert(header::UPGRADE, protocol.clone());
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let forwarded_for = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(earlier) => format!("{earlier}, {}", remote.ip()),
        None => remote.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        parts.headers.insert("x-forwarded-for", value);
    }
    parts
        .headers
        .insert("x-forwarded-proto", HeaderValue::from_static(scheme));
    if let Ok(value) = HeaderValue::from_str(&host) {
        parts.headers.insert("x-forwarded-host", value);
    }
    // A request without a body can be sent again to another upstream when the first refuses
    // the connection; one with a body goes once. hyper knows from the request's framing
    // (`Content-Length`, or chunked `Transfer-Encoding`, which was stripped above as
    // hop-by-hop and is framed again on the way out).
    let bodiless = body.is_end_stream();
    let mut body = Some(body.boxed());
    let mut tried: Vec<String> = Vec::new();
    let settings = proxy.settings();
    loop {
        let Some(in_flight) = proxy.pick_current(&mut backend, &host, &path, &tried) else {
            return page(
                StatusCode::BAD_GATEWAY,
                &format!("No healthy upstream for {host}{path}."),
            );
        };
        *found = Some(backend.clone());
        let upstream = in_flight.0.clone();
        tried.push(upstream.address.clone());
        let uri = match format!("http://{}{path}", upstream.address).parse::<http::Uri>() {
            Ok(uri) => uri,
            Err(_) => return page(StatusCode::BAD_REQUEST, "The request's path is not valid."),
        };
        let mut attempt = Request::from_parts(parts.clone(), empty());
        *attempt.uri_mut() = uri;
        *attempt.body_mut() = if bodiless {
            empty()
        } else {
            body.take().unwrap_or_else(empty)
        };
        match tokio::time::timeout(settings.response_timeout, client.request(attempt)).await {
            Err(_) => {
                return page(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!("{host}{path} did not answer in time."),
                );
            }
            Ok(Err(error)) if error.is_connect() => {
                proxy.eject(&upstream);
                tracing::warn!(upstream = %upstream.address, container = %upstream.container, %error, "upstream refused; ejected");
                if bodiless && tried.len() < 3 {
                    continue;
                }
                return page(
                    StatusCode::BAD_GATEWAY,
                    &format!("The app at {host}{path} could not be reached."),
                );
            }
            Ok(Err(error)) => {
                tracing::warn!(upstream = %upstream.address, %error, "upstream failed");
                return page(
                    StatusCode::BAD_GATEWAY,
                    &format!("The app at {host}{path} failed to answer."),
                );
            }
            Ok(Ok(mut response)) => {
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client_upgrade) = client_upgrade {
                        let upstream_upgrade = hyper::upgrade::on(&mut response);
                        tokio::spawn(async move {
                            let _in_flight = in_flight;
                            if let (Ok(a), Ok(b)) = (client_upgrade.await, upstream_upgrade.await) {
                                let _ = tokio::io::copy_bidirectional(
                                    &mut TokioIo::new(a),
                                    &mut TokioIo::new(b),
                                )
                                .await;
                            }
                        });
                        let (parts, _) = response.into_parts();
                        return Response::from_parts(parts, empty());
                    }
                }
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let body = Guarded {
                    body: body.boxed(),
                    _in_flight: Some(in_flight),
                };
                return Response::from_parts(parts, body.boxed());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port_and_case() {
        let request = Request::get("/")
            .header("host", "Shop.Example.com:8080")
            .body(())
            .unwrap();
        assert_eq!(host_of(&request).as_deref(), Some("shop.example.com"));
        let request = Request::get("/").header("host", "[::1]").body(()).unwrap();
        assert_eq!(host_of(&request).as_deref(), Some("[::1]"));
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
}
