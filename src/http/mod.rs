//! The HTTP surface: webhook intake, deployment pages (live over server-sent events) and the
//! JSON API.
//!
//! Architecture invariant: only this module knows axum. REST JSON types live here and are
//! converted from the store's records, so a column rename cannot break the API.

mod actions;
mod api;
mod apps;
pub mod auth;
mod dashboard;
mod error;
mod live;
mod pages;
mod paths;
mod view;
mod webhook;

mod assets;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::http::{HeaderName, HeaderValue, Request, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::csrf::CsrfLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::DeadlineBody;

pub use error::HttpError;

use crate::config::Config;
use crate::config::ServerSection;
use crate::deploy::{Actions, Environments, Intake, LogLinks, Servers};
use crate::metrics::Metrics;
use crate::store::Store;

/// What handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// What the configured servers look like now.
    pub servers: Servers,
    /// Deployments' page links, with their tokens.
    pub links: LogLinks,
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Checks the tokens of deployment pages' links.
    pub keys: Arc<crate::keys::Keys>,
    /// Live state changes and log lines, for pages that follow a deployment.
    pub bus: crate::logs::Bus,
    /// Live container log lines, for the apps page.
    pub followers: crate::containers::follow::Followers,
    /// Takes verified webhook deliveries.
    pub intake: Intake,
    /// What people do: cancel, lock, redeploy, roll back.
    pub actions: Actions,
    /// Tears environments down.
    pub environments: Environments,
    /// Why status delivery to GitHub is paused, if it is (`/readyz`, the dashboard's banner).
    pub delivery: crate::github::DeliveryAlarm,
    /// Failed sign-ins per name and client address.
    pub(crate) throttle: Arc<auth::SignInThrottle>,
}

/// What pages may load and do: only Dropship's own scripts and styles (no inline script, no
/// `eval`), fetches and form posts back to Dropship, no framing, no `<base>`.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Every route, behind the security headers and the cross-origin check.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.server.max_body_bytes;
    let csrf = csrf_layer(state.config.public_url());
    let (api, openapi) = api::routes().split_for_parts();
    let openapi = std::sync::Arc::new(openapi);
    let routes = Router::new()
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
        .route("/assets/{name}", get(assets::serve))
        .with_state(state);
    security_headers(routes.layer(csrf))
}

/// Every answer carries these: pages run only their own script, are never framed, never
/// sniffed as another type, and never leak their URL (a deployment's capability link) in a
/// `Referer`.
fn security_headers(router: Router) -> Router {
    let headers: [(HeaderName, &'static str); 5] = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ];
    headers.into_iter().fold(router, |router, (name, value)| {
        router.layer(SetResponseHeaderLayer::if_not_present(
            name,
            HeaderValue::from_static(value),
        ))
    })
}

/// Refuses (403) a state-changing request (anything but GET, HEAD, OPTIONS) that a browser
/// marks as coming from another site: `Sec-Fetch-Site` other than `same-origin`/`none`, or an
/// `Origin` that is neither `public_url`'s nor the request's own host. Requests without either
/// header (GitHub's deliveries, curl, the CLI) carry no ambient cookie risk and pass.
fn csrf_layer(
    public_url: &str,
) -> CsrfLayer<fn(tower_http::csrf::ProtectionError) -> axum::response::Response> {
    let refuse: fn(tower_http::csrf::ProtectionError) -> axum::response::Response = |_| {
        HttpError::new(
            StatusCode::FORBIDDEN,
            "this request comes from another site (Origin or Sec-Fetch-Site): changes are accepted only from Dropship's own pages, or with a bearer token and no Origin",
        )
        .into_response()
    };
    let mut layer = CsrfLayer::new();
    if let Some(origin) = origin_of(public_url) {
        match layer.clone().add_trusted_origin(&origin) {
            Ok(trusted) => layer = trusted,
            Err(error) => {
                tracing::warn!(origin, error = ?error, "public_url's origin is not trusted for form posts")
            }
        }
    }
    layer.with_rejection_response(refuse)
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> Option<String> {
    let uri: axum::http::Uri = url.parse().ok()?;
    Some(format!("{}://{}", uri.scheme_str()?, uri.authority()?))
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then waits for open
/// connections to finish (at most [`SHUTDOWN_GRACE`](crate::listen::SHUTDOWN_GRACE)). Each connection must send a whole request
/// head within `header_read_timeout` and each body within `body_read_timeout`; at most
/// `max_connections` are served at once (the rest wait in the listen backlog).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: &ServerSection,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let gate = crate::listen::Gate::new(listener, settings.max_connections, "HTTP");
    let (header_timeout, body_timeout) = (settings.header_read_timeout, settings.body_read_timeout);
    while let Some((stream, remote, permit)) = gate.accept(&shutdown).await {
        let (router, shutdown, open) =
            (router.clone(), shutdown.clone(), metrics.http_connection());
        tokio::spawn(async move {
            let _held = (permit, open);
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let mut request =
                        request.map(|body| Body::new(DeadlineBody::new(body_timeout, body)));
                    request.extensions_mut().insert(ConnectInfo(remote));
                    tower::ServiceExt::oneshot(router.clone(), request)
                });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(error = %error, remote = %remote, "HTTP connection");
            }
        });
    }
    if !gate.close_and_drain(crate::listen::SHUTDOWN_GRACE).await {
        tracing::warn!(grace = ?crate::listen::SHUTDOWN_GRACE, "connections still open after shutdown; leaving them");
    }
    Ok(())
}

/// Where a server-sent event stream resumes: after the `Last-Event-ID` a reconnecting browser
/// sends, else after the `after` query parameter, else from the start.
fn resume_after(headers: &axum::http::HeaderMap, after: Option<i64>) -> i64 {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .or(after)
        .unwrap_or(0)
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
        state.metrics.render(),
    )
}

/// Ready when the database answers: intake can record deliveries. (`/healthz` only says the
/// process serves HTTP.)
async fn ready(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> (axum::http::StatusCode, String) {
    match state
        .store
        .list_deployments(&crate::store::ListFilter {
            limit: 1,
            ..Default::default()
        })
        .await
    {
        // Still ready: webhooks are taken and deployments run; what GitHub is owed waits.
        Ok(_) => match state.delivery.reason() {
            None => (axum::http::StatusCode::OK, "ready".into()),
            Some(reason) => (
                axum::http::StatusCode::OK,
                format!("degraded: status delivery is paused: {reason}"),
            ),
        },
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
