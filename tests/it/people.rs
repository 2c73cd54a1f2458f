//! The people's side: API tokens and roles, the OpenAPI document, `/metrics`, auto-deploy from
//! `push` and `check_suite`, GitHub check runs, `dropship status` / `logs` / `token`, and the
//! dashboard in a real headless Chromium.

use std::path::Path;
use std::time::Duration;

use dropship::config::Config;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::github::FakeGithub;
use crate::support::{
    API_TOKEN, DEPLOYER_TOKEN, TestServer, VIEWER_TOKEN, WEBHOOK_SECRET, config_toml,
    deployment_payload, eventually, fixture, free_port, metrics, sample,
};

const SHA: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const RELEASE_SHA: &str = "cccccccccccccccccccccccccccccccccccccccc";
const LOCAL: &str = "[[servers]]\nname = \"local\"\nhost = \"local\"\n\n[[repos]]\nname = \"acme/shop\"\nservers = [\"local\"]\n";

const HELLO: &str = "version: 1
environments:
  production:
    servers: [local]
    url: https://shop.example.com
  staging:
    servers: [local]
tasks:
  deploy:
    - name: hello
      run: echo hello from $DROPSHIP_SERVER
  fail:
    - name: build
      run: echo compiled
    - name: migrate
      run: |
        echo relation users does not exist >&2
        exit 3
auto_deploy:
  - branch: main
    environment: production
  - branch: release/*
    environment: staging
    on: checks
";

async fn start(manifest: &str, extra: &str) -> (TestServer, FakeGithub) {
    let github = FakeGithub::start().await;
    for sha in [SHA, RELEASE_SHA] {
        github.add_file("acme/shop", sha, "dropship.yml", manifest);
    }
    let data = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&config_toml(data.path(), &github.url, extra)).unwrap();
    let server = TestServer::start(config, Some(data)).await;
    github.deliver_to(&server.url("/webhooks/github"), WEBHOOK_SECRET);
    (server, github)
}

async fn deliver(server: &TestServer, github_id: i64, environment: &str, task: &str) -> Value {
    let body = deployment_payload(github_id, "acme/shop", SHA, environment, task);
    let response = server
        .deliver("deployment", &format!("d-{github_id}"), &body)
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    response.json().await.unwrap()
}

/// Delivers deployment `github_id` of `SHA` to production with `payload` (and `git_ref`, if
/// given) and asserts that it ends `error`, held back by dee's lock with `reason`.
async fn held_by_the_lock(
    server: &TestServer,
    github: &FakeGithub,
    github_id: i64,
    payload: Value,
    git_ref: Option<&str>,
    reason: &str,
) {
    let mut body: Value = serde_json::from_slice(&deployment_payload(
        github_id,
        "acme/shop",
        SHA,
        "production",
        "deploy",
    ))
    .unwrap();
    body["deployment"]["payload"] = payload;
    if let Some(git_ref) = git_ref {
        body["deployment"]["ref"] = json!(git_ref);
    }
    let response = server
        .deliver(
            "deployment",
            &format!("d-{github_id}"),
            &serde_json::to_vec(&body).unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let statuses = github.wait_final(github_id, Duration::from_secs(30)).await;
    let last = statuses.last().unwrap();
    let expected = format!("environment production is locked by dee ({reason})");
    assert!(
        last.state() == "error" && last.description().starts_with(&expected),
        "{github_id}: {} {}",
        last.state(),
        last.description()
    );
}

async fn call(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let request = server.client.request(method, server.url(path));
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    request.send().await.unwrap()
}

#[tokio::test]
async fn api_tokens_have_roles_and_every_action_is_audited() {
    let (server, github) = start(HELLO, LOCAL).await;
    use reqwest::Method;
    let none = call(&server, Method::GET, "/api/deployments", None).await;
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    let wrong = call(&server, Method::GET, "/api/deployments", Some("nope")).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let viewer = call(&server, Method::GET, "/api/deployments", Some(VIEWER_TOKEN)).await;
    assert_eq!(viewer.status(), StatusCode::OK);

    // A viewer may not act; a deployer may not read the audit log; an admin may.
    let path = "/api/environments/acme/shop/production/lock";
    let refused = call(&server, Method::PUT, path, Some(VIEWER_TOKEN)).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        body["error"],
        "this needs the deployer role; vic is a viewer"
    );
    let audit = call(&server, Method::GET, "/api/audit", Some(DEPLOYER_TOKEN)).await;
    assert_eq!(audit.status(), StatusCode::FORBIDDEN);

    // The deployer locks production: deployments to it end `error`, naming the lock.
    let locked = server
        .client
        .put(server.url(path))
        .bearer_auth(DEPLOYER_TOKEN)
        .json(&json!({ "reason": "database migration" }))
        .send()
        .await
        .unwrap();
    assert_eq!(locked.status(), StatusCode::OK);
    let again = call(&server, Method::PUT, path, Some(API_TOKEN)).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    deliver(&server, 3101, "production", "deploy").await;
    let statuses = github.wait_final(3101, Duration::from_secs(30)).await;
    let last = statuses.last().unwrap();
    assert_eq!(last.state(), "error");
    assert!(
        last.description()
            .starts_with("environment production is locked by dee (database migration)"),
        "{}",
        last.description()
    );
    // Writing the locker's name into a payload passes no lock, nor does a made-up proof.
    for (github_id, dropship) in [
        (3103, json!({ "requested_by": "dee" })),
        (
            3104,
            json!({ "requested_by": "dee", "proof": "0".repeat(64) }),
        ),
    ] {
        let payload = json!({ "dropship": dropship });
        held_by_the_lock(
            &server,
            &github,
            github_id,
            payload,
            None,
            "database migration",
        )
        .await;
    }
    // The locker may still deploy: a redeploy dee asks for runs.
    let redeploy = call(
        &server,
        Method::POST,
        "/api/deployments/1/redeploy",
        Some(DEPLOYER_TOKEN),
    )
    .await;
    assert_eq!(redeploy.status(), StatusCode::ACCEPTED);
    let id = github.created_deployments_all("acme/shop")[0]["id"]
        .as_i64()
        .unwrap();
    let statuses = github.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(statuses.last().unwrap().state(), "success");
    // The proof binds the payload: copied into a deployment with another payload (everything
    // else as in the redeploy Dropship made: the ref is the commit itself), it passes nothing.
    let mut replayed = github.created_deployments_all("acme/shop")[0]["payload"].clone();
    replayed["version"] = json!("not what dee asked for");
    held_by_the_lock(
        &server,
        &github,
        3105,
        replayed,
        Some(SHA),
        "database migration",
    )
    .await;
    let unlocked = call(&server, Method::DELETE, path, Some(DEPLOYER_TOKEN)).await;
    assert_eq!(unlocked.status(), StatusCode::NO_CONTENT);
    deliver(&server, 3102, "production", "deploy").await;
    let statuses = github.wait_final(3102, Duration::from_secs(30)).await;
    assert_eq!(statuses.last().unwrap().state(), "success");

    let audit = call(&server, Method::GET, "/api/audit", Some(API_TOKEN)).await;
    assert_eq!(audit.status(), StatusCode::OK);
    let entries: Vec<Value> = audit.json().await.unwrap();
    let actions: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("dee".into(), "unlock".into()),
            ("dee".into(), "redeploy".into()),
            ("dee".into(), "lock".into())
        ],
        "newest first"
    );
    assert_eq!(entries[2]["target"], "acme/shop production");
    assert_eq!(entries[2]["detail"], "database migration");
    // A proof passes only the lock it was made under: the same redeploy, replayed whole under
    // a later lock of the same holder, is held back.
    let relocked = server
        .client
        .put(server.url(path))
        .bearer_auth(DEPLOYER_TOKEN)
        .json(&json!({ "reason": "again" }))
        .send()
        .await
        .unwrap();
    assert_eq!(relocked.status(), StatusCode::OK);
    let original = github.created_deployments_all("acme/shop")[0]["payload"].clone();
    held_by_the_lock(&server, &github, 3106, original, Some(SHA), "again").await;
    let unlocked = call(&server, Method::DELETE, path, Some(DEPLOYER_TOKEN)).await;
    assert_eq!(unlocked.status(), StatusCode::NO_CONTENT);
    // A plain token cannot create check runs: none were tried.
    assert!(github.check_runs().is_empty());
    assert!(github.violations().is_empty(), "{:?}", github.violations());
}

/// Every API route: what `/api/openapi.json` must list, each with its method.
const API_ROUTES: [(&str, &str); 16] = [
    ("get", "/api/deployments"),
    ("get", "/api/deployments/{id}"),
    ("get", "/api/deployments/{id}/log"),
    ("post", "/api/deployments/{id}/cancel"),
    ("post", "/api/deployments/{id}/redeploy"),
    ("post", "/api/deployments/{id}/resend"),
    ("get", "/api/environments"),
    ("delete", "/api/environments/{owner}/{repo}/{environment}"),
    (
        "post",
        "/api/environments/{owner}/{repo}/{environment}/rollback",
    ),
    ("put", "/api/environments/{owner}/{repo}/{environment}/lock"),
    (
        "delete",
        "/api/environments/{owner}/{repo}/{environment}/lock",
    ),
    ("get", "/api/locks"),
    ("get", "/api/servers"),
    ("get", "/api/apps"),
    ("get", "/api/apps/{owner}/{repo}/{environment}/logs"),
    ("get", "/api/audit"),
];

#[tokio::test]
async fn the_openapi_document_validates_and_lists_every_route() {
    let (server, _github) = start(HELLO, LOCAL).await;
    let response = server
        .client
        .get(server.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = response.json().await.unwrap();
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("openapi/oas-3.1-schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the OpenAPI 3.1 schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");

    let mut listed: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                listed.push((method.clone(), path.clone()));
            }
        }
    }
    listed.sort();
    let mut expected: Vec<(String, String)> = API_ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    expected.sort();
    assert_eq!(listed, expected);
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    // Each listed route is served: the router answers it (not with its own 404 or 405).
    for (method, path) in &listed {
        let concrete = path
            .replace("{id}", "999999")
            .replace("{owner}", "nobody")
            .replace("{repo}", "nothing")
            .replace("{environment}", "qa");
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let response = call(&server, method.clone(), &concrete, Some(API_TOKEN)).await;
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {concrete}"
        );
        assert!(
            status != StatusCode::NOT_FOUND || body.contains("\"error\""),
            "{method} {concrete} is not routed: {status} {body:?}"
        );
    }
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_when_a_deployment_runs() {
    let (server, github) = start(HELLO, LOCAL).await;
    let before = metrics(&server).await;
    assert_eq!(
        sample(
            &before,
            "dropship_deployments_total",
            &[("state", "success")]
        ),
        None
    );
    deliver(&server, 3201, "production", "deploy").await;
    github.wait_final(3201, Duration::from_secs(30)).await;
    let bad = server
        .client
        .post(server.url("/webhooks/github"))
        .header("X-GitHub-Event", "deployment")
        .header("X-Hub-Signature-256", "sha256=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    eventually(
        Duration::from_secs(10),
        "the final status post to be counted",
        || async {
            let text = metrics(&server).await;
            sample(
                &text,
                "dropship_github_status_posts_total",
                &[("kind", "status"), ("result", "delivered")],
            ) == Some(3.0)
        },
    )
    .await;
    let text = metrics(&server).await;
    assert!(text.contains("# TYPE dropship_deployment_duration_seconds histogram"));
    let count = |name: &str, labels: &[(&str, &str)]| sample(&text, name, labels);
    assert_eq!(
        count("dropship_deployments_total", &[("state", "success")]),
        Some(1.0)
    );
    assert_eq!(
        count(
            "dropship_deployment_duration_seconds_count",
            &[("state", "success")]
        ),
        Some(1.0)
    );
    assert_eq!(
        count(
            "dropship_webhooks_total",
            &[("event", "deployment"), ("result", "accepted")]
        ),
        Some(1.0)
    );
    assert_eq!(
        count(
            "dropship_webhooks_total",
            &[("event", "deployment"), ("result", "bad_signature")]
        ),
        Some(1.0)
    );
    assert_eq!(
        count("dropship_steps_total", &[("result", "success")]),
        Some(1.0)
    );
    assert_eq!(count("dropship_ssh_connections_open", &[]), Some(0.0));
}

/// GitHub's example push, moved to `branch` of acme/shop at `sha`.
fn push(branch_ref: &str, sha: &str, fork: bool) -> Vec<u8> {
    let text = std::fs::read_to_string(fixture("github/webhooks/push.event.json")).unwrap();
    let mut body: Value = serde_json::from_str(&text).unwrap();
    body["ref"] = branch_ref.into();
    body["after"] = sha.into();
    body["created"] = false.into();
    body["deleted"] = false.into();
    body["repository"]["full_name"] = "acme/shop".into();
    body["repository"]["fork"] = fork.into();
    serde_json::to_vec(&body).unwrap()
}

/// GitHub's example completed check suite, on `branch` of acme/shop at `sha`.
fn check_suite(branch: &str, sha: &str, conclusion: &str) -> Vec<u8> {
    let text =
        std::fs::read_to_string(fixture("github/webhooks/check_suite.completed.json")).unwrap();
    let mut body: Value = serde_json::from_str(&text).unwrap();
    body["check_suite"]["head_branch"] = branch.into();
    body["check_suite"]["head_sha"] = sha.into();
    body["check_suite"]["conclusion"] = conclusion.into();
    body["repository"]["full_name"] = "acme/shop".into();
    serde_json::to_vec(&body).unwrap()
}

async fn delivered(server: &TestServer, event: &str, id: &str, body: &[u8]) -> Value {
    let response = server.deliver(event, id, body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{event} {id}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn auto_deploy_creates_one_deployment_for_a_matching_push_and_none_otherwise() {
    let (server, github) = start(HELLO, LOCAL).await;
    let answer = delivered(&server, "push", "p-1", &push("refs/heads/main", SHA, false)).await;
    let created = github.created_deployments_all("acme/shop");
    assert_eq!(created.len(), 1, "{answer}");
    assert_eq!(created[0]["sha"], SHA);
    assert_eq!(created[0]["environment"], "production");
    assert_eq!(created[0]["task"], "deploy");
    assert_eq!(
        created[0]["payload"]["dropship"]["auto_deploy"]["branch"],
        "main"
    );
    assert_eq!(
        answer["auto_deploy"][0]["github_deployment_id"],
        created[0]["id"]
    );
    // GitHub delivers it back, and it runs like any other deployment.
    let id = created[0]["id"].as_i64().unwrap();
    let statuses = github.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(statuses.last().unwrap().state(), "success");

    // The same push again (a redelivery), another branch, a fork and a tag: nothing more.
    let again = delivered(
        &server,
        "push",
        "p-1-again",
        &push("refs/heads/main", SHA, false),
    )
    .await;
    assert!(
        again["auto_deploy"][0]["note"]
            .as_str()
            .unwrap()
            .contains("before"),
        "{again}"
    );
    let other = delivered(
        &server,
        "push",
        "p-2",
        &push("refs/heads/feature", SHA, false),
    )
    .await;
    assert_eq!(other["auto_deploy"], json!([]));
    let fork = delivered(
        &server,
        "push",
        "p-3",
        &push("refs/heads/main", RELEASE_SHA, true),
    )
    .await;
    assert_eq!(fork["note"], "acme/shop is a fork: forks never auto-deploy");
    let tag = delivered(
        &server,
        "push",
        "p-4",
        &push("refs/tags/v1", RELEASE_SHA, false),
    )
    .await;
    assert_eq!(tag["ignored"], "push");
    // A green suite deploys only under an `on: checks` rule.
    let green_main = delivered(
        &server,
        "check_suite",
        "c-0",
        &check_suite("main", RELEASE_SHA, "success"),
    )
    .await;
    assert_eq!(green_main["auto_deploy"], json!([]));
    assert_eq!(github.created_deployments_all("acme/shop").len(), 1);
    assert!(github.violations().is_empty(), "{:?}", github.violations());
}

#[tokio::test]
async fn auto_deploy_on_checks_waits_for_a_green_suite_on_the_branch_head() {
    let (server, github) = start(HELLO, LOCAL).await;
    github.set_branch("acme/shop", "release/1.0", RELEASE_SHA);
    let red = delivered(
        &server,
        "check_suite",
        "c-1",
        &check_suite("release/1.0", RELEASE_SHA, "failure"),
    )
    .await;
    assert_eq!(
        red["note"],
        "the check suite concluded failure, not success"
    );
    // A suite on a commit the branch no longer points at (or a fork's branch of that name).
    let stale = delivered(
        &server,
        "check_suite",
        "c-2",
        &check_suite("release/1.0", SHA, "success"),
    )
    .await;
    assert!(
        stale["auto_deploy"][0]["note"]
            .as_str()
            .unwrap()
            .contains("now points at ccccccc"),
        "{stale}"
    );
    assert!(github.created_deployments_all("acme/shop").is_empty());
    let green = delivered(
        &server,
        "check_suite",
        "c-3",
        &check_suite("release/1.0", RELEASE_SHA, "success"),
    )
    .await;
    let created = github.created_deployments_all("acme/shop");
    assert_eq!(created.len(), 1, "{green}");
    assert_eq!(created[0]["environment"], "staging");
    assert_eq!(created[0]["sha"], RELEASE_SHA);
    assert!(github.violations().is_empty(), "{:?}", github.violations());
}

#[tokio::test]
async fn a_github_app_deployment_gets_a_check_run_with_a_summary() {
    let (_keys, key) = crate::support::app_key();
    let github = FakeGithub::start().await;
    github.add_file("acme/shop", SHA, "dropship.yml", HELLO);
    let data = tempfile::tempdir().unwrap();
    let extra = format!(
        "[github.app]\napp_id = 42\nprivate_key_file = \"{}\"\n\n{LOCAL}",
        key.display()
    );
    let toml =
        config_toml(data.path(), &github.url, &extra).replace("token = \"ghp_test_token\"\n", "");
    let server = TestServer::start(Config::from_toml(&toml).unwrap(), Some(data)).await;
    let template = std::fs::read_to_string(fixture(
        "github/webhooks/deployment.created.with-installation.json",
    ))
    .unwrap();
    let mut body: Value = serde_json::from_str(&template).unwrap();
    body["deployment"]["id"] = 3301.into();
    body["deployment"]["sha"] = SHA.into();
    body["deployment"]["task"] = "fail".into();
    body["deployment"]["environment"] = "production".into();
    body["repository"]["full_name"] = "acme/shop".into();
    let response = server
        .deliver("deployment", "d-3301", &serde_json::to_vec(&body).unwrap())
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let bodies = github.wait_check_completed(Duration::from_secs(30)).await;
    let statuses: Vec<&str> = bodies
        .iter()
        .map(|b| b["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["queued", "in_progress", "completed"]);
    assert_eq!(bodies[0]["name"], "dropship / production");
    assert_eq!(bodies[0]["head_sha"], SHA);
    assert!(
        bodies[0]["details_url"]
            .as_str()
            .unwrap()
            .contains("/deployments/1?token="),
        "{}",
        bodies[0]
    );
    let done = &bodies[2];
    assert_eq!(done["conclusion"], "failure");
    let summary = done["output"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("**failure**: step migrate failed on local (exit 3)"),
        "{summary}"
    );
    assert!(
        summary.contains("| step | local |\n|---|---|\n| build | ✅ success"),
        "{summary}"
    );
    assert!(
        summary.contains("| migrate | ❌ failure (exit 3)"),
        "{summary}"
    );
    assert!(
        summary
            .contains("### migrate failed on local\n\n```text\nrelation users does not exist\n```"),
        "{summary}"
    );
    assert!(
        summary.contains("[Log](http://127.0.0.1:1/deployments/1?token="),
        "{summary}"
    );
    assert!(github.violations().is_empty(), "{:?}", github.violations());
}

fn dropship(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_dropship"))
        .args(args)
        .env_remove("DROPSHIP_TOKEN")
        .env_remove("DROPSHIP_URL")
        .output()
        .expect("running dropship")
}

#[tokio::test]
async fn status_and_logs_read_a_running_dropship() {
    let (server, github) = start(HELLO, LOCAL).await;
    let answer = deliver(&server, 3401, "production", "deploy").await;
    github.wait_final(3401, Duration::from_secs(30)).await;
    let base = server.url("");
    let id = answer["id"].as_i64().unwrap().to_string();
    let output = tokio::task::spawn_blocking({
        let base = base.clone();
        move || dropship(&["status", "--url", &base, "--token", VIEWER_TOKEN])
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.lines().next().unwrap().contains("repo → environment"),
        "{text}"
    );
    assert!(
        text.contains("success   acme/shop → production")
            && text.contains(&format!("master@{}", &SHA[..7])),
        "{text}"
    );

    let output = tokio::task::spawn_blocking({
        let (base, id) = (base.clone(), id.clone());
        move || {
            dropship(&[
                "logs",
                &id,
                "--follow",
                "--url",
                &base,
                "--token",
                VIEWER_TOKEN,
            ])
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("local hello stdout | hello from local"),
        "{text}"
    );

    // The log URL alone opens it: its token is the capability.
    let log_url = answer["log_url"]
        .as_str()
        .unwrap()
        .replace("http://127.0.0.1:1", &base);
    let output = tokio::task::spawn_blocking(move || dropship(&["logs", &log_url]))
        .await
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("hello from local"));

    let output = tokio::task::spawn_blocking(move || dropship(&["logs", &id, "--url", &base]))
        .await
        .unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("not signed in") && error.contains("DROPSHIP_TOKEN"),
        "{error}"
    );
}

#[test]
fn token_prints_a_token_and_the_config_entry_with_its_hash() {
    let output = dropship(&["token", "alice", "--role", "deployer"]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    let token = text
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(token.len(), 48, "{text}");
    let hash = dropship::http::auth::hash_token(&token);
    assert!(
        text.contains(&format!(
            "[[api.users]]\nname = \"alice\"\nrole = \"deployer\"\ntoken_sha256 = \"{hash}\""
        )),
        "{text}"
    );
    // What it prints is a valid config.
    let entry = &text[text.find("[[api.users]]").unwrap()..];
    Config::from_toml(entry).unwrap();
}

/// A manifest whose one step prints `first line`, waits for `gate`, then prints `second line`.
fn gated_manifest(gate: &Path) -> String {
    format!(
        "version: 1\nenvironments:\n  production:\n    servers: [local]\ntasks:\n  deploy:\n    - name: wait\n      run: |\n        echo first line\n        while [ ! -e {gate} ]; do sleep 0.05; done\n        echo second line\n",
        gate = gate.display()
    )
}

/// chromium and chromedriver from Debian, or why not.
fn browser() -> Option<(String, String)> {
    let find = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("/usr/bin/{n}"))
            .find(|p| Path::new(p).exists())
    };
    let chromium = find(&["chromium", "chromium-browser"]);
    let driver = find(&["chromedriver"]);
    match (chromium, driver) {
        (Some(chromium), Some(driver)) => Some((chromium, driver)),
        _ => {
            let message = "the dashboard test needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver; scripts/test installs them)";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{message}");
            }
            eprintln!("SKIPPED: {message}");
            None
        }
    }
}

/// Fills in and sends the login form on the current page.
async fn sign_in(browser: &fantoccini::Client, name: &str, password: &str) {
    use fantoccini::Locator;
    for (field, text) in [("name", name), ("password", password)] {
        let input = browser.find(Locator::Id(field)).await.unwrap();
        input.send_keys(text).await.unwrap();
    }
    browser
        .find(Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// chromedriver on a free port, killed on drop.
struct Driver(std::process::Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// chromedriver and a headless Chromium session through it.
async fn open_browser(chromium: &str, chromedriver: &str) -> (Driver, fantoccini::Client) {
    // fantoccini's TLS (unused here: chromedriver speaks plain HTTP) needs a crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let driver = Driver(
        std::process::Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting chromedriver"),
        port,
    );
    let webdriver = format!("http://127.0.0.1:{}", driver.1);
    let probe = reqwest::Client::new();
    eventually(Duration::from_secs(30), "chromedriver to answer", || {
        let probe = probe.clone();
        let url = format!("{webdriver}/status");
        async move {
            probe
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,1000"],
        }),
    );
    let browser = fantoccini::ClientBuilder::rustls()
        .unwrap()
        .capabilities(capabilities)
        .connect(&webdriver)
        .await
        .expect("a Chromium session");
    (driver, browser)
}

#[tokio::test]
async fn the_dashboard_in_a_real_browser() {
    use fantoccini::Locator;
    let Some((chromium, chromedriver)) = browser() else {
        return;
    };
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("go");
    let (server, github) = start(&gated_manifest(&gate), LOCAL).await;
    let answer = deliver(&server, 3501, "production", "deploy").await;
    let id = answer["id"].as_i64().unwrap();

    let (_driver, browser) = open_browser(&chromium, &chromedriver).await;
    // Each wait names what it waits for, for the panic message.
    let wait = |_what: &'static str| {
        browser
            .wait()
            .at_most(Duration::from_secs(30))
            .every(Duration::from_millis(50))
    };

    // Not signed in: the login form, which refuses a wrong password.
    browser
        .goto(&server.url(&format!("/deployments/{id}")))
        .await
        .unwrap();
    let url = browser.current_url().await.unwrap();
    assert_eq!(url.path(), "/login");
    sign_in(&browser, "dee", "not-the-token").await;
    let error = wait("error")
        .for_element(Locator::Id("error"))
        .await
        .unwrap();
    assert_eq!(error.text().await.unwrap(), "Wrong name or token.");

    // The right token: back to the deployment, which is running.
    sign_in(&browser, "dee", DEPLOYER_TOKEN).await;
    wait("log")
        .for_element(Locator::XPath(
            "//pre[@id='log']/span[contains(., 'first line')]",
        ))
        .await
        .expect("the first line on the page");
    assert_eq!(
        browser.current_url().await.unwrap().path(),
        format!("/deployments/{id}")
    );
    let user = browser
        .find(Locator::Id("user"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(user, "dee");
    assert!(
        browser.find(Locator::Id("redeploy")).await.is_ok(),
        "a deployer sees redeploy"
    );
    wait("running cell")
        .for_element(Locator::Css("#grid td.run"))
        .await
        .expect("the step running in the grid");
    // Mark this page: a reload would lose the mark.
    browser
        .execute("window.__mark = 'same page'; return null;", vec![])
        .await
        .unwrap();
    std::fs::write(&gate, "").unwrap();
    wait("second line")
        .for_element(Locator::XPath(
            "//pre[@id='log']/span[contains(., 'second line')]",
        ))
        .await
        .expect("the second line arrives live");
    wait("grid")
        .for_element(Locator::Css("#grid td.ok"))
        .await
        .expect("the grid fills in");
    wait("badge")
        .for_element(Locator::Css("#state.badge.ok"))
        .await
        .expect("the state turns success");
    let mark = browser
        .execute("return window.__mark || null;", vec![])
        .await
        .unwrap();
    assert_eq!(mark, json!("same page"), "the page was not reloaded");
    let shot = browser.screenshot().await.unwrap();
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let file = artifacts.join("deployment-page.png");
    std::fs::write(&file, &shot).unwrap();
    assert!(shot.starts_with(b"\x89PNG"), "a PNG screenshot");
    eprintln!("screenshot: {}", file.display());
    // The filter hides lines that do not match.
    browser
        .find(Locator::Id("filter"))
        .await
        .unwrap()
        .send_keys("second")
        .await
        .unwrap();
    let hidden = browser
        .execute(
            "return Array.from(document.querySelectorAll('#log > span')).filter(s => s.hidden).map(s => s.textContent);",
            vec![],
        )
        .await
        .unwrap();
    assert!(hidden.to_string().contains("first line"), "{hidden}");

    // The environments page, with the buttons a deployer may press.
    browser.goto(&server.url("/environments")).await.unwrap();
    wait("environment")
        .for_element(Locator::Css("section.environment"))
        .await
        .unwrap();
    assert!(browser.find(Locator::Css("button.rollback")).await.is_ok());

    // A viewer sees the same pages without any button to press.
    browser
        .find(Locator::Css("nav form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait("login")
        .for_element(Locator::Id("login"))
        .await
        .unwrap();
    sign_in(&browser, "vic", VIEWER_TOKEN).await;
    wait("list")
        .for_element(Locator::Css("#deployments tr[data-id]"))
        .await
        .unwrap();
    browser
        .goto(&server.url(&format!("/deployments/{id}")))
        .await
        .unwrap();
    wait("log").for_element(Locator::Id("log")).await.unwrap();
    assert!(
        browser.find(Locator::Id("redeploy")).await.is_err(),
        "a viewer cannot redeploy"
    );
    browser.goto(&server.url("/environments")).await.unwrap();
    wait("environment")
        .for_element(Locator::Css("section.environment"))
        .await
        .unwrap();
    assert!(browser.find(Locator::Css("button.rollback")).await.is_err());
    assert!(browser.find(Locator::Css("button.redeploy")).await.is_err());
    browser.close().await.unwrap();

    // And the server refuses a viewer's press even without the button.
    let cookie = server.login("vic", VIEWER_TOKEN).await;
    let pressed = server
        .client
        .post(server.url(&format!("/deployments/{id}/redeploy")))
        .header("Cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(pressed.status(), StatusCode::FORBIDDEN);
    github.wait_final(3501, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn deployers_cancel_redeploy_and_roll_back_through_the_api() {
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("go");
    let manifest = format!(
        "{}    - name: after\n      run: echo after the gate\n",
        gated_manifest(&gate)
    );
    let (server, github) = start(&manifest, LOCAL).await;
    use reqwest::Method;
    // One runs (held by the gate), the next for the same environment waits queued. The second
    // is delivered once the first runs: two queued together, the scheduler would run the newer
    // and supersede the older.
    let running = deliver(&server, 3601, "production", "deploy").await["id"]
        .as_i64()
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the first deployment to run",
        || async { server.deployment(running).await["state"] == "running" },
    )
    .await;
    let queued = deliver(&server, 3602, "production", "deploy").await["id"]
        .as_i64()
        .unwrap();
    let path = |id: i64, action: &str| format!("/api/deployments/{id}/{action}");
    let viewer = call(
        &server,
        Method::POST,
        &path(running, "cancel"),
        Some(VIEWER_TOKEN),
    )
    .await;
    assert_eq!(viewer.status(), StatusCode::FORBIDDEN);
    let answer = call(
        &server,
        Method::POST,
        &path(queued, "cancel"),
        Some(DEPLOYER_TOKEN),
    )
    .await;
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    let statuses = github.wait_final(3602, Duration::from_secs(30)).await;
    assert_eq!(
        statuses.last().unwrap().description(),
        "cancelled by dee before it started"
    );
    let answer = call(
        &server,
        Method::POST,
        &path(running, "cancel"),
        Some(DEPLOYER_TOKEN),
    )
    .await;
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(
        body["message"],
        format!("deployment {running} is stopping: its running steps are being killed")
    );
    std::fs::write(&gate, "").unwrap();
    let statuses = github.wait_final(3601, Duration::from_secs(30)).await;
    let last = statuses.last().unwrap();
    assert_eq!(
        (last.state(), last.description()),
        ("error", "cancelled by dee during step wait")
    );
    let detail = server.deployment(running).await;
    let steps: Vec<(&str, &str)> = detail["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(steps, [("wait", "error"), ("after", "skipped")]);
    let ended = call(
        &server,
        Method::POST,
        &path(running, "cancel"),
        Some(DEPLOYER_TOKEN),
    )
    .await;
    assert_eq!(ended.status(), StatusCode::CONFLICT);

    // Redeploy: the same commit, task and environment, created on GitHub and delivered back.
    let answer = call(
        &server,
        Method::POST,
        &path(running, "redeploy"),
        Some(DEPLOYER_TOKEN),
    )
    .await;
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    let body: Value = answer.json().await.unwrap();
    let created = github.created_deployments_all("acme/shop");
    assert_eq!(created.len(), 1);
    assert_eq!(body["github_deployment_id"], created[0]["id"]);
    assert_eq!(created[0]["sha"], SHA);
    assert_eq!(created[0]["task"], "deploy");
    assert_eq!(created[0]["payload"]["dropship"]["redeploy_of"], 3601);
    assert_eq!(created[0]["payload"]["dropship"]["requested_by"], "dee");
    let again = github
        .wait_final(created[0]["id"].as_i64().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(again.last().unwrap().state(), "success");

    // The environment now runs that commit; a rollback is created as task `rollback`.
    let environments: Vec<Value> = call(
        &server,
        Method::GET,
        "/api/environments",
        Some(VIEWER_TOKEN),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(environments.len(), 1);
    assert_eq!(environments[0]["environment"], "production");
    assert_eq!(
        environments[0]["live"]["github_deployment_id"],
        created[0]["id"]
    );
    assert_eq!(environments[0]["latest"]["state"], "success");
    let rollback = "/api/environments/acme/shop/production/rollback";
    let answer = call(&server, Method::POST, rollback, Some(DEPLOYER_TOKEN)).await;
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    let created = github.created_deployments_all("acme/shop");
    assert_eq!(created.len(), 2);
    assert_eq!(created[1]["task"], "rollback");
    let never = call(
        &server,
        Method::POST,
        "/api/environments/acme/shop/qa/rollback",
        Some(DEPLOYER_TOKEN),
    )
    .await;
    assert_eq!(never.status(), StatusCode::CONFLICT);

    let audit: Vec<Value> = call(&server, Method::GET, "/api/audit", Some(API_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = audit
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["rollback", "redeploy", "cancel", "cancel"]);
    assert!(github.violations().is_empty(), "{:?}", github.violations());
}

/// What each injection would set `document.title` to, if it ran.
const PWNED: &str = "pwned";

/// A manifest whose step prints markup and script, waits for `gate`, then prints more.
fn injecting_manifest(gate: &Path) -> String {
    format!(
        r#"version: 1
environments:
  production:
    servers: [local]
tasks:
  deploy:
    - name: wait
      run: |
        echo '</script><script>document.title="{PWNED}"</script>'
        echo '<img src=x onerror="document.title=1">'
        while [ ! -e {gate} ]; do sleep 0.05; done
        echo '</script><script>document.title="{PWNED}"</script><img src=y onerror="document.title=2">'
        echo second line
"#,
        gate = gate.display()
    )
}

/// Fails if any injected script ran: the title is still `expected`, and no injected element
/// exists.
async fn assert_not_pwned(browser: &fantoccini::Client, expected: &str, page: &str) {
    let title = browser.title().await.unwrap();
    assert_eq!(title, expected, "{page}: an injected script ran");
    let injected = browser
        .execute(
            "return document.querySelectorAll('img, main script:not([src]):not([type=\"application/json\"])').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, json!(0), "{page}: injected elements");
}

#[tokio::test]
async fn no_injected_script_runs_in_a_real_browser() {
    use fantoccini::Locator;
    let Some((chromium, chromedriver)) = browser() else {
        return;
    };
    let script = format!("</script><script>document.title='{PWNED}'</script>");
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("go");
    let github = FakeGithub::start().await;
    github.add_file("acme/shop", SHA, "dropship.yml", &injecting_manifest(&gate));
    let data = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&config_toml(data.path(), &github.url, LOCAL)).unwrap();
    let database = config.database_path();
    let server = TestServer::start(config, Some(data)).await;
    github.deliver_to(&server.url("/webhooks/github"), WEBHOOK_SECRET);

    // The branch name and the description carry script.
    let mut body: Value = serde_json::from_slice(&deployment_payload(
        3701,
        "acme/shop",
        SHA,
        "production",
        "deploy",
    ))
    .unwrap();
    body["deployment"]["ref"] = json!(script);
    let about = format!("<img src=x onerror=\"document.title='{PWNED}'\">{script}");
    body["deployment"]["description"] = json!(about);
    let answer = server
        .deliver("deployment", "d-3701", &serde_json::to_vec(&body).unwrap())
        .await;
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    let answer: Value = answer.json().await.unwrap();
    let id = answer["id"].as_i64().unwrap();
    let log_url = answer["log_url"].as_str().unwrap().to_string();
    let token = log_url.split("token=").nth(1).unwrap().to_string();
    eventually(
        Duration::from_secs(30),
        "the injected lines to be stored",
        || async { server.log(id).await.contains("onerror") },
    )
    .await;

    // Container log lines, stored the way the followers store them.
    let store = dropship::store::Sqlite::open(&database).await.unwrap();
    use dropship::store::AppLogs;
    let line = |n: i64, text: &str| dropship::store::AppLogLine {
        id: 0,
        repo: "acme/shop".into(),
        environment: "production".into(),
        app: format!("web{script}"),
        server: "local".into(),
        container: "0123456789abcdef".into(),
        ts: 1_700_000_000_000_000_000 + n,
        stream: dropship::store::LogStream::Stdout,
        line: text.into(),
    };
    store
        .append_app_logs(
            vec![
                line(1, &script),
                line(
                    2,
                    &format!("<img src=x onerror=\"document.title='{PWNED}'\">"),
                ),
            ],
            1 << 20,
        )
        .await
        .unwrap();

    let (_driver, browser) = open_browser(&chromium, &chromedriver).await;
    let wait = || {
        browser
            .wait()
            .at_most(Duration::from_secs(30))
            .every(Duration::from_millis(50))
    };

    // The capability link, not signed in: lines, ref and description are text.
    browser
        .goto(&server.url(&format!("/deployments/{id}?token={token}")))
        .await
        .unwrap();
    wait()
        .for_element(Locator::XPath(
            "//pre[@id='log']/span[contains(., 'onerror')]",
        ))
        .await
        .expect("the injected log lines, as text");
    let shown = browser
        .find(Locator::Id("ref"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(shown, script, "the branch name, as text");
    let shown = browser
        .find(Locator::Id("about"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(shown, about, "the description, as text");
    let title = format!("deployment {id} — dropship");
    assert_not_pwned(&browser, &title, "the capability link").await;

    // Signed in, with script in the query string; the page still follows live.
    browser.goto(&server.url("/login")).await.unwrap();
    sign_in(&browser, "dee", DEPLOYER_TOKEN).await;
    wait().for_element(Locator::Id("user")).await.unwrap();
    let query = format!("/deployments/{id}?token={script}");
    browser.goto(&server.url(&query)).await.unwrap();
    wait()
        .for_element(Locator::XPath(
            "//pre[@id='log']/span[contains(., 'onerror')]",
        ))
        .await
        .expect("the page, signed in");
    std::fs::write(&gate, "").unwrap();
    wait()
        .for_element(Locator::XPath(
            "//pre[@id='log']/span[contains(., 'second line')]",
        ))
        .await
        .expect("the lines printed later arrive live");
    wait()
        .for_element(Locator::Css("#state.badge.ok"))
        .await
        .expect("the state turns success live");
    let description = browser
        .find(Locator::Id("description"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!description.contains("<img"), "{description}");
    assert_not_pwned(&browser, &title, "the query string").await;
    // Reloaded, the live lines come from the store.
    browser.refresh().await.unwrap();
    wait()
        .for_element(Locator::XPath(
            "//pre[@id='log']/span[contains(., 'src=y')]",
        ))
        .await
        .unwrap();
    assert_not_pwned(&browser, &title, "the finished page").await;

    // The lists show the branch name.
    for (path, title) in [
        ("/", "deployments — dropship"),
        ("/environments", "environments — dropship"),
    ] {
        browser.goto(&server.url(path)).await.unwrap();
        wait().for_element(Locator::Id("user")).await.unwrap();
        assert_not_pwned(&browser, title, path).await;
    }

    // Script in a path segment.
    let segment = "%3C%2Fscript%3E%3Cscript%3Edocument.title%3D%27pwned%27%3C%2Fscript%3E";
    browser
        .goto(&server.url(&format!("/apps/acme/shop/{segment}/logs")))
        .await
        .unwrap();
    wait().for_element(Locator::Id("log")).await.unwrap();
    let heading = browser
        .find(Locator::Css("main h1"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(heading, format!("acme/shop → {script}"));
    assert_not_pwned(
        &browser,
        &format!("acme/shop {script} logs — dropship"),
        "a path segment",
    )
    .await;

    // Container log lines.
    browser
        .goto(&server.url("/apps/acme/shop/production/logs"))
        .await
        .unwrap();
    wait()
        .for_element(Locator::XPath(
            "//pre[@id='log']/span[contains(., 'onerror')]",
        ))
        .await
        .expect("the container lines, as text");
    assert_not_pwned(
        &browser,
        "acme/shop production logs — dropship",
        "container logs",
    )
    .await;
    browser.close().await.unwrap();
    github.wait_final(3701, Duration::from_secs(30)).await;
}

/// A lock may be taken for a while: the API says until when, the status of a deployment it
/// holds back says so too, and a duration that is not one (or is out of range) is a 400 that
/// says what `for` takes.
#[tokio::test]
async fn a_lock_for_a_while_says_until_when_and_a_bad_duration_is_refused() {
    let (server, github) = start(HELLO, LOCAL).await;
    let path = "/api/environments/acme/shop/production/lock";
    let lock = |body: Value| {
        server
            .client
            .put(server.url(path))
            .bearer_auth(DEPLOYER_TOKEN)
            .json(&body)
            .send()
    };
    for bad in ["soon", "0s", "500us", "91d", "$(reboot)"] {
        let refused = lock(json!({ "reason": "deploy freeze", "for": bad }))
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = refused.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("`for` must be a duration such as 2h or 30m"),
            "{body}"
        );
    }
    let before = chrono::Utc::now();
    let locked = lock(json!({ "reason": "deploy freeze", "for": "2h" }))
        .await
        .unwrap();
    assert_eq!(locked.status(), StatusCode::OK);
    let body: Value = locked.json().await.unwrap();
    let until = chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let ahead = until - before;
    assert!(
        ahead >= chrono::Duration::minutes(119) && ahead <= chrono::Duration::minutes(121),
        "{body}"
    );
    let listed: Value = server.api("/api/locks").await.json().await.unwrap();
    assert_eq!(listed[0]["expires_at"], body["expires_at"]);

    deliver(&server, 3901, "production", "deploy").await;
    let statuses = github.wait_final(3901, Duration::from_secs(30)).await;
    let last = statuses.last().unwrap();
    assert_eq!(last.state(), "error");
    assert!(
        last.description()
            .starts_with("environment production is locked by dee (deploy freeze) until "),
        "{}",
        last.description()
    );
}
