//! Test support: real services started per test, cleaned up on drop.

pub mod docker;
pub mod github;
pub mod sshd;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::process::{Child, Command, Stdio};

use dropship::config::Config;
use tokio_util::sync::CancellationToken;

pub const WEBHOOK_SECRET: &str = "test-webhook-secret";
/// The token of `admin`, an admin.
pub const API_TOKEN: &str = "test-api-token";
/// The token of `dee`, a deployer.
pub const DEPLOYER_TOKEN: &str = "test-deployer-token";
/// The token of `vic`, a viewer.
pub const VIEWER_TOKEN: &str = "test-viewer-token";

/// Whether a missing service must fail the test (CI) or may skip it (a bare laptop).
pub fn missing(what: &str) -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{what} is required under CI=true; install it (scripts/test does)");
    }
    eprintln!("SKIPPED: {what} is not available on this machine");
    true
}

/// Polls `condition` every 20 ms until it holds, failing after `limit`: for state in another
/// process (an HTTP endpoint) that cannot notify us.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut checks = tokio::time::interval(Duration::from_millis(20));
    loop {
        checks.tick().await;
        if condition().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
    }
}

/// Reads a streamed answer (server-sent events, NDJSON) until `done` holds for all that
/// arrived, failing after `limit`; returns what arrived.
pub async fn read_until(
    response: &mut reqwest::Response,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut received = String::new();
    let reading = async {
        while !done(&received) {
            let chunk = response
                .chunk()
                .await
                .unwrap()
                .expect("the streamed answer ended early");
            received.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    if tokio::time::timeout(limit, reading).await.is_err() {
        panic!("timed out after {limit:?}; received so far: {received}");
    }
    received
}

pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// A `deployment.created` delivery built from GitHub's own example payload.
pub fn deployment_payload(
    github_id: i64,
    repo: &str,
    sha: &str,
    environment: &str,
    task: &str,
) -> Vec<u8> {
    let text = std::fs::read_to_string(fixture("github/webhooks/deployment.created.json")).unwrap();
    let mut body: serde_json::Value = serde_json::from_str(&text).unwrap();
    body["deployment"]["id"] = github_id.into();
    body["deployment"]["sha"] = sha.into();
    body["deployment"]["environment"] = environment.into();
    body["deployment"]["task"] = task.into();
    body["repository"]["full_name"] = repo.into();
    serde_json::to_vec(&body).unwrap()
}

/// The operator config for a test: data in `data_dir`, GitHub at `github`, plus `extra` TOML.
pub fn config_toml(data_dir: &Path, github: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:1"
data_dir = "{data}"
max_body_bytes = 1048576

[github]
api_url = "{github}"
token = "ghp_test_token"
webhook_secrets = ["{WEBHOOK_SECRET}"]
retry_base = "50ms"
retry_max = "200ms"

[[api.users]]
name = "admin"
role = "admin"
token_sha256 = "{admin}"

[[api.users]]
name = "dee"
role = "deployer"
token_sha256 = "{deployer}"

[[api.users]]
name = "vic"
role = "viewer"
token_sha256 = "{viewer}"

{extra}
"#,
        data = data_dir.display(),
        admin = dropship::http::auth::hash_token(API_TOKEN),
        deployer = dropship::http::auth::hash_token(DEPLOYER_TOKEN),
        viewer = dropship::http::auth::hash_token(VIEWER_TOKEN),
    )
}

/// Sends a delivery of `event` signed with the test secret to the Dropship at `base`.
pub async fn deliver_to(
    client: &reqwest::Client,
    base: &str,
    event: &str,
    delivery: &str,
    body: &[u8],
) -> reqwest::Response {
    let signature = dropship::webhook::sign(WEBHOOK_SECRET.as_bytes(), body);
    client
        .post(format!("{base}/webhooks/github"))
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", signature)
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

/// The JSON a running Dropship's API answers at `url`, asked as the admin.
pub async fn api_json(client: &reqwest::Client, url: String) -> serde_json::Value {
    client
        .get(url)
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Dropship serving in this process on a port-0 listener.
pub struct TestServer {
    pub address: SocketAddr,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    _data: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start(config: Config, data: Option<tempfile::TempDir>) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(error) = dropship::server::run(config, listener, token).await {
                panic!("dropship stopped: {error:#}");
            }
        });
        TestServer {
            address,
            // Idle connections are let go before the server's header read timeout (10 s)
            // closes them, so a request never races a closing kept-alive connection.
            client: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            shutdown,
            task: Some(task),
            _data: data,
        }
    }

    /// Shuts the service down and waits until it has stopped (its listeners are closed).
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops the service and hands its data directory over, for a restart on the same store.
    pub async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        self.stop().await;
        self._data.take().expect("a data directory")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Sends a signed delivery of `event`.
    pub async fn deliver(&self, event: &str, delivery: &str, body: &[u8]) -> reqwest::Response {
        deliver_to(&self.client, &self.url(""), event, delivery, body).await
    }

    /// Signs in through the login form as `name`: the `Cookie` header value to send.
    pub async fn login(&self, name: &str, token: &str) -> String {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let response = client
            .post(self.url("/login"))
            .form(&[("name", name), ("password", token), ("next", "/")])
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            reqwest::StatusCode::SEE_OTHER,
            "login as {name}"
        );
        let cookie = response
            .headers()
            .get(reqwest::header::SET_COOKIE)
            .expect("a session cookie")
            .to_str()
            .unwrap();
        cookie.split(';').next().unwrap().to_string()
    }

    pub async fn api(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap()
    }

    /// `GET /api/deployments/{id}` as JSON.
    pub async fn deployment(&self, id: i64) -> serde_json::Value {
        self.api(&format!("/api/deployments/{id}"))
            .await
            .json()
            .await
            .unwrap()
    }

    /// `GET /api/deployments/{id}/log` as text.
    pub async fn log(&self, id: i64) -> String {
        self.api(&format!("/api/deployments/{id}/log"))
            .await
            .text()
            .await
            .unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A `dropship serve` process, killed (SIGKILL) when dropped.
pub struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A GitHub App's private key (RSA, PEM) made with openssl: its directory and path.
pub fn app_key() -> (tempfile::TempDir, PathBuf) {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("app.pem");
    let status = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .stderr(std::process::Stdio::null())
        .status()
        .expect("running openssl");
    assert!(status.success());
    (keys, key)
}

/// A port for a server the test starts later (Caddy, a spawned Dropship). Taken below the
/// kernel's ephemeral range (32768 and up on Linux), where the tests' own outgoing connections
/// take their local ports and could take this one before the server binds it; each call of
/// this process takes the next port, starting from one of its own.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 1_000) as u16 * 10,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 32_768, "no free port left below the ephemeral range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn serve(config: &std::path::Path) -> Process {
    Process(
        Command::new(env!("CARGO_BIN_EXE_dropship"))
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting dropship serve"),
    )
}

pub async fn healthy(client: &reqwest::Client, base: &str) {
    eventually(
        Duration::from_secs(30),
        "dropship to answer /healthz",
        || async {
            client
                .get(format!("{base}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;
}

/// The value of the sample of `name` with `labels` in Prometheus text.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// `GET /metrics` as text.
pub async fn metrics(server: &TestServer) -> String {
    let response = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    response.text().await.unwrap()
}

/// Opens a connection to `address`, sends `request` and checks the answer starts with
/// `expected`; the connection stays open (it holds a place under a connection cap).
pub async fn hold_connection(
    address: &str,
    request: &[u8],
    expected: &[u8],
) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buffer = [0u8; 1024];
    let n = stream.read(&mut buffer).await.unwrap();
    assert!(
        buffer[..n].starts_with(expected),
        "{:?}",
        String::from_utf8_lossy(&buffer[..n])
    );
    stream
}

/// With every place under `address`'s connection cap held by `held`, a new connection sending
/// `request` gets no answer; once `held` closes, it is answered with `expected`.
pub async fn waits_for_a_place(
    address: &str,
    request: &[u8],
    expected: &[u8],
    held: tokio::net::TcpStream,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut waiting = tokio::net::TcpStream::connect(address).await.unwrap();
    waiting.write_all(request).await.unwrap();
    let mut buffer = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut buffer)).await;
    assert!(
        early.is_err(),
        "a connection beyond the cap was served at once"
    );
    drop(held);
    let n = tokio::time::timeout(Duration::from_secs(10), waiting.read(&mut buffer))
        .await
        .expect("served once a place is free")
        .unwrap();
    assert!(
        buffer[..n].starts_with(expected),
        "{:?}",
        String::from_utf8_lossy(&buffer[..n])
    );
}
