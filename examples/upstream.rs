//! The benchmarks' upstream: answers every request on a connection with the same 1 KB response,
//! as cheaply as a server can (no parsing beyond finding each request's end, one write per
//! read), so that the proxies in front of it, not the upstream, are what a benchmark measures.
//!
//! It handles only requests without bodies (the benchmarks send `GET`s).
//!
//! Usage: `cargo run --release --example upstream -- 127.0.0.1:19101 [BODY_BYTES]`

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The bytes that end a request without a body.
const END: &[u8] = b"\r\n\r\n";

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let address: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:19101".into())
        .parse()
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
    let size: usize = args
        .next()
        .map_or(Ok(1024), |s| s.parse())
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
    let mut response =
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {size}\r\n\r\n")
            .into_bytes();
    response.resize(response.len() + size, b'x');
    let response: &'static [u8] = response.leak();
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(address).await?;
            loop {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                tokio::spawn(answer(stream, response));
            }
        })
}

/// Answers each complete request on `stream`, in order, until the client closes it.
async fn answer(mut stream: TcpStream, response: &'static [u8]) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 16 * 1024];
    // How many bytes of `END` the previous read ended with.
    let mut matched = 0;
    let mut out = Vec::with_capacity(response.len() * 4);
    loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        let mut requests = 0;
        for &byte in &buffer[..read] {
            matched = if byte == END[matched] {
                matched + 1
            } else if byte == END[0] {
                1
            } else {
                0
            };
            if matched == END.len() {
                requests += 1;
                matched = 0;
            }
        }
        out.clear();
        for _ in 0..requests {
            out.extend_from_slice(response);
        }
        stream.write_all(&out).await?;
    }
}
