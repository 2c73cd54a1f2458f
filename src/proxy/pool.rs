//! Kept-alive HTTP/1.1 connections to one upstream, reused most recent first.
//!
//! Each [`super::Upstream`] owns its pool, so a request takes a connection without hashing a
//! key or sharing a lock with other upstreams, and a connection that cannot be used (closed by
//! the upstream, or refused) hands the request back unsent, to go over another connection or to
//! another upstream, whatever its method or body.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub(crate) type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Most idle connections kept per upstream; more are closed when they come back.
pub(crate) const MAX_IDLE: usize = 256;

/// Why a request did not get an answer.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be opened; the request was not sent and comes back.
    Connect {
        error: std::io::Error,
        request: Box<Request<ProxyBody>>,
    },
    /// The request went out (or started to) and the exchange failed.
    Failed(hyper::Error),
}

/// A connection in use, to be given back once its response has been read to the end.
#[derive(Debug)]
pub(crate) struct Lease(SendRequest<ProxyBody>);

#[derive(Debug, Default)]
pub(crate) struct Pool {
    /// Idle connections, oldest first.
    idle: Mutex<Vec<Idle>>,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

impl Pool {
    /// Sends `request` (its URI in origin form, its `Host` header set) to `address`: over an
    /// idle connection that is still open, or over a new one.
    pub(crate) async fn send(
        &self,
        address: &str,
        mut request: Request<ProxyBody>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        while let Some(mut sender) = self.take(idle_timeout) {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, Lease(sender))),
                Err(mut error) => match error.take_message() {
                    // Closed (or busy) before the request went out: try the next connection.
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Failed(error.into_error())),
                },
            }
        }
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(address)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                let request = Box::new(request);
                return Err(SendError::Connect { error, request });
            }
            Err(_) => {
                let error = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {connect_timeout:?}"),
                );
                let request = Box::new(request);
                return Err(SendError::Connect { error, request });
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(handshake) => handshake,
                Err(error) => return Err(SendError::Failed(error)),
            };
        let upstream = address.to_string();
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, %upstream, "upstream connection");
            }
        });
        match sender.send_request(request).await {
            Ok(response) => Ok((response, Lease(sender))),
            Err(error) => Err(SendError::Failed(error)),
        }
    }

    /// The most recently used idle connection that is ready for a request now; closed and
    /// expired ones are dropped on the way. One still sending an earlier request's body (the
    /// upstream answered before reading it all) stays for later, so no request waits behind
    /// another's upload.
    fn take(&self, idle_timeout: Duration) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let mut busy = Vec::new();
        let mut ready = None;
        while let Some(entry) = idle.pop() {
            if now.duration_since(entry.since) >= idle_timeout || entry.sender.is_closed() {
                continue;
            }
            if entry.sender.is_ready() {
                ready = Some(entry.sender);
                break;
            }
            busy.push(entry);
        }
        idle.extend(busy.into_iter().rev());
        ready
    }

    /// Gives a connection back after its response was read to the end.
    pub(crate) fn give_back(&self, lease: Lease, idle_timeout: Duration) {
        let Lease(sender) = lease;
        if sender.is_closed() {
            return;
        }
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The oldest are first: drop those past their time, and keep within the cap.
        let now = Instant::now();
        let expired = idle
            .iter()
            .take_while(|i| now.duration_since(i.since) >= idle_timeout)
            .count();
        let over = (idle.len() - expired + 1).saturating_sub(MAX_IDLE);
        idle.drain(..expired + over);
        idle.push(Idle { sender, since: now });
    }

    /// Idle connections kept now.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SECOND: Duration = Duration::from_secs(1);

    /// An upstream answering `ok` to each request, with `Connection: close` when `close`; counts
    /// the connections it accepted.
    async fn upstream(close: bool) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buffer = [0u8; 4096];
                    while let Ok(read) = stream.read(&mut buffer).await {
                        if read == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buffer[..read]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let header = if close { "Connection: close\r\n" } else { "" };
                            let answer =
                                format!("HTTP/1.1 200 OK\r\n{header}Content-Length: 2\r\n\r\nok");
                            if stream.write_all(answer.as_bytes()).await.is_err() || close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (address, accepted)
    }

    fn get() -> Request<ProxyBody> {
        Request::get("/")
            .header("host", "app.test")
            .body(
                Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap()
    }

    /// Sends one request and reads its answer to the end, as the proxy's response body does.
    async fn exchange(pool: &Pool, address: &str) -> String {
        let (response, lease) = pool.send(address, get(), SECOND, SECOND).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        pool.give_back(lease, SECOND);
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_was_read() {
        let (address, accepted) = upstream(false).await;
        let pool = Pool::default();
        for _ in 0..3 {
            assert_eq!(exchange(&pool, &address).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closes_is_not_reused_and_costs_no_request() {
        let (address, accepted) = upstream(true).await;
        let pool = Pool::default();
        for _ in 0..3 {
            assert_eq!(exchange(&pool, &address).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_hands_the_request_back_unsent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let request = Request::post("/upload")
            .header("host", "app.test")
            .body(
                Full::new(Bytes::from_static(b"payload"))
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap();
        match Pool::default()
            .send(&address, request, SECOND, SECOND)
            .await
        {
            Err(SendError::Connect { request, .. }) => {
                assert_eq!(request.uri().path(), "/upload");
                let body = (*request).into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], b"payload");
            }
            other => panic!("expected a refused connection, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn idle_connections_are_capped() {
        let (address, accepted) = upstream(false).await;
        let pool = Pool::default();
        // Every answer still held, so each request opens its own connection.
        let mut held = Vec::new();
        for _ in 0..MAX_IDLE + 3 {
            let (response, lease) = pool.send(&address, get(), SECOND, SECOND).await.unwrap();
            response.into_body().collect().await.unwrap();
            held.push(lease);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), MAX_IDLE + 3);
        for lease in held {
            pool.give_back(lease, SECOND);
        }
        assert_eq!(pool.idle(), MAX_IDLE);
    }
}
