//! The `dropship` binary itself: killed mid-deployment and started again; `dropship run`.

use std::time::Duration;

use std::process::Command;

use serde_json::Value;

use crate::support::github::FakeGithub;
use crate::support::sshd::{self, ClientKey, Sshd};
use crate::support::{
    API_TOKEN, config_toml, deployment_payload, eventually, free_port, healthy, serve,
};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

#[tokio::test]
async fn a_deployment_interrupted_by_a_crash_ends_error_with_one_final_status_and_its_step_killed()
{
    if sshd::available().is_none() {
        return;
    }
    let key = ClientKey::new();
    let sshd = Sshd::start(&key);
    let github = FakeGithub::start().await;
    github.add_file(
        "acme/shop",
        SHA,
        "dropship.yml",
        "version: 1\nenvironments:\n  production:\n    servers: [web-1]\ntasks:\n  deploy:\n    - name: long\n      run: |\n        echo started\n        sleep 60.2001\n",
    );
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let extra = format!(
        "{}[[repos]]\nname = \"acme/shop\"\nservers = [\"web-1\"]\n",
        sshd.server_toml("web-1", &["web"], &key, &sshd.host_key)
    );
    let toml = config_toml(data.path(), &github.url, &extra)
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let config = data.path().join("dropship.toml");
    std::fs::write(&config, toml).unwrap();

    let client = reqwest::Client::new();
    let first = serve(&config);
    healthy(&client, &base).await;
    let body = deployment_payload(2001, "acme/shop", SHA, "production", "deploy");
    let response =
        crate::support::deliver_to(&client, &base, "deployment", "restart-2001", &body).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the step to start on web-1",
        || async {
            let log = client
                .get(format!("{base}/api/deployments/{id}/log"))
                .bearer_auth(API_TOKEN)
                .send()
                .await;
            match log {
                Ok(r) => r.text().await.unwrap_or_default().contains("started"),
                Err(_) => false,
            }
        },
    )
    .await;
    drop(first); // SIGKILL: no chance to clean up.
    let running = || {
        Command::new("pgrep")
            .args(["-f", "sleep 60.2001"])
            .status()
            .unwrap()
            .success()
    };
    assert!(running(), "the step outlives the Dropship that started it");

    let _second = serve(&config);
    healthy(&client, &base).await;
    let statuses = github.wait_final(2001, Duration::from_secs(30)).await;
    let states: Vec<&str> = statuses.iter().map(|s| s.state()).collect();
    assert_eq!(states, ["queued", "in_progress", "error"], "{statuses:#?}");
    assert_eq!(statuses[2].description(), "interrupted: dropship restarted");
    let detail: Value =
        crate::support::api_json(&client, format!("{base}/api/deployments/{id}")).await;
    assert_eq!(detail["state"], "error");
    assert_eq!(detail["steps"][0]["state"], "error");
    // The new Dropship killed what the old one left on web-1.
    eventually(
        Duration::from_secs(30),
        "the orphaned step to be killed",
        || async { !running() },
    )
    .await;
}

#[test]
fn dropship_run_on_the_local_server_from_a_checkout() {
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_dropship"))
        .args([
            "run",
            "--environment",
            "production",
            "--manifest",
            "dropship.example.yml",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DROPSHIP__SERVER__DATA_DIR", data.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("local  release | hello from production"),
        "{stdout}"
    );
    assert!(
        stdout.contains("✔ success: deploy to production: 2 steps on 1 server"),
        "{stdout}"
    );
    assert!(data.path().join("dropship.db").exists());
}

#[test]
fn dropship_run_exits_non_zero_when_a_step_fails() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("dropship.yml");
    std::fs::write(&manifest, "version: 1\nenvironments:\n  dev:\n    servers: [local]\ntasks:\n  deploy:\n    - name: broken\n      run: exit 7\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_dropship"))
        .args(["run", "-e", "dev", "--manifest"])
        .arg(&manifest)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DROPSHIP__SERVER__DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("step broken failed on local (exit 7)")
    );
}
