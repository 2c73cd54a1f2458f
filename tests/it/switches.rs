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
/// (closing its connections) once it drained, as a deployment replaces a container; meanwhile
/// 4 clients on kept-alive connections and 4 on a new connection per request keep asking
/// `listen`, each loop bounded to 90 s and 200,000 requests. Every other request is a POST
/// with a body (which a proxy never sends twice). No request may fail, and many apps must have
/// answered. With Caddy, a request whose connection Caddy closed unread while it swapped
/// configurations is sent again, as a browser does.
async fn switches_under_load(routes: &dyn Routes, listen: &str, caddy: Option<&CaddyProcess>) {
    let retry_resets = caddy.is_some();
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
                && sent.fetch_add(1, Ordering::SeqCst) < 200_000
            {
                let post = sent.load(Ordering::SeqCst) % 2 == 0;
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
                // Caddy closes the connections of its old configuration when it swaps in a
                // new one: a request sent on one just then is reset unread, and once in a few
                // hundred thousand requests so is its resend, on a new connection the old
                // configuration accepted. A browser sends such a request again (it was never
                // read), and so does this client, twice at most. Nothing else is retried: not
                // an HTTP error, not a timeout.
                for _ in 0..2 {
                    if retry_resets && answer.as_ref().is_err_and(closed_before_read) {
                        answer = ask().await;
                    }
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
        "{} of {total} requests failed over {SWITCHES} switches: {:?}{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        caddy.map_or(String::new(), |caddy| {
            let log = caddy.log();
            let errors: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("error"))
                .take(10)
                .collect();
            format!("\nCaddy's errors:\n{}", errors.join("\n"))
        })
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
    switches_under_load(&proxy, &listen, None).await;
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_switches_under_load_fail_no_request_on_caddy() {
    let Some(caddy) = CaddyProcess::start().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let routes = caddy_routes(&caddy, data.path(), slow_settings()).await;
    switches_under_load(&routes, &caddy.listen, Some(&caddy)).await;
}

fn slow_settings() -> dropship::config::ProxySection {
    dropship::config::ProxySection {
        connect_timeout: SLOW,
        response_timeout: SLOW,
        ..Default::default()
    }
}

/// Caddy forgets an upstream once no configuration names it, even while its old configuration
/// still has a request to it in flight; the drain must still see that request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_drains_an_upstream_only_once_its_last_request_ended() {
    let Some(caddy) = CaddyProcess::start().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let routes = caddy_routes(&caddy, data.path(), slow_settings()).await;
    let old = stand_in_app().await;
    routes.switch(&route(), to(old.address)).await.unwrap();
    let listen = caddy.listen.clone();
    let slow = tokio::spawn(async move {
        reqwest::Client::new()
            .get(format!("http://{listen}/slow"))
            .header("host", "switch.test")
            .timeout(SLOW)
            .send()
            .await
    });
    let upstreams = format!("{}/reverse_proxy/upstreams", caddy.admin);
    let old_address = old.address.to_string();
    eventually(
        Duration::from_secs(10),
        "the slow request in flight",
        || async {
            let listed: serde_json::Value = match reqwest::get(&upstreams).await {
                Ok(answer) => answer.json().await.unwrap_or_default(),
                Err(_) => return false,
            };
            listed.as_array().is_some_and(|all| {
                all.iter()
                    .any(|u| u["address"] == old_address.as_str() && u["num_requests"] == 1)
            })
        },
    )
    .await;
    let new = stand_in_app().await;
    let drain = routes.switch(&route(), to(new.address)).await.unwrap();
    assert!(
        !drain.wait(Duration::from_secs(2)).await,
        "drained while a request to the old upstream was in flight"
    );
    old.release();
    let answer = slow.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    assert!(drain.wait(SLOW).await, "the old upstream did not drain");
}
