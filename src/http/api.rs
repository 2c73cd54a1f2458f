//! The JSON API (`/api/...`): bearer tokens of the users in the config, each with a role
//! (`viewer` reads, `deployer` acts, `admin` also reads the audit log). Every route is
//! described by its `#[utoipa::path]`, and the router is built from the same annotations, so
//! `/api/openapi.json` cannot drift from what is served.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::actions::{self, Done};
use super::auth::Caller;
use super::view::time;
use super::{AppState, HttpError};
use crate::config::Role;
use crate::deploy::{Locking, RunningApp, ServerReport};
use crate::store::{
    AuditEntry, Deployment, ListFilter, Lock, LogLine, OutboxItem, State as DeploymentState,
    StepRun,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Dropship API",
        description = "Deployments, environments, servers, apps, locks and the audit log of a Dropship. Authenticate with `Authorization: Bearer TOKEN` (a token of a user in `[[api.users]]`).",
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every API route, with its OpenAPI description.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list))
        .routes(routes!(show))
        .routes(routes!(log))
        .routes(routes!(cancel))
        .routes(routes!(resend))
        .routes(routes!(redeploy))
        .routes(routes!(environments))
        .routes(routes!(delete_environment))
        .routes(routes!(rollback))
        .routes(routes!(locks))
        .routes(routes!(lock, unlock))
        .routes(routes!(servers))
        .routes(routes!(apps))
        .routes(routes!(super::apps::api))
        .routes(routes!(audit))
}

/// A deployment.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DeploymentJson {
    pub(super) id: i64,
    github_deployment_id: Option<i64>,
    repo: String,
    environment: String,
    task: String,
    #[serde(rename = "ref")]
    pub(super) git_ref: String,
    #[schema(value_type = String)]
    pub(super) sha: crate::sha::Sha,
    /// queued, running, success, failure, error or inactive.
    #[schema(value_type = String)]
    pub(super) state: DeploymentState,
    description: Option<String>,
    creator: Option<String>,
    environment_url: Option<String>,
    log_url: String,
    created_at: String,
    started_at: Option<String>,
    pub(super) finished_at: Option<String>,
}

/// One step on one server.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct StepJson {
    index: i64,
    name: String,
    server: String,
    /// pending, running, success, failure, timed_out, skipped or error.
    #[schema(value_type = String)]
    state: crate::store::StepState,
    exit_code: Option<i64>,
    message: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
}

/// A status (or check-run update) owed to GitHub, and whether it was delivered.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct StatusJson {
    /// `status` or `check`.
    kind: String,
    state: String,
    description: String,
    delivered: bool,
    attempts: i64,
    last_error: Option<String>,
}

/// A deployment with its steps, services and GitHub statuses.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DeploymentDetailJson {
    #[serde(flatten)]
    deployment: DeploymentJson,
    steps: Vec<StepJson>,
    /// Compose services as the deployment left them.
    #[schema(value_type = Vec<Object>)]
    services: Vec<crate::store::Service>,
    github_statuses: Vec<StatusJson>,
}

impl DeploymentJson {
    fn new(state: &AppState, d: &Deployment) -> DeploymentJson {
        DeploymentJson {
            id: d.id,
            github_deployment_id: d.github_id,
            repo: d.repo.clone(),
            environment: d.environment.clone(),
            task: d.task.clone(),
            git_ref: d.git_ref.clone(),
            sha: d.sha.clone(),
            state: d.state,
            description: d.state_description.clone(),
            creator: d.creator.clone(),
            environment_url: d.environment_url.clone(),
            log_url: state.links.url(d),
            created_at: time(d.created_at),
            started_at: d.started_at.map(time),
            finished_at: d.finished_at.map(time),
        }
    }
}

impl From<&StepRun> for StepJson {
    fn from(s: &StepRun) -> Self {
        StepJson {
            index: s.step_index,
            name: s.step.clone(),
            server: s.server.clone(),
            state: s.state,
            exit_code: s.exit_code,
            message: s.message.clone(),
            started_at: s.started_at.map(time),
            finished_at: s.finished_at.map(time),
        }
    }
}

impl From<&OutboxItem> for StatusJson {
    fn from(o: &OutboxItem) -> Self {
        StatusJson {
            kind: o.kind.as_str().to_string(),
            state: o.state.clone(),
            description: o.description.clone(),
            delivered: o.delivered_at.is_some(),
            attempts: o.attempts,
            last_error: o.last_error.clone(),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only this repository (`owner/name`).
    repo: Option<String>,
    /// Only this environment.
    environment: Option<String>,
    /// Only deployments in this state.
    state: Option<String>,
    /// At most this many, newest first (default 50, at most 500).
    limit: Option<i64>,
}

pub(super) fn parse_state(text: Option<&str>) -> Result<Option<DeploymentState>, HttpError> {
    match text.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(text) => DeploymentState::parse(text).map(Some).ok_or_else(|| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "state `{text}` is not one of queued, running, success, failure, error, inactive"
                ),
            )
        }),
    }
}

/// Recent deployments, newest first.
#[utoipa::path(get, path = "/api/deployments", params(ListQuery), tag = "deployments",
    responses((status = 200, body = Vec<DeploymentJson>), (status = 401), (status = 403)))]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<DeploymentJson>>, HttpError> {
    caller.api(Role::Viewer)?;
    let filter = ListFilter {
        repo: query.repo.filter(|r| !r.is_empty()),
        environment: query.environment.filter(|e| !e.is_empty()),
        state: parse_state(query.state.as_deref())?,
        limit: query.limit.unwrap_or(50).clamp(1, 500),
    };
    let deployments = state.store.list_deployments(&filter).await?;
    Ok(Json(
        deployments
            .iter()
            .map(|d| DeploymentJson::new(&state, d))
            .collect(),
    ))
}

/// One deployment with its steps, Compose services and GitHub statuses.
#[utoipa::path(get, path = "/api/deployments/{id}", tag = "deployments",
    params(("id" = i64, Path, description = "Dropship's deployment id")),
    responses((status = 200, body = DeploymentDetailJson), (status = 401), (status = 403), (status = 404)))]
pub(super) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<DeploymentDetailJson>, HttpError> {
    caller.api(Role::Viewer)?;
    let deployment = actions::find(&state, id).await?;
    let steps = state.store.steps(id).await?;
    let statuses = state.store.statuses(id).await?;
    let services = state.store.services(id).await?;
    Ok(Json(DeploymentDetailJson {
        deployment: DeploymentJson::new(&state, &deployment),
        steps: steps.iter().map(StepJson::from).collect(),
        services,
        github_statuses: statuses.iter().map(StatusJson::from).collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogQuery {
    /// The deployment's own capability token (from its `log_url`), instead of a bearer token.
    token: Option<String>,
    /// Only lines after this sequence number.
    after: Option<i64>,
    /// Keep the answer open and send lines as they are stored, until the deployment ends.
    #[serde(default)]
    follow: bool,
}

/// The deployment's log as text, one line each: time, server, step, stream, text.
#[utoipa::path(get, path = "/api/deployments/{id}/log", tag = "deployments",
    params(("id" = i64, Path, description = "Dropship's deployment id"), LogQuery),
    responses((status = 200, content_type = "text/plain", body = String), (status = 401), (status = 403), (status = 404)))]
pub(super) async fn log(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(query): Query<LogQuery>,
) -> Result<Response, HttpError> {
    let deployment = actions::find(&state, id).await?;
    let capability = query
        .token
        .as_deref()
        .is_some_and(|t| state.keys.verify_log_token(deployment.id, t));
    if !capability {
        caller.api(Role::Viewer)?;
    }
    let after = query.after.unwrap_or(0);
    if !query.follow {
        // Read and sent a page at a time: the whole log is never in memory.
        let store = state.store.clone();
        let pages = crate::store::paged(
            after,
            move |after| {
                let store = store.clone();
                async move { store.logs(id, after, super::pages::READ_LINES).await }
            },
            |line| line.seq,
        );
        let pages = futures::StreamExt::map(pages, |page| {
            page.map(|page| {
                let mut text = String::new();
                for line in &page {
                    text.push_str(&format_line(line));
                    text.push('\n');
                }
                text
            })
        });
        return Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            Body::from_stream(pages),
        )
            .into_response());
    }
    let events = super::pages::follow(state, deployment, after);
    let stream = futures::StreamExt::filter_map(events, |event| async move {
        match event {
            crate::logs::Event::Log(line) => {
                let mut text = format_line(&line);
                text.push('\n');
                Some(Ok::<_, std::convert::Infallible>(text))
            }
            _ => None,
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `2026-11-21T10:00:00.000Z web-1 build stdout | text`
pub(crate) fn format_line(line: &LogLine) -> String {
    format!(
        "{} {} {} {} | {}",
        time(line.at),
        line.server.as_deref().unwrap_or("-"),
        line.step.as_deref().unwrap_or("-"),
        line.stream,
        line.line
    )
}

/// Cancels a deployment: a queued one ends `error` at once; a running one has its running
/// steps' processes killed on their servers and starts no other step.
#[utoipa::path(post, path = "/api/deployments/{id}/cancel", tag = "deployments",
    params(("id" = i64, Path, description = "Dropship's deployment id")),
    responses((status = 202, body = actions::ActionJson), (status = 401), (status = 403), (status = 404), (status = 409, description = "it had ended")))]
pub(super) async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Done, HttpError> {
    let user = caller.api(Role::Deployer)?;
    actions::cancel(&state, &user, id).await
}

/// Posts the deployment's current state to GitHub again, behind anything still pending: for a
/// status that was refused, or lost while delivery was paused.
#[utoipa::path(post, path = "/api/deployments/{id}/resend", tag = "deployments",
    params(("id" = i64, Path, description = "Dropship's deployment id")),
    responses((status = 202, body = actions::ActionJson), (status = 401), (status = 403), (status = 404), (status = 409, description = "not a GitHub deployment")))]
pub(super) async fn resend(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Done, HttpError> {
    let user = caller.api(Role::Deployer)?;
    actions::resend(&state, &user, id).await
}

/// Deploys the same commit, task and environment again, as a new GitHub deployment.
#[utoipa::path(post, path = "/api/deployments/{id}/redeploy", tag = "deployments",
    params(("id" = i64, Path, description = "Dropship's deployment id")),
    responses((status = 202, body = actions::ActionJson), (status = 401), (status = 403), (status = 404), (status = 502, description = "GitHub refused")))]
pub(super) async fn redeploy(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Done, HttpError> {
    let user = caller.api(Role::Deployer)?;
    actions::redeploy(&state, &user, id).await
}

/// An environment: what runs there and since when.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct EnvironmentJson {
    repo: String,
    environment: String,
    /// The deployment live there (the newest that succeeded).
    live: Option<DeploymentJson>,
    /// The newest deployment, whatever its state.
    latest: DeploymentJson,
    url: Option<String>,
    lock: Option<LockJson>,
}

impl EnvironmentJson {
    pub(super) fn repo(&self) -> &str {
        &self.repo
    }
    pub(super) fn name(&self) -> &str {
        &self.environment
    }
    pub(super) fn live(&self) -> Option<&DeploymentJson> {
        self.live.as_ref()
    }
    pub(super) fn latest(&self) -> &DeploymentJson {
        &self.latest
    }
    pub(super) fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }
    /// Who locked it, why, and until when (if it ends by itself).
    pub(super) fn lock(&self) -> Option<(&str, &str, Option<&str>)> {
        self.lock.as_ref().map(|l| {
            (
                l.locked_by.as_str(),
                l.reason.as_str(),
                l.expires_at.as_deref(),
            )
        })
    }
}

/// A locked environment.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct LockJson {
    repo: String,
    environment: String,
    locked_by: String,
    reason: String,
    locked_at: String,
    /// When it ends by itself; absent: when it is unlocked.
    expires_at: Option<String>,
}

impl From<&Lock> for LockJson {
    fn from(lock: &Lock) -> Self {
        LockJson {
            repo: lock.repo.clone(),
            environment: lock.environment.clone(),
            locked_by: lock.locked_by.clone(),
            reason: lock.reason.clone(),
            locked_at: time(lock.locked_at),
            expires_at: lock.expires_at.map(time),
        }
    }
}

pub(super) async fn environment_list(state: &AppState) -> Result<Vec<EnvironmentJson>, HttpError> {
    let latest = state.store.latest_per_environment(None).await?;
    let live = state
        .store
        .latest_per_environment(Some(DeploymentState::Success))
        .await?;
    let locks = state.store.locks(crate::store::now_ms()).await?;
    Ok(latest
        .iter()
        .map(|d| {
            let live = live
                .iter()
                .find(|l| l.repo == d.repo && l.environment == d.environment);
            EnvironmentJson {
                repo: d.repo.clone(),
                environment: d.environment.clone(),
                url: live.and_then(|l| l.environment_url.clone()),
                live: live.map(|l| DeploymentJson::new(state, l)),
                latest: DeploymentJson::new(state, d),
                lock: locks
                    .iter()
                    .find(|l| l.repo == d.repo && l.environment == d.environment)
                    .map(LockJson::from),
            }
        })
        .collect())
}

/// Every environment that has seen a deployment: what version runs there, since when, its
/// URL and lock.
#[utoipa::path(get, path = "/api/environments", tag = "environments",
    responses((status = 200, body = Vec<EnvironmentJson>), (status = 401), (status = 403)))]
pub(super) async fn environments(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<EnvironmentJson>>, HttpError> {
    caller.api(Role::Viewer)?;
    Ok(Json(environment_list(&state).await?))
}

/// Creates a GitHub deployment with task `rollback` for the environment (the manifest's
/// rollback; for containers, the previous version, health-gated).
#[utoipa::path(post, path = "/api/environments/{owner}/{repo}/{environment}/rollback", tag = "environments",
    params(("owner" = String, Path), ("repo" = String, Path), ("environment" = String, Path)),
    responses((status = 202, body = actions::ActionJson), (status = 401), (status = 403), (status = 409, description = "never deployed"), (status = 502, description = "GitHub refused")))]
pub(super) async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name, environment)): Path<(String, String, String)>,
) -> Result<Done, HttpError> {
    let user = caller.api(Role::Deployer)?;
    actions::rollback(&state, &user, &format!("{owner}/{name}"), &environment).await
}

/// What a teardown removed.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TeardownJson {
    repo: String,
    environment: String,
    removed_containers: usize,
    inactive_deployments: usize,
}

/// Removes the environment's containers and routes, and ends its deployments `inactive`.
#[utoipa::path(delete, path = "/api/environments/{owner}/{repo}/{environment}", tag = "environments",
    params(("owner" = String, Path), ("repo" = String, Path), ("environment" = String, Path)),
    responses((status = 200, body = TeardownJson), (status = 401), (status = 403), (status = 404), (status = 502, description = "a server refused")))]
pub(super) async fn delete_environment(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name, environment)): Path<(String, String, String)>,
) -> Result<Json<TeardownJson>, HttpError> {
    let user = caller.api(Role::Deployer)?;
    let repo = format!("{owner}/{name}");
    if state.config.admit_repository(&repo).is_err() {
        return Err(HttpError::not_found(format!(
            "{repo} is not a repository of this Dropship"
        )));
    }
    let (removed, inactive) = state
        .environments
        .teardown(&repo, &environment)
        .await
        .map_err(|e| HttpError::new(StatusCode::BAD_GATEWAY, format!("tearing down: {e:#}")))?;
    state
        .audit(
            &user.name,
            "teardown",
            &format!("{repo} {environment}"),
            &format!("{removed} containers removed, {inactive} deployments inactive"),
        )
        .await;
    Ok(Json(TeardownJson {
        repo,
        environment,
        removed_containers: removed,
        inactive_deployments: inactive,
    }))
}

/// Every locked environment.
#[utoipa::path(get, path = "/api/locks", tag = "environments",
    responses((status = 200, body = Vec<LockJson>), (status = 401), (status = 403)))]
pub(super) async fn locks(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<LockJson>>, HttpError> {
    caller.api(Role::Viewer)?;
    let locks = state.store.locks(crate::store::now_ms()).await?;
    Ok(Json(locks.iter().map(LockJson::from).collect()))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LockBody {
    /// Why; shown to whoever's deployment the lock refuses.
    #[serde(default)]
    reason: String,
    /// How long the lock lasts (`2h`, `30m`, `1d`; at most 90 days); without it, until
    /// unlocked.
    #[serde(default, rename = "for")]
    for_: Option<String>,
}

/// Locks an environment: deployments to it end `error` until it is unlocked (or its `for`
/// runs out), except those the locker asked for (as GitHub's creator, or through a Dropship
/// redeploy or rollback).
#[utoipa::path(put, path = "/api/environments/{owner}/{repo}/{environment}/lock", tag = "environments",
    params(("owner" = String, Path), ("repo" = String, Path), ("environment" = String, Path)),
    request_body(content = LockBody, description = "optional"),
    responses((status = 200, body = LockJson), (status = 401), (status = 403), (status = 409, body = LockJson, description = "locked already")))]
pub(super) async fn lock(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name, environment)): Path<(String, String, String)>,
    body: Option<Json<LockBody>>,
) -> Result<Response, HttpError> {
    let user = caller.api(Role::Deployer)?;
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let duration = actions::lock_for(body.for_.as_deref())?;
    let locking = actions::lock(
        &state,
        &user,
        (&format!("{owner}/{name}"), &environment),
        &body.reason,
        duration,
    )
    .await?;
    Ok(match locking {
        Locking::Locked(lock) => Json(LockJson::from(&lock)).into_response(),
        Locking::Held(existing) => {
            (StatusCode::CONFLICT, Json(LockJson::from(&existing))).into_response()
        }
    })
}

/// Unlocks an environment.
#[utoipa::path(delete, path = "/api/environments/{owner}/{repo}/{environment}/lock", tag = "environments",
    params(("owner" = String, Path), ("repo" = String, Path), ("environment" = String, Path)),
    responses((status = 204), (status = 401), (status = 403), (status = 404, description = "not locked")))]
pub(super) async fn unlock(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name, environment)): Path<(String, String, String)>,
) -> Result<StatusCode, HttpError> {
    let user = caller.api(Role::Deployer)?;
    actions::unlock(&state, &user, &format!("{owner}/{name}"), &environment).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every configured server, asked now: reachability, host-key checking, Docker engine and the
/// apps running there.
#[utoipa::path(get, path = "/api/servers", tag = "servers",
    responses((status = 200, body = Vec<ServerReport>), (status = 401), (status = 403)))]
pub(super) async fn servers(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<ServerReport>>, HttpError> {
    caller.api(Role::Viewer)?;
    Ok(Json(state.servers.survey(SURVEY_LIMIT).await))
}

/// How long a server may take to answer the servers page or API.
pub(super) const SURVEY_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Every container Dropship runs, on every server with a Docker engine.
#[utoipa::path(get, path = "/api/apps", tag = "apps",
    responses((status = 200, body = Vec<AppJson>), (status = 401), (status = 403)))]
pub(super) async fn apps(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<AppJson>>, HttpError> {
    caller.api(Role::Viewer)?;
    Ok(Json(app_list(&state).await))
}

/// A container of an app, on a server.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AppJson {
    server: String,
    #[serde(flatten)]
    app: RunningApp,
}

impl AppJson {
    pub(super) fn server(&self) -> &str {
        &self.server
    }
    pub(super) fn app(&self) -> &RunningApp {
        &self.app
    }
}

pub(super) async fn app_list(state: &AppState) -> Vec<AppJson> {
    let mut apps: Vec<AppJson> = state
        .servers
        .survey(SURVEY_LIMIT)
        .await
        .into_iter()
        .flat_map(|report| {
            let server = report.name;
            report.apps.into_iter().map(move |app| AppJson {
                server: server.clone(),
                app,
            })
        })
        .collect();
    apps.sort_by(|a, b| {
        (&a.app.repo, &a.app.environment, &a.app.app, &a.server).cmp(&(
            &b.app.repo,
            &b.app.environment,
            &b.app.app,
            &b.server,
        ))
    });
    apps
}

/// An audit log entry.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AuditJson {
    at: String,
    actor: String,
    action: String,
    target: String,
    detail: String,
}

impl From<&AuditEntry> for AuditJson {
    fn from(entry: &AuditEntry) -> Self {
        AuditJson {
            at: time(entry.at),
            actor: entry.actor.clone(),
            action: entry.action.clone(),
            target: entry.target.clone(),
            detail: entry.detail.clone(),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// At most this many, newest first (default 200, at most 1000).
    limit: Option<i64>,
}

/// Who did what, when: every action taken through the API or the dashboard (admins only).
#[utoipa::path(get, path = "/api/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Vec<AuditJson>), (status = 401), (status = 403)))]
pub(super) async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Vec<AuditJson>>, HttpError> {
    caller.api(Role::Admin)?;
    let entries = state
        .store
        .audit_log(query.limit.unwrap_or(200).clamp(1, 1000))
        .await?;
    Ok(Json(entries.iter().map(AuditJson::from).collect()))
}
