//! The HTTP surface: webhook intake, deployment pages (live over server-sent events) and the
//! JSON API.
//!
//! Architecture invariant: only this module knows axum. REST JSON types live here and are
//! converted from the store's records, so a column rename cannot break the API.

mod api;
mod apps;
mod error;
mod pages;
mod webhook;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

pub use error::HttpError;

use crate::deploy::{Engine, Queue};
use crate::store::{LogLine, Store};

/// What handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub engine: Engine,
    /// Where recorded deployments go to be run.
    pub scheduler: Queue,
}

pub fn router(state: AppState) -> Router {
    let max_body = state.engine.config.server.max_body_bytes;
    Router::new()
        .route(
            "/webhooks/github",
            post(webhook::github).layer(DefaultBodyLimit::max(max_body)),
        )
        .route("/deployments/{id}", get(pages::deployment))
        .route("/deployments/{id}/events", get(pages::events))
        .route("/api/deployments", get(api::list))
        .route("/api/deployments/{id}", get(api::show))
        .route("/api/deployments/{id}/log", get(api::log))
        .route("/apps/{owner}/{repo}/{environment}/logs", get(apps::page))
        .route(
            "/apps/{owner}/{repo}/{environment}/logs/events",
            get(apps::events),
        )
        .route(
            "/api/apps/{owner}/{repo}/{environment}/logs",
            get(apps::api),
        )
        .route(
            "/api/environments/{owner}/{repo}/{environment}",
            axum::routing::delete(api::delete_environment),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(state)
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

/// Every log line of a deployment after `after`, read in pages.
async fn all_logs(store: &dyn Store, id: i64, mut after: i64) -> anyhow::Result<Vec<LogLine>> {
    let mut lines = Vec::new();
    loop {
        let page = store.logs(id, after, 5000).await?;
        let Some(last) = page.last() else {
            return Ok(lines);
        };
        after = last.seq;
        lines.extend(page);
    }
}

/// Constant-time string equality, for tokens.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl AppState {
    /// Whether the request carries one of the configured API bearer tokens.
    fn has_api_token(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        self.engine
            .config
            .api
            .tokens
            .iter()
            .any(|token| same(token.expose_secret(), given.trim()))
    }
}
