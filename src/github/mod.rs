//! GitHub's REST API: reading the manifest at a commit, and posting deployment statuses
//! through a durable outbox.
//!
//! Architecture invariant: only this module knows octocrab.

mod outbox;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use base64::Engine as _;
use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId};
use octocrab::service::middleware::retry::RetryConfig;
use secrecy::ExposeSecret;
use serde::Deserialize;

pub use outbox::{Backoff, DeliveryAlarm, Outbox, Outgoing, run_outbox};

use crate::config::GithubSection;
use crate::manifest::FILE_NAMES;

/// GitHub's limit on a status description.
pub const DESCRIPTION_LIMIT: usize = 140;

/// Cuts `text` to GitHub's 140-character limit, on a character boundary, marking the cut.
pub fn status_description(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() <= DESCRIPTION_LIMIT {
        return text;
    }
    let mut cut: String = text.chars().take(DESCRIPTION_LIMIT - 1).collect();
    cut.push('…');
    cut
}

/// A repository file at a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    pub path: String,
    pub text: String,
}

/// Why an API call failed, and whether trying again later can help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub message: String,
    pub retriable: bool,
    /// What GitHub asked for (`Retry-After`, or the rate-limit reset).
    pub retry_after: Option<Duration>,
    /// GitHub could not be reached at all (no HTTP answer).
    pub unreachable: bool,
    /// GitHub's HTTP status, when it answered.
    pub status: Option<u16>,
}

/// A deployment status, as `POST /repos/{owner}/{repo}/deployments/{id}/statuses` takes it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusBody<'a> {
    pub state: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment_url: Option<&'a str>,
    pub description: &'a str,
    pub environment: &'a str,
}

/// Where a repository's files come from at a commit: GitHub's contents and tarball APIs, or a
/// local checkout for `dropship run`.
#[async_trait]
pub trait ManifestSource: Send + Sync + std::fmt::Debug {
    /// The text file at `path` in `repo` at `sha`: `Ok(None)` when it does not exist. A
    /// symlink or directory there is an error.
    async fn file(
        &self,
        repo: &str,
        sha: &str,
        path: &str,
        installation: Option<i64>,
    ) -> Result<Option<ManifestFile>, ApiError>;

    /// The repository at `sha` as GitHub's tarball endpoint serves it: a gzipped tar whose
    /// entries sit under one top directory (`owner-repo-sha/`).
    async fn tarball(
        &self,
        repo: &str,
        sha: &str,
        installation: Option<i64>,
    ) -> Result<Vec<u8>, ApiError>;

    /// The manifest of `repo` at `sha`: `Ok(None)` when neither file name exists.
    async fn manifest(
        &self,
        repo: &str,
        sha: &str,
        installation: Option<i64>,
    ) -> Result<Option<ManifestFile>, ApiError> {
        for path in FILE_NAMES {
            if let Some(file) = self.file(repo, sha, path, installation).await? {
                return Ok(Some(file));
            }
        }
        Ok(None)
    }
}

/// A manifest read from a local file, whatever repository or sha is asked for, with the
/// checkout it sits in for other files (`dropship run`, benchmarks).
#[derive(Debug, Clone)]
pub struct FixedManifest {
    pub manifest: ManifestFile,
    /// The checkout's root; without one only the manifest exists.
    pub root: Option<std::path::PathBuf>,
}

impl FixedManifest {
    pub fn new(manifest: ManifestFile) -> FixedManifest {
        FixedManifest {
            manifest,
            root: None,
        }
    }
}

impl ApiError {
    /// A failure on this side (no GitHub answer to report), not worth retrying.
    pub(crate) fn local(message: impl Into<String>) -> ApiError {
        ApiError {
            message: message.into(),
            retriable: false,
            retry_after: None,
            unreachable: false,
            status: None,
        }
    }
}

#[async_trait]
impl ManifestSource for FixedManifest {
    async fn file(
        &self,
        _repo: &str,
        _sha: &str,
        path: &str,
        _installation: Option<i64>,
    ) -> Result<Option<ManifestFile>, ApiError> {
        if FILE_NAMES.contains(&path) {
            return Ok(Some(self.manifest.clone()));
        }
        let Some(root) = &self.root else {
            return Ok(None);
        };
        let full = root.join(path);
        match std::fs::symlink_metadata(&full) {
            Err(_) => Ok(None),
            Ok(meta) if !meta.is_file() => {
                Err(ApiError::local(format!("{path} is not a regular file")))
            }
            Ok(_) => std::fs::read_to_string(&full)
                .map(|text| {
                    Some(ManifestFile {
                        path: path.to_string(),
                        text,
                    })
                })
                .map_err(|e| ApiError::local(format!("reading {}: {e}", full.display()))),
        }
    }

    async fn tarball(
        &self,
        _repo: &str,
        _sha: &str,
        _installation: Option<i64>,
    ) -> Result<Vec<u8>, ApiError> {
        let Some(root) = self.root.clone() else {
            return Err(ApiError::local("no checkout to build from"));
        };
        tokio::task::spawn_blocking(move || {
            let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let mut archive = tar::Builder::new(encoder);
            archive.follow_symlinks(false);
            archive.append_dir_all("checkout", &root)?;
            archive.into_inner()?.finish()
        })
        .await
        .map_err(|e| ApiError::local(e.to_string()))?
        .map_err(|e| ApiError::local(format!("packing the checkout: {e}")))
    }
}

/// The GitHub client: a token, or a GitHub App whose installation clients (with their cached
/// tokens) are kept per installation.
pub struct Github {
    api_url: String,
    /// The token client, or the App (JWT) client from which installation clients are made.
    root: Arc<Octocrab>,
    is_app: bool,
    /// One client per installation, shared: octocrab deep-copies its cached installation token
    /// when a client is cloned, so only a shared client reuses the token it fetched.
    /// An async lock, held while an installation's first token is fetched, so concurrent
    /// first uses fetch it once.
    installations: tokio::sync::Mutex<HashMap<i64, Arc<Octocrab>>>,
}

impl std::fmt::Debug for Github {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Github")
            .field("api_url", &self.api_url)
            .field("is_app", &self.is_app)
            .finish_non_exhaustive()
    }
}

impl Github {
    pub fn from_config(config: &GithubSection) -> anyhow::Result<Github> {
        let mut builder = Octocrab::builder()
            .base_uri(config.api_url.as_str())
            .with_context(|| format!("github.api_url `{}`", config.api_url))?
            .add_retry_config(RetryConfig::None)
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(Duration::from_secs(30)));
        let mut is_app = false;
        if let Some(token) = &config.token {
            builder = builder.personal_token(token.expose_secret().to_string());
        } else if let Some(app) = &config.app {
            let pem = std::fs::read(&app.private_key_file).with_context(|| {
                format!(
                    "reading github.app.private_key_file {}",
                    app.private_key_file.display()
                )
            })?;
            let key = octocrab::EncodingKey::from_rsa_pem(&pem).with_context(|| {
                format!(
                    "{} is not an RSA private key in PEM form",
                    app.private_key_file.display()
                )
            })?;
            builder = builder.app(AppId(app.app_id), key);
            is_app = true;
        }
        let root = Arc::new(builder.build().context("building the GitHub client")?);
        Ok(Github {
            api_url: config.api_url.clone(),
            root,
            is_app,
            installations: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The client to act for `installation` (a GitHub App) or the token client.
    async fn client(&self, installation: Option<i64>) -> Result<Arc<Octocrab>, ApiError> {
        if !self.is_app {
            return Ok(self.root.clone());
        }
        let Some(id) = installation else {
            return Err(ApiError::local(
                "the delivery has no installation id, which a GitHub App needs",
            ));
        };
        let mut clients = self.installations.lock().await;
        if let Some(client) = clients.get(&id) {
            return Ok(client.clone());
        }
        let client = self
            .root
            .installation(InstallationId(id as u64))
            .map(Arc::new)
            .map_err(|e| ApiError::local(format!("GitHub App installation {id}: {e}")))?;
        client.installation_token().await.map_err(|e| ApiError {
            retriable: true,
            ..ApiError::local(format!(
                "fetching an installation token for installation {id}: {e}"
            ))
        })?;
        clients.insert(id, client.clone());
        Ok(client)
    }

    /// Posts one deployment status.
    pub async fn post_status(
        &self,
        repo: &str,
        deployment_id: i64,
        installation: Option<i64>,
        body: &StatusBody<'_>,
    ) -> Result<(), ApiError> {
        let client = self.client(installation).await?;
        let route = format!(
            "/repos/{}/deployments/{deployment_id}/statuses",
            encode_repo(repo)
        );
        let response = client
            ._post(route, Some(body))
            .await
            .map_err(transport_error)?;
        succeeded(&client, response, "posting the deployment status").await?;
        Ok(())
    }
}

/// A GitHub deployment, as the deployments API answers (the fields Dropship reads).
#[derive(Debug, Clone, Deserialize)]
pub struct GithubDeployment {
    pub id: i64,
    pub sha: crate::sha::Sha,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub task: String,
    pub environment: String,
}

/// `POST /repos/{owner}/{repo}/deployments`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewGithubDeployment<'a> {
    #[serde(rename = "ref")]
    pub git_ref: &'a str,
    pub task: &'a str,
    pub environment: &'a str,
    pub description: &'a str,
    /// Dropship decides what to run; GitHub must not merge the default branch in first.
    pub auto_merge: bool,
    /// `Some([])` skips GitHub's check that the ref's commit statuses passed; `None` leaves
    /// that check to GitHub (every context must pass).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required_contexts: Option<Vec<String>>,
    pub payload: serde_json::Value,
}

/// What the engine asks of GitHub beyond manifests and statuses: creating deployments of its
/// own (redeploy, rollback, auto-deploy) and reading where a branch points.
#[async_trait]
pub trait GithubApi: Send + Sync + std::fmt::Debug {
    /// Creates the deployment; with no `installation`, a GitHub App looks up the repository's.
    async fn create(
        &self,
        repo: &str,
        deployment: &NewGithubDeployment<'_>,
        installation: Option<i64>,
    ) -> Result<GithubDeployment, ApiError>;

    /// The commit `git_ref` (a branch, tag or sha) of `repo` points at.
    async fn commit_sha(
        &self,
        repo: &str,
        git_ref: &str,
        installation: Option<i64>,
    ) -> Result<String, ApiError>;

    /// The App's installation on `repo` (`None` with a token).
    async fn installation(&self, repo: &str) -> Result<Option<i64>, ApiError>;

    /// The newest deployments of `repo` (at most [`RECENT_DEPLOYMENTS`]), newest first, as
    /// GitHub's REST API describes them: the same object as a `deployment` webhook's.
    async fn recent_deployments(
        &self,
        repo: &str,
        installation: Option<i64>,
    ) -> Result<Vec<serde_json::Value>, ApiError>;

    /// Whether deployment `id` of `repo` has any status.
    async fn has_statuses(
        &self,
        repo: &str,
        id: i64,
        installation: Option<i64>,
    ) -> Result<bool, ApiError>;

    /// Every repository a GitHub App's installations on an account whose login matches one of
    /// `accounts` (globs) may reach, with its installation (at most [`INSTALLED_PAGES`] pages
    /// of each list); empty with a token, which has none. A suspended installation is
    /// skipped; one whose repositories cannot be read is skipped with a warning.
    async fn installed_repositories(
        &self,
        accounts: &[String],
    ) -> Result<Vec<(String, i64)>, ApiError>;
}

/// How many pages of 100 the App's installations, and each installation's repositories, are
/// read to at most.
pub const INSTALLED_PAGES: usize = 10;

/// How many of a repository's newest deployments the reconciler reads per pass (one page).
pub const RECENT_DEPLOYMENTS: usize = 100;

#[async_trait]
impl GithubApi for Github {
    async fn create(
        &self,
        repo: &str,
        deployment: &NewGithubDeployment<'_>,
        installation: Option<i64>,
    ) -> Result<GithubDeployment, ApiError> {
        let installation = match installation {
            Some(id) => Some(id),
            None => self.installation_for(repo).await?,
        };
        self.create_deployment(repo, deployment, installation).await
    }

    async fn commit_sha(
        &self,
        repo: &str,
        git_ref: &str,
        installation: Option<i64>,
    ) -> Result<String, ApiError> {
        #[derive(Deserialize)]
        struct Commit {
            sha: String,
        }
        let client = self.client(installation).await?;
        let route = format!(
            "/repos/{}/commits/{}",
            encode_repo(repo),
            encode_segment(git_ref)
        );
        let commit: Commit = self
            .get(&client, &route, "reading the branch's commit")
            .await?;
        Ok(commit.sha)
    }

    async fn installation(&self, repo: &str) -> Result<Option<i64>, ApiError> {
        self.installation_for(repo).await
    }

    async fn recent_deployments(
        &self,
        repo: &str,
        installation: Option<i64>,
    ) -> Result<Vec<serde_json::Value>, ApiError> {
        let client = self.client(installation).await?;
        let route = format!(
            "/repos/{}/deployments?per_page={RECENT_DEPLOYMENTS}",
            encode_repo(repo)
        );
        self.get(&client, &route, "listing recent deployments")
            .await
    }

    async fn has_statuses(
        &self,
        repo: &str,
        id: i64,
        installation: Option<i64>,
    ) -> Result<bool, ApiError> {
        let client = self.client(installation).await?;
        let route = format!(
            "/repos/{}/deployments/{id}/statuses?per_page=1",
            encode_repo(repo)
        );
        let statuses: Vec<serde_json::Value> = self
            .get(&client, &route, "reading a deployment's statuses")
            .await?;
        Ok(!statuses.is_empty())
    }

    async fn installed_repositories(
        &self,
        accounts: &[String],
    ) -> Result<Vec<(String, i64)>, ApiError> {
        #[derive(Deserialize)]
        struct Account {
            login: String,
        }
        #[derive(Deserialize)]
        struct Installation {
            id: i64,
            account: Option<Account>,
            suspended_at: Option<String>,
        }
        if !self.is_app {
            return Ok(Vec::new());
        }
        let mut installations = Vec::new();
        for page in 1..=INSTALLED_PAGES {
            let route = format!("/app/installations?per_page=100&page={page}");
            let listed: Vec<Installation> = self
                .get(&self.root, &route, "listing the App's installations")
                .await?;
            let last = listed.len() < 100;
            installations.extend(listed.into_iter().filter(|i| {
                i.suspended_at.is_none()
                    && i.account.as_ref().is_some_and(|account| {
                        accounts
                            .iter()
                            .any(|pattern| crate::config::glob_match(pattern, &account.login))
                    })
            }));
            if last {
                break;
            }
            if page == INSTALLED_PAGES {
                tracing::warn!(
                    pages = INSTALLED_PAGES,
                    "the App has more installations than the reconciler reads"
                );
            }
        }
        let mut repositories = Vec::new();
        for installation in installations {
            match self.installation_repositories(installation.id).await {
                Ok(found) => repositories.extend(found.into_iter().map(|r| (r, installation.id))),
                Err(error) => tracing::warn!(
                    installation = installation.id,
                    error = %error.message,
                    "reconciler: could not list an installation's repositories"
                ),
            }
        }
        Ok(repositories)
    }
}

/// A deployment status as GitHub lists it (the fields the CLI shows).
#[derive(Debug, Clone, Deserialize)]
pub struct GithubStatus {
    pub id: i64,
    pub state: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub log_url: Option<String>,
    #[serde(default)]
    pub environment_url: Option<String>,
}

impl Github {
    /// The installation of a GitHub App on `repo` (`None` when using a token).
    pub async fn installation_for(&self, repo: &str) -> Result<Option<i64>, ApiError> {
        if !self.is_app {
            return Ok(None);
        }
        #[derive(Deserialize)]
        struct Installation {
            id: i64,
        }
        let route = format!("/repos/{}/installation", encode_repo(repo));
        let installation: Installation = self
            .get(&self.root, &route, "finding the App's installation")
            .await?;
        Ok(Some(installation.id))
    }

    /// The full names of the repositories installation `installation` may reach (at most
    /// [`INSTALLED_PAGES`] pages).
    async fn installation_repositories(&self, installation: i64) -> Result<Vec<String>, ApiError> {
        #[derive(Deserialize)]
        struct Repository {
            full_name: String,
        }
        #[derive(Deserialize)]
        struct Repositories {
            repositories: Vec<Repository>,
        }
        let client = self.client(Some(installation)).await?;
        let mut names = Vec::new();
        for page in 1..=INSTALLED_PAGES {
            let route = format!("/installation/repositories?per_page=100&page={page}");
            let listed: Repositories = self
                .get(&client, &route, "listing an installation's repositories")
                .await?;
            let last = listed.repositories.len() < 100;
            names.extend(listed.repositories.into_iter().map(|r| r.full_name));
            if last {
                break;
            }
            if page == INSTALLED_PAGES {
                tracing::warn!(
                    installation,
                    pages = INSTALLED_PAGES,
                    "an installation has more repositories than the reconciler reads"
                );
            }
        }
        Ok(names)
    }

    /// The newest deployment of `repo` to `environment`, if GitHub has any.
    pub async fn latest_deployment(
        &self,
        repo: &str,
        environment: &str,
        installation: Option<i64>,
    ) -> Result<Option<GithubDeployment>, ApiError> {
        let client = self.client(installation).await?;
        let route = format!(
            "/repos/{}/deployments?environment={}&per_page=1",
            encode_repo(repo),
            encode_segment(environment)
        );
        let list: Vec<GithubDeployment> = self.get(&client, &route, "listing deployments").await?;
        Ok(list.into_iter().next())
    }

    /// Creates a deployment; GitHub then delivers its `deployment` webhook.
    pub async fn create_deployment(
        &self,
        repo: &str,
        deployment: &NewGithubDeployment<'_>,
        installation: Option<i64>,
    ) -> Result<GithubDeployment, ApiError> {
        let client = self.client(installation).await?;
        let route = format!("/repos/{}/deployments", encode_repo(repo));
        self.send(
            &client,
            http::Method::POST,
            &route,
            Some(deployment),
            "creating the deployment",
        )
        .await
    }

    /// The statuses of deployment `id`, newest first (as GitHub lists them).
    pub async fn deployment_statuses(
        &self,
        repo: &str,
        id: i64,
        installation: Option<i64>,
    ) -> Result<Vec<GithubStatus>, ApiError> {
        let client = self.client(installation).await?;
        let route = format!(
            "/repos/{}/deployments/{id}/statuses?per_page=100",
            encode_repo(repo)
        );
        self.get(&client, &route, "reading the deployment's statuses")
            .await
    }

    /// Whether check runs can be created: the Checks API takes GitHub App auth only.
    pub fn has_checks(&self) -> bool {
        self.is_app
    }

    /// Creates the check run named `name` on `head_sha` with `body`'s other fields; answers
    /// its id.
    pub async fn create_check_run(
        &self,
        repo: &str,
        installation: Option<i64>,
        name: &str,
        head_sha: &str,
        body: &serde_json::Value,
    ) -> Result<i64, ApiError> {
        #[derive(Deserialize)]
        struct Created {
            id: i64,
        }
        let client = self.client(installation).await?;
        let mut body = body.clone();
        if let Some(fields) = body.as_object_mut() {
            fields.insert("name".into(), name.into());
            fields.insert("head_sha".into(), head_sha.into());
        }
        let route = format!("/repos/{}/check-runs", encode_repo(repo));
        let created: Created = self
            .send(
                &client,
                http::Method::POST,
                &route,
                Some(&body),
                "creating the check run",
            )
            .await?;
        Ok(created.id)
    }

    /// Updates check run `id` with `body`.
    pub async fn update_check_run(
        &self,
        repo: &str,
        installation: Option<i64>,
        id: i64,
        body: &serde_json::Value,
    ) -> Result<(), ApiError> {
        let client = self.client(installation).await?;
        let route = format!("/repos/{}/check-runs/{id}", encode_repo(repo));
        let _: serde_json::Value = self
            .send(
                &client,
                http::Method::PATCH,
                &route,
                Some(body),
                "updating the check run",
            )
            .await?;
        Ok(())
    }

    /// A GET of `route` through [`Github::send`].
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        client: &Octocrab,
        route: &str,
        what: &str,
    ) -> Result<T, ApiError> {
        self.send(client, http::Method::GET, route, None::<&()>, what)
            .await
    }

    async fn send<T: serde::de::DeserializeOwned, B: serde::Serialize + ?Sized>(
        &self,
        client: &Octocrab,
        method: http::Method,
        route: &str,
        body: Option<&B>,
        what: &str,
    ) -> Result<T, ApiError> {
        let response = match method {
            http::Method::POST => client._post(route, body).await,
            http::Method::PATCH => client._patch(route, body).await,
            _ => client._get(route).await,
        }
        .map_err(transport_error)?;
        let response = succeeded(client, response, what).await?;
        let text = client
            .body_to_string(response)
            .await
            .map_err(transport_error)?;
        serde_json::from_str(&text)
            .map_err(|e| ApiError::local(format!("{what}: unexpected answer from GitHub: {e}")))
    }
}

#[derive(Deserialize)]
struct ContentFile {
    #[serde(rename = "type")]
    kind: String,
    encoding: Option<String>,
    content: Option<String>,
}

#[async_trait]
impl ManifestSource for Github {
    async fn file(
        &self,
        repo: &str,
        sha: &str,
        path: &str,
        installation: Option<i64>,
    ) -> Result<Option<ManifestFile>, ApiError> {
        let client = self.client(installation).await?;
        let route = format!(
            "/repos/{}/contents/{}?ref={}",
            encode_repo(repo),
            path.split('/')
                .map(encode_segment)
                .collect::<Vec<_>>()
                .join("/"),
            encode_segment(sha)
        );
        let response = client._get(route).await.map_err(transport_error)?;
        let status = response.status();
        if status == http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = succeeded(&client, response, &format!("fetching {path} at {sha}")).await?;
        let body = client
            .body_to_string(response)
            .await
            .map_err(transport_error)?;
        // A directory answers with a list.
        let file: ContentFile = serde_json::from_str(&body)
            .map_err(|_| ApiError::local(format!("{path} at {sha} is not a file")))?;
        let text = decode_content(&file)
            .map_err(|message| ApiError::local(format!("{path} at {sha}: {message}")))?;
        Ok(Some(ManifestFile {
            path: path.to_string(),
            text,
        }))
    }

    async fn tarball(
        &self,
        repo: &str,
        sha: &str,
        installation: Option<i64>,
    ) -> Result<Vec<u8>, ApiError> {
        let client = self.client(installation).await?;
        let route = format!(
            "/repos/{}/tarball/{}",
            encode_repo(repo),
            encode_segment(sha)
        );
        // octocrab follows the redirect to codeload.
        let response = client._get(route).await.map_err(transport_error)?;
        let what = format!("downloading the tarball of {repo} at {sha}");
        let response = succeeded(&client, response, &what).await?;
        use http_body_util::BodyExt;
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(transport_error)?
            .to_bytes();
        Ok(bytes.to_vec())
    }
}

fn decode_content(file: &ContentFile) -> Result<String, String> {
    if file.kind != "file" {
        return Err(format!("is a {}, not a file", file.kind));
    }
    match file.encoding.as_deref() {
        Some("base64") => {}
        Some("none") => return Err("is too large for the contents API (over 1 MB)".into()),
        other => return Err(format!("has unexpected encoding {other:?}")),
    }
    let packed: String = file
        .content
        .as_deref()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(packed)
        .map_err(|e| format!("invalid base64: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_string())
}

fn encode_repo(repo: &str) -> String {
    repo.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

fn encode_segment(segment: &str) -> String {
    let mut out = String::new();
    for byte in segment.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

fn transport_error(error: octocrab::Error) -> ApiError {
    ApiError {
        message: format!("cannot reach GitHub: {error}"),
        retriable: true,
        retry_after: None,
        unreachable: true,
        status: None,
    }
}

type Answer = http::Response<http_body_util::combinators::BoxBody<bytes::Bytes, octocrab::Error>>;

/// The response if it is a success, else the [`ApiError`] it carries (`what` says what was
/// being done).
async fn succeeded(client: &Octocrab, response: Answer, what: &str) -> Result<Answer, ApiError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let headers = response.headers().clone();
    let body = client.body_to_string(response).await.unwrap_or_default();
    Err(api_error(status, &headers, &body, what))
}

/// Reads an error response: 5xx and 429 are retriable, and so is a 403 that is a rate limit.
fn api_error(
    status: http::StatusCode,
    headers: &http::HeaderMap,
    body: &str,
    what: &str,
) -> ApiError {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let message_text = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.chars().take(200).collect());
    let retry_after = header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .or_else(|| {
            let remaining = header("x-ratelimit-remaining")?;
            let reset = header("x-ratelimit-reset")?.parse::<i64>().ok()?;
            (remaining.trim() == "0").then(|| {
                Duration::from_secs((reset - chrono::Utc::now().timestamp()).max(1) as u64)
            })
        });
    let rate_limited = status == http::StatusCode::TOO_MANY_REQUESTS
        || (status == http::StatusCode::FORBIDDEN
            && (retry_after.is_some() || message_text.to_lowercase().contains("rate limit")));
    ApiError {
        message: format!(
            "{what}: GitHub answered {}: {message_text}",
            status.as_u16()
        ),
        retriable: status.is_server_error() || rate_limited,
        retry_after,
        unreachable: false,
        status: Some(status.as_u16()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_fit_githubs_limit() {
        assert_eq!(
            status_description("step migrate failed on web-2 (exit 1)"),
            "step migrate failed on web-2 (exit 1)"
        );
        let long = "é".repeat(300);
        let cut = status_description(&long);
        assert_eq!(cut.chars().count(), DESCRIPTION_LIMIT);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn content_decoding() {
        let file = |content: &str| ContentFile {
            kind: "file".into(),
            encoding: Some("base64".into()),
            content: Some(content.into()),
        };
        assert_eq!(
            decode_content(&file("dmVyc2lv\nbjogMQo=\n")).unwrap(),
            "version: 1\n"
        );
        assert!(
            decode_content(&file("dmVyc2lv\\nbjogMQo="))
                .unwrap_err()
                .contains("invalid base64")
        );
        let dir = ContentFile {
            kind: "dir".into(),
            encoding: None,
            content: None,
        };
        assert_eq!(decode_content(&dir).unwrap_err(), "is a dir, not a file");
    }

    #[test]
    fn route_segments_are_encoded() {
        assert_eq!(encode_repo("acme/my repo"), "acme/my%20repo");
        assert_eq!(encode_segment("feature/x"), "feature%2Fx");
    }
}
