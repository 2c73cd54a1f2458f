//! Accepting TCP connections with a cap: the one accept loop behind both the web listener
//! (`http::serve`) and the proxy's listeners (`proxy::serve`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How long accepting pauses after an error (out of file descriptors and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A listener that serves at most `limit` connections at once; the rest wait in the kernel's
/// listen backlog until one ends.
#[derive(Debug)]
pub(crate) struct Gate {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    limit: u32,
    /// For the warning on a failed accept.
    what: &'static str,
}

impl Gate {
    /// `what` names the listener in logs ("HTTP", "proxy").
    pub(crate) fn new(listener: TcpListener, limit: usize, what: &'static str) -> Gate {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Gate {
            listener,
            permits: Arc::new(Semaphore::new(limit)),
            limit: limit as u32,
            what,
        }
    }

    /// The next connection (with `TCP_NODELAY` set), and the permit to hold while serving it;
    /// `None` once `shutdown` is cancelled.
    pub(crate) async fn accept(
        &self,
        shutdown: &CancellationToken,
    ) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
        let permit = tokio::select! {
            permit = self.permits.clone().acquire_owned() => permit.ok()?,
            () = shutdown.cancelled() => return None,
        };
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, remote)) => {
                        let _ = stream.set_nodelay(true);
                        return Some((stream, remote, permit));
                    }
                    Err(error) => {
                        tracing::warn!(%error, listener = self.what, "accepting a connection");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                () = shutdown.cancelled() => return None,
            }
        }
    }

    /// Waits until every accepted connection has ended, at most `grace`; whether they all did.
    pub(crate) async fn drained(&self, grace: Duration) -> bool {
        tokio::time::timeout(grace, self.permits.acquire_many(self.limit))
            .await
            .is_ok()
    }
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
        assert!(!gate.drained(Duration::from_millis(10)).await);
        drop(permit);
        assert!(gate.accept(&shutdown).await.is_some());
        shutdown.cancel();
        assert!(gate.accept(&shutdown).await.is_none());
    }
}
