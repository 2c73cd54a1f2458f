//! `dropship check` and `dropship validate` as an operator runs them.

use std::process::Command;

use crate::support::sshd::{self, ClientKey, Sshd};

fn dropship(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_dropship"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn check_reports_reachability_and_host_key_status_per_server() {
    if sshd::available().is_none() {
        return;
    }
    let docker = crate::support::docker::available().is_some();
    let key = ClientKey::new();
    let good = Sshd::start(&key);
    let swapped = Sshd::start(&key);
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("dropship.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = \"{}\"\n\n{}{}",
            data.path().display(),
            good.server_toml("web-1", &["web"], &key, &good.host_key),
            swapped.server_toml("web-2", &["web"], &key, &good.host_key),
        ),
    )
    .unwrap();
    let (ok, text) = dropship(&["check", "--config", config.to_str().unwrap()]);
    assert!(!ok, "a refused server fails the check:\n{text}");
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("web-1").contains(" ok ") && line("web-1").contains("Linux"),
        "{text}"
    );
    assert!(
        line("web-1").contains("host key: pinned ssh-ed25519"),
        "{text}"
    );
    assert!(
        line("web-2").contains("FAILED") && line("web-2").contains("host key verification failed"),
        "{text}"
    );
    assert!(text.contains("2 servers checked, 1 failed"), "{text}");
    // Pinned keys, no local grants, loopback listeners: nothing risky to warn about.
    assert!(!text.contains("warning:"), "{text}");
    if docker {
        // The engine's socket, forwarded over the SSH connection, answers with its version.
        assert!(line("web-1").contains("docker: Docker "), "{text}");
    }
}

#[test]
fn validate_checks_a_manifest_alone_and_against_the_operator_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dropship.toml");
    std::fs::write(
        &config,
        "[[servers]]\nname = \"web-1\"\nhost = \"10.0.0.1\"\nhost_key = \"accept-new\"\nroles = [\"web\"]\n\n[[repos]]\nname = \"acme/shop\"\nservers = [\"web-*\"]\n[repos.secrets]\nDB = \"x\"\n",
    )
    .unwrap();
    let manifest = dir.path().join("dropship.yml");
    let text = "version: 1\nenvironments:\n  production:\n    servers: [web, web-9]\ntasks:\n  deploy:\n    - name: a\n      run: echo\n      secrets: [DB, TOKEN]\n";
    std::fs::write(&manifest, text).unwrap();
    let path = manifest.to_str().unwrap();

    let (ok, out) = dropship(&["validate", path]);
    assert!(ok, "{out}");
    assert_eq!(
        out.trim(),
        format!("{path}: valid (1 environment: production; 1 task: deploy)")
    );

    let (ok, out) = dropship(&[
        "validate",
        path,
        "--config",
        config.to_str().unwrap(),
        "--repo",
        "acme/shop",
    ]);
    assert!(!ok);
    assert_eq!(
        out.trim(),
        format!(
            "{path}:4:20: unknown server or role `web-9`: the operator config defines no such server\n{path}:9:21: secret `TOKEN` is not provided for acme/shop by the operator config"
        )
    );
}

mod deploy_command {
    use std::time::Duration;

    use reqwest::StatusCode;

    use crate::support::github::FakeGithub;
    use crate::support::{TestServer, WEBHOOK_SECRET, config_toml};

    const SHA: &str = "d6fde92930d4715a2b49857d24b940956b26d2d3";

    /// Dropship on the `local` server, a fake GitHub that delivers created deployments to it,
    /// and the CLI's config file (GitHub's URL and nothing secret: the token comes from
    /// GITHUB_TOKEN).
    async fn setup() -> (
        TestServer,
        FakeGithub,
        tempfile::TempDir,
        std::path::PathBuf,
    ) {
        let github = FakeGithub::start().await;
        github.add_file(
            "acme/cli",
            SHA,
            "dropship.yml",
            "version: 1\nenvironments:\n  production:\n    servers: [local]\n    url: https://cli.example.com\ntasks:\n  deploy:\n    - name: say\n      run: echo \"deploying ${{ deployment.payload.version }}\"\n  broken:\n    - name: fail\n      run: exit 3\n",
        );
        let data = tempfile::tempdir().unwrap();
        let config = dropship::config::Config::from_toml(&config_toml(
            data.path(),
            &github.url,
            "[[servers]]\nname = \"local\"\nhost = \"local\"\ndocker = \"none\"\n[[repos]]\nname = \"acme/cli\"\nservers = [\"local\"]\n",
        ))
        .unwrap();
        let server = TestServer::start(config, None).await;
        github.deliver_to(&server.url("/webhooks/github"), WEBHOOK_SECRET);
        let cli_config = data.path().join("cli.toml");
        std::fs::write(
            &cli_config,
            format!("[github]\napi_url = \"{}\"\n", github.url),
        )
        .unwrap();
        (server, github, data, cli_config)
    }

    /// Runs `dropship deploy ...` (tokio's process: the fake GitHub runs on this runtime).
    async fn deploy(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dropship"))
            .args([
                "deploy",
                "--repo",
                "acme/cli",
                "--ref",
                SHA,
                "--environment",
                "production",
            ])
            .args(args)
            .arg("--config")
            .arg(config)
            .env("GITHUB_TOKEN", "ghp_cli_token")
            .env("NO_COLOR", "1")
            .output()
            .await
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    #[tokio::test]
    async fn deploy_wait_follows_the_statuses_and_exits_by_the_outcome() {
        let (_server, github, _data, config) = setup().await;
        let (code, out, err) =
            deploy(&config, &["--payload", "{\"version\": \"7\"}", "--wait"]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("created deployment 9000"), "{out}");
        assert!(
            out.contains("log: http://127.0.0.1:1/deployments/"),
            "{out}"
        );
        assert!(
            out.contains("queued") && out.contains("in_progress"),
            "{out}"
        );
        assert!(out.contains("success"), "{out}");
        assert!(
            out.contains("environment: https://cli.example.com"),
            "{out}"
        );
        let created = &github.created_deployments_all("acme/cli")[0];
        assert_eq!(created["payload"]["version"], "7");
        assert_eq!(created["task"], "deploy");

        let (code, out, _) = deploy(&config, &["--task", "broken", "--wait"]).await;
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("failure") && out.contains("step fail failed on local (exit 3)"),
            "{out}"
        );
        assert!(github.violations().is_empty(), "{:?}", github.violations());
    }

    #[tokio::test]
    async fn refusals_say_what_to_do() {
        let (_server, github, _data, config) = setup().await;
        github.refuse_next_deployment(
            StatusCode::CONFLICT,
            "Conflict: Commit status checks failed for main.",
        );
        let (code, _, err) = deploy(&config, &["--wait"]).await;
        assert_eq!(code, 1);
        assert!(
            err.contains("(409)") && err.contains("--skip-checks"),
            "{err}"
        );
        github.refuse_next_deployment(StatusCode::UNAUTHORIZED, "Bad credentials");
        let (code, _, err) = deploy(&config, &[]).await;
        assert_eq!(code, 1);
        assert!(
            err.contains("GitHub refused the credentials (401)"),
            "{err}"
        );
        // An environment the manifest lacks: refused before GitHub records anything.
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dropship"))
            .args([
                "deploy",
                "--repo",
                "acme/cli",
                "--ref",
                SHA,
                "--environment",
                "qa",
                "--config",
            ])
            .arg(&config)
            .env("GITHUB_TOKEN", "ghp_cli_token")
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            err.contains("dropship.yml at `d6fde92930d4715a2b49857d24b940956b26d2d3` has no environment `qa` (it has: production)"),
            "{err}"
        );
        assert!(github.created_deployments_all("acme/cli").is_empty());
        // --skip-checks asks GitHub to skip them (an empty required_contexts).
        let (code, out, err) = deploy(&config, &["--skip-checks"]).await;
        assert_eq!(code, 0, "{out}{err}");
        // Without --wait it still prints where the log is, once Dropship has answered.
        assert!(
            out.contains("log: http://127.0.0.1:1/deployments/"),
            "{out}"
        );
        let created = github.created_deployments_all("acme/cli");
        assert_eq!(created.len(), 1);
        tokio::time::timeout(
            Duration::from_secs(60),
            github.wait_final(created[0]["id"].as_i64().unwrap(), Duration::from_secs(60)),
        )
        .await
        .unwrap();
    }
}
