//! Accepting TCP connections with a cap: the one accept loop behind both the web listener
//! (`http::serve`) and the proxy's listeners (`proxy::serve`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How long a listener waits, after shutdown, for its open connections to end: a page that
/// follows a log live ends only with its client, and a proxied request gets to finish.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long accepting pauses after an error (out of file descriptors and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A cap on connections served at once, which several listeners may share.
#[derive(Debug, Clone)]
pub(crate) struct Cap {
    permits: Arc<Semaphore>,
    limit: u32,
}

impl Cap {
    pub(crate) fn new(limit: usize) -> Cap {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Cap {
            permits: Arc::new(Semaphore::new(limit)),
            limit: limit as u32,
        }
    }
}

/// A listener that serves at most `limit` connections at once; the rest wait, unanswered (in
/// the kernel's listen backlog, or accepted and waiting for a place), until one ends.
#[derive(Debug)]
pub(crate) struct Gate {
    listener: TcpListener,
    /// A connection accepted by a call to [`Gate::accept`] that was dropped while it waited.
    waiting: std::sync::Mutex<Option<(TcpStream, SocketAddr)>>,
    permits: Arc<Semaphore>,
    limit: u32,
    /// For the warning on a failed accept.
    what: &'static str,
}

impl Gate {
    /// `what` names the listener in logs ("HTTP", "proxy").
    pub(crate) fn new(listener: TcpListener, limit: usize, what: &'static str) -> Gate {
        Gate::sharing(listener, Cap::new(limit), what)
    }

    /// A gate that shares its cap with other listeners' (the proxy's workers on one address).
    pub(crate) fn sharing(listener: TcpListener, cap: Cap, what: &'static str) -> Gate {
        Gate {
            listener,
            waiting: std::sync::Mutex::new(None),
            permits: cap.permits,
            limit: cap.limit,
            what,
        }
    }

    /// The next connection (with `TCP_NODELAY` set), and the permit to hold while serving it;
    /// `None` once `shutdown` is cancelled. The connection is accepted first and then waits for
    /// a place: listeners that share a cap each hold at most one connection waiting, and a
    /// connection the kernel queued on one listener is never stuck behind a place another
    /// listener holds while it waits for connections of its own.
    pub(crate) async fn accept(
        &self,
        shutdown: &CancellationToken,
    ) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
        // One accepted before a call that was dropped while it waited for a place.
        let waiting = self.waiting.lock().expect("the waiting connection").take();
        let (stream, remote) = if let Some(accepted) = waiting {
            accepted
        } else {
            loop {
                tokio::select! {
                    accepted = self.listener.accept() => match accepted {
                        Ok(accepted) => break accepted,
                        Err(error) => {
                            tracing::warn!(%error, listener = self.what, "accepting a connection");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                        }
                    },
                    () = shutdown.cancelled() => return None,
                }
            }
        };
        // Kept in the gate while it waits, so that dropping this call loses no connection.
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let mut waiting = Waiting {
                    gate: self,
                    accepted: Some((stream, remote)),
                };
                let permit = tokio::select! {
                    permit = self.permits.clone().acquire_owned() => permit.ok()?,
                    () = shutdown.cancelled() => return None,
                };
                let (stream, remote) = waiting.accepted.take().expect("taken once");
                return Some(ready(stream, remote, permit));
            }
        };
        Some(ready(stream, remote, permit))
    }

    /// Closes the listener (a connection that reaches it from now on is refused, or goes to
    /// another listener of the address) and waits until every accepted connection has ended,
    /// at most `grace`; whether they all did.
    pub(crate) async fn close_and_drain(self, grace: Duration) -> bool {
        let Gate {
            listener,
            waiting,
            permits,
            limit,
            ..
        } = self;
        drop((listener, waiting));
        tokio::time::timeout(grace, permits.acquire_many(limit))
            .await
            .is_ok()
    }
}

/// An accepted connection waiting for a place: given back to its gate if the wait is dropped.
struct Waiting<'a> {
    gate: &'a Gate,
    accepted: Option<(TcpStream, SocketAddr)>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(accepted) = self.accepted.take() {
            *self.gate.waiting.lock().expect("the waiting connection") = Some(accepted);
        }
    }
}

fn ready(
    stream: TcpStream,
    remote: SocketAddr,
    permit: OwnedSemaphorePermit,
) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
    let _ = stream.set_nodelay(true);
    (stream, remote, permit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_until_one_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let gate = Gate::new(listener, 1, "test");
        let shutdown = CancellationToken::new();
        let _first = TcpStream::connect(address).await.unwrap();
        let _second = TcpStream::connect(address).await.unwrap();
        let (_, _, permit) = gate.accept(&shutdown).await.unwrap();
        // The second waits while the first is served.
        let waiting = tokio::time::timeout(Duration::from_millis(100), gate.accept(&shutdown));
        assert!(waiting.await.is_err(), "a second connection was taken");
        drop(permit);
        let (_, _, permit) = gate.accept(&shutdown).await.unwrap();
        shutdown.cancel();
        assert!(gate.accept(&shutdown).await.is_none());
        let draining = tokio::spawn(gate.close_and_drain(Duration::from_secs(10)));
        // Closed: a new connection is refused.
        assert!(TcpStream::connect(address).await.is_err());
        assert!(!draining.is_finished());
        drop(permit);
        assert!(draining.await.unwrap());
    }
}
