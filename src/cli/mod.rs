//! The `dropship` command line.

mod remote;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::github::{FixedManifest, ManifestFile};
use crate::logs::Event;
use crate::manifest::{Diagnostic, Diagnostics, FILE_NAMES, Inventory, Manifest};
use crate::store::{Inserted, NewDeployment, State};

#[derive(Debug, Parser)]
#[command(
    name = "dropship",
    version,
    about = "Turns GitHub deployments into real deployments on your own servers"
)]
pub struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Viewer,
    Deployer,
    Admin,
}

impl From<RoleArg> for config::Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Viewer => config::Role::Viewer,
            RoleArg::Deployer => config::Role::Deployer,
            RoleArg::Admin => config::Role::Admin,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: webhook intake, deployments, pages and API.
    Serve {
        /// The operator config (default: config/dropship.toml, else the built-in example).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a manifest without a network; with --config, also against the operator's servers
    /// and secrets.
    Validate {
        /// The manifest (default: ./dropship.yml, else ./.github/dropship.yml).
        path: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Check servers and secrets as this repository (`owner/name`) may use them.
        #[arg(long)]
        repo: Option<String>,
    },
    /// Run a task from a local manifest, without GitHub, printing live progress.
    Run(RunArgs),
    /// Connect to every configured server and report reachability, host-key status and the
    /// version of its Docker engine.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Create a GitHub deployment (GitHub then sends Dropship its webhook); with --wait, follow
    /// its statuses until it ends: exit 0 on success, 1 otherwise.
    Deploy {
        /// The repository, `owner/name`.
        #[arg(long)]
        repo: String,
        /// The branch, tag or sha to deploy.
        #[arg(long = "ref")]
        git_ref: String,
        #[arg(long)]
        environment: String,
        #[arg(long, default_value = "deploy")]
        task: String,
        /// JSON handed to the deployment (`deployment.payload.KEY` in the manifest).
        #[arg(long)]
        payload: Option<String>,
        /// Follow the statuses until the deployment ends.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits at most.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Deploy even if the ref's commit statuses have not all passed.
        #[arg(long)]
        skip_checks: bool,
        /// GitHub's API (for GitHub Enterprise Server: https://HOST/api/v3).
        #[arg(long)]
        api_url: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Roll an environment back: creates a GitHub deployment with task `rollback`, which
    /// Dropship runs when GitHub delivers it (each server starts the previous successful
    /// version it keeps).
    Rollback {
        /// The repository, `owner/name`.
        #[arg(long)]
        repo: String,
        #[arg(long)]
        environment: String,
        /// The commit whose manifest names the apps (default: that of the environment's newest
        /// deployment on GitHub).
        #[arg(long = "ref")]
        git_ref: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Recent deployments, newest first, from a running Dropship's API.
    Status {
        /// Only this repository (`owner/name`).
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        environment: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// A deployment's log: by Dropship id (with a token), or by its log URL.
    Logs {
        /// The deployment id (as `dropship status` shows it), or its log URL.
        deployment: String,
        /// Keep following until the deployment ends.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        remote: remote::Remote,
    },
    /// Make an API token for a user: prints the token once and the [[api.users]] entry (with
    /// its SHA-256) for the operator config.
    Token {
        /// The user's name (shown in the audit log and on the dashboard).
        name: String,
        #[arg(long, value_enum, default_value_t = RoleArg::Viewer)]
        role: RoleArg,
    },
    /// Print the commented example operator config.
    DefaultConfig,
    /// Print the manifest's JSON Schema.
    Schema,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = !matches!(cli.command, Command::Serve { .. });
    init_tracing(cli.log_format, if quiet { "warn" } else { "info" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Masks every configured secret once `server::local` has read the config.
        .with_writer(crate::logs::MaskedWriter::stderr());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { config } => serve(config.as_deref()).await,
        Command::Validate { path, config, repo } => {
            validate(path.as_deref(), config.as_deref(), repo.as_deref())
        }
        Command::Run(args) => run(args).await,
        Command::Check { config } => check(config.as_deref()).await,
        Command::Deploy {
            repo,
            git_ref,
            environment,
            task,
            payload,
            wait,
            timeout,
            skip_checks,
            api_url,
            config,
        } => {
            let request = DeployRequest {
                repo,
                git_ref,
                environment,
                task,
                payload,
                skip_checks,
            };
            deploy(request, wait.then_some(timeout), api_url, config.as_deref()).await
        }
        Command::Rollback {
            repo,
            environment,
            git_ref,
            config,
        } => rollback(&repo, &environment, git_ref.as_deref(), config.as_deref()).await,
        Command::Status {
            repo,
            environment,
            limit,
            remote,
        } => remote::status(&remote, repo.as_deref(), environment.as_deref(), limit).await,
        Command::Logs {
            deployment,
            follow,
            remote,
        } => remote::logs(&remote, &deployment, follow).await,
        Command::Token { name, role } => Ok(remote::token(&name, role.into())),
        Command::DefaultConfig => {
            print!("{}", config::EXAMPLE);
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            println!("{}", crate::manifest::schema());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What `dropship deploy` asks GitHub for.
#[derive(Debug)]
struct DeployRequest {
    repo: String,
    git_ref: String,
    environment: String,
    task: String,
    payload: Option<String>,
    skip_checks: bool,
}

/// A GitHub client for the CLI: `GITHUB_TOKEN` wins over the config's credentials, and
/// `--api-url` over its `api_url`.
fn cli_github(config: &Config, api_url: Option<String>) -> anyhow::Result<crate::github::Github> {
    let mut section = config.github.clone();
    if let Some(url) = api_url {
        section.api_url = url;
    }
    if let Ok(token) = std::env::var("GITHUB_TOKEN") {
        if !token.trim().is_empty() {
            section.token = Some(secrecy::SecretString::from(token));
            section.app = None;
        }
    }
    if section.token.is_none() && section.app.is_none() {
        anyhow::bail!(
            "no GitHub credentials: set GITHUB_TOKEN, or github.token (or [github.app]) in the config"
        );
    }
    crate::github::Github::from_config(&section)
}

/// Says what a refused deployment means, for the GitHub answers a person can act on.
fn explain_refusal(error: &crate::github::ApiError, request: &DeployRequest) -> String {
    match error.status {
        Some(401) => format!(
            "GitHub refused the credentials (401): check GITHUB_TOKEN or github.token ({})",
            error.message
        ),
        Some(403) => format!(
            "GitHub refused (403): the token may lack `deployments: write` on {} ({})",
            request.repo, error.message
        ),
        Some(404) => format!(
            "GitHub knows no repository {} for these credentials (404)",
            request.repo
        ),
        Some(409) => format!(
            "GitHub refused to deploy {} (409): {}. The ref's commit statuses have not all passed; wait for them, or use --skip-checks",
            request.git_ref, error.message
        ),
        Some(422) => format!(
            "GitHub could not create the deployment of `{}` (422): {}. Is the ref a branch, tag or sha of {}?",
            request.git_ref, error.message, request.repo
        ),
        _ => error.message.clone(),
    }
}

async fn deploy(
    request: DeployRequest,
    wait: Option<Duration>,
    api_url: Option<String>,
    path: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    if !request.repo.contains('/') {
        anyhow::bail!("--repo must be owner/name, not `{}`", request.repo);
    }
    let payload = match &request.payload {
        Some(text) => serde_json::from_str(text).context("--payload is not JSON")?,
        None => serde_json::json!({}),
    };
    let github = cli_github(&config, api_url)?;
    let installation = github.installation_for(&request.repo).await?;
    check_environment(&github, &request, installation).await?;
    let created = github
        .create_deployment(
            &request.repo,
            &crate::github::NewGithubDeployment {
                git_ref: &request.git_ref,
                task: &request.task,
                environment: &request.environment,
                description: "created by dropship deploy",
                auto_merge: false,
                required_contexts: request.skip_checks.then(Vec::new),
                payload,
            },
            installation,
        )
        .await
        .map_err(|e| anyhow::anyhow!(explain_refusal(&e, &request)))?;
    println!(
        "created deployment {} of {}@{} ({}) to {}, task {}",
        created.id,
        request.repo,
        request.git_ref,
        created.sha.short(),
        request.environment,
        request.task
    );
    let Some(limit) = wait else {
        // Dropship answers GitHub's webhook within milliseconds with a `queued` status that
        // carries the log URL: wait a little for it.
        match first_log_url(&github, &request.repo, created.id, installation).await {
            Some(url) => println!("log: {url}"),
            None => {
                println!("Dropship has not picked it up yet; follow it with --wait, or on GitHub")
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    follow_statuses(&github, &request.repo, created.id, installation, limit).await
}

/// Prints GitHub deployment `id`'s statuses as they come, asking every second (GitHub offers
/// no stream), until a final one or `limit`; the exit code says how it ended.
async fn follow_statuses(
    github: &crate::github::Github,
    repo: &str,
    id: i64,
    installation: Option<i64>,
    limit: Duration,
) -> anyhow::Result<ExitCode> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = std::collections::HashSet::new();
    let mut progress = Progress::new();
    loop {
        let mut statuses = match github.deployment_statuses(repo, id, installation).await {
            Ok(statuses) => statuses,
            // GitHub hiccups (5xx, rate limits, the network): ask again on the next round.
            Err(error) if error.retriable && tokio::time::Instant::now() < deadline => {
                eprintln!("warning: {error}; trying again");
                Vec::new()
            }
            Err(error) => return Err(error.into()),
        };
        statuses.reverse(); // oldest first
        for status in statuses {
            if seen.insert(status.id) {
                if let Some(code) = progress.status(&status) {
                    return Ok(code);
                }
            }
        }
        progress.tick();
        if tokio::time::Instant::now() >= deadline {
            progress.end_line();
            eprintln!(
                "error: deployment {id} did not end within {}",
                humantime::format_duration(limit)
            );
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What `dropship deploy --wait` prints: each status on a line of its own, and on a terminal
/// one more line that says how long it has been (in CI, plain lines only).
struct Progress {
    live: bool,
    started: tokio::time::Instant,
    log_shown: bool,
    current: String,
    spin: usize,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            live: std::io::stdout().is_terminal(),
            started: tokio::time::Instant::now(),
            log_shown: false,
            current: String::from("waiting"),
            spin: 0,
        }
    }

    /// Prints a new status (and the log URL, the first time one comes); the exit code once it
    /// is final.
    fn status(&mut self, status: &crate::github::GithubStatus) -> Option<ExitCode> {
        if self.live {
            // Clear the progress line before printing a status above it.
            print!("\r\x1b[2K");
        }
        self.current = status.state.clone();
        if let (false, Some(url)) = (self.log_shown, &status.log_url) {
            println!("log: {url}");
            self.log_shown = true;
        }
        let description = status.description.as_deref().unwrap_or_default();
        println!("{:<12} {description}", status.state);
        match status.state.as_str() {
            "success" => {
                if let Some(url) = status.environment_url.as_deref().filter(|u| !u.is_empty()) {
                    println!("environment: {url}");
                }
                Some(ExitCode::SUCCESS)
            }
            "failure" | "error" | "inactive" => Some(ExitCode::FAILURE),
            _ => None,
        }
    }

    /// Redraws the progress line on a terminal.
    fn tick(&mut self) {
        if !self.live {
            return;
        }
        use std::io::Write as _;
        const FRAMES: [&str; 4] = ["|", "/", "-", "\\"];
        self.spin += 1;
        print!(
            "\r\x1b[2K{} {} · {}",
            FRAMES[self.spin % FRAMES.len()],
            self.current,
            crate::deploy::format_elapsed(Duration::from_secs(self.started.elapsed().as_secs()))
        );
        let _ = std::io::stdout().flush();
    }

    /// Ends the progress line before a last message.
    fn end_line(&self) {
        if self.live {
            println!();
        }
    }
}

/// The log URL of GitHub deployment `id`, once Dropship's first status names it (10 s at
/// most).
async fn first_log_url(
    github: &crate::github::Github,
    repo: &str,
    id: i64,
    installation: Option<i64>,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if let Ok(statuses) = github.deployment_statuses(repo, id, installation).await {
            if let Some(url) = statuses.iter().rev().find_map(|s| s.log_url.clone()) {
                return Some(url);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// Refuses early, before GitHub records anything, a deployment the manifest at the ref would
/// refuse: no manifest there, or no such environment in it.
async fn check_environment(
    github: &crate::github::Github,
    request: &DeployRequest,
    installation: Option<i64>,
) -> anyhow::Result<()> {
    use crate::github::ManifestSource as _;
    let file = github
        .manifest(&request.repo, &request.git_ref, installation)
        .await
        .map_err(|e| anyhow::anyhow!(explain_refusal(&e, request)))?;
    let Some(file) = file else {
        anyhow::bail!(
            "{} has no {} at `{}` (is the ref right?): Dropship would refuse this deployment",
            request.repo,
            FILE_NAMES.join(" or "),
            request.git_ref
        );
    };
    // A manifest that does not parse is Dropship's to report, with file and line.
    if let Ok(manifest) = Manifest::parse(&file.path, &file.text) {
        if !manifest.accepts_environment(&request.environment) {
            anyhow::bail!(
                "{} at `{}` has no environment `{}` (it has: {}); Dropship would refuse this deployment",
                file.path,
                request.git_ref,
                request.environment,
                manifest.environments().join(", ")
            );
        }
    }
    Ok(())
}

async fn rollback(
    repo: &str,
    environment: &str,
    git_ref: Option<&str>,
    path: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    if !repo.contains('/') {
        anyhow::bail!("--repo must be owner/name, not `{repo}`");
    }
    let github = crate::github::Github::from_config(&config.github)?;
    let installation = github.installation_for(repo).await?;
    let git_ref = match git_ref {
        Some(git_ref) => git_ref.to_string(),
        None => match github
            .latest_deployment(repo, environment, installation)
            .await?
        {
            Some(latest) => latest.sha.to_string(),
            None => anyhow::bail!(
                "GitHub has no deployment of {repo} to {environment}; give --ref to say which commit's manifest to use"
            ),
        },
    };
    let created = github
        .create_deployment(
            repo,
            &crate::github::NewGithubDeployment {
                git_ref: &git_ref,
                task: "rollback",
                environment,
                description: "rollback (dropship rollback)",
                auto_merge: false,
                // A rollback returns to a version that passed before: no checks to wait for.
                required_contexts: Some(Vec::new()),
                payload: serde_json::json!({}),
            },
            installation,
        )
        .await?;
    println!(
        "created GitHub deployment {} of {repo} to {environment}: task rollback at {}",
        created.id,
        created.sha.short()
    );
    println!(
        "Dropship runs it when GitHub delivers the webhook; its statuses show on GitHub's Environments page"
    );
    Ok(ExitCode::SUCCESS)
}

async fn serve(path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match terminate.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down");
        signal.cancel();
    });
    crate::server::run(config, listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// The manifest path given, or the first of the standard names that exists.
fn manifest_path(path: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = path {
        return Ok(path.to_path_buf());
    }
    FILE_NAMES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .with_context(|| format!("no manifest here: looked for {}", FILE_NAMES.join(" and ")))
}

fn read_manifest(path: &Path) -> anyhow::Result<(String, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((path.display().to_string(), text))
}

/// What the config offers `repo`, or (without a repo) everything it defines.
fn inventory(config: &Config, repo: Option<&str>) -> anyhow::Result<Inventory> {
    let entry = match repo {
        Some(name) => Some(
            config
                .repo(name)
                .with_context(|| format!("no [[repos]] entry in the config matches {name}"))?,
        ),
        None => None,
    };
    Ok(Inventory::from_config(
        config,
        repo.unwrap_or("this repository"),
        entry,
    ))
}

fn validate(
    path: Option<&Path>,
    config_path: Option<&Path>,
    repo: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let path = manifest_path(path)?;
    let (name, text) = read_manifest(&path)?;
    let result = Manifest::parse(&name, &text).and_then(|manifest| {
        if config_path.is_some() || repo.is_some() {
            let config_file = config_path
                .map_or_else(|| config::DEFAULT_PATH.into(), |p| p.display().to_string());
            let config = Config::load(config_path).map_err(|e| {
                Diagnostics(vec![Diagnostic::about_file(config_file, format!("{e:#}"))])
            })?;
            let inventory = inventory(&config, repo).map_err(|e| {
                Diagnostics(vec![Diagnostic::about_file(name.clone(), format!("{e:#}"))])
            })?;
            manifest.check_against(&inventory)?;
        }
        Ok(manifest)
    });
    match result {
        Ok(manifest) => {
            let environments: Vec<_> = manifest.environment_names().collect();
            let tasks: Vec<_> = manifest.task_names().collect();
            println!(
                "{name}: valid ({} environment{}: {}; {} task{}: {})",
                environments.len(),
                if environments.len() == 1 { "" } else { "s" },
                environments.join(", "),
                tasks.len(),
                if tasks.len() == 1 { "" } else { "s" },
                tasks.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(diagnostics) => {
            for diagnostic in &diagnostics.0 {
                println!("{diagnostic}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The manifest environment to deploy to.
    #[arg(long, short)]
    environment: String,
    /// The manifest task to run.
    #[arg(long, short, default_value = "deploy")]
    task: String,
    /// The manifest (default: ./dropship.yml, else ./.github/dropship.yml).
    #[arg(long, short)]
    manifest: Option<PathBuf>,
    /// The operator config (default: config/dropship.toml, else the built-in example).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The repository the run is recorded as (default: local/<directory name>).
    #[arg(long)]
    repo: Option<String>,
    /// The ref that expressions see (default: from git, if any).
    #[arg(long = "ref")]
    git_ref: Option<String>,
    /// The commit that expressions see (default: from git, if any).
    #[arg(long)]
    sha: Option<String>,
    /// A JSON object, seen as `deployment.payload`.
    #[arg(long)]
    payload: Option<String>,
}

fn git(args: &[&str], dir: &Path) -> Option<String> {
    let output = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = Arc::new(Config::load(args.config.as_deref())?);
    let path = manifest_path(args.manifest.as_deref())?;
    let (name, text) = read_manifest(&path)?;
    let directory = std::fs::canonicalize(&path)?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let repo = args.repo.unwrap_or_else(|| {
        let base = directory
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "local".into());
        // `_` cannot begin a GitHub owner, so no GitHub repository matches this name.
        format!("_local/{base}")
    });
    let payload = match &args.payload {
        Some(text) => serde_json::from_str(text).context("--payload is not JSON")?,
        None => serde_json::json!({}),
    };
    let sha = args
        .sha
        .or_else(|| git(&["rev-parse", "HEAD"], &directory))
        .unwrap_or_else(|| "0".repeat(40));
    let git_ref = args
        .git_ref
        .or_else(|| git(&["rev-parse", "--abbrev-ref", "HEAD"], &directory))
        .unwrap_or_else(|| "local".into());
    let manifests = Arc::new(FixedManifest {
        manifest: ManifestFile { path: name, text },
        root: Some(directory.clone()),
    });
    let local = crate::server::local(config.clone(), manifests).await?;
    let new = NewDeployment {
        github_id: None,
        repo,
        environment: args.environment,
        task: args.task,
        git_ref,
        sha: sha.into(),
        payload,
        description: Some("dropship run".into()),
        creator: std::env::var("USER").ok(),
        installation_id: None,
        transient: false,
        production: false,
    };
    let Inserted::New(deployment) = local.store.insert_deployment(new, None, None).await? else {
        anyhow::bail!("a local run cannot be a duplicate");
    };
    let events = local.bus.subscribe();
    let printer = tokio::spawn(print_progress(events, deployment.id));
    eprintln!(
        "dropship: {} {} → {} (recorded as deployment {}, log: {})",
        deployment.repo,
        deployment.task,
        deployment.environment,
        deployment.id,
        local.links.url(&deployment)
    );
    let outcome = local.runner.run(deployment).await?;
    // The final state event ends the printer once every line before it has been printed.
    let _ = tokio::time::timeout(Duration::from_secs(5), printer).await;
    Ok(if outcome.state == State::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints a deployment's events as they happen: `server  step | line`.
async fn print_progress(mut events: tokio::sync::broadcast::Receiver<Arc<Event>>, id: i64) {
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let paint = |code: &str, text: &str| {
        if color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    };
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                println!(
                    "{}",
                    paint("33", &format!("… {n} events skipped (see the log page)"))
                );
                continue;
            }
            Err(_) => return,
        };
        if event.deployment_id() != id {
            continue;
        }
        match &*event {
            Event::Log(line) => {
                let server = line.server.as_deref().unwrap_or("dropship");
                let prefix = match &line.step {
                    Some(step) => format!("{server:>10}  {step} |"),
                    None => format!("{server:>10}  |"),
                };
                let text = match line.stream.as_str() {
                    "stderr" => paint("31", &line.line),
                    "dropship" => paint("36", &line.line),
                    _ => line.line.clone(),
                };
                println!("{} {text}", paint("2", &prefix));
            }
            Event::State { state, .. } if state.is_final() => return,
            _ => {}
        }
    }
}

async fn check(path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let fleet = crate::exec::Fleet::from_config(&config, Default::default())?;
    let hosts = crate::containers::Hosts::from_config(&config, &fleet)?;
    let mut failed = 0;
    for report in crate::deploy::survey(&config, &fleet, &hosts, Duration::from_secs(30)).await {
        let name = &report.name;
        let host_key = &report.host_key;
        if !report.reachable {
            failed += 1;
            println!(
                "{name:<16} FAILED  {}   host key: {host_key}",
                report.system
            );
            continue;
        }
        let docker = match (&report.docker_version, &report.docker_error) {
            (Some(version), _) => format!("   docker: {version}"),
            (None, Some(why)) if report.docker_configured => {
                failed += 1;
                format!("   docker: FAILED {why}")
            }
            (None, Some(why)) => format!(
                "   docker: not reachable ({why}); set docker = \"none\" if this server runs no containers"
            ),
            (None, None) => String::new(),
        };
        println!(
            "{name:<16} ok      {:<28} host key: {host_key}{docker}",
            report.system
        );
    }
    println!(
        "{} server{} checked, {failed} failed",
        config.servers.len(),
        if config.servers.len() == 1 { "" } else { "s" }
    );
    for risk in config.risks() {
        println!("warning: {risk}");
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
