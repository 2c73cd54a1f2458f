//! Bounded by construction: a step that prints gigabytes costs Dropship neither memory nor
//! disk beyond its caps, and its page still opens at once.
//!
//! Dropship runs here as its own process (the real binary), so its memory is measured alone:
//! the peak resident set (`VmHWM` in `/proc/PID/status`), not this test process's, which holds
//! every other test running beside it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::github::FakeGithub;
use crate::support::{config_toml, deployment_payload, free_port, healthy};

const SHA: &str = "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b";
const MIB: u64 = 1024 * 1024;
/// The caps under test: the first step alone passes the step cap; the second passes what the
/// deployment has left.
const STEP_CAP: u64 = 16 * MIB;
const DEPLOYMENT_CAP: u64 = 24 * MIB;

/// `dropship serve`, killed when dropped.
struct Dropship(Child);

impl Drop for Dropship {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Dropship {
    /// A field of `/proc/PID/status` in KiB (`VmHWM`: the peak resident set).
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"))
    }
}

/// The database's files on disk: the database, its write-ahead log and its shared memory.
fn database_bytes(data: &Path) -> u64 {
    ["dropship.db", "dropship.db-wal", "dropship.db-shm"]
        .iter()
        .filter_map(|name| std::fs::metadata(data.join(name)).ok())
        .map(|m| m.len())
        .sum()
}

#[tokio::test]
async fn a_step_printing_2_gib_keeps_memory_and_database_within_the_caps_and_the_page_fast() {
    let github = FakeGithub::start().await;
    // 200-byte lines, as fast as `yes` writes them: 2 GiB, then 100 MiB more in a step that
    // fails, so the outcome is seen to survive the cut.
    github.add_file(
        "acme/flood",
        SHA,
        "dropship.yml",
        "version: 1\nenvironments:\n  production:\n    servers: [local]\ntasks:\n  deploy:\n    - name: flood\n      run: |\n        line=$(printf '%0199d' 0)\n        yes \"$line\" | head -c 2147483648\n    - name: more\n      run: |\n        line=$(printf '%0199d' 0)\n        yes \"$line\" | head -c 104857600\n        exit 3\n",
    );
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let extra = format!(
        "[logs]\nmax_step_bytes = {STEP_CAP}\nmax_deployment_bytes = {DEPLOYMENT_CAP}\n\
         [[servers]]\nname = \"local\"\nhost = \"local\"\ndocker = \"none\"\n\
         [[repos]]\nname = \"acme/flood\"\nservers = [\"local\"]\n"
    );
    let toml = config_toml(data.path(), &github.url, &extra)
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let config = data.path().join("dropship.toml");
    std::fs::write(&config, toml).unwrap();
    let dropship = Dropship(
        Command::new(env!("CARGO_BIN_EXE_dropship"))
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting dropship serve"),
    );
    let client = reqwest::Client::new();
    healthy(&client, &base).await;
    let idle_kib = dropship.status_kib("VmRSS");

    let body = deployment_payload(7001, "acme/flood", SHA, "production", "deploy");
    let response =
        crate::support::deliver_to(&client, &base, "deployment", "flood-7001", &body).await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    let id = answer["id"].as_i64().unwrap();
    let log_url = answer["log_url"].as_str().unwrap().to_string();
    let statuses = github.wait_final(7001, Duration::from_secs(300)).await;

    // Memory: the peak over the whole deployment, of Dropship alone.
    let peak_kib = dropship.status_kib("VmHWM");
    assert!(
        peak_kib < 150 * 1024,
        "dropship's peak resident set was {peak_kib} KiB (idle: {idle_kib} KiB)"
    );

    // The outcome is the steps' own: `flood` succeeded, `more` exited 3.
    let last = statuses.last().unwrap();
    assert_eq!(last.state(), "failure", "{statuses:#?}");
    let detail: Value =
        crate::support::api_json(&client, format!("{base}/api/deployments/{id}")).await;
    let steps = detail["steps"].as_array().unwrap();
    let step = |name: &str| steps.iter().find(|s| s["name"] == name).unwrap().clone();
    assert_eq!(step("flood")["state"], "success", "{detail:#}");
    assert_eq!(step("more")["state"], "failure", "{detail:#}");
    assert_eq!(step("more")["exit_code"], 3, "{detail:#}");

    // The page, from the link GitHub was given, opens at once.
    let path = log_url
        .split_once("/deployments/")
        .map(|(_, rest)| format!("/deployments/{rest}"))
        .unwrap();
    let started = Instant::now();
    let page = client.get(format!("{base}{path}")).send().await.unwrap();
    let status = page.status();
    let html = page.text().await.unwrap();
    let took = started.elapsed();
    assert_eq!(status, 200, "{html}");
    assert!(took < Duration::from_secs(1), "the page took {took:?}");

    drop(dropship);

    // Disk: the database holds no more than the deployment's cap, plus 1 MiB. Measured
    // checkpointed (the write-ahead log folded in and emptied), so the size is the database's
    // own and not how far SQLite's log had got.
    let database = data.path().join("dropship.db");
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(&database))
        .await
        .unwrap();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let on_disk = database_bytes(data.path());
    eprintln!("dropship's peak RSS {peak_kib} KiB (idle {idle_kib} KiB); database {on_disk} bytes");
    assert!(
        on_disk <= DEPLOYMENT_CAP + MIB,
        "the database takes {on_disk} bytes on disk"
    );

    // What was kept: each cut said once, where it happened; within the caps.
    let store = dropship::store::Sqlite::open(&data.path().join("dropship.db"))
        .await
        .unwrap();
    let mut lines = Vec::new();
    loop {
        use dropship::store::DeploymentLogs;
        let after = lines.last().map_or(0, |l: &dropship::store::LogLine| l.seq);
        let page = store.logs(id, after, 10_000).await.unwrap();
        if page.is_empty() {
            break;
        }
        lines.extend(page);
    }
    let counted = |step: &str| -> u64 {
        lines
            .iter()
            .filter(|l| l.step.as_deref() == Some(step) && l.stream == "stdout")
            .map(|l| l.line.len() as u64 + dropship::exec::LINE_OVERHEAD)
            .sum()
    };
    let (flood, more) = (counted("flood"), counted("more"));
    assert!(
        flood <= STEP_CAP && flood > STEP_CAP - MIB,
        "flood kept {flood}"
    );
    assert!(
        flood + more <= DEPLOYMENT_CAP && flood + more > DEPLOYMENT_CAP - MIB,
        "more kept {more}"
    );
    let cuts: Vec<(Option<&str>, &str)> = lines
        .iter()
        .filter(|l| l.line.starts_with("output cut"))
        .map(|l| (l.step.as_deref(), l.line.as_str()))
        .collect();
    assert_eq!(
        cuts,
        [
            (
                Some("flood"),
                "output cut: this step's output on this server passed 16 MiB; the rest is discarded"
            ),
            (
                Some("more"),
                "output cut: this deployment's output reached 24 MiB; the rest of this step's is discarded"
            ),
        ]
    );
    let cut_streams: Vec<&str> = lines
        .iter()
        .filter(|l| l.line.starts_with("output cut"))
        .map(|l| l.stream.as_str())
        .collect();
    assert_eq!(cut_streams, ["dropship", "dropship"]);
}
