//! Wires the store, GitHub client, executors, engine, scheduler, outbox and HTTP router into the
//! running service.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::deploy::{Engine, Scheduler};
use crate::exec::Fleet;
use crate::github::{Github, ManifestSource, run_outbox};
use crate::http::{AppState, router};
use crate::logs::{Bus, Logs};
use crate::store::{Sqlite, Store};

/// Builds an engine on the configured SQLite store, with manifests from `manifests`.
pub async fn engine(
    config: Arc<Config>,
    manifests: Arc<dyn ManifestSource>,
) -> anyhow::Result<Engine> {
    let store: Arc<dyn Store> = Arc::new(Sqlite::open(&config.database_path()).await?);
    let bus = Bus::default();
    let logs = Logs::start(store.clone(), bus.clone());
    let fleet = Fleet::from_config(&config)?;
    Ok(Engine {
        config,
        store,
        manifests,
        fleet,
        logs,
        bus,
        outbox: Arc::new(Notify::new()),
    })
}

/// Serves on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if config.github.webhook_secrets.is_empty() {
        anyhow::bail!(
            "github.webhook_secrets is empty: every delivery would be refused. Set it in the config file or DROPSHIP__GITHUB__WEBHOOK_SECRETS"
        );
    }
    let config = Arc::new(config);
    let github = Arc::new(Github::from_config(&config.github)?);
    let engine = engine(config.clone(), github.clone()).await?;
    let interrupted = engine
        .recover_interrupted()
        .await
        .context("finishing interrupted deployments")?;
    if interrupted > 0 {
        tracing::warn!(
            count = interrupted,
            "finished deployments interrupted by the last shutdown as error"
        );
    }
    let outbox = tokio::spawn(run_outbox(
        engine.store.clone(),
        github,
        engine.outbox.clone(),
        config.github.retry_base,
        config.github.retry_max,
        shutdown.clone().cancelled_owned(),
    ));
    let (scheduler, queue) = Scheduler::load(engine.clone(), config.server.max_running_deployments)
        .await
        .context("reading queued deployments")?;
    let scheduler = tokio::spawn(scheduler.run(shutdown.clone().cancelled_owned()));
    let state = AppState {
        engine,
        scheduler: queue,
    };
    let address = listener.local_addr()?;
    tracing::info!(%address, public_url = %config.public_url(), "dropship is serving");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .context("serving HTTP")?;
    shutdown.cancel();
    let _ = scheduler.await;
    let _ = outbox.await;
    Ok(())
}
