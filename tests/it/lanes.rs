//! Repositories stay in their lane: the Dropship host only by name, containers only with what
//! the operator's container policy grants, ports published beside the proxy never.

use std::time::Duration;

use dropship::config::Config;
use serde_json::{Value, json};

use crate::containers::{ComposeDown, compose_root, last, sha, world};
use crate::support::docker;
use crate::support::github::FakeGithub;
use crate::support::{TestServer, config_toml, deployment_payload};

#[tokio::test]
async fn no_glob_and_no_default_grants_the_dropship_host() {
    let github = FakeGithub::start().await;
    const SHA: &str = "a11a11a11a11a11a11a11a11a11a11a11a11a11a";
    let manifest = "version: 1\nenvironments:\n  production:\n    servers: [local]\ntasks:\n  deploy:\n    - name: read\n      run: cat /etc/hostname\n";
    for repo in ["acme/greedy", "acme/silent"] {
        github.add_file(repo, SHA, "dropship.yml", manifest);
    }
    let data = tempfile::tempdir().unwrap();
    let config = config_toml(
        data.path(),
        &github.url,
        "[[servers]]\nname = \"local\"\nhost = \"local\"\n\n[[repos]]\nname = \"acme/greedy\"\nservers = [\"*\", \"l*\"]\n\n[[repos]]\nname = \"acme/silent\"\n",
    );
    let server = TestServer::start(Config::from_toml(&config).unwrap(), Some(data)).await;
    for (github_id, repo) in [(8101, "acme/greedy"), (8102, "acme/silent")] {
        let body = deployment_payload(github_id, repo, SHA, "production", "deploy");
        let response = server
            .deliver("deployment", &format!("lane-{github_id}"), &body)
            .await;
        assert_eq!(response.status(), 202);
        let id = response.json::<Value>().await.unwrap()["id"]
            .as_i64()
            .unwrap();
        let statuses = github.wait_final(github_id, Duration::from_secs(30)).await;
        let status = statuses.last().unwrap();
        assert_eq!(
            (status.state(), status.description()),
            (
                "error",
                format!(
                    "dropship.yml:4:15: server `local` is not allowed for {repo} by the operator config"
                )
                .as_str()
            ),
        );
        assert!(
            !server.log(id).await.contains("read stdout"),
            "a step ran on the Dropship host"
        );
    }
}

const POLICY_MANIFEST: &str = r#"version: 1
environments:
  production:
    servers: [box]
tasks:
  deploy:
    - name: web
      container:
        image: dropship-test/web:base
        env:
          VERSION: ${{ deployment.sha }}
        volumes: ["/var/run/docker.sock:/var/run/docker.sock"]
        network: host
"#;

#[tokio::test]
async fn a_container_step_beyond_the_container_policy_is_refused_before_anything_starts() {
    let shas = vec![sha(81)];
    let Some(w) = world("acme/policy", POLICY_MANIFEST, &shas, false, "").await else {
        return;
    };
    let (_, statuses) = w.deploy(1, &shas[0], "deploy", json!({})).await;
    let (state, description) = last(&statuses);
    assert_eq!(state, "error", "{statuses:#?}");
    assert!(
        description
            .starts_with("dropship.yml:12:19: `/var/run/docker.sock` holds the Docker socket"),
        "{description}"
    );
    assert!(docker::containers("acme/policy", "policy").is_empty());

    // The operator grants exactly that, and it runs.
    let grant = "[repos.containers]\ndocker_socket = true\nmounts = [\"/var/run/docker.sock\"]\n";
    let socket_only = POLICY_MANIFEST.replace("        network: host\n", "");
    let Some(w) = world("acme/granted", &socket_only, &shas, false, grant).await else {
        return;
    };
    let (id, statuses) = w.deploy(1, &shas[0], "deploy", json!({})).await;
    assert_eq!(
        last(&statuses).0,
        "success",
        "{statuses:#?}\n{}",
        w.server.log(id).await
    );
}

const PORTS_MANIFEST: &str = r#"version: 1
environments:
  production:
    servers: [box]
tasks:
  deploy:
    - name: web
      container:
        image: dropship-test/web:base
        env:
          VERSION: ${{ deployment.sha }}
        ports: ["8080", "PORT:8081"]
"#;

#[tokio::test]
async fn published_ports_bind_to_the_private_address_or_loopback_only() {
    let shas = vec![sha(82)];
    let port = crate::support::free_port();
    let manifest = PORTS_MANIFEST.replace("PORT", &port.to_string());
    let Some(w) = world("acme/ports", &manifest, &shas, false, "").await else {
        return;
    };
    let (id, statuses) = w.deploy(1, &shas[0], "deploy", json!({})).await;
    assert_eq!(
        last(&statuses).0,
        "success",
        "{statuses:#?}\n{}",
        w.server.log(id).await
    );
    let seen = docker::containers("acme/ports", "ports");
    assert_eq!(seen.len(), 1, "{seen:?}");
    let inspect: Value = serde_json::from_str(&docker::run(&["inspect", &seen[0].id])).unwrap();
    let bindings = &inspect[0]["HostConfig"]["PortBindings"];
    let published = bindings["8081/tcp"].as_array().expect("8081 is published");
    assert_eq!(
        published,
        &[json!({"HostIp": "127.0.0.1", "HostPort": port.to_string()})],
        "{bindings}"
    );
}

const STACK_MANIFEST: &str = r#"version: 1
environments:
  production:
    servers: [box]
tasks:
  deploy:
    - name: stack
      compose:
        file: compose.yml
        project: greedy
"#;

const GREEDY_COMPOSE: &str = "services:\n  web:\n    image: dropship-test/web:base\n    privileged: true\n    volumes:\n      - /:/host\n    ports: [\"80:8080\"]\n";

#[tokio::test]
async fn a_compose_file_beyond_the_container_policy_is_refused_with_file_line_and_column() {
    let shas = vec![sha(83)];
    let (root, extra) = compose_root();
    let Some(w) = world("acme/greedy", STACK_MANIFEST, &shas, false, &extra).await else {
        return;
    };
    w.github
        .add_file("acme/greedy", &shas[0], "compose.yml", GREEDY_COMPOSE);
    let project = dropship::manifest::namespaced_project("greedy", "acme", "greedy");
    let _down = ComposeDown(project.clone());
    let (id, statuses) = w.deploy(1, &shas[0], "deploy", json!({})).await;
    let log = w.server.log(id).await;
    assert_eq!(last(&statuses).0, "failure", "{statuses:#?}\n{log}");
    for refusal in [
        "compose.yml:4:17: `privileged: true` gives the container the whole server",
        "compose.yml:6:9: `/` holds the Docker socket",
        "compose.yml:7:13: `80:8080` publishes on every address",
    ] {
        assert!(log.contains(refusal), "missing {refusal:?} in\n{log}");
    }
    assert!(
        !root.path().join("compose").join(&project).exists(),
        "nothing is written for a refused stack"
    );
    let running = docker::run(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
    ]);
    assert!(running.is_empty(), "{running}");
}
