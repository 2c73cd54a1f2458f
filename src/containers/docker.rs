//! [`ContainerHost`] over the Docker Engine API, through bollard.
//!
//! Three ways to the engine: its Unix socket on the server forwarded over the server's SSH
//! master connection (what `DOCKER_HOST=ssh://` does, without a `docker` CLI anywhere), this
//! machine's socket, or TCP with TLS client certificates. The API version is negotiated on
//! connect, so older engines work.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, HostConfig, NetworkCreateRequest, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    BuildImageOptions, CreateContainerOptions, CreateImageOptions, EventsOptions,
    ListContainersOptions, LogsOptions, PushImageOptions, RemoveContainerOptions,
    StopContainerOptions,
};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Empty};
use secrecy::ExposeSecret;
use tokio::sync::Mutex;

use super::{
    BuildSpec, ContainerError, ContainerHost, ContainerInfo, ContainerSpec, ContainerState,
    ExecAnswer, HttpAnswer, LABEL_MANAGED, LogEntry, RegistryAuth,
};
use crate::config::DockerEndpoint;
use crate::exec::{Forward, Lease, Output, Remote, Ssh, Stream};
use crate::store::LogStream;

/// Requests (not streams) that take longer than this fail.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Of a probe's answer body, this much is kept for a diagnosis.
const BODY_PREVIEW: usize = 512;

/// A server's Docker engine. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct DockerHost {
    inner: Arc<Inner>,
}

struct Inner {
    server: String,
    endpoint: DockerEndpoint,
    ssh: Option<Arc<Ssh>>,
    /// Where the forwarded engine socket lives here (SSH engines).
    forward_path: PathBuf,
    /// The client, and the SSH forward that carries it.
    client: Mutex<Option<(Docker, Option<Forward>)>>,
}

impl std::fmt::Debug for DockerHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerHost")
            .field("server", &self.inner.server)
            .field("endpoint", &self.inner.endpoint)
            .finish_non_exhaustive()
    }
}

impl DockerHost {
    pub fn new(
        server: &str,
        endpoint: DockerEndpoint,
        ssh: Option<Arc<Ssh>>,
        data_dir: &Path,
    ) -> anyhow::Result<DockerHost> {
        if matches!(endpoint, DockerEndpoint::Ssh { .. }) && ssh.is_none() {
            anyhow::bail!("server `{server}`: docker = \"ssh\" needs an SSH server");
        }
        let dir = ssh
            .as_ref()
            .map(|s| s.socket_dir().to_path_buf())
            .unwrap_or_else(|| data_dir.join("ssh"));
        Ok(DockerHost {
            inner: Arc::new(Inner {
                server: server.to_string(),
                forward_path: dir.join(format!("{server}.docker.sock")),
                endpoint,
                ssh,
                client: Mutex::new(None),
            }),
        })
    }

    fn unreachable(&self, detail: impl std::fmt::Display) -> ContainerError {
        ContainerError::Unreachable {
            server: self.inner.server.clone(),
            detail: detail.to_string(),
        }
    }

    fn error(&self, error: bollard::errors::Error) -> ContainerError {
        use bollard::errors::Error as E;
        match error {
            E::DockerResponseServerError { message, .. } => ContainerError::Engine {
                server: self.inner.server.clone(),
                detail: message.trim().to_string(),
            },
            E::DockerStreamError { error } => ContainerError::Engine {
                server: self.inner.server.clone(),
                detail: error,
            },
            other => self.unreachable(other),
        }
    }

    /// A connected client, (re)opening the SSH forward when the master connection changed,
    /// and a lease that keeps that connection from closing as idle while in use.
    async fn client(&self) -> Result<(Docker, Option<Lease>), ContainerError> {
        let inner = &self.inner;
        let mut guard = inner.client.lock().await;
        if let Some(ssh) = &inner.ssh {
            // Checks the master connection and reconnects it if it dropped.
            ssh.connected()
                .await
                .map_err(|e| self.unreachable(format!("SSH: {e}")))?;
        }
        let current = match (guard.as_ref(), &inner.ssh) {
            (Some((_, Some(forward))), Some(ssh)) => forward.is_current(ssh),
            (Some(_), None) => true,
            _ => false,
        };
        if !current {
            *guard = Some(self.connect().await?);
        }
        let (docker, _) = guard.as_ref().expect("connected above");
        Ok((docker.clone(), inner.ssh.as_ref().map(|s| s.lease())))
    }

    async fn connect(&self) -> Result<(Docker, Option<Forward>), ContainerError> {
        let inner = &self.inner;
        let version = bollard::API_DEFAULT_VERSION;
        let timeout = REQUEST_TIMEOUT.as_secs();
        let (docker, forward) = match &inner.endpoint {
            DockerEndpoint::Ssh { socket } => {
                let ssh = inner.ssh.as_ref().expect("checked in new");
                let forward = ssh
                    .forward(&inner.forward_path, &Remote::Unix(socket.clone()))
                    .await
                    .map_err(|e| self.unreachable(e))?;
                let path = forward.local.to_string_lossy().into_owned();
                let docker = Docker::connect_with_unix(&path, timeout, version)
                    .map_err(|e| self.unreachable(e))?;
                (docker, Some(forward))
            }
            DockerEndpoint::Local { socket } => (
                Docker::connect_with_unix(socket, timeout, version)
                    .map_err(|e| self.unreachable(e))?,
                None,
            ),
            DockerEndpoint::Tcp {
                address,
                ca,
                cert,
                key,
            } => {
                // bollard builds its TLS config on the process's default provider, which must
                // be chosen when more than one is compiled in.
                let _ = rustls::crypto::ring::default_provider().install_default();
                (
                    Docker::connect_with_ssl(
                        &format!("https://{address}"),
                        key,
                        cert,
                        ca,
                        timeout,
                        version,
                    )
                    .map_err(|e| self.unreachable(e))?,
                    None,
                )
            }
            DockerEndpoint::None => return Err(self.unreachable("no Docker engine configured")),
        };
        let docker = docker.negotiate_version().await.map_err(|e| {
            let detail = match &inner.endpoint {
                DockerEndpoint::Ssh { socket } => format!("{socket} over SSH: {e}"),
                _ => e.to_string(),
            };
            self.unreachable(detail)
        })?;
        Ok((docker, forward))
    }

    /// Every container carrying all of `filter`'s `key=value` labels.
    async fn list_labelled(
        &self,
        filter: Vec<String>,
    ) -> Result<Vec<ContainerInfo>, ContainerError> {
        let (docker, _lease) = self.client().await?;
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), filter)])),
            ..Default::default()
        };
        let found = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.error(e))?;
        Ok(found
            .into_iter()
            .map(|c| {
                let state = c.state.map(|s| s.to_string()).unwrap_or_default();
                ContainerInfo {
                    id: c.id.unwrap_or_default(),
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_string(),
                    labels: c.labels.unwrap_or_default(),
                    running: state == "running",
                    state,
                    status: c.status.unwrap_or_default(),
                }
            })
            .collect())
    }

    async fn inspect(&self, docker: &Docker, id: &str) -> Result<ContainerState, ContainerError> {
        let info = docker
            .inspect_container(id, None)
            .await
            .map_err(|e| self.error(e))?;
        let state = info.state.unwrap_or_default();
        let settings = info.network_settings.unwrap_or_default();
        let ip = settings
            .networks
            .unwrap_or_default()
            .into_values()
            .filter_map(|n| n.ip_address)
            .find(|ip| !ip.is_empty());
        let published = settings
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(port, bindings)| {
                let container_port = port.split('/').next()?.parse().ok()?;
                let host_port = bindings?
                    .into_iter()
                    .find_map(|b| b.host_port?.parse().ok())?;
                Some((container_port, host_port))
            })
            .collect();
        Ok(ContainerState {
            running: state.running.unwrap_or(false),
            exit_code: state.exit_code,
            ip,
            published,
            restarting: state.restarting.unwrap_or(false),
            error: state.error.filter(|e| !e.is_empty()),
        })
    }
}

fn credentials(auth: Option<&RegistryAuth>) -> Option<DockerCredentials> {
    auth.map(|a| DockerCredentials {
        username: Some(a.username.clone()),
        password: Some(a.password.expose_secret().to_string()),
        serveraddress: Some(a.server.clone()),
        ..Default::default()
    })
}

/// `name:tag` (or `name@digest`) split for the pull API; a bare name means `latest`.
fn split_tag(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, "latest"),
    }
}

/// Parses `2024-01-01T00:00:00.123456789Z message` as Docker writes it with timestamps on.
fn parse_log_line(text: &str, stream: LogStream) -> Option<LogEntry> {
    let (stamp, line) = text.split_once(' ').unwrap_or((text, ""));
    let timestamp_ns = chrono::DateTime::parse_from_rfc3339(stamp)
        .ok()?
        .timestamp_nanos_opt()?;
    Some(LogEntry {
        timestamp_ns,
        stream,
        line: line.trim_end_matches(['\r', '\n']).to_string(),
    })
}

fn log_entries(output: LogOutput) -> Vec<LogEntry> {
    let (stream, bytes) = match output {
        LogOutput::StdErr { message } => (LogStream::Stderr, message),
        LogOutput::StdOut { message } | LogOutput::Console { message } => {
            (LogStream::Stdout, message)
        }
        LogOutput::StdIn { .. } => return Vec::new(),
    };
    String::from_utf8_lossy(&bytes)
        .split_inclusive('\n')
        .filter_map(|line| parse_log_line(line, stream))
        .collect()
}

#[async_trait]
impl ContainerHost for DockerHost {
    async fn version(&self) -> Result<String, ContainerError> {
        let (docker, _lease) = self.client().await?;
        let version = docker.version().await.map_err(|e| self.error(e))?;
        Ok(format!(
            "Docker {}, API {}",
            version.version.unwrap_or_default(),
            version.api_version.unwrap_or_default()
        ))
    }

    async fn image_present(&self, image: &str) -> Result<bool, ContainerError> {
        let (docker, _lease) = self.client().await?;
        match docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn pull(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
        progress: &Output,
    ) -> Result<(), ContainerError> {
        let (docker, _lease) = self.client().await?;
        let (name, tag) = split_tag(image);
        let options = CreateImageOptions {
            from_image: Some(name.to_string()),
            tag: (!tag.is_empty()).then(|| tag.to_string()),
            ..Default::default()
        };
        let mut stream = docker.create_image(Some(options), None, credentials(auth));
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| self.error(e))?;
            // Per-layer byte counts are noise in a deployment log; keep the milestones.
            if info.progress_detail.is_some_and(|d| d.current.is_some()) {
                continue;
            }
            if let Some(status) = info.status {
                let line = match info.id {
                    Some(id) => format!("{id}: {status}"),
                    None => status,
                };
                let _ = progress.send((Stream::Stdout, line)).await;
            }
        }
        Ok(())
    }

    async fn build(&self, spec: &BuildSpec, progress: &Output) -> Result<(), ContainerError> {
        let (docker, _lease) = self.client().await?;
        let options = BuildImageOptions {
            dockerfile: spec.dockerfile.clone(),
            t: Some(spec.tag.clone()),
            buildargs: Some(spec.args.clone().into_iter().collect::<HashMap<_, _>>()),
            target: spec.target.clone().unwrap_or_default(),
            rm: true,
            forcerm: true,
            ..Default::default()
        };
        let mut stream = docker.build_image(
            options,
            None,
            Some(bollard::body_full(spec.context.clone())),
        );
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| self.error(e))?;
            if let Some(error) = info.error_detail.and_then(|d| d.message) {
                return Err(ContainerError::Engine {
                    server: self.inner.server.clone(),
                    detail: format!("build failed: {}", error.trim()),
                });
            }
            if let Some(text) = info.stream {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let _ = progress.send((Stream::Stdout, line.to_string())).await;
                }
            }
        }
        Ok(())
    }

    async fn push(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
        progress: &Output,
    ) -> Result<(), ContainerError> {
        let (docker, _lease) = self.client().await?;
        let (name, tag) = split_tag(image);
        let options = PushImageOptions {
            tag: Some(tag.to_string()),
            ..Default::default()
        };
        let mut stream = docker.push_image(name, Some(options), credentials(auth));
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| self.error(e))?;
            if let Some(error) = info.error_detail.and_then(|d| d.message) {
                return Err(ContainerError::Engine {
                    server: self.inner.server.clone(),
                    detail: format!("push failed: {}", error.trim()),
                });
            }
            if info.progress_detail.is_some_and(|d| d.current.is_some()) {
                continue;
            }
            if let Some(status) = info.status {
                let _ = progress.send((Stream::Stdout, status)).await;
            }
        }
        Ok(())
    }

    async fn ensure_network(&self, name: &str) -> Result<(), ContainerError> {
        let (docker, _lease) = self.client().await?;
        match docker.inspect_network(name, None).await {
            Ok(_) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                let request = NetworkCreateRequest {
                    name: name.to_string(),
                    driver: Some("bridge".into()),
                    labels: Some(HashMap::from([(LABEL_MANAGED.into(), "true".into())])),
                    ..Default::default()
                };
                match docker.create_network(request).await {
                    Ok(_) => Ok(()),
                    // Created meanwhile by a parallel step.
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 409,
                        ..
                    }) => Ok(()),
                    Err(e) => Err(self.error(e)),
                }
            }
            Err(e) => Err(self.error(e)),
        }
    }

    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<ContainerInfo>, ContainerError> {
        let mut filter = vec![format!("{LABEL_MANAGED}=true")];
        filter.extend(labels.iter().map(|(k, v)| format!("{k}={v}")));
        self.list_labelled(filter).await
    }

    async fn compose_services(&self, project: &str) -> Result<Vec<ContainerInfo>, ContainerError> {
        self.list_labelled(vec![format!("com.docker.compose.project={project}")])
            .await
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, ContainerError> {
        let (docker, _lease) = self.client().await?;
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.extend(
            spec.secrets
                .iter()
                .map(|(k, v)| format!("{k}={}", v.expose_secret())),
        );
        let mut exposed = Vec::new();
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for port in &spec.ports {
            let key = format!("{}/{}", port.container_port, port.protocol);
            exposed.push(key.clone());
            if port.host_port.is_some() || port.host_ip.is_some() {
                bindings
                    .entry(key)
                    .or_default()
                    .get_or_insert_default()
                    .push(PortBinding {
                        host_ip: port.host_ip.clone(),
                        host_port: port.host_port.map(|p| p.to_string()),
                    });
            }
        }
        let restart = spec.restart.as_deref().map(|r| RestartPolicy {
            name: Some(match r {
                "always" => RestartPolicyNameEnum::ALWAYS,
                "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
                "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
                _ => RestartPolicyNameEnum::NO,
            }),
            maximum_retry_count: None,
        });
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.command.clone(),
            env: Some(env),
            labels: Some(spec.labels.clone().into_iter().collect()),
            exposed_ports: Some(exposed),
            host_config: Some(HostConfig {
                port_bindings: Some(bindings),
                binds: Some(spec.volumes.clone()),
                restart_policy: restart,
                memory: spec.memory_bytes,
                nano_cpus: spec.nano_cpus,
                network_mode: spec.network.clone(),
                init: spec.init.then_some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let created = docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| self.error(e))?;
        Ok(created.id)
    }

    async fn start(&self, id: &str) -> Result<(), ContainerError> {
        let (docker, _lease) = self.client().await?;
        docker
            .start_container(id, None)
            .await
            .map_err(|e| self.error(e))
    }

    async fn stop(&self, id: &str, timeout: Duration) -> Result<(), ContainerError> {
        let (docker, _lease) = self.client().await?;
        let options = StopContainerOptions {
            t: Some(timeout.as_secs().min(i32::MAX as u64) as i32),
            ..Default::default()
        };
        match docker.stop_container(id, Some(options)).await {
            // 304: already stopped.
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let (docker, _lease) = self.client().await?;
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match docker.remove_container(id, Some(options)).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn state(&self, id: &str) -> Result<ContainerState, ContainerError> {
        let (docker, _lease) = self.client().await?;
        self.inspect(&docker, id).await
    }

    async fn http_get(
        &self,
        id: &str,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> Result<HttpAnswer, ContainerError> {
        let (docker, _lease) = self.client().await?;
        let state = self.inspect(&docker, id).await?;
        let probe = async {
            match &self.inner.endpoint {
                DockerEndpoint::Ssh { .. } => {
                    let ip = state
                        .ip
                        .clone()
                        .ok_or_else(|| "the container has no IP address".to_string())?;
                    let ssh = self.inner.ssh.as_ref().expect("ssh endpoint");
                    let local = ssh.socket_dir().join(format!(
                        "{}.probe-{}.sock",
                        self.inner.server,
                        &id[..12.min(id.len())]
                    ));
                    let remote = Remote::Tcp(ip.clone(), port);
                    let forward = ssh
                        .forward(&local, &remote)
                        .await
                        .map_err(|e| e.to_string())?;
                    let result = match tokio::net::UnixStream::connect(&local).await {
                        Ok(stream) => http_get(stream, &format!("{ip}:{port}"), path).await,
                        Err(e) => Err(format!("connecting through SSH to {ip}:{port}: {e}")),
                    };
                    ssh.close_forward(forward, &remote).await;
                    result
                }
                DockerEndpoint::Local { .. } => {
                    let ip = state
                        .ip
                        .clone()
                        .ok_or_else(|| "the container has no IP address".to_string())?;
                    let stream = tokio::net::TcpStream::connect((ip.as_str(), port))
                        .await
                        .map_err(|e| format!("connecting to {ip}:{port}: {e}"))?;
                    http_get(stream, &format!("{ip}:{port}"), path).await
                }
                DockerEndpoint::Tcp { address, .. } => {
                    let host = address
                        .rsplit_once(':')
                        .map_or(address.as_str(), |(h, _)| h);
                    let published = state
                        .published
                        .iter()
                        .find(|(container, _)| *container == port)
                        .map(|(_, host)| *host)
                        .ok_or_else(|| {
                            format!("port {port} is not published; an engine over TCP is probed on published ports")
                        })?;
                    let stream = tokio::net::TcpStream::connect((host, published))
                        .await
                        .map_err(|e| format!("connecting to {host}:{published}: {e}"))?;
                    http_get(stream, &format!("{host}:{published}"), path).await
                }
                DockerEndpoint::None => Err("no Docker engine".to_string()),
            }
        };
        match tokio::time::timeout(timeout, probe).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(detail)) => Err(ContainerError::Engine {
                server: self.inner.server.clone(),
                detail,
            }),
            Err(_) => Err(ContainerError::Engine {
                server: self.inner.server.clone(),
                detail: format!("no answer within {}", humantime::format_duration(timeout)),
            }),
        }
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecAnswer, ContainerError> {
        let (docker, _lease) = self.client().await?;
        let run = async {
            let exec = docker
                .create_exec(
                    id,
                    CreateExecOptions {
                        cmd: Some(command.to_vec()),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| self.error(e))?;
            let mut output = String::new();
            if let StartExecResults::Attached {
                output: mut stream, ..
            } = docker
                .start_exec(&exec.id, None)
                .await
                .map_err(|e| self.error(e))?
            {
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| self.error(e))?;
                    if output.len() < BODY_PREVIEW {
                        output.push_str(&chunk.to_string());
                    }
                }
            }
            let inspected = docker
                .inspect_exec(&exec.id)
                .await
                .map_err(|e| self.error(e))?;
            Ok(ExecAnswer {
                exit_code: inspected.exit_code.unwrap_or(-1),
                output: output.chars().take(BODY_PREVIEW).collect(),
            })
        };
        tokio::time::timeout(timeout, run)
            .await
            .unwrap_or_else(|_| {
                Err(ContainerError::Engine {
                    server: self.inner.server.clone(),
                    detail: format!(
                        "the command did not finish within {}",
                        humantime::format_duration(timeout)
                    ),
                })
            })
    }

    async fn tail(&self, id: &str, lines: usize) -> Result<Vec<LogEntry>, ContainerError> {
        let (docker, _lease) = self.client().await?;
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            timestamps: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        let outputs: Vec<LogOutput> = docker
            .logs(id, Some(options))
            .try_collect()
            .await
            .map_err(|e| self.error(e))?;
        Ok(outputs.into_iter().flat_map(log_entries).collect())
    }

    fn logs(
        &self,
        id: &str,
        since_ns: i64,
        follow: bool,
    ) -> BoxStream<'static, Result<LogEntry, ContainerError>> {
        let host = self.clone();
        let id = id.to_string();
        futures::stream::once(async move {
            let (docker, lease) = host.client().await?;
            let options = LogsOptions {
                follow,
                stdout: true,
                stderr: true,
                timestamps: true,
                since: (since_ns / 1_000_000_000).clamp(0, i32::MAX as i64) as i32,
                tail: "all".into(),
                ..Default::default()
            };
            let errors = host.clone();
            let stream = docker.logs(&id, Some(options)).flat_map(move |item| {
                // The lease lives as long as the stream.
                let _ = &lease;
                let entries: Vec<Result<LogEntry, ContainerError>> = match item {
                    Ok(output) => log_entries(output).into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(errors.error(e))],
                };
                futures::stream::iter(entries)
            });
            Ok::<_, ContainerError>(stream)
        })
        .try_flatten()
        .boxed()
    }

    fn starts(&self) -> BoxStream<'static, Result<String, ContainerError>> {
        let host = self.clone();
        futures::stream::once(async move {
            let (docker, lease) = host.client().await?;
            let options = EventsOptions {
                filters: Some(HashMap::from([
                    ("type".to_string(), vec!["container".to_string()]),
                    ("event".to_string(), vec!["start".to_string()]),
                    ("label".to_string(), vec![format!("{LABEL_MANAGED}=true")]),
                ])),
                ..Default::default()
            };
            let errors = host.clone();
            Ok::<_, ContainerError>(docker.events(Some(options)).filter_map(move |event| {
                let _ = &lease;
                let item = match event {
                    Ok(event) => event.actor.and_then(|a| a.id).map(Ok),
                    Err(e) => Some(Err(errors.error(e))),
                };
                futures::future::ready(item)
            }))
        })
        .try_flatten()
        .boxed()
    }
}

/// One `GET` over `stream` (HTTP/1.1, hyper), answering the status and the body's start.
async fn http_get<S>(stream: S, authority: &str, path: &str) -> Result<HttpAnswer, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "dropship-health-check")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("bad health check path `{path}`: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let status = response.status().as_u16();
    let mut body = Vec::new();
    let mut incoming = response.into_body();
    while body.len() < BODY_PREVIEW {
        match incoming.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    body.extend_from_slice(data);
                }
            }
            _ => break,
        }
    }
    driver.abort();
    body.truncate(BODY_PREVIEW);
    Ok(HttpAnswer {
        status,
        body: String::from_utf8_lossy(&body).trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_from_names_but_not_from_registry_ports() {
        assert_eq!(split_tag("busybox"), ("busybox", "latest"));
        assert_eq!(split_tag("app:1.2"), ("app", "1.2"));
        assert_eq!(
            split_tag("127.0.0.1:5000/app"),
            ("127.0.0.1:5000/app", "latest")
        );
        assert_eq!(
            split_tag("127.0.0.1:5000/app:abc"),
            ("127.0.0.1:5000/app", "abc")
        );
        assert_eq!(split_tag("app@sha256:00"), ("app@sha256:00", ""));
    }

    #[test]
    fn docker_log_lines_keep_their_nanosecond_timestamps() {
        let entry = parse_log_line(
            "2026-11-22T01:38:40.046302144Z hello world\n",
            LogStream::Stdout,
        )
        .unwrap();
        assert_eq!(entry.line, "hello world");
        assert_eq!(entry.timestamp_ns % 1_000_000_000, 46_302_144);
        assert!(parse_log_line("garbage", LogStream::Stdout).is_none());
    }
}
