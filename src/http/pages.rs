//! The deployment page (`/deployments/{id}`): steps × servers and the log, rendered on the
//! server and kept live over server-sent events (`/deployments/{id}/events`).
//!
//! The page is opened from the status's `log_url`, whose token grants access to this one
//! deployment; an API bearer token works too.

use std::convert::Infallible;
use std::time::Duration;

use super::live::{self, Next};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use maud::{Markup, html};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::view::time;
use axum::response::{IntoResponse, Response};

use super::auth::{Caller, User};
use super::view::{data_island, state_class};
use super::{AppState, HttpError};
use crate::config::Role;
use crate::deploy::format_elapsed;
use crate::logs::Event;
use crate::store::{Deployment, LogLine, Service, StepRun, StepState};

/// Log lines on the deployment page: the newest (or those before `before`), with a link to
/// earlier ones.
pub(super) const PAGE_LINES: i64 = 1000;

/// Log lines read from the store at a time by the event stream and the text log.
pub(super) const READ_LINES: i64 = 1000;

#[derive(Debug, Deserialize)]
pub(super) struct PageQuery {
    token: Option<String>,
    after: Option<i64>,
    /// The page shows the lines before this sequence number, and does not follow.
    before: Option<i64>,
}

/// The deployment, if the link's token is its own or the caller may view deployments.
async fn authorize(
    state: &AppState,
    caller: &Caller,
    id: i64,
    token: Option<&str>,
) -> Result<Deployment, HttpError> {
    let deployment = state.store.deployment(id).await?;
    let signed_in = caller.0.as_ref().is_some_and(|u| u.may(Role::Viewer));
    let allowed = match &deployment {
        Some(d) => token.is_some_and(|t| state.keys.verify_log_token(d.id, t)) || signed_in,
        None => false,
    };
    match (deployment, allowed) {
        (Some(d), true) => Ok(d),
        // The same answer for "no such deployment" and "wrong token", so ids cannot be probed.
        _ => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            format!("no deployment {id}, or the link's token is wrong"),
        )),
    }
}

/// Which part of the log a page shows.
#[derive(Debug)]
struct LogPage {
    lines: Vec<LogLine>,
    /// Lines exist before the first shown.
    earlier: bool,
    /// The page shows the newest lines (and follows new ones).
    newest: bool,
}

pub(super) async fn deployment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(query): Query<PageQuery>,
) -> Result<Response, HttpError> {
    if query.token.is_none() && caller.0.is_none() {
        // No link token and not signed in: sign in first, then come back.
        return Ok(caller
            .page(Role::Viewer, &format!("/deployments/{id}"))
            .err()
            .map_or_else(
                || StatusCode::NOT_FOUND.into_response(),
                IntoResponse::into_response,
            ));
    }
    let deployment = authorize(&state, &caller, id, query.token.as_deref()).await?;
    let steps = state.store.steps(id).await?;
    let services = state.store.services(id).await?;
    let store = &state.store;
    // One line more than shown: whether it exists says whether there are earlier lines.
    let mut lines = store
        .logs_before(id, query.before.unwrap_or(i64::MAX), PAGE_LINES + 1)
        .await?;
    let earlier = lines.len() as i64 > PAGE_LINES;
    if earlier {
        lines.remove(0);
    }
    let log = LogPage {
        lines,
        earlier,
        newest: query.before.is_none(),
    };
    let body = render(
        &deployment,
        &steps,
        &services,
        &log,
        query.token.as_deref(),
        caller.0.as_ref(),
        &state.config.github_web_url(),
    );
    Ok(match caller.0.as_ref() {
        Some(user) => super::view::layout(
            &state,
            &format!("deployment {id}"),
            user,
            "deployments",
            body,
        ),
        None => super::view::bare(&format!("deployment {id}"), body),
    }
    .into_response())
}

fn step_cell(step: &StepRun) -> String {
    let mut text = step.state.as_str().replace('_', " ");
    if let Some(code) = step.exit_code.filter(|_| step.state != StepState::Success) {
        text.push_str(&format!(" (exit {code})"));
    }
    if let (Some(start), Some(end)) = (step.started_at, step.finished_at) {
        text.push_str(&format!(
            " · {}",
            format_elapsed(Duration::from_millis((end - start).max(0) as u64))
        ));
    }
    text
}

fn render(
    deployment: &Deployment,
    steps: &[StepRun],
    services: &[Service],
    log: &LogPage,
    token: Option<&str>,
    user: Option<&User>,
    github_web: &str,
) -> Markup {
    let deployer = user.is_some_and(|u| u.may(Role::Deployer));
    let state = serde_json::json!({
        "deployment": deployment.id,
        "token": token,
        "after": log.lines.last().map_or(0, |l| l.seq),
        "final": deployment.state.is_final(),
        "live": log.newest,
    });
    html! {
        (summary(deployment, deployer, github_web))
        (steps_grid(steps))
        @if !services.is_empty() { (services_table(services)) }
        (log_section(deployment, log, token))
        (data_island(&state))
        script src=(super::assets::url("live.js")) {}
        script src=(super::assets::url("deployment.js")) {}
    }
}

/// The deployment's header: what, where, its state, its links and (for deployers) the
/// actions.
fn summary(deployment: &Deployment, deployer: bool, github_web: &str) -> Markup {
    let duration = match (deployment.started_at, deployment.finished_at) {
        (Some(s), Some(f)) => format_elapsed(Duration::from_millis((f - s).max(0) as u64)),
        _ => String::new(),
    };
    let (owner, name) = deployment.repo_parts();
    let repo_url = format!("{github_web}{}", super::paths::path(&[owner, name]));
    let sha = super::paths::path(&[&deployment.sha]);
    html! {
        header {
            h1 { (deployment.repo) " → " (deployment.environment) }
            p.meta {
                "task " code { (deployment.task) } " · ref " code #ref { (deployment.git_ref) }
                " · " a href={(repo_url) "/commit" (sha)} { code title=(deployment.sha) { (deployment.sha.short()) } }
                @if let Some(creator) = &deployment.creator { " · by " (creator) }
                " · created " (time(deployment.created_at))
            }
            @if let Some(about) = deployment.description.as_deref().filter(|d| !d.is_empty()) {
                p #about { (about) }
            }
            p {
                span #state class={"badge " (state_class(deployment.state.as_str()))} { (deployment.state.as_str()) }
                " " span #description { (deployment.state_description.as_deref().unwrap_or("")) }
                @if !duration.is_empty() { " " span #duration.meta { "· took " (duration) } }
            }
            p.meta {
                @if let Some(url) = &deployment.environment_url {
                    "environment: " span #environment-url { (super::view::url_link(url)) } " · "
                }
                "GitHub: " a href={(repo_url) "/deployments" (super::paths::path(&[&deployment.environment]))} { "deployments" }
                " · " a href={(repo_url) "/commit" (sha)} { "commit" }
            }
            @if deployer { (actions(deployment)) }
        }
    }
}

/// The deployer's buttons: cancel (while it runs), redeploy, resend its status.
fn actions(deployment: &Deployment) -> Markup {
    html! {
        div.actions {
            @if !deployment.state.is_final() {
                form method="post" action={"/deployments/" (deployment.id) "/cancel"} {
                    button #cancel type="submit" { "Cancel" }
                }
            }
            form method="post" action={"/deployments/" (deployment.id) "/redeploy"} {
                button #redeploy type="submit" { "Redeploy this version" }
            }
            @if deployment.github_id.is_some() {
                form method="post" action={"/deployments/" (deployment.id) "/resend"} {
                    button #resend type="submit" title="Post this deployment's state to GitHub again" { "Resend status to GitHub" }
                }
            }
        }
    }
}

/// The steps × servers grid, each cell a step's state on one server.
fn steps_grid(steps: &[StepRun]) -> Markup {
    let (servers, rows) = crate::store::grid_axes(steps);
    html! {
        section {
            h2 { "Steps" }
            table #grid {
                thead { tr { th { "step" } @for server in &servers { th data-server=(server) { (server) } } } }
                tbody {
                    @for (index, name) in &rows {
                        tr data-step=(index) {
                            th { (name) }
                            @for server in &servers {
                                @let cell = steps.iter().find(|s| s.step_index == *index && s.server == *server);
                                @match cell {
                                    Some(step) => td id={"cell-" (index) "-" (server)} class=(state_class(step.state.as_str())) { (step_cell(step)) },
                                    None => td id={"cell-" (index) "-" (server)} { "" },
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The compose services the deployment started.
fn services_table(services: &[Service]) -> Markup {
    html! {
        section {
            h2 { "Services" }
            table #services {
                thead { tr { th { "server" } th { "project" } th { "service" } th { "container" } th { "state" } } }
                tbody {
                    @for service in services {
                        tr {
                            td { (service.server) } td { (service.project) } td { (service.service) }
                            td { code { (service.container) } }
                            td class=(if service.state == "running" { "ok" } else { "bad" }) { (service.state) " · " (service.status) }
                        }
                    }
                }
            }
        }
    }
}

/// The page of log lines with links to earlier ones, the newest and the whole text; links to
/// other parts of this deployment carry the link's token on.
fn log_section(deployment: &Deployment, log: &LogPage, token: Option<&str>) -> Markup {
    let token_param = token.map(|t| {
        format!(
            "token={}",
            percent_encoding::utf8_percent_encode(t, percent_encoding::NON_ALPHANUMERIC)
        )
    });
    let page_url = |before: Option<i64>| {
        let mut params: Vec<String> = token_param.iter().cloned().collect();
        params.extend(before.map(|b| format!("before={b}")));
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{}", params.join("&"))
        };
        format!("/deployments/{}{query}", deployment.id)
    };
    let text_log = match &token_param {
        Some(param) => format!("/api/deployments/{}/log?{param}", deployment.id),
        None => format!("/api/deployments/{}/log", deployment.id),
    };
    html! {
        section {
            h2 { "Log" }
            p.meta {
                @if log.earlier {
                    @if let Some(first) = log.lines.first() {
                        a #earlier href=(page_url(Some(first.seq))) { "show earlier lines" } " · "
                    }
                }
                @if !log.newest { a #newest href=(page_url(None)) { "newest lines (live)" } " · " }
                a #text-log href=(text_log) { "the whole log as text" }
            }
            input #filter type="search" placeholder="filter the log (text or server)" autocomplete="off";
            pre #log {
                @for line in &log.lines {
                    (log_line(line))
                }
            }
        }
    }
}

/// A stable color (one of the stylesheet's 12 `hue-N` classes) per server name, so each
/// server's lines are told apart at a glance. `deployment.js` computes the same.
fn server_hue(server: &str) -> u32 {
    server
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
        % 12
}

fn log_line(line: &LogLine) -> Markup {
    let server = line.server.as_deref().unwrap_or("dropship");
    html! {
        span class={"line " (line.stream)} data-seq=(line.seq) {
            span class={"server hue-" (server_hue(server))} { (server) }
            " " (line.line) "\n"
        }
    }
}

/// Server-sent events for one deployment: `log`, `step` and `state`, ending after the final
/// state. `after` (or `Last-Event-ID`) resumes the log after that line.
pub(super) async fn events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(query): Query<PageQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, HttpError> {
    let deployment = authorize(&state, &caller, id, query.token.as_deref()).await?;
    let resume = super::resume_after(&headers, query.after);
    let stream = futures::StreamExt::map(follow(state, deployment, resume), |event| {
        Ok(sse_event(&event))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn log_event(line: &LogLine) -> SseEvent {
    SseEvent::default()
        .event("log")
        .id(line.seq.to_string())
        .json_data(line)
        .unwrap_or_default()
}

/// The SSE event for one thing that happened to a deployment.
fn sse_event(event: &Event) -> SseEvent {
    match event {
        Event::Log(line) => log_event(line),
        Event::Step(step) => SseEvent::default()
            .event("step")
            .json_data(step)
            .unwrap_or_default(),
        Event::State {
            state, description, ..
        } => SseEvent::default()
            .event("state")
            .json_data(serde_json::json!({ "state": state, "description": description }))
            .unwrap_or_default(),
    }
}

/// Everything that happens to `deployment` (log lines after `after` first), in order and
/// without repeats, ending after its final state. The task feeding it ends when the stream is
/// dropped (its client left), even while nothing happens.
pub(super) fn follow(state: AppState, deployment: Deployment, after: i64) -> ReceiverStream<Event> {
    let (sender, receiver) = mpsc::channel::<Event>(256);
    tokio::spawn(feed(state, deployment, after, sender));
    ReceiverStream::new(receiver)
}

/// Sends the stored lines after `after`, a page at a time, moving `after`. False when the
/// receiver left or the store failed.
async fn catch_up(
    state: &AppState,
    id: i64,
    after: &mut i64,
    sender: &mpsc::Sender<Event>,
) -> bool {
    let store = &state.store;
    let pages = crate::store::paged(
        *after,
        |after| store.logs(id, after, READ_LINES),
        |line| line.seq,
    );
    let each = |line: LogLine| {
        *after = line.seq;
        Some(Event::Log(line))
    };
    let what = format!("reading the log of deployment {id} for a live stream");
    live::send_stored(pages, sender, each, &what).await
}

/// [`catch_up`], then the deployment's state from the store: when final, sends it and returns
/// false (the feed ends), as it does when the receiver left or the store failed.
async fn catch_up_unless_final(
    state: &AppState,
    id: i64,
    after: &mut i64,
    sender: &mpsc::Sender<Event>,
) -> bool {
    if !catch_up(state, id, after, sender).await {
        return false;
    }
    let current = match state.store.deployment(id).await {
        Ok(Some(d)) => d,
        _ => return false,
    };
    if current.state.is_final() {
        let _ = sender
            .send(Event::State {
                deployment_id: id,
                state: current.state,
                description: current.state_description,
            })
            .await;
        return false;
    }
    true
}

async fn feed(
    state: AppState,
    deployment: Deployment,
    mut after: i64,
    sender: mpsc::Sender<Event>,
) {
    let _open = state.metrics.live_stream();
    // Subscribe before reading the store: lines stored meanwhile arrive on the bus too, and
    // `seq` drops the second copy.
    let mut events = state.bus.subscribe();
    let id = deployment.id;
    if !catch_up_unless_final(&state, id, &mut after, &sender).await {
        return;
    }
    loop {
        let event = match live::next(&mut events, &sender).await {
            Next::Item(event) => event,
            // The missed events may include the final state: look again.
            Next::Lagged => {
                if !catch_up_unless_final(&state, id, &mut after, &sender).await {
                    return;
                }
                continue;
            }
            Next::Ended => return,
        };
        if event.deployment_id() != id {
            continue;
        }
        let ends = match &*event {
            Event::Log(line) if line.seq <= after => continue,
            Event::Log(line) => {
                after = line.seq;
                false
            }
            Event::Step(_) => false,
            Event::State {
                state: deployment_state,
                ..
            } => deployment_state.is_final(),
        };
        if sender.send((*event).clone()).await.is_err() || ends {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_island_cannot_be_closed_by_its_text() {
        let island = data_island(&serde_json::json!({
            "token": "</script><script>document.title='pwned'</script><!--",
            "line": "a & b > c \u{2028}",
        }))
        .into_string();
        let inner = island
            .strip_prefix(r#"<script id="page-state" type="application/json">"#)
            .and_then(|s| s.strip_suffix("</script>"))
            .unwrap_or_else(|| panic!("{island}"));
        assert!(!inner.contains(['<', '>', '&']), "{inner}");
        let back: serde_json::Value = serde_json::from_str(inner).unwrap();
        assert_eq!(
            back["token"],
            "</script><script>document.title='pwned'</script><!--"
        );
        assert_eq!(back["line"], "a & b > c \u{2028}");
    }

    #[test]
    fn server_hues_match_the_scripts_classes() {
        // deployment.js computes the same: h = 7; h = h * 31 + byte (mod 2^32); h % 12.
        assert_eq!(server_hue("dropship"), {
            let mut h: u32 = 7;
            for b in "dropship".bytes() {
                h = h.wrapping_mul(31).wrapping_add(u32::from(b));
            }
            h % 12
        });
        assert!(server_hue("web-1") < 12);
    }
}
