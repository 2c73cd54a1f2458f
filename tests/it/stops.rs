//! Cancel, a step's timeout, the deployment-wide timeout and the end of the shutdown grace all
//! reach the server: the step's processes are killed, even those that left its process group,
//! and the deployment ends `error` saying why. Checked with `pgrep` on the (local) sshd server.

use std::process::Command;
use std::time::Duration;

use dropship::config::Config;
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::github::FakeGithub;
use crate::support::sshd::{self, ClientKey, Sshd};
use crate::support::{TestServer, config_toml, deployment_payload, eventually};

const SHA: &str = "5709500000000000000000000000000000000000";

/// One sshd server `web-1`, a fake GitHub with `manifest`, and Dropship with `server_extra`
/// in its `[server]` section.
struct World {
    server: TestServer,
    github: FakeGithub,
    /// The configuration, for a restart.
    toml: String,
    _sshd: Sshd,
    _key: ClientKey,
}

async fn world(manifest: &str, server_extra: &str) -> Option<World> {
    sshd::available()?;
    let key = ClientKey::new();
    let sshd = Sshd::start(&key);
    let github = FakeGithub::start().await;
    github.add_file("acme/shop", SHA, "dropship.yml", manifest);
    let extra = format!(
        "{}[[repos]]\nname = \"acme/shop\"\nservers = [\"web-1\"]\n",
        sshd.server_toml("web-1", &["web"], &key, &sshd.host_key)
    );
    let data = tempfile::tempdir().unwrap();
    let toml = config_toml(data.path(), &github.url, &extra).replacen(
        "[server]\n",
        &format!("[server]\n{server_extra}"),
        1,
    );
    let server = TestServer::start(Config::from_toml(&toml).unwrap(), Some(data)).await;
    Some(World {
        server,
        github,
        toml,
        _sshd: sshd,
        _key: key,
    })
}

/// Whether a process whose command line matches `pattern` runs on this machine (where the
/// test's sshd runs the steps).
fn pgrep(pattern: &str) -> bool {
    Command::new("pgrep")
        .args(["-f", pattern])
        .status()
        .expect("pgrep")
        .success()
}

/// A step that starts two long sleeps, one of them out of its process group, says `started`,
/// and waits. `n` makes its sleeps' command lines its own.
fn long_step(n: u32, timeout: Option<&str>) -> String {
    let timeout = timeout.map_or(String::new(), |t| format!("      timeout: {t}\n"));
    format!(
        "    - name: long\n{timeout}      run: |\n        setsid sleep 300.{n}1 &\n        sleep 300.{n}2 &\n        echo started\n        wait\n"
    )
}

async fn deliver(world: &World, github_id: i64) -> i64 {
    let body = deployment_payload(github_id, "acme/shop", SHA, "production", "deploy");
    let response = world
        .server
        .deliver("deployment", &format!("stop-{github_id}"), &body)
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    response.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap()
}

async fn wait_started(world: &World, id: i64, n: u32) {
    eventually(Duration::from_secs(30), "the step to start", || async {
        world.server.log(id).await.contains("started")
    })
    .await;
    assert!(pgrep(&format!("sleep 300.{n}1")) && pgrep(&format!("sleep 300.{n}2")));
}

fn assert_gone(n: u32) {
    for which in [1, 2] {
        assert!(
            !pgrep(&format!("sleep 300.{n}{which}")),
            "sleep 300.{n}{which} still runs on the server"
        );
    }
}

#[tokio::test]
async fn cancel_kills_the_running_steps_processes_on_the_server() {
    let manifest = format!(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\ntasks:\n  deploy:\n{}",
        long_step(1, None)
    );
    let Some(w) = world(&manifest, "").await else {
        return;
    };
    let id = deliver(&w, 8101).await;
    wait_started(&w, id, 1).await;
    let response = w
        .server
        .client
        .post(w.server.url(&format!("/api/deployments/{id}/cancel")))
        .bearer_auth(crate::support::DEPLOYER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let statuses = w.github.wait_final(8101, Duration::from_secs(30)).await;
    let last = statuses.last().unwrap();
    assert_eq!(last.state(), "error");
    assert_eq!(last.description(), "cancelled by dee during step long");
    assert_gone(1);
    let detail = w.server.deployment(id).await;
    assert_eq!(detail["steps"][0]["state"], "error", "{detail}");
}

#[tokio::test]
async fn a_step_timeout_kills_what_left_the_steps_process_group() {
    let manifest = format!(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\ntasks:\n  deploy:\n{}",
        long_step(2, Some("2s"))
    );
    let Some(w) = world(&manifest, "").await else {
        return;
    };
    let id = deliver(&w, 8201).await;
    let statuses = w.github.wait_final(8201, Duration::from_secs(60)).await;
    assert_eq!(statuses.last().unwrap().state(), "failure");
    assert_gone(2);
    let log = w.server.log(id).await;
    assert!(log.contains("timed out"), "{log}");
}

#[tokio::test]
async fn the_deployment_wide_timeout_stops_it_and_kills_its_step() {
    let manifest = format!(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\n    timeout: 3s\ntasks:\n  deploy:\n{}",
        long_step(3, None)
    );
    let Some(w) = world(&manifest, "").await else {
        return;
    };
    deliver(&w, 8301).await;
    let statuses = w.github.wait_final(8301, Duration::from_secs(60)).await;
    let last = statuses.last().unwrap();
    assert_eq!(last.state(), "error");
    assert_eq!(
        last.description(),
        "timed out: the deployment ran longer than 3s during step long"
    );
    assert_gone(3);
}

/// SIGTERM lets a running deployment go on for the grace, then kills its step and ends it
/// `error` ("interrupted: shutdown"), with its final status posted before Dropship stops.
#[tokio::test]
async fn shutdown_after_the_grace_kills_the_running_step_and_ends_it_error() {
    let manifest = format!(
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\ntasks:\n  deploy:\n{}",
        long_step(4, None)
    );
    let Some(mut w) = world(&manifest, "shutdown_grace = \"2s\"\n").await else {
        return;
    };
    let id = deliver(&w, 8401).await;
    wait_started(&w, id, 4).await;
    let stopping = std::time::Instant::now();
    w.server.stop().await;
    assert!(
        stopping.elapsed() >= Duration::from_secs(2),
        "stopped before the grace"
    );
    assert_gone(4);
    let statuses = w.github.wait_final(8401, Duration::from_secs(30)).await;
    let last = statuses.last().unwrap();
    assert_eq!(last.state(), "error");
    assert_eq!(last.description(), "interrupted: shutdown during step long");
}

/// A deployment that ends within the grace just ends.
#[tokio::test]
async fn shutdown_lets_a_deployment_finish_within_the_grace() {
    let manifest = "version: 1\nenvironments:\n  production:\n    servers: [web-1]\ntasks:\n  deploy:\n    - name: short\n      run: |\n        echo started\n        sleep 2\n";
    let Some(mut w) = world(manifest, "shutdown_grace = \"30s\"\n").await else {
        return;
    };
    let id = deliver(&w, 8501).await;
    eventually(Duration::from_secs(30), "the step to start", || async {
        w.server.log(id).await.contains("started")
    })
    .await;
    w.server.stop().await;
    let statuses = w.github.wait_final(8501, Duration::from_secs(30)).await;
    assert_eq!(statuses.last().unwrap().state(), "success");
}

/// SIGTERM sends a deployment that has begun no step (its manifest read is still out) back
/// to the queue at once, without waiting for the grace, and the next start runs it.
#[tokio::test]
async fn shutdown_requeues_a_deployment_that_began_no_step_and_the_next_start_runs_it() {
    let manifest = "version: 1\nenvironments:\n  production:\n    servers: [web-1]\ntasks:\n  deploy:\n    - name: short\n      run: echo ran-after-restart\n";
    let Some(w) = world(manifest, "shutdown_grace = \"60s\"\n").await else {
        return;
    };
    w.github.hold_contents();
    let id = deliver(&w, 8601).await;
    w.github
        .wait_contents_requests(1, Duration::from_secs(30))
        .await;
    let World {
        server,
        github,
        toml,
        _sshd,
        _key,
    } = w;
    let stopping = std::time::Instant::now();
    let data = server.stop_keeping_data().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(30),
        "shutdown waited for the grace"
    );
    let statuses = github.statuses(8601);
    let states: Vec<&str> = statuses.iter().map(|s| s.state()).collect();
    assert_eq!(states, ["queued", "in_progress", "queued"]);
    assert_eq!(
        statuses.last().unwrap().description(),
        "re-queued: dropship shut down while reading its manifest; it runs after the restart"
    );

    github.release_contents();
    let server = TestServer::start(Config::from_toml(&toml).unwrap(), Some(data)).await;
    let statuses = github.wait_final(8601, Duration::from_secs(30)).await;
    let states: Vec<&str> = statuses.iter().map(|s| s.state()).collect();
    assert_eq!(
        states,
        ["queued", "in_progress", "queued", "in_progress", "success"]
    );
    let log = server.log(id).await;
    assert!(
        log.contains("re-queued") && log.contains("ran-after-restart"),
        "{log}"
    );
}
