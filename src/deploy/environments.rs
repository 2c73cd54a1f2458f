//! Environments beyond one deployment: tearing one down (its containers, routes, preview
//! record and live deployments), and retiring earlier deployments when a new one succeeds, as
//! GitHub's `auto_inactive` does.

use std::sync::Arc;
use std::time::Duration;

use super::Reporter;
use crate::containers::Hosts;
use crate::proxy::{Drain, RouteKey, Routes};
use crate::store::{Deployment, State, Store};

/// Built once at start; cheap to clone.
#[derive(Debug, Clone)]
pub struct Environments {
    store: Arc<dyn Store>,
    reporter: Reporter,
    /// Every server's container engine.
    hosts: Hosts,
    /// Where routes change (none without a proxy).
    routes: Option<Arc<dyn Routes>>,
    /// How long a removed route's requests may take to finish.
    drain_timeout: Duration,
}

impl Environments {
    pub fn new(
        store: Arc<dyn Store>,
        reporter: Reporter,
        hosts: Hosts,
        routes: Option<Arc<dyn Routes>>,
        drain_timeout: Duration,
    ) -> Environments {
        Environments {
            store,
            reporter,
            hosts,
            routes,
            drain_timeout,
        }
    }

    /// GitHub's `auto_inactive`, mirrored in Dropship's records: when `deployment` succeeds,
    /// earlier successful deployments to its repository and environment that are neither
    /// transient nor production become `inactive` (GitHub marks them itself, so no status is
    /// posted).
    pub(super) async fn deactivate_earlier(&self, deployment: &Deployment) -> anyhow::Result<()> {
        let earlier = self
            .store
            .list_deployments(&crate::store::ListFilter {
                repo: Some(deployment.repo.clone()),
                environment: Some(deployment.environment.clone()),
                limit: 1000,
                ..Default::default()
            })
            .await?;
        for old in earlier.iter().filter(|d| {
            d.id < deployment.id && d.state == State::Success && !d.transient && !d.production
        }) {
            let description = format!("superseded by deployment {}", deployment.public_id());
            self.reporter.mark_inactive(old.id, &description).await?;
        }
        Ok(())
    }

    /// Tears an environment down: every container Dropship runs for it on any server is
    /// removed (routed apps leave the proxy and drain first), and its successful deployments
    /// end `inactive`, the newest with an `inactive` status, which GitHub shows as destroyed.
    /// Returns how many containers were removed and how many deployments ended inactive.
    pub async fn teardown(&self, repo: &str, environment: &str) -> anyhow::Result<(usize, usize)> {
        let mut removed = 0;
        for server in self.hosts.names().map(str::to_string).collect::<Vec<_>>() {
            let Some(host) = self.hosts.get(&server) else {
                continue;
            };
            let containers = match host
                .list(&[
                    (crate::containers::LABEL_REPO, repo),
                    (crate::containers::LABEL_ENVIRONMENT, environment),
                ])
                .await
            {
                Ok(containers) => containers,
                // A server whose engine cannot be reached holds nothing we can remove now.
                Err(error) => {
                    tracing::warn!(server, %error, "tearing down: listing containers");
                    continue;
                }
            };
            let mut apps: Vec<&str> = containers
                .iter()
                .filter(|c| c.label(crate::containers::LABEL_PROXY).is_some())
                .filter_map(|c| c.label(crate::containers::LABEL_APP))
                .collect();
            apps.sort_unstable();
            apps.dedup();
            for app in apps {
                self.remove_route(repo, environment, app)
                    .await?
                    .wait(self.drain_timeout)
                    .await;
            }
            for container in &containers {
                host.remove(&container.id).await?;
                removed += 1;
            }
        }
        self.store.set_preview(repo, environment, None).await?;
        let deployments = self
            .store
            .list_deployments(&crate::store::ListFilter {
                repo: Some(repo.to_string()),
                environment: Some(environment.to_string()),
                limit: 1000,
                ..Default::default()
            })
            .await?;
        let mut deactivated = 0;
        for (i, deployment) in deployments
            .iter()
            .filter(|d| d.state == State::Success)
            .enumerate()
        {
            let description = "environment torn down";
            if i == 0 {
                // The newest: its status tells GitHub the environment is gone.
                self.reporter
                    .transition(deployment, State::Inactive, description, None)
                    .await?;
            } else {
                self.reporter
                    .mark_inactive(deployment.id, description)
                    .await?;
            }
            deactivated += 1;
        }
        Ok((removed, deactivated))
    }

    /// Removes the route of `app` in `repo`'s `environment` (nothing without a proxy); its
    /// upstreams drain.
    pub(super) async fn remove_route(
        &self,
        repo: &str,
        environment: &str,
        app: &str,
    ) -> anyhow::Result<Drain> {
        match &self.routes {
            Some(routes) => {
                routes
                    .remove(&RouteKey {
                        repo: repo.to_string(),
                        environment: environment.to_string(),
                        app: app.to_string(),
                    })
                    .await
            }
            None => Ok(Drain::default()),
        }
    }
}
