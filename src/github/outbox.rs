//! Delivers queued deployment statuses to GitHub: in order per deployment, retried with
//! exponential backoff on 5xx, 429 and rate-limit 403 (honouring `Retry-After`) up to
//! `retry_max`, then every `retry_max` until delivered: a status is never given up on for
//! GitHub being away. Kept in the store, so a restart picks up where it left off.
//!
//! GitHub refusing Dropship's credentials (401) pauses the
//! whole outbox instead of discarding anything, and raises the [`DeliveryAlarm`]: `/readyz`
//! says `degraded` with the reason, the dashboard shows a banner, and
//! `dropship_github_status_delivery_paused` is 1. A look every `retry_max` (or a restart with
//! the credentials fixed) delivers everything queued. Only a status GitHub refuses as such
//! (404: the deployment is gone; 422) is set aside, kept with its error; the resend action
//! posts the deployment's current state again.
//!
//! Everything posted passes [`Outgoing`] on its way out: the one place GitHub-bound text goes
//! through, where the repository's secrets are masked and the log token is put in.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tracing::Instrument;

use super::{ApiError, Github, StatusBody};
use crate::keys::Keys;
use crate::logs::{Redactor, Redactors, each_string_mut};
use crate::store::{Deployment, OutboxItem, OutboxKind, Store, now_ms};

/// What happens to a status or check run between the store and GitHub: every string in it is
/// masked with the repository's [`Redactor`] (so a health check's output or a step's message
/// cannot reach GitHub with a secret in it, whatever built the description), and the log
/// token, stored only as `keys::LOG_TOKEN_SLOT`, is derived and put in.
#[derive(Debug, Clone)]
pub struct Outgoing {
    keys: Arc<Keys>,
    redactors: Redactors,
}

impl Outgoing {
    pub fn new(keys: Arc<Keys>, redactors: Redactors) -> Outgoing {
        Outgoing { keys, redactors }
    }

    /// `item` as GitHub gets it: every string masked, the log token in (the rest as it was).
    fn prepare(&self, deployment: &Deployment, mut item: OutboxItem) -> OutboxItem {
        let redactor = self.redactors.for_repo(&deployment.repo);
        let mut text = |t: &mut String| *t = self.text(redactor, deployment, t);
        text(&mut item.description);
        item.log_url.iter_mut().for_each(&mut text);
        item.environment_url.iter_mut().for_each(&mut text);
        if let Some(body) = item.body.as_mut() {
            each_string_mut(body, &mut text);
        }
        item
    }

    /// `text` masked, then with the deployment's log token in.
    fn text(&self, redactor: &Redactor, deployment: &Deployment, text: &str) -> String {
        let masked = redactor.redact_str(text);
        self.keys
            .fill_log_token(deployment.id, &masked)
            .into_owned()
    }
}

/// Why status delivery is paused, if it is. Cheap to clone; every clone sees the same.
#[derive(Debug, Clone)]
pub struct DeliveryAlarm {
    reason: Arc<std::sync::Mutex<Option<String>>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl DeliveryAlarm {
    pub fn new(metrics: Arc<crate::metrics::Metrics>) -> DeliveryAlarm {
        DeliveryAlarm {
            reason: Arc::default(),
            metrics,
        }
    }

    /// Why delivery is paused; `None` while statuses go out.
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn raise(&self, reason: String) {
        let mut current = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if current.is_none() {
            tracing::error!(%reason, "status delivery paused");
        }
        *current = Some(reason);
        self.metrics.status_delivery_paused(true);
    }

    fn clear(&self) {
        let mut current = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if current.take().is_some() {
            tracing::info!("status delivery resumed: GitHub accepted the credentials");
        }
        self.metrics.status_delivery_paused(false);
    }
}

/// Whether GitHub refused Dropship's credentials or their rights, not the request: a 401, or a
/// 403 that is neither a rate limit (retriable) nor an archived repository's (read-only: a
/// refusal of that repository's statuses alone, set aside like a 404).
fn credentials_refused(error: &ApiError) -> bool {
    !error.retriable
        && match error.status {
            Some(401) => true,
            Some(403) => !error.message.contains("archived"),
            _ => false,
        }
}
/// The shortest pause after a round in which the store failed.
const STORE_PAUSE: Duration = Duration::from_secs(1);

/// The longest the worker sleeps without looking at the store.
const IDLE_POLL: Duration = Duration::from_secs(30);
/// How long the outbox goes on posting what is due once shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);
/// Statuses attempted per round; a full round is followed by another at once.
const ROUND: i64 = 64;

/// What became of one attempt.
enum Attempt {
    Delivered,
    /// GitHub gave no HTTP answer at all.
    Unreachable,
    /// GitHub refused the credentials: the message.
    CredentialsRefused(String),
    /// The store could not be read or written: the item stays as it was, due.
    StoreFailed,
    Other,
}

/// How the outbox retries: `retry_base` (`github.retry_base`), doubling up to `retry_max`
/// (`github.retry_max`), then every `retry_max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait before attempt `attempts + 1`.
    fn after(&self, attempts: u32) -> Duration {
        self.base
            .saturating_mul(2u32.saturating_pow(attempts.min(20)))
            .min(self.max)
    }
}

/// The outbox's own parts, built once at start.
#[derive(Debug)]
pub struct Outbox {
    pub store: Arc<dyn Store>,
    pub github: Arc<Github>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Notified whenever a status is enqueued.
    pub wake: Arc<Notify>,
    pub outgoing: Outgoing,
    pub backoff: Backoff,
    pub alarm: DeliveryAlarm,
}

/// Runs until `shutdown` resolves, then posts what is due for at most [`DRAIN`] more, while
/// GitHub takes it.
pub async fn run_outbox(outbox: Outbox, shutdown: impl std::future::Future<Output = ()>) {
    let Outbox {
        store,
        github,
        metrics,
        wake,
        outgoing,
        backoff,
        alarm,
    } = outbox;
    tokio::pin!(shutdown);
    let mut troubles = Troubles::default();
    // Once shutdown begins: until when what is due may still be posted (the final statuses of
    // deployments the shutdown ended), round after round while rounds deliver.
    let mut draining: Option<tokio::time::Instant> = None;
    loop {
        // Register interest before reading the store, so a status enqueued meanwhile wakes us.
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut full_round = false;
        match store.due_statuses(now_ms(), ROUND).await {
            Ok(due) => {
                full_round = due.len() as i64 == ROUND;
                // The first pending status of each deployment only, so deployments go
                // concurrently and each deployment's statuses stay in order.
                let attempts: Vec<Attempt> = futures::stream::iter(due)
                    .map(|item| deliver(&*store, &github, &metrics, &outgoing, item, backoff))
                    .buffer_unordered(16)
                    .collect()
                    .await;
                let delivered = attempts.iter().any(|a| matches!(a, Attempt::Delivered));
                if let Some(until) = draining {
                    if !delivered || tokio::time::Instant::now() >= until {
                        return;
                    }
                    continue;
                }
                if let Some(message) = troubles.count(&attempts) {
                    alarm.raise(format!(
                        "GitHub refused Dropship's credentials or their permissions ({message}): statuses wait, none is lost. Fix [github] token or [github.app] in the config and restart, or the App's permissions on GitHub; delivery is tried again every {}",
                        humantime::format_duration(backoff.max)
                    ));
                    tokio::select! {
                        // Nothing gets through without credentials: no drain.
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(backoff.max) => continue,
                    }
                }
                if delivered {
                    alarm.clear();
                }
            }
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "reading the status outbox");
                if draining.is_some() {
                    return;
                }
                troubles.store += 1;
            }
        }
        if let Some(pause) = troubles.pause(backoff) {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(pause) => continue,
            }
        }
        if full_round {
            continue;
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
            _ = &mut shutdown => draining = Some(tokio::time::Instant::now() + DRAIN),
            _ = &mut notified => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Rounds in a row that went wrong as a whole: while GitHub cannot be reached at all, or the
/// store fails, the whole outbox backs off instead of trying every pending status again at
/// once.
#[derive(Debug, Default)]
struct Troubles {
    unreachable: u32,
    store: u32,
}

impl Troubles {
    /// Counts a round's attempts; the message when GitHub refused the credentials.
    fn count(&mut self, attempts: &[Attempt]) -> Option<String> {
        let refused = attempts.iter().find_map(|a| match a {
            Attempt::CredentialsRefused(message) => Some(message.clone()),
            _ => None,
        });
        if refused.is_some() {
            return refused;
        }
        if attempts.iter().any(|a| matches!(a, Attempt::StoreFailed)) {
            self.store += 1;
        } else {
            self.store = 0;
        }
        if attempts.iter().any(|a| matches!(a, Attempt::Delivered)) {
            self.unreachable = 0;
        } else if !attempts.is_empty() && attempts.iter().all(|a| matches!(a, Attempt::Unreachable))
        {
            self.unreachable += 1;
        }
        None
    }

    /// How long to pause before the next round, if the last ones went wrong.
    fn pause(&self, backoff: Backoff) -> Option<Duration> {
        if self.store > 0 {
            let pause = backoff.after(self.store - 1).max(STORE_PAUSE);
            tracing::warn!(
                pause_ms = pause.as_millis() as u64,
                "the store failed; pausing status delivery"
            );
            return Some(pause);
        }
        if self.unreachable > 0 {
            let pause = backoff.after(self.unreachable - 1);
            tracing::warn!(
                pause_ms = pause.as_millis() as u64,
                "GitHub is unreachable; pausing status delivery"
            );
            return Some(pause);
        }
        None
    }
}

async fn deliver(
    store: &dyn Store,
    github: &Github,
    metrics: &crate::metrics::Metrics,
    outgoing: &Outgoing,
    item: OutboxItem,
    backoff: Backoff,
) -> Attempt {
    let span =
        tracing::info_span!("status", deployment.id = item.deployment_id, state = %item.state);
    async {
        let deployment = match store.deployment(item.deployment_id).await {
            Ok(Some(deployment)) => deployment,
            Ok(None) => {
                let _ = store.status_failed(item.id, "the deployment is gone").await;
                return Attempt::Other;
            }
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "reading a deployment for its status");
                return Attempt::StoreFailed;
            }
        };
        let Some(github_id) = deployment.github_id else {
            let _ = store.status_failed(item.id, "not a GitHub deployment").await;
            return Attempt::Other;
        };
        let item = outgoing.prepare(&deployment, item);
        // A post whose outcome was never recorded may have got through: GitHub's newest status
        // says whether it did, so nothing is posted twice.
        if item.kind == OutboxKind::Status
            && item.sending_since.is_some()
            && already_posted(github, &deployment, github_id, &item).await
        {
            tracing::info!("status posted before Dropship stopped; not posting it again");
            metrics.status_post(item.kind.as_str(), "delivered");
            if let Err(error) = store.status_delivered(item.id).await {
                tracing::error!(error = format!("{error:#}"), "recording a status delivery");
                return Attempt::StoreFailed;
            }
            return Attempt::Delivered;
        }
        if let Err(error) = store.status_sending(item.id).await {
            tracing::error!(error = format!("{error:#}"), "noting a status post under way");
            return Attempt::StoreFailed;
        }
        let result = if item.kind == OutboxKind::Check {
            let body = item.body.as_ref().unwrap_or(&serde_json::Value::Null);
            post_check(store, github, &deployment, body).await
        } else {
            let body = StatusBody {
                state: &item.state,
                log_url: item.log_url.as_deref(),
                environment_url: item.environment_url.as_deref(),
                description: &item.description,
                environment: &deployment.environment,
            };
            github.post_status(&deployment.repo, github_id, deployment.installation_id, &body).await
        };
        let (attempt, recorded) = match result {
            Ok(()) => {
                tracing::info!(kind = item.kind.as_str(), "status posted");
                metrics.status_post(item.kind.as_str(), "delivered");
                (Attempt::Delivered, store.status_delivered(item.id).await)
            }
            Err(error) if credentials_refused(&error) => {
                // Not the status's fault: it waits, with the whole outbox, for the credentials.
                metrics.status_post(item.kind.as_str(), "paused");
                let at = now_ms() + backoff.max.as_millis() as i64;
                (Attempt::CredentialsRefused(error.message.clone()), store.status_retry(item.id, at, &error.message, true).await)
            }
            Err(error) if error.retriable => {
                let wait = backoff.after(item.attempts.clamp(0, 20) as u32);
                let wait = error.retry_after.unwrap_or(wait).max(wait.min(backoff.base));
                tracing::warn!(error = %error.message, retry_in_ms = wait.as_millis() as u64, "status post failed; will retry");
                metrics.status_post(item.kind.as_str(), "retry");
                let attempt = if error.unreachable { Attempt::Unreachable } else { Attempt::Other };
                // Without an answer, or with a 5xx (a front end may answer so after the post got
                // through), it may have got through: the next attempt asks GitHub first.
                let answered = error.status.is_some_and(|status| status < 500);
                (attempt, store.status_retry(item.id, now_ms() + wait.as_millis() as i64, &error.message, answered).await)
            }
            Err(error) => {
                tracing::error!(error = %error.message, "status post failed; giving up on it");
                metrics.status_post(item.kind.as_str(), "failed");
                (Attempt::Other, store.status_failed(item.id, &error.message).await)
            }
        };
        if let Err(error) = recorded {
            // Posted but not recorded: it stays due with `sending_since` set, so the next
            // attempt finds it on GitHub and does not post it twice.
            tracing::error!(error = format!("{error:#}"), "recording a status delivery");
            return Attempt::StoreFailed;
        }
        attempt
    }
    .instrument(span.clone())
    .await
}

/// Whether GitHub's newest status of the deployment is `item` (its state and description).
async fn already_posted(
    github: &Github,
    deployment: &Deployment,
    github_id: i64,
    item: &OutboxItem,
) -> bool {
    match github
        .deployment_statuses(&deployment.repo, github_id, deployment.installation_id)
        .await
    {
        Ok(statuses) => statuses.first().is_some_and(|newest| {
            newest.state == item.state && newest.description.as_deref() == Some(&item.description)
        }),
        // Unknown: post; a duplicate beats a lost status.
        Err(_) => false,
    }
}

/// Creates the deployment's check run (remembering its id) or updates it.
async fn post_check(
    store: &dyn Store,
    github: &Github,
    deployment: &Deployment,
    body: &serde_json::Value,
) -> Result<(), ApiError> {
    match deployment.check_run_id {
        Some(id) => {
            github
                .update_check_run(&deployment.repo, deployment.installation_id, id, body)
                .await
        }
        None => {
            let name = format!("dropship / {}", deployment.environment);
            let id = github
                .create_check_run(
                    &deployment.repo,
                    deployment.installation_id,
                    &name,
                    &deployment.sha,
                    body,
                )
                .await?;
            store
                .set_check_run(deployment.id, id)
                .await
                .map_err(|e| ApiError::local(format!("recording check run {id}: {e:#}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::store::State;

    #[test]
    fn what_github_gets_is_masked_and_carries_the_log_token() {
        let config = Config::from_toml(
            "[github]\ntoken = \"ghp_operator_token_1\"\n\
             [[repos]]\nname = \"acme/shop\"\nsecrets = { DB = \"shop-db-password\" }\n",
        )
        .unwrap();
        let keys = Arc::new(Keys::from_bytes([7; crate::keys::KEY_BYTES]));
        let config = Arc::new(config);
        let outgoing = Outgoing::new(keys.clone(), Redactors::new(config));
        let deployment = Deployment {
            id: 12,
            github_id: Some(1),
            repo: "acme/shop".into(),
            environment: "production".into(),
            task: "deploy".into(),
            git_ref: "main".into(),
            sha: "abc".into(),
            payload: serde_json::Value::Null,
            description: None,
            creator: None,
            installation_id: None,
            transient: false,
            production: true,
            check_run_id: None,
            state: State::Failure,
            state_description: None,
            environment_url: None,
            created_at: 0,
            started_at: None,
            finished_at: None,
        };
        let slot = crate::keys::LOG_TOKEN_SLOT;
        let item = OutboxItem {
            id: 1,
            deployment_id: 12,
            kind: OutboxKind::Check,
            body: Some(serde_json::json!({
                "details_url": format!("https://d.example/deployments/12?token={slot}"),
                "output": { "summary": format!(
                    "web unhealthy (exit code 1: shop-db-password ghp_operator_token_1)\n\n[Log](https://d.example/deployments/12?token={slot})"
                ) },
            })),
            state: "failure".into(),
            description: "web unhealthy (exit code 1: shop-db-password)".into(),
            log_url: Some(format!("https://d.example/deployments/12?token={slot}")),
            environment_url: None,
            attempts: 0,
            next_attempt_at: 0,
            delivered_at: None,
            failed_at: None,
            sending_since: None,
            last_error: None,
        };
        let prepared = outgoing.prepare(&deployment, item);
        let link = format!(
            "https://d.example/deployments/12?token={}",
            keys.log_token(12)
        );
        assert_eq!(prepared.description, "web unhealthy (exit code 1: ***)");
        assert_eq!(prepared.log_url.as_deref(), Some(link.as_str()));
        let body = prepared.body.unwrap();
        assert_eq!(body["details_url"], link.as_str());
        assert_eq!(
            body["output"]["summary"],
            format!("web unhealthy (exit code 1: *** ***)\n\n[Log]({link})")
        );
    }
}
