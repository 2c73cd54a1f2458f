//! Container steps on one server: the health-gated replacement, rollback and stop.
//!
//! Replacement: get the image (pull, or build), start the new containers beside the old ones,
//! wait for every new one to pass its health check, and only then stop the old ones, which stay
//! on the server, stopped, as retired versions; versions beyond `keep` are removed. A new
//! version that never gets healthy is removed and the old one keeps running.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use super::{Runner, StepOutcome, format_elapsed};
use crate::containers::{
    BuildSpec, ContainerError, ContainerHost, ContainerInfo, ContainerSpec, HealthCheck, LABEL_APP,
    LABEL_DEPLOYMENT, LABEL_ENVIRONMENT, LABEL_HEALTH, LABEL_MANAGED, LABEL_PROXY, LABEL_REPLICA,
    LABEL_REPO, LABEL_SHA, PortMapping, Probe, RegistryAuth, build_context,
};
use crate::exec::Output;
use crate::logs::DeploymentLog;
use crate::manifest::{BuildPlan, ContainerPlan, ImageSource, ProxyPlan};
use crate::proxy::{Drain, RouteKey, RouteSpec, UpstreamSpec};
use crate::store::{Deployment, LogStream, State};

/// Lines of a failed container's log shown in the diagnosis.
pub(super) const DIAGNOSIS_LINES: usize = 50;

/// What a step's servers share: the build context and a builder's image are made once.
#[derive(Debug, Default)]
pub(super) struct StepShared {
    context: OnceCell<Result<bytes::Bytes, String>>,
    built: OnceCell<Result<String, String>>,
}

/// How long a container step's image, start and health may take: until the step's deadline,
/// and until the deployment is stopped.
pub(super) struct Bound {
    deadline: tokio::time::Instant,
    stop: tokio_util::sync::CancellationToken,
}

impl Bound {
    /// `work`, or how the step ends instead: timed out, or stopped.
    async fn run<T>(&self, work: impl std::future::Future<Output = T>) -> Result<T, StepOutcome> {
        tokio::select! {
            done = work => Ok(done),
            () = tokio::time::sleep_until(self.deadline) => Err(StepOutcome::TimedOut),
            () = self.stop.cancelled() => Err(StepOutcome::Stopped),
        }
    }
}

/// Writes a step's lines for one server.
#[derive(Clone)]
pub(super) struct Say {
    pub(super) log: DeploymentLog,
    pub(super) server: String,
    pub(super) step: String,
    /// The job group of this step on this server (`exec::job_group`).
    pub(super) group: String,
    /// Cancelled when the deployment is stopped.
    pub(super) stop: tokio_util::sync::CancellationToken,
}

impl Say {
    pub(super) fn note(&self, text: impl Into<String>) {
        self.log.line(
            Some(&self.server),
            Some(&self.step),
            LogStream::Dropship,
            text,
        );
    }

    pub(super) fn output(&self, stream: LogStream, text: impl Into<String>) {
        self.log
            .line(Some(&self.server), Some(&self.step), stream, text);
    }

    /// A channel whose lines go to this step's log (script output, pull and build progress).
    /// Bounded, and capped by `[logs]` per step and server and per deployment.
    pub(super) fn progress(&self) -> (Output, tokio::task::JoinHandle<()>) {
        self.log.output(&self.server, &self.step)
    }
}

/// Old versions being stopped in the background, per app and server: the next container step
/// for the same app waits for them, so it always sees settled state.
#[derive(Debug, Clone, Default)]
pub struct Retiring {
    locks: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Retiring {
    fn lock(
        &self,
        deployment: &Deployment,
        app: &str,
        server: &str,
    ) -> Arc<tokio::sync::Mutex<()>> {
        let key = format!(
            "{}\0{}\0{app}\0{server}",
            deployment.repo, deployment.environment
        );
        self.locks
            .lock()
            .expect("not poisoned")
            .entry(key)
            .or_default()
            .clone()
    }

    /// Waits until earlier background stops of this app on this server have finished.
    async fn settle(&self, deployment: &Deployment, app: &str, server: &str) {
        let _ = self.lock(deployment, app, server).lock().await;
    }
}

/// The labels that find one app's containers.
fn app_labels<'a>(deployment: &'a Deployment, app: &'a str) -> [(&'static str, &'a str); 3] {
    [
        (LABEL_REPO, deployment.repo.as_str()),
        (LABEL_ENVIRONMENT, deployment.environment.as_str()),
        (LABEL_APP, app),
    ]
}

/// Docker names allow `[a-zA-Z0-9][a-zA-Z0-9_.-]`.
fn name_part(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Containers grouped by the deployment that made them, newest first.
fn versions(containers: Vec<ContainerInfo>) -> Vec<(i64, Vec<ContainerInfo>)> {
    let mut by: BTreeMap<i64, Vec<ContainerInfo>> = BTreeMap::new();
    for container in containers {
        by.entry(container.deployment().unwrap_or(0))
            .or_default()
            .push(container);
    }
    by.into_iter().rev().collect()
}

fn port_in_use(error: &ContainerError) -> bool {
    let text = error.to_string();
    text.contains("port is already allocated") || text.contains("address already in use")
}

impl Runner {
    fn host(&self, server: &str) -> Result<Arc<dyn ContainerHost>, ContainerError> {
        self.hosts
            .get(server)
            .ok_or_else(|| ContainerError::Unreachable {
                server: server.to_string(),
                detail: "no Docker engine is configured for this server (docker = \"none\")".into(),
            })
    }

    fn registry_auth(&self, image: &str) -> Option<RegistryAuth> {
        self.config.registry_for(image).map(|r| RegistryAuth {
            server: r.server.clone(),
            username: r.username.clone(),
            password: r.password.clone(),
        })
    }

    /// Replaces `plan`'s app on `server` behind its health check: image, start and health
    /// within the step's `limit` and until the deployment is stopped.
    pub(super) async fn deploy_app(
        &self,
        deployment: &Deployment,
        plan: &ContainerPlan,
        server: &str,
        shared: &StepShared,
        limit: Duration,
        say: &Say,
    ) -> StepOutcome {
        let bound = Bound {
            deadline: tokio::time::Instant::now() + limit,
            stop: say.stop.clone(),
        };
        match self
            .deploy_app_inner(deployment, plan, server, shared, &bound, say)
            .await
        {
            Ok(result) => result,
            Err(error) => error.into(),
        }
    }

    async fn deploy_app_inner(
        &self,
        deployment: &Deployment,
        plan: &ContainerPlan,
        server: &str,
        shared: &StepShared,
        bound: &Bound,
        say: &Say,
    ) -> Result<StepOutcome, ContainerError> {
        let host = self.host(server)?;
        if plan.proxy.is_some() && self.routes.is_none() {
            return Ok(StepOutcome::Failed(format!(
                "{} routes hosts through the proxy, but the operator config has no [proxy] listen",
                plan.app
            )));
        }
        self.retiring.settle(deployment, &plan.app, server).await;
        let clock = Instant::now();
        let image = match bound
            .run(self.image(deployment, plan, server, &host, shared, say))
            .await
        {
            Ok(Ok(image)) => image,
            Ok(Err(outcome)) | Err(outcome) => return Ok(outcome),
        };
        let image_time = clock.elapsed();
        say.note(format!(
            "image {image} ready ({})",
            format_elapsed(image_time)
        ));
        if let Some(network) = &plan.network {
            host.ensure_network(network).await?;
        }
        let mut rollout = Rollout::begin(self, deployment, plan, server, host, say).await?;
        let clock = Instant::now();
        match bound.run(rollout.start(&image)).await {
            Ok(started) => started?,
            Err(outcome) => {
                rollout.undo().await?;
                return Ok(outcome);
            }
        }
        let start_time = clock.elapsed();
        let clock = Instant::now();
        let unhealthy = match bound.run(rollout.unhealthy()).await {
            Ok(unhealthy) => unhealthy,
            Err(outcome) => {
                say.note(format!(
                    "{}: {} while waiting for health",
                    plan.app,
                    outcome.reason()
                ));
                rollout.undo().await?;
                return Ok(outcome);
            }
        };
        let health_time = clock.elapsed();
        if let Some(failure) = unhealthy {
            rollout.undo().await?;
            return Ok(StepOutcome::Failed(failure));
        }
        let clock = Instant::now();
        let drain = match rollout.route().await {
            Ok(drain) => drain,
            Err(outcome @ StepOutcome::Failed(_)) => {
                rollout.remove_new().await?;
                return Ok(outcome);
            }
            Err(outcome) => return Ok(outcome),
        };
        rollout.retire_old(drain).await;
        let ms = |d: Duration| d.as_millis();
        say.note(format!(
            "{} replaced on {server} in ms: image {}, start {}, health {}, switch {}",
            plan.app,
            ms(image_time),
            ms(start_time),
            ms(health_time),
            ms(clock.elapsed())
        ));
        self.watch_logs(server);
        Ok(StepOutcome::Succeeded)
    }

    /// The image to run on `server`, pulled or built there (or built once on the builder
    /// and pulled). `Err` is how the step ends instead: a build or pull failure, or an engine
    /// out of reach.
    async fn image(
        &self,
        deployment: &Deployment,
        plan: &ContainerPlan,
        server: &str,
        host: &Arc<dyn ContainerHost>,
        shared: &StepShared,
        say: &Say,
    ) -> Result<String, StepOutcome> {
        match &plan.image {
            ImageSource::Pull(image) => {
                self.ensure_pulled(host, image, say).await?;
                Ok(image.clone())
            }
            ImageSource::Build(build) => {
                let slug = name_part(&format!(
                    "{}-{}",
                    deployment.repo.replace('/', "-"),
                    plan.app
                ))
                .to_ascii_lowercase();
                match &build.builder {
                    None => {
                        let image = format!("dropship/{slug}:{}", build.tag);
                        if host.image_present(&image).await? {
                            say.note(format!("{image} is already built on {server}"));
                            return Ok(image);
                        }
                        self.build_on(deployment, build, &image, server, host, shared, say)
                            .await?;
                        Ok(image)
                    }
                    Some(builder) => {
                        let Some(registry) = &self.config.containers.build_registry else {
                            return Err(StepOutcome::Failed(format!(
                                "build.builder needs containers.build_registry in the operator config (where {builder} pushes the image)"
                            )));
                        };
                        let image =
                            format!("{}/{slug}:{}", registry.trim_end_matches('/'), build.tag);
                        let built = shared
                            .built
                            .get_or_init(|| async {
                                let builder_host = match self.host(builder) {
                                    Ok(host) => host,
                                    Err(e) => return Err(e.to_string()),
                                };
                                let builder_say = Say {
                                    server: builder.to_string(),
                                    ..say.clone()
                                };
                                match builder_host.image_present(&image).await {
                                    Ok(true) => {}
                                    Ok(false) => match self
                                        .build_on(
                                            deployment,
                                            build,
                                            &image,
                                            builder,
                                            &builder_host,
                                            shared,
                                            &builder_say,
                                        )
                                        .await
                                    {
                                        Ok(()) => {}
                                        Err(outcome) => return Err(outcome.reason()),
                                    },
                                    Err(e) => return Err(e.to_string()),
                                }
                                builder_say.note(format!("pushing {image}"));
                                let (progress, pump) = builder_say.progress();
                                let pushed = builder_host
                                    .push(&image, self.registry_auth(&image).as_ref(), &progress)
                                    .await;
                                drop(progress);
                                let _ = pump.await;
                                pushed.map(|()| image.clone()).map_err(|e| e.to_string())
                            })
                            .await
                            .clone();
                        let image = built.map_err(StepOutcome::Failed)?;
                        self.ensure_pulled(host, &image, say).await?;
                        Ok(image)
                    }
                }
            }
        }
    }

    /// Pulls `image` unless the server has it (a `latest` tag is always pulled again).
    async fn ensure_pulled(
        &self,
        host: &Arc<dyn ContainerHost>,
        image: &str,
        say: &Say,
    ) -> Result<(), StepOutcome> {
        let mutable = image.ends_with(":latest");
        if !mutable && host.image_present(image).await? {
            return Ok(());
        }
        say.note(format!("pulling {image}"));
        let (progress, pump) = say.progress();
        let pulled = host
            .pull(image, self.registry_auth(image).as_ref(), &progress)
            .await;
        drop(progress);
        let _ = pump.await;
        match pulled {
            Ok(()) => Ok(()),
            Err(ContainerError::Engine { detail, .. }) => Err(StepOutcome::Failed(format!(
                "pulling {image} failed: {detail}"
            ))),
            Err(error) => Err(error.into()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn build_on(
        &self,
        deployment: &Deployment,
        build: &BuildPlan,
        image: &str,
        server: &str,
        host: &Arc<dyn ContainerHost>,
        shared: &StepShared,
        say: &Say,
    ) -> Result<(), StepOutcome> {
        let context = shared
            .context
            .get_or_init(|| async {
                say.note(format!(
                    "fetching {} at {} for the build context `{}`",
                    deployment.repo, deployment.sha, build.context
                ));
                let tarball = self
                    .manifests
                    .tarball(
                        &deployment.repo,
                        &deployment.sha,
                        deployment.installation_id,
                    )
                    .await
                    .map_err(|e| format!("cannot fetch the repository: {e}"))?;
                let context = build.context.clone();
                tokio::task::spawn_blocking(move || build_context(&tarball, &context))
                    .await
                    .map_err(|e| e.to_string())?
                    .map(bytes::Bytes::from)
            })
            .await
            .clone();
        let context = context.map_err(StepOutcome::Failed)?;
        say.note(format!(
            "building {image} on {server} ({} KiB of context)",
            context.len() / 1024
        ));
        let spec = BuildSpec {
            context,
            dockerfile: build.dockerfile.clone(),
            args: build.args.clone(),
            target: build.target.clone(),
            tag: image.to_string(),
        };
        let (progress, pump) = say.progress();
        let built = host.build(&spec, &progress).await;
        drop(progress);
        let _ = pump.await;
        match built {
            Ok(()) => Ok(()),
            Err(ContainerError::Engine { detail, .. }) => Err(StepOutcome::Failed(format!(
                "building {image} on {server}: {detail}"
            ))),
            Err(error) => Err(error.into()),
        }
    }

    /// Probes a new container until it passes or has failed `retries` times after its start
    /// period. `Err` is the diagnosis (its first line is short enough for a status).
    async fn wait_healthy(
        &self,
        host: &Arc<dyn ContainerHost>,
        server: &str,
        id: &str,
        name: &str,
        check: &HealthCheck,
        say: &Say,
    ) -> Result<(), String> {
        let started = Instant::now();
        let what = match &check.probe {
            Probe::Http { path, port } => format!("GET {path} on port {port}"),
            Probe::Command { command } => format!("`{}`", command.join(" ")),
            Probe::Running => "running".to_string(),
        };
        let mut failures = 0;
        let mut last;
        loop {
            let state = match host.state(id).await {
                Ok(state) => state,
                Err(e) => {
                    return Err(self
                        .diagnose(host, server, id, name, &what, &e.to_string(), say)
                        .await);
                }
            };
            if !state.running && !state.restarting {
                let why = match (state.exit_code, &state.error) {
                    (_, Some(error)) => format!("the container could not run: {error}"),
                    (Some(code), None) => format!("the container exited with code {code}"),
                    (None, None) => "the container stopped".to_string(),
                };
                return Err(self
                    .diagnose(host, server, id, name, &what, &why, say)
                    .await);
            }
            let passed = probe(host.as_ref(), id, check, started).await;
            match passed {
                Ok(()) => {
                    say.note(format!(
                        "{name} is healthy ({what}, {})",
                        format_elapsed(started.elapsed())
                    ));
                    return Ok(());
                }
                Err(why) => last = why,
            }
            if matches!(check.probe, Probe::Running) {
                tokio::time::sleep(check.interval.min(Duration::from_millis(200))).await;
                continue;
            }
            if started.elapsed() >= check.start_period {
                failures += 1;
                if failures >= check.retries {
                    let why = format!("failed {failures} health checks, last: {last}");
                    return Err(self
                        .diagnose(host, server, id, name, &what, &why, say)
                        .await);
                }
            }
            // The probe interval: waiting for the next probe is what a health check is.
            tokio::time::sleep(check.interval).await;
        }
    }

    /// Logs the diagnosis of an unhealthy container (with its last log lines) and returns the
    /// short form for the status.
    #[allow(clippy::too_many_arguments)]
    async fn diagnose(
        &self,
        host: &Arc<dyn ContainerHost>,
        server: &str,
        id: &str,
        name: &str,
        what: &str,
        why: &str,
        say: &Say,
    ) -> String {
        let state = host.state(id).await.ok();
        let target = match state.as_ref().and_then(|s| s.ip.clone()) {
            Some(ip) => format!("{what} at {ip}"),
            None => what.to_string(),
        };
        say.note(format!(
            "✘ {name} on {server} is not healthy: {target}: {why}"
        ));
        match host.tail(id, DIAGNOSIS_LINES).await {
            Ok(lines) if !lines.is_empty() => {
                say.note(format!("last {} lines of {name}:", lines.len()));
                for entry in lines {
                    say.output(entry.stream, entry.line);
                }
            }
            Ok(_) => say.note(format!("{name} wrote no log lines")),
            Err(e) => say.note(format!("cannot read {name}'s log: {e}")),
        }
        format!("{name} unhealthy ({target}: {why})")
    }

    /// Stops `old` (gracefully, up to `timeout`) and then prunes versions beyond `keep`, in
    /// the background: the new version is already serving, and an app that takes its whole
    /// stop timeout to drain should not hold up the deployment's status. The next step for
    /// this app on this server waits for it ([`Retiring`]).
    #[allow(clippy::too_many_arguments)]
    async fn retire_in_background(
        &self,
        host: &Arc<dyn ContainerHost>,
        deployment: &Deployment,
        app: &str,
        old: Vec<ContainerInfo>,
        drain: Drain,
        timeout: Duration,
        keep: u32,
        say: &Say,
    ) {
        let guard = self
            .retiring
            .lock(deployment, app, &say.server)
            .lock_owned()
            .await;
        for container in &old {
            say.note(format!(
                "stopping {} (stop timeout {})",
                container.name,
                humantime::format_duration(timeout)
            ));
        }
        let (runner, host, deployment, app, say) = (
            self.clone(),
            host.clone(),
            deployment.clone(),
            app.to_string(),
            say.clone(),
        );
        let drain_timeout = self.config.proxy.drain_timeout;
        tokio::spawn(async move {
            let clock = Instant::now();
            if !drain.is_empty() && !drain.wait(drain_timeout).await {
                say.note(format!(
                    "the old upstreams of {app} still had requests after {}; stopping anyway",
                    humantime::format_duration(drain_timeout)
                ));
            }
            let result = async {
                runner.retire(&host, &old, timeout, &say).await?;
                runner.prune(&host, &deployment, &app, keep, &say).await
            }
            .await;
            match result {
                Ok(()) if !old.is_empty() => say.note(format!(
                    "old version of {app} stopped in {} ms",
                    clock.elapsed().as_millis()
                )),
                Ok(()) => {}
                Err(error) => {
                    tracing::warn!(%error, app, "retiring the old version");
                    say.note(format!("✘ retiring the old version of {app}: {error}"));
                }
            }
            drop(guard);
        });
    }

    /// The plan's ports, each published port on the server's private address (or loopback)
    /// unless the manifest names an address (which the container policy allowed), and the
    /// proxied port published there at a port Docker picks (unless the plan publishes it).
    fn published_ports(&self, plan: &ContainerPlan, server: &str) -> Vec<PortMapping> {
        let bind = self.publish_address(server);
        let mut ports = plan.ports.clone();
        for port in &mut ports {
            if port.host_port.is_some() && port.host_ip.is_none() {
                port.host_ip = Some(bind.clone());
            }
        }
        if let Some(proxy) = &plan.proxy {
            let published = ports.iter().any(|p| {
                p.container_port == proxy.port && (p.host_port.is_some() || p.host_ip.is_some())
            });
            if !published {
                ports.retain(|p| p.container_port != proxy.port);
                ports.push(PortMapping {
                    host_ip: Some(bind),
                    host_port: None,
                    container_port: proxy.port,
                    protocol: "tcp".into(),
                });
            }
        }
        ports
    }

    /// Where `server` publishes container ports: its private address, else 127.0.0.1.
    fn publish_address(&self, server: &str) -> String {
        self.config
            .server(server)
            .and_then(|s| s.private_address)
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into())
            .to_string()
    }

    /// Where the proxy reaches a port `server` published: its private address; for a server
    /// on this machine (`local`, or a loopback `host`), 127.0.0.1; `Err` otherwise.
    fn upstream_address(&self, server: &str) -> Result<std::net::IpAddr, String> {
        let Some(entry) = self.config.server(server) else {
            return Err(format!("server `{server}` is not in the operator config"));
        };
        match entry.private_address {
            Some(ip) => Ok(ip),
            None if entry.on_this_machine() => Ok(std::net::Ipv4Addr::LOCALHOST.into()),
            None => Err(format!(
                "server `{server}` publishes container ports on its loopback only, which the proxy cannot reach: set private_address in its [[servers]] entry"
            )),
        }
    }

    /// Points the app's route at `containers` (their published ports on `server`); the
    /// previous upstreams drain. `Err` is how the step ends instead: no proxy, a container
    /// that publishes no port for it, or an engine out of reach.
    #[allow(clippy::too_many_arguments)]
    async fn switch_route(
        &self,
        deployment: &Deployment,
        app: &str,
        proxy: &ProxyPlan,
        server: &str,
        host: &Arc<dyn ContainerHost>,
        containers: &[String],
        say: &Say,
    ) -> Result<Drain, StepOutcome> {
        let Some(routes) = &self.routes else {
            return Err(StepOutcome::Failed(
                "the operator config has no [proxy] listen".into(),
            ));
        };
        let address = self.upstream_address(server).map_err(StepOutcome::Failed)?;
        let mut upstreams = Vec::new();
        for id in containers {
            let state = host.state(id).await?;
            let Some((_, port)) = state.published.iter().find(|(c, _)| *c == proxy.port) else {
                return Err(StepOutcome::Failed(format!(
                    "{app}: container port {} is not published on {server}",
                    proxy.port
                )));
            };
            upstreams.push(UpstreamSpec {
                address: std::net::SocketAddr::new(address, *port).to_string(),
                container: id.clone(),
            });
        }
        let route = RouteSpec {
            key: RouteKey {
                repo: deployment.repo.clone(),
                environment: deployment.environment.clone(),
                app: app.to_string(),
            },
            hosts: proxy.hosts.clone(),
            path_prefix: proxy.path_prefix.clone(),
        };
        let targets = upstreams
            .iter()
            .map(|u| u.address.clone())
            .collect::<Vec<_>>()
            .join(", ");
        match routes.switch(&route, upstreams).await {
            Ok(drain) => {
                say.note(format!(
                    "routed {}{} to {targets}",
                    proxy.hosts.join(", "),
                    if proxy.path_prefix == "/" {
                        ""
                    } else {
                        &proxy.path_prefix
                    }
                ));
                Ok(drain)
            }
            Err(error) => Err(StepOutcome::Failed(format!(
                "switching the route of {app}: {error:#}"
            ))),
        }
    }

    /// Stops `containers`; they stay on the server as a retired version.
    async fn retire(
        &self,
        host: &Arc<dyn ContainerHost>,
        containers: &[ContainerInfo],
        timeout: Duration,
        say: &Say,
    ) -> Result<(), ContainerError> {
        let stops = containers.iter().map(|c| host.stop(&c.id, timeout));
        for (container, result) in containers
            .iter()
            .zip(futures::future::join_all(stops).await)
        {
            result?;
            say.note(format!("stopped {} (kept for rollback)", container.name));
        }
        Ok(())
    }

    /// Removes retired versions of `app` beyond the newest `keep`.
    async fn prune(
        &self,
        host: &Arc<dyn ContainerHost>,
        deployment: &Deployment,
        app: &str,
        keep: u32,
        say: &Say,
    ) -> Result<(), ContainerError> {
        let all = host.list(&app_labels(deployment, app)).await?;
        let retired: Vec<ContainerInfo> = versions(all)
            .into_iter()
            .filter(|(_, containers)| containers.iter().all(|c| !c.running))
            .skip(keep as usize)
            .flat_map(|(_, containers)| containers)
            .collect();
        for container in retired {
            host.remove(&container.id).await?;
            say.note(format!("removed {} (beyond keep: {keep})", container.name));
        }
        Ok(())
    }

    /// Starts the newest earlier successful version of `app` kept on `server`, health-checked,
    /// then retires the running one.
    pub(super) async fn rollback_app(
        &self,
        deployment: &Deployment,
        app: &str,
        stop_timeout: Duration,
        server: &str,
        say: &Say,
    ) -> StepOutcome {
        let run = async {
            let host = self.host(server)?;
            self.retiring.settle(deployment, app, server).await;
            let all = host.list(&app_labels(deployment, app)).await?;
            let groups = versions(all);
            let current: Vec<ContainerInfo> = groups
                .iter()
                .flat_map(|(_, c)| c.iter().filter(|c| c.running).cloned())
                .collect();
            let current_id = current.iter().filter_map(ContainerInfo::deployment).max();
            let Some((target_id, containers)) = self.rollback_target(groups, current_id).await
            else {
                return Ok(StepOutcome::Failed(format!(
                    "no earlier successful version of {app} is kept on {server}"
                )));
            };
            let sha = crate::sha::Sha::from(
                containers
                    .first()
                    .and_then(|c| c.label(LABEL_SHA))
                    .unwrap_or_default(),
            );
            say.note(format!(
                "rolling {app} back to deployment {target_id} ({})",
                sha.short()
            ));
            let mut stopped_current = false;
            for container in &containers {
                match host.start(&container.id).await {
                    Ok(()) => {}
                    Err(error) if port_in_use(&error) && !stopped_current => {
                        say.note("a published host port is held by the running version: stopping it first");
                        self.retire(&host, &current, stop_timeout, say).await?;
                        stopped_current = true;
                        host.start(&container.id).await?;
                    }
                    Err(error) => return Err(error),
                }
                say.note(format!("started {}", container.name));
            }
            for container in &containers {
                let check = kept_health_check(container);
                if let Err(failure) = self
                    .wait_healthy(&host, server, &container.id, &container.name, &check, say)
                    .await
                {
                    for container in &containers {
                        host.stop(&container.id, stop_timeout).await?;
                    }
                    if stopped_current {
                        for container in &current {
                            host.start(&container.id).await?;
                        }
                    }
                    return Ok(StepOutcome::Failed(failure));
                }
            }
            // The version rolled back to was routed: it takes the traffic before the current
            // one drains and stops.
            let proxy: Option<ProxyPlan> = containers
                .first()
                .and_then(|c| c.label(LABEL_PROXY))
                .and_then(|p| serde_json::from_str(p).ok());
            if let Some(proxy) = proxy {
                let ids: Vec<String> = containers.iter().map(|c| c.id.clone()).collect();
                match self
                    .switch_route(deployment, app, &proxy, server, &host, &ids, say)
                    .await
                {
                    Ok(drain) => {
                        drain.wait(self.config.proxy.drain_timeout).await;
                    }
                    Err(outcome) => return Ok(outcome),
                }
            }
            if !stopped_current {
                self.retire(&host, &current, stop_timeout, say).await?;
            }
            self.watch_logs(server);
            Ok(StepOutcome::Succeeded)
        };
        match run.await {
            Ok(result) => result,
            Err(error) => error.into(),
        }
    }

    /// The newest kept version older than the running one (`current_id`), stopped, whose
    /// deployment succeeded (one this store does not know, from an older database, is
    /// trusted; an inactive one succeeded and was replaced later).
    async fn rollback_target(
        &self,
        groups: Vec<(i64, Vec<ContainerInfo>)>,
        current_id: Option<i64>,
    ) -> Option<(i64, Vec<ContainerInfo>)> {
        for (id, containers) in groups {
            if current_id.is_some_and(|c| id >= c) || containers.iter().any(|c| c.running) {
                continue;
            }
            let succeeded = match self.store.deployment(id).await {
                Ok(Some(d)) => matches!(d.state, State::Success | State::Inactive),
                Ok(None) => true,
                Err(_) => false,
            };
            if succeeded {
                return Some((id, containers));
            }
        }
        None
    }

    /// Stops every running container of `app` (they stay, retired).
    pub(super) async fn stop_app(
        &self,
        deployment: &Deployment,
        app: &str,
        stop_timeout: Duration,
        server: &str,
        say: &Say,
    ) -> StepOutcome {
        let run = async {
            let host = self.host(server)?;
            self.retiring.settle(deployment, app, server).await;
            let running: Vec<ContainerInfo> = host
                .list(&app_labels(deployment, app))
                .await?
                .into_iter()
                .filter(|c| c.running)
                .collect();
            if running.is_empty() {
                say.note(format!("{app} is not running on {server}"));
            }
            // A routed app leaves the proxy first: its requests drain, then it stops.
            if running.iter().any(|c| c.label(LABEL_PROXY).is_some()) {
                match self
                    .environments
                    .remove_route(&deployment.repo, &deployment.environment, app)
                    .await
                {
                    Ok(drain) => {
                        say.note(format!("removed the route of {app}"));
                        drain.wait(self.config.proxy.drain_timeout).await;
                    }
                    Err(error) => say.note(format!("✘ removing the route of {app}: {error:#}")),
                }
            }
            self.retire(&host, &running, stop_timeout, say).await?;
            Ok::<_, ContainerError>(StepOutcome::Succeeded)
        };
        match run.await {
            Ok(result) => result,
            Err(error) => error.into(),
        }
    }
}

/// One app replaced on one server: the new version's containers started beside the old,
/// health-checked, routed, and the old version retired; or, if the new one fails, removed
/// with the old one kept (or started again).
struct Rollout<'a> {
    runner: &'a Runner,
    deployment: &'a Deployment,
    plan: &'a ContainerPlan,
    server: &'a str,
    host: Arc<dyn ContainerHost>,
    say: &'a Say,
    /// The running containers of earlier versions.
    old: Vec<ContainerInfo>,
    /// Whether the old version was stopped to free a fixed host port.
    stopped_old: bool,
    /// The new version's containers: id and name.
    new: Vec<(String, String)>,
}

impl<'a> Rollout<'a> {
    /// Finds the running version; a container left by an interrupted run of this same
    /// deployment is removed.
    async fn begin(
        runner: &'a Runner,
        deployment: &'a Deployment,
        plan: &'a ContainerPlan,
        server: &'a str,
        host: Arc<dyn ContainerHost>,
        say: &'a Say,
    ) -> Result<Rollout<'a>, ContainerError> {
        let existing = host.list(&app_labels(deployment, &plan.app)).await?;
        let old = existing
            .iter()
            .filter(|c| c.running && c.deployment() != Some(deployment.id))
            .cloned()
            .collect();
        for stale in existing
            .iter()
            .filter(|c| c.deployment() == Some(deployment.id))
        {
            host.remove(&stale.id).await?;
        }
        Ok(Rollout {
            runner,
            deployment,
            plan,
            server,
            host,
            say,
            old,
            stopped_old: false,
            new: Vec::new(),
        })
    }

    /// The new version's container, built once; each replica differs only in its name and
    /// its replica label ([`Rollout::replica`]).
    fn spec(&self, image: &str) -> ContainerSpec {
        let (deployment, plan) = (self.deployment, self.plan);
        let mut labels: BTreeMap<String, String> = plan.labels.clone();
        labels.extend([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_REPO.into(), deployment.repo.clone()),
            (LABEL_ENVIRONMENT.into(), deployment.environment.clone()),
            (LABEL_APP.into(), plan.app.clone()),
            (LABEL_DEPLOYMENT.into(), deployment.id.to_string()),
            (LABEL_SHA.into(), deployment.sha.to_string()),
            (
                LABEL_HEALTH.into(),
                serde_json::to_string(&plan.health).expect("health checks serialize"),
            ),
        ]);
        if let Some(proxy) = &plan.proxy {
            labels.insert(
                LABEL_PROXY.into(),
                serde_json::to_string(proxy).expect("routes serialize"),
            );
        }
        let mut env: Vec<(String, String)> = crate::deploy::context(deployment)
            .environment_variables()
            .into_iter()
            .filter(|(k, _)| k != "DROPSHIP_PAYLOAD")
            .collect();
        env.extend(plan.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        ContainerSpec {
            name: format!(
                "{}-{}-{}",
                plan.app,
                name_part(&deployment.environment),
                deployment.id
            ),
            image: image.to_string(),
            command: plan.command.clone(),
            env,
            secrets: self
                .runner
                .config
                .repo_secrets(&deployment.repo, &plan.secrets),
            ports: self.runner.published_ports(plan, self.server),
            volumes: plan.volumes.clone(),
            labels,
            restart: Some(plan.restart.clone()),
            memory_bytes: plan.memory_bytes,
            nano_cpus: plan.nano_cpus,
            network: plan.network.clone(),
            init: plan.init,
        }
    }

    /// Replica `replica` of the new version's `spec`.
    fn replica(spec: &ContainerSpec, replica: u32) -> ContainerSpec {
        let mut spec = spec.clone();
        spec.name = format!("{}-{replica}", spec.name);
        spec.labels
            .insert(LABEL_REPLICA.into(), replica.to_string());
        spec
    }

    /// Creates and starts every replica of the new version. A host port the running version
    /// holds stops that version first; any other failure removes what was created.
    async fn start(&mut self, image: &str) -> Result<(), ContainerError> {
        let base = self.spec(image);
        for replica in 0..self.plan.replicas {
            let spec = Self::replica(&base, replica);
            let id = self.host.create(&spec).await?;
            self.new.push((id.clone(), spec.name.clone()));
            match self.host.start(&id).await {
                Ok(()) => {}
                Err(error) if port_in_use(&error) && !self.old.is_empty() && !self.stopped_old => {
                    self.say.note("a published host port is held by the running version: stopping it first (publish no fixed host port to run both side by side)");
                    self.runner
                        .retire(&self.host, &self.old, self.plan.stop_timeout, self.say)
                        .await?;
                    self.stopped_old = true;
                    self.host.start(&id).await?;
                }
                Err(error) => {
                    for (id, _) in &self.new {
                        let _ = self.host.remove(id).await;
                    }
                    return Err(error);
                }
            }
            self.say.note(format!(
                "started {} ({})",
                spec.name,
                &id[..12.min(id.len())]
            ));
        }
        Ok(())
    }

    /// Waits for every new container's health check; the first diagnosis, if any failed.
    async fn unhealthy(&self) -> Option<String> {
        let checks = self.new.iter().map(|(id, name)| {
            self.runner.wait_healthy(
                &self.host,
                self.server,
                id,
                name,
                &self.plan.health,
                self.say,
            )
        });
        futures::future::join_all(checks)
            .await
            .into_iter()
            .find_map(Result::err)
    }

    /// Removes the new version's containers.
    async fn remove_new(&self) -> Result<(), ContainerError> {
        for (id, _) in &self.new {
            self.host.remove(id).await?;
        }
        Ok(())
    }

    /// The new version failed: it goes, and the old one keeps running (or starts again).
    async fn undo(&self) -> Result<(), ContainerError> {
        self.remove_new().await?;
        if self.stopped_old {
            for container in &self.old {
                self.host.start(&container.id).await?;
            }
            self.say.note("the previous version was started again");
        } else if !self.old.is_empty() {
            self.say.note("the previous version keeps running");
        }
        Ok(())
    }

    /// Points the app's route at the new version (the old upstreams drain), or takes away the
    /// route of an app that is no longer routed. `Err` is how the step ends instead.
    async fn route(&self) -> Result<Drain, StepOutcome> {
        let (runner, deployment, plan) = (self.runner, self.deployment, self.plan);
        if let Some(proxy) = &plan.proxy {
            let ids: Vec<String> = self.new.iter().map(|(id, _)| id.clone()).collect();
            return runner
                .switch_route(
                    deployment,
                    &plan.app,
                    proxy,
                    self.server,
                    &self.host,
                    &ids,
                    self.say,
                )
                .await;
        }
        // The app was routed and no longer is: its route goes before its containers.
        if runner.routes.is_none() || !self.old.iter().any(|c| c.label(LABEL_PROXY).is_some()) {
            return Ok(Drain::default());
        }
        match runner
            .environments
            .remove_route(&deployment.repo, &deployment.environment, &plan.app)
            .await
        {
            Ok(drain) => {
                self.say.note(format!(
                    "removed the route of {} (no proxy: any more)",
                    plan.app
                ));
                Ok(drain)
            }
            Err(error) => {
                self.say
                    .note(format!("✘ removing the route of {}: {error:#}", plan.app));
                Ok(Drain::default())
            }
        }
    }

    /// Retires the old version once `drain` ends, in the background.
    async fn retire_old(self, drain: Drain) {
        let old = if self.stopped_old {
            Vec::new()
        } else {
            self.old
        };
        self.runner
            .retire_in_background(
                &self.host,
                self.deployment,
                &self.plan.app,
                old,
                drain,
                self.plan.stop_timeout,
                self.plan.keep,
                self.say,
            )
            .await;
    }
}

/// One health probe of container `id`: passed, or why not. A `running` probe passes once the
/// container ran through one interval (or its start period) since `started`.
async fn probe(
    host: &dyn ContainerHost,
    id: &str,
    check: &HealthCheck,
    started: Instant,
) -> Result<(), String> {
    match &check.probe {
        Probe::Running => {
            if started.elapsed() >= check.interval.max(check.start_period) {
                Ok(())
            } else {
                Err("starting".to_string())
            }
        }
        Probe::Http { path, port } => match host.http_get(id, *port, path, check.timeout).await {
            Ok(answer) if (200..400).contains(&answer.status) => Ok(()),
            Ok(answer) => Err(format!(
                "HTTP {}{}",
                answer.status,
                if answer.body.is_empty() {
                    String::new()
                } else {
                    format!(": {}", answer.body.lines().next().unwrap_or_default())
                }
            )),
            Err(ContainerError::Engine { detail, .. }) => Err(detail),
            Err(other) => Err(other.to_string()),
        },
        Probe::Command { command } => match host.exec(id, command, check.timeout).await {
            Ok(answer) if answer.exit_code == 0 => Ok(()),
            Ok(answer) => Err(format!(
                "exit code {}{}",
                answer.exit_code,
                if answer.output.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", answer.output.trim())
                }
            )),
            Err(e) => Err(e.to_string()),
        },
    }
}

/// The health check a kept container was started with (its label), or: running for 3 checks
/// a second apart.
fn kept_health_check(container: &ContainerInfo) -> HealthCheck {
    container
        .label(LABEL_HEALTH)
        .and_then(|h| serde_json::from_str(h).ok())
        .unwrap_or(HealthCheck {
            probe: Probe::Running,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            retries: 3,
            start_period: Duration::ZERO,
        })
}
