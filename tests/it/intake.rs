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
