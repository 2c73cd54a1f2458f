//! Container logs per app: `GET /api/apps/{owner}/{repo}/{environment}/logs` (NDJSON, with
//! `since`, `after` and `follow`) and the live page `GET /apps/{owner}/{repo}/{environment}/logs`
//! (server-sent events at `.../logs/events`). The API takes a viewer's bearer token; the page
//! a signed-in viewer.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use maud::html;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::auth::Caller;
use super::live::{self, Next};
use super::{AppState, HttpError};
use crate::config::Role;
use crate::store::AppLogLine;

/// Lines read from the store per page.
const PAGE: i64 = 5000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogsQuery {
    /// Lines at or after this time: RFC 3339 (`2026-11-22T10:00:00Z`) or Unix seconds.
    since: Option<String>,
    /// Lines after this id (a previous answer's last `id`).
    after: Option<i64>,
    /// Keep the answer open and send new lines as they come.
    #[serde(default)]
    follow: bool,
}

#[derive(Debug, Serialize)]
struct LineJson<'a> {
    id: i64,
    time: String,
    app: &'a str,
    server: &'a str,
    container: &'a str,
    stream: &'a str,
    line: &'a str,
}

fn to_json(line: &AppLogLine) -> String {
    let time = chrono::DateTime::from_timestamp_nanos(line.ts)
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let mut text = serde_json::to_string(&LineJson {
        id: line.id,
        time,
        app: &line.app,
        server: &line.server,
        container: line.container.get(..12).unwrap_or(&line.container),
        stream: line.stream.as_str(),
        line: &line.line,
    })
    .expect("log lines serialize");
    text.push('\n');
    text
}

fn parse_since(since: Option<&str>) -> Result<i64, HttpError> {
    let Some(text) = since else {
        return Ok(i64::MIN);
    };
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds.saturating_mul(1_000_000_000));
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .ok_or_else(|| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "since `{text}` is neither RFC 3339 (2026-11-22T10:00:00Z) nor Unix seconds"
                ),
            )
        })
}

/// Sends `repo`'s lines after `after` (and at or after `since`) to `sender`, a page at a time,
/// then, when `follow`, new lines as they are stored. Ends when the client leaves, even while
/// no line comes.
async fn feed(
    state: AppState,
    repo: String,
    environment: String,
    mut after: i64,
    since: i64,
    follow: bool,
    sender: mpsc::Sender<AppLogLine>,
) {
    let _open = state.metrics.live_stream();
    // Subscribe before reading the store; ids drop what arrives twice.
    let mut live = state.followers.subscribe();
    let catch_up = async |after: &mut i64| -> bool {
        let store = &state.store;
        let pages = crate::store::paged(
            *after,
            |after| store.app_logs(&repo, &environment, after, PAGE),
            |line| line.id,
        );
        let each = |line: AppLogLine| {
            *after = line.id;
            (line.ts >= since).then_some(line)
        };
        let what = format!("reading container logs of {repo} {environment} for a stream");
        live::send_stored(pages, &sender, each, &what).await
    };
    if !catch_up(&mut after).await || !follow {
        return;
    }
    loop {
        let line = match live::next(&mut live, &sender).await {
            Next::Item(line) => line,
            Next::Lagged => {
                if !catch_up(&mut after).await {
                    return;
                }
                continue;
            }
            Next::Ended => return,
        };
        if line.id <= after || line.repo != repo || line.environment != environment {
            continue;
        }
        after = line.id;
        if line.ts >= since && sender.send((*line).clone()).await.is_err() {
            return;
        }
    }
}

/// `repo`'s lines of `environment` after `after` and at or after `since`, then, when `live`,
/// new lines as they are stored. The task feeding it ends when the stream is dropped (its
/// client left).
fn follow(
    state: AppState,
    repo: String,
    environment: String,
    after: i64,
    since: i64,
    live: bool,
) -> ReceiverStream<AppLogLine> {
    let (sender, receiver) = mpsc::channel(1024);
    tokio::spawn(feed(state, repo, environment, after, since, live, sender));
    ReceiverStream::new(receiver)
}

/// An app's container logs as NDJSON (one JSON object a line: id, time, app, server,
/// container, stream, line).
#[utoipa::path(get, path = "/api/apps/{owner}/{repo}/{environment}/logs", tag = "apps",
    params(("owner" = String, Path), ("repo" = String, Path), ("environment" = String, Path), LogsQuery),
    responses((status = 200, content_type = "application/x-ndjson", body = String), (status = 400), (status = 401), (status = 403)))]
pub(super) async fn api(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name, environment)): Path<(String, String, String)>,
    Query(query): Query<LogsQuery>,
) -> Result<Response, HttpError> {
    caller.api(Role::Viewer)?;
    let since = parse_since(query.since.as_deref())?;
    let lines = follow(
        state,
        format!("{owner}/{name}"),
        environment,
        query.after.unwrap_or(0),
        since,
        query.follow,
    );
    let body = futures::StreamExt::map(lines, |line| Ok::<_, Infallible>(to_json(&line)));
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

/// The live page.
pub(super) async fn page(
    State(state): State<AppState>,
    caller: Caller,
    uri: OriginalUri,
    Path((owner, name, environment)): Path<(String, String, String)>,
) -> Result<Response, HttpError> {
    let user = match caller.page(Role::Viewer, uri.path()) {
        Ok(user) => user,
        Err(refusal) => return Ok(refusal.into_response()),
    };
    let repo = format!("{owner}/{name}");
    // The page shows the newest lines and follows from there.
    let lines = state.store.app_logs_tail(&repo, &environment, 1000).await?;
    let after = lines.last().map_or(0, |l| l.id);
    let events = super::paths::environment_path("/apps", &repo, &environment, "/logs/events");
    let body = html! {
        h1 { (repo) " → " (environment) }
        p.meta { "container logs, newest last; live" }
        pre #log {
            @for line in &lines {
                span class={"line " (line.stream)} {
                    span.app { (line.app) "@" (line.server) }
                    " " (line.line) "\n"
                }
            }
        }
        (super::view::data_island(&serde_json::json!({ "events": events, "after": after })))
        script src=(super::assets::url("live.js")) {}
        script src=(super::assets::url("app-logs.js")) {}
    };
    Ok(super::view::layout(
        &state,
        &format!("{repo} {environment} logs"),
        &user,
        "apps",
        body,
    )
    .into_response())
}

/// Server-sent `line` events for the page.
pub(super) async fn events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((owner, name, environment)): Path<(String, String, String)>,
    Query(query): Query<LogsQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, HttpError> {
    caller.api(Role::Viewer)?;
    let after = super::resume_after(&headers, query.after);
    let lines = follow(
        state,
        format!("{owner}/{name}"),
        environment,
        after,
        i64::MIN,
        true,
    );
    let stream = futures::StreamExt::map(lines, |line| {
        Ok(SseEvent::default()
            .event("line")
            .id(line.id.to_string())
            .data(to_json(&line).trim_end()))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_rfc3339_or_unix_seconds() {
        assert_eq!(parse_since(Some("10")).unwrap(), 10_000_000_000);
        assert_eq!(
            parse_since(Some("1970-01-01T00:00:01.5Z")).unwrap(),
            1_500_000_000
        );
        assert!(parse_since(Some("yesterday")).is_err());
        assert_eq!(parse_since(None).unwrap(), i64::MIN);
    }
}
