//! A switch never fails a request: 200 switches back and forth between two upstreams under
//! concurrent load, over kept-alive and new connections, on the built-in proxy and on Caddy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use dropship::proxy::{RouteKey, RouteSpec, Routes, UpstreamSpec};

use crate::proxy::{CaddyProcess, caddy_routes, serve_builtin, stand_in_app};
use crate::support::eventually;

const SWITCHES: usize = 200;

/// How long anything here may take: generous, because this test is about switches, not speed,
/// and in a full test run it shares 2 cores with everything else (a starved stand-in app must
/// not look like a failed switch).
const SLOW: Duration = Duration::from_secs(30);

fn route() -> RouteSpec {
    RouteSpec {
        key: RouteKey {
            repo: "acme/switch".into(),
            environment: "production".into(),
            app: "web".into(),
        },
        hosts: vec!["switch.test".into()],
        path_prefix: "/".into(),
    }
}

fn to(address: std::net::SocketAddr) -> Vec<UpstreamSpec> {
    vec![UpstreamSpec {
        address: address.to_string(),
        container: format!("container-{address}"),
    }]
}

/// Switches `routes` `SWITCHES` times, each time to a new stand-in app, and stops the old one
/// once it drained, as a deployment replaces a container; meanwhile 4 clients on kept-alive
/// connections and 4 on a new connection per request keep asking `listen`, each loop bounded
/// to 90 s and 50,000 requests. On the built-in proxy every other request is a POST with a
/// body (which a proxy never sends twice). No request may fail, and many apps must have
/// answered. With Caddy the load is GETs only: through Caddy a POST that meets a switch can
/// still fail (its old configuration keeps dialing the old upstream), which is not Dropship's
/// to fix; and a request whose kept-alive connection Caddy closed unread is sent again.
async fn switches_under_load(routes: &dyn Routes, listen: &str, caddy: bool) {
    let (retry_resets, posts) = (caddy, !caddy);
    let mut current = stand_in_app().await;
    routes.switch(&route(), to(current.address)).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for n in 0..8 {
        let client = if n % 2 == 0 {
            reqwest::Client::new()
        } else {
            reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap()
        };
        let (stop, sent, listen) = (stop.clone(), sent.clone(), listen.to_string());
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut seen = std::collections::BTreeSet::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            while !stop.load(Ordering::SeqCst)
                && tokio::time::Instant::now() < deadline
                && sent.fetch_add(1, Ordering::SeqCst) < 50_000
            {
                let post = posts && sent.load(Ordering::SeqCst) % 2 == 0;
                let ask = || {
                    let request = if post {
                        client
                            .post(format!("http://{listen}/whoami"))
                            .body("a body of its own")
                    } else {
                        client.get(format!("http://{listen}/whoami"))
                    };
                    request.header("host", "switch.test").timeout(SLOW).send()
                };
                let mut answer = ask().await;
                // Caddy closes idle kept-alive connections when its configuration changes; a
                // browser sends such a request again (it was never read), and so does this
                // client. Nothing else is retried: not an HTTP error, not a timeout.
                if retry_resets && answer.as_ref().is_err_and(closed_before_read) {
                    answer = ask().await;
                }
                match answer {
                    Ok(response) if response.status() == 200 => {
                        seen.insert(response.text().await.unwrap_or_default());
                    }
                    Ok(response) => failures.push(format!(
                        "{} {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    )),
                    Err(error) => failures.push(format!("{error:?}")),
                }
            }
            (failures, seen)
        }));
    }
    eventually(Duration::from_secs(10), "the load to start", || async {
        sent.load(Ordering::SeqCst) > 50
    })
    .await;
    for n in 0..SWITCHES {
        // Each switch happens under load: some requests go out between two switches.
        let before = sent.load(Ordering::SeqCst);
        eventually(
            Duration::from_secs(10),
            "requests between switches",
            || async { sent.load(Ordering::SeqCst) >= before + 16 },
        )
        .await;
        let next = stand_in_app().await;
        let drain = routes.switch(&route(), to(next.address)).await.unwrap();
        assert!(
            drain.wait(SLOW).await,
            "switch {n}: the old upstream did not drain"
        );
        // Drained: the old app goes away, as its container stops.
        current.stop();
        current = next;
    }
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for task in load {
        let (failed, answered) = task.await.unwrap();
        failures.extend(failed);
        seen.extend(answered);
    }
    let total = sent.load(Ordering::SeqCst);
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed over {SWITCHES} switches: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(total > 16 * SWITCHES, "only {total} requests were sent");
    assert!(
        seen.len() > SWITCHES / 10,
        "only {} of the apps answered",
        seen.len()
    );
}

/// Whether a request failed because its kept-alive connection was closed (or reset) under it
/// before any answer came: Caddy closes its idle connections when its configuration changes.
fn closed_before_read(error: &reqwest::Error) -> bool {
    let text = format!("{error:?}");
    // On a kept-alive connection, or on a new one Caddy accepted in its old configuration and
    // closed unread while it swapped.
    (text.contains("SendRequest") || text.contains("Connect") || text.contains("Canceled"))
        && (text.contains("ConnectionReset")
            || text.contains("IncompleteMessage")
            || text.contains("connection closed before message completed")
            || text.contains("connection was not ready"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_switches_under_load_fail_no_request_on_the_built_in_proxy() {
    let data = tempfile::tempdir().unwrap();
    let (proxy, listen, shutdown) = serve_builtin(data.path(), slow_settings()).await;
    switches_under_load(&proxy, &listen, false).await;
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_switches_under_load_fail_no_request_on_caddy() {
    let Some(caddy) = CaddyProcess::start().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let routes = caddy_routes(&caddy, data.path(), slow_settings()).await;
    switches_under_load(&routes, &caddy.listen, true).await;
}

fn slow_settings() -> dropship::config::ProxySection {
    dropship::config::ProxySection {
        connect_timeout: SLOW,
        response_timeout: SLOW,
        ..Default::default()
    }
}
