//! What people ask of Dropship through the API and the dashboard: cancel a deployment, lock
//! an environment, redeploy a version, roll back. Redeploys and rollbacks are created as GitHub
//! deployments, so GitHub records them like any other and delivers them back.

use std::sync::Arc;

use super::Reporter;
use super::stops::{StopReason, Stops};
use crate::github::{ApiError, GithubApi, GithubDeployment, NewGithubDeployment};
use crate::keys::Keys;
use crate::store::{Deployment, ListFilter, Lock, State, StatusState, Store, now_ms};

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It had not started: it ended `error` at once.
    Queued,
    /// It is running: the processes of its running steps are being killed, and no further
    /// step starts.
    Requested,
    /// It had ended already.
    Ended(State),
}

/// Why a redeploy or rollback could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("{0}")]
    Refused(String),
    #[error("GitHub refused: {}", .0.message)]
    Github(ApiError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// What a lock's proof is a MAC of (`lock_proof`).
const LOCK_PROOF: &str = "lock-proof";

/// Proves that Dropship itself created a deployment for its user `by`: a MAC under Dropship's
/// key, which only Dropship holds, of everything the deployment is (repository, environment,
/// ref, sha, task, the payload without the proof, and `by`), so that writing a lock holder's
/// name (or a proof copied from another deployment) into a payload passes no lock. Replaying
/// it can only run again exactly what `by` asked for.
pub(crate) fn lock_proof(
    keys: &crate::keys::Keys,
    target: &ProofTarget<'_>,
    payload: &serde_json::Value,
    by: &str,
) -> String {
    keys.mac(LOCK_PROOF, lock_message(target, payload, by).as_bytes())
}

/// What a proof binds besides the payload.
#[derive(Debug)]
pub(crate) struct ProofTarget<'a> {
    pub(crate) repo: &'a str,
    pub(crate) environment: &'a str,
    pub(crate) git_ref: &'a str,
    pub(crate) sha: &'a str,
    pub(crate) task: &'a str,
    /// When the environment's lock was taken (none if unlocked): a proof passes only the lock
    /// it was made under, never a later one.
    pub(crate) lock: Option<crate::store::Millis>,
}

fn lock_message(target: &ProofTarget<'_>, payload: &serde_json::Value, by: &str) -> String {
    let mut payload = payload.clone();
    if let Some(dropship) = payload
        .get_mut("dropship")
        .and_then(serde_json::Value::as_object_mut)
    {
        dropship.remove("proof");
    }
    canonical(&serde_json::json!([
        target.repo,
        target.environment,
        target.git_ref,
        target.sha,
        target.task,
        target.lock,
        by,
        payload
    ]))
}

/// JSON with every object's keys sorted, so that the same value always gives the same text
/// (GitHub may hand a payload back with its keys in another order).
fn canonical(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        serde_json::Value::from(k.as_str()),
                        canonical(&map[k])
                    )
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        serde_json::Value::Array(items) => {
            format!(
                "[{}]",
                items.iter().map(canonical).collect::<Vec<_>>().join(",")
            )
        }
        other => other.to_string(),
    }
}

/// Whether `deployment` carries Dropship's proof that it was made for the holder of `lock`,
/// under that lock.
pub(crate) fn proves_requested_by(
    keys: &crate::keys::Keys,
    deployment: &Deployment,
    lock: &Lock,
) -> bool {
    let by = lock.locked_by.as_str();
    let dropship = &deployment.payload["dropship"];
    let target = ProofTarget {
        repo: &deployment.repo,
        environment: &deployment.environment,
        git_ref: &deployment.git_ref,
        sha: &deployment.sha,
        task: &deployment.task,
        lock: Some(lock.locked_at),
    };
    dropship["requested_by"].as_str() == Some(by)
        && dropship["proof"].as_str().is_some_and(|proof| {
            keys.verify(
                LOCK_PROOF,
                lock_message(&target, &deployment.payload, by).as_bytes(),
                proof,
            )
        })
}

/// What asking for an environment's lock did.
#[derive(Debug)]
pub enum Locking {
    /// The environment is now locked by this lock.
    Locked(Lock),
    /// It was locked already, by this lock.
    Held(Lock),
}

/// What people do to deployments and environments, each checked and recorded: cancel, lock,
/// redeploy, roll back. Built once at start; cheap to clone.
#[derive(Debug, Clone)]
pub struct Actions {
    store: Arc<dyn Store>,
    reporter: Reporter,
    /// Stops running deployments (their running steps' processes are killed).
    stops: Stops,
    /// Creates the GitHub deployments of redeploys and rollbacks; none for `dropship run`.
    github: Option<Arc<dyn GithubApi>>,
    /// Proves that Dropship made a deployment for a lock's holder.
    keys: Arc<Keys>,
}

/// The lock on `repo`'s `environment`, if any.
pub(super) async fn lock_of(
    store: &dyn Store,
    repo: &str,
    environment: &str,
) -> anyhow::Result<Option<Lock>> {
    Ok(store
        .locks(now_ms())
        .await?
        .into_iter()
        .find(|l| l.repo == repo && l.environment == environment))
}

/// Creates a GitHub deployment, or says why it cannot.
pub(crate) async fn create_github_deployment(
    github: Option<&Arc<dyn GithubApi>>,
    repo: &str,
    deployment: &NewGithubDeployment<'_>,
    installation: Option<i64>,
) -> Result<GithubDeployment, ActionError> {
    let Some(github) = github else {
        return Err(ActionError::Refused(
            "this Dropship has no GitHub client to create deployments with".into(),
        ));
    };
    github
        .create(repo, deployment, installation)
        .await
        .map_err(ActionError::Github)
}

impl Actions {
    /// The actions on deployments: cancel requests go to the runner through `cancels`; new
    /// deployments are created through `github` (none for `dropship run`).
    pub fn new(
        store: Arc<dyn Store>,
        reporter: Reporter,
        stops: Stops,
        github: Option<Arc<dyn GithubApi>>,
        keys: Arc<Keys>,
    ) -> Actions {
        Actions {
            store,
            reporter,
            stops,
            github,
            keys,
        }
    }

    /// Cancels deployment `id` on behalf of `by`; `None` when there is no such deployment.
    pub async fn cancel(&self, id: i64, by: &str) -> anyhow::Result<Option<Cancelled>> {
        let Some(deployment) = self.store.deployment(id).await? else {
            return Ok(None);
        };
        match deployment.state {
            State::Queued => {
                let description = format!("cancelled by {by} before it started");
                if self
                    .reporter
                    .transition(&deployment, State::Error, &description, None)
                    .await?
                {
                    return Ok(Some(Cancelled::Queued));
                }
                // It started meanwhile.
                self.stop_running(id, by).await
            }
            State::Running => self.stop_running(id, by).await,
            ended => Ok(Some(Cancelled::Ended(ended))),
        }
    }

    /// Stops running deployment `id`, or says how it ended if it is no longer running.
    async fn stop_running(&self, id: i64, by: &str) -> anyhow::Result<Option<Cancelled>> {
        if self.stops.stop(id, StopReason::Cancelled(by.to_string())) {
            return Ok(Some(Cancelled::Requested));
        }
        let state = self.store.deployment(id).await?.map(|d| d.state);
        Ok(Some(match state {
            Some(state) if state.is_final() => Cancelled::Ended(state),
            // Running in the store, but not here: left by a Dropship that stopped, and ended
            // `error` when this one started.
            _ => Cancelled::Ended(State::Error),
        }))
    }

    /// Locks an environment (for `duration`, or until unlocked), unless it is locked already.
    pub async fn lock(
        &self,
        repo: &str,
        environment: &str,
        by: &str,
        reason: &str,
        duration: Option<std::time::Duration>,
    ) -> anyhow::Result<Locking> {
        let locked_at = now_ms();
        let lock = Lock {
            repo: repo.to_string(),
            environment: environment.to_string(),
            locked_by: by.to_string(),
            reason: reason.to_string(),
            locked_at,
            expires_at: duration.map(|d| {
                locked_at.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            }),
        };
        if self.store.lock(&lock).await? {
            return Ok(Locking::Locked(lock));
        }
        let existing = lock_of(&*self.store, repo, environment).await?;
        // Unlocked (or expired) between the two: try once more, as of now.
        let now = now_ms();
        let lock = Lock {
            locked_at: now,
            expires_at: lock.expires_at.map(|at| at + (now - lock.locked_at)),
            ..lock
        };
        match existing {
            Some(existing) => Ok(Locking::Held(existing)),
            None if self.store.lock(&lock).await? => Ok(Locking::Locked(lock)),
            None => Ok(Locking::Held(lock)),
        }
    }

    /// Sends `deployment`'s current state to GitHub again (after statuses were refused or
    /// lost); refused for a deployment GitHub does not know.
    pub async fn resend(&self, deployment: &Deployment) -> Result<StatusState, ActionError> {
        if deployment.github_id.is_none() {
            return Err(ActionError::Refused(format!(
                "deployment {} was not made through GitHub: it has no statuses to send",
                deployment.id
            )));
        }
        self.reporter
            .resend(deployment)
            .await
            .map_err(ActionError::Internal)
    }

    /// Creates a GitHub deployment of `deployment`'s commit, task and environment again.
    pub async fn redeploy(
        &self,
        deployment: &Deployment,
        by: &str,
    ) -> Result<GithubDeployment, ActionError> {
        let short = deployment.sha.short();
        let description = format!("redeploy of {short} requested by {by} in Dropship");
        let mut payload = deployment.payload.clone();
        if !payload.is_object() {
            payload = serde_json::json!({});
        }
        payload["dropship"] = serde_json::json!({
            "requested_by": by,
            "redeploy_of": deployment.public_id(),
        });
        self.prove(
            &deployment.repo,
            &deployment.environment,
            &deployment.sha,
            &deployment.task,
            by,
            &mut payload,
        )
        .await?;
        create_github_deployment(
            self.github.as_ref(),
            &deployment.repo,
            &NewGithubDeployment {
                git_ref: &deployment.sha,
                task: &deployment.task,
                environment: &deployment.environment,
                description: &description,
                auto_merge: false,
                // The commit passed its checks when it first went out.
                required_contexts: Some(Vec::new()),
                payload,
            },
            deployment.installation_id,
        )
        .await
    }

    /// Creates a GitHub deployment with task `rollback` for `repo`'s `environment`, at the
    /// commit of its newest deployment (whose manifest says what a rollback does).
    pub async fn rollback(
        &self,
        repo: &str,
        environment: &str,
        by: &str,
    ) -> Result<GithubDeployment, ActionError> {
        let newest = self
            .store
            .list_deployments(&ListFilter {
                repo: Some(repo.to_string()),
                environment: Some(environment.to_string()),
                limit: 1,
                ..Default::default()
            })
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                ActionError::Refused(format!(
                    "{repo} has never deployed to {environment}: nothing to roll back"
                ))
            })?;
        let description = format!("rollback requested by {by} in Dropship");
        let mut payload = serde_json::json!({ "dropship": { "requested_by": by } });
        self.prove(repo, environment, &newest.sha, "rollback", by, &mut payload)
            .await?;
        create_github_deployment(
            self.github.as_ref(),
            repo,
            &NewGithubDeployment {
                git_ref: &newest.sha,
                task: "rollback",
                environment,
                description: &description,
                auto_merge: false,
                required_contexts: Some(Vec::new()),
                payload,
            },
            newest.installation_id,
        )
        .await
    }

    /// Puts the proof that Dropship creates a deployment of `sha` (its ref too) for `by` into
    /// `payload["dropship"]["proof"]`, made under `environment`'s current lock.
    async fn prove(
        &self,
        repo: &str,
        environment: &str,
        sha: &str,
        task: &str,
        by: &str,
        payload: &mut serde_json::Value,
    ) -> anyhow::Result<()> {
        let lock = lock_of(&*self.store, repo, environment).await?;
        // GitHub resolves the ref (the commit itself) to the same sha.
        let target = ProofTarget {
            repo,
            environment,
            git_ref: sha,
            sha,
            task,
            lock: lock.map(|l| l.locked_at),
        };
        payload["dropship"]["proof"] = lock_proof(&self.keys, &target, payload, by).into();
        Ok(())
    }
}
