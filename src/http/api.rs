//! The JSON API (`/api/...`), behind a bearer token from the config.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{AppState, HttpError, all_logs, same};
use crate::store::{
    Deployment, ListFilter, LogLine, Millis, OutboxItem, State as DeploymentState, StepRun,
};

#[derive(Debug, Serialize)]
pub(super) struct DeploymentJson {
    id: i64,
    github_deployment_id: Option<i64>,
    repo: String,
    environment: String,
    task: String,
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
    state: DeploymentState,
    description: Option<String>,
    creator: Option<String>,
    environment_url: Option<String>,
    log_url: String,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct StepJson {
    index: i64,
    name: String,
    server: String,
    state: crate::store::StepState,
    exit_code: Option<i64>,
    message: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct StatusJson {
    state: String,
    description: String,
    delivered: bool,
    attempts: i64,
    last_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct DeploymentDetailJson {
    #[serde(flatten)]
    deployment: DeploymentJson,
    steps: Vec<StepJson>,
    /// Compose services as the deployment left them.
    services: Vec<crate::store::Service>,
    github_statuses: Vec<StatusJson>,
}

pub(super) fn time(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
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
            log_url: state.engine.log_url(d),
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
            state: o.state.clone(),
            description: o.description.clone(),
            delivered: o.delivered_at.is_some(),
            attempts: o.attempts,
            last_error: o.last_error.clone(),
        }
    }
}

fn require_token(state: &AppState, headers: &HeaderMap) -> Result<(), HttpError> {
    if state.has_api_token(headers) {
        Ok(())
    } else {
        Err(HttpError::new(
            StatusCode::UNAUTHORIZED,
            "this API needs `Authorization: Bearer <token>` with a token from [api] tokens",
        ))
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    repo: Option<String>,
    environment: Option<String>,
    limit: Option<i64>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<DeploymentJson>>, HttpError> {
    require_token(&state, &headers)?;
    let filter = ListFilter {
        repo: query.repo,
        environment: query.environment,
        limit: query.limit.unwrap_or(50).clamp(1, 500),
    };
    let deployments = state.engine.store.list_deployments(&filter).await?;
    Ok(Json(
        deployments
            .iter()
            .map(|d| DeploymentJson::new(&state, d))
            .collect(),
    ))
}

async fn find(state: &AppState, id: i64) -> Result<Deployment, HttpError> {
    state
        .engine
        .store
        .deployment(id)
        .await?
        .ok_or_else(|| HttpError::not_found(format!("no deployment {id}")))
}

pub(super) async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<DeploymentDetailJson>, HttpError> {
    require_token(&state, &headers)?;
    let deployment = find(&state, id).await?;
    let steps = state.engine.store.steps(id).await?;
    let statuses = state.engine.store.statuses(id).await?;
    let services = state.engine.store.services(id).await?;
    Ok(Json(DeploymentDetailJson {
        deployment: DeploymentJson::new(&state, &deployment),
        steps: steps.iter().map(StepJson::from).collect(),
        services,
        github_statuses: statuses.iter().map(StatusJson::from).collect(),
    }))
}

#[derive(Debug, Deserialize)]
pub(super) struct TokenQuery {
    token: Option<String>,
}

/// The whole log as text. Accepts the API token or the deployment's own capability token.
pub(super) async fn log(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(query): Query<TokenQuery>,
) -> Result<Response, HttpError> {
    let deployment = find(&state, id).await?;
    let capability = query
        .token
        .as_deref()
        .is_some_and(|t| same(t, &deployment.token));
    if !capability {
        require_token(&state, &headers)?;
    }
    let mut text = String::new();
    for line in all_logs(&*state.engine.store, id, 0).await? {
        text.push_str(&format_line(&line));
        text.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
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

#[derive(Debug, Serialize)]
pub(super) struct TeardownJson {
    repo: String,
    environment: String,
    removed_containers: usize,
    inactive_deployments: usize,
}

/// `DELETE /api/environments/{owner}/{repo}/{environment}`: removes the environment's
/// containers and routes, and ends its deployments `inactive`.
pub(super) async fn delete_environment(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((owner, name, environment)): Path<(String, String, String)>,
) -> Result<Json<TeardownJson>, HttpError> {
    require_token(&state, &headers)?;
    let repo = format!("{owner}/{name}");
    if state.engine.config.repo(&repo).is_none() {
        return Err(HttpError::not_found(format!(
            "{repo} is not a repository of this Dropship"
        )));
    }
    let (removed, inactive) = state
        .engine
        .teardown(&repo, &environment)
        .await
        .map_err(|e| HttpError::new(StatusCode::BAD_GATEWAY, format!("tearing down: {e:#}")))?;
    Ok(Json(TeardownJson {
        repo,
        environment,
        removed_containers: removed,
        inactive_deployments: inactive,
    }))
}
