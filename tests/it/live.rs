//! On the built-in `local` server: the deployment page streams live, newer deployments
//! supersede queued ones, and a GitHub App's installation token is fetched once and reused.

use std::path::Path;
use std::time::Duration;

use dropship::config::Config;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::github::FakeGithub;
use crate::support::{TestServer, config_toml, deployment_payload, eventually, fixture};

const SHA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const LOCAL: &str = "[[servers]]\nname = \"local\"\nhost = \"local\"\n\n[[repos]]\nname = \"acme/shop\"\nservers = [\"local\"]\n";

/// A manifest whose one step prints `first`, waits for `gate` to exist, then prints `second`.
fn gated_manifest(gate: &Path) -> String {
    format!(
        "version: 1\nenvironments:\n  production:\n    servers: [local]\ntasks:\n  deploy:\n    - name: wait\n      run: |\n        echo first\n        while [ ! -e {gate} ]; do sleep 0.05; done\n        echo second\n",
        gate = gate.display()
    )
}

async fn start(manifest: &str, extra: &str) -> (TestServer, FakeGithub) {
    let github = FakeGithub::start().await;
    github.add_file("acme/shop", SHA, "dropship.yml", manifest);
    let data = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&config_toml(data.path(), &github.url, extra)).unwrap();
    (TestServer::start(config, Some(data)).await, github)
}

async fn deliver(server: &TestServer, github_id: i64) -> Value {
    let body = deployment_payload(github_id, "acme/shop", SHA, "production", "deploy");
    let response = server
        .deliver("deployment", &format!("d-{github_id}"), &body)
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_deployment_page_streams_log_lines_and_the_final_state_live() {
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("go");
    let (server, github) = start(&gated_manifest(&gate), LOCAL).await;
    let answer = deliver(&server, 4001).await;
    let log_url = answer["log_url"].as_str().unwrap();
    let token = log_url.split("token=").nth(1).unwrap();
    let id = answer["id"].as_i64().unwrap();
    let mut events = server
        .client
        .get(server.url(&format!("/deployments/{id}/events?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    let mut seen = String::new();
    let read = async {
        while let Some(chunk) = events.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            // The step is still blocked: this line can only have come live.
            if seen.contains("\"line\":\"first\"") && !gate.exists() {
                std::fs::write(&gate, "").unwrap();
            }
            if seen.contains("event: state") && seen.contains("\"state\":\"success\"") {
                return;
            }
        }
        panic!("the event stream ended before the final state");
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("final state within 30 s");
    assert!(seen.contains("event: step"), "{seen}");
    let first = seen.find("\"line\":\"first\"").unwrap();
    let second = seen
        .find("\"line\":\"second\"")
        .expect("second line streamed");
    assert!(first < second);
    let statuses = github.wait_final(4001, Duration::from_secs(30)).await;
    assert_eq!(statuses.last().unwrap().state(), "success");
}

#[tokio::test]
async fn a_newer_queued_deployment_supersedes_older_queued_ones() {
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("go");
    let (server, github) = start(&gated_manifest(&gate), LOCAL).await;
    let first = deliver(&server, 5001).await["id"].as_i64().unwrap();
    eventually(
        Duration::from_secs(30),
        "the first deployment to run",
        || async {
            let detail: Value = server.deployment(first).await;
            detail["state"] == "running"
        },
    )
    .await;
    deliver(&server, 5002).await;
    deliver(&server, 5003).await;
    std::fs::write(&gate, "").unwrap();
    let first_statuses = github.wait_final(5001, Duration::from_secs(30)).await;
    assert_eq!(first_statuses.last().unwrap().state(), "success");
    let superseded = github.wait_final(5002, Duration::from_secs(30)).await;
    let states: Vec<&str> = superseded.iter().map(|s| s.state()).collect();
    assert_eq!(states, ["queued", "error"]);
    assert_eq!(superseded[1].description(), "superseded by deployment 5003");
    let newest = github.wait_final(5003, Duration::from_secs(30)).await;
    let states: Vec<&str> = newest.iter().map(|s| s.state()).collect();
    assert_eq!(states, ["queued", "in_progress", "success"]);
}

#[tokio::test]
async fn a_github_app_fetches_one_installation_token_and_reuses_it() {
    let (_keys, key) = crate::support::app_key();
    let manifest = "version: 1\nenvironments:\n  production:\n    servers: [local]\ntasks:\n  deploy:\n    - name: hello\n      run: echo hello\n";
    let extra = format!(
        "[github.app]\napp_id = 42\nprivate_key_file = \"{}\"\n\n{LOCAL}",
        key.display()
    );
    let github = FakeGithub::start().await;
    github.add_file("acme/shop", SHA, "dropship.yml", manifest);
    let data = tempfile::tempdir().unwrap();
    let toml =
        config_toml(data.path(), &github.url, &extra).replace("token = \"ghp_test_token\"\n", "");
    let server = TestServer::start(Config::from_toml(&toml).unwrap(), Some(data)).await;
    let template = std::fs::read_to_string(fixture(
        "github/webhooks/deployment.created.with-installation.json",
    ))
    .unwrap();
    for github_id in [6001, 6002] {
        let mut body: Value = serde_json::from_str(&template).unwrap();
        body["deployment"]["id"] = github_id.into();
        body["deployment"]["sha"] = SHA.into();
        body["repository"]["full_name"] = "acme/shop".into();
        let response = server
            .deliver(
                "deployment",
                &format!("d-{github_id}"),
                &serde_json::to_vec(&body).unwrap(),
            )
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let statuses = github.wait_final(github_id, Duration::from_secs(30)).await;
        assert_eq!(statuses.last().unwrap().state(), "success", "{statuses:#?}");
        for status in &statuses {
            assert!(
                status.authorization.contains("ghs_installation1_token1"),
                "{}",
                status.authorization
            );
        }
    }
    let requests = github.token_requests();
    assert_eq!(
        requests.len(),
        1,
        "the installation token is cached: {requests:?}"
    );
    assert_eq!(requests[0].0, 1);
}

#[tokio::test]
async fn rate_limited_status_posts_wait_as_github_asks() {
    let manifest = "version: 1\nenvironments:\n  production:\n    servers: [local]\ntasks:\n  deploy:\n    - name: hello\n      run: echo hello\n";
    let (server, github) = start(manifest, LOCAL).await;
    // A secondary rate limit (403) and a 429, each asking for one second; the test config's
    // own backoff is 50 ms, so only honouring Retry-After explains a one-second wait.
    github.refuse_next_status(
        StatusCode::FORBIDDEN,
        Some(1),
        "You have exceeded a secondary rate limit",
    );
    github.refuse_next_status(
        StatusCode::TOO_MANY_REQUESTS,
        Some(1),
        "API rate limit exceeded",
    );
    deliver(&server, 7001).await;
    let statuses = github.wait_final(7001, Duration::from_secs(30)).await;
    let states: Vec<&str> = statuses.iter().map(|s| s.state()).collect();
    assert_eq!(states, ["queued", "in_progress", "success"]);
    let refused = github.refused_at();
    let accepted = github.accepted_at();
    assert_eq!(refused.len(), 2);
    assert!(
        refused[1] - refused[0] >= Duration::from_secs(1),
        "retried before Retry-After"
    );
    assert!(
        accepted[0] - refused[1] >= Duration::from_secs(1),
        "retried before Retry-After"
    );
}

#[tokio::test]
async fn the_manifest_may_live_in_dot_github() {
    let github = FakeGithub::start().await;
    let manifest = "version: 1\nenvironments:\n  production:\n    servers: [local]\ntasks:\n  deploy:\n    - name: hello\n      run: echo from dot-github\n";
    github.add_file("acme/shop", SHA, ".github/dropship.yml", manifest);
    let data = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&config_toml(data.path(), &github.url, LOCAL)).unwrap();
    let server = TestServer::start(config, Some(data)).await;
    let id = deliver(&server, 8001).await["id"].as_i64().unwrap();
    let statuses = github.wait_final(8001, Duration::from_secs(30)).await;
    assert_eq!(statuses.last().unwrap().state(), "success");
    let log = server.log(id).await;
    assert!(
        log.contains("read .github/dropship.yml at") && log.contains("from dot-github"),
        "{log}"
    );
}

#[tokio::test]
async fn a_github_enterprise_api_url_with_a_path_works() {
    let github = FakeGithub::start_at("/api/v3").await;
    assert!(github.url.ends_with("/api/v3"));
    let manifest = "version: 1\nenvironments:\n  production:\n    servers: [local]\ntasks:\n  deploy:\n    - name: hello\n      run: echo enterprise\n";
    github.add_file("acme/shop", SHA, "dropship.yml", manifest);
    let data = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&config_toml(data.path(), &github.url, LOCAL)).unwrap();
    let server = TestServer::start(config, Some(data)).await;
    deliver(&server, 9001).await;
    let statuses = github.wait_final(9001, Duration::from_secs(30)).await;
    let states: Vec<&str> = statuses.iter().map(|s| s.state()).collect();
    assert_eq!(states, ["queued", "in_progress", "success"]);
}

const HELLO: &str = "version: 1\nenvironments:\n  production:\n    servers: [local]\ntasks:\n  deploy:\n    - name: hello\n      run: echo hello\n";

/// GitHub answering 503 for far longer than the old 25-attempt window: nothing is given up on,
/// and once it is back every status arrives, in order per deployment.
#[tokio::test]
async fn statuses_outlast_a_long_github_outage_and_all_arrive_in_order() {
    let (server, github) = start(HELLO, LOCAL).await;
    github.status_outage(Some((
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
    )));
    let ids = [7101, 7102];
    let mut recorded = Vec::new();
    // One after the other, so the second does not supersede the first while it waits.
    for github_id in &ids {
        let id = deliver(&server, *github_id).await["id"].as_i64().unwrap();
        eventually(Duration::from_secs(30), "the deployment to end", || async {
            server.deployment(id).await["state"] == "success"
        })
        .await;
        recorded.push(id);
    }
    // 40 refused posts per deployment: well past 25 attempts each, at the test's 200 ms cap.
    github.wait_refused(80, Duration::from_secs(60)).await;
    // Both ran meanwhile; the second replaced the first.
    assert_eq!(server.deployment(recorded[0]).await["state"], "inactive");
    assert_eq!(server.deployment(recorded[1]).await["state"], "success");
    assert!(github.statuses(7101).is_empty() && github.statuses(7102).is_empty());
    github.status_outage(None);
    for github_id in ids {
        let statuses = github.wait_final(github_id, Duration::from_secs(30)).await;
        let states: Vec<&str> = statuses.iter().map(|s| s.state()).collect();
        assert_eq!(
            states,
            ["queued", "in_progress", "success"],
            "deployment {github_id}"
        );
    }
}

/// Waits until GitHub's deployments were listed `n` times in all (reconciler passes).
/// With a GitHub App, an `owner/*` entry's repositories are the App's installations' ones: a
/// deployment of one of them whose webhook never arrived is picked up and run as that
/// installation; one the entry does not admit, or a suspended installation's, is not
/// recorded.
#[tokio::test]
async fn the_reconciler_reads_the_repositories_an_apps_installations_reach() {
    let (_keys, key) = crate::support::app_key();
    let github = FakeGithub::start().await;
    github.add_file("acme/shop", SHA, "dropship.yml", HELLO);
    github.install(3, "acme/shop");
    github.install(3, "other/thing");
    github.install(4, "acme/api");
    github.suspend(4);
    github.add_recent_deployment("acme/shop", 9201, SHA, "production", json!({}));
    github.add_recent_deployment("other/thing", 9202, SHA, "production", json!({}));
    github.add_recent_deployment("acme/api", 9203, SHA, "production", json!({}));
    let extra = format!(
        "[github.app]\napp_id = 42\nprivate_key_file = \"{}\"\n\n{}",
        key.display(),
        LOCAL.replace("acme/shop", "acme/*")
    );
    let data = tempfile::tempdir().unwrap();
    let toml = config_toml(data.path(), &github.url, &extra)
        .replace("token = \"ghp_test_token\"\n", "")
        .replace(
            "retry_max = \"200ms\"\n",
            "retry_max = \"200ms\"\nreconcile_interval = \"200ms\"\n",
        );
    let server = TestServer::start(Config::from_toml(&toml).unwrap(), Some(data)).await;
    let statuses = github.wait_final(9201, Duration::from_secs(30)).await;
    let states: Vec<&str> = statuses.iter().map(|s| s.state()).collect();
    assert_eq!(states, ["queued", "in_progress", "success"]);
    assert!(
        statuses
            .iter()
            .all(|s| s.authorization.contains("ghs_installation3_")),
        "{statuses:#?}"
    );
    let lists = github.deployment_lists();
    reconciler_passes(&github, lists + 2).await;
    let list: Value = server.api("/api/deployments").await.json().await.unwrap();
    let repos: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["repo"])
        .collect();
    assert_eq!(repos, ["acme/shop"], "{list}");
}

async fn reconciler_passes(github: &FakeGithub, n: usize) {
    eventually(Duration::from_secs(10), "reconciler passes", || async {
        github.deployment_lists() >= n
    })
    .await;
}

async fn readyz(server: &TestServer) -> String {
    let answer = server.client.get(server.url("/readyz")).send().await;
    answer.unwrap().text().await.unwrap()
}

/// A token GitHub refuses pauses delivery instead of discarding: `/readyz` says degraded and
/// why, the metric is 1 and the dashboard shows a banner. Restarted with the right token, every
/// status queued meanwhile arrives, in order.
#[tokio::test]
async fn a_refused_token_pauses_delivery_with_an_alarm_and_the_fixed_token_delivers_everything() {
    let github = FakeGithub::start().await;
    github.add_file("acme/shop", SHA, "dropship.yml", HELLO);
    github.require_token("ghp_the_right_token");
    let data = tempfile::tempdir().unwrap();
    let toml = config_toml(data.path(), &github.url, LOCAL);
    assert!(toml.contains("ghp_test_token"));
    let server = TestServer::start(Config::from_toml(&toml).unwrap(), Some(data)).await;
    let id = deliver(&server, 7201).await["id"].as_i64().unwrap();
    github.wait_refused(3, Duration::from_secs(30)).await;
    eventually(
        Duration::from_secs(10),
        "/readyz to say degraded",
        || async {
            let body = readyz(&server).await;
            body.starts_with("degraded: status delivery is paused") && body.contains("credentials")
        },
    )
    .await;
    let metrics = server.api("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("dropship_github_status_delivery_paused 1"),
        "{metrics}"
    );
    let cookie = server.login("admin", crate::support::API_TOKEN).await;
    let page = server
        .client
        .get(server.url("/"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Status delivery to GitHub is paused"),
        "{page}"
    );
    assert_eq!(server.deployment(id).await["state"], "success");
    assert!(github.statuses(7201).is_empty());

    let data = server.stop_keeping_data().await;
    let toml = config_toml(data.path(), &github.url, LOCAL)
        .replace("ghp_test_token", "ghp_the_right_token");
    let server = TestServer::start(Config::from_toml(&toml).unwrap(), Some(data)).await;
    let statuses = github.wait_final(7201, Duration::from_secs(30)).await;
    let states: Vec<&str> = statuses.iter().map(|s| s.state()).collect();
    assert_eq!(states, ["queued", "in_progress", "success"]);
    assert_eq!(readyz(&server).await, "ready");
}

/// A 403 that is not a rate limit (a missing permission) pauses delivery like a refused token:
/// the status waits and arrives once GitHub takes it, never discarded. An archived
/// repository's 403 is about that repository alone: its status is set aside.
#[tokio::test]
async fn a_missing_permission_pauses_delivery_and_an_archived_repository_is_set_aside() {
    let (server, github) = start(HELLO, LOCAL).await;
    github.refuse_next_status(
        StatusCode::FORBIDDEN,
        None,
        "Resource not accessible by integration",
    );
    deliver(&server, 7501).await;
    let statuses = github.wait_final(7501, Duration::from_secs(30)).await;
    let states: Vec<&str> = statuses.iter().map(|s| s.state()).collect();
    assert_eq!(states, ["queued", "in_progress", "success"]);
    let metrics = server.api("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"dropship_github_status_posts_total{kind="status",result="paused"} 1"#),
        "{metrics}"
    );

    github.refuse_next_status(
        StatusCode::FORBIDDEN,
        None,
        "Repository was archived so is read-only.",
    );
    deliver(&server, 7502).await;
    let statuses = github.wait_final(7502, Duration::from_secs(30)).await;
    let states: Vec<&str> = statuses.iter().map(|s| s.state()).collect();
    assert_eq!(
        states,
        ["in_progress", "success"],
        "the refused queued status is set aside"
    );
}

/// A status post GitHub accepted whose answer never came is not posted twice: the retry asks
/// GitHub first.
#[tokio::test]
async fn a_status_accepted_without_an_answer_is_not_posted_twice() {
    let (server, github) = start(HELLO, LOCAL).await;
    github.lose_next_status_answers(2);
    deliver(&server, 7401).await;
    let statuses = github.wait_final(7401, Duration::from_secs(30)).await;
    let states: Vec<&str> = statuses.iter().map(|s| s.state()).collect();
    assert_eq!(states, ["queued", "in_progress", "success"]);
}

/// The resend action posts the deployment's current state again, behind what was posted, and
/// is written to the audit log.
#[tokio::test]
async fn resend_posts_the_current_state_to_github_again() {
    let (server, github) = start(HELLO, LOCAL).await;
    let id = deliver(&server, 7301).await["id"].as_i64().unwrap();
    github.wait_final(7301, Duration::from_secs(30)).await;
    let response = server
        .client
        .post(server.url(&format!("/api/deployments/{id}/resend")))
        .bearer_auth(crate::support::DEPLOYER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer: Value = response.json().await.unwrap();
    assert!(
        answer["message"].as_str().unwrap().contains("(success)"),
        "{answer}"
    );
    eventually(
        Duration::from_secs(10),
        "the status to be posted again",
        || async { github.statuses(7301).len() == 4 },
    )
    .await;
    let states: Vec<String> = github
        .statuses(7301)
        .iter()
        .map(|s| s.state().to_string())
        .collect();
    assert_eq!(states, ["queued", "in_progress", "success", "success"]);
    let viewer = server
        .client
        .post(server.url(&format!("/api/deployments/{id}/resend")))
        .bearer_auth(crate::support::VIEWER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(viewer.status(), StatusCode::FORBIDDEN);
    let audit = server.api("/api/audit").await.text().await.unwrap();
    assert!(audit.contains("resend"), "{audit}");
}

/// A deployment whose webhook GitHub never delivered is picked up by the reconciler, run and
/// reported; its late webhook is a duplicate. One with another system's statuses is left alone.
#[tokio::test]
async fn a_deployment_whose_webhook_never_arrived_is_picked_up_by_the_reconciler() {
    let github = FakeGithub::start().await;
    github.add_file("acme/shop", SHA, "dropship.yml", HELLO);
    // Both created on GitHub; neither webhook reaches Dropship.
    github.add_recent_deployment("acme/shop", 9101, SHA, "production", json!({}));
    github.add_recent_deployment("acme/shop", 9102, SHA, "production", json!({}));
    github.add_foreign_status("acme/shop", 9102, "success");
    let data = tempfile::tempdir().unwrap();
    let toml = config_toml(data.path(), &github.url, LOCAL).replace(
        "retry_max = \"200ms\"\n",
        "retry_max = \"200ms\"\nreconcile_interval = \"200ms\"\n",
    );
    let server = TestServer::start(Config::from_toml(&toml).unwrap(), Some(data)).await;
    let statuses = github.wait_final(9101, Duration::from_secs(30)).await;
    let states: Vec<&str> = statuses.iter().map(|s| s.state()).collect();
    assert_eq!(states, ["queued", "in_progress", "success"]);
    let list: Value = server.api("/api/deployments").await.json().await.unwrap();
    let recorded: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["github_deployment_id"] == 9101)
        .collect();
    assert_eq!(recorded.len(), 1, "{list}");
    let id = recorded[0]["id"].as_i64().unwrap();
    let log = server.log(id).await;
    assert!(
        log.contains("picked up by the reconciler: the webhook never arrived"),
        "{log}"
    );
    // The webhook, late: a duplicate.
    let body = deployment_payload(9101, "acme/shop", SHA, "production", "deploy");
    let late = server.deliver("deployment", "late-9101", &body).await;
    assert_eq!(late.status(), StatusCode::OK);
    let late: Value = late.json().await.unwrap();
    assert_eq!(late["duplicate"], true, "{late}");
    // Passes go on; the deployment with another system's statuses is never taken.
    let lists = github.deployment_lists();
    reconciler_passes(&github, lists + 2).await;
    assert_eq!(github.statuses(9102).len(), 1, "only the other system's");
    // One older than what already ran there is not run over it.
    github.add_recent_deployment("acme/shop", 9100, SHA, "production", json!({}));
    let lists = github.deployment_lists();
    reconciler_passes(&github, lists + 2).await;
    let list: Value = server.api("/api/deployments").await.json().await.unwrap();
    for skipped in [9100, 9102] {
        assert!(
            !list
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["github_deployment_id"] == skipped),
            "{skipped}: {list}"
        );
    }
}
