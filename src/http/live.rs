//! What every live stream shares: stored lines first, a page at a time, then the bus, read
//! again from the store when the bus outran the reader.

use futures::{Stream, StreamExt};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;

/// What a live reader gets next from the bus.
pub(super) enum Next<T> {
    Item(T),
    /// The bus dropped items this reader had not taken: read the store again.
    Lagged,
    /// The bus closed, or the client behind the stream left.
    Ended,
}

/// The next item of `live`, or [`Next::Ended`] as soon as the client behind `sender` leaves,
/// even while nothing comes.
pub(super) async fn next<T: Clone, U>(
    live: &mut broadcast::Receiver<T>,
    sender: &mpsc::Sender<U>,
) -> Next<T> {
    let received = tokio::select! {
        received = live.recv() => received,
        () = sender.closed() => return Next::Ended,
    };
    match received {
        Ok(item) => Next::Item(item),
        Err(RecvError::Lagged(_)) => Next::Lagged,
        Err(RecvError::Closed) => Next::Ended,
    }
}

/// Sends every stored item of `pages` that `each` turns into a message (it also moves the
/// reader's position). False when the client left or the store failed; the failure is logged
/// with `what`.
pub(super) async fn send_stored<T, U>(
    pages: impl Stream<Item = anyhow::Result<Vec<T>>>,
    sender: &mpsc::Sender<U>,
    mut each: impl FnMut(T) -> Option<U>,
    what: &str,
) -> bool {
    let mut pages = std::pin::pin!(pages);
    while let Some(page) = pages.next().await {
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "{what}");
                return false;
            }
        };
        for item in page {
            if let Some(message) = each(item)
                && sender.send(message).await.is_err()
            {
                return false;
            }
        }
    }
    true
}
