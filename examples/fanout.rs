//! Times a task through the whole engine (plan, SSH execution, records, logs) on every server
//! of an environment: `cold` builds a fresh engine for each run (new master connections),
//! `warm` reuses one engine (the masters stay open). Used by `bench/ssh/run.sh`.
//!
//! Usage: cargo run --release --example fanout -- CONFIG MANIFEST ENVIRONMENT cold|warm RUNS

use std::sync::Arc;
use std::time::{Duration, Instant};

use dropship::config::Config;
use dropship::github::{FixedManifest, ManifestFile, ManifestSource};
use dropship::store::{Inserted, NewDeployment, State};

async fn once(engine: &dropship::deploy::Engine, environment: &str) -> anyhow::Result<Duration> {
    let new = NewDeployment {
        github_id: None,
        repo: "bench/fanout".into(),
        environment: environment.into(),
        task: "deploy".into(),
        git_ref: "main".into(),
        sha: "0".repeat(40),
        payload: serde_json::json!({}),
        description: None,
        creator: None,
        installation_id: None,
        transient: false,
        production: false,
    };
    let Inserted::New(deployment) = engine.store.insert_deployment(new, None, None).await? else {
        anyhow::bail!("duplicate");
    };
    let started = Instant::now();
    let outcome = engine.run(deployment).await?;
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
        anyhow::bail!("usage: fanout CONFIG MANIFEST ENVIRONMENT cold|warm RUNS");
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
                let engine = dropship::server::engine(config.clone(), source.clone()).await?;
                times.push(once(&engine, environment).await?);
            }
        }
        "warm" => {
            let engine = dropship::server::engine(config.clone(), source.clone()).await?;
            once(&engine, environment).await?; // opens the masters
            for _ in 0..runs {
                times.push(once(&engine, environment).await?);
            }
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
