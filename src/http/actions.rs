//! What people do to deployments and environments (cancel, redeploy, resend its status, roll
//! back, lock, unlock),
//! once for both faces: the JSON API renders a [`Done`] as `202` with [`ActionJson`], the
//! dashboard as a notice. Each writes its audit entry here, so neither face can forget it.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::User;
use super::{AppState, HttpError};
use crate::deploy::{ActionError, Cancelled, Locking};
use crate::store::Deployment;

/// The buttons on a deployment's page, by the name in their form's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DeploymentAction {
    Cancel,
    Redeploy,
    Resend,
}

impl DeploymentAction {
    pub(super) fn parse(name: &str) -> Option<DeploymentAction> {
        Some(match name {
            "cancel" => DeploymentAction::Cancel,
            "redeploy" => DeploymentAction::Redeploy,
            "resend" => DeploymentAction::Resend,
            _ => return None,
        })
    }
}

/// The buttons on an environment, by the name in their form's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EnvironmentAction {
    Rollback,
    Lock,
    Unlock,
}

impl EnvironmentAction {
    pub(super) fn parse(name: &str) -> Option<EnvironmentAction> {
        Some(match name {
            "rollback" => EnvironmentAction::Rollback,
            "lock" => EnvironmentAction::Lock,
            "unlock" => EnvironmentAction::Unlock,
            _ => return None,
        })
    }
}

/// An action that was done: what happened, in a sentence, and the GitHub deployment it
/// created, if any.
#[derive(Debug)]
pub(super) struct Done {
    pub(super) message: String,
    github_deployment_id: Option<i64>,
}

/// What an action did.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ActionJson {
    /// What happened, in a sentence.
    message: String,
    /// The GitHub deployment created, for redeploys and rollbacks.
    github_deployment_id: Option<i64>,
}

/// The API's answer: `202 Accepted` with the message.
impl IntoResponse for Done {
    fn into_response(self) -> Response {
        (
            StatusCode::ACCEPTED,
            Json(ActionJson {
                message: self.message,
                github_deployment_id: self.github_deployment_id,
            }),
        )
            .into_response()
    }
}

/// A deployment, or 404.
pub(super) async fn find(state: &AppState, id: i64) -> Result<Deployment, HttpError> {
    state
        .store
        .deployment(id)
        .await?
        .ok_or_else(|| HttpError::not_found(format!("no deployment {id}")))
}

/// Writes the audit entry of a done action.
async fn done(
    state: &AppState,
    user: &User,
    (action, target): (&str, String),
    message: String,
    github_deployment_id: Option<i64>,
) -> Done {
    state.audit(&user.name, action, &target, &message).await;
    Done {
        message,
        github_deployment_id,
    }
}

fn action_error(error: ActionError) -> HttpError {
    match error {
        ActionError::Refused(message) => HttpError::new(StatusCode::CONFLICT, message),
        ActionError::Github(error) => HttpError::new(
            StatusCode::BAD_GATEWAY,
            format!("GitHub refused to create the deployment: {}", error.message),
        ),
        ActionError::Internal(error) => HttpError::Internal(error),
    }
}

/// Cancels deployment `id`: at once if it waits; if it runs, its running steps' processes are
/// killed on their servers and no further step starts.
pub(super) async fn cancel(state: &AppState, user: &User, id: i64) -> Result<Done, HttpError> {
    let outcome = state
        .actions
        .cancel(id, &user.name)
        .await?
        .ok_or_else(|| HttpError::not_found(format!("no deployment {id}")))?;
    let message = match outcome {
        Cancelled::Queued => format!("deployment {id} cancelled before it started"),
        Cancelled::Requested => {
            format!("deployment {id} is stopping: its running steps are being killed")
        }
        Cancelled::Ended(ended) => {
            return Err(HttpError::new(
                StatusCode::CONFLICT,
                format!("deployment {id} has ended ({ended}); nothing to cancel"),
            ));
        }
    };
    let target = ("cancel", format!("deployment {id}"));
    Ok(done(state, user, target, message, None).await)
}

/// Sends deployment `id`'s current state to GitHub again.
pub(super) async fn resend(state: &AppState, user: &User, id: i64) -> Result<Done, HttpError> {
    let deployment = find(state, id).await?;
    let sent = state
        .actions
        .resend(&deployment)
        .await
        .map_err(action_error)?;
    let message = format!(
        "deployment {id}'s status ({}) is queued for GitHub again",
        sent.as_str()
    );
    let target = ("resend", format!("deployment {id}"));
    Ok(done(state, user, target, message, None).await)
}

/// Deploys deployment `id`'s commit, task and environment again, as a new GitHub deployment.
pub(super) async fn redeploy(state: &AppState, user: &User, id: i64) -> Result<Done, HttpError> {
    let deployment = find(state, id).await?;
    let created = state
        .actions
        .redeploy(&deployment, &user.name)
        .await
        .map_err(action_error)?;
    let message = format!(
        "created GitHub deployment {} of {} at {} to {}",
        created.id,
        deployment.repo,
        deployment.sha.short(),
        deployment.environment
    );
    let target = ("redeploy", format!("deployment {id}"));
    Ok(done(state, user, target, message, Some(created.id)).await)
}

/// Creates a GitHub deployment with task `rollback` for the environment.
pub(super) async fn rollback(
    state: &AppState,
    user: &User,
    repo: &str,
    environment: &str,
) -> Result<Done, HttpError> {
    let created = state
        .actions
        .rollback(repo, environment, &user.name)
        .await
        .map_err(action_error)?;
    let message = format!(
        "created GitHub deployment {} of {repo} to {environment}: task rollback",
        created.id
    );
    let target = ("rollback", format!("{repo} {environment}"));
    Ok(done(state, user, target, message, Some(created.id)).await)
}

/// The longest a lock may be taken for; longer, lock it until unlocked.
const MAX_LOCK_FOR: std::time::Duration = std::time::Duration::from_secs(90 * 24 * 3600);
/// The shortest: a lock that ends before anyone could see it is a mistake.
const MIN_LOCK_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// How long a lock is asked for (`2h`, `30m`, `1d`): none or blank, until unlocked.
pub(super) fn lock_for(text: Option<&str>) -> Result<Option<std::time::Duration>, HttpError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let refused = |why: String| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            format!("`for` must be a duration such as 2h or 30m, from 1 minute to 90 days: {why}"),
        )
    };
    let duration = humantime::parse_duration(text).map_err(|e| refused(e.to_string()))?;
    if duration < MIN_LOCK_FOR || duration > MAX_LOCK_FOR {
        return Err(refused(format!("{text:?} is out of range")));
    }
    Ok(Some(duration))
}

/// Locks an environment (for `duration`, or until unlocked), unless it is locked already; a
/// new lock is audited.
pub(super) async fn lock(
    state: &AppState,
    user: &User,
    (repo, environment): (&str, &str),
    reason: &str,
    duration: Option<std::time::Duration>,
) -> Result<Locking, HttpError> {
    let reason = if reason.trim().is_empty() {
        "no reason given"
    } else {
        reason.trim()
    };
    let locking = state
        .actions
        .lock(repo, environment, &user.name, reason, duration)
        .await?;
    if let Locking::Locked(_) = &locking {
        let detail = match duration {
            Some(duration) => format!("{reason} (for {})", humantime::format_duration(duration)),
            None => reason.to_string(),
        };
        state
            .audit(
                &user.name,
                "lock",
                &format!("{repo} {environment}"),
                &detail,
            )
            .await;
    }
    Ok(locking)
}

/// Unlocks an environment, or 404 if it was not locked.
pub(super) async fn unlock(
    state: &AppState,
    user: &User,
    repo: &str,
    environment: &str,
) -> Result<(), HttpError> {
    if !state
        .store
        .unlock(repo, environment, crate::store::now_ms())
        .await?
    {
        return Err(HttpError::not_found(format!(
            "{repo} {environment} is not locked"
        )));
    }
    state
        .audit(&user.name, "unlock", &format!("{repo} {environment}"), "")
        .await;
    Ok(())
}
