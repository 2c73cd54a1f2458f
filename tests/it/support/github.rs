//! A fake GitHub over real HTTP. Every request body Dropship sends and every response body the
//! fake answers is validated against GitHub's published OpenAPI description
//! (`tests/fixtures/github/openapi-deployments.json`); violations fail the test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// GitHub's OpenAPI description, with OpenAPI 3.0's `nullable` rewritten as JSON Schema.
fn openapi() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let text =
            std::fs::read_to_string(super::fixture("github/openapi-deployments.json")).unwrap();
        let mut doc: Value = serde_json::from_str(&text).unwrap();
        rewrite_nullable(&mut doc);
        doc
    })
}

fn rewrite_nullable(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for inner in map.values_mut() {
                rewrite_nullable(inner);
            }
            if map.remove("nullable") == Some(Value::Bool(true)) {
                if let Some(Value::Array(values)) = map.get_mut("enum") {
                    values.push(Value::Null);
                }
                match map.get("type").cloned() {
                    Some(Value::String(kind)) => {
                        map.insert("type".into(), json!([kind, "null"]));
                    }
                    _ => {
                        let inner = Value::Object(std::mem::take(map));
                        map.insert("anyOf".into(), json!([inner, {"type": "null"}]));
                    }
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_nullable),
        _ => {}
    }
}

/// Validates `instance` against the schema at `pointer` in the OpenAPI document.
pub fn validate(pointer: &str, instance: &Value) -> Result<(), String> {
    let doc = openapi();
    let schema = doc
        .pointer(pointer)
        .unwrap_or_else(|| panic!("no schema at {pointer}"));
    let mut root = schema.clone();
    if let Value::Object(map) = &mut root {
        map.insert("components".into(), doc["components"].clone());
    }
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&root)
        .map_err(|e| format!("schema at {pointer} does not compile: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{pointer}: {}", errors.join("; ")))
    }
}

fn op_pointer(path: &str, method: &str) -> String {
    format!(
        "/paths/{}/{method}",
        path.replace('~', "~0").replace('/', "~1")
    )
}

/// A status Dropship posted.
#[derive(Debug, Clone)]
pub struct PostedStatus {
    pub repo: String,
    pub deployment_id: i64,
    pub body: Value,
    /// The `Authorization` header it came with.
    pub authorization: String,
}

impl PostedStatus {
    pub fn state(&self) -> &str {
        self.body["state"].as_str().unwrap_or_default()
    }
    pub fn description(&self) -> &str {
        self.body["description"].as_str().unwrap_or_default()
    }
}

#[derive(Default)]
struct Inner {
    /// (repo, sha, path) → file text.
    files: HashMap<(String, String, String), String>,
    /// Repositories of the App's installations: (installation id, full name). An
    /// installation's account is its first repository's owner.
    installed: Vec<(i64, String)>,
    /// Installations suspended.
    suspended: Vec<i64>,
    /// How many of the next accepted status posts lose their answer (the connection drops).
    lost_answers: usize,
    /// Manifest (contents) reads that arrived.
    contents_requests: usize,
    /// Deployments created through the API: (repo, deployment), oldest first.
    deployments: Vec<(String, Value)>,
    /// Where created deployments' webhooks go, and the secret that signs them.
    hook: Option<(String, String)>,
    /// Answers for the next deployment creations: (status, message).
    deployment_refusals: std::collections::VecDeque<(StatusCode, &'static str)>,
    /// Repository tarballs (gzip), by (repo, sha).
    tarballs: HashMap<(String, String), Vec<u8>>,
    statuses: Vec<PostedStatus>,
    violations: Vec<String>,
    /// Answers to give the next status posts instead of accepting them:
    /// (status, Retry-After seconds, message).
    refusals: std::collections::VecDeque<(StatusCode, Option<u64>, &'static str)>,
    /// When each refused post came, and when each accepted one did.
    refused_at: Vec<std::time::Instant>,
    accepted_at: Vec<std::time::Instant>,
    failed_posts: usize,
    /// `GET .../deployments` calls answered.
    deployment_lists: usize,
    /// While set, every status post is answered this (an outage), after `refusals`.
    outage: Option<(StatusCode, &'static str)>,
    /// While set, a status post whose `Authorization` does not carry this token is answered
    /// 401, as GitHub answers a revoked or mistyped token. (Only status posts check it.)
    required_token: Option<String>,
    next_id: i64,
    /// Installation token requests: (installation id, Authorization header).
    token_requests: Vec<(i64, String)>,
    /// Branch heads: (repo, branch) → sha.
    branches: HashMap<(String, String), String>,
    /// Check runs: id → (repo, every request body in order: the creation, then updates).
    check_runs: std::collections::BTreeMap<i64, (String, Vec<Value>)>,
}

#[derive(Clone)]
pub struct FakeGithub {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
    /// False while manifest reads are held: each waits, counted, until they are let go.
    contents_open: Arc<tokio::sync::watch::Sender<bool>>,
    pub url: String,
}

impl FakeGithub {
    pub async fn start() -> FakeGithub {
        FakeGithub::start_at("").await
    }

    /// Serves the API under `prefix`, as GitHub Enterprise Server does (`/api/v3`); `url`
    /// includes the prefix.
    pub async fn start_at(prefix: &str) -> FakeGithub {
        let fake = FakeGithub {
            inner: Arc::new(Mutex::new(Inner {
                next_id: 1,
                ..Default::default()
            })),
            changed: Arc::new(Notify::new()),
            contents_open: Arc::new(tokio::sync::watch::Sender::new(true)),
            url: String::new(),
        };
        let app = axum::Router::new()
            .route("/repos/{owner}/{repo}/contents/{*path}", get(contents))
            .route(
                "/repos/{owner}/{repo}/deployments/{id}/statuses",
                post(create_status).get(list_statuses),
            )
            .route("/app/installations/{id}/access_tokens", post(access_token))
            .route("/app/installations", get(list_installations))
            .route("/installation/repositories", get(installation_repositories))
            .route("/repos/{owner}/{repo}/tarball/{*reference}", get(tarball))
            .route("/repos/{owner}/{repo}/commits/{*reference}", get(commit))
            .route("/repos/{owner}/{repo}/check-runs", post(create_check_run))
            .route(
                "/repos/{owner}/{repo}/check-runs/{id}",
                axum::routing::patch(update_check_run),
            )
            .route(
                "/repos/{owner}/{repo}/deployments",
                get(list_deployments).post(create_deployment),
            )
            .route(
                "/_codeload/{owner}/{repo}/legacy.tar.gz/{*reference}",
                get(codeload),
            )
            .with_state(fake.clone());
        let app = if prefix.is_empty() {
            app
        } else {
            axum::Router::new().nest(prefix, app)
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{prefix}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeGithub { url, ..fake }
    }

    pub fn add_file(&self, repo: &str, sha: &str, path: &str, text: &str) {
        self.inner
            .lock()
            .unwrap()
            .files
            .insert((repo.into(), sha.into(), path.into()), text.into());
    }

    /// Serves `files` (path, contents, mode) as the repository's tarball at `sha`, shaped like
    /// GitHub's: gzip, a global pax header carrying the commit id, and every entry under one
    /// top directory `owner-repo-sha7/`.
    pub fn add_tarball(&self, repo: &str, sha: &str, files: &[(&str, Vec<u8>, u32)]) {
        let top = format!("{}-{}", repo.replace('/', "-"), &sha[..7]);
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let comment = format!("comment={sha}\n");
        let record = format!("{} {comment}", comment.len() + 3);
        let mut global = tar::Header::new_ustar();
        global.set_entry_type(tar::EntryType::XGlobalHeader);
        global.set_path("pax_global_header").unwrap();
        global.set_size(record.len() as u64);
        global.set_cksum();
        builder.append(&global, record.as_bytes()).unwrap();
        let mut dir = tar::Header::new_ustar();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o775);
        dir.set_size(0);
        builder
            .append_data(&mut dir, format!("{top}/"), std::io::empty())
            .unwrap();
        for (path, body, mode) in files {
            let mut header = tar::Header::new_ustar();
            header.set_size(body.len() as u64);
            header.set_mode(*mode);
            builder
                .append_data(&mut header, format!("{top}/{path}"), body.as_slice())
                .unwrap();
        }
        let gz = builder.into_inner().unwrap().finish().unwrap();
        self.inner
            .lock()
            .unwrap()
            .tarballs
            .insert((repo.into(), sha.into()), gz);
    }

    /// Delivers a signed `deployment` webhook to `url` for each deployment created through
    /// the API, as GitHub does.
    pub fn deliver_to(&self, url: &str, secret: &str) {
        self.inner.lock().unwrap().hook = Some((url.into(), secret.into()));
    }

    /// Points `branch` of `repo` at `sha` (what `GET .../commits/{branch}` answers).
    pub fn set_branch(&self, repo: &str, branch: &str, sha: &str) {
        self.inner
            .lock()
            .unwrap()
            .branches
            .insert((repo.into(), branch.into()), sha.into());
    }

    /// Every check run created: (id, repo, request bodies: the creation, then each update).
    pub fn check_runs(&self) -> Vec<(i64, String, Vec<Value>)> {
        self.inner
            .lock()
            .unwrap()
            .check_runs
            .iter()
            .map(|(id, (repo, bodies))| (*id, repo.clone(), bodies.clone()))
            .collect()
    }

    /// Waits until a check run has been completed; returns its bodies.
    pub async fn wait_check_completed(&self, limit: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some((_, _, bodies)) = self
                .check_runs()
                .into_iter()
                .find(|(_, _, bodies)| bodies.iter().any(|b| b["status"] == "completed"))
            {
                return bodies;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "no check run completed within {limit:?}: {:?}",
                    self.check_runs()
                );
            }
        }
    }

    /// The next deployment creation is answered `status` with `message`.
    pub fn refuse_next_deployment(&self, status: StatusCode, message: &'static str) {
        self.inner
            .lock()
            .unwrap()
            .deployment_refusals
            .push_back((status, message));
    }

    /// Records a deployment as if created earlier (what `GET .../deployments` lists).
    pub fn add_deployment(&self, repo: &str, id: i64, sha: &str, environment: &str, task: &str) {
        let mut deployment = openapi()["components"]["examples"]["deployment"]["value"].clone();
        deployment["id"] = id.into();
        deployment["sha"] = sha.into();
        deployment["ref"] = "main".into();
        deployment["environment"] = environment.into();
        deployment["original_environment"] = environment.into();
        deployment["task"] = task.into();
        self.inner
            .lock()
            .unwrap()
            .deployments
            .push((repo.into(), deployment));
    }

    /// Records a deployment created just now whose webhook never came (GitHub dropped it).
    pub fn add_recent_deployment(
        &self,
        repo: &str,
        id: i64,
        sha: &str,
        environment: &str,
        payload: Value,
    ) {
        self.add_deployment(repo, id, sha, environment, "deploy");
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut inner = self.inner.lock().unwrap();
        let (_, deployment) = inner.deployments.last_mut().unwrap();
        deployment["created_at"] = now.clone().into();
        deployment["updated_at"] = now.into();
        deployment["payload"] = payload;
    }

    /// Makes `repo` one of installation `installation`'s repositories.
    pub fn install(&self, installation: i64, repo: &str) {
        self.inner
            .lock()
            .unwrap()
            .installed
            .push((installation, repo.into()));
    }

    /// Suspends installation `installation`.
    pub fn suspend(&self, installation: i64) {
        self.inner.lock().unwrap().suspended.push(installation);
    }

    /// A status another system posted on deployment `id`.
    pub fn add_foreign_status(&self, repo: &str, id: i64, state: &str) {
        self.inner.lock().unwrap().statuses.push(PostedStatus {
            repo: repo.into(),
            deployment_id: id,
            body: json!({ "state": state, "description": "by another system" }),
            authorization: "token another-system".into(),
        });
    }

    /// How many times deployments were listed.
    pub fn deployment_lists(&self) -> usize {
        self.inner.lock().unwrap().deployment_lists
    }

    /// Deployments created through the API for `repo`.
    pub fn created_deployments(&self, repo: &str) -> Vec<Value> {
        self.inner
            .lock()
            .unwrap()
            .deployments
            .iter()
            .filter(|(r, d)| r == repo && d["description"] == "rollback (dropship rollback)")
            .map(|(_, d)| d.clone())
            .collect()
    }

    /// Every deployment created through the API for `repo`, oldest first.
    pub fn created_deployments_all(&self, repo: &str) -> Vec<Value> {
        self.inner
            .lock()
            .unwrap()
            .deployments
            .iter()
            .filter(|(r, _)| r == repo)
            .map(|(_, d)| d.clone())
            .collect()
    }

    /// The next `n` status posts are answered 502.
    pub fn fail_next_statuses(&self, n: usize) {
        for _ in 0..n {
            self.refuse_next_status(StatusCode::BAD_GATEWAY, None, "Server Error");
        }
    }

    /// The next status post is answered `status`, with `Retry-After` if given.
    pub fn refuse_next_status(
        &self,
        status: StatusCode,
        retry_after: Option<u64>,
        message: &'static str,
    ) {
        self.inner
            .lock()
            .unwrap()
            .refusals
            .push_back((status, retry_after, message));
    }

    /// From now on every status post is answered `status` (`None`: GitHub is back).
    pub fn status_outage(&self, status: Option<(StatusCode, &'static str)>) {
        self.inner.lock().unwrap().outage = status;
    }

    /// Holds every manifest read from now on, until [`FakeGithub::release_contents`].
    pub fn hold_contents(&self) {
        self.contents_open.send_replace(false);
    }

    /// Answers the held manifest reads, and those to come.
    pub fn release_contents(&self) {
        self.contents_open.send_replace(true);
    }

    /// Waits until `n` manifest reads have arrived (held or answered).
    pub async fn wait_contents_requests(&self, n: usize, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            if self.inner.lock().unwrap().contents_requests >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("fewer than {n} manifest reads in {limit:?}");
            }
        }
    }

    /// The next `n` status posts are accepted, but their answers are lost: the connection
    /// drops before it, as on a read timeout.
    pub fn lose_next_status_answers(&self, n: usize) {
        self.inner.lock().unwrap().lost_answers = n;
    }

    /// Status posts are refused 401 unless they carry `token`.
    pub fn require_token(&self, token: &str) {
        self.inner.lock().unwrap().required_token = Some(token.to_string());
    }

    /// Waits until at least `n` status posts have been refused.
    pub async fn wait_refused(&self, n: usize, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            if self.failed_posts() >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "only {} status posts refused in {limit:?}, waiting for {n}",
                    self.failed_posts()
                );
            }
        }
    }

    /// When each accepted status post arrived.
    pub fn accepted_at(&self) -> Vec<std::time::Instant> {
        self.inner.lock().unwrap().accepted_at.clone()
    }

    /// When each refused status post arrived.
    pub fn refused_at(&self) -> Vec<std::time::Instant> {
        self.inner.lock().unwrap().refused_at.clone()
    }

    pub fn failed_posts(&self) -> usize {
        self.inner.lock().unwrap().failed_posts
    }

    pub fn statuses(&self, deployment_id: i64) -> Vec<PostedStatus> {
        self.inner
            .lock()
            .unwrap()
            .statuses
            .iter()
            .filter(|s| s.deployment_id == deployment_id)
            .cloned()
            .collect()
    }

    pub fn token_requests(&self) -> Vec<(i64, String)> {
        self.inner.lock().unwrap().token_requests.clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.inner.lock().unwrap().violations.clone()
    }

    /// Waits until deployment `id` has a final status (success, failure, error or inactive), and returns
    /// all its statuses.
    pub async fn wait_final(&self, id: i64, limit: Duration) -> Vec<PostedStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            let statuses = self.statuses(id);
            if statuses
                .iter()
                .any(|s| matches!(s.state(), "success" | "failure" | "error" | "inactive"))
            {
                let violations = self.violations();
                assert!(
                    violations.is_empty(),
                    "requests or responses broke GitHub's OpenAPI description: {violations:#?}"
                );
                return statuses;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "no final status for deployment {id} within {limit:?}; statuses so far: {statuses:#?}"
                );
            }
        }
    }

    fn violation(&self, text: String) {
        self.inner.lock().unwrap().violations.push(text);
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({ "message": message, "documentation_url": "https://docs.github.com/rest" });
    (status, Json(body)).into_response()
}

/// `repos/download-tarball-archive`: GitHub answers 302 with the codeload URL in `Location`
/// (see SOURCES.md: the operation is not in the OpenAPI subset).
async fn tarball(
    State(fake): State<FakeGithub>,
    Path((owner, repo, reference)): Path<(String, String, String)>,
) -> Response {
    let base = fake.url.trim_end_matches('/');
    // codeload is another host on GitHub; here it is a path of the same server, outside the
    // API prefix.
    let root = match base.find("/api/") {
        Some(i) => &base[..i],
        None => base,
    };
    (
        StatusCode::FOUND,
        [(
            axum::http::header::LOCATION,
            format!("{root}/_codeload/{owner}/{repo}/legacy.tar.gz/{reference}"),
        )],
    )
        .into_response()
}

async fn codeload(
    State(fake): State<FakeGithub>,
    Path((owner, repo, reference)): Path<(String, String, String)>,
) -> Response {
    let body = fake
        .inner
        .lock()
        .unwrap()
        .tarballs
        .get(&(format!("{owner}/{repo}"), reference))
        .cloned();
    match body {
        Some(body) => (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/x-gzip")],
            body,
        )
            .into_response(),
        None => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn contents(
    State(fake): State<FakeGithub>,
    Path((owner, repo, path)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let op = op_pointer("/repos/{owner}/{repo}/contents/{path}", "get");
    let Some(sha) = query.get("ref") else {
        fake.violation(
            "contents request without ?ref=: the manifest must be read at the deployment's sha"
                .into(),
        );
        return error(StatusCode::BAD_REQUEST, "ref required by this test");
    };
    fake.inner.lock().unwrap().contents_requests += 1;
    fake.changed.notify_waiters();
    let _ = fake.contents_open.subscribe().wait_for(|open| *open).await;
    let full = format!("{owner}/{repo}");
    let text = fake
        .inner
        .lock()
        .unwrap()
        .files
        .get(&(full.clone(), sha.clone(), path.clone()))
        .cloned();
    let Some(text) = text else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    // GitHub wraps base64 at 60 characters with real newlines.
    let encoded = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
    let wrapped = encoded
        .as_bytes()
        .chunks(60)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let api = &fake.url;
    let body = json!({
        "type": "file",
        "encoding": "base64",
        "size": text.len(),
        "name": path.rsplit('/').next().unwrap(),
        "path": path,
        "content": wrapped + "\n",
        "sha": "3d21ec53a331a6f037a91c368710b99387d012c1",
        "url": format!("{api}/repos/{full}/contents/{path}?ref={sha}"),
        "git_url": format!("{api}/repos/{full}/git/blobs/3d21ec53a331a6f037a91c368710b99387d012c1"),
        "html_url": format!("https://github.com/{full}/blob/{sha}/{path}"),
        "download_url": format!("https://raw.githubusercontent.com/{full}/{sha}/{path}"),
        "_links": {
            "git": format!("{api}/repos/{full}/git/blobs/3d21ec53a331a6f037a91c368710b99387d012c1"),
            "self": format!("{api}/repos/{full}/contents/{path}?ref={sha}"),
            "html": format!("https://github.com/{full}/blob/{sha}/{path}"),
        }
    });
    if let Err(e) = validate(
        &format!("{op}/responses/200/content/application~1json/schema"),
        &body,
    ) {
        fake.violation(format!("fake's own contents response: {e}"));
    }
    (StatusCode::OK, Json(body)).into_response()
}

fn authorization(headers: &axum::http::HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// `apps/list-installations` (an App's JWT): one page, GitHub's example installation for each
/// id. (The operation is not in the OpenAPI subset; each item is checked against its
/// `installation` schema.)
async fn list_installations(
    State(fake): State<FakeGithub>,
    headers: axum::http::HeaderMap,
) -> Response {
    let auth = authorization(&headers);
    if auth
        .strip_prefix("Bearer ")
        .unwrap_or_default()
        .split('.')
        .count()
        != 3
    {
        fake.violation(format!("installations listed without an app JWT: {auth:?}"));
        return error(
            StatusCode::UNAUTHORIZED,
            "A JSON web token could not be decoded",
        );
    }
    let (installed, suspended) = {
        let inner = fake.inner.lock().unwrap();
        (inner.installed.clone(), inner.suspended.clone())
    };
    let mut accounts: Vec<(i64, String)> = Vec::new();
    for (id, repo) in installed {
        if !accounts.iter().any(|(known, _)| *known == id) {
            accounts.push((id, repo.split('/').next().unwrap().to_string()));
        }
    }
    let example = openapi()["components"]["examples"]["installation"]["value"].clone();
    let list: Vec<Value> = accounts
        .into_iter()
        .map(|(id, login)| {
            let mut installation = example.clone();
            installation["id"] = id.into();
            installation["account"]["login"] = login.into();
            if suspended.contains(&id) {
                installation["suspended_at"] = "2026-11-01T00:00:00Z".into();
            }
            installation
        })
        .collect();
    for installation in &list {
        if let Err(e) = validate("/components/schemas/installation", installation) {
            fake.violation(format!("fake's own installation: {e}"));
        }
    }
    (StatusCode::OK, Json(Value::Array(list))).into_response()
}

/// `apps/list-repos-accessible-to-installation` (an installation token): the installation's
/// repositories, each GitHub's example repository renamed. (Not in the OpenAPI subset; each
/// repository is checked against its `repository` schema.)
async fn installation_repositories(
    State(fake): State<FakeGithub>,
    headers: axum::http::HeaderMap,
) -> Response {
    let auth = authorization(&headers);
    let Some(installation) = auth
        .strip_prefix("Bearer ghs_installation")
        .and_then(|rest| rest.split('_').next())
        .and_then(|id| id.parse::<i64>().ok())
    else {
        fake.violation(format!(
            "installation repositories listed without an installation token: {auth:?}"
        ));
        return error(StatusCode::UNAUTHORIZED, "Bad credentials");
    };
    let example =
        openapi()["components"]["examples"]["installation-token"]["value"]["repositories"][0]
            .clone();
    let repositories: Vec<Value> = fake
        .inner
        .lock()
        .unwrap()
        .installed
        .iter()
        .filter(|(id, _)| *id == installation)
        .map(|(_, full)| {
            let (owner, name) = full.split_once('/').unwrap();
            let mut repository = example.clone();
            repository["full_name"] = full.clone().into();
            repository["name"] = name.into();
            repository["owner"]["login"] = owner.into();
            repository
        })
        .collect();
    for repository in &repositories {
        if let Err(e) = validate("/components/schemas/repository", repository) {
            fake.violation(format!("fake's own repository: {e}"));
        }
    }
    let body = json!({
        "total_count": repositories.len(),
        "repository_selection": "selected",
        "repositories": repositories,
    });
    (StatusCode::OK, Json(body)).into_response()
}

async fn access_token(
    State(fake): State<FakeGithub>,
    Path(id): Path<i64>,
    headers: axum::http::HeaderMap,
) -> Response {
    let op = op_pointer("/app/installations/{installation_id}/access_tokens", "post");
    let auth = authorization(&headers);
    let jwt = auth.strip_prefix("Bearer ").unwrap_or_default();
    if jwt.split('.').count() != 3 {
        fake.violation(format!("access token request without an app JWT: {auth:?}"));
        return error(
            StatusCode::UNAUTHORIZED,
            "A JSON web token could not be decoded",
        );
    }
    let n = {
        let mut inner = fake.inner.lock().unwrap();
        inner.token_requests.push((id, auth.clone()));
        inner.token_requests.len()
    };
    let mut body = openapi()["components"]["examples"]["installation-token"]["value"].clone();
    body["token"] = format!("ghs_installation{id}_token{n}").into();
    let expires = chrono::Utc::now() + chrono::Duration::hours(1);
    body["expires_at"] = expires
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        .into();
    if let Err(e) = validate(
        &format!("{op}/responses/201/content/application~1json/schema"),
        &body,
    ) {
        fake.violation(format!("fake's own access token response: {e}"));
    }
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn create_status(
    State(fake): State<FakeGithub>,
    Path((owner, repo, id)): Path<(String, String, i64)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let op = op_pointer(
        "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses",
        "post",
    );
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            fake.violation(format!("status body is not JSON: {e}"));
            return error(StatusCode::BAD_REQUEST, "Problems parsing JSON");
        }
    };
    if let Err(e) = validate(
        &format!("{op}/requestBody/content/application~1json/schema"),
        &body,
    ) {
        fake.violation(format!("status request: {e}"));
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    }
    if body["description"]
        .as_str()
        .is_some_and(|d| d.chars().count() > 140)
    {
        fake.violation("status description over 140 characters".into());
    }
    let response = {
        let mut inner = fake.inner.lock().unwrap();
        let bad_token = inner.required_token.as_ref().is_some_and(|token| {
            let authorization = authorization(&headers);
            authorization != format!("token {token}") && authorization != format!("Bearer {token}")
        });
        let refusal = inner
            .refusals
            .pop_front()
            .or_else(|| bad_token.then_some((StatusCode::UNAUTHORIZED, None, "Bad credentials")))
            .or_else(|| {
                inner
                    .outage
                    .map(|(status, message)| (status, None, message))
            });
        if let Some((status, retry_after, message)) = refusal {
            inner.failed_posts += 1;
            inner.refused_at.push(std::time::Instant::now());
            drop(inner);
            fake.changed.notify_waiters();
            let mut response = error(status, message);
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", seconds.to_string().parse().unwrap());
            }
            return response;
        }
        let status_id = inner.next_id;
        inner.next_id += 1;
        inner.accepted_at.push(std::time::Instant::now());
        inner.statuses.push(PostedStatus {
            repo: format!("{owner}/{repo}"),
            deployment_id: id,
            body: body.clone(),
            authorization: authorization(&headers),
        });
        let mut example = openapi()["components"]["examples"]["deployment-status"]["value"].clone();
        example["id"] = status_id.into();
        example["state"] = body["state"].clone();
        example["description"] = body
            .get("description")
            .cloned()
            .unwrap_or_else(|| "".into());
        example["log_url"] = body.get("log_url").cloned().unwrap_or_else(|| "".into());
        example["target_url"] = example["log_url"].clone();
        example["environment_url"] = body
            .get("environment_url")
            .cloned()
            .unwrap_or_else(|| "".into());
        example
    };
    if let Err(e) = validate(
        &format!("{op}/responses/201/content/application~1json/schema"),
        &response,
    ) {
        fake.violation(format!("fake's own status response: {e}"));
    }
    fake.changed.notify_waiters();
    let lose = {
        let mut inner = fake.inner.lock().unwrap();
        let lose = inner.lost_answers > 0;
        inner.lost_answers = inner.lost_answers.saturating_sub(1);
        lose
    };
    if lose {
        // Accepted, but the connection drops before the answer: the poster cannot know.
        // (`resume_unwind` ends this connection's task without the panic hook's noise.)
        std::panic::resume_unwind(Box::new("the answer is lost"));
    }
    (StatusCode::CREATED, Json(response)).into_response()
}

async fn list_deployments(
    State(fake): State<FakeGithub>,
    Path((owner, repo)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let op = op_pointer("/repos/{owner}/{repo}/deployments", "get");
    let full = format!("{owner}/{repo}");
    fake.inner.lock().unwrap().deployment_lists += 1;
    let mut list: Vec<Value> = fake
        .inner
        .lock()
        .unwrap()
        .deployments
        .iter()
        .filter(|(r, d)| {
            *r == full
                && query
                    .get("environment")
                    .is_none_or(|e| d["environment"] == **e)
        })
        .map(|(_, d)| d.clone())
        .collect();
    // Newest first, as GitHub lists them.
    list.reverse();
    if let Some(n) = query.get("per_page").and_then(|n| n.parse::<usize>().ok()) {
        list.truncate(n);
    }
    let list = Value::Array(list);
    if let Err(e) = validate(
        &format!("{op}/responses/200/content/application~1json/schema"),
        &list,
    ) {
        fake.violation(format!("fake's own deployment list: {e}"));
    }
    (StatusCode::OK, Json(list)).into_response()
}

async fn create_deployment(
    State(fake): State<FakeGithub>,
    Path((owner, repo)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let op = op_pointer("/repos/{owner}/{repo}/deployments", "post");
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            fake.violation(format!("deployment body is not JSON: {e}"));
            return error(StatusCode::BAD_REQUEST, "Problems parsing JSON");
        }
    };
    if let Err(e) = validate(
        &format!("{op}/requestBody/content/application~1json/schema"),
        &body,
    ) {
        fake.violation(format!("deployment request: {e}"));
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    }
    let full = format!("{owner}/{repo}");
    let refusal = fake.inner.lock().unwrap().deployment_refusals.pop_front();
    if let Some((status, message)) = refusal {
        return error(status, message);
    }
    let (deployment, hook) = {
        let mut inner = fake.inner.lock().unwrap();
        let id = 900_000 + inner.next_id;
        inner.next_id += 1;
        let mut deployment = openapi()["components"]["examples"]["deployment"]["value"].clone();
        let git_ref = body["ref"].as_str().unwrap_or_default().to_string();
        deployment["id"] = id.into();
        deployment["ref"] = git_ref.clone().into();
        // A full sha stands for itself; this fake resolves no branch names.
        deployment["sha"] = git_ref.into();
        deployment["task"] = body.get("task").cloned().unwrap_or_else(|| "deploy".into());
        deployment["environment"] = body
            .get("environment")
            .cloned()
            .unwrap_or_else(|| "production".into());
        deployment["original_environment"] = deployment["environment"].clone();
        deployment["payload"] = body.get("payload").cloned().unwrap_or_else(|| json!({}));
        deployment["description"] = body.get("description").cloned().unwrap_or(Value::Null);
        inner.deployments.push((full.clone(), deployment.clone()));
        (deployment, inner.hook.clone())
    };
    if let Err(e) = validate(
        &format!("{op}/responses/201/content/application~1json/schema"),
        &deployment,
    ) {
        fake.violation(format!("fake's own deployment: {e}"));
    }
    if let Some((url, secret)) = hook {
        let text =
            std::fs::read_to_string(super::fixture("github/webhooks/deployment.created.json"))
                .unwrap();
        let mut delivery: Value = serde_json::from_str(&text).unwrap();
        for key in [
            "id",
            "sha",
            "ref",
            "task",
            "environment",
            "payload",
            "description",
        ] {
            delivery["deployment"][key] = deployment[key].clone();
        }
        delivery["repository"]["full_name"] = full.into();
        let bytes = serde_json::to_vec(&delivery).unwrap();
        let signature = dropship::webhook::sign(secret.as_bytes(), &bytes);
        tokio::spawn(async move {
            let _ = reqwest::Client::new()
                .post(url)
                .header("X-GitHub-Event", "deployment")
                .header(
                    "X-GitHub-Delivery",
                    format!("fake-{}", deployment_id_of(&delivery)),
                )
                .header("X-Hub-Signature-256", signature)
                .header("Content-Type", "application/json")
                .body(bytes)
                .send()
                .await;
        });
    }
    fake.changed.notify_waiters();
    (StatusCode::CREATED, Json(deployment)).into_response()
}

/// `GET /repos/{owner}/{repo}/commits/{ref}`: the commit a branch points at (or a full sha
/// itself).
async fn commit(
    State(fake): State<FakeGithub>,
    Path((owner, repo, reference)): Path<(String, String, String)>,
) -> Response {
    let op = op_pointer("/repos/{owner}/{repo}/commits/{ref}", "get");
    let full = format!("{owner}/{repo}");
    let sha = {
        let inner = fake.inner.lock().unwrap();
        inner
            .branches
            .get(&(full.clone(), reference.clone()))
            .cloned()
    };
    let sha = match sha {
        Some(sha) => sha,
        None if reference.len() == 40 && reference.bytes().all(|b| b.is_ascii_hexdigit()) => {
            reference
        }
        None => return error(StatusCode::UNPROCESSABLE_ENTITY, "No commit found for SHA"),
    };
    let mut body = openapi()["components"]["examples"]["commit"]["value"].clone();
    body["sha"] = sha.into();
    // GitHub's example lists files without the `sha` and `contents_url` its own schema
    // requires; the answer leaves the file list empty instead.
    body["files"] = json!([]);
    if let Err(e) = validate(
        &format!("{op}/responses/200/content/application~1json/schema"),
        &body,
    ) {
        fake.violation(format!("fake's own commit response: {e}"));
    }
    (StatusCode::OK, Json(body)).into_response()
}

/// `POST /repos/{owner}/{repo}/check-runs`: only for a GitHub App's installation token.
async fn create_check_run(
    State(fake): State<FakeGithub>,
    Path((owner, repo)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let op = op_pointer("/repos/{owner}/{repo}/check-runs", "post");
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            fake.violation(format!("check run body is not JSON: {e}"));
            return error(StatusCode::BAD_REQUEST, "Problems parsing JSON");
        }
    };
    if let Err(e) = validate(
        &format!("{op}/requestBody/content/application~1json/schema"),
        &body,
    ) {
        fake.violation(format!("check run request: {e}"));
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    }
    if !authorization(&headers).starts_with("Bearer ghs_")
        && !authorization(&headers).starts_with("token ghs_")
    {
        fake.violation(format!(
            "check run created without an installation token: {:?}",
            authorization(&headers)
        ));
        return error(
            StatusCode::FORBIDDEN,
            "You must authenticate via a GitHub App.",
        );
    }
    let full = format!("{owner}/{repo}");
    let id = {
        let mut inner = fake.inner.lock().unwrap();
        let id = 700_000 + inner.next_id;
        inner.next_id += 1;
        inner
            .check_runs
            .insert(id, (full.clone(), vec![body.clone()]));
        id
    };
    let response = check_run_answer(id, &full, &body);
    if let Err(e) = validate(
        &format!("{op}/responses/201/content/application~1json/schema"),
        &response,
    ) {
        fake.violation(format!("fake's own check run: {e}"));
    }
    fake.changed.notify_waiters();
    (StatusCode::CREATED, Json(response)).into_response()
}

/// `PATCH /repos/{owner}/{repo}/check-runs/{check_run_id}`.
async fn update_check_run(
    State(fake): State<FakeGithub>,
    Path((owner, repo, id)): Path<(String, String, i64)>,
    body: axum::body::Bytes,
) -> Response {
    let op = op_pointer("/repos/{owner}/{repo}/check-runs/{check_run_id}", "patch");
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            fake.violation(format!("check run update is not JSON: {e}"));
            return error(StatusCode::BAD_REQUEST, "Problems parsing JSON");
        }
    };
    if let Err(e) = validate(
        &format!("{op}/requestBody/content/application~1json/schema"),
        &body,
    ) {
        fake.violation(format!("check run update: {e}"));
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    }
    let full = format!("{owner}/{repo}");
    let found = {
        let mut inner = fake.inner.lock().unwrap();
        match inner.check_runs.get_mut(&id) {
            Some((run_repo, bodies)) if *run_repo == full => {
                bodies.push(body.clone());
                Some(bodies[0].clone())
            }
            _ => None,
        }
    };
    let Some(created) = found else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    let mut merged = created;
    if let (Some(merged), Some(update)) = (merged.as_object_mut(), body.as_object()) {
        for (key, value) in update {
            merged.insert(key.clone(), value.clone());
        }
    }
    let response = check_run_answer(id, &full, &merged);
    if let Err(e) = validate(
        &format!("{op}/responses/200/content/application~1json/schema"),
        &response,
    ) {
        fake.violation(format!("fake's own check run update answer: {e}"));
    }
    fake.changed.notify_waiters();
    (StatusCode::OK, Json(response)).into_response()
}

/// GitHub's example check run, carrying what was asked.
fn check_run_answer(id: i64, repo: &str, asked: &Value) -> Value {
    let mut run = openapi()["components"]["examples"]["check-run"]["value"].clone();
    run["id"] = id.into();
    for key in [
        "name",
        "head_sha",
        "status",
        "conclusion",
        "details_url",
        "external_id",
    ] {
        if let Some(value) = asked.get(key) {
            run[key] = value.clone();
        }
    }
    if asked.get("conclusion").is_none() {
        run["conclusion"] = Value::Null;
        run["completed_at"] = Value::Null;
    }
    if let Some(output) = asked.get("output") {
        run["output"]["title"] = output["title"].clone();
        run["output"]["summary"] = output["summary"].clone();
    }
    run["url"] = format!("https://api.github.com/repos/{repo}/check-runs/{id}").into();
    run
}

/// `GET .../deployments/{id}/statuses`: what was posted, newest first, in GitHub's shape.
async fn list_statuses(
    State(fake): State<FakeGithub>,
    Path((_owner, _repo, id)): Path<(String, String, i64)>,
) -> Response {
    let op = op_pointer(
        "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses",
        "get",
    );
    let posted = fake.statuses(id);
    let mut list: Vec<Value> = posted
        .iter()
        .enumerate()
        .map(|(i, status)| {
            let mut example =
                openapi()["components"]["examples"]["deployment-status"]["value"].clone();
            example["id"] = (i as i64 + 1).into();
            example["state"] = status.body["state"].clone();
            for key in ["description", "log_url", "environment_url"] {
                example[key] = status.body.get(key).cloned().unwrap_or_else(|| "".into());
            }
            example["target_url"] = example["log_url"].clone();
            example
        })
        .collect();
    list.reverse();
    let list = Value::Array(list);
    if let Err(e) = validate(
        &format!("{op}/responses/200/content/application~1json/schema"),
        &list,
    ) {
        fake.violation(format!("fake's own status list: {e}"));
    }
    (StatusCode::OK, Json(list)).into_response()
}

fn deployment_id_of(delivery: &Value) -> i64 {
    delivery["deployment"]["id"].as_i64().unwrap_or_default()
}

#[test]
fn the_fake_validates_against_the_description() {
    let op = op_pointer(
        "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses",
        "post",
    );
    let schema = format!("{op}/requestBody/content/application~1json/schema");
    assert!(validate(&schema, &json!({"state": "success"})).is_ok());
    assert!(
        validate(&schema, &json!({"state": "done"})).is_err(),
        "an unknown state must be refused"
    );
    let example = openapi()["components"]["examples"]["deployment-status"]["value"].clone();
    validate(
        &format!("{op}/responses/201/content/application~1json/schema"),
        &example,
    )
    .unwrap();
}
