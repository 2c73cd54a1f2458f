//! `container:` and `compose:` steps: their checks (stage 1) and their plans (stage 2).

use std::collections::BTreeMap;
use std::time::Duration;

use super::Collector;
use super::expr::{Context, Quoting, substitute};
use super::raw::{RawCommand, RawCompose, RawContainer, RawFiles, RawHealthcheck, RawProxy};

/// How a new container proves it is ready. The manifest's own type: the container backend
/// takes it as it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HealthCheck {
    pub probe: Probe,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Failed probes in a row, after `start_period`, that make the container unhealthy.
    pub retries: u32,
    /// Failures in this first stretch do not count.
    #[serde(with = "humantime_serde")]
    pub start_period: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// `GET path` on the container's `port` answers 2xx or 3xx.
    Http { path: String, port: u16 },
    /// The command, run inside the container, exits 0.
    Command { command: Vec<String> },
    /// No check: running is enough.
    Running,
}

/// A published port: `host_port` on the server to `container_port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_ip: Option<String>,
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub protocol: String,
}

pub(super) const DEFAULT_KEEP: u32 = 3;
pub(super) const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_COMPOSE_FILE: &str = "docker-compose.yml";

/// A container app to replace on each of the step's servers.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerPlan {
    pub app: String,
    pub image: ImageSource,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    /// Names; values come from the operator config when the step runs.
    pub secrets: Vec<String>,
    pub ports: Vec<PortMapping>,
    pub volumes: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub restart: String,
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub network: Option<String>,
    pub init: bool,
    pub replicas: u32,
    pub health: HealthCheck,
    pub keep: u32,
    pub stop_timeout: Duration,
    /// Traffic for these hosts goes to the app's healthy containers.
    pub proxy: Option<ProxyPlan>,
}

/// A route through Dropship's proxy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProxyPlan {
    /// Lowercase host names.
    pub hosts: Vec<String>,
    pub path_prefix: String,
    pub port: u16,
}

impl ContainerPlan {
    /// Whether a port is bound to a fixed host port: then two versions cannot run side by
    /// side, and the old one stops before the new one starts.
    pub fn fixed_host_port(&self) -> Option<u16> {
        self.ports
            .iter()
            .find_map(|p| p.host_port.filter(|p| *p != 0))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// A full reference, tag included.
    Pull(String),
    Build(BuildPlan),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BuildPlan {
    /// A directory of the repository, `.` for its root.
    pub context: String,
    pub dockerfile: String,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub builder: Option<String>,
    pub tag: String,
}

/// A Compose stack.
#[derive(Debug, Clone, PartialEq)]
pub struct ComposePlan {
    pub project: String,
    /// Paths in the repository.
    pub files: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// Whether `name` is a valid Compose project name.
pub fn valid_project(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Whether `name` can name a container app (Docker's container name rules, lowercase).
fn valid_app(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c))
}

/// A repository path that stays inside the repository: relative, no `..`, no empty parts.
pub fn safe_relative_path(path: &str) -> Result<(), String> {
    if path.starts_with('/') {
        return Err(format!(
            "`{path}` is absolute; give a path inside the repository"
        ));
    }
    if path.split('/').any(|part| part == "..") {
        return Err(format!(
            "`{path}` climbs out with `..`; give a path inside the repository"
        ));
    }
    if path.trim().is_empty() || path.contains('\0') {
        return Err("the path is empty".into());
    }
    Ok(())
}

/// The default app and project name from a repository name: lowercase, safe characters.
pub fn default_app(repo_name: &str) -> String {
    let name: String = repo_name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_start_matches(['_', '.', '-']).to_string();
    if name.is_empty() { "app".into() } else { name }
}

/// `512m`, `2g`, `1024k`, `1048576`: Docker's memory units (powers of 1024).
fn parse_memory(text: &str) -> Option<i64> {
    let text = text.trim().to_ascii_lowercase();
    let text = text.strip_suffix('b').unwrap_or(&text);
    let (number, unit) = match text.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&text[..i], &text[i..]),
        None => (text, ""),
    };
    let factor: i64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return None,
    };
    let number: f64 = number.trim().parse().ok()?;
    (number > 0.0).then_some((number * factor as f64) as i64)
}

/// `8080`, `80:8080`, `127.0.0.1:80:8080`, each with an optional `/tcp` or `/udp`.
pub(super) fn parse_port(text: &str) -> Result<PortMapping, String> {
    let (spec, protocol) = match text.rsplit_once('/') {
        Some((spec, protocol @ ("tcp" | "udp"))) => (spec, protocol),
        Some((_, other)) => {
            return Err(format!(
                "port `{text}`: unknown protocol `{other}` (tcp or udp)"
            ));
        }
        None => (text, "tcp"),
    };
    let number = |part: &str| -> Result<u16, String> {
        part.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port `{text}`: `{part}` is not a port number"))
    };
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    let (host_ip, host_port, container) = match parts.as_slice() {
        [container] => (None, None, number(container)?),
        [container, host] => (None, Some(number(host)?), number(container)?),
        [container, host, ip] => (
            Some(ip.to_string()),
            (!host.is_empty()).then(|| number(host)).transpose()?,
            number(container)?,
        ),
        _ => {
            return Err(format!(
                "port `{text}`: expected CONTAINER, HOST:CONTAINER or IP:HOST:CONTAINER"
            ));
        }
    };
    Ok(PortMapping {
        host_ip,
        host_port,
        container_port: container,
        protocol: protocol.to_string(),
    })
}

/// A command as its arguments: `command: "..."` is one script for `sh -c`.
pub(super) fn command(raw: &RawCommand) -> Vec<String> {
    match raw {
        RawCommand::Shell(text) => vec!["sh".into(), "-c".into(), text.clone()],
        RawCommand::Exec(list) => list.clone(),
    }
}

/// The index of the argument that a shell runs as a script: the text of `command: "..."` (run
/// by `sh -c`), or SCRIPT in `[SHELL, -FLAGS..., -c, SCRIPT, ...]` for a known shell (sh, bash,
/// dash, ash, zsh, ksh, mksh), also behind `env` or `busybox`. Flags before the one holding
/// `c` must be single-dash flags without arguments (`-e`, `-x`, `-ec`).
pub(super) fn script_argument(command: &[String]) -> Option<usize> {
    let base = |i: usize| command.get(i).and_then(|a| a.rsplit('/').next());
    let mut i = usize::from(matches!(base(0), Some("env" | "busybox")));
    let shell = base(i)?;
    if !["sh", "bash", "dash", "ash", "zsh", "ksh", "mksh"].contains(&shell) {
        return None;
    }
    i += 1;
    while let Some(flag) = command.get(i) {
        if !flag.starts_with('-') || flag.starts_with("--") || flag.len() < 2 {
            return None;
        }
        if flag.contains('c') {
            return (i + 1 < command.len()).then_some(i + 1);
        }
        i += 1;
    }
    None
}

/// A container's command with its expressions filled in. The script a shell runs gets
/// variable references (the values are added to `env`, the container's environment).
/// Validation refuses expressions in any other argument, since it cannot know whether that
/// argument is code to the program (an entrypoint's `sh -c`, `-exec`...).
fn plan_command(
    raw: &RawCommand,
    context: &Context,
    env: &mut BTreeMap<String, String>,
) -> Vec<String> {
    let mut args = command(raw);
    let script = script_argument(&args);
    for (i, arg) in args.iter_mut().enumerate() {
        if Some(i) == script {
            if let Ok(rewritten) = super::shell::rewrite(arg) {
                for (name, reference) in rewritten.variables {
                    env.insert(name, context.value(&reference));
                }
                *arg = rewritten.text;
            }
        } else {
            *arg = substitute(arg, context, Quoting::Raw);
        }
    }
    args
}

/// Stage 1 checks of a `container:` block at `path` (`tasks.deploy[0].container`).
pub(super) fn check_container(c: &mut Collector<'_>, path: &str, raw: &RawContainer) {
    check_image_source(c, path, raw);
    check_resources(c, path, raw);
    check_container_names(c, path, raw);
    super::check_duration(c, &format!("{path}.stop_timeout"), raw.stop_timeout);
    if let Some(health) = &raw.healthcheck {
        check_health(c, &format!("{path}.healthcheck"), raw, health);
    }
    if let Some(proxy) = &raw.proxy {
        check_proxy(c, &format!("{path}.proxy"), raw, proxy);
    }
}

/// `image` (with at most one tag) or `build` (with paths inside the repository), not both.
fn check_image_source(c: &mut Collector<'_>, path: &str, raw: &RawContainer) {
    match (&raw.image, &raw.build) {
        (None, None) => c.at_key(path, "a container needs `image` (to pull) or `build`"),
        (Some(_), Some(_)) => c.at_key(
            &format!("{path}.build"),
            "give `image` or `build`, not both",
        ),
        (Some(image), None) => {
            if image.trim().is_empty() {
                c.at_value(&format!("{path}.image"), "the image cannot be empty");
            }
            let last = image.rsplit('/').next().unwrap_or(image);
            if raw.tag.is_some() && (last.contains(':') || image.contains('@')) {
                c.at_value(
                    &format!("{path}.tag"),
                    format!(
                        "`{image}` already names a tag or digest; drop `tag` or the image's tag"
                    ),
                );
            }
        }
        (None, Some(build)) => {
            for (key, value) in [
                ("context", &build.context),
                ("dockerfile", &build.dockerfile),
            ] {
                if let Some(value) = value {
                    if let Err(message) = safe_relative_path(value) {
                        c.at_value(&format!("{path}.build.{key}"), message);
                    }
                }
            }
        }
    }
}

/// The app's name, ports, volumes, restart policy, memory, cpus, replicas and network.
fn check_resources(c: &mut Collector<'_>, path: &str, raw: &RawContainer) {
    if let Some(name) = &raw.name {
        if !valid_app(name) {
            c.at_value(&format!("{path}.name"), format!("app name `{name}`: use lowercase letters, digits, `_`, `.` and `-`, starting with a letter or digit"));
        }
    }
    for (i, port) in raw.ports.iter().enumerate() {
        if let Err(message) = parse_port(port) {
            c.at_value(&format!("{path}.ports[{i}]"), message);
        }
    }
    for (i, volume) in raw.volumes.iter().enumerate() {
        let parts: Vec<&str> = volume.split(':').collect();
        let valid = matches!(parts.as_slice(), [s, t] | [s, t, "ro" | "rw"] if !s.is_empty() && t.starts_with('/'));
        if !valid {
            c.at_value(
                &format!("{path}.volumes[{i}]"),
                format!("volume `{volume}`: expected SOURCE:/TARGET or SOURCE:/TARGET:ro"),
            );
        }
    }
    if let Some(restart) = &raw.restart {
        if !["no", "always", "unless-stopped", "on-failure"].contains(&restart.as_str()) {
            c.at_value(
                &format!("{path}.restart"),
                format!("restart `{restart}`: use no, always, unless-stopped or on-failure"),
            );
        }
    }
    if let Some(memory) = &raw.memory {
        if parse_memory(memory).is_none() {
            c.at_value(
                &format!("{path}.memory"),
                format!("memory `{memory}`: use a size like 512m or 2g"),
            );
        }
    }
    if raw.cpus.is_some_and(|cpus| cpus.is_nan() || cpus <= 0.0) {
        c.at_value(&format!("{path}.cpus"), "cpus must be more than 0");
    }
    if raw.replicas == Some(0) {
        c.at_value(&format!("{path}.replicas"), "replicas must be at least 1");
    }
    if let Some(network) = &raw.network {
        if !valid_project(network) {
            c.at_value(
                &format!("{path}.network"),
                format!("network `{network}`: use letters, digits, `_` and `-`"),
            );
        }
    }
}

/// Environment variable, secret and label names.
fn check_container_names(c: &mut Collector<'_>, path: &str, raw: &RawContainer) {
    for key in raw.env.keys() {
        super::check_env_name(c, &format!("{path}.env.{key}"), key);
    }
    for (i, secret) in raw.secrets.iter().enumerate() {
        if !super::valid_env_name(secret) {
            c.at_value(
                &format!("{path}.secrets[{i}]"),
                format!("`{secret}` is not a valid environment variable name"),
            );
        }
    }
    for key in raw.labels.keys() {
        if key.starts_with("dropship.") {
            c.at_key(
                &format!("{path}.labels.{key}"),
                format!("`{key}`: labels starting with dropship. are set by dropship"),
            );
        }
    }
}

/// A DNS name: dot-separated labels of letters, digits and `-`, not starting or ending with `-`.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn proxy_port(container: &RawContainer, proxy: &RawProxy) -> Option<u16> {
    proxy
        .port
        .or_else(|| container.healthcheck.as_ref().and_then(|h| h.port))
        .or_else(|| {
            container
                .ports
                .first()
                .and_then(|p| parse_port(p).ok())
                .map(|p| p.container_port)
        })
}

fn check_proxy(c: &mut Collector<'_>, path: &str, container: &RawContainer, proxy: &RawProxy) {
    if proxy.hosts.is_empty() {
        c.at_key(&format!("{path}.hosts"), "list at least one host");
    }
    for (i, host) in proxy.hosts.iter().enumerate() {
        if !valid_host(host) {
            c.at_value(
                &format!("{path}.hosts[{i}]"),
                format!("`{host}` is not a host name"),
            );
        }
    }
    if let Some(prefix) = &proxy.path_prefix {
        if !prefix.starts_with('/') || prefix.contains(['?', '#', ' ']) {
            c.at_value(
                &format!("{path}.path_prefix"),
                format!("path_prefix `{prefix}` must be a path starting with `/`"),
            );
        }
    }
    if proxy_port(container, proxy).is_none() {
        c.at_key(
            path,
            "the proxy needs `port` (or a health check port, or a first entry in `ports`)",
        );
    }
}

fn check_health(
    c: &mut Collector<'_>,
    path: &str,
    container: &RawContainer,
    health: &RawHealthcheck,
) {
    match (&health.path, &health.command) {
        (Some(_), Some(_)) => c.at_key(
            path,
            "give the health check a `path` or a `command`, not both",
        ),
        (None, None) => c.at_key(path, "a health check needs `path` (HTTP) or `command`"),
        (Some(http), None) => {
            if !http.starts_with('/') {
                c.at_value(
                    &format!("{path}.path"),
                    format!("`{http}` must start with `/`"),
                );
            }
            let first_port = container.ports.first().and_then(|p| parse_port(p).ok());
            if health.port.is_none() && first_port.is_none() {
                c.at_key(
                    path,
                    "an HTTP health check needs `port` (or a first entry in `ports`)",
                );
            }
        }
        (None, Some(_)) => {
            if health.port.is_some() {
                c.at_key(
                    &format!("{path}.port"),
                    "`port` goes with `path`, not with `command`",
                );
            }
        }
    }
    for (key, value) in [
        ("interval", health.interval),
        ("timeout", health.timeout),
        ("start_period", health.start_period),
    ] {
        super::check_duration(c, &format!("{path}.{key}"), value);
    }
    for (key, value) in [("interval", health.interval), ("timeout", health.timeout)] {
        if value == Some(Duration::ZERO) {
            c.at_value(
                &format!("{path}.{key}"),
                format!("{key} must be longer than zero"),
            );
        }
    }
    if health.retries == Some(0) {
        c.at_value(&format!("{path}.retries"), "retries must be at least 1");
    }
}

/// Stage 1 checks of a `compose:` block at `path`.
pub(super) fn check_compose(c: &mut Collector<'_>, path: &str, raw: &RawCompose) {
    if let Some(project) = &raw.project {
        if !valid_project(project) {
            c.at_value(
                &format!("{path}.project"),
                format!("project `{project}`: must match ^[a-zA-Z0-9][a-zA-Z0-9_-]*$ (it names a directory on the server)"),
            );
        }
    }
    let files = compose_files(raw);
    if files.is_empty() {
        c.at_key(&format!("{path}.file"), "list at least one compose file");
    }
    for (i, file) in files.iter().enumerate() {
        if let Err(message) = safe_relative_path(file) {
            let key = match &raw.file {
                Some(RawFiles::Many(_)) => format!("{path}.file[{i}]"),
                _ => format!("{path}.file"),
            };
            c.at_value(&key, message);
        }
    }
    for key in raw.env.keys() {
        if !super::valid_env_name(key) {
            c.at_key(
                &format!("{path}.env.{key}"),
                format!("`{key}` is not a valid environment variable name"),
            );
        }
    }
}

fn compose_files(raw: &RawCompose) -> Vec<String> {
    match &raw.file {
        None => vec![DEFAULT_COMPOSE_FILE.to_string()],
        Some(RawFiles::One(file)) => vec![file.clone()],
        Some(RawFiles::Many(files)) => files.clone(),
    }
}

fn raw_env(env: &BTreeMap<String, String>, context: &Context) -> BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| (k.clone(), substitute(v, context, Quoting::Raw)))
        .collect()
}

/// Stage 2: the plan of a checked `container:` block.
pub(super) fn plan_container(raw: &RawContainer, context: &Context) -> ContainerPlan {
    let app = raw
        .name
        .clone()
        .unwrap_or_else(|| default_app(&context.repo_name));
    let tag = raw
        .tag
        .as_ref()
        .map(|t| substitute(t, context, Quoting::Raw))
        .unwrap_or_else(|| context.sha.clone());
    let image = match (&raw.image, &raw.build) {
        (Some(image), _) => {
            let image = substitute(image, context, Quoting::Raw);
            let last = image.rsplit('/').next().unwrap_or(&image);
            if last.contains(':') || image.contains('@') {
                ImageSource::Pull(image)
            } else {
                ImageSource::Pull(format!("{image}:{tag}"))
            }
        }
        (None, Some(build)) => ImageSource::Build(BuildPlan {
            context: build.context.clone().unwrap_or_else(|| ".".into()),
            dockerfile: build
                .dockerfile
                .clone()
                .unwrap_or_else(|| "Dockerfile".into()),
            args: raw_env(&build.args, context),
            target: build.target.clone(),
            builder: build.builder.clone(),
            tag,
        }),
        (None, None) => ImageSource::Pull(String::new()),
    };
    let ports: Vec<PortMapping> = raw
        .ports
        .iter()
        .filter_map(|p| parse_port(p).ok())
        .collect();
    let health = match &raw.healthcheck {
        Some(h) => HealthCheck {
            probe: match (&h.path, &h.command) {
                (Some(path), _) => Probe::Http {
                    path: path.clone(),
                    port: h
                        .port
                        .or_else(|| ports.first().map(|p| p.container_port))
                        .unwrap_or(80),
                },
                (None, Some(cmd)) => Probe::Command {
                    command: command(cmd),
                },
                (None, None) => Probe::Running,
            },
            interval: h.interval.unwrap_or(Duration::from_secs(1)),
            timeout: h.timeout.unwrap_or(Duration::from_secs(5)),
            retries: h.retries.unwrap_or(10),
            start_period: h.start_period.unwrap_or(Duration::ZERO),
        },
        None => HealthCheck {
            probe: Probe::Running,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            retries: 3,
            start_period: Duration::ZERO,
        },
    };
    let digest = repo_digest(&context.repo_owner, &context.repo_name);
    let mut env = raw_env(&raw.env, context);
    let command = raw
        .command
        .as_ref()
        .map(|c| plan_command(c, context, &mut env));
    ContainerPlan {
        app,
        image,
        command,
        env,
        secrets: raw.secrets.clone(),
        ports,
        // Named volumes are the repository's own; host paths were checked by the policy.
        volumes: raw
            .volumes
            .iter()
            .map(|volume| match volume.split_once(':') {
                Some((source, rest)) if !source.starts_with('/') => {
                    format!("{}:{rest}", namespaced_name(source, &digest))
                }
                _ => volume.clone(),
            })
            .collect(),
        labels: raw_env(&raw.labels, context),
        restart: raw
            .restart
            .clone()
            .unwrap_or_else(|| "unless-stopped".into()),
        memory_bytes: raw.memory.as_deref().and_then(parse_memory),
        nano_cpus: raw.cpus.map(|c| (c * 1e9) as i64),
        network: raw.network.as_deref().map(|n| namespaced_name(n, &digest)),
        init: raw.init,
        replicas: raw.replicas.unwrap_or(1),
        health,
        keep: raw.keep.unwrap_or(DEFAULT_KEEP),
        stop_timeout: raw.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT),
        proxy: raw.proxy.as_ref().map(|proxy| ProxyPlan {
            hosts: proxy.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            path_prefix: proxy.path_prefix.clone().unwrap_or_else(|| "/".into()),
            port: proxy_port(raw, proxy).unwrap_or(80),
        }),
    }
}

/// Stage 2: the plan of a checked `compose:` block.
pub(super) fn plan_compose(raw: &RawCompose, context: &Context) -> ComposePlan {
    let name = raw.project.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            default_app(&context.repo_name),
            default_app(&context.environment)
        )
        .replace('.', "-")
    });
    ComposePlan {
        project: namespaced_project(&name, &context.repo_owner, &context.repo_name),
        files: compose_files(raw),
        env: raw_env(&raw.env, context),
    }
}

/// A compose project's name on the server: the manifest's name, lowercased, then `-` and
/// eight hex digits derived from the repository, so that no repository can name (and so
/// replace or bring down) another repository's stack.
pub fn namespaced_project(name: &str, owner: &str, repo: &str) -> String {
    format!("{}-{}", name.to_ascii_lowercase(), repo_digest(owner, repo))
}

/// Eight hex digits of the SHA-256 of `owner/name` (lowercased): what a repository's compose
/// projects, named volumes and networks carry on a server, so that none can name another's.
pub fn repo_digest(owner: &str, repo: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{owner}/{repo}").to_ascii_lowercase().as_bytes());
    hex::encode(digest)[..8].to_string()
}

/// Whether a volume or network `name` carries the repository's `digest`: it ends with
/// `-DIGEST` (`data-1a2b3c4d`, as [`namespaced_name`] makes it) or holds `-DIGEST_` (a compose
/// project's `web-1a2b3c4d_default`). Used by container steps and by the compose check alike,
/// the stricter of the two rules they had (the compose check used to take `-DIGEST` anywhere).
pub(super) fn carries_digest(name: &str, digest: &str) -> bool {
    let suffix = format!("-{digest}");
    name.ends_with(&suffix) || name.contains(&format!("{suffix}_"))
}

/// A named volume or network of the repository with `digest`: kept if it already carries the
/// digest ([`carries_digest`]), else given it. Docker's own networks (`bridge`, `none`, `host`)
/// are kept: only here, since joining them is what a container step's `network` means, and
/// the policy checks `host` separately; a compose file naming them outright (`name: host`) is
/// refused by the compose check, which does not take them as the repository's own.
pub fn namespaced_name(name: &str, digest: &str) -> String {
    if ["bridge", "none", "host"].contains(&name) || carries_digest(name, digest) {
        name.to_string()
    } else {
        format!("{name}-{digest}")
    }
}

/// The container plan for a deployment whose payload carries an image (the GitShip shape:
/// `{"image", "port", "env", "cmd"}`), or why the payload cannot be used.
pub(super) fn plan_payload_image(context: &Context) -> Result<Option<ContainerPlan>, String> {
    let Some(image) = context.payload.get("image") else {
        return Ok(None);
    };
    let image = image
        .as_str()
        .filter(|i| !i.trim().is_empty())
        .ok_or("payload.image must be a non-empty string")?;
    let port = match context.payload.get("port") {
        None | Some(serde_json::Value::Null) => None,
        Some(value) => Some(
            value
                .as_u64()
                .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .ok_or("payload.port must be a port number")?,
        ),
    };
    let mut env = BTreeMap::new();
    if let Some(values) = context.payload.get("env") {
        let values = values.as_object().ok_or("payload.env must be an object")?;
        for (key, value) in values {
            if !super::valid_env_name(key) {
                return Err(format!(
                    "payload.env: `{key}` is not a valid environment variable name"
                ));
            }
            let value = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            env.insert(key.clone(), value);
        }
    }
    let command = match context.payload.get("cmd") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(text)) => Some(command(&RawCommand::Shell(text.clone()))),
        Some(serde_json::Value::Array(items)) => Some(
            items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or("payload.cmd must be a string or a list of strings")?,
        ),
        Some(_) => return Err("payload.cmd must be a string or a list of strings".into()),
    };
    let last = image.rsplit('/').next().unwrap_or(image);
    let image = if last.contains(':') || image.contains('@') {
        image.to_string()
    } else {
        format!("{image}:latest")
    };
    Ok(Some(ContainerPlan {
        app: default_app(&context.repo_name),
        image: ImageSource::Pull(image),
        command,
        env,
        secrets: Vec::new(),
        ports: port
            .map(|p| PortMapping {
                host_ip: None,
                host_port: None,
                container_port: p,
                protocol: "tcp".into(),
            })
            .into_iter()
            .collect(),
        volumes: Vec::new(),
        labels: BTreeMap::new(),
        restart: "unless-stopped".into(),
        memory_bytes: None,
        nano_cpus: None,
        network: None,
        init: false,
        replicas: 1,
        health: HealthCheck {
            probe: match port {
                Some(port) => Probe::Http {
                    path: "/".into(),
                    port,
                },
                None => Probe::Running,
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            retries: 30,
            start_period: Duration::ZERO,
        },
        keep: DEFAULT_KEEP,
        stop_timeout: DEFAULT_STOP_TIMEOUT,
        proxy: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_like_docker() {
        assert_eq!(parse_port("8080").unwrap().host_port, None);
        let p = parse_port("127.0.0.1:9000:80/udp").unwrap();
        assert_eq!(
            (
                p.host_ip.as_deref(),
                p.host_port,
                p.container_port,
                p.protocol.as_str()
            ),
            (Some("127.0.0.1"), Some(9000), 80, "udp")
        );
        assert_eq!(parse_port("9000:80").unwrap().host_port, Some(9000));
        assert!(parse_port("http").is_err());
        assert!(parse_port("80/sctp").is_err());
    }

    #[test]
    fn memory_uses_docker_units() {
        assert_eq!(parse_memory("512m"), Some(512 << 20));
        assert_eq!(parse_memory("2g"), Some(2 << 30));
        assert_eq!(parse_memory("1024"), Some(1024));
        assert_eq!(parse_memory("lots"), None);
    }

    #[test]
    fn paths_stay_in_the_repository() {
        assert!(safe_relative_path("deploy/compose.yml").is_ok());
        assert!(safe_relative_path("../etc/passwd").is_err());
        assert!(safe_relative_path("a/../../b").is_err());
        assert!(safe_relative_path("/etc/passwd").is_err());
        assert!(valid_project("shop_prod-1"));
        assert!(!valid_project("../x"));
        assert!(!valid_project("-x"));
    }
}
