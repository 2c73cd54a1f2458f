//! Times a task through the whole engine (plan, SSH execution, records, logs) on every server
//! of an environment: `cold` builds a fresh engine for each run (new master connections),
//! `warm` reuses one engine (the masters stay open), `started` builds a fresh engine and opens its
//! masters before the timed run (as `[ssh] connect_at_start` does). Used by `bench/ssh/run.sh`.
//!
//! Usage: cargo run --release --example fanout -- CONFIG MANIFEST ENVIRONMENT cold|warm|started RUNS

use std::sync::Arc;
use std::time::{Duration, Instant};

use dropship::config::Config;
use dropship::github::{FixedManifest, ManifestFile, ManifestSource};
use dropship::store::{Inserted, NewDeployment, State};

async fn once(local: &dropship::server::Local, environment: &str) -> anyhow::Result<Duration> {
    let new = NewDeployment {
        github_id: None,
        repo: "bench/fanout".into(),
        environment: environment.into(),
        task: "deploy".into(),
        git_ref: "main".into(),
        sha: "0".repeat(40).into(),
        payload: serde_json::json!({}),
        description: None,
        creator: None,
        installation_id: None,
        transient: false,
        production: false,
    };
    let Inserted::New(deployment) = local.store.insert_deployment(new, None, None).await? else {
        anyhow::bail!("duplicate");
    };
    let started = Instant::now();
    let outcome = local.runner.run(deployment).await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        outcome.state == State::Success,
        "run failed: {}",
        outcome.description
    );
    Ok(elapsed)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, config, manifest, environment, mode, runs] = &args[..] else {
        anyhow::bail!("usage: fanout CONFIG MANIFEST ENVIRONMENT cold|warm|started RUNS");
    };
    let runs: usize = runs.parse()?;
    let config = Arc::new(Config::load(Some(config.as_ref()))?);
    let text = std::fs::read_to_string(manifest)?;
    let source: Arc<dyn ManifestSource> = Arc::new(FixedManifest::new(ManifestFile {
        path: "dropship.yml".into(),
        text,
    }));
    let mut times = Vec::new();
    match mode.as_str() {
        "cold" => {
            for _ in 0..runs {
                let local = dropship::server::local(config.clone(), source.clone()).await?;
                times.push(once(&local, environment).await?);
            }
        }
        // As `dropship serve` with `[ssh] connect_at_start`: a fresh engine whose masters were
        // opened before the deployment (not timed), then its first deployment.
        "started" => {
            for _ in 0..runs {
                let local = dropship::server::local(config.clone(), source.clone()).await?;
                let failed = local.fleet.connect_all().await;
                anyhow::ensure!(failed.is_empty(), "could not connect: {failed:?}");
                times.push(once(&local, environment).await?);
            }
        }
        "warm" => {
            let local = dropship::server::local(config.clone(), source.clone()).await?;
            once(&local, environment).await?; // opens the masters
            for _ in 0..runs {
                times.push(once(&local, environment).await?);
            }
            let (masters, kib) = masters_rss(&config.server.data_dir);
            println!(
                "open masters: {masters}, RSS {:.1} MiB in all, {:.2} MiB each",
                kib as f64 / 1024.0,
                kib as f64 / 1024.0 / masters.max(1) as f64
            );
        }
        other => anyhow::bail!("unknown mode {other}"),
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "{mode}: runs {} mean {:.1} ms median {:.1} ms min {:.1} ms max {:.1} ms",
        times.len(),
        mean.as_secs_f64() * 1e3,
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    Ok(())
}

/// The `ssh` master processes of the engine whose data is in `data_dir` (their command lines
/// name its control directory), and their resident memory in KiB.
fn masters_rss(data_dir: &std::path::Path) -> (usize, u64) {
    let needle = data_dir.to_string_lossy().into_owned();
    let mut count = 0;
    let mut kib = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_ssh = args
            .first()
            .is_some_and(|a| a == "ssh" || a.ends_with("/ssh"));
        if !is_ssh || !args.iter().any(|a| a.contains(&needle)) || !args.iter().any(|a| a == "-M") {
            continue;
        }
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        if let Some(rss) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            count += 1;
            kib += rss;
        }
    }
    (count, kib)
}
