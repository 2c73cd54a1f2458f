//! The `dropship` command line.

use std::collections::BTreeSet;
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
use crate::manifest::{Diagnostic, Diagnostics, FILE_NAMES, Inventory, InventoryServer, Manifest};
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
        .with_writer(std::io::stderr);
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
        Command::Rollback {
            repo,
            environment,
            git_ref,
            config,
        } => rollback(&repo, &environment, git_ref.as_deref(), config.as_deref()).await,
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
            Some(latest) => latest.sha,
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
                required_contexts: Vec::new(),
                payload: serde_json::json!({}),
            },
            installation,
        )
        .await?;
    println!(
        "created GitHub deployment {} of {repo} to {environment}: task rollback at {}",
        created.id,
        created.sha.get(..7).unwrap_or(&created.sha)
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
    let servers = config
        .servers
        .iter()
        .map(|s| InventoryServer {
            name: s.name.clone(),
            roles: s.roles.clone(),
            allowed: entry.is_none_or(|e| e.allows_server(&s.name)),
        })
        .collect();
    let secrets: BTreeSet<String> = match entry {
        Some(e) => e.secrets.keys().cloned().collect(),
        None => config
            .repos
            .iter()
            .flat_map(|r| r.secrets.keys().cloned())
            .collect(),
    };
    let hosts: Vec<String> = match entry {
        Some(e) => e.hosts.clone(),
        None => config.repos.iter().flat_map(|r| r.hosts.clone()).collect(),
    };
    Ok(Inventory {
        repo: repo.unwrap_or("this repository").to_string(),
        servers,
        secrets,
        hosts,
        preview_domain: config.proxy.preview_domain.clone(),
        preview_scheme: if config.proxy.listen_tls.is_some() {
            "https".into()
        } else {
            "http".into()
        },
    })
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
        format!("local/{base}")
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
    let engine = crate::server::engine(config.clone(), manifests).await?;
    let new = NewDeployment {
        github_id: None,
        repo,
        environment: args.environment,
        task: args.task,
        git_ref,
        sha,
        payload,
        description: Some("dropship run".into()),
        creator: std::env::var("USER").ok(),
        installation_id: None,
        transient: false,
        production: false,
        token: crate::store::new_token(),
    };
    let Inserted::New(deployment) = engine.store.insert_deployment(new, None, None).await? else {
        anyhow::bail!("a local run cannot be a duplicate");
    };
    let events = engine.bus.subscribe();
    let printer = tokio::spawn(print_progress(events, deployment.id));
    eprintln!(
        "dropship: {} {} → {} (recorded as deployment {}, log: {})",
        deployment.repo,
        deployment.task,
        deployment.environment,
        deployment.id,
        engine.log_url(&deployment)
    );
    let outcome = engine.run(deployment).await?;
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
    let fleet = crate::exec::Fleet::from_config(&config)?;
    let hosts = crate::containers::Hosts::from_config(&config, &fleet)?;
    let mut failed = 0;
    let limit = Duration::from_secs(30);
    let checks = config.servers.iter().map(|server| {
        let executor = fleet.get(&server.name);
        let host = hosts.get(&server.name);
        async move {
            let executor = executor?;
            let result = tokio::time::timeout(limit, executor.check()).await;
            // The engine only once the server answers: its socket comes over that connection.
            let docker = match (&result, host) {
                (Ok(Ok(_)), Some(host)) => Some(tokio::time::timeout(limit, host.version()).await),
                _ => None,
            };
            Some((server, executor.host_key_status(), result, docker))
        }
    });
    for (server, host_key, result, docker) in futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
    {
        let name = &server.name;
        let docker = match docker {
            None => String::new(),
            Some(Ok(Ok(version))) => format!("   docker: {version}"),
            Some(outcome) => {
                let why = match outcome {
                    Ok(Err(error)) => error.to_string(),
                    _ => "no answer within 30s".to_string(),
                };
                if server.docker.is_some() {
                    failed += 1;
                    format!("   docker: FAILED {why}")
                } else {
                    format!(
                        "   docker: not reachable ({why}); set docker = \"none\" if this server runs no containers"
                    )
                }
            }
        };
        match result {
            Ok(Ok(system)) => {
                println!("{name:<16} ok      {system:<28} host key: {host_key}{docker}")
            }
            Ok(Err(error)) => {
                failed += 1;
                println!("{name:<16} FAILED  {error}   host key: {host_key}");
            }
            Err(_) => {
                failed += 1;
                println!("{name:<16} FAILED  no answer within 30s   host key: {host_key}");
            }
        }
    }
    println!(
        "{} server{} checked, {failed} failed",
        config.servers.len(),
        if config.servers.len() == 1 { "" } else { "s" }
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
