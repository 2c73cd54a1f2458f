//! Intake: what Dropship does with a delivery whose signature was verified and whose event
//! was parsed. It records the delivery, and for a deployment records it with its `queued`
//! status in one commit before anything else (GitHub gives up at 10 s and never retries);
//! then hands it to the scheduler. The HTTP handler only verifies, parses and renders the
//! [`Accepted`] it gets back.

use std::sync::Arc;

use super::{AutoDeployer, Environments, LogLinks, Queue, Reporter};
use crate::config::{Config, Refused};
use crate::manifest::AutoDeployTrigger;
use crate::metrics::Metrics;
use crate::store::{Delivery, DeliveryResult, Deployment, Inserted, NewDeployment, Store};
use crate::webhook::{BranchMoved, DeploymentEvent, Event};

/// How long a `push` or `check_suite` delivery waits for its auto-deploys before answering;
/// GitHub gives up on a delivery after 10 s. Work left then goes on in the background.
const AUTO_DEPLOY_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

/// What intake did with one delivery.
#[derive(Debug)]
pub enum Accepted {
    Ping {
        zen: Option<String>,
    },
    /// An event or action Dropship does not act on (`event` or `event.action`).
    Ignored(String),
    /// The repository or environment is not one the operator config admits.
    Refused(Refused),
    /// A closed pull request of this repository: the previews of its branch, being torn down.
    PullRequestClosed {
        number: i64,
        teardown: Vec<String>,
    },
    /// A closed pull request from a fork: its branch says nothing about this repository.
    PullRequestFromFork {
        number: i64,
    },
    /// A branch that moved, and what its auto-deploy rules did in time (or a note why none ran).
    AutoDeploy(serde_json::Value),
    /// A deployment, recorded; `duplicate` when GitHub delivered it before.
    Deployment {
        deployment: Box<Deployment>,
        duplicate: bool,
        log_url: String,
    },
}

/// Takes verified deliveries. Built once at start, from its parts; cheap to clone.
#[derive(Debug, Clone)]
pub struct Intake {
    parts: IntakeParts,
}

/// What [`Intake`] is built from, and holds.
#[derive(Debug, Clone)]
pub struct IntakeParts {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// Builds the `queued` status and check run of a recorded deployment.
    pub reporter: Reporter,
    pub scheduler: Queue,
    /// Tears the previews of a closed pull request down.
    pub environments: Environments,
    /// Applies the auto-deploy rules of a branch that moved.
    pub auto: AutoDeployer,
    /// The answer's link to a recorded deployment's page.
    pub links: LogLinks,
}

impl Intake {
    pub fn new(parts: IntakeParts) -> Intake {
        Intake { parts }
    }

    /// Records delivery `delivery_id` of `event` (labelled `label` in the metrics) and acts on
    /// it. `Err` means the store could not record it.
    pub async fn accept(
        &self,
        delivery_id: Option<String>,
        label: &'static str,
        event_name: &str,
        event: Event,
    ) -> anyhow::Result<Accepted> {
        let delivery = |result: DeliveryResult, action: Option<&str>| Delivery {
            delivery_id: delivery_id.clone(),
            event: event_name.to_string(),
            action: action.map(str::to_string),
            result,
            deployment_id: None,
        };
        match event {
            Event::Ping { zen } => {
                self.recorded(label, delivery(DeliveryResult::Ping, None))
                    .await?;
                Ok(Accepted::Ping { zen })
            }
            Event::Ignored { event, action } => {
                self.recorded(label, delivery(DeliveryResult::Ignored, action.as_deref()))
                    .await?;
                Ok(Accepted::Ignored(match action {
                    Some(action) => format!("{event}.{action}"),
                    None => event,
                }))
            }
            Event::PullRequestClosed {
                repository,
                number,
                head_ref,
                from_fork,
            } => {
                let result = match self.parts.config.admit_repository(&repository) {
                    Err(refused) => Err(refused),
                    Ok(_) if from_fork => Ok(None),
                    Ok(_) => Ok(Some(
                        self.parts
                            .store
                            .previews_of_ref(&repository, &head_ref)
                            .await?,
                    )),
                };
                let recorded = match &result {
                    Err(_) => DeliveryResult::Refused,
                    Ok(None) => DeliveryResult::Ignored,
                    Ok(Some(_)) => DeliveryResult::Accepted,
                };
                self.recorded(label, delivery(recorded, Some("closed")))
                    .await?;
                Ok(match result {
                    Err(refused) => Accepted::Refused(refused),
                    Ok(None) => Accepted::PullRequestFromFork { number },
                    Ok(Some(previews)) => {
                        self.tear_down_previews(&repository, &previews);
                        Accepted::PullRequestClosed {
                            number,
                            teardown: previews,
                        }
                    }
                })
            }
            Event::Push(moved) => {
                let delivery = |result| delivery(result, None);
                self.auto_deploy(*moved, AutoDeployTrigger::Push, label, delivery)
                    .await
            }
            Event::CheckSuiteCompleted(moved) => {
                let delivery = |result| delivery(result, Some("completed"));
                self.auto_deploy(*moved, AutoDeployTrigger::Checks, label, delivery)
                    .await
            }
            Event::Deployment(deployment) => {
                if let Err(refused) = self
                    .parts
                    .config
                    .admit(&deployment.repository, &deployment.environment)
                {
                    self.recorded(label, delivery(DeliveryResult::Refused, Some("created")))
                        .await?;
                    return Ok(Accepted::Refused(refused));
                }
                let recorded = delivery(DeliveryResult::Accepted, Some("created"));
                self.record(*deployment, recorded, label).await
            }
        }
    }

    /// Records a delivery that brought no deployment, then counts it.
    async fn recorded(&self, label: &'static str, delivery: Delivery) -> anyhow::Result<()> {
        let result = delivery.result;
        self.parts.store.record_delivery(delivery).await?;
        self.parts.metrics.webhook(label, result.as_str());
        Ok(())
    }

    /// Records a deployment with its `queued` status and its delivery in one commit, then
    /// hands a new one to the scheduler.
    async fn record(
        &self,
        deployment: DeploymentEvent,
        delivery: Delivery,
        label: &'static str,
    ) -> anyhow::Result<Accepted> {
        let new = NewDeployment {
            github_id: Some(deployment.github_id),
            repo: deployment.repository,
            environment: deployment.environment,
            task: deployment.task,
            git_ref: deployment.git_ref,
            sha: deployment.sha,
            payload: deployment.payload,
            description: deployment.description,
            creator: deployment.creator,
            installation_id: deployment.installation_id,
            transient: deployment.transient_environment,
            production: deployment.production_environment,
        };
        let queued = self.parts.reporter.queued_status();
        let inserted = self
            .parts
            .store
            .insert_deployment(new, Some(queued), Some(delivery))
            .await?;
        let (deployment, duplicate) = match inserted {
            Inserted::New(d) => {
                self.parts
                    .metrics
                    .webhook(label, DeliveryResult::Accepted.as_str());
                self.parts.reporter.recorded(&d).await;
                self.parts.scheduler.push(&d);
                (d, false)
            }
            Inserted::Duplicate(d) => {
                self.parts
                    .metrics
                    .webhook(label, DeliveryResult::Duplicate.as_str());
                (d, true)
            }
        };
        Ok(Accepted::Deployment {
            log_url: self.parts.links.url(&deployment),
            deployment: Box::new(deployment),
            duplicate,
        })
    }

    /// Tears the previews down in the background: draining and removing containers takes
    /// longer than GitHub waits for an answer.
    fn tear_down_previews(&self, repository: &str, previews: &[String]) {
        for environment in previews {
            let (environments, repository) =
                (self.parts.environments.clone(), repository.to_string());
            let environment = environment.clone();
            tokio::spawn(async move {
                match environments.teardown(&repository, &environment).await {
                    Ok((removed, _)) => tracing::info!(
                        repo = %repository, environment, removed,
                        "pull request closed: preview torn down"
                    ),
                    Err(error) => tracing::error!(
                        repo = %repository, environment, error = format!("{error:#}"),
                        "pull request closed: tearing down the preview"
                    ),
                }
            });
        }
    }

    /// Records the delivery and applies the manifest's `auto_deploy` rules, waiting for them
    /// [`AUTO_DEPLOY_BUDGET`] at most.
    async fn auto_deploy(
        &self,
        moved: BranchMoved,
        trigger: AutoDeployTrigger,
        label: &'static str,
        delivery: impl Fn(DeliveryResult) -> Delivery,
    ) -> anyhow::Result<Accepted> {
        if self
            .parts
            .config
            .admit_repository(&moved.repository)
            .is_err()
        {
            self.recorded(label, delivery(DeliveryResult::Ignored))
                .await?;
            return Ok(Accepted::AutoDeploy(serde_json::json!({
                "auto_deploy": [],
                "note": format!("repository {} is not configured", moved.repository),
            })));
        }
        self.recorded(label, delivery(DeliveryResult::Accepted))
            .await?;
        let auto = self.parts.auto.clone();
        let mut work = tokio::spawn(async move { auto.auto_deploy(&moved, trigger).await });
        let answer = match tokio::time::timeout(AUTO_DEPLOY_BUDGET, &mut work).await {
            Ok(Ok(Ok(done))) => serde_json::json!({ "auto_deploy": done }),
            Ok(Ok(Err(why))) => serde_json::json!({ "auto_deploy": [], "note": why.to_string() }),
            // Recorded already: the answer says what went wrong, and the log has it.
            Ok(Err(error)) => {
                tracing::error!(%error, "an auto-deploy task failed");
                serde_json::json!({ "auto_deploy": [], "note": "auto-deploy failed; see the dropship log" })
            }
            Err(_) => serde_json::json!({ "auto_deploy": "continuing in the background" }),
        };
        Ok(Accepted::AutoDeploy(answer))
    }
}
