//! Refusing a request that frames its body two ways.
//!
//! A request with both `Content-Length` and `Transfer-Encoding` is how request smuggling
//! starts (RFC 9112 §6.3). hyper reads such a request as chunked, closes the connection after
//! it, and drops `Content-Length` from the headers it hands on, so the proxy cannot see the
//! conflict in the request. [`Watched`] sees it in the bytes: it follows the client's byte
//! stream through each request head and body (with `httparse`, the parser hyper uses) and
//! notes the number of the first request whose head has both. The proxy answers that request
//! 400 instead of forwarding it, and the connection closes after the answer.
//!
//! A head longer than [`HEAD_LIMIT`] is refused the same way (431): the watch keeps no more of
//! it. Bytes hyper refuses too (more than [`MAX_HEADERS`] headers, not HTTP/1.1) end the
//! watch, since hyper closes the connection after them. An upgraded connection carries no
//! more requests; it ends the watch as well.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest request head, and so the proxy's read buffer (hyper's `max_buf_size`); a
/// longer one is answered 431 by hyper.
pub(super) const HEAD_LIMIT: usize = 64 * 1024;
/// The most headers in a head or a trailer section (hyper's default).
const MAX_HEADERS: usize = 100;
const NONE: u64 = u64::MAX;

/// Why a request is refused instead of forwarded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Refusal {
    /// Both `Content-Length` and `Transfer-Encoding`: 400.
    Framing,
    /// A head longer than [`HEAD_LIMIT`]: 431.
    HeadTooLarge,
    /// Bytes the watch could not follow (which hyper refuses too, as far as the watch knows):
    /// this request and every later one of the connection, 400. The watch fails closed.
    Unfollowed,
}

const REFUSALS: [Refusal; 3] = [Refusal::Framing, Refusal::HeadTooLarge, Refusal::Unfollowed];

/// What the connection's reader learns, for its service to act on.
#[derive(Debug)]
pub(super) struct Verdicts {
    /// The first refused request and why, in one word: its number (from 0) times 4, plus the
    /// reason's index in [`REFUSALS`]. The connection closes after it; a later request (after
    /// an [`Refusal::Unfollowed`]) is refused the same way.
    refused: AtomicU64,
    /// Set once the connection is upgraded: its bytes are no longer requests.
    upgraded: AtomicBool,
}

impl Default for Verdicts {
    fn default() -> Self {
        Verdicts {
            refused: AtomicU64::new(NONE),
            upgraded: AtomicBool::new(false),
        }
    }
}

impl Verdicts {
    /// Whether request `number` of the connection is refused, and why. hyper hands a request
    /// on only after its head went through the watch, so the answer is already known.
    pub(super) fn refusal(&self, number: u64) -> Option<Refusal> {
        let refused = self.refused.load(Ordering::Acquire);
        (refused != NONE && number >= refused / 4).then(|| REFUSALS[(refused % 4) as usize])
    }

    /// Refuses request `number` (and any later one), unless an earlier one was.
    fn refuse(&self, number: u64, why: Refusal) {
        let index = REFUSALS.iter().position(|r| *r == why).unwrap_or(0) as u64;
        let _ = self.refused.compare_exchange(
            NONE,
            number.saturating_mul(4).saturating_add(index).min(NONE - 1),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// The connection was upgraded: stop watching.
    pub(super) fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }
}

/// Where the watch is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Reading a request head.
    Head,
    /// Bytes of a `Content-Length` body still to come.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Bytes of a chunk still to come.
    ChunkData(u64),
    /// Bytes of the line end after a chunk still to come.
    ChunkEnd(u64),
    /// Reading the trailer section after the last chunk.
    Trailers,
    /// No longer watching.
    Stopped,
}

/// How a complete head frames its body.
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A client connection whose incoming bytes are watched for conflicting framing.
pub(super) struct Watched<IO> {
    io: IO,
    watch: Watch,
}

impl<IO> Watched<IO> {
    pub(super) fn new(io: IO, verdicts: Arc<Verdicts>) -> Self {
        Watched {
            io,
            watch: Watch {
                state: State::Head,
                pending: Vec::new(),
                heads: 0,
                verdicts,
            },
        }
    }
}

struct Watch {
    state: State,
    /// The start of a head, chunk-size line or trailer section that has not fully arrived.
    pending: Vec<u8>,
    /// Heads seen so far.
    heads: u64,
    verdicts: Arc<Verdicts>,
}

impl Watch {
    fn feed(&mut self, data: &[u8]) {
        if self.state == State::Stopped {
            return;
        }
        if self.verdicts.upgraded.load(Ordering::Acquire) {
            self.state = State::Stopped;
            self.pending = Vec::new();
            return;
        }
        if self.pending.is_empty() {
            let used = self.run(data);
            self.pending.extend_from_slice(&data[used..]);
        } else {
            let mut joined = std::mem::take(&mut self.pending);
            joined.extend_from_slice(data);
            let used = self.run(&joined);
            joined.drain(..used);
            self.pending = joined;
        }
        if self.pending.len() > HEAD_LIMIT {
            if self.state == State::Head {
                self.verdicts.refuse(self.heads, Refusal::HeadTooLarge);
            }
            self.stop();
        } else if self.pending.is_empty() && self.pending.capacity() > 4096 {
            // After a large head: keep no more than a small buffer per connection.
            self.pending = Vec::new();
        }
    }

    /// Stops following the stream: the next request, and any after it, is refused.
    fn stop(&mut self) {
        self.verdicts.refuse(self.heads, Refusal::Unfollowed);
        self.state = State::Stopped;
        self.pending = Vec::new();
    }

    /// Follows `data` as far as it goes; returns how much of it was used. The rest is the
    /// start of a head, line or section still incomplete.
    fn run(&mut self, data: &[u8]) -> usize {
        let mut at = 0;
        while at < data.len() {
            let rest = &data[at..];
            let (used, next) = match self.state {
                State::Head => match self.head(rest) {
                    Step::More => return at,
                    Step::Stop => (rest.len(), State::Stopped),
                    Step::Took(used, next) => (used, next),
                },
                State::Body(left) => counted(rest, left, State::Body, State::Head),
                State::ChunkData(left) => counted(rest, left, State::ChunkData, State::ChunkEnd(2)),
                State::ChunkEnd(left) => counted(rest, left, State::ChunkEnd, State::ChunkSize),
                State::ChunkSize => match chunk_size(rest) {
                    Line::More => return at,
                    Line::Done(used, 0) => (used, State::Trailers),
                    Line::Done(used, size) => (used, State::ChunkData(size)),
                    Line::Bad => (rest.len(), State::Stopped),
                },
                // As hyper reads it: lines end at CRLF, and the section at an empty line.
                State::Trailers => {
                    let end = if rest.starts_with(b"\r\n") {
                        Some(2)
                    } else {
                        rest.windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .map(|at| at + 4)
                    };
                    match end {
                        Some(used) => (used, State::Head),
                        None => return at,
                    }
                }
                State::Stopped => (rest.len(), State::Stopped),
            };
            at += used;
            self.state = next;
            if next == State::Stopped {
                self.stop();
                return data.len();
            }
        }
        at
    }

    fn head(&mut self, data: &[u8]) -> Step {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let used = match request.parse(data) {
            Ok(httparse::Status::Complete(used)) => used,
            Ok(httparse::Status::Partial) => return Step::More,
            Err(_) => return Step::Stop,
        };
        if used > HEAD_LIMIT {
            self.verdicts.refuse(self.heads, Refusal::HeadTooLarge);
            return Step::Stop;
        }
        let (mut length, mut lengths_agree, mut chunked, mut encoded) = (None, true, false, false);
        let mut any_length = false;
        for header in request.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                any_length = true;
                match std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                {
                    Some(n) if length.is_none_or(|earlier| earlier == n) => length = Some(n),
                    _ => lengths_agree = false,
                }
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                encoded = true;
                chunked = header
                    .value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
        }
        // hyper refuses `Transfer-Encoding` before HTTP/1.1, and a last coding not chunked;
        // without it, an unreadable or a second, different length.
        if (encoded && (request.version != Some(1) || !chunked)) || (!encoded && !lengths_agree) {
            return Step::Stop;
        }
        let number = self.heads;
        self.heads += 1;
        // Any `Content-Length` beside `Transfer-Encoding`, readable or not (hyper skips those
        // after `Transfer-Encoding` unread).
        if encoded && any_length {
            self.verdicts.refuse(number, Refusal::Framing);
        }
        let framing = match (chunked, length) {
            (true, _) => Framing::Chunked,
            (false, Some(n)) if n > 0 => Framing::Length(n),
            _ => Framing::None,
        };
        Step::Took(
            used,
            match framing {
                Framing::None => State::Head,
                Framing::Length(n) => State::Body(n),
                Framing::Chunked => State::ChunkSize,
            },
        )
    }
}

/// A chunk-size line, read as hyper reads it: hex digits (any number of leading zeros), then
/// anything (whitespace, extensions) up to LF.
enum Line {
    More,
    Done(usize, u64),
    Bad,
}

fn chunk_size(data: &[u8]) -> Line {
    let mut size: u64 = 0;
    let mut digits = 0;
    for (at, &byte) in data.iter().enumerate() {
        if byte == b'\n' {
            return if digits == 0 {
                Line::Bad
            } else {
                Line::Done(at + 1, size)
            };
        }
        if digits == at {
            if let Some(digit) = (byte as char).to_digit(16) {
                let Some(next) = size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(digit.into()))
                else {
                    return Line::Bad;
                };
                size = next;
                digits += 1;
            }
        }
    }
    Line::More
}

enum Step {
    /// The head has not fully arrived.
    More,
    /// Bytes hyper refuses: it closes the connection, and the watch ends.
    Stop,
    Took(usize, State),
}

/// Takes up to `left` bytes of `data`: `partly` with what is still to come, or `then`.
fn counted(data: &[u8], left: u64, partly: fn(u64) -> State, then: State) -> (usize, State) {
    let take = (data.len() as u64).min(left);
    let next = if take == left {
        then
    } else {
        partly(left - take)
    };
    (take as usize, next)
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.watch.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_watch() -> Watch {
        Watch {
            state: State::Head,
            pending: Vec::new(),
            heads: 0,
            verdicts: Arc::default(),
        }
    }

    /// Feeds `stream` in pieces of `step` bytes; the number of the first conflicting head.
    fn first_conflict(stream: &[u8], step: usize) -> Option<u64> {
        let mut watch = new_watch();
        for piece in stream.chunks(step) {
            watch.feed(piece);
        }
        (0..16).find(|&n| watch.verdicts.refusal(n) == Some(Refusal::Framing))
    }

    const CONFLICT: &[u8] = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn a_head_with_both_framings_is_found_after_bodies_of_each_kind() {
        let mut stream = Vec::new();
        stream.extend(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        // A length-framed body that contains what looks like a conflicting head.
        let body =
            b"\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        stream.extend(
            format!(
                "PUT /a HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        stream.extend(body);
        // A chunked body, with an extension and a trailer.
        stream.extend(
            b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n",
        );
        stream.extend(CONFLICT);
        for step in [1, 3, 7, stream.len()] {
            assert_eq!(
                first_conflict(&stream, step),
                Some(3),
                "in pieces of {step}"
            );
        }
    }

    #[test]
    fn the_watch_reads_as_hyper_does_where_httparse_would_not() {
        // `Transfer-Encoding`, then a `Content-Length` that is no number: still two framings.
        let stream = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: abc\r\n\r\n0\r\n\r\n";
        assert_eq!(first_conflict(stream, stream.len()), Some(0));
        // A chunk size with more leading zeros than httparse takes.
        let mut stream = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n000000000000000000005\r\nhello\r\n0\r\n\r\n".to_vec();
        stream.extend(CONFLICT);
        assert_eq!(first_conflict(&stream, stream.len()), Some(1));
        assert_eq!(first_conflict(&stream, 2), Some(1));
        // A bare LF does not end a trailer section for hyper: what follows is trailer, not a
        // request, and the numbering stays hyper's.
        let mut stream = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        stream.extend(CONFLICT);
        assert_eq!(first_conflict(&stream, stream.len()), Some(1));
    }

    #[test]
    fn the_first_refusal_keeps_its_reason_and_bytes_not_followed_refuse_what_follows() {
        let mut stream = CONFLICT.to_vec();
        stream.extend(b"GET / HTTP/1.1\r\nX-Long: ");
        stream.extend(vec![b'a'; HEAD_LIMIT + 1]);
        let mut watch = new_watch();
        watch.feed(&stream);
        assert_eq!(watch.verdicts.refusal(0), Some(Refusal::Framing));

        let mut watch = new_watch();
        watch.feed(
            b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        );
        assert_eq!(watch.verdicts.refusal(0), None);
        assert_eq!(watch.verdicts.refusal(2), Some(Refusal::Unfollowed));
        assert_eq!(watch.verdicts.refusal(3), Some(Refusal::Unfollowed));
    }

    #[test]
    fn either_framing_alone_is_no_conflict() {
        let stream = b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nokPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        assert_eq!(first_conflict(stream, stream.len()), None);
        assert_eq!(first_conflict(stream, 1), None);
    }

    #[test]
    fn the_watch_ends_where_hyper_refuses_or_upgrades() {
        // Not HTTP: nothing after it is read as a request.
        let mut stream = b"\x16\x03\x01 not http\r\n\r\n".to_vec();
        stream.extend(CONFLICT);
        assert_eq!(first_conflict(&stream, stream.len()), None);

        // An upgraded connection's bytes are not requests.
        let mut watch = new_watch();
        watch.feed(b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n");
        watch.verdicts.upgraded();
        watch.feed(CONFLICT);
        assert_eq!(watch.verdicts.refusal(1), None);
        assert_eq!(watch.state, State::Stopped);

        // A head longer than the limit is refused, whole or in pieces, and not kept.
        let mut stream = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        stream.extend(vec![b'a'; HEAD_LIMIT]);
        stream.extend(b"\r\n\r\n");
        let mut watch = new_watch();
        watch.feed(&stream);
        assert_eq!(watch.verdicts.refusal(0), Some(Refusal::HeadTooLarge));
        let mut watch = new_watch();
        watch.feed(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nX-Long: ");
        for _ in 0..HEAD_LIMIT / 1024 + 1 {
            watch.feed(&[b'a'; 1024]);
        }
        assert_eq!(watch.state, State::Stopped);
        assert_eq!(watch.verdicts.refusal(0), None);
        assert_eq!(watch.verdicts.refusal(1), Some(Refusal::HeadTooLarge));
        assert!(watch.pending.is_empty());
    }
}
