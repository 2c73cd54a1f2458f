//! Full deployments: webhook in, tasks on three real sshd servers, statuses out.

use std::time::Duration;

use dropship::config::Config;
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::github::{FakeGithub, PostedStatus};
use crate::support::sshd::{self, ClientKey, Sshd};
use crate::support::{TestServer, config_toml, deployment_payload};

const SHA: &str = "f95f852bd8fca8fcc58a9a2d6c842781e32a215e";

const MANIFEST: &str = r#"version: 1
environments:
  production:
    servers: [web]
    url: https://shop.example.com
tasks:
  deploy:
    - name: build
      run: |
        echo "building ${{ deployment.sha }} on $DROPSHIP_SERVER"
        echo "to stderr" >&2
    - name: migrate
      on: first
      secrets: [DATABASE_URL]
      run: |
        test -n "$DATABASE_URL"
        echo "migrating ${{ deployment.environment }}"
    - name: restart
      run: |
        if [ "$DROPSHIP_SERVER" = "${{ deployment.payload.fail_on }}" ]; then echo "cannot restart" >&2; exit 1; fi
        echo "restarted $DROPSHIP_SERVER"
    - name: announce
      on: first
      run: echo done
"#;

/// Three sshd servers with role `web`, a fake GitHub holding `manifest`, and Dropship.
struct World {
    server: TestServer,
    github: FakeGithub,
    sshds: Vec<Sshd>,
    _key: ClientKey,
}

async fn world(manifest: &str, pin: impl Fn(usize, &Sshd) -> String) -> Option<World> {
    sshd::available()?;
    let key = ClientKey::new();
    let sshds: Vec<Sshd> = (0..3).map(|_| Sshd::start(&key)).collect();
    let github = FakeGithub::start().await;
    github.add_file("acme/shop", SHA, "dropship.yml", manifest);
    let mut servers = String::new();
    for (i, sshd) in sshds.iter().enumerate() {
        servers.push_str(&sshd.server_toml(
            &format!("web-{}", i + 1),
            &["web"],
            &key,
            &pin(i, sshd),
        ));
    }
    let repos = "[[repos]]\nname = \"acme/shop\"\nenvironments = [\"production\"]\nservers = [\"web-1\", \"web-2\", \"web-3\"]\n[repos.secrets]\nDATABASE_URL = \"postgres://user:hunter2@db/shop\"\n";
    let data = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&config_toml(
        data.path(),
        &github.url,
        &format!("{servers}{repos}"),
    ))
    .unwrap();
    let server = TestServer::start(config, Some(data)).await;
    Some(World {
        server,
        github,
        sshds,
        _key: key,
    })
}

fn pinned(_: usize, sshd: &Sshd) -> String {
    sshd.host_key.clone()
}

fn states(statuses: &[PostedStatus]) -> Vec<&str> {
    statuses.iter().map(PostedStatus::state).collect()
}

async fn deploy(
    world: &World,
    github_id: i64,
    payload_patch: Option<Value>,
) -> (i64, Vec<PostedStatus>) {
    let mut body: Value = serde_json::from_slice(&deployment_payload(
        github_id,
        "acme/shop",
        SHA,
        "production",
        "deploy",
    ))
    .unwrap();
    if let Some(patch) = payload_patch {
        body["deployment"]["payload"] = patch;
    }
    let response = world
        .server
        .deliver(
            "deployment",
            &format!("delivery-{github_id}"),
            &serde_json::to_vec(&body).unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer: Value = response.json().await.unwrap();
    assert!(
        answer["log_url"].as_str().unwrap().contains("token="),
        "{answer}"
    );
    let statuses = world
        .github
        .wait_final(github_id, Duration::from_secs(60))
        .await;
    (answer["id"].as_i64().unwrap(), statuses)
}

#[tokio::test]
async fn a_deployment_on_three_servers_succeeds_with_ordered_statuses_and_stored_logs() {
    let Some(world) = world(MANIFEST, pinned).await else {
        return;
    };
    let (id, statuses) = deploy(&world, 1001, None).await;
    assert_eq!(
        states(&statuses),
        ["queued", "in_progress", "success"],
        "{statuses:#?}"
    );
    let last = statuses.last().unwrap();
    assert_eq!(last.body["environment_url"], "https://shop.example.com");
    assert!(
        last.body["log_url"]
            .as_str()
            .unwrap()
            .contains(&format!("/deployments/{id}?token="))
    );
    assert!(
        statuses
            .iter()
            .all(|s| s.body["environment"] == "production" && s.repo == "acme/shop")
    );

    let log = world.server.log(id).await;
    for server in ["web-1", "web-2", "web-3"] {
        assert!(
            log.contains(&format!(
                "{server} build stdout | building {SHA} on {server}"
            )),
            "{log}"
        );
        assert!(
            log.contains(&format!("{server} build stderr | to stderr")),
            "{log}"
        );
        assert!(log.contains(&format!("restarted {server}")), "{log}");
    }
    assert_eq!(
        log.matches("migrating production").count(),
        1,
        "`on: first` runs once"
    );
    assert!(!log.contains("hunter2"), "a secret reached the log");

    let detail: Value = world.server.deployment(id).await;
    assert_eq!(detail["state"], "success", "{detail}");
    assert_eq!(detail["steps"].as_array().unwrap().len(), 3 + 1 + 3 + 1);
    assert!(!detail.to_string().contains("hunter2"));

    // The log_url page opens with its token alone, and not without it.
    let page_url = last.body["log_url"]
        .as_str()
        .unwrap()
        .replace("http://127.0.0.1:1", &world.server.url(""));
    let page = world.server.client.get(&page_url).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("restarted web-2") && html.contains("migrate"));
    let wrong = world
        .server
        .client
        .get(world.server.url(&format!("/deployments/{id}?token=nope")))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_step_failing_on_one_server_ends_failure_naming_it_and_skips_the_rest() {
    let Some(world) = world(MANIFEST, pinned).await else {
        return;
    };
    let (id, statuses) = deploy(&world, 1002, Some(serde_json::json!({"fail_on": "web-2"}))).await;
    assert_eq!(states(&statuses), ["queued", "in_progress", "failure"]);
    assert_eq!(
        statuses[2].description(),
        "step restart failed on web-2 (exit 1)"
    );
    let detail: Value = world.server.deployment(id).await;
    let steps = detail["steps"].as_array().unwrap();
    let announce = steps.iter().find(|s| s["name"] == "announce").unwrap();
    assert_eq!(announce["state"], "skipped");
    let failed = steps
        .iter()
        .find(|s| s["name"] == "restart" && s["server"] == "web-2")
        .unwrap();
    assert_eq!(failed["exit_code"], 1);
}

#[tokio::test]
async fn a_manifest_typo_ends_error_with_line_and_column() {
    let broken = MANIFEST.replace("    servers: [web]", "    serverz: [web]");
    let Some(world) = world(&broken, pinned).await else {
        return;
    };
    let (_, statuses) = deploy(&world, 1003, None).await;
    assert_eq!(states(&statuses), ["queued", "in_progress", "error"]);
    assert!(
        statuses[2]
            .description()
            .starts_with("dropship.yml:4:5: environments.production: unknown field `serverz`"),
        "{}",
        statuses[2].description()
    );
}

#[tokio::test]
async fn a_server_with_a_changed_host_key_is_refused() {
    // web-3's pinned key is another server's key: exactly what a swapped machine looks like.
    let other = ClientKey::new();
    let wrong = other
        .public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let Some(world) = world(MANIFEST, |i, sshd| {
        if i == 2 {
            wrong.clone()
        } else {
            sshd.host_key.clone()
        }
    })
    .await
    else {
        return;
    };
    let (id, statuses) = deploy(&world, 1004, None).await;
    assert_eq!(states(&statuses), ["queued", "in_progress", "error"]);
    assert_eq!(
        statuses[2].description(),
        "step build: web-3: host key verification failed: the server's key does not match the pinned host_key"
    );
    let log = world.server.log(id).await;
    assert!(
        !log.contains("web-3 build stdout"),
        "nothing may run on a server whose key changed"
    );
}

#[tokio::test]
async fn a_redelivered_deployment_runs_once() {
    let Some(world) = world(MANIFEST, pinned).await else {
        return;
    };
    let body = deployment_payload(1005, "acme/shop", SHA, "production", "deploy");
    let first = world
        .server
        .deliver("deployment", "same-delivery", &body)
        .await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let again = world
        .server
        .deliver("deployment", "same-delivery", &body)
        .await;
    assert_eq!(again.status(), StatusCode::OK);
    let answer: Value = again.json().await.unwrap();
    assert_eq!(answer["duplicate"], true);
    let statuses = world.github.wait_final(1005, Duration::from_secs(60)).await;
    assert_eq!(states(&statuses), ["queued", "in_progress", "success"]);
    let list: Vec<Value> = world
        .server
        .api("/api/deployments")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
}

#[tokio::test]
async fn statuses_survive_a_github_that_answers_502_twice() {
    let Some(world) = world(MANIFEST, pinned).await else {
        return;
    };
    world.github.fail_next_statuses(2);
    let (_, statuses) = deploy(&world, 1006, None).await;
    assert_eq!(world.github.failed_posts(), 2);
    assert_eq!(states(&statuses), ["queued", "in_progress", "success"]);
}

#[tokio::test]
async fn a_step_that_outlives_its_timeout_is_killed_on_the_server() {
    let manifest = "version: 1\nenvironments:\n  production:\n    servers: [web]\ntasks:\n  deploy:\n    - name: slow\n      timeout: 1s\n      run: |\n        echo going to sleep\n        sleep 37\n        echo woke up\n";
    let Some(world) = world(manifest, pinned).await else {
        return;
    };
    let (id, statuses) = deploy(&world, 1007, None).await;
    assert_eq!(states(&statuses), ["queued", "in_progress", "failure"]);
    assert_eq!(
        statuses[2].description(),
        "step slow failed on web-1 and 2 more (timed out)"
    );
    let detail: Value = world.server.deployment(id).await;
    assert!(
        detail["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "timed_out"),
        "{detail}"
    );
    let log = world.server.log(id).await;
    assert!(
        log.contains("going to sleep") && !log.contains("woke up"),
        "{log}"
    );
    // The remote command is gone, not merely abandoned.
    crate::support::eventually(
        Duration::from_secs(10),
        "the remote sleep to be killed",
        || async {
            let found = std::process::Command::new("pgrep")
                .args(["-u", sshd::USER, "-f", "sleep 37"])
                .output()
                .unwrap();
            !found.status.success()
        },
    )
    .await;
}

#[tokio::test]
async fn a_dropped_master_connection_is_reopened_for_the_next_deployment() {
    let Some(mut world) = world(MANIFEST, pinned).await else {
        return;
    };
    let (_, statuses) = deploy(&world, 1008, None).await;
    assert_eq!(statuses.last().unwrap().state(), "success");
    // web-1's machine restarts: the master connection Dropship kept warm is gone.
    world.sshds[0].restart();
    let (id, statuses) = deploy(&world, 1009, None).await;
    assert_eq!(
        states(&statuses),
        ["queued", "in_progress", "success"],
        "{statuses:#?}"
    );
    let log = world.server.log(id).await;
    assert!(log.contains("restarted web-1"), "{log}");
}

#[tokio::test]
async fn a_rolling_deployment_stops_at_the_first_failing_batch() {
    let rolling = MANIFEST.replace(
        "    url: https://shop.example.com\n",
        "    url: https://shop.example.com\n    strategy: rolling\n    batch: 1\n",
    );
    let Some(world) = world(&rolling, pinned).await else {
        return;
    };
    let (id, statuses) = deploy(&world, 1010, Some(serde_json::json!({"fail_on": "web-1"}))).await;
    assert_eq!(
        statuses.last().unwrap().description(),
        "step restart failed on web-1 (exit 1)"
    );
    let detail = world.server.deployment(id).await;
    let restart: Vec<(&str, &str)> = detail["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == "restart")
        .map(|s| (s["server"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        restart,
        [
            ("web-1", "failure"),
            ("web-2", "skipped"),
            ("web-3", "skipped")
        ]
    );
    let log = world.server.log(id).await;
    assert!(
        !log.contains("restarted web-2") && !log.contains("restarted web-3"),
        "{log}"
    );
}

/// `[ssh] connect_at_start`: the master connections are open before any deployment, so the first
/// one after a restart is warm; a server that cannot be reached is only reported.
#[tokio::test]
async fn connect_at_start_opens_every_master_before_the_first_deployment() {
    if sshd::available().is_none() {
        return;
    }
    let key = ClientKey::new();
    let sshds: Vec<Sshd> = (0..2).map(|_| Sshd::start(&key)).collect();
    let mut servers = String::new();
    for (i, sshd) in sshds.iter().enumerate() {
        servers.push_str(&sshd.server_toml(&format!("web-{i}"), &["web"], &key, &sshd.host_key));
    }
    // A third whose pinned key is another server's: it must not connect, and must not stop
    // the others or the service.
    let wrong = sshds[0].server_toml("web-wrong", &["web"], &key, &sshds[1].host_key);
    let data = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&config_toml(
        data.path(),
        "http://127.0.0.1:9",
        &format!("[ssh]\nconnect_at_start = true\n\n{servers}{wrong}"),
    ))
    .unwrap();
    let server = TestServer::start(config, Some(data)).await;
    crate::support::eventually(Duration::from_secs(20), "two open masters", || async {
        let text = crate::support::metrics(&server).await;
        crate::support::sample(&text, "dropship_ssh_connections_open", &[]) == Some(2.0)
    })
    .await;
    let text = crate::support::metrics(&server).await;
    assert_eq!(
        crate::support::sample(&text, "dropship_ssh_connections_opened_total", &[]),
        Some(2.0),
        "{text}"
    );
}
