//! The web side of "safe to expose" over real HTTP: security headers on every answer, no
//! inline script, cross-origin posts refused, `next=` kept on this site, sign-in throttling,
//! logs read a page at a time, streams that end with their client, listener timeouts and caps,
//! and metrics labels that unauthenticated senders cannot multiply. (The same pages in a real
//! browser, with injected script, are in `people.rs`.)

use std::path::Path;
use std::time::Duration;

use dropship::config::Config;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::github::FakeGithub;
use crate::support::{
    API_TOKEN, DEPLOYER_TOKEN, TestServer, VIEWER_TOKEN, WEBHOOK_SECRET, config_toml,
    deployment_payload, eventually, metrics, sample,
};

const SHA: &str = "dddddddddddddddddddddddddddddddddddddddd";
const LOCAL: &str = "[[servers]]\nname = \"local\"\nhost = \"local\"\n\n[[repos]]\nname = \"acme/shop\"\nservers = [\"local\"]\n";

const HELLO: &str = "version: 1
environments:
  production:
    servers: [local]
tasks:
  deploy:
    - name: hello
      run: echo hello
";

/// A manifest whose one step prints `first line`, waits for `gate`, then prints `second line`.
fn gated(gate: &Path) -> String {
    format!(
        "version: 1\nenvironments:\n  production:\n    servers: [local]\ntasks:\n  deploy:\n    - name: wait\n      run: |\n        echo first line\n        while [ ! -e {gate} ]; do sleep 0.05; done\n        echo second line\n",
        gate = gate.display()
    )
}

async fn start(manifest: &str, extra: &str) -> (TestServer, FakeGithub) {
    let github = FakeGithub::start().await;
    github.add_file("acme/shop", SHA, "dropship.yml", manifest);
    let data = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&config_toml(data.path(), &github.url, extra)).unwrap();
    let server = TestServer::start(config, Some(data)).await;
    github.deliver_to(&server.url("/webhooks/github"), WEBHOOK_SECRET);
    (server, github)
}

/// Delivers deployment `github_id`: its id and `log_url` token.
async fn deliver(server: &TestServer, github_id: i64) -> (i64, String) {
    let body = deployment_payload(github_id, "acme/shop", SHA, "production", "deploy");
    let response = server
        .deliver("deployment", &format!("d-{github_id}"), &body)
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer: Value = response.json().await.unwrap();
    let log_url = answer["log_url"].as_str().unwrap();
    let token = log_url.split("token=").nth(1).unwrap().to_string();
    (answer["id"].as_i64().unwrap(), token)
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn assert_security_headers(what: &str, response: &reqwest::Response) {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no {name}"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let csp = header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(directive), "{what}: {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert_eq!(header("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header("referrer-policy"), "no-referrer", "{what}");
    assert_eq!(header("x-frame-options"), "DENY", "{what}");
}

/// Every `<script>` of a page loads a file of Dropship's or is a JSON data island, and no
/// element carries an inline handler or style.
fn assert_no_inline_script(what: &str, html: &str) {
    for (at, _) in html.match_indices("<script") {
        let tag = &html[at..at + html[at..].find('>').unwrap()];
        assert!(
            tag.contains(r#"src="/assets/"#) || tag.contains(r#"type="application/json""#),
            "{what}: inline script {tag}"
        );
    }
    assert!(!html.contains("<style"), "{what}: inline style");
    assert!(!html.contains(" style="), "{what}: a style attribute");
    assert!(!html.contains(" onerror="), "{what}: an inline handler");
}

#[tokio::test]
async fn every_answer_carries_the_security_headers_and_pages_have_no_inline_script() {
    let (server, github) = start(HELLO, LOCAL).await;
    let (id, token) = deliver(&server, 7101).await;
    github.wait_final(7101, Duration::from_secs(30)).await;
    let cookie = server.login("vic", VIEWER_TOKEN).await;
    let client = no_redirects();
    let pages = [
        format!("/deployments/{id}?token={token}"),
        "/login?next=/environments".to_string(),
    ];
    for path in &pages {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_security_headers(path, &response);
        assert_no_inline_script(path, &response.text().await.unwrap());
    }
    for path in [
        "/",
        "/environments",
        "/apps/acme/shop/production/logs",
        "/audit",
    ] {
        let response = client
            .get(server.url(path))
            .header("Cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_security_headers(path, &response);
        assert_no_inline_script(path, &response.text().await.unwrap());
    }
    // The capability link's other answers, the API, the redirect to sign in and errors too.
    for path in [
        format!("/deployments/{id}/events?token={token}"),
        format!("/api/deployments/{id}/log?token={token}"),
        format!("/deployments/{id}"),
        "/api/deployments".to_string(),
        "/deployments/999?token=nope".to_string(),
        "/healthz".to_string(),
    ] {
        let response = client.get(server.url(&path)).send().await.unwrap();
        assert_security_headers(&path, &response);
    }
    // Scripts and the stylesheet are files, with their types and a long cache life.
    for (asset, content_type) in [
        ("deployment.js", "text/javascript; charset=utf-8"),
        ("app-logs.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
    ] {
        let response = client
            .get(server.url(&format!("/assets/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        assert_eq!(response.headers()["content-type"], content_type);
        assert!(
            response.headers()["cache-control"]
                .to_str()
                .unwrap()
                .contains("max-age=31536000"),
            "{asset}"
        );
        assert_security_headers(asset, &response);
    }
    let missing = client
        .get(server.url("/assets/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

/// What each state-changing route does to `acme/shop` `production` or deployment `id`.
fn presses(id: i64) -> Vec<(reqwest::Method, String)> {
    use reqwest::Method;
    vec![
        (Method::POST, format!("/api/deployments/{id}/cancel")),
        (Method::POST, format!("/api/deployments/{id}/redeploy")),
        (
            Method::POST,
            "/api/environments/acme/shop/production/rollback".into(),
        ),
        (
            Method::PUT,
            "/api/environments/acme/shop/production/lock".into(),
        ),
        (
            Method::DELETE,
            "/api/environments/acme/shop/production/lock".into(),
        ),
        (
            Method::DELETE,
            "/api/environments/acme/shop/production".into(),
        ),
        (Method::POST, format!("/deployments/{id}/cancel")),
        (Method::POST, format!("/deployments/{id}/redeploy")),
        (
            Method::POST,
            "/environments/acme/shop/production/rollback".into(),
        ),
        (
            Method::POST,
            "/environments/acme/shop/production/lock".into(),
        ),
        (
            Method::POST,
            "/environments/acme/shop/production/unlock".into(),
        ),
        (Method::POST, "/logout".into()),
    ]
}

#[tokio::test]
async fn cross_origin_requests_with_the_session_cookie_change_nothing() {
    let gate_dir = tempfile::tempdir().unwrap();
    let (server, github) = start(&gated(&gate_dir.path().join("go")), LOCAL).await;
    let (id, _) = deliver(&server, 7201).await;
    eventually(Duration::from_secs(30), "the deployment to run", || async {
        server.deployment(id).await["state"] == "running"
    })
    .await;
    let cookie = server.login("dee", DEPLOYER_TOKEN).await;
    let client = no_redirects();
    let from_elsewhere: [(&str, &str); 3] = [
        ("Origin", "https://evil.example"),
        ("Sec-Fetch-Site", "cross-site"),
        ("Sec-Fetch-Site", "same-site"),
    ];
    for (method, path) in presses(id) {
        for (header, value) in from_elsewhere {
            let response = client
                .request(method.clone(), server.url(&path))
                .header("Cookie", &cookie)
                .header(header, value)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body("reason=csrf")
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::FORBIDDEN,
                "{method} {path} with {header}: {value}"
            );
            let body: Value = response.json().await.unwrap();
            assert!(
                body["error"].as_str().unwrap().contains("another site"),
                "{body}"
            );
        }
    }
    // A cross-site sign-in form is refused too.
    let login = client
        .post(server.url("/login"))
        .header("Origin", "https://evil.example")
        .form(&[("name", "dee"), ("password", DEPLOYER_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::FORBIDDEN);

    // Nothing happened: still running, no lock, nothing created on GitHub, no audit entry, and
    // the session still works.
    assert_eq!(server.deployment(id).await["state"], "running");
    let locks: Vec<Value> = server.api("/api/locks").await.json().await.unwrap();
    assert!(locks.is_empty(), "{locks:?}");
    assert!(github.created_deployments_all("acme/shop").is_empty());
    let audit: Vec<Value> = server.api("/api/audit").await.json().await.unwrap();
    let actions: Vec<&str> = audit
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["login"], "{audit:?}");

    // The same presses from these pages work: the form's Origin is this server's.
    let lock = client
        .put(server.url("/api/environments/acme/shop/production/lock"))
        .header("Cookie", &cookie)
        .header("Origin", server.url(""))
        .header("Sec-Fetch-Site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(lock.status(), StatusCode::OK);
    let cancel = client
        .post(server.url(&format!("/deployments/{id}/cancel")))
        .header("Cookie", &cookie)
        .header("Origin", server.url(""))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::OK);
    // A bearer token without a browser's headers needs no Origin.
    let unlock = client
        .delete(server.url("/api/environments/acme/shop/production/lock"))
        .bearer_auth(DEPLOYER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(unlock.status(), StatusCode::NO_CONTENT);
    std::fs::write(gate_dir.path().join("go"), "").unwrap();
    github.wait_final(7201, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn sign_in_sends_only_to_paths_on_this_site() {
    let (server, _github) = start(HELLO, LOCAL).await;
    let client = no_redirects();
    let offsite = [
        "//evil.com",
        "/%09/evil.com",
        "/\t/evil.com",
        "/\\evil.com",
        "/\n/evil.com",
        "\\\\evil.com",
        "https:evil.com",
        "https://evil.com",
        "javascript:alert(1)",
        "/ /evil.com",
        "/é",
    ];
    for (n, next) in offsite.into_iter().enumerate() {
        // Sign in with a token: the answer's Location.
        let (name, token) = if n % 2 == 0 {
            ("dee", DEPLOYER_TOKEN)
        } else {
            ("vic", VIEWER_TOKEN)
        };
        let response = client
            .post(server.url("/login"))
            .form(&[("name", name), ("password", token), ("next", next)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{next:?}");
        let location = response.headers()["location"].to_str().unwrap();
        let expected = if next == "/%09/evil.com" {
            // Percent-escaped, it is a path on this site.
            "/%09/evil.com"
        } else {
            "/"
        };
        assert_eq!(location, expected, "{next:?}");
        // And the form carries nothing else.
        let form = client
            .get(server.url("/login"))
            .query(&[("next", next)])
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            form.contains(&format!(r#"name="next" value="{expected}""#)),
            "{next:?}: {form}"
        );
    }
    // A path on this site is kept, query and all.
    let response = client
        .post(server.url("/login"))
        .form(&[
            ("name", "vic"),
            ("password", VIEWER_TOKEN),
            ("next", "/environments?x=1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["location"], "/environments?x=1");
}

async fn sign_in(server: &TestServer, name: &str, token: &str) -> reqwest::Response {
    no_redirects()
        .post(server.url("/login"))
        .form(&[("name", name), ("password", token)])
        .send()
        .await
        .unwrap()
}

async fn refused_sign_ins(server: &TestServer) -> Vec<Value> {
    let audit: Vec<Value> = server
        .api("/api/audit?limit=1000")
        .await
        .json()
        .await
        .unwrap();
    audit
        .into_iter()
        .filter(|e| e["action"] == "login refused")
        .collect()
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_per_name_and_per_address() {
    let extra =
        format!("{LOCAL}\n[api]\nlogin_failures_per_name = 3\nlogin_failures_per_address = 6\n");
    let (server, _github) = start(HELLO, &extra).await;
    for _ in 0..3 {
        let wrong = sign_in(&server, "dee", "wrong").await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    }
    // Throttled: even the right token is refused, with when to come back.
    let throttled = sign_in(&server, "dee", DEPLOYER_TOKEN).await;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = throttled.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=15 * 60).contains(&retry), "{retry}");
    assert!(
        throttled
            .text()
            .await
            .unwrap()
            .contains("Too many failed sign-ins")
    );
    // Another name from the same address still may, until the address's own limit.
    assert_eq!(
        sign_in(&server, "vic", VIEWER_TOKEN).await.status(),
        StatusCode::SEE_OTHER
    );
    for name in ["x", "y", "z"] {
        assert_eq!(
            sign_in(&server, name, "wrong").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        sign_in(&server, "vic", VIEWER_TOKEN).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "six failures from this address"
    );
    // Audited once per name and address, and once more when throttled.
    let refused = refused_sign_ins(&server).await;
    let actors: Vec<&str> = refused
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert_eq!(actors, ["z", "y", "x", "dee", "dee"], "newest first");
    assert!(
        refused[0]["detail"]
            .as_str()
            .unwrap()
            .contains("6 failed sign-ins from 127.0.0.1"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn refused_sign_ins_do_not_grow_the_audit_log() {
    let extra = format!(
        "{LOCAL}\n[api]\nlogin_failures_per_name = 1000\nlogin_failures_per_address = 1000\n"
    );
    let (server, _github) = start(HELLO, &extra).await;
    for _ in 0..40 {
        assert_eq!(
            sign_in(&server, "dee", "wrong").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let refused = refused_sign_ins(&server).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("wrong name or token from 127.0.0.1"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn the_log_page_and_the_text_log_read_the_store_a_page_at_a_time() {
    let manifest = "version: 1
environments:
  production:
    servers: [local]
tasks:
  deploy:
    - name: count
      run: i=1; while [ $i -le 2500 ]; do echo line-$i; i=$((i+1)); done
";
    let (server, github) = start(manifest, LOCAL).await;
    let (id, token) = deliver(&server, 7301).await;
    github.wait_final(7301, Duration::from_secs(60)).await;
    let page = |query: String| {
        let url = server.url(&format!("/deployments/{id}?token={token}{query}"));
        let client = server.client.clone();
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let newest = page(String::new()).await;
    let shown = newest.matches(r#"<span class="line "#).count();
    assert_eq!(shown, 1000, "the newest page only");
    assert!(newest.contains(" line-2500\n"));
    assert!(!newest.contains(" line-1500\n"));
    // "show earlier lines" opens the page before, carrying the token.
    let earlier = newest
        .split(r#"id="earlier" href=""#)
        .nth(1)
        .expect("a link to earlier lines")
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    assert!(earlier.contains(&format!("token={token}")), "{earlier}");
    let before = earlier.split("before=").nth(1).unwrap().to_string();
    let older = page(format!("&before={before}")).await;
    assert!(older.contains(" line-1500\n"), "the page before");
    assert!(!older.contains(" line-2500\n"));
    assert!(older.contains(r#"id="newest""#));
    // The text log has every line, in order.
    let text = server
        .client
        .get(server.url(&format!("/api/deployments/{id}/log?token={token}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let numbered: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split(" | ").nth(1))
        .filter(|l| l.starts_with("line-"))
        .collect();
    assert_eq!(numbered.len(), 2500);
    assert_eq!(numbered[0], "line-1");
    assert_eq!(numbered[2499], "line-2500");
    // Catching up over SSE from the start also delivers every line.
    let mut events = server
        .client
        .get(server.url(&format!("/deployments/{id}/events?token={token}")))
        .send()
        .await
        .unwrap();
    let received = crate::support::read_until(&mut events, Duration::from_secs(30), |text| {
        text.contains("event: state")
    })
    .await;
    assert_eq!(received.matches("event: log").count() as i64, {
        let detail = server.log(id).await;
        detail.lines().count() as i64
    });
}

async fn live_streams(server: &TestServer) -> f64 {
    sample(&metrics(server).await, "dropship_live_streams_open", &[]).unwrap_or(0.0)
}

#[tokio::test]
async fn live_streams_end_when_their_client_leaves() {
    let gate_dir = tempfile::tempdir().unwrap();
    let (server, github) = start(&gated(&gate_dir.path().join("go")), LOCAL).await;
    let (id, token) = deliver(&server, 7401).await;
    eventually(Duration::from_secs(30), "the first line", || async {
        server.log(id).await.contains("first line")
    })
    .await;
    assert_eq!(live_streams(&server).await, 0.0);
    // The deployment's events, its followed text log and an app's log events: each waits for
    // something to happen while nothing does.
    let paths = [
        format!("/deployments/{id}/events?token={token}"),
        format!("/api/deployments/{id}/log?token={token}&follow=true"),
        "/api/apps/acme/shop/production/logs?follow=true".to_string(),
        "/apps/acme/shop/production/logs/events".to_string(),
    ];
    for path in &paths {
        let mut response = server
            .client
            .get(server.url(path))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        if path.contains("/deployments/") {
            crate::support::read_until(&mut response, Duration::from_secs(30), |text| {
                text.contains("first line")
            })
            .await;
        }
        eventually(Duration::from_secs(30), "the stream to be fed", || async {
            live_streams(&server).await == 1.0
        })
        .await;
        // The client leaves; the task feeding it must end too.
        drop(response);
        eventually(
            Duration::from_secs(60),
            "the feeding task to end",
            || async { live_streams(&server).await == 0.0 },
        )
        .await;
    }
    std::fs::write(gate_dir.path().join("go"), "").unwrap();
    github.wait_final(7401, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn unknown_event_names_share_one_metrics_label() {
    let (server, _github) = start(HELLO, LOCAL).await;
    for n in 0..20 {
        // Forged: no valid signature, a made-up event name.
        let response = server
            .client
            .post(server.url("/webhooks/github"))
            .header("X-GitHub-Event", format!("made-up-{n}"))
            .header("X-Hub-Signature-256", "sha256=00")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let text = metrics(&server).await;
    assert!(!text.contains("made-up"), "{text}");
    assert_eq!(
        sample(
            &text,
            "dropship_webhooks_total",
            &[("event", "other"), ("result", "bad_signature")]
        ),
        Some(20.0)
    );
}

/// Dropship with `[server]` overrides: the test config's `[server]` table gets `settings`.
async fn start_with_server_settings(settings: &str) -> (TestServer, FakeGithub) {
    let github = FakeGithub::start().await;
    let data = tempfile::tempdir().unwrap();
    let toml = config_toml(data.path(), &github.url, LOCAL).replacen(
        "max_body_bytes = 1048576\n",
        &format!("max_body_bytes = 1048576\n{settings}\n"),
        1,
    );
    let config = Config::from_toml(&toml).unwrap();
    (TestServer::start(config, Some(data)).await, github)
}

/// Reads until the server closes the connection (or answers, for `answer`), failing after
/// `limit`: what it sent.
async fn read_to_end(stream: &mut tokio::net::TcpStream, limit: Duration) -> String {
    let mut received = Vec::new();
    let reading = async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(limit, reading)
        .await
        .unwrap_or_else(|_| panic!("the server kept the connection open for {limit:?}"));
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn a_slow_request_head_or_body_is_cut_off() {
    let (server, _github) = start_with_server_settings(
        "header_read_timeout = \"300ms\"\nbody_read_timeout = \"300ms\"",
    )
    .await;
    // Half a header line, then nothing.
    let mut stream = tokio::net::TcpStream::connect(server.address)
        .await
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Ag")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let received = read_to_end(&mut stream, Duration::from_secs(10)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed after {:?}",
        started.elapsed()
    );
    assert!(!received.contains("200 OK"), "{received}");
    // A whole head, then a body that never comes: refused.
    let mut stream = tokio::net::TcpStream::connect(server.address)
        .await
        .unwrap();
    stream
        .write_all(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nname=de")
        .await
        .unwrap();
    let received = read_to_end(&mut stream, Duration::from_secs(10)).await;
    assert!(
        received.is_empty() || received.starts_with("HTTP/1.1 4"),
        "{received}"
    );
    // The listener still serves.
    let ok = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_one_to_close() {
    let (server, _github) = start_with_server_settings("max_connections = 2").await;
    let address = server.address.to_string();
    const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    // Two kept-alive connections take the two places; a third is served once one leaves.
    let first = crate::support::hold_connection(&address, REQUEST, b"HTTP/1.1 200").await;
    let _second = crate::support::hold_connection(&address, REQUEST, b"HTTP/1.1 200").await;
    crate::support::waits_for_a_place(&address, REQUEST, b"HTTP/1.1 200", first).await;
}
