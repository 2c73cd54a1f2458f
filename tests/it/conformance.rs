//! The proxy carries every request whole: a conformance suite against an upstream that reports
//! what it received, run on the built-in proxy and on Caddy.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use dropship::proxy::{RouteKey, RouteSpec, Routes, UpstreamSpec};

use crate::proxy::{CaddyProcess, caddy_routes, serve_builtin};

/// An upstream that answers every request with what it received, as JSON: method, path,
/// headers, the body's length and its trailers. `/status/N` answers status N with no body.
async fn reporting_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    Ok::<_, Infallible>(report(request).await)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    address
}

async fn report(mut request: Request<Incoming>) -> Response<Full<Bytes>> {
    // `Upgrade: echo` switches protocols, then echoes every byte back.
    if request
        .headers()
        .get("upgrade")
        .is_some_and(|v| v == "echo")
    {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = hyper_util::rt::TokioIo::new(upgraded);
                let mut buffer = [0u8; 1024];
                while let Ok(n) = io.read(&mut buffer).await {
                    if n == 0 || io.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Response::builder()
            .status(101)
            .header("upgrade", "echo")
            .header("connection", "upgrade")
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    let (parts, body) = request.into_parts();
    if let Some(code) = parts.uri.path().strip_prefix("/status/") {
        let status = code.parse::<u16>().unwrap_or(500);
        return Response::builder()
            .status(status)
            .header("x-upstream", "reporting")
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let entry = headers
            .entry(name.as_str().to_string())
            .or_insert_with(|| json!([]));
        entry
            .as_array_mut()
            .unwrap()
            .push(json!(value.to_str().unwrap_or("(not text)")));
    }
    let collected = body.collect().await;
    let (length, trailers) = match collected {
        Ok(collected) => {
            let trailers = collected.trailers().map(|t| {
                t.iter()
                    .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
                    .collect::<serde_json::Map<_, _>>()
            });
            (collected.to_bytes().len(), trailers)
        }
        Err(_) => (usize::MAX, None),
    };
    let answer = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()),
        "headers": headers,
        "length": length,
        "trailers": trailers,
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(answer.to_string())))
        .unwrap()
}

fn route() -> RouteSpec {
    RouteSpec {
        key: RouteKey {
            repo: "acme/conformance".into(),
            environment: "production".into(),
            app: "web".into(),
        },
        hosts: vec!["whole.test".into()],
        path_prefix: "/".into(),
    }
}

/// One raw HTTP/1.1 exchange on `stream`: writes `request`, reads one response (head and a
/// `Content-Length` body, or none for `bodiless`). Bounded to 10 s.
async fn exchange(stream: &mut TcpStream, request: &[u8], bodiless: bool) -> (u16, String, String) {
    stream.write_all(request).await.unwrap();
    read_response(stream, bodiless).await
}

async fn read_response(stream: &mut TcpStream, bodiless: bool) -> (u16, String, String) {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap() == 0 {
                panic!("connection closed in a response head: {head:?}");
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0u8; if bodiless { 0 } else { length }];
        stream.read_exact(&mut body).await.unwrap();
        (status, head, String::from_utf8_lossy(&body).to_string())
    })
    .await
    .expect("a response within 10 s")
}

fn chunked(body: &[u8], trailer: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(7_000) {
        out.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend(chunk);
        out.extend(b"\r\n");
    }
    out.extend(b"0\r\n");
    if let Some(trailer) = trailer {
        out.extend(trailer.as_bytes());
        out.extend(b"\r\n");
    }
    out.extend(b"\r\n");
    out
}

/// The suite, against a proxy listening at `listen` with `whole.test` routed to the reporting
/// upstream. `builtin`: the built-in proxy, which also forwards a request's trailers and refuses
/// a request with conflicting framing (Caddy drops request trailers, and reads such a request
/// as chunked).
async fn suite(listen: &str, builtin: bool) {
    let connect = || async { TcpStream::connect(listen).await.unwrap() };
    let payload = vec![b'x'; 100_000];

    // A chunked body reaches the app whole.
    let mut stream = connect().await;
    let mut request =
        b"POST /upload HTTP/1.1\r\nHost: whole.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    request.extend(chunked(&payload, None));
    let (status, _, body) = exchange(&mut stream, &request, false).await;
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, &seen["length"]),
        (200, &json!(100_000)),
        "chunked: {seen}"
    );

    // A large body with Content-Length, on the same kept-alive connection.
    let large = vec![b'y'; 4 * 1024 * 1024];
    let mut request = format!(
        "PUT /large HTTP/1.1\r\nHost: whole.test\r\nContent-Length: {}\r\n\r\n",
        large.len()
    )
    .into_bytes();
    request.extend(&large);
    let (status, _, body) = exchange(&mut stream, &request, false).await;
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, &seen["length"]),
        (200, &json!(large.len())),
        "large: {seen}"
    );

    // Expect: 100-continue: the body is sent once the proxy says to go on.
    let mut stream = connect().await;
    stream
        .write_all(b"POST /expect HTTP/1.1\r\nHost: whole.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let (status, _, _) = read_response(&mut stream, true).await;
    assert_eq!(status, 100, "100 Continue before the body");
    stream.write_all(b"hello").await.unwrap();
    // More interim answers may come (HTTP allows several); then the final one.
    let (mut status, mut head, mut body) = read_response(&mut stream, false).await;
    while status < 200 {
        (status, head, body) = read_response(&mut stream, false).await;
    }
    let seen: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("expect: {e}: {status} {head}{body}"));
    assert_eq!(
        (status, &seen["length"]),
        (200, &json!(5)),
        "expect: {seen}"
    );

    // HEAD, 204 and 304 carry no body; the connection stays usable after each.
    let mut stream = connect().await;
    for (request, expected) in [
        ("HEAD /head HTTP/1.1\r\nHost: whole.test\r\n\r\n", 200),
        ("GET /status/204 HTTP/1.1\r\nHost: whole.test\r\n\r\n", 204),
        ("GET /status/304 HTTP/1.1\r\nHost: whole.test\r\n\r\n", 304),
    ] {
        let (status, head, _) = exchange(&mut stream, request.as_bytes(), true).await;
        assert_eq!(status, expected, "{request}: {head}");
    }
    // Keep-alive survives a 4xx from the upstream.
    let (status, head, _) = exchange(
        &mut stream,
        b"GET /status/404 HTTP/1.1\r\nHost: whole.test\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(status, 404, "{head}");
    let (status, _, body) = exchange(
        &mut stream,
        b"GET /after HTTP/1.1\r\nHost: whole.test\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(
        status, 200,
        "the connection still answers after a 404: {body}"
    );

    // Trailers of a chunked request reach the app.
    let mut stream = connect().await;
    let mut request = b"POST /trailers HTTP/1.1\r\nHost: whole.test\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\nTE: trailers\r\n\r\n".to_vec();
    request.extend(chunked(b"with a trailer", Some("x-checksum: 1234")));
    let (status, _, body) = exchange(&mut stream, &request, false).await;
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200);
    assert_eq!(seen["length"], 14, "{seen}");
    if builtin {
        assert_eq!(seen["trailers"]["x-checksum"], "1234", "{seen}");
    }

    // Hop-by-hop headers go, the ones `Connection` names too; X-Forwarded-* are set.
    let mut stream = connect().await;
    let (status, _, body) = exchange(
        &mut stream,
        b"GET /headers HTTP/1.1\r\nHost: whole.test\r\nConnection: keep-alive, x-hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\nX-Kept: yes\r\n\r\n",
        false,
    )
    .await;
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200);
    let headers = &seen["headers"];
    for gone in ["x-hop", "keep-alive", "proxy-authorization"] {
        assert!(
            headers.get(gone).is_none(),
            "{gone} was forwarded: {headers}"
        );
    }
    assert_eq!(headers["x-kept"], json!(["yes"]), "{headers}");
    assert_eq!(
        headers["x-forwarded-host"],
        json!(["whole.test"]),
        "{headers}"
    );
    assert_eq!(headers["x-forwarded-proto"], json!(["http"]), "{headers}");
    assert!(
        headers["x-forwarded-for"][0]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "{headers}"
    );

    // An upgrade carries bytes both ways.
    let mut stream = connect().await;
    let (status, head, _) = exchange(
        &mut stream,
        b"GET /upgrade HTTP/1.1\r\nHost: whole.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        true,
    )
    .await;
    assert_eq!(status, 101, "{head}");
    for message in [&b"ping over the tunnel"[..], b"and back again"] {
        stream.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut echoed))
            .await
            .expect("the echo within 10 s")
            .unwrap();
        assert_eq!(echoed, message);
    }

    // A request head over 64 KiB is refused by the built-in proxy (Caddy allows 1 MiB).
    if builtin {
        let mut stream = connect().await;
        let request = format!(
            "GET /big HTTP/1.1\r\nHost: whole.test\r\nX-Big: {}\r\n\r\n",
            "b".repeat(70 * 1024)
        );
        let (status, head, _) = exchange(&mut stream, request.as_bytes(), false).await;
        assert_eq!(status, 431, "{head}");
    }

    // Conflicting Content-Length and Transfer-Encoding smuggles nothing. The built-in proxy
    // refuses such a request with 400, in either order and after an earlier request on the
    // same connection, forwards none of it, and closes the connection, so what follows is
    // never read as a request. Caddy (Go's server) reads it as chunked, as RFC 9112 §6.3
    // allows, and forwards it framed that one way.
    let smuggling = [
        "POST /smuggle HTTP/1.1\r\nHost: whole.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: whole.test\r\n\r\n",
        "GET /first HTTP/1.1\r\nHost: whole.test\r\n\r\nPOST /smuggle HTTP/1.1\r\nHost: whole.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: whole.test\r\n\r\n",
    ];
    for request in smuggling {
        let mut stream = connect().await;
        stream.write_all(request.as_bytes()).await.unwrap();
        let (mut status, mut head, mut body) = read_response(&mut stream, false).await;
        if request.starts_with("GET /first") {
            assert_eq!(status, 200, "the request before: {head}");
            (status, head, body) = read_response(&mut stream, false).await;
        }
        if !builtin {
            let seen: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                (status, &seen["path"], &seen["length"]),
                (200, &json!("/smuggle"), &json!(0)),
                "{head}"
            );
            continue;
        }
        assert_eq!(status, 400, "{head}{body}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
            .await
            .expect("the connection closes")
            .unwrap();
        assert!(
            rest.is_empty(),
            "a smuggled request was answered: {}",
            String::from_utf8_lossy(&rest)
        );
    }
}

fn reporting(upstream: std::net::SocketAddr) -> Vec<UpstreamSpec> {
    vec![UpstreamSpec {
        address: upstream.to_string(),
        container: "reporting".into(),
    }]
}

#[tokio::test]
async fn the_built_in_proxy_carries_every_request_whole() {
    let upstream = reporting_upstream().await;
    let data = tempfile::tempdir().unwrap();
    let (proxy, listen, shutdown) = serve_builtin(data.path(), Default::default()).await;
    proxy.switch(&route(), reporting(upstream)).await.unwrap();
    suite(&listen, true).await;
    shutdown.cancel();
}

#[tokio::test]
async fn caddy_carries_every_request_whole() {
    let Some(caddy) = CaddyProcess::start().await else {
        return;
    };
    let upstream = reporting_upstream().await;
    let data = tempfile::tempdir().unwrap();
    let routes = caddy_routes(&caddy, data.path(), Default::default()).await;
    routes.switch(&route(), reporting(upstream)).await.unwrap();
    suite(&caddy.listen, false).await;
}
