//! The operator's configuration: what Dropship may touch and with which credentials.
//!
//! Layers, later ones win: built-in defaults, then the TOML file, then environment variables
//! named `DROPSHIP__SECTION__KEY` (for example `DROPSHIP__SERVER__LISTEN=0.0.0.0:8080`).
//! Unknown keys are rejected. Secrets are [`SecretString`]s, which print as `[REDACTED]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The commented example configuration, compiled in: `dropship default-config` prints it and
/// it is the configuration used when no file is given and `config/dropship.toml` does not exist.
pub const EXAMPLE: &str = include_str!("../config/dropship.toml");

/// The path tried when `--config` is not given.
pub const DEFAULT_PATH: &str = "config/dropship.toml";

/// The name of the built-in server that runs commands on this machine, without SSH.
pub const LOCAL: &str = "local";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub github: GithubSection,
    #[serde(default)]
    pub api: ApiSection,
    #[serde(default)]
    pub ssh: SshSection,
    /// Every machine a deployment may run on. Repositories name them (or their roles).
    #[serde(default)]
    pub servers: Vec<ServerEntry>,
    /// Which repositories may deploy, where, and with which secrets.
    #[serde(default)]
    pub repos: Vec<RepoEntry>,
    /// Credentials for image registries, used to pull and push.
    #[serde(default)]
    pub registries: Vec<RegistryEntry>,
    #[serde(default)]
    pub containers: ContainersSection,
    #[serde(default)]
    pub proxy: ProxySection,
    #[serde(default)]
    pub logs: LogsSection,
}

/// Caps on what a deployment's commands may write to its log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsSection {
    /// Output bytes stored per step and server; past it the output is read and discarded.
    #[serde(default = "default_max_step_bytes")]
    pub max_step_bytes: u64,
    /// Output bytes stored per deployment, all steps and servers together.
    #[serde(default = "default_max_deployment_bytes")]
    pub max_deployment_bytes: u64,
}

impl Default for LogsSection {
    fn default() -> Self {
        LogsSection {
            max_step_bytes: default_max_step_bytes(),
            max_deployment_bytes: default_max_deployment_bytes(),
        }
    }
}

fn default_max_step_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_max_deployment_bytes() -> u64 {
    64 * 1024 * 1024
}

/// The built-in reverse proxy that carries users' traffic to the containers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// `builtin` (Dropship serves the traffic) or `caddy` (Dropship writes the routes into a
    /// running Caddy through its admin API).
    #[serde(default)]
    pub backend: ProxyBackend,
    /// With `backend = "caddy"`: Caddy's admin API.
    #[serde(default = "default_caddy_admin")]
    pub caddy_admin: String,
    /// Where the proxy listens for plain HTTP (with Caddy: where Caddy's `dropship` server
    /// listens); without it (and `listen_tls`) there is no proxy.
    pub listen: Option<SocketAddr>,
    /// Where it listens for HTTPS, with the certificate chosen by SNI from `certificates`.
    pub listen_tls: Option<SocketAddr>,
    /// Certificates for HTTPS, per host name.
    #[serde(default)]
    pub certificates: Vec<CertificateEntry>,
    /// `round_robin` or `least_in_flight`.
    #[serde(default)]
    pub balance: Balance,
    #[serde(default = "default_proxy_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// For an upstream's response headers.
    #[serde(default = "default_proxy_response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    /// A client connection with no request for this long is closed.
    #[serde(default = "default_proxy_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a replaced upstream gets to finish its requests before its container stops.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// An upstream that refused a connection gets no requests for this long.
    #[serde(default = "default_eject_for", with = "humantime_serde")]
    pub eject_for: Duration,
    /// Client connections served at once by each of the built-in proxy's listeners (an
    /// upgraded one, e.g. a WebSocket, counts until it closes); more wait in the kernel's
    /// listen backlog.
    #[serde(default = "default_proxy_max_connections")]
    pub max_connections: usize,
    /// Threads the built-in proxy runs on, each with its own listener on every proxy address
    /// (`SO_REUSEPORT`); 0, the default, means one per core Dropship may run on; at most
    /// [`MAX_PROXY_WORKERS`].
    #[serde(default)]
    pub workers: usize,
    /// Preview environments get the host `APP-ENVIRONMENT-DIGEST.preview_domain` (point a wildcard
    /// DNS record and certificate at the proxy).
    pub preview_domain: Option<String>,
}

/// Why the operator config refuses a repository, or one of its environments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("repository {repo} is not allowed by the operator config")]
    Repository { repo: String },
    #[error("environment {environment} is not allowed for {repo} by the operator config")]
    Environment { repo: String, environment: String },
}

/// A certificate chain and its key (PEM files), served for `hosts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateEntry {
    pub hosts: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyBackend {
    #[default]
    Builtin,
    Caddy,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastInFlight,
}

impl Default for ProxySection {
    fn default() -> Self {
        ProxySection {
            backend: ProxyBackend::default(),
            caddy_admin: default_caddy_admin(),
            listen: None,
            listen_tls: None,
            certificates: Vec::new(),
            balance: Balance::default(),
            connect_timeout: default_proxy_connect_timeout(),
            response_timeout: default_proxy_response_timeout(),
            idle_timeout: default_proxy_idle_timeout(),
            drain_timeout: default_drain_timeout(),
            eject_for: default_eject_for(),
            max_connections: default_proxy_max_connections(),
            workers: 0,
            preview_domain: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Where the HTTP listener (webhooks, pages, API) binds.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The base of every URL Dropship hands out, `log_url` among them.
    #[serde(default = "default_public_url")]
    pub public_url: String,
    /// Holds `dropship.db` (SQLite) and the SSH control sockets and known-hosts files.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Webhook bodies above this size are refused with 413. GitHub caps payloads at 25 MB.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Deployments running at once (each environment runs one at a time); more wait queued.
    #[serde(default = "default_max_running_deployments")]
    pub max_running_deployments: usize,
    /// Environments with queued deployments the scheduler keeps in memory; more wait in the
    /// store only and are read, oldest first, as the scheduler catches up.
    #[serde(default = "default_queued_in_memory")]
    pub queued_in_memory: usize,
    /// The longest a whole deployment may run unless its manifest's environment says
    /// otherwise (`timeout`); past it, its running steps are killed and it ends `error`.
    #[serde(default = "default_deployment_timeout", with = "humantime_serde")]
    pub deployment_timeout: Duration,
    /// On SIGTERM, how long running deployments may go on before their steps are killed and
    /// they end `error` ("interrupted: shutdown"). Queued ones stay queued for the next start.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Dropship's secret key (32 random bytes, created at first start), from which log links'
    /// tokens are derived; default `<data_dir>/dropship.key`.
    pub key_file: Option<PathBuf>,
    /// A connection that has not sent a whole request head within this is closed.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A request body not read whole within this (from the end of its head) is refused.
    #[serde(default = "default_body_read_timeout", with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubSection {
    /// GitHub's REST API; set it to `https://HOST/api/v3` for GitHub Enterprise Server.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// A token with `deployments: write` and `contents: read`, when not using a GitHub App.
    pub token: Option<SecretString>,
    /// GitHub App credentials; installation tokens are fetched per delivery's installation.
    pub app: Option<GithubApp>,
    /// Any one of these verifies a delivery, so a secret can be rotated without downtime.
    #[serde(default)]
    pub webhook_secrets: Vec<SecretString>,
    /// The first wait before a failed status post is retried; it doubles up to `retry_max`.
    #[serde(default = "default_retry_base", with = "humantime_serde")]
    pub retry_base: Duration,
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// How often the reconciler looks for deployments whose webhook never arrived (and once
    /// at start); `0s` turns it off.
    #[serde(default = "default_reconcile_interval", with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// How far back it looks: older deployments are left alone.
    #[serde(default = "default_reconcile_window", with = "humantime_serde")]
    pub reconcile_window: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubApp {
    pub app_id: u64,
    pub private_key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Who may use the API (bearer tokens) and the dashboard (the login form).
    #[serde(default)]
    pub users: Vec<UserEntry>,
    /// How long a dashboard login lasts.
    #[serde(default = "default_session_ttl", with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Failed sign-ins for one name within `login_window` before that name is refused (429)
    /// until the window ends.
    #[serde(default = "default_login_failures_per_name")]
    pub login_failures_per_name: u32,
    /// The same, for one client address (any names).
    #[serde(default = "default_login_failures_per_address")]
    pub login_failures_per_address: u32,
    /// How long failed sign-ins are counted, and how long a throttled name or address waits.
    #[serde(default = "default_login_window", with = "humantime_serde")]
    pub login_window: Duration,
    /// Names and addresses the sign-in throttle remembers at most (the oldest go first).
    #[serde(default = "default_login_throttle_entries")]
    pub login_throttle_entries: usize,
}

/// A person or a tool with a token. Only the token's SHA-256 is kept here: `dropship token`
/// makes a token and prints this entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the token (which is also the login password).
    pub token_sha256: String,
}

/// What a user may do; each role may do all that the roles before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads deployments, environments, servers, apps and logs.
    Viewer,
    /// Also deploys, redeploys, rolls back, cancels, locks and tears down.
    Deployer,
    /// Also reads the audit log.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            users: Vec::new(),
            session_ttl: default_session_ttl(),
            login_failures_per_name: default_login_failures_per_name(),
            login_failures_per_address: default_login_failures_per_address(),
            login_window: default_login_window(),
            login_throttle_entries: default_login_throttle_entries(),
        }
    }
}

fn default_session_ttl() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_login_failures_per_name() -> u32 {
    5
}
fn default_login_failures_per_address() -> u32 {
    20
}
fn default_login_window() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_login_throttle_entries() -> usize {
    10_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSection {
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A master connection unused this long is closed; the next step opens a new one.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// `dropship serve` opens a master connection to every SSH server at start (at most
    /// [`crate::exec::CONNECT_AT_ONCE`] at a time), so the first deployment after a restart finds
    /// them open. They close again after `idle_timeout` unused.
    #[serde(default)]
    pub connect_at_start: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    pub name: String,
    /// A host name or address, or `local` for this machine (no SSH).
    pub host: String,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    pub user: Option<String>,
    pub identity_file: Option<PathBuf>,
    /// The server's public host key (`ssh-ed25519 AAAA...`), pinned, or `accept-new` to trust
    /// the first key seen. Required for SSH servers: there is no silent trust on first use.
    pub host_key: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// How Dropship reaches the server's Docker engine: `ssh` (the default for SSH servers:
    /// the engine's socket forwarded over the SSH connection), `local` (this machine's socket,
    /// the default for `host = "local"`), `tcp://HOST:PORT` (with `docker_tls`), or `none`.
    pub docker: Option<String>,
    /// The engine's socket on the server (`ssh`) or here (`local`).
    #[serde(default = "default_docker_socket")]
    pub docker_socket: String,
    /// Client certificates for `docker = "tcp://..."`.
    pub docker_tls: Option<DockerTls>,
    /// The server's address on a private network that the proxy reaches. Container ports are
    /// published on it (never on every address), and the proxy connects to it. Without it,
    /// ports are published on 127.0.0.1 only: reachable by the proxy when Dropship runs on
    /// that server (`host = "local"` or a loopback `host`).
    pub private_address: Option<std::net::IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where a server's Docker engine is, resolved from `docker`, `docker_socket` and `docker_tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerEndpoint {
    /// The socket at this path on the server, forwarded over SSH.
    Ssh {
        socket: String,
    },
    /// The socket at this path on this machine.
    Local {
        socket: String,
    },
    /// TCP with TLS client certificates.
    Tcp {
        address: String,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    /// The registry's host (and port) as image names spell it: `ghcr.io`, `127.0.0.1:5000`.
    pub server: String,
    pub username: String,
    pub password: SecretString,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainersSection {
    /// Compose projects are copied into ROOT/PROJECT on each server, nowhere else.
    #[serde(default = "default_compose_root")]
    pub compose_root: String,
    /// Stored container log bytes per app and environment; the oldest lines go first.
    #[serde(default = "default_log_retention_bytes")]
    pub log_retention_bytes: i64,
    /// Where images built on a `builder` server are pushed for the other servers to pull
    /// (`127.0.0.1:5000/acme`); credentials come from `[[registries]]`.
    pub build_registry: Option<String>,
}

impl Default for ContainersSection {
    fn default() -> Self {
        ContainersSection {
            compose_root: default_compose_root(),
            log_retention_bytes: default_log_retention_bytes(),
            build_registry: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoEntry {
    /// `owner/repo`, or `owner/*` for every repository of an owner.
    pub name: String,
    /// Environment names (globs) the repo may deploy to.
    #[serde(default = "default_all")]
    pub environments: Vec<String>,
    /// Server names (globs) the repo may use; none by default. A server on this machine
    /// (`host = "local"`) only when named exactly: no glob grants Dropship's own host.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Secrets a manifest step may ask for by name.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretString>,
    /// Host names the repo's manifests may route to their containers through the proxy:
    /// exact names, or `*.example.com` for any name under a domain.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// What the repo's containers and compose stacks may do beyond an ordinary container.
    #[serde(default)]
    pub containers: ContainerPolicy,
}

/// What a repository's containers may do on its servers beyond an ordinary container. Every
/// default refuses: named volumes only, no Docker socket, no host network or namespaces, not
/// privileged, no added capabilities or devices, ports published on the server's private
/// address (or loopback) only. Enforced on `container:` steps when planning (with line and
/// column) and on compose files before `up` (`manifest::check_compose_file`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerPolicy {
    /// Host paths (globs, absolute) the containers may bind-mount. The Docker socket needs
    /// `docker_socket` as well.
    #[serde(default)]
    pub mounts: Vec<String>,
    /// Whether the Docker engine's socket may be mounted (control of the whole server).
    #[serde(default)]
    pub docker_socket: bool,
    /// Whether `network: host` (`network_mode: host`) is allowed.
    #[serde(default)]
    pub host_network: bool,
    /// Whether `privileged: true` (and `security_opt` that turns confinement off) is allowed.
    #[serde(default)]
    pub privileged: bool,
    /// Whether the host's pid, ipc, uts, cgroup or user namespace may be shared.
    #[serde(default)]
    pub host_namespaces: bool,
    /// Capabilities that `cap_add` may add (`NET_ADMIN`); `ALL` allows any.
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// Whether host devices may be passed in (`devices`).
    #[serde(default)]
    pub devices: bool,
    /// Whether ports may be published on every address (`0.0.0.0:80:80`), bypassing the proxy.
    #[serde(default)]
    pub public_ports: bool,
    /// Not read from the file: filled when the config loads with every configured server's
    /// `docker_socket` (a rootless `/run/user/1000/docker.sock`, say), refused like
    /// [`DOCKER_SOCKETS`] unless `docker_socket` is granted.
    #[serde(skip)]
    pub(crate) engine_sockets: Vec<String>,
}

/// Container engine sockets (Docker's, and the containerd under it): mounting one gives a
/// container control of the whole server. A server's own `docker_socket` elsewhere is refused
/// as well ([`ContainerPolicy`] learns it when the config loads).
pub const DOCKER_SOCKETS: [&str; 4] = [
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/run/containerd/containerd.sock",
    "/run/containerd/containerd.sock",
];

impl ContainerPolicy {
    /// Why mounting host path `source` is refused, if it is.
    pub fn refuses_mount(&self, source: &str) -> Option<String> {
        let path = std::path::Path::new(source);
        let normal = path.components().all(|c| {
            matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        });
        if !source.starts_with('/') || !normal {
            return Some(format!(
                "host path `{source}` must be absolute, without `.` or `..`"
            ));
        }
        let trimmed = source.trim_end_matches('/');
        // The socket itself, or a directory above it (`/`, `/var`, `/run`); the fixed paths
        // and every configured server's own.
        let socket = DOCKER_SOCKETS
            .iter()
            .copied()
            .chain(self.engine_sockets.iter().map(String::as_str))
            .any(|s| trimmed == s || s.starts_with(&format!("{trimmed}/")));
        if socket && !self.docker_socket {
            return Some(format!(
                "`{source}` holds the Docker socket, which controls the whole server; the operator config does not allow it (repos.containers.docker_socket)"
            ));
        }
        if !self.mounts.iter().any(|m| glob_match(m, trimmed)) {
            return Some(if self.mounts.is_empty() {
                format!(
                    "host path `{source}`: this repository may use named volumes only (the operator config's repos.containers.mounts allows host paths)"
                )
            } else {
                format!(
                    "host path `{source}` is not among the host paths the operator config allows ({})",
                    self.mounts.join(", ")
                )
            });
        }
        None
    }

    /// Why adding capability `cap` is refused, if it is.
    pub fn refuses_capability(&self, cap: &str) -> Option<String> {
        let bare = cap.trim().to_ascii_uppercase();
        let bare = bare.strip_prefix("CAP_").unwrap_or(&bare);
        let allowed = self.cap_add.iter().any(|c| {
            let c = c.to_ascii_uppercase();
            c == "ALL" || c.strip_prefix("CAP_").unwrap_or(&c) == bare
        });
        (!allowed).then(|| {
            format!("capability `{cap}` is not allowed by the operator config (repos.containers.cap_add)")
        })
    }
}

/// How a server's host key is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKey {
    /// Only this key (`type base64`) is accepted.
    Pinned(String),
    /// The first key seen is remembered in the data directory and required after that.
    AcceptNew,
}

impl ServerEntry {
    pub fn is_local(&self) -> bool {
        self.host == LOCAL
    }

    /// Whether the server is Dropship's own machine: `local`, or reached over SSH at a
    /// loopback address or `localhost`.
    pub fn on_this_machine(&self) -> bool {
        let host = self
            .host
            .trim_matches(['[', ']'])
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let this_machine = |ip: std::net::IpAddr| {
            ip.is_loopback()
                || ip.is_unspecified()
                || matches!(ip, std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback() || v4.is_unspecified()))
        };
        self.is_local()
            || host == "localhost"
            || host.ends_with(".localhost")
            // `127.1` and the like: inet_aton's short forms of 127.0.0.0/8.
            || host.starts_with("127.")
            || host.parse::<std::net::IpAddr>().is_ok_and(this_machine)
            // `2130706433`, `0x7f000001`, `0177.0.0.1`, `0`: what ssh's resolver makes of them.
            || inet_aton(&host).is_some_and(|v4| v4.is_loopback() || v4.is_unspecified())
    }

    pub fn host_key(&self) -> anyhow::Result<HostKey> {
        match self.host_key.as_deref().map(str::trim) {
            Some("accept-new") => Ok(HostKey::AcceptNew),
            Some(key) if key.split_whitespace().count() >= 2 => {
                let mut parts = key.split_whitespace();
                let kind = parts.next().unwrap_or_default();
                let blob = parts.next().unwrap_or_default();
                Ok(HostKey::Pinned(format!("{kind} {blob}")))
            }
            Some(other) => bail!(
                "server `{}`: host_key `{other}` is neither `accept-new` nor a public key like `ssh-ed25519 AAAA...`",
                self.name
            ),
            None => bail!(
                "server `{}`: host_key is required: pin the server's public host key (`ssh-keyscan -t ed25519 {}`), or write host_key = \"accept-new\" to trust the first key seen",
                self.name,
                self.host
            ),
        }
    }
}

impl ServerEntry {
    pub fn docker_endpoint(&self) -> anyhow::Result<DockerEndpoint> {
        let socket = self.docker_socket.clone();
        let kind = self
            .docker
            .as_deref()
            .unwrap_or(if self.is_local() { "local" } else { "ssh" });
        Ok(match kind {
            "ssh" if self.is_local() => bail!(
                "server `{}`: docker = \"ssh\" needs an SSH server; this one is local (use \"local\")",
                self.name
            ),
            "ssh" => DockerEndpoint::Ssh { socket },
            "local" => DockerEndpoint::Local { socket },
            "none" => DockerEndpoint::None,
            url if url.starts_with("tcp://") => {
                let Some(tls) = &self.docker_tls else {
                    bail!(
                        "server `{}`: docker = \"{url}\" needs docker_tls = {{ ca, cert, key }}: Dropship does not speak to an engine over plain TCP",
                        self.name
                    );
                };
                DockerEndpoint::Tcp {
                    address: url.trim_start_matches("tcp://").to_string(),
                    ca: tls.ca.clone(),
                    cert: tls.cert.clone(),
                    key: tls.key.clone(),
                }
            }
            other => bail!(
                "server `{}`: docker = \"{other}\" is not one of ssh, local, none or tcp://HOST:PORT",
                self.name
            ),
        })
    }
}

impl RepoEntry {
    pub fn matches_repo(&self, full_name: &str) -> bool {
        glob_match(&self.name, full_name)
    }

    pub fn allows_environment(&self, environment: &str) -> bool {
        self.environments.iter().any(|p| glob_match(p, environment))
    }

    /// Whether the repo may claim `host` (`*.example.com` covers `a.example.com`, and
    /// `b.a.example.com`, not `example.com`).
    pub fn allows_host(&self, host: &str) -> bool {
        self.hosts.iter().any(|pattern| host_matches(pattern, host))
    }

    /// Whether the repo may use `server`: a server on this machine (`local`, or a loopback
    /// address) only when the entry names it exactly, any other when a pattern matches its name.
    pub fn allows_server(&self, server: &ServerEntry) -> bool {
        if server.on_this_machine() {
            self.servers.contains(&server.name)
        } else {
            self.servers.iter().any(|p| glob_match(p, &server.name))
        }
    }
}

/// `host` read as an IPv4 address the way C's `inet_aton` (and so `getaddrinfo`, and ssh)
/// reads it: one to four parts separated by dots, each decimal, `0x` hexadecimal or
/// `0`-prefixed octal; every part but the last is one byte, and the last fills the bytes left
/// (`127.1` is 127.0.0.1, `2130706433` is 127.0.0.1).
fn inet_aton(host: &str) -> Option<std::net::Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        let (digits, radix) =
            if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
                (hex, 16)
            } else if part.len() > 1 && part.starts_with('0') {
                (&part[1..], 8)
            } else {
                (*part, 10)
            };
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        values.push(u32::from_str_radix(digits, radix).ok()?);
    }
    let (last, bytes) = values.split_last()?;
    if bytes.iter().any(|b| *b > 0xff) {
        return None;
    }
    let room = 4 - bytes.len() as u32;
    if room < 4 && *last >= 1 << (8 * room) {
        return None;
    }
    let high = bytes
        .iter()
        .enumerate()
        .fold(0u32, |acc, (i, b)| acc | (b << (24 - 8 * i as u32)));
    Some(std::net::Ipv4Addr::from(high | last))
}

/// Whether `host` is `pattern`, or under its domain for `*.domain` (one or more labels deep,
/// never the domain itself). Case-insensitive.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    match pattern.strip_prefix("*.") {
        Some(domain) => host.ends_with(&format!(".{domain}")),
        None => host == pattern,
    }
}

/// Shell-style glob matching (`*`, `?`, `[...]`); a malformed pattern matches only itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    match glob::Pattern::new(pattern) {
        Ok(p) => p.matches_with(name, options),
        Err(_) => pattern == name,
    }
}

impl Config {
    /// Loads the configuration: `path` if given, else `config/dropship.toml` if it exists, else
    /// the compiled-in example. Environment variables override either.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let figment = match path {
            Some(path) => {
                if !path.exists() {
                    bail!("config file {} does not exist", path.display());
                }
                Figment::new().merge(Toml::file_exact(path))
            }
            None if Path::new(DEFAULT_PATH).exists() => {
                Figment::new().merge(Toml::file_exact(DEFAULT_PATH))
            }
            None => Figment::new().merge(Toml::string(EXAMPLE)),
        };
        let mut config: Config = figment
            .merge(Env::prefixed("DROPSHIP__").split("__"))
            .extract()
            .map_err(|e| anyhow::anyhow!(describe_figment_error(e)))
            .context("invalid configuration")?;
        config.note_engine_sockets();
        config.check()?;
        Ok(config)
    }

    /// Parses a configuration from TOML text alone (no environment), for tests and tools.
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let mut config: Config = Figment::new()
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| anyhow::anyhow!(describe_figment_error(e)))
            .context("invalid configuration")?;
        config.note_engine_sockets();
        config.check()?;
        Ok(config)
    }

    /// Tells every repository's container policy the configured servers' engine sockets
    /// (`docker_socket`), so that mounting one, or a directory above it, is refused like the
    /// fixed [`DOCKER_SOCKETS`]. A socket under `/var/run` or `/run` counts under both (one is
    /// usually a link to the other).
    fn note_engine_sockets(&mut self) {
        let mut sockets: Vec<String> = Vec::new();
        for server in &self.servers {
            let socket = server.docker_socket.trim();
            let socket = socket.strip_prefix("unix://").unwrap_or(socket);
            let socket = socket.trim_end_matches('/');
            if !socket.starts_with('/') {
                continue;
            }
            sockets.push(socket.to_string());
            if let Some(rest) = socket.strip_prefix("/var/run/") {
                sockets.push(format!("/run/{rest}"));
            } else if let Some(rest) = socket.strip_prefix("/run/") {
                sockets.push(format!("/var/run/{rest}"));
            }
        }
        sockets.retain(|s| !DOCKER_SOCKETS.contains(&s.as_str()));
        sockets.sort_unstable();
        sockets.dedup();
        for repo in &mut self.repos {
            repo.containers.engine_sockets = sockets.clone();
        }
    }

    /// Cross-field checks that serde cannot express.
    fn check(&self) -> anyhow::Result<()> {
        let mut seen = std::collections::HashSet::new();
        for server in &self.servers {
            if !seen.insert(server.name.as_str()) {
                bail!("server `{}` is defined twice", server.name);
            }
            if !server.is_local() {
                server.host_key()?;
            }
            server.docker_endpoint()?;
        }
        for (i, secret) in self.github.webhook_secrets.iter().enumerate() {
            if secret.expose_secret().trim().is_empty() {
                bail!(
                    "github.webhook_secrets[{i}] is empty: anyone could sign a delivery with it; set the secret of the GitHub webhook (`openssl rand -hex 32` makes one), or remove the entry"
                );
            }
        }
        for (key, value, why) in [
            (
                "logs.max_step_bytes",
                self.logs.max_step_bytes,
                "no step could log a line of output",
            ),
            (
                "logs.max_deployment_bytes",
                self.logs.max_deployment_bytes,
                "no deployment could log a line of output",
            ),
            (
                "server.max_connections",
                self.server.max_connections as u64,
                "no connection would ever be served",
            ),
            (
                "proxy.max_connections",
                self.proxy.max_connections as u64,
                "the proxy would serve no connection",
            ),
            (
                "api.login_failures_per_name",
                u64::from(self.api.login_failures_per_name),
                "a single failed sign-in would lock the name out",
            ),
            (
                "api.login_failures_per_address",
                u64::from(self.api.login_failures_per_address),
                "a single failed sign-in would lock the address out",
            ),
            (
                "api.login_throttle_entries",
                self.api.login_throttle_entries as u64,
                "the sign-in throttle could remember no name or address",
            ),
        ] {
            if value == 0 {
                bail!("{key} is 0: {why}; it must be at least 1");
            }
        }
        if self.github.token.is_some() && self.github.app.is_some() {
            bail!("github: set either `token` or `[github.app]`, not both");
        }
        if self.proxy.workers > MAX_PROXY_WORKERS {
            bail!(
                "proxy.workers is {}: at most {MAX_PROXY_WORKERS} (0 means one per core)",
                self.proxy.workers
            );
        }
        if self.proxy.listen_tls.is_some()
            && self.proxy.certificates.is_empty()
            && self.proxy.backend == ProxyBackend::Builtin
        {
            bail!("proxy.listen_tls needs at least one [[proxy.certificates]] entry");
        }
        let mut names = std::collections::HashSet::new();
        for user in &self.api.users {
            if !names.insert(user.name.as_str()) {
                bail!("api.users: `{}` is defined twice", user.name);
            }
            let hash = &user.token_sha256;
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!(
                    "api.users `{}`: token_sha256 must be 64 hex digits (the SHA-256 of the token; `dropship token {}` prints one)",
                    user.name,
                    user.name
                );
            }
        }
        url_parse(&self.server.public_url).context("server.public_url")?;
        url_parse(&self.github.api_url).context("github.api_url")?;
        Ok(())
    }

    /// What in this configuration an operator should know is risky, one sentence each, for
    /// `dropship check`: trust on first use, repositories granted Dropship's own machine,
    /// plain-HTTP listeners beyond loopback, container policies that give away a server.
    pub fn risks(&self) -> Vec<String> {
        let mut risks = Vec::new();
        for server in &self.servers {
            if matches!(server.host_key(), Ok(HostKey::AcceptNew)) {
                risks.push(format!(
                    "server `{}` trusts the first host key it sees (host_key = \"accept-new\"): pin it (`ssh-keyscan -t ed25519 {}`)",
                    server.name, server.host
                ));
            }
        }
        for repo in &self.repos {
            for server in self.servers.iter().filter(|s| repo.allows_server(s)) {
                if server.on_this_machine() {
                    risks.push(format!(
                        "[[repos]] `{}` may run steps on `{}`, Dropship's own machine, which holds every repository's secrets, the GitHub credentials and the SSH keys",
                        repo.name, server.name
                    ));
                }
            }
            let policy = &repo.containers;
            let mut grants = Vec::new();
            if policy.privileged {
                grants.push("privileged containers");
            }
            if policy.docker_socket {
                grants.push("the Docker socket");
            }
            if policy.host_namespaces {
                grants.push("the host's namespaces");
            }
            if policy.devices {
                grants.push("host devices");
            }
            if policy.cap_add.iter().any(|c| c.eq_ignore_ascii_case("ALL")) {
                grants.push("every capability");
            }
            if !grants.is_empty() {
                risks.push(format!(
                    "[[repos]] `{}` may use {}: its containers can take over their servers",
                    repo.name,
                    grants.join(", ")
                ));
            }
        }
        if !self.server.listen.ip().is_loopback() && self.server.public_url.starts_with("http://") {
            risks.push(format!(
                "server.listen {} answers beyond this machine, and public_url is plain http: sign-in tokens, session cookies and log links cross the network unencrypted; put TLS in front and set an https public_url",
                self.server.listen
            ));
        }
        if let Some(listen) = self.proxy.listen {
            if !listen.ip().is_loopback() && self.proxy.listen_tls.is_none() {
                risks.push(format!(
                    "proxy.listen {listen} serves the apps over plain HTTP only (no proxy.listen_tls)"
                ));
            }
        }
        risks
    }

    /// GitHub's web address, for links: github.com, or the Enterprise host of `api_url`.
    pub fn github_web_url(&self) -> String {
        let api = self.github.api_url.trim_end_matches('/');
        if api == "https://api.github.com" {
            return "https://github.com".into();
        }
        api.strip_suffix("/api/v3").unwrap_or(api).to_string()
    }

    pub fn server(&self, name: &str) -> Option<&ServerEntry> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// The first repo entry that matches `full_name`, if any.
    pub fn repo(&self, full_name: &str) -> Option<&RepoEntry> {
        self.repo_index(full_name).map(|i| &self.repos[i])
    }

    /// The values of the secrets `names` that `repo`'s entry grants, by name; a name it does
    /// not grant is left out (plans name only granted secrets).
    pub fn repo_secrets<'a>(
        &self,
        repo: &str,
        names: impl IntoIterator<Item = &'a String>,
    ) -> Vec<(String, SecretString)> {
        let Some(entry) = self.repo(repo) else {
            return Vec::new();
        };
        names
            .into_iter()
            .filter_map(|name| entry.secrets.get(name).map(|v| (name.clone(), v.clone())))
            .collect()
    }

    /// The one admission policy, for intake, the engine and auto-deploy alike: the entry of
    /// `repo` if it may deploy to `environment`, or why not.
    pub fn admit(&self, repo: &str, environment: &str) -> Result<&RepoEntry, Refused> {
        let entry = self.admit_repository(repo)?;
        if !entry.allows_environment(environment) {
            return Err(Refused::Environment {
                repo: repo.to_string(),
                environment: environment.to_string(),
            });
        }
        Ok(entry)
    }

    /// The entry of `repo`, for what is not bound to an environment (a closed pull request, a
    /// pushed branch), or why there is none.
    pub fn admit_repository(&self, repo: &str) -> Result<&RepoEntry, Refused> {
        self.repo(repo).ok_or_else(|| Refused::Repository {
            repo: repo.to_string(),
        })
    }

    /// The position in `repos` of the first entry that matches `full_name`, if any.
    pub fn repo_index(&self, full_name: &str) -> Option<usize> {
        self.repos.iter().position(|r| r.matches_repo(full_name))
    }

    /// Credentials for the registry that `image` names, if the operator gave any.
    pub fn registry_for(&self, image: &str) -> Option<&RegistryEntry> {
        let registry = crate::image::registry_of(image);
        self.registries.iter().find(|r| r.server == registry)
    }

    pub fn database_path(&self) -> PathBuf {
        self.server.data_dir.join("dropship.db")
    }

    /// Where Dropship's secret key is kept: `server.key_file`, else `<data_dir>/dropship.key`.
    pub fn key_path(&self) -> PathBuf {
        self.server
            .key_file
            .clone()
            .unwrap_or_else(|| self.server.data_dir.join("dropship.key"))
    }

    pub fn public_url(&self) -> &str {
        self.server.public_url.trim_end_matches('/')
    }

    /// The webhook secrets' bytes, for signature checks.
    pub fn webhook_secret_bytes(&self) -> Vec<Vec<u8>> {
        self.github
            .webhook_secrets
            .iter()
            .map(|s| s.expose_secret().as_bytes().to_vec())
            .collect()
    }
}

fn url_parse(url: &str) -> anyhow::Result<http::Uri> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("`{url}` is not a URL"))?;
    if uri.scheme().is_none() || uri.host().is_none() {
        bail!("`{url}` is not an absolute http(s) URL");
    }
    Ok(uri)
}

fn describe_figment_error(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .and_then(|m| m.source.as_ref())
                .map(|s| format!(" (in {s})"))
                .unwrap_or_default();
            if path.is_empty() {
                format!("{}{source}", e.kind)
            } else {
                format!("{path}: {}{source}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_public_url() -> String {
    "http://127.0.0.1:8080".to_string()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_max_body_bytes() -> usize {
    25 * 1024 * 1024
}
fn default_max_running_deployments() -> usize {
    16
}
fn default_queued_in_memory() -> usize {
    10_000
}
fn default_reconcile_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_reconcile_window() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_deployment_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(60)
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_read_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connections() -> usize {
    1024
}
fn default_api_url() -> String {
    "https://api.github.com".to_string()
}
fn default_retry_base() -> Duration {
    Duration::from_secs(2)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(300)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_ssh_port() -> u16 {
    22
}
fn default_docker_socket() -> String {
    "/var/run/docker.sock".to_string()
}
fn default_compose_root() -> String {
    "/var/lib/dropship/compose".to_string()
}
fn default_log_retention_bytes() -> i64 {
    16 * 1024 * 1024
}
fn default_proxy_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_proxy_response_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_proxy_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_eject_for() -> Duration {
    Duration::from_secs(10)
}
/// The most proxy workers a config may ask for.
pub const MAX_PROXY_WORKERS: usize = 256;

fn default_proxy_max_connections() -> usize {
    4096
}
fn default_caddy_admin() -> String {
    "http://127.0.0.1:2019".to_string()
}
fn default_all() -> Vec<String> {
    vec!["*".to_string()]
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: default_listen(),
            public_url: default_public_url(),
            data_dir: default_data_dir(),
            max_body_bytes: default_max_body_bytes(),
            max_running_deployments: default_max_running_deployments(),
            queued_in_memory: default_queued_in_memory(),
            deployment_timeout: default_deployment_timeout(),
            shutdown_grace: default_shutdown_grace(),
            key_file: None,
            header_read_timeout: default_header_read_timeout(),
            body_read_timeout: default_body_read_timeout(),
            max_connections: default_max_connections(),
        }
    }
}

impl Default for GithubSection {
    fn default() -> Self {
        GithubSection {
            api_url: default_api_url(),
            token: None,
            app: None,
            webhook_secrets: Vec::new(),
            retry_base: default_retry_base(),
            retry_max: default_retry_max(),
            reconcile_interval: default_reconcile_interval(),
            reconcile_window: default_reconcile_window(),
        }
    }
}

impl Default for SshSection {
    fn default() -> Self {
        SshSection {
            connect_timeout: default_connect_timeout(),
            idle_timeout: default_idle_timeout(),
            connect_at_start: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let config = Config::from_toml(EXAMPLE).unwrap();
        assert!(config.server(LOCAL).is_some_and(ServerEntry::is_local));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let error =
            Config::from_toml("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n").unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("lisen"), "{message}");
    }

    #[test]
    fn host_key_is_strict_unless_accept_new_is_written() {
        let error =
            Config::from_toml("[[servers]]\nname = \"web\"\nhost = \"10.0.0.1\"\n").unwrap_err();
        assert!(
            format!("{error:#}").contains("host_key is required"),
            "{error:#}"
        );
        let config = Config::from_toml(
            "[[servers]]\nname = \"web\"\nhost = \"10.0.0.1\"\nhost_key = \"accept-new\"\n",
        )
        .unwrap();
        assert_eq!(config.servers[0].host_key().unwrap(), HostKey::AcceptNew);
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let config = Config::from_toml(
            "[github]\ntoken = \"ghp_supersecret\"\nwebhook_secrets = [\"whsec\"]\n[[repos]]\nname = \"o/r\"\nsecrets = { DB = \"hunter2\" }\n[[registries]]\nserver = \"r.example\"\nusername = \"u\"\npassword = \"regpass\"\n",
        )
        .unwrap();
        let debug = format!("{config:?}");
        for secret in ["ghp_supersecret", "whsec", "hunter2", "regpass"] {
            assert!(!debug.contains(secret), "{secret} leaked in {debug}");
        }
    }

    #[test]
    fn host_patterns() {
        let config = Config::from_toml(
            "[[repos]]\nname = \"acme/shop\"\nhosts = [\"shop.example.com\", \"*.preview.example.com\"]\n",
        )
        .unwrap();
        let repo = config.repo("acme/shop").unwrap();
        assert!(repo.allows_host("Shop.Example.com"));
        assert!(repo.allows_host("pr-1.preview.example.com"));
        assert!(!repo.allows_host("preview.example.com"));
        assert!(!repo.allows_host("evil.example.com"));
    }

    #[test]
    fn repo_globs() {
        let config = Config::from_toml(
            "[[repos]]\nname = \"acme/*\"\nenvironments = [\"staging\", \"pr-*\"]\nservers = [\"web-*\"]\n",
        )
        .unwrap();
        let repo = config.repo("acme/shop").unwrap();
        assert!(repo.allows_environment("pr-12"));
        assert!(!repo.allows_host("shop.example.com"));
        assert!(!repo.allows_environment("production"));
        assert!(repo.allows_server(&server_at("web-2", "10.0.0.2")));
        assert!(!repo.allows_server(&server_at("db-1", "10.0.0.3")));
        assert!(config.repo("other/shop").is_none());
    }

    #[test]
    fn the_dropship_host_is_granted_only_by_name_and_nothing_by_default() {
        let config = Config::from_toml(
            "[[servers]]\nname = \"local\"\nhost = \"local\"\n[[servers]]\nname = \"web-local\"\nhost = \"local\"\n\n[[repos]]\nname = \"acme/everything\"\nservers = [\"*\", \"web-*\"]\n[[repos]]\nname = \"acme/nothing\"\n[[repos]]\nname = \"acme/named\"\nservers = [\"local\"]\n",
        )
        .unwrap();
        let local = config.server("local").unwrap();
        let web_local = config.server("web-local").unwrap();
        let everything = config.repo("acme/everything").unwrap();
        assert!(!everything.allows_server(local));
        assert!(!everything.allows_server(web_local));
        let nothing = config.repo("acme/nothing").unwrap();
        assert!(nothing.servers.is_empty());
        assert!(!nothing.allows_server(local));
        assert!(config.repo("acme/named").unwrap().allows_server(local));
        // Reached over SSH at a loopback address, it is still this machine.
        for host in [
            "127.0.0.1",
            "127.1.2.3",
            "127.1",
            "::1",
            "[::1]",
            "LOCALHOST",
            "localhost.",
            "db.localhost",
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
        ] {
            let over_ssh = ServerEntry {
                name: "web-self".into(),
                host: host.into(),
                ..web_local.clone()
            };
            assert!(over_ssh.on_this_machine(), "{host}");
            assert!(!everything.allows_server(&over_ssh), "{host}");
        }
    }

    #[test]
    fn an_empty_webhook_secret_is_refused() {
        for secrets in ["[\"\"]", "[\"good-secret\", \"  \"]"] {
            let error =
                Config::from_toml(&format!("[github]\nwebhook_secrets = {secrets}\n")).unwrap_err();
            assert!(
                format!("{error:#}").contains("is empty: anyone could sign a delivery with it"),
                "{error:#}"
            );
        }
        assert!(Config::from_toml("[github]\nwebhook_secrets = [\"good-secret\"]\n").is_ok());
    }

    /// A plain SSH server entry named `name` at `host`.
    fn server_at(name: &str, host: &str) -> ServerEntry {
        ServerEntry {
            name: name.into(),
            host: host.into(),
            port: 22,
            user: None,
            identity_file: None,
            host_key: None,
            roles: Vec::new(),
            docker: None,
            docker_socket: default_docker_socket(),
            docker_tls: None,
            private_address: None,
        }
    }

    #[test]
    fn inet_aton_spellings_of_this_machine_are_this_machine() {
        let server = |host: &str| server_at("web-self", host);
        for host in [
            "2130706433",
            "2130706432",
            "0x7f000001",
            "0X7F000001",
            "017700000001",
            "0177.0.0.1",
            "0177.1",
            "0x7f.1",
            "0x7f.0.0.0x1",
            "127.16777215",
            "0",
            "0.0",
            "00.0.0",
            "0x0",
        ] {
            assert!(server(host).on_this_machine(), "{host}");
        }
        for host in [
            "2113929216",
            "2147483648",
            "0x7e000001",
            "0x80000001",
            "0176.0.0.1",
            "0400.0.0.1",
            "08.0.0.1",
            "0x",
            "0x7f.0x",
            "1.0.0.0.0",
            "4294967296",
            "10.0.0.1",
            "167772161",
            "example.com",
            "0x7f000001.example.com",
        ] {
            assert!(!server(host).on_this_machine(), "{host}");
        }
    }

    #[test]
    fn zero_caps_and_limits_are_refused_naming_the_key() {
        for (section, key) in [
            ("logs", "max_step_bytes"),
            ("logs", "max_deployment_bytes"),
            ("server", "max_connections"),
            ("proxy", "max_connections"),
            ("api", "login_failures_per_name"),
            ("api", "login_failures_per_address"),
            ("api", "login_throttle_entries"),
        ] {
            let error = Config::from_toml(&format!("[{section}]\n{key} = 0\n")).unwrap_err();
            let message = format!("{error:#}");
            assert!(
                message.contains(&format!("{section}.{key} is 0")),
                "{message}"
            );
            assert!(message.contains("at least 1"), "{message}");
            assert!(Config::from_toml(&format!("[{section}]\n{key} = 1\n")).is_ok());
        }
    }

    #[test]
    fn a_servers_own_docker_socket_is_refused_like_the_usual_ones() {
        let config = Config::from_toml(
            "[[servers]]\nname = \"web-1\"\nhost = \"10.0.0.1\"\nhost_key = \"accept-new\"\ndocker_socket = \"/run/user/1000/docker.sock\"\n\
             [[repos]]\nname = \"acme/shop\"\n[repos.containers]\nmounts = [\"/run/*\", \"/run/user/*\", \"/run/user/1000/*\", \"/var/run/user/1000/*\", \"/srv/*\"]\n\
             [[repos]]\nname = \"acme/ops\"\n[repos.containers]\nmounts = [\"/run/user/1000/*\"]\ndocker_socket = true\n",
        )
        .unwrap();
        let shop = &config.repo("acme/shop").unwrap().containers;
        for source in [
            "/run/user",
            "/run/user/1000",
            "/run/user/1000/",
            "/run/user/1000/docker.sock",
            "/var/run/user/1000/docker.sock",
        ] {
            let why = shop.refuses_mount(source);
            assert!(
                why.as_deref().is_some_and(|w| w.contains("Docker socket")),
                "{source}: {why:?}"
            );
        }
        assert_eq!(shop.refuses_mount("/run/user/1000/other.sock"), None);
        assert_eq!(shop.refuses_mount("/run/lock"), None);
        assert_eq!(shop.refuses_mount("/srv/data"), None);
        let ops = &config.repo("acme/ops").unwrap().containers;
        assert_eq!(ops.refuses_mount("/run/user/1000/docker.sock"), None);
    }

    #[test]
    fn risky_settings_are_named() {
        let config = Config::from_toml(
            "[server]\nlisten = \"0.0.0.0:8080\"\npublic_url = \"http://deploy.example.com\"\n[proxy]\nlisten = \"0.0.0.0:80\"\n[[servers]]\nname = \"local\"\nhost = \"local\"\n[[servers]]\nname = \"web-1\"\nhost = \"10.0.0.1\"\nhost_key = \"accept-new\"\n[[repos]]\nname = \"acme/ops\"\nservers = [\"local\"]\n[repos.containers]\nprivileged = true\ncap_add = [\"ALL\"]\n",
        )
        .unwrap();
        expect_test::expect![[r#"
            server `web-1` trusts the first host key it sees (host_key = "accept-new"): pin it (`ssh-keyscan -t ed25519 10.0.0.1`)
            [[repos]] `acme/ops` may run steps on `local`, Dropship's own machine, which holds every repository's secrets, the GitHub credentials and the SSH keys
            [[repos]] `acme/ops` may use privileged containers, every capability: its containers can take over their servers
            server.listen 0.0.0.0:8080 answers beyond this machine, and public_url is plain http: sign-in tokens, session cookies and log links cross the network unencrypted; put TLS in front and set an https public_url
            proxy.listen 0.0.0.0:80 serves the apps over plain HTTP only (no proxy.listen_tls)"#]]
        .assert_eq(&config.risks().join("\n"));
        // The shipped example grants no GitHub repository this machine: `_` cannot begin an
        // owner's name on GitHub.
        let example = Config::from_toml(EXAMPLE).unwrap();
        let local = example.server(LOCAL).unwrap();
        for entry in &example.repos {
            if entry.allows_server(local) {
                assert!(entry.name.starts_with("_local/"), "{}", entry.name);
            }
        }
        assert!(example.repo("local/anything").is_none());
        assert!(example.repo("_local/checkout").is_some());
    }

    #[test]
    fn the_container_policy_refuses_by_default() {
        let policy = ContainerPolicy::default();
        for source in [
            "/",
            "/var",
            "/var/run/docker.sock",
            "/run",
            "/srv/data",
            "/srv/../etc",
            "data",
        ] {
            assert!(policy.refuses_mount(source).is_some(), "{source}");
        }
        assert!(policy.refuses_capability("SYS_ADMIN").is_some());
        let open = ContainerPolicy {
            mounts: vec!["/srv/*".into()],
            cap_add: vec!["NET_ADMIN".into()],
            ..ContainerPolicy::default()
        };
        assert_eq!(open.refuses_mount("/srv/data"), None);
        assert!(open.refuses_mount("/srv/../var/run/docker.sock").is_some());
        assert!(open.refuses_mount("/etc").is_some());
        assert_eq!(open.refuses_capability("cap_net_admin"), None);
        assert!(open.refuses_capability("SYS_ADMIN").is_some());
        let socket = ContainerPolicy {
            mounts: vec!["/var/run/docker.sock".into()],
            ..ContainerPolicy::default()
        };
        assert!(
            socket
                .refuses_mount("/var/run/docker.sock")
                .unwrap()
                .contains("Docker socket")
        );
    }
}
