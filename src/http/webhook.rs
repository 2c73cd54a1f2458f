//! `POST /webhooks/github`: verify, parse, record durably, answer.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{AppState, HttpError};
use crate::deploy::queued_status;
use crate::manifest::AutoDeployTrigger;
use crate::store::{Delivery, DeliveryResult, Inserted, NewDeployment};
use crate::webhook::{self, BranchMoved, Event};

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
    let metrics = state.metrics.clone();
    let event_label = event_label(header(&headers, "x-github-event"));
    let count = |result: &str| metrics.webhook(event_label, result);
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
    let delivery = |result: DeliveryResult, action: Option<String>| {
        if result != DeliveryResult::Accepted {
            count(result.as_str());
        }
        Delivery {
            delivery_id: delivery_id.clone(),
            event: event_name.to_string(),
            action,
            result,
            deployment_id: None,
        }
    };
    let deployment = match event {
        Event::Ping { zen } => {
            state
                .store
                .record_delivery(delivery(DeliveryResult::Ping, None))
                .await?;
            return Ok((StatusCode::OK, Json(json!({ "ok": true, "zen": zen }))).into_response());
        }
        Event::Ignored { event, action } => {
            state
                .store
                .record_delivery(delivery(DeliveryResult::Ignored, action.clone()))
                .await?;
            let what = match action {
                Some(action) => format!("{event}.{action}"),
                None => event,
            };
            return Ok((StatusCode::ACCEPTED, Json(json!({ "ignored": what }))).into_response());
        }
        Event::PullRequestClosed {
            repository,
            number,
            head_ref,
            from_fork,
        } => {
            if let Err(refused) = state.config.admit_repository(&repository) {
                state
                    .store
                    .record_delivery(delivery(DeliveryResult::Refused, Some("closed".into())))
                    .await?;
                return Err(HttpError::new(StatusCode::FORBIDDEN, refused.to_string()));
            }
            // A fork's branch may carry the name of one of this repository's branches: its
            // closing says nothing about this repository's previews.
            if from_fork {
                state
                    .store
                    .record_delivery(delivery(DeliveryResult::Ignored, Some("closed".into())))
                    .await?;
                return Ok((
                    StatusCode::ACCEPTED,
                    Json(json!({ "pull_request": number, "ignored": "the pull request comes from a fork" })),
                )
                    .into_response());
            }
            let previews = state.store.previews_of_ref(&repository, &head_ref).await?;
            state
                .store
                .record_delivery(delivery(DeliveryResult::Accepted, Some("closed".into())))
                .await?;
            count("accepted");
            // Answer now; tearing down (draining, removing containers) takes its time.
            for environment in previews.clone() {
                let (engine, repository) = (state.engine.clone(), repository.clone());
                tokio::spawn(async move {
                    match engine.teardown(&repository, &environment).await {
                        Ok((removed, _)) => tracing::info!(
                            repo = %repository, environment, removed,
                            "pull request closed: preview torn down"
                        ),
                        Err(error) => tracing::error!(
                            repo = %repository, environment, error = format!("{error:#}"),
                            "pull request closed: tearing down the preview"
                        ),
                    }
                });
            }
            return Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "pull_request": number, "teardown": previews })),
            )
                .into_response());
        }
        Event::Push(moved) => {
            return auto_deploy(
                &state,
                *moved,
                AutoDeployTrigger::Push,
                delivery(DeliveryResult::Accepted, None),
            )
            .await;
        }
        Event::CheckSuiteCompleted(moved) => {
            return auto_deploy(
                &state,
                *moved,
                AutoDeployTrigger::Checks,
                delivery(DeliveryResult::Accepted, Some("completed".into())),
            )
            .await;
        }
        Event::Deployment(deployment) => deployment,
    };
    if let Err(refused) = state
        .config
        .admit(&deployment.repository, &deployment.environment)
    {
        state
            .store
            .record_delivery(delivery(DeliveryResult::Refused, Some("created".into())))
            .await?;
        return Err(HttpError::new(StatusCode::FORBIDDEN, refused.to_string()));
    }
    let new = NewDeployment {
        github_id: Some(deployment.github_id),
        repo: deployment.repository,
        environment: deployment.environment,
        task: deployment.task,
        git_ref: deployment.git_ref,
        sha: deployment.sha,
        payload: deployment.payload,
        description: deployment.description,
        creator: deployment.creator,
        installation_id: deployment.installation_id,
        transient: deployment.transient_environment,
        production: deployment.production_environment,
    };
    let public_url = state.config.public_url().to_string();
    let queued = Box::new(move |d: &crate::store::Deployment| queued_status(&public_url, d));
    let inserted = state
        .store
        .insert_deployment(
            new,
            Some(queued),
            Some(delivery(DeliveryResult::Accepted, Some("created".into()))),
        )
        .await?;
    let (status, recorded, duplicate) = match inserted {
        Inserted::New(d) => {
            count("accepted");
            // Behind the queued status, before the deployment can start. Without it the check
            // run is created at `in_progress`: no reason to fail a recorded delivery.
            if let Err(error) = state.reporter.check_queued(&d).await {
                tracing::error!(
                    error = format!("{error:#}"),
                    deployment.id = d.id,
                    "enqueueing the queued check run"
                );
            }
            state.scheduler.push(&d);
            state.outbox.notify_one();
            (StatusCode::ACCEPTED, d, false)
        }
        Inserted::Duplicate(d) => {
            count("duplicate");
            (StatusCode::OK, d, true)
        }
    };
    let body = json!({
        "id": recorded.id,
        "github_deployment_id": recorded.github_id,
        "state": recorded.state,
        "log_url": state.engine.log_url(&recorded),
        "duplicate": duplicate,
    });
    Ok((status, Json(body)).into_response())
}

/// How long a `push` or `check_suite` delivery waits for its auto-deploys before answering;
/// GitHub gives up on a delivery after 10 s. Work left then goes on in the background.
const AUTO_DEPLOY_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

/// Records the delivery and applies the manifest's `auto_deploy` rules.
async fn auto_deploy(
    state: &AppState,
    moved: BranchMoved,
    trigger: AutoDeployTrigger,
    delivery: Delivery,
) -> Result<Response, HttpError> {
    let event = event_label(Some(&delivery.event));
    let count = |result: &str| state.metrics.webhook(event, result);
    if state.config.admit_repository(&moved.repository).is_err() {
        count("ignored");
        let delivery = Delivery {
            result: DeliveryResult::Ignored,
            ..delivery
        };
        state.store.record_delivery(delivery).await?;
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "auto_deploy": [], "note": format!("repository {} is not configured", moved.repository) })),
        )
            .into_response());
    }
    state.store.record_delivery(delivery).await?;
    count("accepted");
    let engine = state.engine.clone();
    let mut work = tokio::spawn(async move { engine.auto_deploy(&moved, trigger).await });
    let answer = match tokio::time::timeout(AUTO_DEPLOY_BUDGET, &mut work).await {
        Ok(Ok(Ok(done))) => json!({ "auto_deploy": done }),
        Ok(Ok(Err(why))) => json!({ "auto_deploy": [], "note": why.to_string() }),
        Ok(Err(error)) => {
            return Err(HttpError::Internal(anyhow::anyhow!(
                "auto-deploy task failed: {error}"
            )));
        }
        Err(_) => json!({ "auto_deploy": "continuing in the background" }),
    };
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
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
