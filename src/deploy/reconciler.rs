//! The reconciler: GitHub never redelivers a webhook by itself, so a delivery lost to a restart
//! or a network blip would leave a deployment nobody runs. At start and every
//! `[github] reconcile_interval`, Dropship reads the newest deployments of every repository the
//! config names exactly, and, with a GitHub App, of every repository of the App's
//! installations that an `owner/*` entry admits, and records and runs, as if delivered, each one newer than
//! `reconcile_window` that it never recorded and that has no status (one with statuses belongs
//! to another system, or to a Dropship that posted them). Its log says so. A webhook that
//! arrives late for it is a duplicate.

use std::sync::Arc;

use super::{Accepted, Intake};
use crate::config::{Config, RepoEntry};
use crate::github::{ApiError, GithubApi};
use crate::logs::{Logs, Redactors};
use crate::store::Store;
use crate::webhook::Event;

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Deployments recorded and queued by this pass.
    pub picked_up: usize,
    /// Repositories that could not be read, with why.
    pub failed: Vec<(String, String)>,
}

/// Picks up deployments whose webhook never arrived. Built once at start, from its parts.
#[derive(Debug)]
pub struct Reconciler {
    parts: ReconcilerParts,
}

/// What [`Reconciler`] is built from, and holds.
#[derive(Debug)]
pub struct ReconcilerParts {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub github: Arc<dyn GithubApi>,
    /// Records and queues what is picked up, exactly as a delivery is.
    pub intake: Intake,
    /// Notes in a picked-up deployment's log how it came.
    pub logs: Logs,
    pub redactors: Redactors,
}

impl Reconciler {
    pub fn new(parts: ReconcilerParts) -> Reconciler {
        Reconciler { parts }
    }

    /// A pass now, then one every `reconcile_interval` (none when it is zero), until
    /// `shutdown`.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let interval = self.parts.config.github.reconcile_interval;
        if interval.is_zero() {
            return;
        }
        tokio::pin!(shutdown);
        loop {
            let done = self.pass().await;
            for (repo, why) in &done.failed {
                tracing::warn!(%repo, error = %why, "reconciler: could not read the repository's deployments");
            }
            if done.picked_up > 0 {
                tracing::warn!(
                    picked_up = done.picked_up,
                    "reconciler: picked up deployments whose webhook never arrived"
                );
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// Looks at every repository the config names exactly and, with a GitHub App, every
    /// repository its installations reach that an `owner/*` entry admits.
    pub async fn pass(&self) -> Reconciled {
        let mut done = Reconciled::default();
        let (exact, patterns): (Vec<&RepoEntry>, Vec<&RepoEntry>) = self
            .parts
            .config
            .repos
            .iter()
            .partition(|entry| !entry.name.contains('*'));
        let mut repos: Vec<(String, Option<i64>)> = Vec::new();
        for entry in exact {
            match self.parts.github.installation(&entry.name).await {
                Ok(installation) => repos.push((entry.name.clone(), installation)),
                Err(error) => done.failed.push((entry.name.clone(), error.message)),
            }
        }
        if !patterns.is_empty() {
            let accounts: Vec<String> = patterns
                .iter()
                .map(|entry| entry.name.split('/').next().unwrap_or_default().to_string())
                .collect();
            match self.parts.github.installed_repositories(&accounts).await {
                Ok(installed) => {
                    let admitted: Vec<(String, Option<i64>)> = installed
                        .into_iter()
                        .filter(|(repo, _)| {
                            patterns.iter().any(|entry| entry.matches_repo(repo))
                                && !repos.iter().any(|(named, _)| named == repo)
                        })
                        .map(|(repo, installation)| (repo, Some(installation)))
                        .collect();
                    repos.extend(admitted);
                }
                Err(error) => done
                    .failed
                    .push(("the App's installations".into(), error.message)),
            }
        }
        for (repo, installation) in repos {
            match self.repository(&repo, installation).await {
                Ok(picked_up) => done.picked_up += picked_up,
                Err(why) => done.failed.push((repo, why)),
            }
        }
        done
    }

    /// Picks up `repo`'s recent deployments that need it; how many.
    async fn repository(&self, repo: &str, installation: Option<i64>) -> Result<usize, String> {
        let api = |e: ApiError| e.message;
        let recent = self
            .parts
            .github
            .recent_deployments(repo, installation)
            .await
            .map_err(api)?;
        let window = chrono::Duration::from_std(self.parts.config.github.reconcile_window)
            .unwrap_or(chrono::Duration::MAX);
        let oldest = chrono::Utc::now() - window;
        // Oldest first, as their webhooks would have come: of several picked up for one
        // environment, the newest is recorded last and is the one that runs.
        let mut recent: Vec<serde_json::Value> = recent
            .into_iter()
            .take_while(|deployment| {
                deployment["created_at"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| t >= oldest)
            })
            .collect();
        recent.reverse();
        let store = |e: anyhow::Error| format!("{e:#}");
        let mut picked_up = 0;
        for deployment in recent {
            let (Some(id), Some(environment)) = (
                deployment["id"].as_i64(),
                deployment["environment"].as_str(),
            ) else {
                continue;
            };
            // Not admitted: its webhook would have been refused; nothing to record again.
            if self.parts.config.admit(repo, environment).is_err()
                || self
                    .parts
                    .store
                    .has_github_deployment(id)
                    .await
                    .map_err(store)?
            {
                continue;
            }
            // A newer deployment of the environment came through already: running this one
            // now would put an older version over it.
            let newest = self
                .parts
                .store
                .newest_github_id(repo, environment)
                .await
                .map_err(store)?;
            if newest.is_some_and(|newest| newest > id)
                || self
                    .parts
                    .github
                    .has_statuses(repo, id, installation)
                    .await
                    .map_err(api)?
            {
                continue;
            }
            if self.pick_up(repo, installation, deployment).await? {
                picked_up += 1;
            }
        }
        Ok(picked_up)
    }

    /// Records and queues one deployment as its webhook would have; true when it was new.
    async fn pick_up(
        &self,
        repo: &str,
        installation: Option<i64>,
        deployment: serde_json::Value,
    ) -> Result<bool, String> {
        let id = deployment["id"].as_i64().unwrap_or_default();
        let mut envelope = serde_json::json!({
            "action": "created",
            "deployment": deployment,
            "repository": { "full_name": repo },
        });
        if let Some(installation) = installation {
            envelope["installation"] = serde_json::json!({ "id": installation });
        }
        // The same parser and the same intake as a delivery: the same checks, no other path.
        let body = serde_json::to_vec(&envelope).map_err(|e| e.to_string())?;
        let event = crate::webhook::parse("deployment", &body)
            .map_err(|e| format!("deployment {id}: {e}"))?;
        if !matches!(event, Event::Deployment(_)) {
            return Ok(false);
        }
        let accepted = self
            .parts
            .intake
            .accept(
                Some(format!("reconciler-{id}")),
                "reconciled",
                "deployment",
                event,
            )
            .await
            .map_err(|e| format!("recording deployment {id}: {e:#}"))?;
        match accepted {
            Accepted::Deployment {
                deployment,
                duplicate: false,
                ..
            } => {
                tracing::warn!(%repo, github_deployment = id, deployment.id = deployment.id, "picked up by the reconciler: the webhook never arrived");
                let redactor = self.parts.redactors.for_repo(repo).clone();
                if let Ok(log) = self.parts.logs.open(deployment.id, redactor).await {
                    log.note("picked up by the reconciler: the webhook never arrived");
                    log.flush().await;
                }
                Ok(true)
            }
            Accepted::Refused(refused) => {
                tracing::info!(%repo, github_deployment = id, %refused, "reconciler: not admitted");
                Ok(false)
            }
            _ => Ok(false),
        }
    }
}
