//! Delivers queued deployment statuses to GitHub: in order per deployment, retried with
//! exponential backoff on 5xx, 429 and rate-limit 403 (honouring `Retry-After`), and kept in
//! the store, so a restart picks up where it left off.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;

use super::{Github, StatusBody};
use crate::store::{OutboxItem, Store, now_ms};

/// A status still failing after this many attempts is given up on (and the error kept).
const MAX_ATTEMPTS: i64 = 25;
/// The longest the worker sleeps without looking at the store.
const IDLE_POLL: Duration = Duration::from_secs(30);

/// Runs until `shutdown` resolves. `wake` is notified whenever a status is enqueued.
pub async fn run_outbox(
    store: Arc<dyn Store>,
    github: Arc<Github>,
    wake: Arc<Notify>,
    retry_base: Duration,
    retry_max: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        // Register interest before reading the store, so a status enqueued meanwhile wakes us.
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match store.due_statuses(now_ms()).await {
            Ok(due) => {
                // One status per deployment per round, so deployments go concurrently and each
                // deployment's statuses stay in order.
                futures::stream::iter(due)
                    .for_each_concurrent(16, |item| {
                        deliver(&*store, &github, item, retry_base, retry_max)
                    })
                    .await;
            }
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "reading the status outbox")
            }
        }
        let wait = match store.next_status_due().await {
            Ok(Some(at)) => Duration::from_millis((at - now_ms()).max(0) as u64).min(IDLE_POLL),
            Ok(None) => IDLE_POLL,
            Err(_) => Duration::from_secs(1),
        };
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = &mut notified => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn deliver(
    store: &dyn Store,
    github: &Github,
    item: OutboxItem,
    retry_base: Duration,
    retry_max: Duration,
) {
    let deployment = match store.deployment(item.deployment_id).await {
        Ok(Some(deployment)) => deployment,
        Ok(None) => {
            let _ = store.status_failed(item.id, "the deployment is gone").await;
            return;
        }
        Err(error) => {
            tracing::error!(
                error = format!("{error:#}"),
                "reading a deployment for its status"
            );
            return;
        }
    };
    let Some(github_id) = deployment.github_id else {
        let _ = store
            .status_failed(item.id, "not a GitHub deployment")
            .await;
        return;
    };
    let body = StatusBody {
        state: &item.state,
        log_url: item.log_url.as_deref(),
        environment_url: item.environment_url.as_deref(),
        description: &item.description,
        environment: &deployment.environment,
    };
    let span = tracing::info_span!("status", deployment.id = deployment.id, state = %item.state);
    let _enter = span.enter();
    let result = github
        .post_status(
            &deployment.repo,
            github_id,
            deployment.installation_id,
            &body,
        )
        .await;
    drop(_enter);
    let outcome = match result {
        Ok(()) => {
            tracing::info!(parent: &span, "status posted");
            store.status_delivered(item.id).await
        }
        Err(error) if error.retriable && item.attempts + 1 < MAX_ATTEMPTS => {
            let backoff = retry_base
                .saturating_mul(2u32.saturating_pow(item.attempts.min(20) as u32))
                .min(retry_max);
            let wait = error
                .retry_after
                .unwrap_or(backoff)
                .max(backoff.min(retry_base));
            tracing::warn!(parent: &span, error = %error.message, retry_in_ms = wait.as_millis() as u64, "status post failed; will retry");
            store
                .status_retry(item.id, now_ms() + wait.as_millis() as i64, &error.message)
                .await
        }
        Err(error) => {
            tracing::error!(parent: &span, error = %error.message, "status post failed; giving up on it");
            store.status_failed(item.id, &error.message).await
        }
    };
    if let Err(error) = outcome {
        tracing::error!(error = format!("{error:#}"), "recording a status delivery");
    }
}
