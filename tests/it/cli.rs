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
        "[[servers]]\nname = \"web-1\"\nhost = \"10.0.0.1\"\nhost_key = \"accept-new\"\nroles = [\"web\"]\n\n[[repos]]\nname = \"acme/shop\"\n[repos.secrets]\nDB = \"x\"\n",
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
