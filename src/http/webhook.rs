//! `POST /webhooks/github`: verify, parse, record durably, answer.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{AppState, HttpError};
use crate::deploy::Accepted;
use crate::webhook::{self, Event};

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The `event` label of a delivery: its event when Dropship acts on it (one of
/// [`Event::HANDLED`], each counted under its own name in `/metrics`), `none` without one, and
/// `other` for anything else. The header is read before the signature is checked, so the label
/// set must not grow with what a sender writes there.
fn event_label(event: Option<&str>) -> &'static str {
    match event {
        None => "none",
        Some(event) => Event::HANDLED
            .into_iter()
            .find(|known| *known == event)
            .unwrap_or("other"),
    }
}

pub(super) async fn github(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let event_label = event_label(header(&headers, "x-github-event"));
    let count = |result: &str| state.metrics.webhook(event_label, result);
    let secrets = state.config.webhook_secret_bytes();
    if let Err(error) = webhook::verify(&secrets, header(&headers, "x-hub-signature-256"), &body) {
        count("bad_signature");
        return Err(HttpError::new(StatusCode::UNAUTHORIZED, error.to_string()));
    }
    let Some(event_name) = header(&headers, "x-github-event") else {
        count("invalid");
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "missing X-GitHub-Event header",
        ));
    };
    let delivery_id = header(&headers, "x-github-delivery").map(str::to_string);
    let event = webhook::parse(event_name, &body).map_err(|e| {
        count("invalid");
        HttpError::new(StatusCode::BAD_REQUEST, e.to_string())
    })?;
    // A delivery the store cannot record is answered 503 with the reason: GitHub's delivery
    // log shows the failure (it never retries by itself), and nothing was acknowledged.
    let accepted = state
        .intake
        .accept(delivery_id, event_label, event_name, event)
        .await
        .map_err(|error| {
            tracing::error!(
                error = format!("{error:#}"),
                "a delivery could not be recorded"
            );
            HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the delivery could not be recorded: storage unavailable (see the dropship log)",
            )
        })?;
    Ok(render(accepted))
}

/// The answer GitHub gets (and shows in the delivery's log).
fn render(accepted: Accepted) -> Response {
    match accepted {
        Accepted::Ping { zen } => {
            (StatusCode::OK, Json(json!({ "ok": true, "zen": zen }))).into_response()
        }
        Accepted::Ignored(what) => {
            (StatusCode::ACCEPTED, Json(json!({ "ignored": what }))).into_response()
        }
        Accepted::Refused(refused) => {
            HttpError::new(StatusCode::FORBIDDEN, refused.to_string()).into_response()
        }
        Accepted::PullRequestFromFork { number } => (
            StatusCode::ACCEPTED,
            Json(
                json!({ "pull_request": number, "ignored": "the pull request comes from a fork" }),
            ),
        )
            .into_response(),
        Accepted::PullRequestClosed { number, teardown } => (
            StatusCode::ACCEPTED,
            Json(json!({ "pull_request": number, "teardown": teardown })),
        )
            .into_response(),
        Accepted::AutoDeploy(answer) => (StatusCode::ACCEPTED, Json(answer)).into_response(),
        Accepted::Deployment {
            deployment,
            duplicate,
            log_url,
        } => {
            let status = if duplicate {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            let body = json!({
                "id": deployment.id,
                "github_deployment_id": deployment.github_id,
                "state": deployment.state,
                "log_url": log_url,
                "duplicate": duplicate,
            });
            (status, Json(body)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::event_label;

    #[test]
    fn unknown_events_share_one_label() {
        assert_eq!(event_label(Some("deployment")), "deployment");
        assert_eq!(event_label(Some("check_suite")), "check_suite");
        assert_eq!(event_label(Some("x-3f9a")), "other");
        assert_eq!(event_label(Some("deployment ")), "other");
        assert_eq!(event_label(None), "none");
    }
}
