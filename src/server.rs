//! Wires the store, GitHub client, executors, the deployment services, the scheduler, the outbox
//! and the HTTP router into the running service: the one place each service is built.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ProxyBackend};
use crate::containers::Hosts;
use crate::containers::follow::Followers;
use crate::deploy::{
    Actions, AutoDeployer, Environments, Intake, IntakeParts, LogLinks, Reconciler,
    ReconcilerParts, Reporter, Runner, RunnerParts, Scheduler, Servers, Stops,
};
use crate::exec::Fleet;
use crate::github::{Backoff, Github, ManifestSource, Outbox, run_outbox};
use crate::http::{AppState, router};
use crate::logs::{Bus, Logs};
use crate::proxy::Proxy;
use crate::store::{Sqlite, Store};

/// What every service and the proxy are built on, opened once: the store, Dropship's key, the
/// secret masking, the live bus and the metrics.
#[derive(Debug)]
pub struct Foundation {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    keys: Arc<crate::keys::Keys>,
    redactors: crate::logs::Redactors,
    bus: Bus,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Foundation {
    /// Opens the configured SQLite store and key file; Dropship's own log masks every secret
    /// in the config from here on.
    pub async fn open(config: Arc<Config>) -> anyhow::Result<Foundation> {
        let redactors = crate::logs::Redactors::new(config.clone());
        crate::logs::mask_tracing(redactors.all().clone());
        let keys = Arc::new(crate::keys::Keys::load_or_create(&config.key_path())?);
        let store: Arc<dyn Store> = Arc::new(Sqlite::open(&config.database_path()).await?);
        Ok(Foundation {
            config,
            store,
            keys,
            redactors,
            bus: Bus::default(),
            metrics: Arc::new(crate::metrics::Metrics::default()),
        })
    }

    /// The pieces every service shares, built once: the log writer, the servers, the
    /// reporter, the environments, the stop tokens and the page links.
    fn shared(&self, routes: Option<Arc<dyn crate::proxy::Routes>>) -> anyhow::Result<Shared> {
        let config = self.config.clone();
        let store = self.store.clone();
        let logs = Logs::start(store.clone(), self.bus.clone(), config.logs.clone());
        let fleet = Fleet::from_config(&config, self.metrics.clone())?;
        let hosts = Hosts::from_config(&config, &fleet)?;
        let followers = Followers::new(
            hosts.clone(),
            store.clone(),
            config.clone(),
            self.redactors.clone(),
        );
        let outbox = Arc::new(Notify::new());
        let reporter = Reporter::new(
            store.clone(),
            outbox.clone(),
            self.metrics.clone(),
            self.bus.clone(),
            self.redactors.clone(),
            config.public_url(),
            config.github.app.is_some(),
        );
        let environments = Environments::new(
            store.clone(),
            reporter.clone(),
            hosts.clone(),
            routes.clone(),
            config.proxy.drain_timeout,
        );
        Ok(Shared {
            logs,
            fleet,
            hosts,
            followers,
            outbox,
            reporter,
            environments,
            routes,
            stops: Stops::default(),
            links: LogLinks::new(self.keys.clone(), config.public_url()),
        })
    }

    /// A runner of deployments with manifests from `manifests`.
    fn runner(&self, shared: &Shared, manifests: Arc<dyn ManifestSource>) -> Runner {
        Runner::new(RunnerParts {
            config: self.config.clone(),
            store: self.store.clone(),
            manifests,
            fleet: shared.fleet.clone(),
            hosts: shared.hosts.clone(),
            followers: shared.followers.clone(),
            routes: shared.routes.clone(),
            logs: shared.logs.clone(),
            reporter: shared.reporter.clone(),
            environments: shared.environments.clone(),
            stops: shared.stops.clone(),
            keys: self.keys.clone(),
            redactors: self.redactors.clone(),
        })
    }

    /// Every service of `dropship serve`, each built once, whole: manifests from `manifests`,
    /// GitHub deployments created through `github`, routes changed through `routes` (none
    /// without a proxy).
    pub fn services(
        &self,
        manifests: Arc<dyn ManifestSource>,
        github: Arc<dyn crate::github::GithubApi>,
        routes: Option<Arc<dyn crate::proxy::Routes>>,
    ) -> anyhow::Result<Services> {
        let config = &self.config;
        let shared = self.shared(routes)?;
        let runner = self.runner(&shared, manifests.clone());
        let (scheduler, queue) = Scheduler::new(
            runner.clone(),
            self.store.clone(),
            config.server.max_running_deployments,
            config.server.queued_in_memory,
            config.server.shutdown_grace,
        );
        let auto = AutoDeployer::new(
            config.clone(),
            self.store.clone(),
            manifests,
            Some(github.clone()),
        );
        let intake = Intake::new(IntakeParts {
            config: config.clone(),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            reporter: shared.reporter.clone(),
            scheduler: queue,
            environments: shared.environments.clone(),
            auto,
            links: shared.links.clone(),
        });
        let actions = Actions::new(
            self.store.clone(),
            shared.reporter.clone(),
            shared.stops.clone(),
            Some(github.clone()),
            self.keys.clone(),
        );
        let reconciler = Reconciler::new(ReconcilerParts {
            config: config.clone(),
            store: self.store.clone(),
            github,
            intake: intake.clone(),
            logs: shared.logs.clone(),
            redactors: self.redactors.clone(),
        });
        let state = AppState {
            servers: Servers::new(config.clone(), shared.fleet.clone(), shared.hosts.clone()),
            links: shared.links.clone(),
            config: config.clone(),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            keys: self.keys.clone(),
            bus: self.bus.clone(),
            followers: shared.followers.clone(),
            intake,
            actions,
            environments: shared.environments,
            delivery: crate::github::DeliveryAlarm::new(self.metrics.clone()),
            throttle: Arc::new(crate::http::auth::SignInThrottle::new(&config.api)),
        };
        Ok(Services {
            runner,
            scheduler,
            reconciler,
            state,
            fleet: shared.fleet,
            followers: shared.followers,
            outbox: shared.outbox,
            outgoing: crate::github::Outgoing::new(self.keys.clone(), self.redactors.clone()),
        })
    }

    /// What `dropship run` uses: a runner with manifests from `manifests`, no GitHub client
    /// and no proxy.
    pub fn local(&self, manifests: Arc<dyn ManifestSource>) -> anyhow::Result<Local> {
        let shared = self.shared(None)?;
        Ok(Local {
            runner: self.runner(&shared, manifests),
            store: self.store.clone(),
            bus: self.bus.clone(),
            links: shared.links,
            fleet: shared.fleet,
        })
    }
}

/// What the services share, built once by [`Foundation::shared`].
struct Shared {
    logs: Logs,
    fleet: Fleet,
    hosts: Hosts,
    followers: Followers,
    outbox: Arc<Notify>,
    reporter: Reporter,
    environments: Environments,
    routes: Option<Arc<dyn crate::proxy::Routes>>,
    stops: Stops,
    links: LogLinks,
}

/// Every service of `dropship serve`, as [`run`] starts them.
#[derive(Debug)]
pub struct Services {
    pub runner: Runner,
    pub scheduler: Scheduler,
    /// Picks up deployments whose webhook never arrived.
    pub reconciler: Reconciler,
    /// What the HTTP handlers call.
    pub state: AppState,
    /// The SSH masters, opened at start when `[ssh] connect_at_start`.
    pub fleet: Fleet,
    /// Followers of the containers' logs, resumed at start.
    pub followers: Followers,
    /// Wakes the status outbox.
    pub outbox: Arc<Notify>,
    /// What the outbox posts: masked, with the log links' tokens.
    pub outgoing: crate::github::Outgoing,
}

/// What `dropship run` and the fan-out bench use: one runner on the configured store.
#[derive(Debug)]
pub struct Local {
    pub runner: Runner,
    pub store: Arc<dyn Store>,
    /// Its deployments' events, for printing progress.
    pub bus: Bus,
    pub links: LogLinks,
    /// The SSH masters, for opening them ahead of a deployment.
    pub fleet: Fleet,
}

/// [`Foundation::local`] on the configured SQLite store.
pub async fn local(
    config: Arc<Config>,
    manifests: Arc<dyn ManifestSource>,
) -> anyhow::Result<Local> {
    Foundation::open(config).await?.local(manifests)
}

/// Serves on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if config.github.webhook_secrets.is_empty() {
        anyhow::bail!(
            "github.webhook_secrets is empty: every delivery would be refused. Set it in the config file or DROPSHIP__GITHUB__WEBHOOK_SECRETS"
        );
    }
    let config = Arc::new(config);
    let github = Arc::new(Github::from_config(&config.github)?);
    if !github.has_checks() {
        tracing::info!(
            "GitHub check runs need GitHub App auth ([github.app]); with a token, deployments get statuses only"
        );
    }
    let foundation = Foundation::open(config.clone()).await?;
    let mut proxies = Vec::new();
    // The proxy's workers are threads of their own: they stop with the service, and also if
    // this function returns early or its future is dropped.
    let proxy_shutdown = shutdown.child_token();
    let _stop_proxies = proxy_shutdown.clone().drop_guard();
    let routes = serve_proxy(&foundation, &proxy_shutdown, &mut proxies).await?;
    let services = foundation.services(github.clone(), github.clone(), routes)?;
    let interrupted = services
        .runner
        .recover_interrupted()
        .await
        .context("finishing interrupted deployments")?;
    if interrupted > 0 {
        tracing::warn!(
            count = interrupted,
            "finished deployments interrupted by the last shutdown as error"
        );
    }
    // Deployments and status posts run on a runtime of their own at a lower OS priority, so a
    // burst of webhooks is answered first; with the machine idle they get every core anyway.
    let background = Background(Some(background_runtime()?));
    let work = background.handle();
    spawn_start_chores(&work, &services, config.ssh.connect_at_start);
    // The outbox stops after the scheduler, so the final statuses of deployments a shutdown
    // ended are posted too.
    let outbox_stop = CancellationToken::new();
    let outbox = work.spawn(run_outbox(
        Outbox {
            store: foundation.store.clone(),
            github,
            metrics: foundation.metrics.clone(),
            wake: services.outbox.clone(),
            outgoing: services.outgoing,
            backoff: Backoff {
                base: config.github.retry_base,
                max: config.github.retry_max,
            },
            alarm: services.state.delivery.clone(),
        },
        outbox_stop.clone().cancelled_owned(),
    ));
    let scheduler = work.spawn(services.scheduler.run(shutdown.clone().cancelled_owned()));
    work.spawn(services.reconciler.run(shutdown.clone().cancelled_owned()));
    let metrics = foundation.metrics.clone();
    let state = services.state;
    let address = listener.local_addr()?;
    tracing::info!(%address, public_url = %config.public_url(), "dropship is serving");
    crate::http::serve(
        listener,
        router(state),
        &config.server,
        metrics,
        shutdown.clone(),
    )
    .await
    .context("serving HTTP")?;
    shutdown.cancel();
    let _ = scheduler.await;
    outbox_stop.cancel();
    let _ = outbox.await;
    for proxy in proxies {
        let _ = proxy.await;
    }
    Ok(())
}

/// What a start does beside serving, on the background runtime: kills what an earlier
/// Dropship left running on the servers that answer (the rest before the next step on each),
/// opens the master connections if `connect_at_start`, and resumes the container log
/// followers.
fn spawn_start_chores(work: &tokio::runtime::Handle, services: &Services, connect_at_start: bool) {
    let runner = services.runner.clone();
    work.spawn(async move {
        match runner.kill_orphans(None).await {
            Ok(0) => {}
            Ok(killed) => tracing::warn!(killed, "killed processes interrupted deployments left running"),
            Err(error) => tracing::warn!(%error, "could not reach a server to kill what an interrupted deployment left; its next step does"),
        }
    });
    if connect_at_start {
        let fleet = services.fleet.clone();
        work.spawn(async move {
            let started = std::time::Instant::now();
            let failed = fleet.connect_all().await;
            for (server, error) in &failed {
                tracing::warn!(%server, %error, "could not open the master connection at start; its next step tries again");
            }
            tracing::info!(
                failed = failed.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "master connections opened at start"
            );
        });
    }
    let followers = services.followers.clone();
    work.spawn(async move {
        if let Err(error) = followers.resume().await {
            tracing::error!(
                error = format!("{error:#}"),
                "resuming container log followers"
            );
        }
    });
}

/// Starts the configured proxy: the built-in one's workers on every listen address (their
/// ends pushed to `proxies`), or a connection to Caddy. Answers where routes change, if
/// anywhere.
async fn serve_proxy(
    foundation: &Foundation,
    shutdown: &CancellationToken,
    proxies: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<Option<Arc<dyn crate::proxy::Routes>>> {
    let config = &foundation.config;
    if config.proxy.listen.is_none() && config.proxy.listen_tls.is_none() {
        return Ok(None);
    }
    if config.proxy.backend == ProxyBackend::Caddy {
        let caddy = crate::proxy::Caddy::connect(foundation.store.clone(), config.proxy.clone())
            .await
            .context("the Caddy backend")?;
        tracing::info!(admin = %config.proxy.caddy_admin, "routes go to Caddy");
        return Ok(Some(Arc::new(caddy)));
    }
    let proxy = Proxy::load(
        foundation.store.clone(),
        config.proxy.clone(),
        foundation.metrics.clone(),
    )
    .await
    .context("loading the proxy's routes")?;
    let tls = match config.proxy.listen_tls {
        Some(_) => Some(crate::proxy::tls_acceptor(&config.proxy.certificates)?),
        None => None,
    };
    let workers = match config.proxy.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    for (address, tls) in [(config.proxy.listen, None), (config.proxy.listen_tls, tls)] {
        let Some(address) = address else { continue };
        let secure = tls.is_some();
        let (address, ended) =
            crate::proxy::serve_on_workers(address, proxy.clone(), tls, shutdown.clone(), workers)?;
        tracing::info!(%address, tls = secure, workers, routes = proxy.routes().len(), "proxy is serving");
        proxies.push(tokio::spawn(ended));
    }
    Ok(Some(Arc::new(proxy)))
}

/// Owns the background runtime; dropping it (also on an early return, or when a test's
/// runtime drops this future) stops it without blocking, which a plain drop inside an async
/// context would not allow.
struct Background(Option<tokio::runtime::Runtime>);

impl Background {
    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the runtime lives until drop")
            .handle()
            .clone()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Niceness of the background runtime's threads: about a tenth of the CPU against intake when
/// both are busy (Linux CFS weights), all of it when intake is idle.
const BACKGROUND_PRIORITY: u8 = 23; // thread-priority's 0–99 scale: 23 is nice 9

/// The runtime that runs deployments and the status outbox.
fn background_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name("dropship-work")
        .on_thread_start(|| {
            let priority = thread_priority::ThreadPriorityValue::try_from(BACKGROUND_PRIORITY)
                .map(thread_priority::ThreadPriority::Crossplatform);
            if let Ok(priority) = priority {
                if let Err(error) = thread_priority::set_current_thread_priority(priority) {
                    tracing::debug!(error = ?error, "could not lower the background threads' priority");
                }
            }
        })
        .enable_all()
        .build()
        .context("starting the background runtime")
}
