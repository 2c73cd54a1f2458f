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
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::api::time;
use super::{AppState, HttpError, all_logs, same};
use crate::deploy::format_elapsed;
use crate::logs::Event;
use crate::store::{Deployment, LogLine, Service, StepRun, StepState};

#[derive(Debug, Deserialize)]
pub(super) struct PageQuery {
    token: Option<String>,
    after: Option<i64>,
}

async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    id: i64,
    token: Option<&str>,
) -> Result<Deployment, HttpError> {
    let deployment = state.engine.store.deployment(id).await?;
    let allowed = match &deployment {
        Some(d) => token.is_some_and(|t| same(t, &d.token)) || state.has_api_token(headers),
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
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(query): Query<PageQuery>,
) -> Result<Markup, HttpError> {
    let deployment = authorize(&state, &headers, id, query.token.as_deref()).await?;
    let steps = state.engine.store.steps(id).await?;
    let services = state.engine.store.services(id).await?;
    let lines = all_logs(&*state.engine.store, id, 0).await?;
    Ok(render(
        &deployment,
        &steps,
        &services,
        &lines,
        query.token.as_deref().unwrap_or_default(),
    ))
}

fn state_class(state: &str) -> &'static str {
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

fn render(
    deployment: &Deployment,
    steps: &[StepRun],
    services: &[Service],
    lines: &[LogLine],
    token: &str,
) -> Markup {
    let mut servers: Vec<&str> = Vec::new();
    let mut rows: Vec<(i64, &str)> = Vec::new();
    for step in steps {
        if !servers.contains(&step.server.as_str()) {
            servers.push(&step.server);
        }
        if !rows.iter().any(|(i, _)| *i == step.step_index) {
            rows.push((step.step_index, &step.step));
        }
    }
    let duration = match (deployment.started_at, deployment.finished_at) {
        (Some(s), Some(f)) => format_elapsed(Duration::from_millis((f - s).max(0) as u64)),
        _ => String::new(),
    };
    let last_seq = lines.last().map_or(0, |l| l.seq);
    let title = format!(
        "{} · {} · {}",
        deployment.repo, deployment.environment, deployment.task
    );
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — dropship" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { (deployment.repo) " → " (deployment.environment) }
                    p.meta {
                        "task " code { (deployment.task) } " · ref " code { (deployment.git_ref) }
                        " · " code title=(deployment.sha) { (deployment.sha.get(..7).unwrap_or(&deployment.sha)) }
                        @if let Some(creator) = &deployment.creator { " · by " (creator) }
                        " · created " (time(deployment.created_at))
                    }
                    p {
                        span #state class={"badge " (state_class(deployment.state.as_str()))} { (deployment.state.as_str()) }
                        " " span #description { (deployment.state_description.as_deref().unwrap_or("")) }
                        @if !duration.is_empty() { " " span #duration.meta { "· took " (duration) } }
                    }
                    @if let Some(url) = &deployment.environment_url {
                        p { "environment: " a href=(url) { (url) } }
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
    }
}

fn log_line(line: &LogLine) -> Markup {
    html! {
        span class={"line " (line.stream)} data-seq=(line.seq) {
            span.server { (line.server.as_deref().unwrap_or("dropship")) }
            " " (line.line) "\n"
        }
    }
}

const STYLE: &str = r#"
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1rem;color:#1b1f24;background:#fff}
h1{font-size:1.3rem;margin:.2rem 0}h2{font-size:1.05rem;margin:1.2rem 0 .4rem}
.meta{color:#57606a;margin:.2rem 0}code{font-size:.9em}
.badge{display:inline-block;padding:.1rem .5rem;border-radius:1rem;font-weight:600;color:#fff;background:#8c959f}
.ok{background:#dafbe1}.bad{background:#ffebe9}.run{background:#fff8c5}.wait{background:#f6f8fa}
.badge.ok{background:#1a7f37}.badge.bad{background:#cf222e}.badge.run{background:#9a6700}
table{border-collapse:collapse;width:100%;overflow-x:auto;display:block}th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;white-space:nowrap}
pre{background:#0d1117;color:#e6edf3;padding:.7rem;border-radius:6px;overflow-x:auto;font-size:13px;line-height:1.4}
.line.stderr{color:#ffa198}.line.dropship{color:#79c0ff}.server{color:#8b949e;display:inline-block;min-width:6ch}
"#;

const SCRIPT: &str = r#"
(function(){
  if (FINAL) return;
  const log=document.getElementById('log');
  const cls=s=>({success:'ok',failure:'bad',error:'bad',timed_out:'bad',running:'run'}[s]||'wait');
  const src=new EventSource('/deployments/'+DEPLOYMENT+'/events?token='+encodeURIComponent(TOKEN)+'&after='+AFTER);
  src.addEventListener('log',e=>{const l=JSON.parse(e.data);if(l.seq<=AFTER)return;AFTER=l.seq;
    const s=document.createElement('span');s.className='line '+l.stream;s.dataset.seq=l.seq;
    const v=document.createElement('span');v.className='server';v.textContent=l.server||'dropship';
    s.appendChild(v);s.appendChild(document.createTextNode(' '+l.line+'\n'));log.appendChild(s);});
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
    if(['success','failure','error'].includes(s.state)){src.close();}});
})();
"#;

/// Server-sent events for one deployment: `log`, `step` and `state`, ending after the final
/// state. `after` (or `Last-Event-ID`) resumes the log after that line.
pub(super) async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(query): Query<PageQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, HttpError> {
    let deployment = authorize(&state, &headers, id, query.token.as_deref()).await?;
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

/// Feeds one SSE client until the deployment ends or the client leaves.
async fn follow(
    state: AppState,
    deployment: Deployment,
    mut after: i64,
    sender: mpsc::Sender<SseEvent>,
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
        if sender.send(log_event(&line)).await.is_err() {
            return;
        }
    }
    let current = match state.engine.store.deployment(id).await {
        Ok(Some(d)) => d,
        _ => return,
    };
    if current.state.is_final() {
        let data =
            serde_json::json!({ "state": current.state, "description": current.state_description });
        let _ = sender
            .send(
                SseEvent::default()
                    .event("state")
                    .json_data(data)
                    .unwrap_or_default(),
            )
            .await;
        return;
    }
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(_)) => {
                for line in catch_up(after).await {
                    after = line.seq;
                    if sender.send(log_event(&line)).await.is_err() {
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
        let sse = match &*event {
            Event::Log(line) if line.seq > after => {
                after = line.seq;
                log_event(line)
            }
            Event::Log(_) => continue,
            Event::Step(step) => SseEvent::default()
                .event("step")
                .json_data(step)
                .unwrap_or_default(),
            Event::State {
                state: deployment_state,
                description,
                ..
            } => {
                let data =
                    serde_json::json!({ "state": deployment_state, "description": description });
                let event = SseEvent::default()
                    .event("state")
                    .json_data(data)
                    .unwrap_or_default();
                if deployment_state.is_final() {
                    let _ = sender.send(event).await;
                    return;
                }
                event
            }
        };
        if sender.send(sse).await.is_err() {
            return;
        }
    }
}
