//! Container deployments against the machine's real Docker engine, reached through a real
//! sshd (the engine's socket forwarded over SSH), with images pulled from a real registry
//! with basic auth.

use std::time::Duration;

use dropship::config::Config;
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::docker::{self, Cleanup, Registry};
use crate::support::github::{FakeGithub, PostedStatus};
use crate::support::sshd::{self, ClientKey, Sshd};
use crate::support::{
    TestServer, config_toml, deployment_payload, eventually, free_port, healthy, read_until, serve,
};

pub(crate) const SECRET: &str = "tok-very-secret-4711";

/// A sha per version, in order.
pub(crate) fn sha(n: u32) -> String {
    format!("{n:07}{}", "a".repeat(33))
}

pub(crate) struct World {
    pub(crate) server: TestServer,
    pub(crate) github: FakeGithub,
    pub(crate) registry: Option<Registry>,
    repo: String,
    _sshd: Sshd,
    _key: ClientKey,
    _cleanup: Cleanup,
    pub(crate) data: tempfile::TempDir,
    pub(crate) config: String,
}

/// One sshd server `box` whose Docker engine is reached over SSH; `repo`'s manifest (the same
/// at every sha given) from a fake GitHub; a registry when `registry` is set.
pub(crate) async fn world(
    repo: &str,
    manifest: &str,
    shas: &[String],
    with_registry: bool,
    extra: &str,
) -> Option<World> {
    sshd::available()?;
    docker::available()?;
    let registry = if with_registry {
        Some(Registry::start()?)
    } else {
        None
    };
    let cleanup = Cleanup::new(repo);
    let key = ClientKey::new();
    let sshd = Sshd::start(&key);
    let github = FakeGithub::start().await;
    // REGISTRY in the manifest and in `extra` stands for the registry's address.
    let (manifest, extra) = match &registry {
        Some(r) => (
            manifest.replace("REGISTRY", &r.address),
            extra.replace("REGISTRY", &r.address),
        ),
        None => (manifest.to_string(), extra.to_string()),
    };
    for sha in shas {
        github.add_file(repo, sha, "dropship.yml", &manifest);
    }
    let data = tempfile::tempdir().unwrap();
    let text = config_toml(
        data.path(),
        &github.url,
        &format!(
            "{server}{registries}[[repos]]\nname = \"{repo}\"\nservers = [\"box\"]\nhosts = [\"*.test\"]\n[repos.secrets]\nAPI_TOKEN = \"{SECRET}\"\n{extra}",
            server = sshd.server_toml("box", &["app"], &key, &sshd.host_key),
            registries = registry.as_ref().map(Registry::toml).unwrap_or_default(),
        ),
    );
    let server = TestServer::start(Config::from_toml(&text).unwrap(), None).await;
    Some(World {
        server,
        github,
        registry,
        repo: repo.to_string(),
        _sshd: sshd,
        _key: key,
        _cleanup: cleanup,
        data,
        config: text,
    })
}

impl World {
    /// Stops Dropship and starts it again on the same data and config.
    /// Stops Dropship and starts it again on the same database, returning once it answers
    /// (its proxy listens by then: it starts before the web listener serves).
    pub(crate) async fn restart(&mut self) {
        self.server.stop().await;
        self.server = TestServer::start(Config::from_toml(&self.config).unwrap(), None).await;
        let healthz = self.server.url("/healthz");
        let client = self.server.client.clone();
        crate::support::eventually(
            Duration::from_secs(20),
            "Dropship to answer after a restart",
            || {
                let (client, healthz) = (client.clone(), healthz.clone());
                async move {
                    client
                        .get(&healthz)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            },
        )
        .await;
    }

    /// The `line` of every stored container log line of the app's environment.
    async fn app_lines(&self) -> Vec<String> {
        app_lines(&self.server, &self.repo).await
    }

    pub(crate) async fn deploy(
        &self,
        github_id: i64,
        sha: &str,
        task: &str,
        payload: Value,
    ) -> (i64, Vec<PostedStatus>) {
        self.deploy_to(github_id, sha, "production", task, payload)
            .await
    }

    pub(crate) async fn deploy_to(
        &self,
        github_id: i64,
        sha: &str,
        environment: &str,
        task: &str,
        payload: Value,
    ) -> (i64, Vec<PostedStatus>) {
        let mut body: Value = serde_json::from_slice(&deployment_payload(
            github_id,
            &self.repo,
            sha,
            environment,
            task,
        ))
        .unwrap();
        body["deployment"]["payload"] = payload;
        let response = self
            .server
            .deliver(
                "deployment",
                &format!("d-{github_id}"),
                &serde_json::to_vec(&body).unwrap(),
            )
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let answer: Value = response.json().await.unwrap();
        let statuses = self
            .github
            .wait_final(github_id, Duration::from_secs(120))
            .await;
        (answer["id"].as_i64().unwrap(), statuses)
    }
}

async fn app_lines(server: &TestServer, repo: &str) -> Vec<String> {
    let response = server
        .api(&format!("/api/apps/{repo}/production/logs"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| {
            let value: Value = serde_json::from_str(l).unwrap();
            value["line"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Waits until `app`'s containers are exactly `expected` (sha, running), newest deployment
/// first.
pub(crate) async fn settled(repo: &str, app: &str, expected: &[(&str, bool)]) {
    eventually(
        Duration::from_secs(30),
        "the containers to settle",
        || async {
            let seen = docker::containers(repo, app);
            seen.iter()
                .map(|s| (s.sha.as_str(), s.running))
                .collect::<Vec<_>>()
                == expected
        },
    )
    .await;
}

pub(crate) fn last(statuses: &[PostedStatus]) -> (&str, &str) {
    let status = statuses.last().unwrap();
    (status.state(), status.description())
}

const IMAGE_MANIFEST: &str = r#"version: 1
environments:
  production:
    servers: [box]
tasks:
  deploy:
    - name: web
      container:
        image: REGISTRY/acme/web
        env:
          VERSION: ${{ deployment.sha }}
          HEALTHY: ${{ deployment.payload.healthy }}
        secrets: [API_TOKEN]
        ports: ["8080"]
        keep: 2
        healthcheck:
          path: /up
          interval: 200ms
          retries: 10
"#;

#[tokio::test]
async fn image_deploys_replace_behind_health_checks_keep_retired_versions_and_roll_back() {
    let shas: Vec<String> = (1..=4).map(sha).collect();
    let Some(w) = world("acme/web", IMAGE_MANIFEST, &shas, true, "").await else {
        return;
    };
    let registry = w.registry.as_ref().unwrap();
    for sha in &shas {
        registry.push("acme/web", sha);
    }

    // v1: pulled with the registry's credentials, started, healthy.
    let (first, statuses) = w.deploy(1, &shas[0], "deploy", serde_json::json!({})).await;
    assert_eq!(
        last(&statuses).0,
        "success",
        "{statuses:#?}\n{}",
        w.server.log(first).await
    );
    let seen = docker::containers("acme/web", "web");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].running && seen[0].sha == shas[0]);
    assert_eq!(
        docker::fetch(&seen[0].id, "/version").await.as_deref(),
        Some(shas[0].as_str())
    );

    // v2 replaces v1, which stays, stopped, for rollback.
    let (_, statuses) = w.deploy(2, &shas[1], "deploy", serde_json::json!({})).await;
    assert_eq!(last(&statuses).0, "success");
    // The old version stops in the background, after the status.
    settled("acme/web", "web", &[(&shas[1], true), (&shas[0], false)]).await;

    // v3 and v4: with keep: 2, v1 is pruned.
    for (i, sha) in shas.iter().enumerate().skip(2) {
        let (_, statuses) = w
            .deploy(i as i64 + 1, sha, "deploy", serde_json::json!({}))
            .await;
        assert_eq!(last(&statuses).0, "success");
    }
    settled(
        "acme/web",
        "web",
        &[(&shas[3], true), (&shas[2], false), (&shas[1], false)],
    )
    .await;

    // `dropship rollback` creates a GitHub deployment with task rollback at the environment's
    // newest sha; GitHub delivers it and Dropship returns to v3 through the same health check.
    for (i, sha) in shas.iter().enumerate() {
        w.github
            .add_deployment("acme/web", i as i64 + 1, sha, "production", "deploy");
    }
    w.github.deliver_to(
        &w.server.url("/webhooks/github"),
        crate::support::WEBHOOK_SECRET,
    );
    let config = w.data.path().join("cli.toml");
    std::fs::write(&config, &w.config).unwrap();
    // tokio's Command: this test's runtime must go on serving the fake GitHub meanwhile.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dropship"))
        .args([
            "rollback",
            "--repo",
            "acme/web",
            "--environment",
            "production",
            "--config",
        ])
        .arg(&config)
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{printed}");
    let created = w.github.created_deployments("acme/web");
    assert_eq!(created.len(), 1, "{printed}");
    assert_eq!(created[0]["task"], "rollback");
    assert_eq!(created[0]["sha"], shas[3].as_str());
    let created_id = created[0]["id"].as_i64().unwrap();
    assert!(
        printed.contains(&format!("created GitHub deployment {created_id}")),
        "{printed}"
    );
    let statuses = w
        .github
        .wait_final(created_id, Duration::from_secs(120))
        .await;
    let rollback = w
        .server
        .api("/api/deployments")
        .await
        .json::<Value>()
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["github_deployment_id"] == created_id)
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    assert_eq!(
        last(&statuses).0,
        "success",
        "{}",
        w.server.log(rollback).await
    );
    settled(
        "acme/web",
        "web",
        &[(&shas[3], false), (&shas[2], true), (&shas[1], false)],
    )
    .await;
    let seen = docker::containers("acme/web", "web");
    let serving = seen.iter().find(|s| s.running).unwrap();
    assert_eq!(
        docker::fetch(&serving.id, "/version").await.as_deref(),
        Some(shas[2].as_str())
    );
    let log = w.server.log(rollback).await;
    assert!(log.contains("rolling web back to deployment"), "{log}");

    // The secret went into the container (it printed it), but no stored line, status or API
    // answer carries it.
    for id in [first, rollback] {
        let log = w.server.log(id).await;
        assert!(!log.contains(SECRET), "{log}");
    }
    let cookie = w.server.login("vic", crate::support::VIEWER_TOKEN).await;
    let page = w
        .server
        .client
        .get(w.server.url("/apps/acme/web/production/logs"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("starting (token ***)") && !html.contains(SECRET),
        "{html}"
    );
    let anonymous = w
        .server
        .client
        .get(w.server.url("/apps/acme/web/production/logs"))
        .send()
        .await
        .unwrap();
    // Not signed in: the login form, which comes back here.
    assert_eq!(anonymous.url().path(), "/login");
    assert_eq!(
        anonymous.url().query(),
        Some("next=/apps/acme/web/production/logs")
    );
    // The page follows its server-sent events: the stored lines first, masked.
    let mut events = w
        .server
        .client
        .get(w.server.url("/apps/acme/web/production/logs/events"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    let received = read_until(&mut events, Duration::from_secs(10), |text| {
        text.contains("starting (token ***)")
    })
    .await;
    assert!(
        received.starts_with("event: line\n") || received.contains("\nevent: line\n"),
        "{received}"
    );
    assert!(!received.contains(SECRET));
    let logs = w.app_lines().await;
    assert!(
        logs.iter().any(|l| l.ends_with("starting (token ***)")),
        "{logs:?}"
    );
    assert!(!logs.iter().any(|l| l.contains(SECRET)));
    let everything = format!("{:?}", w.github.statuses(1));
    assert!(!everything.contains(SECRET));
    let db = std::fs::read(w.data.path().join("dropship.db")).unwrap();
    assert!(
        !db.windows(SECRET.len())
            .any(|window| window == SECRET.as_bytes()),
        "the secret is in the database file"
    );

    // GitHub's auto_inactive, mirrored: the first deployment was replaced.
    assert_eq!(w.server.deployment(first).await["state"], "inactive");

    // Tearing the environment down removes every container and ends it inactive on GitHub.
    let teardown = w
        .server
        .client
        .delete(w.server.url("/api/environments/acme/web/production"))
        .bearer_auth(crate::support::API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(teardown.status(), StatusCode::OK);
    let teardown: Value = teardown.json().await.unwrap();
    assert_eq!(teardown["removed_containers"], 3, "{teardown}");
    assert!(docker::containers("acme/web", "web").is_empty());
    assert_eq!(w.server.deployment(rollback).await["state"], "inactive");
    eventually(Duration::from_secs(30), "the inactive status", || async {
        w.github
            .statuses(created_id)
            .iter()
            .any(|s| s.state() == "inactive")
    })
    .await;
    assert!(
        w.github.violations().is_empty(),
        "{:?}",
        w.github.violations()
    );
}

#[tokio::test]
async fn an_unhealthy_version_is_removed_and_the_old_one_keeps_serving() {
    let shas: Vec<String> = (1..=2).map(sha).collect();
    let Some(w) = world(
        "acme/sick",
        &IMAGE_MANIFEST
            .replace("acme/web", "acme/sick")
            .replace("retries: 10", "retries: 5"),
        &shas,
        true,
        "",
    )
    .await
    else {
        return;
    };
    let registry = w.registry.as_ref().unwrap();
    for sha in &shas {
        registry.push("acme/sick", sha);
    }
    let (_, statuses) = w.deploy(1, &shas[0], "deploy", serde_json::json!({})).await;
    assert_eq!(last(&statuses).0, "success");

    let (id, statuses) = w
        .deploy(2, &shas[1], "deploy", serde_json::json!({"healthy": "no"}))
        .await;
    let (state, description) = last(&statuses);
    assert_eq!(state, "failure", "{statuses:#?}");
    // The diagnosis: server, container, health check, last answer.
    assert!(description.contains("on box"), "{description}");
    assert!(description.contains("sick-production-2-0"), "{description}");
    assert!(
        description.contains("GET /up on port 8080"),
        "{description}"
    );
    let log = w.server.log(id).await;
    assert!(log.contains("HTTP 404"), "{log}");
    assert!(log.contains("last "), "{log}");
    assert!(
        log.contains(&format!("web {} serving", shas[1])),
        "the container's own lines: {log}"
    );
    assert!(log.contains("the previous version keeps running"), "{log}");

    let seen = docker::containers("acme/sick", "sick");
    assert_eq!(
        seen.len(),
        1,
        "the unhealthy container is removed: {seen:?}"
    );
    assert!(seen[0].running && seen[0].sha == shas[0]);
    assert_eq!(
        docker::fetch(&seen[0].id, "/version").await.as_deref(),
        Some(shas[0].as_str())
    );
}

#[tokio::test]
async fn container_logs_are_kept_live_and_resume_after_a_crash_without_loss_or_repeats() {
    let shas = vec![sha(1)];
    let manifest = IMAGE_MANIFEST
        .replace("acme/web", "acme/chatty")
        .replace(
            "          HEALTHY:",
            "          LINES: \"40\"\n          HEALTHY:",
        )
        .replace("retries: 10", "retries: 100");
    let Some(w) = world("acme/chatty", &manifest, &shas, true, "").await else {
        return;
    };
    w.registry.as_ref().unwrap().push("acme/chatty", &shas[0]);
    // This test runs the real binary, so that it can be killed (SIGKILL) mid-stream.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = w.data.path().join("serve.toml");
    std::fs::write(
        &config,
        w.config
            .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
            .replace(
                &w.data.path().display().to_string(),
                &w.data.path().join("serve").display().to_string(),
            ),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let first = serve(&config);
    healthy(&client, &base).await;
    let body = deployment_payload(1, "acme/chatty", &shas[0], "production", "deploy");
    let response =
        crate::support::deliver_to(&client, &base, "deployment", "chatty-1", &body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let statuses = w.github.wait_final(1, Duration::from_secs(120)).await;
    assert_eq!(last(&statuses).0, "success", "{statuses:#?}");

    let lines = |client: reqwest::Client, base: String| async move {
        let text = client
            .get(format!("{base}/api/apps/acme/chatty/production/logs"))
            .bearer_auth(crate::support::API_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["line"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect::<Vec<String>>()
    };
    // Lines are stored while the container writes them...
    eventually(Duration::from_secs(30), "the first lines", || {
        let lines = lines(client.clone(), base.clone());
        async move { lines.await.iter().any(|l| l == "line 3") }
    })
    .await;
    // ...and Dropship is killed while it goes on writing.
    drop(first);
    let container = docker::containers("acme/chatty", "chatty").remove(0);
    eventually(
        Duration::from_secs(30),
        "the container to finish its lines",
        || async { docker::run(&["logs", &container.id]).contains("serving") },
    )
    .await;
    let _second = serve(&config);
    healthy(&client, &base).await;
    eventually(
        Duration::from_secs(30),
        "the lines written while Dropship was down",
        || {
            let lines = lines(client.clone(), base.clone());
            async move { lines.await.iter().any(|l| l.ends_with("serving")) }
        },
    )
    .await;
    // A restarted container's new lines follow; none of the old ones comes twice. A reader
    // following the API (`follow=true`, only lines from now on) sees them as they come.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut live = client
        .get(format!(
            "{base}/api/apps/acme/chatty/production/logs?follow=true&since={now}"
        ))
        .bearer_auth(crate::support::API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    docker::run(&["restart", "-t", "1", &container.id]);
    // The restarted run's first and last lines (the answer may begin with the end of the
    // previous run: `since` counts whole seconds).
    let streamed = read_until(&mut live, Duration::from_secs(30), |text| {
        text.find("starting (token ***)")
            .is_some_and(|at| text[at..].contains(" serving\""))
    })
    .await;
    assert!(!streamed.contains(SECRET), "{streamed}");
    eventually(
        Duration::from_secs(30),
        "the restarted container's lines",
        || {
            let lines = lines(client.clone(), base.clone());
            async move {
                lines
                    .await
                    .iter()
                    .filter(|l| l.ends_with("serving"))
                    .count()
                    == 2
            }
        },
    )
    .await;
    let all = lines(client.clone(), base.clone()).await;
    for i in 0..40 {
        let wanted = format!("line {i}");
        assert_eq!(
            all.iter().filter(|l| **l == wanted).count(),
            2,
            "{wanted} once per run of the container: {all:#?}"
        );
    }
    assert_eq!(
        all.iter()
            .filter(|l| l.ends_with("starting (token ***)"))
            .count(),
        2,
        "{all:#?}"
    );
}

const BUILD_MANIFEST: &str = r#"version: 1
environments:
  production:
    servers: [box]
tasks:
  deploy:
    - name: web
      container:
        name: built
        build:
          context: .
          builder: box
        env:
          VERSION: ${{ deployment.sha }}
        ports: ["8080"]
        healthcheck:
          path: /up
          interval: 200ms
          retries: 50
    - name: plain
      container:
        name: plain
        build:
          context: .
        env:
          VERSION: plain-${{ deployment.sha }}
        replicas: 2
        memory: 64m
        cpus: 0.5
        restart: "no"
        labels:
          team: shop
        volumes: ["dropship-test-built:/data"]
        network: dropship-test-built
        healthcheck:
          command: ["/bin/busybox", "test", "-f", "/www/up"]
          interval: 200ms
          retries: 50
"#;

#[tokio::test]
async fn a_build_deploy_builds_the_repository_tarball_on_the_builder_and_pushes_it() {
    let shas = vec![sha(7)];
    // The operator's build registry is where the builder pushes.
    let extra = "[containers]\nbuild_registry = \"REGISTRY/builds\"\n";
    let Some(w) = world("acme/built", BUILD_MANIFEST, &shas, true, extra).await else {
        return;
    };
    w.github
        .add_tarball("acme/built", &shas[0], &docker::build_files());
    let registry = w.registry.as_ref().unwrap();
    let (id, statuses) = w.deploy(1, &shas[0], "deploy", serde_json::json!({})).await;
    let log = w.server.log(id).await;
    assert_eq!(last(&statuses).0, "success", "{statuses:#?}\n{log}");
    assert!(log.contains("fetching acme/built at"), "{log}");
    assert!(log.contains("building"), "{log}");
    assert!(log.contains("pushing"), "{log}");
    let seen = docker::containers("acme/built", "built");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].running && seen[0].name == "built-production-1-0",
        "{seen:?}"
    );
    assert_eq!(
        docker::fetch(&seen[0].id, "/version").await.as_deref(),
        Some(shas[0].as_str())
    );
    // The image is in the registry for other servers to pull.
    let tags: Value = reqwest::Client::new()
        .get(format!(
            "http://{}/v2/builds/acme-built-built/tags/list",
            registry.address
        ))
        .basic_auth(registry.user, Some(registry.password))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!([shas[0]]), "{tags}");
    // Without a builder, the server builds the image itself, from the same context.
    let plain = docker::containers("acme/built", "plain");
    assert!(
        plain.len() == 2 && plain.iter().all(|c| c.running),
        "replicas: {plain:?}"
    );
    let image = docker::run(&["inspect", "-f", "{{.Config.Image}}", &plain[0].id]);
    assert_eq!(image, format!("dropship/acme-built-plain:{}", shas[0]));
    let settings = docker::run(&[
        "inspect",
        "-f",
        "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.RestartPolicy.Name}} {{index .Config.Labels \"team\"}} {{range .Mounts}}{{.Name}}:{{.Destination}}{{end}} {{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}",
        &plain[1].id,
    ]);
    // Named volumes and networks carry the repository's digest: no other repository can name
    // them.
    let own = format!(
        "dropship-test-built-{}",
        dropship::manifest::repo_digest("acme", "built")
    );
    assert_eq!(
        settings,
        format!("67108864 500000000 no shop {own}:/data {own}")
    );
    let _ = docker::docker()
        .args(["rm", "-f", &plain[0].id, &plain[1].id])
        .output();
    let _ = docker::docker().args(["network", "rm", &own]).output();
    let _ = docker::docker().args(["volume", "rm", &own]).output();
    assert!(
        log.contains("is healthy (`/bin/busybox test -f /www/up`"),
        "{log}"
    );
}

const COMPOSE_MANIFEST: &str = r#"version: 1
environments:
  production:
    servers: [box]
tasks:
  deploy:
    - name: stack
      compose:
        file: deploy/compose.yml
        project: shop-stack
        env:
          VERSION: ${{ deployment.sha }}
"#;

const COMPOSE_FILE: &str = r#"version: "3"
services:
  web:
    image: dropship-test/web:base
    environment:
      VERSION: "${VERSION}"
"#;

fn compose_containers(project: &str) -> Vec<String> {
    docker::run(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--format",
        "{{.Names}} {{.State}}",
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

#[tokio::test]
async fn a_compose_stack_comes_up_in_its_project_directory_and_stops() {
    let shas = vec![sha(3)];
    let (root, extra) = compose_root();
    let Some(w) = world("acme/stack", COMPOSE_MANIFEST, &shas, false, &extra).await else {
        return;
    };
    w.github
        .add_file("acme/stack", &shas[0], "deploy/compose.yml", COMPOSE_FILE);
    // Projects are namespaced by repository: no other repository can name this stack.
    let project = dropship::manifest::namespaced_project("shop-stack", "acme", "stack");
    assert_ne!(
        project,
        dropship::manifest::namespaced_project("shop-stack", "acme", "other")
    );
    let _down = ComposeDown(project.clone());

    let (id, statuses) = w.deploy(1, &shas[0], "deploy", serde_json::json!({})).await;
    let log = w.server.log(id).await;
    assert_eq!(last(&statuses).0, "success", "{statuses:#?}\n{log}");
    let written = root
        .path()
        .join(format!("compose/{project}/deploy/compose.yml"));
    assert_eq!(std::fs::read_to_string(&written).unwrap(), COMPOSE_FILE);
    let running = compose_containers(&project);
    assert_eq!(running.len(), 1, "{running:?}");
    assert!(running[0].ends_with(" running"), "{running:?}");
    // The page shows the stack's services and their states.
    let detail = w.server.deployment(id).await;
    assert_eq!(detail["services"][0]["service"], "web", "{detail}");
    assert_eq!(detail["services"][0]["state"], "running", "{detail}");

    // task: stop brings it down.
    let (_, statuses) = w.deploy(2, &shas[0], "stop", serde_json::json!({})).await;
    assert_eq!(last(&statuses).0, "success", "{statuses:#?}");
    assert!(compose_containers(&project).is_empty());
}

/// A compose root the test's SSH user can write (a temporary directory), and the config that
/// points Dropship at it.
pub(crate) fn compose_root() -> (tempfile::TempDir, String) {
    let root = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let extra = format!(
        "[containers]\ncompose_root = \"{}/compose\"\n",
        root.path().display()
    );
    (root, extra)
}

/// `docker-compose down` for a project, whatever the test's outcome.
pub(crate) struct ComposeDown(pub(crate) String);

impl Drop for ComposeDown {
    fn drop(&mut self) {
        let ids = docker::run(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.0),
        ]);
        for id in ids.split_whitespace() {
            let _ = docker::docker().args(["rm", "-f", id]).output();
        }
    }
}

#[tokio::test]
async fn compose_paths_that_escape_their_directory_are_refused_with_file_line_and_key() {
    let shas = vec![sha(4)];
    let escaping = COMPOSE_MANIFEST
        .replace("project: shop-stack", "project: ../../etc")
        .replace("file: deploy/compose.yml", "file: ../../../etc/passwd");
    let Some(w) = world("acme/escape", &escaping, &shas, false, "").await else {
        return;
    };
    let (id, statuses) = w.deploy(1, &shas[0], "deploy", serde_json::json!({})).await;
    let (state, description) = last(&statuses);
    assert_eq!(state, "error", "{statuses:#?}");
    assert!(
        description.starts_with("dropship.yml:9:15: `../../../etc/passwd` climbs out with `..`"),
        "{description}"
    );
    let log = w.server.log(id).await;
    assert!(
        log.contains(
            "dropship.yml:10:18: project `../../etc`: must match ^[a-zA-Z0-9][a-zA-Z0-9_-]*$"
        ),
        "{log}"
    );
}

const PAYLOAD_MANIFEST: &str = r#"version: 1
environments:
  production:
    servers: [box]
    allow_payload_image: true
  staging:
    servers: [box]
tasks:
  deploy:
    - name: nothing
      run: "true"
"#;

#[tokio::test]
async fn a_payload_image_deploys_where_the_manifest_allows_it_and_errors_elsewhere() {
    let shas = vec![sha(5)];
    let Some(w) = world("acme/gitship", PAYLOAD_MANIFEST, &shas, true, "").await else {
        return;
    };
    let image = w.registry.as_ref().unwrap().push("acme/gitship", "v9");
    let payload = serde_json::json!({
        "image": image,
        "port": 8080,
        "env": {"VERSION": "from-payload"},
    });
    let (id, statuses) = w.deploy(1, &shas[0], "deploy", payload.clone()).await;
    assert_eq!(
        last(&statuses).0,
        "success",
        "{statuses:#?}\n{}",
        w.server.log(id).await
    );
    let seen = docker::containers("acme/gitship", "gitship");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        docker::fetch(&seen[0].id, "/version").await.as_deref(),
        Some("from-payload")
    );

    // staging does not allow it.
    let mut body: Value = serde_json::from_slice(&deployment_payload(
        2,
        "acme/gitship",
        &shas[0],
        "staging",
        "deploy",
    ))
    .unwrap();
    body["deployment"]["payload"] = payload;
    let response = w
        .server
        .deliver(
            "deployment",
            "d-staging",
            &serde_json::to_vec(&body).unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let statuses = w.github.wait_final(2, Duration::from_secs(60)).await;
    let (state, description) = last(&statuses);
    assert_eq!(state, "error");
    assert!(
        description.contains("environment `staging` does not set allow_payload_image: true"),
        "{description}"
    );
}

/// A TLS front for this machine's engine socket that requires a client certificate signed by
/// its CA: what `dockerd --tlsverify` on a TCP port looks like to a client.
struct TlsEngine {
    address: std::net::SocketAddr,
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsEngine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsEngine {
    async fn start() -> TlsEngine {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params.signed_by(&client_key, &issuer).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), client.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), client_key.serialize_pem()).unwrap();

        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![server.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client without a certificate from the CA fails the handshake here.
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    if let Ok(mut engine) = tokio::net::UnixStream::connect(docker::SOCKET).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut engine).await;
                    }
                });
            }
        });
        TlsEngine { address, dir, task }
    }

    fn server_toml(&self, name: &str) -> String {
        let file = |f: &str| self.dir.path().join(f).display().to_string();
        format!(
            "[[servers]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nhost_key = \"accept-new\"\ndocker = \"tcp://{}\"\ndocker_tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}\n",
            self.address,
            file("ca.pem"),
            file("cert.pem"),
            file("key.pem"),
        )
    }
}

#[tokio::test]
async fn an_engine_over_tcp_with_tls_client_certificates_deploys_and_checks_on_published_ports() {
    if sshd::available().is_none() || docker::available().is_none() {
        return;
    }
    let _cleanup = Cleanup::new("acme/tls");
    let tls = TlsEngine::start().await;
    let github = FakeGithub::start().await;
    let sha = sha(8);
    github.add_file(
        "acme/tls",
        &sha,
        "dropship.yml",
        &format!(
            "version: 1\nenvironments:\n  production:\n    servers: [tls-box]\ntasks:\n  deploy:\n    - name: web\n      container:\n        image: {}\n        env:\n          VERSION: ${{{{ deployment.sha }}}}\n        ports: [\"127.0.0.1::8080\"]\n        init: true\n        healthcheck:\n          path: /up\n          interval: 200ms\n          retries: 50\n",
            docker::IMAGE
        ),
    );
    let data = tempfile::tempdir().unwrap();
    let text = config_toml(
        data.path(),
        &github.url,
        &format!(
            "{}[[repos]]\nname = \"acme/tls\"\nservers = [\"tls-box\"]\n",
            tls.server_toml("tls-box")
        ),
    );
    let server = TestServer::start(Config::from_toml(&text).unwrap(), None).await;
    let body = deployment_payload(1, "acme/tls", &sha, "production", "deploy");
    assert_eq!(
        server.deliver("deployment", "d-tls", &body).await.status(),
        StatusCode::ACCEPTED
    );
    let statuses = github.wait_final(1, Duration::from_secs(120)).await;
    assert_eq!(
        last(&statuses).0,
        "success",
        "{statuses:#?}\n{}",
        server.log(1).await
    );
    let seen = docker::containers("acme/tls", "tls");
    assert!(seen.len() == 1 && seen[0].running, "{seen:?}");
    assert_eq!(
        docker::fetch(&seen[0].id, "/version").await.as_deref(),
        Some(sha.as_str())
    );

    // The engine refuses a client without a certificate: the deployment went through because
    // Dropship presented the operator's.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(tls.dir.path().join("ca.pem")).unwrap())
        .unwrap();
    let anonymous = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap()
        .get(format!("https://{}/version", tls.address))
        .send()
        .await;
    assert!(anonymous.is_err(), "{anonymous:?}");
}

#[tokio::test]
async fn a_compose_project_directory_that_is_a_symlink_out_of_the_root_is_refused() {
    let shas = vec![sha(6)];
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    for dir in [root.path(), outside.path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    std::fs::create_dir(root.path().join("compose")).unwrap();
    let project = dropship::manifest::namespaced_project("link-stack", "acme", "symlink");
    std::os::unix::fs::symlink(outside.path(), root.path().join("compose").join(&project)).unwrap();
    let extra = format!(
        "[containers]\ncompose_root = \"{}/compose\"\n",
        root.path().display()
    );
    let Some(w) = world(
        "acme/symlink",
        &COMPOSE_MANIFEST.replace("shop-stack", "link-stack"),
        &shas,
        false,
        &extra,
    )
    .await
    else {
        return;
    };
    w.github
        .add_file("acme/symlink", &shas[0], "deploy/compose.yml", COMPOSE_FILE);
    let _down = ComposeDown(project.clone());
    let (id, statuses) = w.deploy(1, &shas[0], "deploy", serde_json::json!({})).await;
    let log = w.server.log(id).await;
    assert_eq!(last(&statuses).0, "failure", "{statuses:#?}\n{log}");
    assert!(
        log.contains("refusing") && log.contains("it is a symlink"),
        "{log}"
    );
    assert!(
        std::fs::read_dir(outside.path()).unwrap().next().is_none(),
        "nothing may be written through the symlink"
    );
}

/// A container step honours its `timeout`: a version that never gets healthy is given up on
/// when the step's time is up (not after its health check's many retries), removed, and the
/// old version keeps serving.
#[tokio::test]
async fn a_container_step_that_outlives_its_timeout_is_undone() {
    let shas: Vec<String> = (1..=2).map(sha).collect();
    let manifest = IMAGE_MANIFEST
        .replace("acme/web", "acme/slow")
        .replace("retries: 10", "retries: 1000")
        .replace("    - name: web\n", "    - name: web\n      timeout: 3s\n");
    let Some(w) = world("acme/slow", &manifest, &shas, true, "").await else {
        return;
    };
    let registry = w.registry.as_ref().unwrap();
    for sha in &shas {
        registry.push("acme/slow", sha);
    }
    let (_, statuses) = w.deploy(1, &shas[0], "deploy", serde_json::json!({})).await;
    assert_eq!(last(&statuses).0, "success");
    let started = std::time::Instant::now();
    let (id, statuses) = w
        .deploy(2, &shas[1], "deploy", serde_json::json!({"healthy": "no"}))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the health check's 1000 retries were waited for"
    );
    let (state, description) = last(&statuses);
    assert_eq!(state, "failure", "{statuses:#?}");
    assert!(description.contains("timed out"), "{description}");
    let log = w.server.log(id).await;
    assert!(log.contains("while waiting for health"), "{log}");
    let seen = docker::containers("acme/slow", "slow");
    assert_eq!(seen.len(), 1, "the new container is removed: {seen:?}");
    assert!(seen[0].running && seen[0].sha == shas[0]);
}
