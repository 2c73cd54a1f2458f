//! Commands that talk to a running Dropship over its API: `dropship status` and
//! `dropship logs`. Where it is: `--url`, `DROPSHIP_URL`, or the config's `public_url`; who you
//! are: `--token` or `DROPSHIP_TOKEN` (a token of a user in `[[api.users]]`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use futures::StreamExt;
use serde::Deserialize;

/// Where the API is and how to sign in.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct Remote {
    /// The Dropship to ask (default: DROPSHIP_URL, else the config's server.public_url).
    #[arg(long, env = "DROPSHIP_URL")]
    url: Option<String>,
    /// A token of a user in [[api.users]].
    #[arg(long, env = "DROPSHIP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

impl Remote {
    fn base(&self) -> anyhow::Result<String> {
        let url = match &self.url {
            Some(url) => url.clone(),
            None => crate::config::Config::load(self.config.as_deref())?
                .public_url()
                .to_string(),
        };
        Ok(url.trim_end_matches('/').to_string())
    }

    fn request(&self, client: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
        let request = client.get(url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .user_agent(concat!("dropship-cli/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")
}

/// Sends `request` (to `url`): the answer if it succeeded, else what to do about it.
async fn send(request: reqwest::RequestBuilder, url: &str) -> anyhow::Result<reqwest::Response> {
    let response = request
        .send()
        .await
        .with_context(|| format!("asking {url}"))?;
    if !response.status().is_success() {
        return Err(refused(response, url).await);
    }
    Ok(response)
}

/// Turns an error answer into a message that says what to do.
async fn refused(response: reqwest::Response, url: &str) -> anyhow::Error {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let message = body["error"].as_str().unwrap_or("").to_string();
    match status.as_u16() {
        401 => anyhow::anyhow!(
            "{url}: not signed in ({message}); set DROPSHIP_TOKEN or --token to a token of a user in [[api.users]]"
        ),
        403 => anyhow::anyhow!("{url}: not allowed: {message}"),
        _ => anyhow::anyhow!("{url}: HTTP {status}: {message}"),
    }
}

#[derive(Debug, Deserialize)]
struct DeploymentRow {
    id: i64,
    repo: String,
    environment: String,
    task: String,
    #[serde(rename = "ref")]
    git_ref: String,
    sha: crate::sha::Sha,
    state: String,
    creator: Option<String>,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
}

fn took(row: &DeploymentRow) -> String {
    let parse = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    match (parse(&row.started_at), parse(&row.finished_at)) {
        (Some(start), Some(end)) => {
            crate::deploy::format_elapsed((end - start).to_std().unwrap_or_default())
        }
        (Some(_), None) => "running".into(),
        _ => String::new(),
    }
}

/// `dropship status`: recent deployments, newest first.
pub(super) async fn status(
    remote: &Remote,
    repo: Option<&str>,
    environment: Option<&str>,
    limit: u32,
) -> anyhow::Result<ExitCode> {
    let base = remote.base()?;
    let client = client()?;
    let url = format!("{base}/api/deployments");
    let mut query = vec![("limit", limit.to_string())];
    if let Some(repo) = repo {
        query.push(("repo", repo.to_string()));
    }
    if let Some(environment) = environment {
        query.push(("environment", environment.to_string()));
    }
    let response = send(remote.request(&client, &url).query(&query), &url).await?;
    let rows: Vec<DeploymentRow> = response
        .json()
        .await
        .with_context(|| format!("reading the answer of {url}"))?;
    if rows.is_empty() {
        println!("no deployments");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>6}  {:<9} {:<32} {:<10} {:<22} {:<12} {:>8}  created",
        "id", "state", "repo → environment", "task", "ref", "by", "took"
    );
    for row in &rows {
        let target = format!("{} → {}", row.repo, row.environment);
        let git_ref = format!("{}@{}", row.git_ref, row.sha.short());
        println!(
            "{:>6}  {:<9} {:<32} {:<10} {:<22} {:<12} {:>8}  {}",
            row.id,
            row.state,
            target,
            row.task,
            git_ref,
            row.creator.as_deref().unwrap_or("-"),
            took(row),
            row.created_at
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `dropship logs`: a deployment's log by id (with a token) or by its `log_url` (whose own
/// token opens it); with `--follow`, until it ends.
pub(super) async fn logs(remote: &Remote, which: &str, follow: bool) -> anyhow::Result<ExitCode> {
    let client = client()?;
    let (base, id, capability) = match which.parse::<i64>() {
        Ok(id) => (remote.base()?, id, None),
        Err(_) => parse_log_url(which)?,
    };
    let url = format!("{base}/api/deployments/{id}/log");
    let mut query = vec![("follow", follow.to_string())];
    if let Some(token) = &capability {
        query.push(("token", token.clone()));
    }
    let request = if capability.is_some() {
        client.get(&url)
    } else {
        remote.request(&client, &url)
    };
    let response = send(request.query(&query), &url).await?;
    let mut body = response.bytes_stream();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| format!("reading {url}"))?;
        out.write_all(&chunk)?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `https://host/deployments/42?token=abc` → (`https://host`, 42, `abc`).
fn parse_log_url(url: &str) -> anyhow::Result<(String, i64, Option<String>)> {
    let invalid = || {
        anyhow::anyhow!(
            "`{url}` is neither a deployment id nor a log URL (https://HOST/deployments/ID?token=...)"
        )
    };
    let (before, query) = url.split_once('?').unwrap_or((url, ""));
    let (base, id) = before.rsplit_once("/deployments/").ok_or_else(invalid)?;
    let id = id
        .trim_end_matches('/')
        .parse::<i64>()
        .map_err(|_| invalid())?;
    let token = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .map(str::to_string);
    Ok((base.to_string(), id, token))
}

/// `dropship token NAME`: a new random token and the config entry that admits it.
pub(super) fn token(name: &str, role: crate::config::Role) -> ExitCode {
    let token = crate::store::new_token();
    let hash = crate::http::auth::hash_token(&token);
    println!("token for {name} (shown once; keep it secret): {token}");
    println!();
    println!("Add to the operator config:");
    println!();
    println!("[[api.users]]");
    println!("name = {}", toml_string(name));
    println!("role = \"{}\"", role.as_str());
    println!("token_sha256 = \"{hash}\"");
    ExitCode::SUCCESS
}

fn toml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_url_names_the_server_the_deployment_and_its_token() {
        let (base, id, token) =
            parse_log_url("https://deploy.example.com/deployments/42?token=abc").unwrap();
        assert_eq!(base, "https://deploy.example.com");
        assert_eq!(id, 42);
        assert_eq!(token.as_deref(), Some("abc"));
        assert!(parse_log_url("yesterday").is_err());
    }
}
