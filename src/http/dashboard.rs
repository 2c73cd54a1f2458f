//! The dashboard: server-rendered pages for people (deployments, environments, servers, apps,
//! the audit log), the login form and the buttons that act (cancel, redeploy, roll back, lock).
//! Every page needs a signed-in user; acting needs the `deployer` role, the audit log `admin`.

use std::time::Duration;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use super::api::{self, environment_list, parse_state, time};
use super::auth::{Caller, Refusal, SESSION_COOKIE, User, hash_token};
use super::{AppState, HttpError};
use crate::config::Role;
use crate::deploy::format_elapsed;
use crate::store::{Deployment, ListFilter, State as DeploymentState};

const STYLE: &str = r#"
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1150px;padding:0 1rem 2rem;color:#1b1f24;background:#fff}
nav{display:flex;flex-wrap:wrap;gap:.2rem 1rem;align-items:center;padding:.6rem 0;border-bottom:1px solid #d0d7de;margin-bottom:.8rem}
nav a{color:#1b1f24;text-decoration:none}nav a.on{font-weight:700;text-decoration:underline}
nav .who{margin-left:auto;color:#57606a}nav form{display:inline}
h1{font-size:1.3rem;margin:.2rem 0}h2{font-size:1.05rem;margin:1.2rem 0 .4rem}
.meta{color:#57606a;margin:.2rem 0}code{font-size:.9em}a{color:#0969da}
.badge{display:inline-block;padding:.1rem .5rem;border-radius:1rem;font-weight:600;color:#fff;background:#8c959f}
.ok{background:#dafbe1}.bad{background:#ffebe9}.run{background:#fff8c5}.wait{background:#f6f8fa}
.badge.ok{background:#1a7f37}.badge.bad{background:#cf222e}.badge.run{background:#9a6700}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%}th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;white-space:nowrap;vertical-align:top}
#grid{display:block;overflow-x:auto}
pre{background:#0d1117;color:#e6edf3;padding:.7rem;border-radius:6px;overflow-x:auto;font-size:13px;line-height:1.4}
.line.stderr{color:#ffa198}.line.dropship{color:#79c0ff}.server,.app{color:#8b949e;display:inline-block;min-width:6ch}
.actions{display:flex;flex-wrap:wrap;gap:.4rem;margin:.4rem 0}.actions form{display:inline}
button{font:inherit;padding:.25rem .7rem;border:1px solid #d0d7de;border-radius:6px;background:#f6f8fa;cursor:pointer}
input,select{font:inherit;padding:.25rem .4rem;border:1px solid #d0d7de;border-radius:6px;max-width:100%}
#filter{width:100%;margin:.3rem 0}
.filters{display:flex;flex-wrap:wrap;gap:.4rem;margin:.4rem 0}
.notice{padding:.5rem .8rem;border-radius:6px;background:#ddf4ff;margin:.6rem 0}.error{background:#ffebe9}
.login{max-width:22rem;margin:3rem auto}.login label{display:block;margin:.6rem 0 .2rem}.login input{width:100%}
"#;

fn document(title: &str, nav: Markup, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — dropship" }
                style { (PreEscaped(STYLE)) }
            }
            body { (nav) main { (body) } }
        }
    }
}

/// A page for a signed-in user, with the navigation.
pub(super) fn layout(title: &str, user: &User, active: &str, body: Markup) -> Markup {
    let link = |href: &str, name: &str, label: &str| {
        html! { a href=(href) class=[(active == name).then_some("on")] { (label) } }
    };
    let nav = html! {
        nav {
            strong { "dropship" }
            (link("/", "deployments", "Deployments"))
            (link("/environments", "environments", "Environments"))
            (link("/servers", "servers", "Servers"))
            (link("/apps", "apps", "Apps"))
            @if user.may(Role::Admin) { (link("/audit", "audit", "Audit")) }
            span.who {
                span #user { (user.name) } " (" (user.role.as_str()) ") "
                form method="post" action="/logout" { button type="submit" { "Sign out" } }
            }
        }
    };
    document(title, nav, body)
}

/// A page without navigation: one deployment opened from its `log_url`.
pub(super) fn bare(title: &str, body: Markup) -> Markup {
    document(title, html! {}, body)
}

fn state_badge(state: &str) -> Markup {
    html! { span class={"badge " (super::pages::state_class(state))} { (state) } }
}

fn took(deployment: &Deployment) -> String {
    match (deployment.started_at, deployment.finished_at) {
        (Some(start), Some(end)) => {
            format_elapsed(Duration::from_millis((end - start).max(0) as u64))
        }
        (Some(_), None) => "running".into(),
        _ => String::new(),
    }
}

fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

// ---- login ----

#[derive(Debug, Deserialize)]
pub(super) struct LoginQuery {
    next: Option<String>,
}

/// Only a path on this site: never another host (`//evil`, `https://...`).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(next) if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') => {
            next.to_string()
        }
        _ => "/".into(),
    }
}

fn login_page(next: &str, error: Option<&str>) -> Markup {
    document(
        "sign in",
        html! {},
        html! {
            div.login {
                h1 { "Sign in to dropship" }
                @if let Some(error) = error { p.notice.error #error { (error) } }
                form method="post" action="/login" {
                    input type="hidden" name="next" value=(next);
                    label for="name" { "Name" }
                    input #name name="name" autocomplete="username" required;
                    label for="password" { "Token" }
                    input #password name="password" type="password" autocomplete="current-password" required;
                    p { button #login type="submit" { "Sign in" } }
                }
                p.meta { "Your name and token are in the operator's config ([[api.users]]); "
                    code { "dropship token NAME" } " makes one." }
            }
        },
    )
}

pub(super) async fn login_form(Query(query): Query<LoginQuery>) -> Markup {
    login_page(&safe_next(query.next.as_deref()), None)
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    name: String,
    password: String,
    next: Option<String>,
}

pub(super) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: CookieJar,
    Form(form): Form<LoginForm>,
) -> Result<Response, HttpError> {
    let next = safe_next(form.next.as_deref());
    if !state.same_origin(&headers) {
        return Err(HttpError::new(
            StatusCode::FORBIDDEN,
            "this form was posted from another site",
        ));
    }
    let user = state
        .user_by_token(&form.password)
        .filter(|user| user.name == form.name.trim());
    let Some(user) = user else {
        state
            .audit(
                form.name.trim(),
                "login refused",
                "dashboard",
                "wrong name or token",
            )
            .await;
        let page = login_page(&next, Some("Wrong name or token."));
        return Ok((StatusCode::UNAUTHORIZED, page).into_response());
    };
    let cookie = state.start_session(&user).await?;
    state.audit(&user.name, "login", "dashboard", "").await;
    Ok((jar.add(cookie), Redirect::to(&next)).into_response())
}

pub(super) async fn logout(
    State(state): State<AppState>,
    jar: CookieJar,
) -> Result<Response, HttpError> {
    if let Some(cookie) = jar.get(SESSION_COOKIE) {
        state
            .engine
            .store
            .delete_session(&hash_token(cookie.value()))
            .await?;
    }
    let jar = jar.remove(Cookie::build(SESSION_COOKIE).path("/"));
    Ok((jar, Redirect::to("/login")).into_response())
}

// ---- pages ----

#[derive(Debug, Deserialize)]
pub(super) struct DeploymentsQuery {
    repo: Option<String>,
    environment: Option<String>,
    state: Option<String>,
}

pub(super) async fn deployments(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<DeploymentsQuery>,
) -> Result<Response, HttpError> {
    let user = match caller.page(Role::Viewer, "/") {
        Ok(user) => user,
        Err(refusal) => return Ok(refusal.into_response()),
    };
    let filter = ListFilter {
        repo: query.repo.clone().filter(|r| !r.is_empty()),
        environment: query.environment.clone().filter(|e| !e.is_empty()),
        state: parse_state(query.state.as_deref())?,
        limit: 100,
    };
    let list = state.engine.store.list_deployments(&filter).await?;
    let states = [
        "queued", "running", "success", "failure", "error", "inactive",
    ];
    let body = html! {
        h1 { "Deployments" }
        form.filters method="get" action="/" {
            input name="repo" placeholder="owner/repo" value=[query.repo.as_deref()];
            input name="environment" placeholder="environment" value=[query.environment.as_deref()];
            select name="state" {
                option value="" { "any state" }
                @for s in states {
                    option value=(s) selected[query.state.as_deref() == Some(s)] { (s) }
                }
            }
            button type="submit" { "Filter" }
        }
        div.scroll {
            table #deployments {
                thead { tr { th { "#" } th { "repo → environment" } th { "task" } th { "ref" } th { "by" } th { "result" } th { "took" } th { "created" } } }
                tbody {
                    @for d in &list {
                        tr data-id=(d.id) {
                            td { a href={"/deployments/" (d.id)} { (d.id) } }
                            td { (d.repo) " → " (d.environment) }
                            td { code { (d.task) } }
                            td { code { (d.git_ref) } " " code.meta { (short(&d.sha)) } }
                            td { (d.creator.as_deref().unwrap_or("")) }
                            td { (state_badge(d.state.as_str())) }
                            td { (took(d)) }
                            td.meta { (time(d.created_at)) }
                        }
                    }
                }
            }
        }
        @if list.is_empty() { p.meta { "No deployments yet." } }
    };
    Ok(layout("deployments", &user, "deployments", body).into_response())
}

pub(super) async fn environments(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, HttpError> {
    let user = match caller.page(Role::Viewer, "/environments") {
        Ok(user) => user,
        Err(refusal) => return Ok(refusal.into_response()),
    };
    let deployer = user.may(Role::Deployer);
    let environments = environment_list(&state).await?;
    let mut sections = Vec::new();
    for environment in &environments {
        // Versions that ran here and may be deployed again.
        let earlier: Vec<Deployment> = state
            .engine
            .store
            .list_deployments(&ListFilter {
                repo: Some(environment.repo().to_string()),
                environment: Some(environment.name().to_string()),
                limit: 30,
                ..Default::default()
            })
            .await?
            .into_iter()
            .filter(|d| {
                matches!(
                    d.state,
                    DeploymentState::Success | DeploymentState::Inactive
                ) && d.task == "deploy"
            })
            .take(5)
            .collect();
        sections.push((environment, earlier));
    }
    let body = html! {
        h1 { "Environments" }
        @if environments.is_empty() { p.meta { "No environment has seen a deployment yet." } }
        @for (environment, earlier) in &sections {
            @let (repo, name) = (environment.repo(), environment.name());
            section.environment data-repo=(repo) data-environment=(name) {
                h2 { (repo) " → " (name) }
                p {
                    @match environment.live() {
                        Some(live) => {
                            "runs " code { (live.git_ref) } " " code { (short(&live.sha)) }
                            " since " (live.finished_at.as_deref().unwrap_or_default())
                            " (" a href={"/deployments/" (live.id)} { "deployment " (live.id) } ")"
                        }
                        None => { "nothing live" }
                    }
                    @if let Some(url) = environment.url() { " · " a href=(url) { (url) } }
                }
                p.meta {
                    "latest: " a href={"/deployments/" (environment.latest().id)} { (environment.latest().id) }
                    " " (state_badge(environment.latest().state.as_str()))
                }
                @if let Some(lock) = environment.lock() {
                    p.notice.lock { "🔒 locked by " strong { (lock.0) } ": " (lock.1) }
                }
                @if deployer {
                    div.actions {
                        form method="post" action={"/environments/" (repo) "/" (name) "/rollback"} {
                            button.rollback type="submit" { "Roll back" }
                        }
                        @if environment.lock().is_some() {
                            form method="post" action={"/environments/" (repo) "/" (name) "/unlock"} {
                                button type="submit" { "Unlock" }
                            }
                        } @else {
                            form method="post" action={"/environments/" (repo) "/" (name) "/lock"} {
                                input name="reason" placeholder="why lock?";
                                button type="submit" { "Lock" }
                            }
                        }
                    }
                }
                @if !earlier.is_empty() {
                    div.scroll {
                        table {
                            thead { tr { th { "version" } th { "deployed" } th { "by" } @if deployer { th {} } } }
                            tbody {
                                @for d in earlier {
                                    tr {
                                        td { code { (d.git_ref) } " " code { (short(&d.sha)) } }
                                        td { a href={"/deployments/" (d.id)} { (d.finished_at.map(time).unwrap_or_default()) } }
                                        td { (d.creator.as_deref().unwrap_or("")) }
                                        @if deployer {
                                            td {
                                                form method="post" action={"/deployments/" (d.id) "/redeploy"} {
                                                    button.redeploy type="submit" { "Redeploy" }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout("environments", &user, "environments", body).into_response())
}

pub(super) async fn servers(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, HttpError> {
    let user = match caller.page(Role::Viewer, "/servers") {
        Ok(user) => user,
        Err(refusal) => return Ok(refusal.into_response()),
    };
    let reports = state.engine.survey(api::SURVEY_LIMIT).await;
    let body = html! {
        h1 { "Servers" }
        div.scroll {
            table #servers {
                thead { tr { th { "server" } th { "reachable" } th { "host key" } th { "docker" } th { "apps" } } }
                tbody {
                    @for r in &reports {
                        tr {
                            td { strong { (r.name) } br; span.meta { (r.host) } }
                            td class=(if r.reachable { "ok" } else { "bad" }) { (if r.reachable { "yes" } else { "no" }) br; span.meta { (r.system) } }
                            td { (r.host_key) }
                            td {
                                @if let Some(version) = &r.docker_version { (version) }
                                @else if let Some(error) = &r.docker_error { span.meta { (error) } }
                                @else { span.meta { "—" } }
                            }
                            td {
                                @for app in &r.apps {
                                    a href={"/apps/" (app.repo) "/" (app.environment) "/logs"} { (app.repo) " " (app.environment) " " (app.app) }
                                    " " span.meta { (app.state) } br;
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout("servers", &user, "servers", body).into_response())
}

pub(super) async fn apps(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, HttpError> {
    let user = match caller.page(Role::Viewer, "/apps") {
        Ok(user) => user,
        Err(refusal) => return Ok(refusal.into_response()),
    };
    let apps = api::app_list(&state).await;
    let body = html! {
        h1 { "Apps" }
        @if apps.is_empty() { p.meta { "No containers of Dropship's are running." } }
        div.scroll {
            table #apps {
                thead { tr { th { "app" } th { "server" } th { "container" } th { "version" } th { "state" } th {} } }
                tbody {
                    @for a in &apps {
                        tr {
                            td { (a.app().repo) " → " (a.app().environment) " · " strong { (a.app().app) } }
                            td { (a.server()) }
                            td { code { (a.app().container) } }
                            td { code { (short(&a.app().sha)) } }
                            td { (a.app().state) " · " span.meta { (a.app().status) } }
                            td { a href={"/apps/" (a.app().repo) "/" (a.app().environment) "/logs"} { "logs" } }
                        }
                    }
                }
            }
        }
    };
    Ok(layout("apps", &user, "apps", body).into_response())
}

pub(super) async fn audit(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, HttpError> {
    let user = match caller.page(Role::Admin, "/audit") {
        Ok(user) => user,
        Err(refusal) => return Ok(refusal.into_response()),
    };
    let entries = state.engine.store.audit_log(500).await?;
    let body = html! {
        h1 { "Audit log" }
        div.scroll {
            table #audit {
                thead { tr { th { "when" } th { "who" } th { "what" } th { "on" } th { "detail" } } }
                tbody {
                    @for e in &entries {
                        tr { td.meta { (time(e.at)) } td { (e.actor) } td { (e.action) } td { (e.target) } td { (e.detail) } }
                    }
                }
            }
        }
    };
    Ok(layout("audit", &user, "audit", body).into_response())
}

// ---- actions ----

/// The user for a button press: a deployer, posting from these pages.
fn actor(state: &AppState, caller: Caller, headers: &HeaderMap) -> Result<User, Refusal> {
    if !state.same_origin(headers) {
        return Err(Refusal::Denied(HttpError::new(
            StatusCode::FORBIDDEN,
            "this form was posted from another site",
        )));
    }
    caller.page(Role::Deployer, "/")
}

/// What a button did, with a way back.
fn outcome(user: &User, result: Result<String, HttpError>, back: &str) -> Response {
    let (status, class, message) = match result {
        Ok(message) => (StatusCode::OK, "notice", message),
        Err(HttpError::Client(status, message)) => (status, "notice error", message),
        Err(error @ HttpError::Internal(_)) => return error.into_response(),
    };
    let body = html! {
        p #outcome class=(class) { (message) }
        p { a href=(back) { "← back" } }
    };
    (status, layout("done", user, "", body)).into_response()
}

fn message(
    result: Result<(StatusCode, axum::Json<api::ActionJson>), HttpError>,
) -> Result<String, HttpError> {
    result.map(|(_, json)| json.0.message().to_string())
}

/// The buttons on a deployment: `cancel` and `redeploy`.
pub(super) async fn deployment_action(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((id, action)): Path<(i64, String)>,
) -> Response {
    let user = match actor(&state, caller, &headers) {
        Ok(user) => user,
        Err(refusal) => return refusal.into_response(),
    };
    let result = match action.as_str() {
        "cancel" => message(api::cancel_as(&state, &user, id).await),
        "redeploy" => message(api::redeploy_as(&state, &user, id).await),
        other => Err(HttpError::not_found(format!("no action `{other}`"))),
    };
    outcome(&user, result, &format!("/deployments/{id}"))
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ActionForm {
    #[serde(default)]
    reason: String,
}

pub(super) async fn environment_action(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((owner, name, environment, action)): Path<(String, String, String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    let user = match actor(&state, caller, &headers) {
        Ok(user) => user,
        Err(refusal) => return refusal.into_response(),
    };
    let repo = format!("{owner}/{name}");
    let reason = form.reason;
    let result = match action.as_str() {
        "rollback" => message(api::rollback_as(&state, &user, &repo, &environment).await),
        "lock" => match api::lock_as(&state, &user, &repo, &environment, &reason).await {
            Ok(response) if response.status().is_success() => {
                Ok(format!("{repo} {environment} is locked"))
            }
            Ok(_) => Err(HttpError::new(
                StatusCode::CONFLICT,
                format!("{repo} {environment} is locked already"),
            )),
            Err(error) => Err(error),
        },
        "unlock" => api::unlock_as(&state, &user, &repo, &environment)
            .await
            .map(|_| format!("{repo} {environment} is unlocked")),
        other => Err(HttpError::not_found(format!("no action `{other}`"))),
    };
    outcome(&user, result, "/environments")
}
