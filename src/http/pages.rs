//! The deployment page (`/deployments/{id}`): steps × servers and the log, rendered on the
//! server and kept live over server-sent events (`/deployments/{id}/events`).
//!
//! The page is opened from the status's `log_url`, whose token grants access to this one
//! deployment; an API bearer token works too.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::api::time;
use axum::response::{IntoResponse, Response};

use super::auth::{Caller, User};
use super::{AppState, HttpError, all_logs, same};
use crate::config::Role;
use crate::deploy::format_elapsed;
use crate::logs::Event;
use crate::store::{Deployment, LogLine, Service, StepRun, StepState};

#[derive(Debug, Deserialize)]
pub(super) struct PageQuery {
    token: Option<String>,
    after: Option<i64>,
}

/// The deployment, if the link's token is its own or the caller may view deployments.
async fn authorize(
    state: &AppState,
    caller: &Caller,
    id: i64,
    token: Option<&str>,
) -> Result<Deployment, HttpError> {
    let deployment = state.engine.store.deployment(id).await?;
    let signed_in = caller.0.as_ref().is_some_and(|u| u.may(Role::Viewer));
    let allowed = match &deployment {
        Some(d) => token.is_some_and(|t| same(t, &d.token)) || signed_in,
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
    let steps = state.engine.store.steps(id).await?;
    let services = state.engine.store.services(id).await?;
    let lines = all_logs(&*state.engine.store, id, 0).await?;
    let body = render(
        &deployment,
        &steps,
        &services,
        &lines,
        query.token.as_deref().unwrap_or_default(),
        caller.0.as_ref(),
        &state.engine.config.github_web_url(),
    );
    Ok(match caller.0.as_ref() {
        Some(user) => {
            super::dashboard::layout(&format!("deployment {id}"), user, "deployments", body)
        }
        None => super::dashboard::bare(&format!("deployment {id}"), body),
    }
    .into_response())
}

/// The CSS class of a deployment or step state.
pub(super) fn state_class(state: &str) -> &'static str {
    match state {
        "success" => "ok",
        "failure" | "error" | "timed_out" => "bad",
        "running" => "run",
        _ => "wait",
    }
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

#[allow(clippy::too_many_arguments)]
fn render(
    deployment: &Deployment,
    steps: &[StepRun],
    services: &[Service],
    lines: &[LogLine],
    token: &str,
    user: Option<&User>,
    github_web: &str,
) -> Markup {
    let (servers, rows) = crate::store::grid_axes(steps);
    let duration = match (deployment.started_at, deployment.finished_at) {
        (Some(s), Some(f)) => format_elapsed(Duration::from_millis((f - s).max(0) as u64)),
        _ => String::new(),
    };
    let last_seq = lines.last().map_or(0, |l| l.seq);
    let deployer = user.is_some_and(|u| u.may(Role::Deployer));
    let repo_url = format!("{github_web}/{}", deployment.repo);
    html! {
        header {
            h1 { (deployment.repo) " → " (deployment.environment) }
            p.meta {
                "task " code { (deployment.task) } " · ref " code { (deployment.git_ref) }
                " · " a href={(repo_url) "/commit/" (deployment.sha)} { code title=(deployment.sha) { (deployment.sha.get(..7).unwrap_or(&deployment.sha)) } }
                @if let Some(creator) = &deployment.creator { " · by " (creator) }
                " · created " (time(deployment.created_at))
            }
            p {
                span #state class={"badge " (state_class(deployment.state.as_str()))} { (deployment.state.as_str()) }
                " " span #description { (deployment.state_description.as_deref().unwrap_or("")) }
                @if !duration.is_empty() { " " span #duration.meta { "· took " (duration) } }
            }
            p.meta {
                @if let Some(url) = &deployment.environment_url {
                    "environment: " a href=(url) { (url) } " · "
                }
                "GitHub: " a href={(repo_url) "/deployments/" (deployment.environment)} { "deployments" }
                " · " a href={(repo_url) "/commit/" (deployment.sha)} { "commit" }
            }
            @if deployer {
                div.actions {
                    @if !deployment.state.is_final() {
                        form method="post" action={"/deployments/" (deployment.id) "/cancel"} {
                            button #cancel type="submit" { "Cancel" }
                        }
                    }
                    form method="post" action={"/deployments/" (deployment.id) "/redeploy"} {
                        button #redeploy type="submit" { "Redeploy this version" }
                    }
                }
            }
        }
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
        @if !services.is_empty() {
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
        section {
            h2 { "Log" }
            input #filter type="search" placeholder="filter the log (text or server)" autocomplete="off";
            pre #log {
                @for line in lines {
                    (log_line(line))
                }
            }
        }
        script {
            (PreEscaped(format!(
                "const DEPLOYMENT={id};const TOKEN={token};let AFTER={last_seq};const FINAL={final_state};",
                id = deployment.id,
                token = serde_json::to_string(token).unwrap_or_default(),
                final_state = deployment.state.is_final(),
            )))
            (PreEscaped(SCRIPT))
        }
    }
}

/// A stable color per server name, so each server's lines are told apart at a glance.
fn server_hue(server: &str) -> u32 {
    server
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
        % 360
}

fn log_line(line: &LogLine) -> Markup {
    html! {
        span class={"line " (line.stream)} data-seq=(line.seq) {
            span.server style={"color:hsl(" (server_hue(line.server.as_deref().unwrap_or("dropship"))) ",70%,70%)"} { (line.server.as_deref().unwrap_or("dropship")) }
            " " (line.line) "\n"
        }
    }
}

const SCRIPT: &str = r#"
(function(){
  const log=document.getElementById('log');
  const filter=document.getElementById('filter');
  const hue=n=>{let h=7;for(const c of new TextEncoder().encode(n)){h=(Math.imul(h,31)+c)>>>0;}return h%360;};
  const show=s=>{const q=filter.value.toLowerCase();s.hidden=q!==''&&!s.textContent.toLowerCase().includes(q);};
  filter.addEventListener('input',()=>{for(const s of log.children){show(s);}});
  if (FINAL) return;
  const cls=s=>({success:'ok',failure:'bad',error:'bad',timed_out:'bad',running:'run'}[s]||'wait');
  const src=new EventSource('/deployments/'+DEPLOYMENT+'/events?token='+encodeURIComponent(TOKEN)+'&after='+AFTER);
  src.addEventListener('log',e=>{const l=JSON.parse(e.data);if(l.seq<=AFTER)return;AFTER=l.seq;
    const s=document.createElement('span');s.className='line '+l.stream;s.dataset.seq=l.seq;
    const v=document.createElement('span');v.className='server';const n=l.server||'dropship';v.textContent=n;v.style.color='hsl('+hue(n)+',70%,70%)';
    s.appendChild(v);s.appendChild(document.createTextNode(' '+l.line+'\n'));show(s);log.appendChild(s);});
  src.addEventListener('step',e=>{const s=JSON.parse(e.data);const grid=document.getElementById('grid');
    let head=grid.tHead.rows[0];
    if(!head.querySelector('[data-server="'+CSS.escape(s.server)+'"]')){const th=document.createElement('th');th.dataset.server=s.server;th.textContent=s.server;head.appendChild(th);
      for(const r of grid.tBodies[0].rows){const td=document.createElement('td');td.id='cell-'+r.dataset.step+'-'+s.server;r.appendChild(td);}}
    let row=grid.tBodies[0].querySelector('tr[data-step="'+s.step_index+'"]');
    if(!row){row=grid.tBodies[0].insertRow();row.dataset.step=s.step_index;const th=document.createElement('th');th.textContent=s.step;row.appendChild(th);
      for(const h of Array.from(head.cells).slice(1)){const td=document.createElement('td');td.id='cell-'+s.step_index+'-'+h.dataset.server;row.appendChild(td);}}
    const cell=document.getElementById('cell-'+s.step_index+'-'+s.server);
    if(cell){cell.className=cls(s.state);cell.textContent=s.state.replace('_',' ')+(s.exit_code&&s.state!=='success'?' (exit '+s.exit_code+')':'');}});
  src.addEventListener('state',e=>{const s=JSON.parse(e.data);const b=document.getElementById('state');
    b.textContent=s.state;b.className='badge '+cls(s.state);document.getElementById('description').textContent=s.description||'';
    if(['success','failure','error','inactive'].includes(s.state)){src.close();const c=document.getElementById('cancel');if(c){c.closest('form').remove();}}});
})();
"#;

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
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .or(query.after)
        .unwrap_or(0);
    let (sender, receiver) = mpsc::channel::<SseEvent>(256);
    tokio::spawn(follow(state, deployment, resume, sender));
    let stream = futures::StreamExt::map(ReceiverStream::new(receiver), Ok);
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

/// Feeds one SSE client until the deployment ends or the client leaves.
async fn follow(
    state: AppState,
    deployment: Deployment,
    after: i64,
    sender: mpsc::Sender<SseEvent>,
) {
    let (events, mut receiver) = mpsc::channel::<Event>(256);
    tokio::spawn(feed(state, deployment, after, events));
    while let Some(event) = receiver.recv().await {
        if sender.send(sse_event(&event)).await.is_err() {
            return;
        }
    }
}

/// Sends a deployment's log lines after `after`, then new ones as they are stored, until the
/// deployment ends or the receiver leaves.
pub(super) async fn follow_lines(
    state: AppState,
    deployment: Deployment,
    after: i64,
    sender: mpsc::Sender<LogLine>,
) {
    let (events, mut receiver) = mpsc::channel::<Event>(256);
    tokio::spawn(feed(state, deployment, after, events));
    while let Some(event) = receiver.recv().await {
        if let Event::Log(line) = event {
            if sender.send(line).await.is_err() {
                return;
            }
        }
    }
}

/// Sends everything that happens to `deployment` (log lines after `after` first), in order
/// and without repeats, ending after its final state.
async fn feed(
    state: AppState,
    deployment: Deployment,
    mut after: i64,
    sender: mpsc::Sender<Event>,
) {
    // Subscribe before reading the store: lines stored meanwhile arrive on the bus too, and
    // `seq` drops the second copy.
    let mut events = state.engine.bus.subscribe();
    let id = deployment.id;
    let store = state.engine.store.clone();
    let catch_up = |after: i64| {
        let store = store.clone();
        async move { all_logs(&*store, id, after).await.unwrap_or_default() }
    };
    for line in catch_up(after).await {
        after = line.seq;
        if sender.send(Event::Log(line)).await.is_err() {
            return;
        }
    }
    let current = match state.engine.store.deployment(id).await {
        Ok(Some(d)) => d,
        _ => return,
    };
    if current.state.is_final() {
        let _ = sender
            .send(Event::State {
                deployment_id: id,
                state: current.state,
                description: current.state_description,
            })
            .await;
        return;
    }
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(_)) => {
                for line in catch_up(after).await {
                    after = line.seq;
                    if sender.send(Event::Log(line)).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Err(RecvError::Closed) => return,
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
