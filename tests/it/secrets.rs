//! Secrets stay secret: what reaches GitHub is masked, and the database alone opens no page.

use std::time::Duration;

use dropship::config::Config;
use reqwest::StatusCode;
use serde_json::Value;

use crate::containers::{SECRET, sha, world};
use crate::support::github::FakeGithub;
use crate::support::{TestServer, config_toml, fixture};

const SHA: &str = "5ec5ec5ec5ec5ec5ec5ec5ec5ec5ec5ec5ec5ec5";

/// A deployment with an installation id (GitHub App auth, so it also gets a check run).
fn delivery(github_id: i64, task: &str) -> Vec<u8> {
    let template = std::fs::read_to_string(fixture(
        "github/webhooks/deployment.created.with-installation.json",
    ))
    .unwrap();
    let mut body: Value = serde_json::from_str(&template).unwrap();
    body["deployment"]["id"] = github_id.into();
    body["deployment"]["sha"] = SHA.into();
    body["deployment"]["task"] = task.into();
    body["deployment"]["environment"] = "production".into();
    body["repository"]["full_name"] = "acme/keys".into();
    serde_json::to_vec(&body).unwrap()
}

#[tokio::test]
async fn the_database_holds_no_log_token_yet_every_link_given_out_carries_one_that_works() {
    let (_keys, app_key) = crate::support::app_key();
    let github = FakeGithub::start().await;
    github.add_file(
        "acme/keys",
        SHA,
        "dropship.yml",
        "version: 1\nenvironments:\n  production:\n    servers: [local]\ntasks:\n  deploy:\n    - name: hello\n      run: echo hello\n  fail:\n    - name: hello\n      run: exit 3\n",
    );
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let extra = format!(
        "[github.app]\napp_id = 42\nprivate_key_file = \"{}\"\n\n\
         [[servers]]\nname = \"local\"\nhost = \"local\"\ndocker = \"none\"\n\
         [[repos]]\nname = \"acme/keys\"\nservers = [\"local\"]\n",
        app_key.display()
    );
    let toml = config_toml(&dir, &github.url, &extra).replace("token = \"ghp_test_token\"\n", "");
    let server = TestServer::start(Config::from_toml(&toml).unwrap(), Some(data)).await;

    let mut links = Vec::new();
    for (github_id, task) in [(4101, "deploy"), (4102, "fail")] {
        let response = server
            .deliver(
                "deployment",
                &format!("d-{github_id}"),
                &delivery(github_id, task),
            )
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let answer: Value = response.json().await.unwrap();
        let log_url = answer["log_url"].as_str().unwrap().to_string();
        let statuses = github.wait_final(github_id, Duration::from_secs(30)).await;
        // Every status GitHub got links the page with the token itself.
        for status in &statuses {
            assert_eq!(status.body["log_url"], log_url.as_str(), "{status:#?}");
        }
        links.push((answer["id"].as_i64().unwrap(), log_url));
    }
    // And every check-run update: its details link and its summary's.
    let runs = github.check_runs();
    assert_eq!(runs.len(), 2, "{runs:#?}");
    for (_, _, bodies) in &runs {
        let id = bodies[0]["external_id"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap();
        let (_, log_url) = links.iter().find(|(i, _)| *i == id).unwrap();
        for body in bodies {
            assert_eq!(body["details_url"], log_url.as_str(), "{body:#}");
            let summary = body["output"]["summary"].as_str().unwrap();
            assert!(summary.contains(&format!("[Log]({log_url})")), "{summary}");
        }
    }

    // The database, write-ahead log included, holds neither token.
    let mut stored = Vec::new();
    for name in ["dropship.db", "dropship.db-wal"] {
        stored.extend(std::fs::read(dir.join(name)).unwrap_or_default());
    }
    assert!(stored.len() > 10_000);
    for (id, log_url) in &links {
        let token = log_url.split_once("?token=").unwrap().1;
        assert_eq!(token.len(), 64);
        assert!(
            !stored.windows(token.len()).any(|w| w == token.as_bytes()),
            "deployment {id}'s token is in the database"
        );
    }

    // Each link opens its own page, and nothing else does.
    let page = |id: i64, token: String| {
        let url = server.url(&format!("/deployments/{id}?token={token}"));
        let client = server.client.clone();
        async move { client.get(url).send().await.unwrap().status() }
    };
    let token = |i: usize| links[i].1.split_once("?token=").unwrap().1.to_string();
    let (first, second) = (links[0].0, links[1].0);
    assert_eq!(page(first, token(0)).await, StatusCode::OK);
    assert_eq!(page(second, token(1)).await, StatusCode::OK);
    assert_eq!(page(second, token(0)).await, StatusCode::NOT_FOUND);
    assert_eq!(page(first, "0".repeat(64)).await, StatusCode::NOT_FOUND);
    let text_log = server
        .client
        .get(server.url(&format!("/api/deployments/{first}/log?token={}", token(0))))
        .send()
        .await
        .unwrap();
    assert_eq!(text_log.status(), StatusCode::OK);
    assert!(text_log.text().await.unwrap().contains("hello"));
    let text_log = server
        .client
        .get(server.url(&format!("/api/deployments/{first}/log?token={}", token(1))))
        .send()
        .await
        .unwrap();
    assert_eq!(text_log.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_health_check_that_prints_a_secret_is_masked_in_statuses_the_step_message_and_the_log() {
    let shas = vec![sha(1)];
    let manifest = r#"version: 1
environments:
  production:
    servers: [box]
tasks:
  deploy:
    - name: web
      container:
        image: REGISTRY/acme/leaky
        secrets: [API_TOKEN]
        ports: ["8080"]
        healthcheck:
          command: ["/bin/busybox", "sh", "-c", "echo $API_TOKEN; exit 1"]
          interval: 200ms
          retries: 2
"#;
    let Some(w) = world("acme/leaky", manifest, &shas, true, "").await else {
        return;
    };
    w.registry.as_ref().unwrap().push("acme/leaky", &shas[0]);
    let (id, statuses) = w.deploy(1, &shas[0], "deploy", serde_json::json!({})).await;
    let last = statuses.last().unwrap();
    assert_eq!(last.state(), "failure", "{statuses:#?}");
    // GitHub gets the diagnosis (cut to 140 characters) with no secret in it.
    assert!(
        last.description().contains("unhealthy"),
        "{}",
        last.description()
    );
    for status in &statuses {
        assert!(!status.body.to_string().contains(SECRET), "{status:#?}");
    }
    // The step's message (the whole diagnosis, on the page, in the API and in check runs)
    // has the health check's answer, masked.
    let detail = w.server.deployment(id).await;
    assert!(
        detail["steps"][0]["message"]
            .as_str()
            .unwrap()
            .contains("exit code 1: ***"),
        "{detail:#}"
    );
    assert!(!detail.to_string().contains(SECRET), "{detail:#}");
    let log = w.server.log(id).await;
    assert!(!log.contains(SECRET), "{log}");
}
