//! The dashboard: server-rendered pages for people (deployments, environments, servers, apps,
//! the audit log), the login form and the buttons that act (cancel, redeploy, roll back, lock).
//! Every page needs a signed-in user; acting needs the `deployer` role, the audit log `admin`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use axum_extra::extract::cookie::{Cookie, CookieJar};
use maud::{Markup, html};
use serde::Deserialize;

use super::actions::{self, DeploymentAction, EnvironmentAction};
use super::api::{self, environment_list, parse_state};
use super::auth::{Caller, SESSION_COOKIE, User, hash_token};
use super::paths::environment_path;
use super::view::{document, layout, state_badge, time, url_link};
use super::{AppState, HttpError};
use crate::config::Role;
use crate::deploy::{Locking, format_elapsed};
use crate::store::{Deployment, ListFilter, State as DeploymentState};

fn took(deployment: &Deployment) -> String {
    match (deployment.started_at, deployment.finished_at) {
        (Some(start), Some(end)) => {
            format_elapsed(Duration::from_millis((end - start).max(0) as u64))
        }
        (Some(_), None) => "running".into(),
        _ => String::new(),
    }
}

// ---- login ----

#[derive(Debug, Deserialize)]
pub(super) struct LoginQuery {
    next: Option<String>,
}

/// Only a path on this site, else `/`: it starts with one `/` (not `//`, which browsers read
/// as another host), and holds only visible ASCII other than `\` (browsers read `/\host` as
/// `//host` and drop tabs and newlines, so `/\t/host` is `//host` too).
pub(super) fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(next)
            if next.starts_with('/')
                && !next[1..].starts_with(['/', '\\'])
                && next.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
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
    connection: Option<Extension<ConnectInfo<SocketAddr>>>,
    jar: CookieJar,
    Form(form): Form<LoginForm>,
) -> Result<Response, HttpError> {
    let next = safe_next(form.next.as_deref());
    let name = form.name.trim();
    let address = connection.map(|Extension(ConnectInfo(remote))| remote.ip());
    let now = std::time::Instant::now();
    if let Err(wait) = state.throttle.check(name, address, now) {
        let seconds = wait.as_secs().max(1);
        let message = format!(
            "Too many failed sign-ins for this name or from this address; try again in {seconds} s."
        );
        let page = login_page(&next, Some(&message));
        let retry_after = [(axum::http::header::RETRY_AFTER, seconds.to_string())];
        return Ok((StatusCode::TOO_MANY_REQUESTS, retry_after, page).into_response());
    }
    let user = state
        .user_by_token(&form.password)
        .filter(|user| user.name == name);
    let Some(user) = user else {
        let failure = state.throttle.failed(name, address, now);
        if let Some(detail) = failure.audit_detail(address) {
            state
                .audit(
                    &super::auth::shown_name(name),
                    "login refused",
                    "dashboard",
                    &detail,
                )
                .await;
        }
        let page = login_page(&next, Some("Wrong name or token."));
        return Ok((StatusCode::UNAUTHORIZED, page).into_response());
    };
    state.throttle.succeeded(name, address);
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
    let list = state.store.list_deployments(&filter).await?;
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
                            td { code { (d.git_ref) } " " code.meta { (d.sha.short()) } }
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
    Ok(layout(&state, "deployments", &user, "deployments", body).into_response())
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
        let earlier = earlier_versions(&state, environment).await?;
        sections.push(environment_section(environment, &earlier, deployer));
    }
    let body = html! {
        h1 { "Environments" }
        @if environments.is_empty() { p.meta { "No environment has seen a deployment yet." } }
        @for section in &sections { (section) }
    };
    Ok(layout(&state, "environments", &user, "environments", body).into_response())
}

/// The last five versions deployed to `environment` that succeeded: what may be deployed
/// again.
async fn earlier_versions(
    state: &AppState,
    environment: &api::EnvironmentJson,
) -> Result<Vec<Deployment>, HttpError> {
    Ok(state
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
        .collect())
}

/// One environment: what runs there, its latest deployment, its lock, and (for deployers) its
/// actions and earlier versions to redeploy.
fn environment_section(
    environment: &api::EnvironmentJson,
    earlier: &[Deployment],
    deployer: bool,
) -> Markup {
    let (repo, name) = (environment.repo(), environment.name());
    html! {
        section.environment data-repo=(repo) data-environment=(name) {
            h2 { (repo) " → " (name) }
            p {
                @match environment.live() {
                    Some(live) => {
                        "runs " code { (live.git_ref) } " " code { (live.sha.short()) }
                        " since " (live.finished_at.as_deref().unwrap_or_default())
                        " (" a href={"/deployments/" (live.id)} { "deployment " (live.id) } ")"
                    }
                    None => { "nothing live" }
                }
                @if let Some(url) = environment.url() { " · " (url_link(url)) }
            }
            p.meta {
                "latest: " a href={"/deployments/" (environment.latest().id)} { (environment.latest().id) }
                " " (state_badge(environment.latest().state.as_str()))
            }
            @if let Some(lock) = environment.lock() {
                p.notice.lock {
                    "🔒 locked by " strong { (lock.0) } ": " (lock.1)
                    @if let Some(until) = lock.2 { " (until " (until) ")" }
                }
            }
            @if deployer { (environment_actions(repo, name, environment.lock().is_some())) }
            @if !earlier.is_empty() { (earlier_table(earlier, deployer)) }
        }
    }
}

/// Roll back, and lock or unlock.
fn environment_actions(repo: &str, name: &str, locked: bool) -> Markup {
    html! {
        div.actions {
            form method="post" action=(environment_path("/environments", repo, name, "/rollback")) {
                button.rollback type="submit" { "Roll back" }
            }
            @if locked {
                form method="post" action=(environment_path("/environments", repo, name, "/unlock")) {
                    button type="submit" { "Unlock" }
                }
            } @else {
                form method="post" action=(environment_path("/environments", repo, name, "/lock")) {
                    input name="reason" placeholder="why lock?";
                    input name="for" placeholder="for (2h; empty: until unlocked)" size="10";
                    button type="submit" { "Lock" }
                }
            }
        }
    }
}

/// Earlier versions, each with a redeploy button for deployers.
fn earlier_table(earlier: &[Deployment], deployer: bool) -> Markup {
    html! {
        div.scroll {
            table {
                thead { tr { th { "version" } th { "deployed" } th { "by" } @if deployer { th {} } } }
                tbody {
                    @for d in earlier {
                        tr {
                            td { code { (d.git_ref) } " " code { (d.sha.short()) } }
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

pub(super) async fn servers(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, HttpError> {
    let user = match caller.page(Role::Viewer, "/servers") {
        Ok(user) => user,
        Err(refusal) => return Ok(refusal.into_response()),
    };
    let reports = state.servers.survey(api::SURVEY_LIMIT).await;
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
                                    a href=(environment_path("/apps", &app.repo, &app.environment, "/logs")) { (app.repo) " " (app.environment) " " (app.app) }
                                    " " span.meta { (app.state) } br;
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout(&state, "servers", &user, "servers", body).into_response())
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
                            td { code { (a.app().sha.short()) } }
                            td { (a.app().state) " · " span.meta { (a.app().status) } }
                            td { a href=(environment_path("/apps", &a.app().repo, &a.app().environment, "/logs")) { "logs" } }
                        }
                    }
                }
            }
        }
    };
    Ok(layout(&state, "apps", &user, "apps", body).into_response())
}

pub(super) async fn audit(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, HttpError> {
    let user = match caller.page(Role::Admin, "/audit") {
        Ok(user) => user,
        Err(refusal) => return Ok(refusal.into_response()),
    };
    let entries = state.store.audit_log(500).await?;
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
    Ok(layout(&state, "audit", &user, "audit", body).into_response())
}

// ---- actions ----

/// What a button did, with a way back.
fn outcome(
    state: &AppState,
    user: &User,
    result: Result<String, HttpError>,
    back: &str,
) -> Response {
    let (status, class, message) = match result {
        Ok(message) => (StatusCode::OK, "notice", message),
        Err(HttpError::Client(status, message)) => (status, "notice error", message),
        Err(error @ HttpError::Internal(_)) => return error.into_response(),
    };
    let body = html! {
        p #outcome class=(class) { (message) }
        p { a href=(back) { "← back" } }
    };
    (status, layout(state, "done", user, "", body)).into_response()
}

fn message(result: Result<actions::Done, HttpError>) -> Result<String, HttpError> {
    result.map(|done| done.message)
}

/// The buttons on a deployment: `cancel`, `redeploy` and `resend`.
pub(super) async fn deployment_action(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, action)): Path<(i64, String)>,
) -> Response {
    // A deployer. (The router's cross-origin check has refused presses posted from other
    // sites already.)
    let user = match caller.page(Role::Deployer, "/") {
        Ok(user) => user,
        Err(refusal) => return refusal.into_response(),
    };
    let result = match DeploymentAction::parse(&action) {
        Some(DeploymentAction::Cancel) => message(actions::cancel(&state, &user, id).await),
        Some(DeploymentAction::Redeploy) => message(actions::redeploy(&state, &user, id).await),
        Some(DeploymentAction::Resend) => message(actions::resend(&state, &user, id).await),
        None => Err(HttpError::not_found(format!("no action `{action}`"))),
    };
    outcome(&state, &user, result, &format!("/deployments/{id}"))
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ActionForm {
    #[serde(default)]
    reason: String,
    /// How long a lock lasts; empty: until unlocked.
    #[serde(default, rename = "for")]
    for_: Option<String>,
}

pub(super) async fn environment_action(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name, environment, action)): Path<(String, String, String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    // A deployer. (The router's cross-origin check has refused presses posted from other
    // sites already.)
    let user = match caller.page(Role::Deployer, "/") {
        Ok(user) => user,
        Err(refusal) => return refusal.into_response(),
    };
    let repo = format!("{owner}/{name}");
    let reason = form.reason;
    let result = match EnvironmentAction::parse(&action) {
        Some(EnvironmentAction::Rollback) => {
            message(actions::rollback(&state, &user, &repo, &environment).await)
        }
        Some(EnvironmentAction::Lock) => {
            let locked = match actions::lock_for(form.for_.as_deref()) {
                Ok(duration) => {
                    actions::lock(&state, &user, (&repo, &environment), &reason, duration).await
                }
                Err(error) => Err(error),
            };
            match locked {
                Ok(Locking::Locked(_)) => Ok(format!("{repo} {environment} is locked")),
                Ok(Locking::Held(_)) => Err(HttpError::new(
                    StatusCode::CONFLICT,
                    format!("{repo} {environment} is locked already"),
                )),
                Err(error) => Err(error),
            }
        }
        Some(EnvironmentAction::Unlock) => actions::unlock(&state, &user, &repo, &environment)
            .await
            .map(|()| format!("{repo} {environment} is unlocked")),
        None => Err(HttpError::not_found(format!("no action `{action}`"))),
    };
    outcome(&state, &user, result, "/environments")
}

#[cfg(test)]
mod tests {
    use super::super::view::web_url;
    use super::*;

    #[test]
    fn only_web_urls_become_links() {
        for url in ["https://shop.example.com/a?b=1", "http://127.0.0.1:8080"] {
            assert_eq!(web_url(url), Some(url));
        }
        for url in [
            "javascript:document.title='pwned'",
            "JavaScript:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "//evil.com",
            "/relative",
            "https:evil.com",
            " https://a.example",
        ] {
            assert_eq!(web_url(url), None, "{url}");
            let shown = url_link(url).into_string();
            assert!(!shown.contains("href"), "{shown}");
        }
        let shown = url_link("https://a.example/\"><script>").into_string();
        assert!(!shown.contains("<script>"), "{shown}");
    }

    #[test]
    fn next_is_a_path_on_this_site() {
        for next in [
            "//evil.com",
            "/\t/evil.com",
            "/\\evil.com",
            "/\n/evil.com",
            "https:evil.com",
            "https://evil.com",
            "javascript:alert(1)",
            "evil.com",
            "/ /evil.com",
            "/é",
            "",
        ] {
            assert_eq!(safe_next(Some(next)), "/", "{next:?}");
        }
        for next in [
            "/",
            "/environments?repo=a%2Fb",
            "/%09/evil.com",
            "/deployments/1",
        ] {
            assert_eq!(safe_next(Some(next)), next);
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(
            environment_path("/apps", "acme/shop", "</script>/x?y", "/logs"),
            "/apps/acme/shop/%3C%2Fscript%3E%2Fx%3Fy/logs"
        );
    }
}
