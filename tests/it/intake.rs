//! `POST /webhooks/github`: signatures, events, malformed payloads, refusals, redelivery.

use dropship::config::Config;
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::github::FakeGithub;
use crate::support::{TestServer, config_toml, deployment_payload, fixture};

async fn server(extra: &str) -> (TestServer, FakeGithub) {
    let github = FakeGithub::start().await;
    let data = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&config_toml(data.path(), &github.url, extra)).unwrap();
    (TestServer::start(config, Some(data)).await, github)
}

const ALLOW_ACME: &str = "[[repos]]\nname = \"acme/*\"\nenvironments = [\"production\"]\n";

async fn count_deployments(server: &TestServer) -> usize {
    let list: Vec<Value> = server.api("/api/deployments").await.json().await.unwrap();
    list.len()
}

#[tokio::test]
async fn forged_and_unsigned_deliveries_are_refused_and_not_stored() {
    let (server, _github) = server(ALLOW_ACME).await;
    let body = deployment_payload(1, "acme/shop", "abc", "production", "deploy");
    let url = server.url("/webhooks/github");
    let cases = [
        (None, "missing X-Hub-Signature-256 header"),
        (Some("sha1=0000".to_string()), "must be `sha256=`"),
        (
            Some(dropship::webhook::sign(b"wrong secret", &body)),
            "does not match",
        ),
    ];
    for (signature, expected) in cases {
        let mut request = server
            .client
            .post(&url)
            .header("X-GitHub-Event", "deployment")
            .body(body.clone());
        if let Some(signature) = signature {
            request = request.header("X-Hub-Signature-256", signature);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"].as_str().unwrap().contains(expected),
            "{error}"
        );
    }
    assert_eq!(count_deployments(&server).await, 0);
}

#[tokio::test]
async fn events_ping_ignored_malformed_refused_and_oversized() {
    let (server, _github) = server(ALLOW_ACME).await;
    let ping = std::fs::read(fixture("github/webhooks/ping.event.json")).unwrap();
    let response = server.deliver("ping", "d-ping", &ping).await;
    assert_eq!(response.status(), StatusCode::OK);

    let push = std::fs::read(fixture("github/webhooks/push.event.json")).unwrap();
    let response = server.deliver("push", "d-push", &push).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.json::<Value>().await.unwrap()["ignored"], "push");

    let response = server.deliver("deployment", "d-bad", b"{not json").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.text().await.unwrap().contains("not JSON"));

    let mut body: Value = serde_json::from_slice(&deployment_payload(
        2,
        "acme/shop",
        "abc",
        "production",
        "deploy",
    ))
    .unwrap();
    body["deployment"]
        .as_object_mut()
        .unwrap()
        .remove("environment");
    let response = server
        .deliver("deployment", "d-field", &serde_json::to_vec(&body).unwrap())
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = response.json().await.unwrap();
    assert_eq!(
        error["error"],
        "invalid `deployment` payload at `deployment`: missing field `environment`"
    );

    let response = server
        .deliver(
            "deployment",
            "d-repo",
            &deployment_payload(3, "evil/repo", "abc", "production", "deploy"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("evil/repo is not allowed")
    );

    let response = server
        .deliver(
            "deployment",
            "d-env",
            &deployment_payload(4, "acme/shop", "abc", "staging", "deploy"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    let huge = vec![b' '; 2 * 1024 * 1024];
    let response = server.deliver("deployment", "d-huge", &huge).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    assert_eq!(count_deployments(&server).await, 0);
}

#[tokio::test]
async fn api_needs_a_bearer_token() {
    let (server, _github) = server(ALLOW_ACME).await;
    // Liveness and readiness need no token.
    for (path, body) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.text().await.unwrap(), body);
    }
    let response = server
        .client
        .get(server.url("/api/deployments"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = server
        .client
        .get(server.url("/api/deployments"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        server.api("/api/deployments").await.status(),
        StatusCode::OK
    );
}

/// A backlog larger than the scheduler keeps in memory waits in the store, and all of it runs
/// once the scheduler catches up: nothing accepted is forgotten, and within one environment the
/// newest still runs and the older ones end superseded.
#[tokio::test]
async fn a_backlog_beyond_the_schedulers_memory_waits_in_the_store_and_all_of_it_runs() {
    const SHA: &str = "5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c";
    let github = FakeGithub::start().await;
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("go");
    let environments = ["e0", "e1", "e2", "e3", "e4", "e5"];
    let mut manifest = String::from("version: 1\nenvironments:\n");
    for environment in environments {
        manifest.push_str(&format!("  {environment}:\n    servers: [local]\n"));
    }
    manifest.push_str(&format!(
        "tasks:\n  deploy:\n    - name: wait\n      run: while [ ! -e {} ]; do sleep 0.05; done\n",
        gate.display()
    ));
    github.add_file("acme/shop", SHA, "dropship.yml", &manifest);
    let data = tempfile::tempdir().unwrap();
    let extra = "[[servers]]\nname = \"local\"\nhost = \"local\"\n\n[[repos]]\nname = \"acme/shop\"\nservers = [\"local\"]\n";
    let mut config = Config::from_toml(&config_toml(data.path(), &github.url, extra)).unwrap();
    config.server.max_running_deployments = 1;
    config.server.queued_in_memory = 2;
    let server = TestServer::start(config, Some(data)).await;
    github.deliver_to(
        &server.url("/webhooks/github"),
        crate::support::WEBHOOK_SECRET,
    );

    let deliver = |github_id: i64, environment: &'static str| {
        let server = &server;
        async move {
            let body = deployment_payload(github_id, "acme/shop", SHA, environment, "deploy");
            let response = server
                .deliver("deployment", &format!("backlog-{github_id}"), &body)
                .await;
            assert_eq!(response.status(), StatusCode::ACCEPTED);
        }
    };
    // The first holds the one running place; then eight more wait, four times the memory.
    deliver(4000, "e0").await;
    for (github_id, environment) in [
        (4001, "e1"),
        (4002, "e2"),
        (4003, "e1"),
        (4004, "e3"),
        (4005, "e4"),
        (4006, "e5"),
        (4007, "e1"),
        (4008, "e2"),
    ] {
        deliver(github_id, environment).await;
    }
    std::fs::write(&gate, "").unwrap();

    let last_state = |statuses: Vec<crate::support::github::PostedStatus>| {
        let last = statuses.last().expect("a status");
        (last.state().to_string(), last.description().to_string())
    };
    for github_id in [4000, 4004, 4005, 4006, 4007, 4008] {
        let statuses = github
            .wait_final(github_id, std::time::Duration::from_secs(60))
            .await;
        assert_eq!(last_state(statuses).0, "success", "deployment {github_id}");
    }
    // The older ones of e1 and e2, superseded by their environment's newest.
    for github_id in [4001, 4002, 4003] {
        let statuses = github
            .wait_final(github_id, std::time::Duration::from_secs(60))
            .await;
        let (state, description) = last_state(statuses);
        assert_eq!(state, "error", "deployment {github_id}");
        assert!(
            description.starts_with("superseded by deployment"),
            "deployment {github_id}: {description}"
        );
    }
}

/// When the store cannot commit (here: the disk under the database is full), a delivery is
/// answered 503 with the reason, not 2xx and not 500, and nothing is acknowledged; once there
/// is room again, deliveries are recorded.
#[tokio::test]
async fn a_delivery_the_store_cannot_commit_is_answered_503_with_the_reason() {
    let disk = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(disk.path())
        .status()
        .is_ok_and(|status| status.success());
    if !mounted && crate::support::missing("mounting a small tmpfs (root)") {
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(disk.path().to_path_buf());
    let github = FakeGithub::start().await;
    let config = Config::from_toml(&config_toml(disk.path(), &github.url, ALLOW_ACME)).unwrap();
    let server = TestServer::start(config, None).await;
    let body = deployment_payload(7001, "acme/shop", "abc", "production", "deploy");
    let first = server.deliver("deployment", "full-1", &body).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);

    // Fill the disk to the last byte.
    let filler = disk.path().join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let _ = file.write_all(&[0u8; 512]);
        let _ = file.sync_all();
    }
    let mut refused = 0;
    // Each delivery a new deployment; the WAL may still hold room for a few pages.
    for github_id in 7002..7040 {
        let body = deployment_payload(github_id, "acme/shop", "abc", "production", "deploy");
        let response = server
            .deliver("deployment", &format!("full-{github_id}"), &body)
            .await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{text}");
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(
                text.contains("the delivery could not be recorded: storage unavailable"),
                "{text}"
            );
            assert!(
                !text.contains("(code:"),
                "the store's own error stays in the log: {text}"
            );
            refused += 1;
            break;
        }
        assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    }
    assert_eq!(refused, 1, "no delivery was refused on a full disk");

    // Room again: the next delivery is recorded.
    std::fs::remove_file(&filler).unwrap();
    let body = deployment_payload(7100, "acme/shop", "abc", "production", "deploy");
    let again = server.deliver("deployment", "full-again", &body).await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
}
