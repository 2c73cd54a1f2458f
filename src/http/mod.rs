//! The HTTP surface: webhook intake, deployment pages (live over server-sent events) and the
//! JSON API.
//!
//! Architecture invariant: only this module knows axum. REST JSON types live here and are
//! converted from the store's records, so a column rename cannot break the API.

mod api;
mod apps;
pub mod auth;
mod dashboard;
mod error;
mod pages;
mod webhook;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use subtle::ConstantTimeEq;

pub use error::HttpError;

use crate::deploy::{Engine, Queue};
pub(crate) use crate::store::all_logs;

/// What handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub engine: Engine,
    /// Where recorded deployments go to be run.
    pub scheduler: Queue,
}

pub fn router(state: AppState) -> Router {
    let max_body = state.engine.config.server.max_body_bytes;
    let (api, openapi) = api::routes().split_for_parts();
    let openapi = std::sync::Arc::new(openapi);
    Router::new()
        .route(
            "/webhooks/github",
            post(webhook::github).layer(DefaultBodyLimit::max(max_body)),
        )
        .route("/", get(dashboard::deployments))
        .route("/login", get(dashboard::login_form).post(dashboard::login))
        .route("/logout", post(dashboard::logout))
        .route("/environments", get(dashboard::environments))
        .route("/servers", get(dashboard::servers))
        .route("/apps", get(dashboard::apps))
        .route("/audit", get(dashboard::audit))
        .route("/deployments/{id}", get(pages::deployment))
        .route("/deployments/{id}/events", get(pages::events))
        .route(
            "/deployments/{id}/{action}",
            post(dashboard::deployment_action),
        )
        .route(
            "/environments/{owner}/{repo}/{environment}/{action}",
            post(dashboard::environment_action),
        )
        .route("/apps/{owner}/{repo}/{environment}/logs", get(apps::page))
        .route(
            "/apps/{owner}/{repo}/{environment}/logs/events",
            get(apps::events),
        )
        .merge(api)
        .route(
            "/api/openapi.json",
            get(move || {
                let openapi = openapi.clone();
                async move { axum::Json(openapi) }
            }),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(state)
}

/// Prometheus' text format.
async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.engine.metrics.render(),
    )
}

/// Ready when the database answers: intake can record deliveries. (`/healthz` only says the
/// process serves HTTP.)
async fn ready(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> (axum::http::StatusCode, String) {
    match state
        .engine
        .store
        .list_deployments(&crate::store::ListFilter {
            limit: 1,
            ..Default::default()
        })
        .await
    {
        Ok(_) => (axum::http::StatusCode::OK, "ready".into()),
        Err(error) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the database does not answer: {error:#}"),
        ),
    }
}

/// Constant-time string equality, for tokens.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}
