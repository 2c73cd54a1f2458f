//! Each server's container engine, as the deployment engine sees it: the [`ContainerHost`]
//! trait, with one implementation over the Docker Engine API ([`docker::DockerHost`], through
//! bollard).
//!
//! Architecture invariant: nothing outside this module names a bollard type. The engine works
//! with [`ContainerSpec`], [`ContainerInfo`] and [`LogEntry`].

mod context;
mod docker;
pub mod follow;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use secrecy::SecretString;

pub use context::build_context;
pub use docker::DockerHost;

use crate::config::{Config, DockerEndpoint};
use crate::exec::{Fleet, Output};

/// Labels Dropship puts on every container it creates; it touches no container without
/// [`LABEL_MANAGED`].
pub const LABEL_MANAGED: &str = "dropship.managed";
pub const LABEL_REPO: &str = "dropship.repo";
pub const LABEL_ENVIRONMENT: &str = "dropship.environment";
pub const LABEL_APP: &str = "dropship.app";
pub const LABEL_DEPLOYMENT: &str = "dropship.deployment";
pub const LABEL_SHA: &str = "dropship.sha";
pub const LABEL_REPLICA: &str = "dropship.replica";
/// The health check, as JSON, so that a rollback can check a retired version the same way.
pub const LABEL_HEALTH: &str = "dropship.health";
/// The proxy route (hosts, path prefix, port), as JSON, so that a rollback routes the same way.
pub const LABEL_PROXY: &str = "dropship.proxy";

/// The engine could not do what was asked. `detail` is the engine's own message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerError {
    /// The engine cannot be reached at all (SSH down, socket missing, TLS refused).
    #[error("{server}: cannot reach the container engine: {detail}")]
    Unreachable { server: String, detail: String },
    /// The engine answered with an error (no such image, bad credentials, name in use...).
    #[error("{server}: {detail}")]
    Engine { server: String, detail: String },
}

/// Registry credentials for a pull or push, from the operator config.
#[derive(Clone)]
pub struct RegistryAuth {
    pub server: String,
    pub username: String,
    pub password: SecretString,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server", &self.server)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

pub use crate::manifest::{HealthCheck, PortMapping, Probe};

/// Everything needed to create one container.
#[derive(Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    /// Passed as environment variables too, but never shown.
    pub secrets: Vec<(String, SecretString)>,
    pub ports: Vec<PortMapping>,
    /// `source:target[:ro]`, as Docker's binds.
    pub volumes: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub restart: Option<String>,
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub network: Option<String>,
    /// Docker's init as PID 1.
    pub init: bool,
}

impl fmt::Debug for ContainerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContainerSpec")
            .field("name", &self.name)
            .field("image", &self.image)
            .field("command", &self.command)
            .field("env", &self.env)
            .field(
                "secrets",
                &self.secrets.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("ports", &self.ports)
            .field("volumes", &self.volumes)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// A container as listed: enough to choose what to stop, start or prune.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
    pub running: bool,
    /// `running`, `exited`, `created`...
    pub state: String,
    /// Docker's human status (`Up 3 minutes`).
    pub status: String,
}

impl ContainerInfo {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// The Dropship deployment that created it.
    pub fn deployment(&self) -> Option<i64> {
        self.label(LABEL_DEPLOYMENT)?.parse().ok()
    }
}

/// A container's live state, for health checks and diagnoses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub running: bool,
    pub exit_code: Option<i64>,
    /// The container's address on its network, when it has one.
    pub ip: Option<String>,
    /// Published ports: container port to host port.
    pub published: Vec<(u16, u16)>,
    pub restarting: bool,
    pub error: Option<String>,
}

/// An HTTP probe's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    /// The start of the body, for diagnoses.
    pub body: String,
}

/// A command's result inside a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecAnswer {
    pub exit_code: i64,
    pub output: String,
}

/// One line a container wrote, with Docker's timestamp (nanoseconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub timestamp_ns: i64,
    pub stream: crate::store::LogStream,
    pub line: String,
}

/// What to build and how.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// The build context as an uncompressed tar archive.
    pub context: bytes::Bytes,
    pub dockerfile: String,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub tag: String,
}

/// One server's container engine.
#[async_trait]
pub trait ContainerHost: Send + Sync + fmt::Debug {
    /// The engine's version (`Docker 24.0.7, API 1.43`).
    async fn version(&self) -> Result<String, ContainerError>;
    async fn image_present(&self, image: &str) -> Result<bool, ContainerError>;
    /// Pulls `image`, reporting progress lines to `progress`.
    async fn pull(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
        progress: &Output,
    ) -> Result<(), ContainerError>;
    /// Builds `spec.tag` from `spec.context`, streaming the build's output to `progress`.
    async fn build(&self, spec: &BuildSpec, progress: &Output) -> Result<(), ContainerError>;
    async fn push(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
        progress: &Output,
    ) -> Result<(), ContainerError>;
    /// Creates the network if it does not exist.
    async fn ensure_network(&self, name: &str) -> Result<(), ContainerError>;
    /// Every container (running or not) that carries all of `labels`.
    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<ContainerInfo>, ContainerError>;
    /// The containers of a Compose project (whoever started them).
    async fn compose_services(&self, project: &str) -> Result<Vec<ContainerInfo>, ContainerError>;
    /// Creates (not starts) a container and returns its id.
    async fn create(&self, spec: &ContainerSpec) -> Result<String, ContainerError>;
    async fn start(&self, id: &str) -> Result<(), ContainerError>;
    async fn stop(&self, id: &str, timeout: Duration) -> Result<(), ContainerError>;
    async fn remove(&self, id: &str) -> Result<(), ContainerError>;
    async fn state(&self, id: &str) -> Result<ContainerState, ContainerError>;
    /// `GET path` on the container's `port`, reached from this machine (over SSH when the
    /// engine is reached over SSH).
    async fn http_get(
        &self,
        id: &str,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> Result<HttpAnswer, ContainerError>;
    /// Runs `command` inside the container.
    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecAnswer, ContainerError>;
    /// The last `lines` lines the container wrote.
    async fn tail(&self, id: &str, lines: usize) -> Result<Vec<LogEntry>, ContainerError>;
    /// Every line from `since_ns` on (whole seconds: callers drop what they already have),
    /// following new ones until the container stops when `follow` is set.
    fn logs(
        &self,
        id: &str,
        since_ns: i64,
        follow: bool,
    ) -> BoxStream<'static, Result<LogEntry, ContainerError>>;
    /// Ids of managed containers as they start, until the stream is dropped or the engine is
    /// lost.
    fn starts(&self) -> BoxStream<'static, Result<String, ContainerError>>;
}

/// The container engine of every configured server that has one, by name.
#[derive(Debug, Clone, Default)]
pub struct Hosts {
    hosts: Arc<HashMap<String, Arc<dyn ContainerHost>>>,
}

impl Hosts {
    pub fn from_config(config: &Config, fleet: &Fleet) -> anyhow::Result<Hosts> {
        let mut hosts: HashMap<String, Arc<dyn ContainerHost>> = HashMap::new();
        for server in &config.servers {
            let endpoint = server.docker_endpoint()?;
            if matches!(endpoint, DockerEndpoint::None) {
                continue;
            }
            // Only an engine reached over SSH needs (and keeps alive) the SSH connection.
            let ssh = match endpoint {
                DockerEndpoint::Ssh { .. } => fleet.ssh(&server.name),
                _ => None,
            };
            let host = DockerHost::new(&server.name, endpoint, ssh, &config.server.data_dir)?;
            hosts.insert(server.name.clone(), Arc::new(host));
        }
        Ok(Hosts {
            hosts: Arc::new(hosts),
        })
    }

    pub fn get(&self, server: &str) -> Option<Arc<dyn ContainerHost>> {
        self.hosts.get(server).cloned()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_checks_round_trip_through_their_label() {
        let check = HealthCheck {
            probe: Probe::Http {
                path: "/up".into(),
                port: 8080,
            },
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(2),
            retries: 3,
            start_period: Duration::ZERO,
        };
        let text = serde_json::to_string(&check).unwrap();
        assert_eq!(serde_json::from_str::<HealthCheck>(&text).unwrap(), check);
    }
}
