//! The edge proxy: real HTTP through Dropship's proxy to busybox `httpd` containers on the
//! machine's Docker engine (reached over a real sshd).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::containers::{World, last, settled, sha, world};
use crate::support::{eventually, free_port};

const MANIFEST: &str = r#"version: 1
environments:
  production:
    servers: [box]
tasks:
  deploy:
    - name: web
      container:
        image: REGISTRY/acme/edge
        env:
          VERSION: ${{ deployment.sha }}
          HEALTHY: ${{ deployment.payload.healthy }}
        ports: ["8080"]
        init: true
        stop_timeout: 2s
        healthcheck:
          path: /up
          interval: 100ms
          retries: 20
        proxy:
          hosts: [shop.test]
    - name: api
      container:
        name: edge-api
        image: REGISTRY/acme/edge
        env:
          VERSION: api-${{ deployment.sha }}
        init: true
        healthcheck:
          path: /up
          port: 8080
          interval: 100ms
          retries: 20
        proxy:
          hosts: [shop.test]
          path_prefix: /api
"#;

/// `GET path` on the proxy with `Host: host`: the status and the body.
async fn get(client: &reqwest::Client, proxy: &str, host: &str, path: &str) -> (u16, String) {
    match client
        .get(format!("http://{proxy}{path}"))
        .header("host", host)
        .timeout(Duration::from_secs(10))
        .send()
        .await
    {
        Ok(response) => (
            response.status().as_u16(),
            response.text().await.unwrap_or_default().trim().to_string(),
        ),
        Err(error) => (0, format!("{error:?}")),
    }
}

/// Deploys `sha` (deployment `github_id`) while 8 clients keep requesting `shop.test/version`
/// through `proxy` (bounded to 60 s and 20,000 requests): no request may fail, and after the
/// deployment every response comes from `sha`. With `retry_resets`, a request whose kept-alive
/// connection was closed under it is sent once more, as browsers do (Caddy closes idle
/// connections when its configuration changes); an HTTP error still fails.
async fn switch_under_load(
    w: &World,
    client: &reqwest::Client,
    proxy: &str,
    github_id: i64,
    sha: &str,
    app: &str,
    retry_resets: bool,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (stop, sent, client, proxy) = (
            stop.clone(),
            sent.clone(),
            client.clone(),
            proxy.to_string(),
        );
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst)
                && tokio::time::Instant::now() < deadline
                && sent.fetch_add(1, Ordering::SeqCst) < 20_000
            {
                let (mut status, mut body) = get(&client, &proxy, "shop.test", "/version").await;
                if status == 0 && retry_resets {
                    (status, body) = get(&client, &proxy, "shop.test", "/version").await;
                }
                if status != 200 {
                    failures.push(format!("{status} {body}"));
                }
            }
            failures
        }));
    }
    eventually(Duration::from_secs(10), "the load to start", || async {
        sent.load(Ordering::SeqCst) > 50
    })
    .await;
    let (id, statuses) = w.deploy(github_id, sha, "deploy", json!({})).await;
    assert_eq!(last(&statuses).0, "success", "{}", w.server.log(id).await);
    for _ in 0..20 {
        assert_eq!(
            get(client, proxy, "shop.test", "/version").await,
            (200, sha.to_string())
        );
    }
    // The old version drains and stops under the load too.
    let wanted = format!("old version of {app} stopped");
    eventually(
        Duration::from_secs(30),
        "the old version to stop",
        || async { w.server.log(id).await.contains(&wanted) },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for task in load {
        failures.extend(task.await.unwrap());
    }
    let total = sent.load(Ordering::SeqCst);
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {failures:?}",
        failures.len()
    );
    assert!(total > 100, "only {total} requests were sent");
}

#[tokio::test]
async fn the_proxy_routes_by_host_and_prefix_and_switches_under_load_without_a_failed_request() {
    let shas: Vec<String> = (1..=3).map(sha).collect();
    let port = free_port();
    let proxy = format!("127.0.0.1:{port}");
    let extra = format!("[proxy]\nlisten = \"{proxy}\"\ndrain_timeout = \"5s\"\n");
    let Some(w) = world("acme/edge", MANIFEST, &shas, true, &extra).await else {
        return;
    };
    for sha in &shas {
        w.registry.as_ref().unwrap().push("acme/edge", sha);
    }
    let client = reqwest::Client::new();

    let (id, statuses) = w.deploy(1, &shas[0], "deploy", json!({})).await;
    assert_eq!(last(&statuses).0, "success", "{}", w.server.log(id).await);
    assert_eq!(
        get(&client, &proxy, "shop.test", "/version").await,
        (200, shas[0].clone())
    );
    assert_eq!(
        get(&client, &proxy, "Shop.Test:80", "/api/version").await,
        (200, format!("api-{}", shas[0]))
    );
    let (status, page) = get(&client, &proxy, "nobody.test", "/").await;
    assert_eq!(status, 404);
    assert!(page.contains("No app is served at nobody.test/"), "{page}");
    // /metrics counts the proxy's answers by route and status, and the SSH master connection
    // the deployment opened.
    let metrics = client
        .get(w.server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |needles: &[&str]| {
        metrics
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no metric with {needles:?} in\n{metrics}"))
            .to_string()
    };
    for app in ["edge", "edge-api"] {
        let route = format!("route=\"acme/edge/production/{app}\"");
        let served = line(&["dropship_proxy_requests_total{", &route, "status=\"200\""]);
        assert!(served.ends_with(" 1"), "{served}");
    }
    let unknown = line(&[
        "dropship_proxy_requests_total{",
        "route=\"none\"",
        "status=\"404\"",
    ]);
    assert!(unknown.ends_with(" 1"), "{unknown}");
    let open = line(&["dropship_ssh_connections_open 1"]);
    assert_eq!(open, "dropship_ssh_connections_open 1");

    // A steady load while v2 replaces v1: no request fails, and afterwards every response
    // comes from v2.
    switch_under_load(&w, &client, &proxy, 2, &shas[1], "edge", false).await;
    settled("acme/edge", "edge", &[(&shas[1], true), (&shas[0], false)]).await;

    // A version that fails its health check never touches the route.
    let (_, statuses) = w
        .deploy(3, &shas[2], "deploy", json!({"healthy": "no"}))
        .await;
    assert_eq!(last(&statuses).0, "failure");
    assert_eq!(
        get(&client, &proxy, "shop.test", "/version").await,
        (200, shas[1].clone())
    );

    // Routes survive a restart: a new Dropship on the same database serves them at once.
    let mut w = w;
    w.restart().await;
    assert_eq!(
        get(&client, &proxy, "shop.test", "/version").await,
        (200, shas[1].clone())
    );
    assert_eq!(
        get(&client, &proxy, "shop.test", "/api/version").await,
        (200, format!("api-{}", shas[1]))
    );
}

/// A CA and a certificate for each of `hosts` (PEM files in `dir`), signed by it.
fn certificates(dir: &std::path::Path, hosts: &[&str]) -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let mut toml = String::new();
    for host in hosts {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![host.to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{host}.pem")),
            dir.join(format!("{host}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        toml.push_str(&format!(
            "[[proxy.certificates]]\nhosts = [\"{host}\"]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert_path.display(),
            key_path.display()
        ));
    }
    toml
}

#[tokio::test]
async fn https_picks_each_hosts_certificate_by_sni() {
    let shas = vec![sha(21)];
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let extra = format!(
        "[proxy]\nlisten_tls = \"127.0.0.1:{port}\"\n{}",
        certificates(dir.path(), &["shop.test", "other.test"])
    );
    let manifest = format!(
        "version: 1\nenvironments:\n  production:\n    servers: [box]\ntasks:\n  deploy:\n    - name: web\n      container:\n        image: {}\n        env:\n          VERSION: ${{{{ deployment.sha }}}}\n        init: true\n        healthcheck: {{ path: /up, port: 8080, interval: 100ms }}\n        proxy:\n          hosts: [shop.test]\n",
        crate::support::docker::IMAGE
    );
    let Some(w) = world("acme/tls-edge", &manifest, &shas, false, &extra).await else {
        return;
    };
    let (id, statuses) = w.deploy(1, &shas[0], "deploy", json!({})).await;
    assert_eq!(last(&statuses).0, "success", "{}", w.server.log(id).await);
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("ca.pem")).unwrap())
                .unwrap(),
        )
        .resolve("shop.test", address)
        .resolve("other.test", address)
        .build()
        .unwrap();
    // Each name verifies against its own certificate, so the proxy chose it by SNI.
    let shop = client
        .get(format!("https://shop.test:{port}/version"))
        .send()
        .await
        .unwrap();
    assert_eq!(shop.status(), 200);
    assert_eq!(shop.text().await.unwrap().trim(), shas[0]);
    let other = client
        .get(format!("https://other.test:{port}/version"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        other.status(),
        404,
        "TLS for other.test worked; it has no route"
    );
    // A name with no certificate gets no TLS session.
    let unknown = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve("nocert.test", address)
        .build()
        .unwrap()
        .get(format!("https://nocert.test:{port}/"))
        .send()
        .await;
    assert!(unknown.is_err(), "{unknown:?}");
    // A client that names no host (it connects to an address) gets the first certificate, as
    // from nginx's default server; the request then finds no route.
    let by_address = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
        .get(format!("https://{address}/"))
        .send()
        .await
        .expect("TLS without SNI");
    assert_eq!(by_address.status(), 404);
}

/// Debian's Caddy, run for the test, with an admin API and a server of the team's own that
/// Dropship must leave alone.
pub(crate) struct CaddyProcess {
    child: std::process::Child,
    pub(crate) admin: String,
    pub(crate) listen: String,
    _dir: tempfile::TempDir,
}

impl Drop for CaddyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl CaddyProcess {
    /// Starts Caddy, on other ports if it could not bind its first ones (a port picked free
    /// may be taken before Caddy binds it); fails with Caddy's log if it does not come up.
    pub(crate) async fn start() -> Option<CaddyProcess> {
        if !std::path::Path::new("/usr/bin/caddy").exists() {
            crate::support::missing("Debian's caddy (/usr/bin/caddy)");
            return None;
        }
        for attempt in 1..=3 {
            let mut caddy = CaddyProcess::spawn();
            let url = format!("{}/config/", caddy.admin);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let mut checks = tokio::time::interval(Duration::from_millis(20));
            loop {
                checks.tick().await;
                if reqwest::get(&url)
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    return Some(caddy);
                }
                let exited = caddy.child.try_wait().unwrap().is_some();
                if exited && attempt < 3 {
                    break;
                }
                if exited || tokio::time::Instant::now() > deadline {
                    panic!(
                        "caddy's admin API did not come up (attempt {attempt}, exited: {exited}); its log:\n{}",
                        std::fs::read_to_string(caddy._dir.path().join("caddy.log"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        unreachable!("the last attempt returns or fails")
    }

    fn spawn() -> CaddyProcess {
        let dir = tempfile::tempdir().unwrap();
        let (admin, listen, team) = (free_port(), free_port(), free_port());
        let config = json!({
            "admin": {"listen": format!("127.0.0.1:{admin}")},
            "storage": {"module": "file_system", "root": dir.path().join("data")},
            "apps": {"http": {"servers": {"team": {
                "listen": [format!("127.0.0.1:{team}")],
                "routes": [{"handle": [{"handler": "static_response", "body": "team"}]}],
                "automatic_https": {"disable": true},
            }}}},
        });
        let file = dir.path().join("caddy.json");
        std::fs::write(&file, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.path().join("caddy.log")).unwrap();
        let child = std::process::Command::new("/usr/bin/caddy")
            .args(["run", "--config"])
            .arg(&file)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting caddy");
        CaddyProcess {
            child,
            admin: format!("http://127.0.0.1:{admin}"),
            listen: format!("127.0.0.1:{listen}"),
            _dir: dir,
        }
    }

    /// Caddy's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("caddy.log")).unwrap_or_default()
    }
}

#[tokio::test]
async fn the_caddy_backend_gets_the_same_routes_and_the_same_zero_failure_switch() {
    let Some(caddy) = CaddyProcess::start().await else {
        return;
    };
    let shas: Vec<String> = (31..=32).map(sha).collect();
    let extra = format!(
        "[proxy]\nbackend = \"caddy\"\ncaddy_admin = \"{}\"\nlisten = \"{}\"\ndrain_timeout = \"5s\"\n",
        caddy.admin, caddy.listen
    );
    let manifest = MANIFEST
        .replace("acme/edge", "acme/caddy-edge")
        .replace("name: edge-api", "name: caddy-edge-api");
    let Some(w) = world("acme/caddy-edge", &manifest, &shas, true, &extra).await else {
        return;
    };
    for sha in &shas {
        w.registry.as_ref().unwrap().push("acme/caddy-edge", sha);
    }
    let client = reqwest::Client::new();
    let (id, statuses) = w.deploy(1, &shas[0], "deploy", json!({})).await;
    assert_eq!(last(&statuses).0, "success", "{}", w.server.log(id).await);
    assert_eq!(
        get(&client, &caddy.listen, "shop.test", "/version").await,
        (200, shas[0].clone())
    );
    assert_eq!(
        get(&client, &caddy.listen, "shop.test", "/api/version").await,
        (200, format!("api-{}", shas[0]))
    );
    switch_under_load(&w, &client, &caddy.listen, 2, &shas[1], "caddy-edge", true).await;
    // The team's own server is still there.
    let team: serde_json::Value =
        reqwest::get(format!("{}/config/apps/http/servers/team", caddy.admin))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(team["routes"][0]["handle"][0]["body"], "team", "{team}");
}

#[tokio::test]
async fn a_preview_environment_gets_its_own_host_and_is_torn_down_by_stop_or_a_closed_pull_request()
{
    let shas = vec![sha(41)];
    let port = free_port();
    let proxy = format!("127.0.0.1:{port}");
    let extra = format!(
        "[proxy]\nlisten = \"{proxy}\"\npreview_domain = \"preview.test\"\ndrain_timeout = \"2s\"\n"
    );
    let manifest = MANIFEST
        .replace("acme/edge", "acme/preview")
        .replace("name: edge-api", "name: preview-api")
        .replace(
            "tasks:\n",
            "previews:\n  environments: pr-*\n  like: production\ntasks:\n",
        );
    let Some(w) = world("acme/preview", &manifest, &shas, true, &extra).await else {
        return;
    };
    // Preview hosts carry the repository's digest: no other repository's preview can take them.
    let digest = dropship::manifest::repo_digest("acme", "preview");
    let host = |label: &str| format!("{label}-{digest}.preview.test");
    w.registry.as_ref().unwrap().push("acme/preview", &shas[0]);
    let client = reqwest::Client::new();
    let (id, statuses) = w.deploy_to(1, &shas[0], "pr-7", "deploy", json!({})).await;
    let (state, _) = last(&statuses);
    assert_eq!(state, "success", "{}", w.server.log(id).await);
    assert_eq!(
        statuses.last().unwrap().body["environment_url"],
        format!("http://{}", host("preview-pr-7"))
    );
    assert_eq!(
        get(&client, &proxy, &host("preview-pr-7"), "/version").await,
        (200, shas[0].clone())
    );
    assert_eq!(
        get(&client, &proxy, &host("preview-api-pr-7"), "/api/version").await,
        (200, format!("api-{}", shas[0]))
    );

    // task: stop tears it down: routes, containers, and `inactive` on GitHub.
    let (_, statuses) = w.deploy_to(2, &shas[0], "pr-7", "stop", json!({})).await;
    assert_eq!(last(&statuses).0, "inactive", "{statuses:#?}");
    assert_eq!(
        get(&client, &proxy, &host("preview-pr-7"), "/version")
            .await
            .0,
        404
    );
    assert!(crate::support::docker::containers("acme/preview", "preview").is_empty());
    eventually(
        Duration::from_secs(30),
        "the preview's deploy to end inactive",
        || async { w.github.statuses(1).iter().any(|s| s.state() == "inactive") },
    )
    .await;

    // A preview of the pull request's branch, torn down when the pull request closes.
    let (id, statuses) = w.deploy_to(3, &shas[0], "pr-8", "deploy", json!({})).await;
    assert_eq!(last(&statuses).0, "success", "{}", w.server.log(id).await);
    assert_eq!(
        get(&client, &proxy, &host("preview-pr-8"), "/version")
            .await
            .0,
        200
    );
    // A fork's pull request from a branch of the same name tears nothing down.
    let fork = pull_request_closed(9, "master", "mallory/preview");
    let answer = w.server.deliver("pull_request", "pr-closed-9", &fork).await;
    assert_eq!(answer.status(), 202);
    let answer: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(
        answer["ignored"], "the pull request comes from a fork",
        "{answer}"
    );
    assert_eq!(
        get(&client, &proxy, &host("preview-pr-8"), "/version")
            .await
            .0,
        200
    );
    let closed = pull_request_closed(8, "master", "acme/preview");
    let answer = w
        .server
        .deliver("pull_request", "pr-closed-8", &closed)
        .await;
    assert_eq!(answer.status(), 202);
    let answer: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(answer["teardown"], json!(["pr-8"]), "{answer}");
    eventually(
        Duration::from_secs(30),
        "the closed pull request's preview to go",
        || async { w.github.statuses(3).iter().any(|s| s.state() == "inactive") },
    )
    .await;
    assert_eq!(
        get(&client, &proxy, &host("preview-pr-8"), "/version")
            .await
            .0,
        404
    );
    assert!(crate::support::docker::containers("acme/preview", "preview").is_empty());
}

/// GitHub's example `pull_request` delivery with action `closed`, for `acme/preview`'s pull
/// request `number` from branch `head_ref` of `head_repo`.
fn pull_request_closed(number: i64, head_ref: &str, head_repo: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(crate::support::fixture(
        "github/webhooks/pull_request.closed.json",
    ))
    .unwrap();
    let mut body: serde_json::Value = serde_json::from_str(&text).unwrap();
    body["number"] = number.into();
    body["pull_request"]["number"] = number.into();
    body["pull_request"]["head"]["ref"] = head_ref.into();
    body["pull_request"]["head"]["repo"]["full_name"] = head_repo.into();
    body["repository"]["full_name"] = "acme/preview".into();
    serde_json::to_vec(&body).unwrap()
}

/// A stand-in app for the proxy's own behaviour: `/headers` answers the request's headers,
/// `/whoami` its address, `/slow` its address once the test releases it, `/stream` a first
/// chunk, then (once released) the rest, and an `Upgrade: echo` request switches protocols and
/// echoes every byte back (what a websocket needs of a proxy). Connections are kept alive, as
/// an app's are: thousands of new ones a second would fill loopback with TIME_WAIT sockets.
pub(crate) struct StandIn {
    pub(crate) address: std::net::SocketAddr,
    /// Each permit lets one held answer go on.
    gate: Arc<tokio::sync::Semaphore>,
    /// Cancelled by `stop`: the listener closes, and so does every connection.
    stopped: tokio_util::sync::CancellationToken,
}

impl StandIn {
    /// Lets one held answer (`/slow`, or the rest of `/stream`) go on.
    pub(crate) fn release(&self) {
        self.gate.add_permits(1);
    }

    /// Stops, as a stopped container does: no new connection, and every open one closed, so
    /// a request still under way fails.
    pub(crate) fn stop(&self) {
        self.stopped.cancel();
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stopped.cancel();
    }
}

pub(crate) async fn stand_in_app() -> StandIn {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let stopped = tokio_util::sync::CancellationToken::new();
    let (held, stop) = (gate.clone(), stopped.clone());
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => return,
                },
            };
            let (held, stop) = (held.clone(), stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = stand_in_connection(stream, address, &held) => {}
                }
            });
        }
    });
    StandIn {
        address,
        gate,
        stopped,
    }
}

/// Answers the requests of one connection to a stand-in app until the client closes it.
async fn stand_in_connection(
    mut stream: tokio::net::TcpStream,
    address: std::net::SocketAddr,
    held: &tokio::sync::Semaphore,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut received = Vec::new();
    let mut piece = [0u8; 4096];
    loop {
        // A request head, read to its blank line.
        let end = loop {
            if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match stream.read(&mut piece).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&piece[..n]),
            }
        };
        let head = String::from_utf8_lossy(&received[..end]).to_string();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        // A body (a POST's) is read whole before the answer.
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        while received.len() < end + length {
            match stream.read(&mut piece).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&piece[..n]),
            }
        }
        // What follows is the next request's.
        received.drain(..end + length);
        let answer = |body: &str| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        if head.to_ascii_lowercase().contains("upgrade: echo") {
            let _ = stream
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
                .await;
            let (mut read, mut write) = stream.split();
            let _ = tokio::io::copy(&mut read, &mut write).await;
            return;
        } else if path == "/slow" || path == "/whoami" {
            if path == "/slow" {
                if let Ok(permit) = held.acquire().await {
                    permit.forget();
                }
            }
            if stream
                .write_all(answer(&address.to_string()).as_bytes())
                .await
                .is_err()
            {
                return;
            }
        } else if path == "/stream" {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            for (i, part) in ["one ", "two ", "three"].into_iter().enumerate() {
                if i == 1 {
                    // The rest only once the client has the first chunk.
                    if let Ok(permit) = held.acquire().await {
                        permit.forget();
                    }
                }
                let chunk = format!("{:x}\r\n{part}\r\n", part.len());
                let _ = stream.write_all(chunk.as_bytes()).await;
                let _ = stream.flush().await;
            }
            if stream.write_all(b"0\r\n\r\n").await.is_err() {
                return;
            }
        } else if stream
            .write_all(answer(&head.to_ascii_lowercase()).as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

#[tokio::test]
async fn the_proxy_forwards_headers_streams_upgrades_and_ejects_a_dead_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = stand_in_app().await;
    // A second upstream that refuses connections: a dead server.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let settings = dropship::config::ProxySection {
        eject_for: Duration::from_secs(60),
        ..Default::default()
    };
    let (address, shutdown, _data) = proxy_to(&[dead, app.address], settings).await;
    let client = reqwest::Client::new();

    // Every request succeeds although one upstream is dead: the refused connection is
    // retried on the other, and the dead one is ejected.
    for _ in 0..6 {
        let (status, headers) = get(&client, &address, "app.test", "/headers").await;
        assert_eq!(status, 200, "{headers}");
        assert!(headers.contains("x-forwarded-for: 127.0.0.1"), "{headers}");
        assert!(headers.contains("x-forwarded-proto: http"), "{headers}");
        assert!(headers.contains("x-forwarded-host: app.test"), "{headers}");
        assert!(headers.contains("host: app.test"), "{headers}");
    }

    // A streamed body arrives in its chunks, the first before the rest was written.
    let mut streamed = client
        .get(format!("http://{address}/stream"))
        .header("host", "app.test")
        .send()
        .await
        .unwrap();
    let first = streamed.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"one ");
    // Only now does the app write the rest: the first chunk came through on its own.
    app.release();
    let mut rest = Vec::new();
    while let Some(chunk) = streamed.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"two three");

    // An upgrade passes through: after 101 the connection is the app's.
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    socket
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        assert_eq!(
            socket.read(&mut byte).await.unwrap(),
            1,
            "the proxy closed the upgrade"
        );
        answer.push(byte[0]);
    }
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    socket.write_all(b"ping over the tunnel").await.unwrap();
    let mut echoed = vec![0u8; "ping over the tunnel".len()];
    socket.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"ping over the tunnel");
    shutdown.cancel();
}

/// A SQLite store in `dir`.
pub(crate) async fn store_in(dir: &std::path::Path) -> std::sync::Arc<dyn dropship::store::Store> {
    std::sync::Arc::new(
        dropship::store::Sqlite::open(&dir.join("dropship.db"))
            .await
            .unwrap(),
    )
}

/// The built-in proxy on a store in `dir`, serving on a port-0 listener: the proxy, its
/// address, and what stops it.
pub(crate) async fn serve_builtin(
    dir: &std::path::Path,
    settings: dropship::config::ProxySection,
) -> (
    dropship::proxy::Proxy,
    String,
    tokio_util::sync::CancellationToken,
) {
    let proxy = dropship::proxy::Proxy::load(store_in(dir).await, settings, Default::default())
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    // Two workers, as on a machine with two cores: the connections of one test spread over
    // both, and they share the connection cap.
    let (address, _ended) = dropship::proxy::serve_on_workers(
        "127.0.0.1:0".parse().unwrap(),
        proxy.clone(),
        None,
        shutdown.clone(),
        2,
    )
    .unwrap();
    (proxy, address.to_string(), shutdown)
}

/// Dropship's Caddy backend, on a store in `dir`, writing into `caddy`.
pub(crate) async fn caddy_routes(
    caddy: &CaddyProcess,
    dir: &std::path::Path,
    settings: dropship::config::ProxySection,
) -> dropship::proxy::Caddy {
    let settings = dropship::config::ProxySection {
        backend: dropship::config::ProxyBackend::Caddy,
        caddy_admin: caddy.admin.clone(),
        listen: Some(caddy.listen.parse().unwrap()),
        ..settings
    };
    dropship::proxy::Caddy::connect(store_in(dir).await, settings)
        .await
        .unwrap()
}

/// A proxy (its listener address) with one route, `app.test`, to `upstreams`.
async fn proxy_to(
    upstreams: &[std::net::SocketAddr],
    settings: dropship::config::ProxySection,
) -> (
    String,
    tokio_util::sync::CancellationToken,
    tempfile::TempDir,
) {
    use dropship::proxy::{RouteKey, RouteSpec, Routes, UpstreamSpec};
    let data = tempfile::tempdir().unwrap();
    let (proxy, address, shutdown) = serve_builtin(data.path(), settings).await;
    let route = RouteSpec {
        key: RouteKey {
            repo: "acme/app".into(),
            environment: "production".into(),
            app: "app".into(),
        },
        hosts: vec!["app.test".into()],
        path_prefix: "/".into(),
    };
    let upstreams = upstreams
        .iter()
        .map(|a| UpstreamSpec {
            address: a.to_string(),
            container: a.to_string(),
        })
        .collect();
    proxy.switch(&route, upstreams).await.unwrap();
    (address, shutdown, data)
}

#[tokio::test]
async fn least_in_flight_avoids_a_busy_upstream_and_timeouts_end_slow_answers_and_idle_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (app_a, app_b) = (stand_in_app().await, stand_in_app().await);
    let (a, b) = (app_a.address, app_b.address);
    let settings = dropship::config::ProxySection {
        balance: dropship::config::Balance::LeastInFlight,
        ..Default::default()
    };
    let (proxy, shutdown, _data) = proxy_to(&[a, b], settings).await;
    let client = reqwest::Client::new();
    // With both idle the first wins; while it is busy with a slow request, the other serves.
    assert_eq!(
        get(&client, &proxy, "app.test", "/whoami").await.1,
        a.to_string()
    );
    let slow = {
        let (client, proxy) = (client.clone(), proxy.clone());
        tokio::spawn(async move { get(&client, &proxy, "app.test", "/slow").await })
    };
    eventually(
        Duration::from_secs(5),
        "the slow request to be in flight",
        || async { get(&client, &proxy, "app.test", "/whoami").await.1 == b.to_string() },
    )
    .await;
    app_a.release();
    assert_eq!(slow.await.unwrap(), (200, a.to_string()));
    shutdown.cancel();

    // A response slower than response_timeout is a 504; an idle client is let go.
    let settings = dropship::config::ProxySection {
        response_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let (proxy, shutdown, _data) = proxy_to(&[a], settings).await;
    let (status, page) = get(&client, &proxy, "app.test", "/slow").await;
    assert_eq!(status, 504, "{page}");
    app_a.release();
    let mut idle = tokio::net::TcpStream::connect(&proxy).await.unwrap();
    let mut buffer = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buffer)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "an idle connection stayed open: {closed:?}"
    );
    let _ = idle.write_all(b"x").await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_host_routed_for_one_repository_is_refused_to_another_and_precedence_is_stable() {
    use dropship::proxy::{Proxy, RouteKey, RouteSpec, Routes, UpstreamSpec};
    let (app_a, app_b, app_c) = (
        stand_in_app().await,
        stand_in_app().await,
        stand_in_app().await,
    );
    let data = tempfile::tempdir().unwrap();
    let open = || async {
        Proxy::load(
            store_in(data.path()).await,
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap()
    };
    let route = |repo: &str, app: &str| RouteSpec {
        key: RouteKey {
            repo: repo.into(),
            environment: "production".into(),
            app: app.into(),
        },
        hosts: vec!["app.test".into()],
        path_prefix: "/".into(),
    };
    let to = |address: std::net::SocketAddr| {
        vec![UpstreamSpec {
            address: address.to_string(),
            container: address.to_string(),
        }]
    };
    let proxy = open().await;
    // Two apps of one repository on the same host and prefix: the route named first wins,
    // whichever was switched last.
    proxy
        .switch(&route("acme/app", "zeta"), to(app_b.address))
        .await
        .unwrap();
    proxy
        .switch(&route("acme/app", "alpha"), to(app_a.address))
        .await
        .unwrap();
    // Another repository cannot take the host, even for a moment.
    let refused = proxy
        .switch(&route("evil/app", "web"), to(app_c.address))
        .await
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "host `app.test` is routed for acme/app; a host belongs to one repository, so evil/app cannot route it"
    );
    let serve = |proxy: Proxy| async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (address, _ended) = dropship::proxy::serve_on_workers(
            "127.0.0.1:0".parse().unwrap(),
            proxy,
            None,
            shutdown.clone(),
            1,
        )
        .unwrap();
        (address.to_string(), shutdown)
    };
    let client = reqwest::Client::new();
    let (address, shutdown) = serve(proxy).await;
    assert_eq!(
        get(&client, &address, "app.test", "/whoami").await.1,
        app_a.address.to_string()
    );
    shutdown.cancel();
    // The same after a restart, whatever order the store returns the routes in.
    let (address, shutdown) = serve(open().await).await;
    assert_eq!(
        get(&client, &address, "app.test", "/whoami").await.1,
        app_a.address.to_string()
    );
    shutdown.cancel();
    // Once acme/app no longer routes the host, another repository may.
    let proxy = open().await;
    for app in ["alpha", "zeta"] {
        proxy
            .remove(&RouteKey {
                repo: "acme/app".into(),
                environment: "production".into(),
                app: app.into(),
            })
            .await
            .unwrap();
    }
    proxy
        .switch(&route("other/app", "web"), to(app_c.address))
        .await
        .unwrap();
}

/// `[proxy] max_connections`: connections beyond the cap wait in the backlog until one closes.
#[tokio::test]
async fn proxy_connections_beyond_the_cap_wait_for_one_to_close() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dropship::config::ProxySection {
        max_connections: 1,
        ..Default::default()
    };
    let (_proxy, address, _shutdown) = serve_builtin(dir.path(), settings).await;
    // No route: the proxy answers 404 itself and keeps the connection.
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n";
    let first = crate::support::hold_connection(&address, REQUEST, b"HTTP/1.1 404").await;
    crate::support::waits_for_a_place(&address, REQUEST, b"HTTP/1.1 404", first).await;
}
