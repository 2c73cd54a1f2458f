//! The Reporter: a deployment's state change, reported everywhere it goes. The record, its
//! GitHub status and check-run update are written in one transaction; then the outbox wakes,
//! the metrics count a deployment that ended, and the live bus tells pages and followers.

use std::sync::Arc;

use tokio::sync::Notify;

use super::{checks, stored_log_url};
use crate::github::status_description;
use crate::logs::{Bus, Event, Redactor, Redactors};
use crate::metrics::Metrics;
use crate::store::{
    Deployment, State, StatusDraft, StatusState, StepRun, StepState, Store, Transition, now_ms,
};

/// How often a resend reads the deployment again while its state keeps changing under it.
const RESEND_READS: usize = 3;

/// Reports deployments' state changes. Built once at start; cheap to clone.
#[derive(Debug, Clone)]
pub struct Reporter {
    store: Arc<dyn Store>,
    /// Wakes the status outbox when a status is enqueued.
    outbox: Arc<Notify>,
    metrics: Arc<Metrics>,
    bus: Bus,
    redactors: Redactors,
    /// Where deployment pages live, for the statuses' `log_url`.
    public_url: String,
    /// Whether deployments get GitHub check runs: the Checks API takes GitHub App auth only.
    checks: bool,
}

impl Reporter {
    pub fn new(
        store: Arc<dyn Store>,
        outbox: Arc<Notify>,
        metrics: Arc<Metrics>,
        bus: Bus,
        redactors: Redactors,
        public_url: &str,
        checks: bool,
    ) -> Reporter {
        Reporter {
            store,
            outbox,
            metrics,
            bus,
            redactors,
            public_url: public_url.to_string(),
            checks,
        }
    }

    /// Changes state, enqueues the matching GitHub status and tells listeners. Returns false
    /// (and changes nothing) when a deployment that is not queued is asked to start.
    pub async fn transition(
        &self,
        deployment: &Deployment,
        state: State,
        description: &str,
        environment_url: Option<String>,
    ) -> anyhow::Result<bool> {
        // Masked here for the store, pages and bus; the outbox masks again what GitHub gets.
        let description = status_description(
            &self
                .redactors
                .for_repo(&deployment.repo)
                .redact(description.to_string()),
        );
        let status = StatusDraft {
            state: state.github_state(),
            description: description.clone(),
            log_url: Some(stored_log_url(&self.public_url, deployment.id)),
            environment_url: environment_url.clone(),
        };
        let check = if self.checks {
            self.check_update(deployment, state, &description, environment_url.as_deref())
                .await?
        } else {
            None
        };
        let applied = self
            .store
            .transition(
                deployment.id,
                Transition {
                    state,
                    description: Some(description.clone()),
                    environment_url,
                    status: Some(status),
                    check,
                },
            )
            .await?;
        if !applied {
            return Ok(false);
        }
        self.outbox.notify_one();
        if state.is_final() {
            // The caller's copy may predate the start: read the times as recorded.
            let seconds = match self.store.deployment(deployment.id).await? {
                Some(Deployment {
                    started_at: Some(started),
                    finished_at: Some(finished),
                    ..
                }) => Some((finished - started).max(0) as f64 / 1000.0),
                _ => None,
            };
            self.metrics.deployment_ended(state.as_str(), seconds);
        }
        self.bus.publish(Event::State {
            deployment_id: deployment.id,
            state,
            description: Some(description),
        });
        Ok(true)
    }

    /// Enqueues `deployment`'s current state for GitHub again, behind anything still pending,
    /// and wakes the outbox: whatever was lost or refused before, the status GitHub shows last
    /// is Dropship's. Returns the state sent.
    pub async fn resend(&self, deployment: &Deployment) -> anyhow::Result<StatusState> {
        let mut current = deployment.clone();
        // A state change committed between the caller's read and this enqueue would be posted
        // before this older copy: read again, and enqueue the newer state behind it. (One
        // committed later posts after this one anyway.)
        for _ in 0..RESEND_READS {
            self.store
                .enqueue_status(current.id, &self.current_status(&current))
                .await?;
            match self.store.deployment(current.id).await? {
                Some(newer)
                    if newer.state != current.state
                        || newer.state_description != current.state_description =>
                {
                    current = newer;
                }
                _ => break,
            }
        }
        self.outbox.notify_one();
        Ok(current.state.github_state())
    }

    /// The status that says where `deployment` stands now.
    fn current_status(&self, deployment: &Deployment) -> StatusDraft {
        let description = deployment
            .state_description
            .clone()
            .unwrap_or_else(|| deployment.state.as_str().to_string());
        StatusDraft {
            state: deployment.state.github_state(),
            description: status_description(
                &self
                    .redactors
                    .for_repo(&deployment.repo)
                    .redact(description),
            ),
            log_url: Some(stored_log_url(&self.public_url, deployment.id)),
            environment_url: deployment.environment_url.clone(),
        }
    }

    /// The `queued` status of a deployment about to be recorded, built once its id is known so
    /// that it is written in the same commit.
    pub fn queued_status(&self) -> crate::store::StatusFn {
        let public_url = self.public_url.clone();
        Box::new(move |d: &Deployment| super::queued_status(&public_url, d))
    }

    /// After a deployment was recorded with its `queued` status: enqueues the check run's
    /// `queued` state behind it, before the deployment can start, and wakes the outbox.
    /// Without that check the run is created at `in_progress`: no reason to fail a recorded
    /// delivery, so a failure is logged.
    pub async fn recorded(&self, deployment: &Deployment) {
        if self.checks && deployment.github_id.is_some() {
            let draft =
                checks::queued(deployment, &stored_log_url(&self.public_url, deployment.id));
            if let Err(error) = self.store.enqueue_check(deployment.id, &draft).await {
                tracing::error!(
                    error = format!("{error:#}"),
                    deployment.id = deployment.id,
                    "enqueueing the queued check run"
                );
            }
        }
        self.outbox.notify_one();
    }

    /// The check-run update for a state change, with the steps grid and the failing step's
    /// last lines once the deployment ends.
    async fn check_update(
        &self,
        deployment: &Deployment,
        state: State,
        description: &str,
        environment_url: Option<&str>,
    ) -> anyhow::Result<Option<crate::store::CheckDraft>> {
        let steps = if state.is_final() {
            self.store.steps(deployment.id).await?
        } else {
            Vec::new()
        };
        let failing = steps.iter().find(|s| {
            matches!(
                s.state,
                StepState::Failure | StepState::Error | StepState::TimedOut
            )
        });
        let lines = match failing {
            Some(step) => {
                self.store
                    .step_output_tail(
                        deployment.id,
                        &step.step,
                        &step.server,
                        checks::FAILING_LINES as i64,
                    )
                    .await?
            }
            None => Vec::new(),
        };
        let environment_url = environment_url
            .map(str::to_string)
            .or_else(|| deployment.environment_url.clone());
        Ok(checks::update(
            deployment,
            state,
            description,
            &steps,
            failing.map(|step| (step, lines.as_slice())),
            &stored_log_url(&self.public_url, deployment.id),
            environment_url.as_deref(),
        ))
    }

    /// Records a deployment as `inactive` and tells listeners, posting no status.
    pub async fn mark_inactive(&self, id: i64, description: &str) -> anyhow::Result<()> {
        let transition = Transition {
            state: State::Inactive,
            description: Some(description.to_string()),
            environment_url: None,
            status: None,
            check: None,
        };
        if self.store.transition(id, transition).await? {
            self.bus.publish(Event::State {
                deployment_id: id,
                state: State::Inactive,
                description: Some(description.to_string()),
            });
        }
        Ok(())
    }

    /// The recorder of step `index` (named `step`) of `deployment` on `server`.
    pub(super) fn step(
        &self,
        deployment: &Deployment,
        index: usize,
        step: &str,
        server: &str,
    ) -> StepRecorder {
        StepRecorder {
            reporter: self.clone(),
            redactor: self.redactors.for_repo(&deployment.repo).clone(),
            run: StepRun {
                deployment_id: deployment.id,
                step_index: index as i64,
                step: step.to_string(),
                server: server.to_string(),
                state: StepState::Pending,
                exit_code: None,
                message: None,
                started_at: None,
                finished_at: None,
            },
        }
    }
}

/// Records one step's run on one server as it goes: each state saved with its message masked,
/// an ended one counted, every one published.
pub(super) struct StepRecorder {
    reporter: Reporter,
    redactor: Redactor,
    run: StepRun,
}

impl StepRecorder {
    /// Records the step as waiting its turn.
    pub(super) async fn pending(self) -> anyhow::Result<()> {
        self.save(StepState::Pending, None, None).await
    }

    /// Records the step as running from now.
    pub(super) async fn running(&mut self) -> anyhow::Result<()> {
        self.run.started_at = Some(now_ms());
        self.save(StepState::Running, None, None).await
    }

    /// Records how the step ended.
    pub(super) async fn ended(
        &self,
        state: StepState,
        exit_code: Option<i64>,
        message: Option<String>,
    ) -> anyhow::Result<()> {
        self.save(state, exit_code, message).await
    }

    /// Records that the step never ran here, and why.
    pub(super) async fn skipped(self, why: &str) -> anyhow::Result<()> {
        self.save(StepState::Skipped, None, Some(why.to_string()))
            .await
    }

    async fn save(
        &self,
        state: StepState,
        exit_code: Option<i64>,
        message: Option<String>,
    ) -> anyhow::Result<()> {
        let finished = matches!(
            state,
            StepState::Success
                | StepState::Failure
                | StepState::TimedOut
                | StepState::Error
                | StepState::Skipped
        );
        let run = StepRun {
            state,
            exit_code,
            message: message.map(|m| self.redactor.redact(m)),
            finished_at: finished.then(now_ms),
            ..self.run.clone()
        };
        self.reporter.store.save_step(&run).await?;
        if finished {
            self.reporter.metrics.step_ended(state.as_str());
        }
        self.reporter.bus.publish(Event::Step(run));
        Ok(())
    }
}
