//! The deployment engine, as services with one job each: the [`Runner`] takes a recorded
//! deployment, plans it from its manifest, runs the plan on the servers and records every
//! outcome through the [`Reporter`], which tells GitHub; the [`Scheduler`] orders runs;
//! [`Intake`], [`Actions`], [`Environments`], [`AutoDeployer`] and [`Servers`] serve the
//! webhook, people and pages. Each is built once, whole, in `server.rs`.
//!
//! Architecture invariant: these services see the [`Store`], [`ManifestSource`], [`Executor`],
//! `ContainerHost` and `Routes` traits, never SQL, octocrab, openssh, bollard or hyper types. A failed step is an outcome (`failure`);
//! `Err` from [`Runner::run`] means Dropship itself could not work (the store is down).

mod actions;
mod auto;
mod checks;
mod compose;
mod container;
mod environments;
mod intake;
mod reconciler;
mod reporter;
mod scheduler;
mod stops;
mod survey;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

pub use actions::{ActionError, Actions, Cancelled, Locking};
pub use auto::{AutoDeployed, AutoDeployer, NotConsidered};
pub use environments::Environments;
pub use intake::{Accepted, Intake, IntakeParts};
pub use reconciler::{Reconciled, Reconciler, ReconcilerParts};
pub use reporter::Reporter;
pub use scheduler::{Queue, Scheduler};
pub use stops::{StopReason, Stops};
pub use survey::{RunningApp, ServerReport, Servers, survey};

use crate::config::Config;
use crate::containers::Hosts;
use crate::containers::follow::Followers;
use crate::exec::{ExecError, Exit, Fleet, Job};
use crate::github::{ManifestSource, status_description};
use crate::logs::{DeploymentLog, Logs, Redactor};
use crate::manifest::{Action, Context, Inventory, Manifest, Plan, PlannedStep, Strategy};

use crate::store::{
    Deployment, LogStream, State, StatusDraft, StatusState, StepState, Store, now_ms,
};
pub use container::Retiring;
use container::{Say, StepShared};
use stops::Running;

/// Runs deployments: plans each from its manifest, runs the plan on the servers (shell steps,
/// container rollouts, compose stacks, in rolling batches) and records every outcome through
/// the [`Reporter`]. Built once, whole, from [`RunnerParts`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct Runner {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    manifests: Arc<dyn ManifestSource>,
    fleet: Fleet,
    hosts: Hosts,
    /// Follows the containers' own logs after their deployments.
    followers: Followers,
    /// Old container versions being stopped in the background.
    retiring: Retiring,
    /// Where container steps with `proxy:` point their routes (none without `[proxy]`).
    routes: Option<Arc<dyn crate::proxy::Routes>>,
    logs: Logs,
    /// Records state changes and reports them to GitHub, the metrics and the bus.
    reporter: Reporter,
    /// Retires earlier deployments of an environment when a new one succeeds.
    environments: Environments,
    /// The stop tokens of running deployments (cancel, timeout, shutdown).
    stops: Stops,
    /// Dropship's secret key: proves who asked for a redeploy under a lock.
    keys: Arc<crate::keys::Keys>,
    /// This Dropship's name in its jobs' marks (`Keys::instance`).
    instance: Arc<str>,
    /// Each repository's secret masking, built once at start.
    redactors: crate::logs::Redactors,
}

/// What a [`Runner`] is built from: the backends it drives and the services it reports to.
#[derive(Debug)]
pub struct RunnerParts {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub manifests: Arc<dyn ManifestSource>,
    pub fleet: Fleet,
    pub hosts: Hosts,
    pub followers: Followers,
    pub routes: Option<Arc<dyn crate::proxy::Routes>>,
    pub logs: Logs,
    pub reporter: Reporter,
    pub environments: Environments,
    pub stops: Stops,
    pub keys: Arc<crate::keys::Keys>,
    pub redactors: crate::logs::Redactors,
}

impl Runner {
    pub fn new(parts: RunnerParts) -> Runner {
        let RunnerParts {
            config,
            store,
            manifests,
            fleet,
            hosts,
            followers,
            routes,
            logs,
            reporter,
            environments,
            stops,
            keys,
            redactors,
        } = parts;
        Runner {
            config,
            store,
            manifests,
            fleet,
            hosts,
            followers,
            retiring: Retiring::default(),
            routes,
            logs,
            reporter,
            environments,
            stops,
            instance: keys.instance().into(),
            keys,
            redactors,
        }
    }
}

/// Links to deployment pages, each with its capability token (derived from Dropship's key,
/// never stored). Cheap to clone.
#[derive(Debug, Clone)]
pub struct LogLinks {
    keys: Arc<crate::keys::Keys>,
    public_url: Arc<str>,
}

impl LogLinks {
    pub fn new(keys: Arc<crate::keys::Keys>, public_url: &str) -> LogLinks {
        LogLinks {
            keys,
            public_url: public_url.into(),
        }
    }

    /// The URL of `deployment`'s page, with its capability token.
    pub fn url(&self, deployment: &Deployment) -> String {
        let token = self.keys.log_token(deployment.id);
        log_url(&self.public_url, deployment.id, &token)
    }
}

/// Whether the holder of `lock` asked for this deployment: GitHub's creator of that name, or
/// a redeploy or rollback Dropship made for that user under this very lock, proven by
/// Dropship's own MAC (a name written into a payload proves nothing).
fn lock_holder(
    keys: &crate::keys::Keys,
    deployment: &Deployment,
    lock: &crate::store::Lock,
) -> bool {
    deployment.creator.as_deref() == Some(lock.locked_by.as_str())
        || actions::proves_requested_by(keys, deployment, lock)
}

/// What `${{ }}` expressions and the `DROPSHIP_*` variables see of a deployment.
pub fn context(deployment: &Deployment) -> Context {
    let (owner, name) = deployment.repo_parts();
    Context {
        deployment_id: deployment.public_id(),
        sha: deployment.sha.to_string(),
        git_ref: deployment.git_ref.clone(),
        environment: deployment.environment.clone(),
        task: deployment.task.clone(),
        payload: deployment.payload.clone(),
        repo_owner: owner.to_string(),
        repo_name: name.to_string(),
        transient: deployment.transient,
    }
}

/// The URL of deployment `id`'s page under `public_url`, with `token`: its capability token
/// (`Keys::log_token`), or in what is stored for GitHub `keys::LOG_TOKEN_SLOT`, which the
/// outbox fills in when it posts.
pub fn log_url(public_url: &str, id: i64, token: &str) -> String {
    format!("{public_url}/deployments/{id}?token={token}")
}

/// [`log_url`] as stored for GitHub: the outbox fills the token in when it posts.
fn stored_log_url(public_url: &str, id: i64) -> String {
    log_url(public_url, id, crate::keys::LOG_TOKEN_SLOT)
}

/// The `queued` status of a new deployment.
pub fn queued_status(public_url: &str, deployment: &Deployment) -> StatusDraft {
    StatusDraft {
        state: StatusState::Queued,
        description: status_description(&format!(
            "queued: {} to {}",
            deployment.task, deployment.environment
        )),
        log_url: Some(stored_log_url(public_url, deployment.id)),
        environment_url: None,
    }
}

/// How a deployment ended, with the description GitHub shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub state: State,
    pub description: String,
}

impl Outcome {
    fn error(description: impl Into<String>) -> Outcome {
        Outcome {
            state: State::Error,
            description: description.into(),
        }
    }
}

/// What one step did across its servers.
#[derive(Debug, Default)]
struct StepTally {
    /// The servers it failed on, with why.
    failed: Vec<(String, String)>,
    /// The first server that could not be reached.
    unreachable: Option<ExecError>,
}

/// How one step ended on one server. Every variant is an outcome to record, none an error of
/// the engine.
#[derive(Debug)]
pub(super) enum StepOutcome {
    Succeeded,
    /// The command ended unsuccessfully: its exit code, or none when a signal killed it.
    Exited(Option<i32>),
    TimedOut,
    /// A failure that is not a command's exit (an unhealthy container, a missing compose
    /// file), with its reason.
    Failed(String),
    /// The server, or its container engine, could not be reached: the deployment ends `error`.
    Unreachable(ExecError),
    /// The deployment was stopped (cancel, its timeout, shutdown) and the step's processes
    /// were killed.
    Stopped,
}

impl StepOutcome {
    /// Why the step did not succeed, for the log, the step run and the status.
    fn reason(&self) -> String {
        match self {
            StepOutcome::Succeeded => "succeeded".into(),
            StepOutcome::Exited(Some(code)) => format!("exit {code}"),
            StepOutcome::Exited(None) => "killed by a signal".into(),
            StepOutcome::TimedOut => "timed out".into(),
            StepOutcome::Failed(why) => why.clone(),
            StepOutcome::Unreachable(error) => error.to_string(),
            StepOutcome::Stopped => "stopped: its processes were killed".into(),
        }
    }

    /// The step run's state, exit code and message.
    fn recorded(&self) -> (StepState, Option<i64>, Option<String>) {
        match self {
            StepOutcome::Succeeded => (StepState::Success, Some(0), None),
            StepOutcome::Exited(code) => {
                (StepState::Failure, code.map(i64::from), Some(self.reason()))
            }
            StepOutcome::TimedOut => (StepState::TimedOut, None, Some(self.reason())),
            StepOutcome::Failed(_) => (StepState::Failure, None, Some(self.reason())),
            StepOutcome::Unreachable(_) | StepOutcome::Stopped => {
                (StepState::Error, None, Some(self.reason()))
            }
        }
    }

    /// The line the step's log ends with on this server.
    fn summary(&self, step: &str, server: &str, elapsed: &str) -> String {
        match self {
            StepOutcome::Succeeded => format!("✔ {step} on {server} ({elapsed})"),
            StepOutcome::Unreachable(error) => format!("✘ {error}"),
            _ => format!("✘ {step} on {server}: {} ({elapsed})", self.reason()),
        }
    }
}

impl From<Exit> for StepOutcome {
    fn from(exit: Exit) -> StepOutcome {
        match exit {
            Exit::Code(0) => StepOutcome::Succeeded,
            Exit::Code(code) => StepOutcome::Exited(Some(code)),
            Exit::Signal => StepOutcome::Exited(None),
            Exit::TimedOut => StepOutcome::TimedOut,
            Exit::Stopped => StepOutcome::Stopped,
        }
    }
}

impl From<ExecError> for StepOutcome {
    fn from(error: ExecError) -> StepOutcome {
        StepOutcome::Unreachable(error)
    }
}

/// A container engine that answered with an error fails the step; one that cannot be reached
/// leaves the server unreachable.
impl From<crate::containers::ContainerError> for StepOutcome {
    fn from(error: crate::containers::ContainerError) -> StepOutcome {
        use crate::containers::ContainerError;
        match error {
            ContainerError::Unreachable { server, detail } => {
                StepOutcome::Unreachable(ExecError::Io {
                    server,
                    detail: format!("cannot reach the container engine: {detail}"),
                })
            }
            ContainerError::Engine { server, detail } => {
                StepOutcome::Failed(format!("{server}: {detail}"))
            }
        }
    }
}

impl Runner {
    /// Masks the values of every secret the deployment's repository may use.
    pub fn redactor(&self, deployment: &Deployment) -> Redactor {
        self.redactors.for_repo(&deployment.repo).clone()
    }

    /// Follows the logs of the containers on `server` from now on (and after restarts).
    pub fn watch_logs(&self, server: &str) {
        self.followers.watch(server);
    }

    /// Finishes deployments left `running` by a previous process as `error`.
    pub async fn recover_interrupted(&self) -> anyhow::Result<usize> {
        let interrupted = self.store.running().await?;
        for deployment in &interrupted {
            self.end_unfinished(
                deployment,
                Some("interrupted: dropship restarted while this deployment was running"),
                "interrupted: dropship restarted",
            )
            .await?;
            tracing::warn!(
                deployment.id = deployment.id,
                "deployment interrupted by a restart, finished as error"
            );
        }
        Ok(interrupted.len())
    }

    /// Ends `deployment` `error` with `why`, and its steps still running or pending: after a
    /// restart, or when its run broke off. `note`, if any, goes into its log.
    async fn end_unfinished(
        &self,
        deployment: &Deployment,
        note: Option<&str>,
        why: &str,
    ) -> anyhow::Result<()> {
        if let Some(note) = note {
            let log = self
                .logs
                .open(deployment.id, self.redactor(deployment))
                .await?;
            log.note(note);
            log.flush().await;
        }
        let steps = self.store.steps(deployment.id).await?;
        let instance = &self.instance;
        // Their jobs may still run on the servers, with nobody waiting for them: they are
        // killed at the next contact with each server (`kill_orphans`).
        let orphans: Vec<(String, String)> = steps
            .iter()
            .filter(|step| step.state == StepState::Running)
            .map(|step| {
                let group = crate::exec::job_group(
                    instance,
                    deployment.id,
                    step.step_index as usize,
                    &step.server,
                );
                (step.server.clone(), group)
            })
            .collect();
        self.store.add_orphan_jobs(&orphans).await?;
        for mut step in steps {
            if matches!(step.state, StepState::Running | StepState::Pending) {
                step.state = StepState::Error;
                step.message = Some(why.into());
                step.finished_at = Some(now_ms());
                self.store.save_step(&step).await?;
            }
        }
        self.reporter
            .transition(deployment, State::Error, why, None)
            .await?;
        Ok(())
    }

    /// Stops every running deployment for `reason`: their running steps' processes are killed.
    pub fn stop_all(&self, reason: StopReason) {
        self.stops.stop_all(reason);
    }

    /// Stops, for `reason`, the running deployments that have not begun a step: on shutdown
    /// they go back to the queue.
    pub fn stop_unbegun(&self, reason: StopReason) {
        self.stops.stop_unbegun(reason);
    }

    /// Ends `older`, still queued, `error`: `newest` of its environment runs instead.
    pub async fn supersede(&self, older: &Deployment, newest: &Deployment) {
        let description = format!("superseded by deployment {}", newest.public_id());
        if let Ok(log) = self.logs.open(older.id, self.redactor(older)).await {
            log.note(&description);
            log.flush().await;
        }
        if let Err(error) = self
            .reporter
            .transition(older, State::Error, &description, None)
            .await
        {
            tracing::error!(
                error = format!("{error:#}"),
                deployment.id = older.id,
                "superseding a deployment"
            );
        }
    }

    /// [`Runner::run`], and whatever breaks it off, the deployment ends, so that its
    /// environment is free for the next: if Dropship itself failed (the store) or the run
    /// panicked, it ends `error` saying so, with its unfinished steps. True when it did not
    /// start and still waits queued (its environment's lease was held).
    pub async fn run_to_end(&self, deployment: Deployment) -> bool {
        use futures::FutureExt;
        let ended = std::panic::AssertUnwindSafe(self.run(deployment.clone()))
            .catch_unwind()
            .await;
        let why = match ended {
            Ok(Ok(outcome)) => return outcome.state == State::Queued,
            Ok(Err(error)) => {
                tracing::error!(
                    deployment.id = deployment.id,
                    error = format!("{error:#}"),
                    "deployment could not be run"
                );
                "dropship could not go on with it (see the dropship log)".to_string()
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                tracing::error!(
                    deployment.id = deployment.id,
                    panic = %what,
                    "a deployment's run panicked"
                );
                "dropship failed while running it: a bug (see the dropship log)".to_string()
            }
        };
        let note = format!("ended: {why}");
        // The store may be what failed: tried again a few times, since a deployment left
        // `running` holds its environment until the next start ends it.
        let mut pause = END_RETRY;
        for attempt in 1..=END_ATTEMPTS {
            // Noted in its log once, however often it is tried.
            let note = (attempt == 1).then_some(note.as_str());
            match self.end_unfinished(&deployment, note, &why).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::error!(
                        deployment.id = deployment.id,
                        attempt,
                        error = format!("{error:#}"),
                        "ending a deployment whose run broke off"
                    );
                    if attempt < END_ATTEMPTS {
                        tokio::time::sleep(pause).await;
                        pause *= 2;
                    }
                }
            }
        }
        false
    }

    /// Runs one deployment to its end. Every expected failure ends in the returned outcome.
    pub async fn run(&self, deployment: Deployment) -> anyhow::Result<Outcome> {
        let span = tracing::info_span!(
            "deployment",
            deployment.id = deployment.id,
            repo = %deployment.repo,
            environment = %deployment.environment,
            task = %deployment.task,
        );
        self.run_inner(deployment).instrument(span).await
    }

    async fn run_inner(&self, deployment: Deployment) -> anyhow::Result<Outcome> {
        let log = self
            .logs
            .open(deployment.id, self.redactor(&deployment))
            .await?;
        // Registered before it is `running`, so a cancel that sees it running can stop it.
        let running = self.stops.register(deployment.id);
        if running.reason() == Some(StopReason::Shutdown) {
            // Its task started as the shutdown began: it stays queued for the next start.
            return Ok(Outcome {
                state: State::Queued,
                description: "not started: dropship is shutting down".into(),
            });
        }
        let started = self
            .reporter
            .transition(
                &deployment,
                State::Running,
                &format!(
                    "running {} on {} at {}",
                    deployment.task,
                    deployment.environment,
                    deployment.sha.short()
                ),
                None,
            )
            .await?;
        if !started {
            return self.not_started(&deployment, &log).await;
        }
        log.note(format!(
            "deployment {} of {}@{} ({}) to {}, task {}",
            deployment.public_id(),
            deployment.repo,
            deployment.git_ref,
            deployment.sha.short(),
            deployment.environment,
            deployment.task
        ));
        let planned = tokio::select! {
            // A stop that came as the plan did wins: nothing starts after it.
            biased;
            () = running.token().cancelled() => Err(stopped_before_steps(
                running.reason().unwrap_or(StopReason::Shutdown),
                "while reading its manifest",
            )),
            plan = self.plan(&deployment, &log) => plan,
        };
        let (outcome, environment_url) = match planned {
            Ok(plan) if plan.teardown => (self.tear_down(&deployment, &log).await, None),
            Ok(plan) => {
                let limit = plan
                    .timeout
                    .unwrap_or(self.config.server.deployment_timeout);
                let _timer = running.stop_after(limit, StopReason::TimedOut(limit));
                let outcome = self.execute(&deployment, &running, &plan, &log).await?;
                if plan.preview && outcome.state == State::Success {
                    // A closed pull request finds it by its branch.
                    self.store
                        .set_preview(
                            &deployment.repo,
                            &deployment.environment,
                            Some(&deployment.git_ref),
                        )
                        .await?;
                }
                (outcome, plan.environment_url)
            }
            Err(outcome) => (outcome, None),
        };
        self.finish(&deployment, &log, &outcome, environment_url)
            .await?;
        Ok(outcome)
    }

    /// Why a deployment the store would not move to `running` was not run: its environment's
    /// lease is held (it waits queued, said once in its log), or it is no longer queued.
    async fn not_started(
        &self,
        deployment: &Deployment,
        log: &DeploymentLog,
    ) -> anyhow::Result<Outcome> {
        let current = self.store.deployment(deployment.id).await?;
        let state = current.map_or(State::Error, |d| d.state);
        if state == State::Queued {
            tracing::info!("its environment runs another deployment; it waits queued");
            if log.is_empty() {
                log.note(format!(
                    "waiting: another deployment of {} is running",
                    deployment.environment
                ));
                log.flush().await;
            }
            return Ok(Outcome {
                state,
                description: "waiting: another deployment of its environment runs".into(),
            });
        }
        // Another task started it, or it ended (superseded) meanwhile: never run twice.
        tracing::warn!("deployment is no longer queued; not running it again");
        Ok(Outcome {
            state,
            description: "not queued any more".into(),
        })
    }

    /// Tears down the deployment's preview environment: `inactive` (GitHub shows it
    /// destroyed), or `error` saying why not.
    async fn tear_down(&self, deployment: &Deployment, log: &DeploymentLog) -> Outcome {
        log.note(format!(
            "tearing down preview environment {}",
            deployment.environment
        ));
        match self
            .environments
            .teardown(&deployment.repo, &deployment.environment)
            .await
        {
            Ok((removed, inactive)) => {
                log.note(format!(
                    "removed {removed} container{}; {inactive} deployment{} now inactive",
                    plural(removed),
                    plural(inactive)
                ));
                Outcome {
                    state: State::Inactive,
                    description: format!(
                        "preview {} torn down ({removed} container{} removed)",
                        deployment.environment,
                        plural(removed)
                    ),
                }
            }
            Err(error) => Outcome::error(format!("tearing down: {error:#}")),
        }
    }

    /// Records the run's `outcome`: its log's last line, its state with its status, and, on
    /// success, the earlier deployments of its environment made inactive.
    async fn finish(
        &self,
        deployment: &Deployment,
        log: &DeploymentLog,
        outcome: &Outcome,
        environment_url: Option<String>,
    ) -> anyhow::Result<()> {
        let mark = match outcome.state {
            State::Success | State::Inactive => "✔",
            State::Queued => "↻",
            _ => "✘",
        };
        log.note(format!("{mark} {}: {}", outcome.state, outcome.description));
        log.flush().await;
        self.reporter
            .transition(
                deployment,
                outcome.state,
                &outcome.description,
                environment_url,
            )
            .await?;
        if outcome.state == State::Success {
            self.environments.deactivate_earlier(deployment).await?;
        }
        tracing::info!(state = %outcome.state, description = %outcome.description, "deployment finished");
        Ok(())
    }

    /// The plan, or the `error` outcome that says why there is none.
    async fn plan(&self, deployment: &Deployment, log: &DeploymentLog) -> Result<Plan, Outcome> {
        let repo = self
            .config
            .admit(&deployment.repo, &deployment.environment)
            .map_err(|refused| Outcome::error(refused.to_string()))?;
        let file = match self
            .manifests
            .manifest(
                &deployment.repo,
                &deployment.sha,
                deployment.installation_id,
            )
            .await
        {
            Ok(Some(file)) => file,
            Ok(None) => {
                return Err(Outcome::error(format!(
                    "no dropship.yml or .github/dropship.yml in {} at {}",
                    deployment.repo,
                    deployment.sha.short()
                )));
            }
            Err(error) => {
                return Err(Outcome::error(format!(
                    "cannot read the manifest: {}",
                    error.message
                )));
            }
        };
        log.note(format!("read {} at {}", file.path, deployment.sha));
        match actions::lock_of(&*self.store, &deployment.repo, &deployment.environment).await {
            Ok(Some(lock)) if !lock_holder(&self.keys, deployment, &lock) => {
                let until = lock
                    .expires_at
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|t| format!(" until {}", t.format("%Y-%m-%d %H:%M UTC")))
                    .unwrap_or_default();
                return Err(Outcome::error(format!(
                    "environment {} is locked by {} ({}){until}; unlock it on the dashboard or with DELETE /api/environments/{}/{}/lock",
                    deployment.environment,
                    lock.locked_by,
                    lock.reason,
                    deployment.repo,
                    deployment.environment
                )));
            }
            Ok(_) => {}
            Err(error) => {
                return Err(Outcome::error(format!(
                    "cannot read the environment's lock: {error:#}"
                )));
            }
        }
        let inventory = Inventory::from_config(&self.config, &deployment.repo, Some(repo));
        let context = context(deployment);
        let plan = Manifest::parse(&file.path, &file.text)
            .and_then(|manifest| manifest.plan(&context, &inventory));
        match plan {
            Ok(plan) => Ok(plan),
            Err(diagnostics) => {
                for diagnostic in &diagnostics.0 {
                    log.note(diagnostic.to_string());
                }
                Err(Outcome::error(diagnostics.first().to_string()))
            }
        }
    }

    /// Runs the plan's steps in order; a failing step stops the task unless it may fail.
    async fn execute(
        &self,
        deployment: &Deployment,
        running: &Running,
        plan: &Plan,
        log: &DeploymentLog,
    ) -> anyhow::Result<Outcome> {
        let mut stopped: Option<Outcome> = None;
        let mut soft_failures = Vec::new();
        for (index, step) in plan.steps.iter().enumerate() {
            if index == 0 {
                if let Err(reason) = running.begin_steps() {
                    let outcome =
                        stopped_before_steps(reason, &format!("before step {}", step.name));
                    if outcome.state == State::Queued {
                        return Ok(outcome);
                    }
                }
            }
            if stopped.is_none() {
                if let Some(reason) = running.reason() {
                    let description = format!("{reason} before step {}", step.name);
                    log.note(&description);
                    stopped = Some(Outcome::error(description));
                }
            }
            if stopped.is_some() {
                self.skip(
                    deployment,
                    index,
                    step,
                    &step.servers,
                    "skipped: an earlier step failed or the deployment was cancelled",
                )
                .await?;
                continue;
            }
            for server in &step.servers {
                self.reporter
                    .step(deployment, index, &step.name, server)
                    .pending()
                    .await?;
            }
            let StepTally {
                failed,
                unreachable,
            } = self
                .run_batches(deployment, running, index, step, &plan.strategy, log)
                .await?;
            if let Some(reason) = running.reason() {
                let description = format!("{reason} during step {}", step.name);
                log.note(&description);
                stopped = Some(Outcome::error(description));
            } else if let Some(error) = unreachable {
                stopped = Some(Outcome::error(format!("step {}: {error}", step.name)));
            } else if let Some((server, why)) = failed.first() {
                let more = if failed.len() > 1 {
                    format!(" and {} more", failed.len() - 1)
                } else {
                    String::new()
                };
                let description = format!("step {} failed on {server}{more} ({why})", step.name);
                if step.continue_on_error {
                    log.note(format!("{description}; continuing (continue_on_error)"));
                    soft_failures.push(description);
                } else {
                    stopped = Some(Outcome {
                        state: State::Failure,
                        description,
                    });
                }
            }
        }
        Ok(stopped.unwrap_or_else(|| {
            let servers = plan.servers.len();
            let mut description = format!(
                "{} to {}: {} step{} on {servers} server{}",
                plan.task,
                plan.environment,
                plan.steps.len(),
                plural(plan.steps.len()),
                plural(servers)
            );
            if !soft_failures.is_empty() {
                description.push_str(&format!(
                    " ({} allowed failure{})",
                    soft_failures.len(),
                    plural(soft_failures.len())
                ));
            }
            Outcome {
                state: State::Success,
                description,
            }
        }))
    }

    /// Runs one step on its servers: all at once, or in rolling batches with their pause. A
    /// batch that fails (or reaches an unreachable server) stops the later ones, which are
    /// recorded skipped.
    async fn run_batches(
        &self,
        deployment: &Deployment,
        running: &Running,
        index: usize,
        step: &PlannedStep,
        strategy: &Strategy,
        log: &DeploymentLog,
    ) -> anyhow::Result<StepTally> {
        let batches: Vec<&[String]> = match strategy {
            Strategy::Parallel => vec![&step.servers[..]],
            Strategy::Rolling { batch, .. } => step
                .servers
                .chunks(batch.size(step.servers.len()))
                .collect(),
        };
        let mut tally = StepTally::default();
        let shared = StepShared::default();
        for (batch_index, servers) in batches.iter().enumerate() {
            if batch_index > 0 {
                if let Strategy::Rolling {
                    pause: Some(pause), ..
                } = strategy
                {
                    log.note(format!(
                        "pausing {} before the next batch",
                        humantime::format_duration(*pause)
                    ));
                    tokio::select! {
                        () = tokio::time::sleep(*pause) => {}
                        () = running.token().cancelled() => {}
                    }
                }
            }
            if batch_index > 0 && running.reason().is_some() {
                for later in batches.iter().skip(batch_index) {
                    self.skip(
                        deployment,
                        index,
                        step,
                        later,
                        "skipped: the deployment was stopped",
                    )
                    .await?;
                }
                break;
            }
            let runs = servers.iter().map(|server| {
                self.run_step_on(deployment, running, index, step, server, &shared, log)
            });
            let results = futures::future::join_all(runs).await;
            for (server, result) in servers.iter().zip(results) {
                match result? {
                    StepOutcome::Succeeded => {}
                    StepOutcome::Unreachable(error) => {
                        tally.unreachable.get_or_insert(error);
                    }
                    other => tally.failed.push((server.clone(), other.reason())),
                }
            }
            if tally.unreachable.is_some() || (!tally.failed.is_empty() && !step.continue_on_error)
            {
                // Later batches of this step never start.
                for later in batches.iter().skip(batch_index + 1) {
                    self.skip(
                        deployment,
                        index,
                        step,
                        later,
                        "skipped: an earlier batch failed",
                    )
                    .await?;
                }
                break;
            }
        }
        Ok(tally)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_step_on(
        &self,
        deployment: &Deployment,
        running: &Running,
        index: usize,
        step: &PlannedStep,
        server: &str,
        shared: &StepShared,
        log: &DeploymentLog,
    ) -> anyhow::Result<StepOutcome> {
        let span = tracing::info_span!("step", step = %step.name, server = %server, kind = step.action.kind());
        async {
            let clock = Instant::now();
            let mut recorder = self.reporter.step(deployment, index, &step.name, server);
            recorder.running().await?;
            log.line(
                Some(server),
                Some(&step.name),
                LogStream::Dropship,
                format!("▶ {} on {server}", step.name),
            );
            let say = Say {
                log: log.clone(),
                server: server.to_string(),
                step: step.name.clone(),
                group: crate::exec::job_group(&self.instance, deployment.id, index, server),
                stop: running.token().clone(),
            };
            let outcome = match &step.action {
                Action::Shell => self
                    .run_script(server, &self.job(deployment, step, &say), &say)
                    .await
                    .map_or_else(StepOutcome::from, StepOutcome::from),
                Action::Container(plan) => {
                    self.deploy_app(deployment, plan, server, shared, step.timeout, &say)
                        .await
                }
                Action::Rollback { app, stop_timeout } => {
                    self.rollback_app(deployment, app, *stop_timeout, server, &say)
                        .await
                }
                Action::StopApp { app, stop_timeout } => {
                    self.stop_app(deployment, app, *stop_timeout, server, &say)
                        .await
                }
                Action::Compose(plan) => self
                    .compose(deployment, step, plan, true, server, &say)
                    .await
                    .unwrap_or_else(StepOutcome::from),
                Action::ComposeDown(plan) => self
                    .compose(deployment, step, plan, false, server, &say)
                    .await
                    .unwrap_or_else(StepOutcome::from),
            };
            let elapsed = format_elapsed(clock.elapsed());
            log.line(
                Some(server),
                Some(&step.name),
                LogStream::Dropship,
                outcome.summary(&step.name, server, &elapsed),
            );
            let (state, code, message) = outcome.recorded();
            recorder.ended(state, code, message).await?;
            Ok(outcome)
        }
        .instrument(span)
        .await
    }

    /// Kills the job groups a Dropship that stopped without ending them left on `server` (all
    /// servers with `None`), and forgets each one killed. `Err` names the first server that
    /// could not be reached; its groups are tried again at the next contact.
    pub async fn kill_orphans(&self, server: Option<&str>) -> Result<usize, ExecError> {
        let orphans = self
            .store
            .orphan_jobs(server)
            .await
            .map_err(|e| ExecError::Io {
                server: server.unwrap_or("any").to_string(),
                detail: format!("reading the jobs left running: {e:#}"),
            })?;
        let mut by_server: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (server, group) in orphans {
            by_server.entry(server).or_default().push(group);
        }
        let mut killed = 0;
        let mut unreachable = None;
        for (server, groups) in by_server {
            let Some(executor) = self.fleet.get(&server) else {
                // No longer configured: nothing to reach it with.
                for group in &groups {
                    let _ = self.store.orphan_killed(&server, group).await;
                }
                continue;
            };
            // One look and one kill for a server's groups, [`KILL_BATCH`] at a time (they are
            // the kill script's arguments).
            for groups in groups.chunks(KILL_BATCH) {
                match executor.kill(groups).await {
                    Ok(found) => {
                        if found > 0 {
                            tracing::warn!(%server, groups = groups.len(), processes = found, "killed jobs left running by an interrupted deployment");
                        }
                        killed += found as usize;
                        for group in groups {
                            if let Err(error) = self.store.orphan_killed(&server, group).await {
                                tracing::error!(
                                    error = format!("{error:#}"),
                                    "forgetting a killed job"
                                );
                            }
                        }
                    }
                    Err(error) => {
                        unreachable.get_or_insert(error);
                        break;
                    }
                }
            }
        }
        match unreachable {
            Some(error) => Err(error),
            None => Ok(killed),
        }
    }

    /// Runs a script on `server`, its output going to the step's log. What an earlier Dropship
    /// left running there is killed first.
    async fn run_script(&self, server: &str, job: &Job, say: &Say) -> Result<Exit, ExecError> {
        match self.kill_orphans(Some(server)).await {
            Ok(0) => {}
            Ok(n) => say.note(format!(
                "killed {n} process{} an interrupted deployment left running here",
                if n == 1 { "" } else { "es" }
            )),
            Err(error) => return Err(error),
        }
        let (sender, forward) = say.progress();
        let result = match self.fleet.get(server) {
            Some(executor) => {
                let result = executor.run(job, sender).await;
                if result.is_err() {
                    // The connection was lost, maybe with the job started: it may run on with
                    // nobody waiting, so it is killed before the next step on this server.
                    let orphan = [(server.to_string(), job.group.clone())];
                    if let Err(error) = self.store.add_orphan_jobs(&orphan).await {
                        tracing::error!(
                            error = format!("{error:#}"),
                            "remembering a job that may run on"
                        );
                    }
                }
                if result == Ok(Exit::TimedOut) {
                    // `timeout` ended the script's own process group; what escaped it (a
                    // `setsid` or daemonized child) still carries the job's mark.
                    match executor.kill(std::slice::from_ref(&job.group)).await {
                        Ok(0) => {}
                        Ok(n) => say.note(format!(
                            "killed {n} process{} the timed-out step left behind",
                            if n == 1 { "" } else { "es" }
                        )),
                        Err(error) => say.note(format!(
                            "could not kill what the timed-out step left behind: {error}"
                        )),
                    }
                }
                result
            }
            None => Err(ExecError::Io {
                server: server.to_string(),
                detail: "no such server in the operator config".into(),
            }),
        };
        let _ = forward.await;
        result
    }

    fn job(&self, deployment: &Deployment, step: &PlannedStep, say: &Say) -> Job {
        let mut env = context(deployment).environment_variables();
        env.push(("DROPSHIP_SERVER".into(), say.server.clone()));
        env.push(("DROPSHIP_STEP".into(), step.name.clone()));
        env.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let secrets = self.config.repo_secrets(&deployment.repo, &step.secrets);
        Job {
            script: step.script.clone(),
            env,
            secrets,
            working_dir: step.working_dir.clone(),
            timeout: step.timeout,
            group: say.group.clone(),
            stop: say.stop.child_token(),
        }
    }

    /// Records `step` as skipped on `servers`.
    async fn skip(
        &self,
        deployment: &Deployment,
        index: usize,
        step: &PlannedStep,
        servers: &[String],
        why: &str,
    ) -> anyhow::Result<()> {
        for server in servers {
            self.reporter
                .step(deployment, index, &step.name, server)
                .skipped(why)
                .await?;
        }
        Ok(())
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

pub fn format_elapsed(elapsed: Duration) -> String {
    if elapsed < Duration::from_secs(60) {
        format!("{:.1}s", elapsed.as_secs_f64())
    } else {
        format!("{}m{:02}s", elapsed.as_secs() / 60, elapsed.as_secs() % 60)
    }
}

/// The most job groups one kill on a server looks for: the groups are the kill script's
/// arguments, so a server that missed many interrupted deployments is cleaned in batches.
const KILL_BATCH: usize = 200;

/// How often ending a deployment whose run broke off is tried, and the first pause between
/// tries (doubling: at most 1 + 2 + 4 + 8 s in all).
const END_ATTEMPTS: u32 = 5;
const END_RETRY: Duration = Duration::from_secs(1);

/// The outcome of a deployment stopped for `reason` before its first step (`when`): stopped
/// by a shutdown, it goes back to the queue and the next start runs it; otherwise it ends
/// `error`.
fn stopped_before_steps(reason: StopReason, when: &str) -> Outcome {
    match reason {
        StopReason::Shutdown => Outcome {
            state: State::Queued,
            description: format!("re-queued: dropship shut down {when}; it runs after the restart"),
        },
        other => Outcome::error(format!("{other} {when}")),
    }
}
