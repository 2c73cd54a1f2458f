//! What each configured server looks like now: reachable or not, how its host key is checked,
//! its Docker engine and the apps Dropship runs there. `dropship check`, `/api/servers` and the
//! servers page all read this.

use std::time::Duration;

use serde::Serialize;

use std::sync::Arc;

use crate::config::Config;
use crate::containers::Hosts;
use crate::containers::{LABEL_APP, LABEL_ENVIRONMENT, LABEL_REPO, LABEL_SHA};
use crate::exec::Fleet;

/// One server's answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServerReport {
    pub name: String,
    pub host: String,
    pub roles: Vec<String>,
    /// How the host key is checked (`pinned ssh-ed25519`, `accept-new (key remembered)`).
    pub host_key: String,
    pub reachable: bool,
    /// The system (`Linux 6.1.0-...`) when reachable, or why not.
    pub system: String,
    /// Whether the config says this server runs containers (`docker` set).
    pub docker_configured: bool,
    /// The Docker engine's version, when it answered.
    pub docker_version: Option<String>,
    /// Why the Docker engine did not answer, when it was asked.
    pub docker_error: Option<String>,
    /// Dropship's containers there.
    pub apps: Vec<RunningApp>,
}

/// A container Dropship started.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunningApp {
    pub repo: String,
    pub environment: String,
    pub app: String,
    #[schema(value_type = String)]
    pub sha: crate::sha::Sha,
    pub container: String,
    pub state: String,
    pub status: String,
}

/// Answers what the configured servers look like now. Built once at start; cheap to clone.
#[derive(Debug, Clone)]
pub struct Servers {
    config: Arc<Config>,
    fleet: Fleet,
    hosts: Hosts,
}

impl Servers {
    pub fn new(config: Arc<Config>, fleet: Fleet, hosts: Hosts) -> Servers {
        Servers {
            config,
            fleet,
            hosts,
        }
    }

    /// Asks every server at once, each within `limit`.
    pub async fn survey(&self, limit: Duration) -> Vec<ServerReport> {
        survey(&self.config, &self.fleet, &self.hosts, limit).await
    }
}

/// Asks every server of `config` at once, each within `limit`.
pub async fn survey(
    config: &Config,
    fleet: &Fleet,
    hosts: &Hosts,
    limit: Duration,
) -> Vec<ServerReport> {
    {
        let asks = config.servers.iter().map(|server| async move {
            let mut report = ServerReport {
                name: server.name.clone(),
                host: server.host.clone(),
                roles: server.roles.clone(),
                host_key: String::new(),
                reachable: false,
                system: String::new(),
                docker_configured: server.docker.is_some(),
                docker_version: None,
                docker_error: None,
                apps: Vec::new(),
            };
            let Some(executor) = fleet.get(&server.name) else {
                report.system = "no executor for this server".into();
                return report;
            };
            report.host_key = executor.host_key_status();
            match tokio::time::timeout(limit, executor.check()).await {
                Ok(Ok(system)) => {
                    report.reachable = true;
                    report.system = system;
                }
                Ok(Err(error)) => report.system = error.to_string(),
                Err(_) => {
                    report.system =
                        format!("no answer within {}", humantime::format_duration(limit))
                }
            }
            // The engine only once the server answers: its socket comes over that connection.
            let host = hosts.get(&server.name).filter(|_| report.reachable);
            if let Some(host) = host {
                match tokio::time::timeout(limit, host.version()).await {
                    Ok(Ok(version)) => report.docker_version = Some(version),
                    Ok(Err(error)) => report.docker_error = Some(error.to_string()),
                    Err(_) => {
                        report.docker_error = Some(format!(
                            "no answer within {}",
                            humantime::format_duration(limit)
                        ))
                    }
                }
                if report.docker_version.is_some() {
                    let listed = tokio::time::timeout(limit, host.list(&[])).await;
                    if let Ok(Ok(containers)) = listed {
                        report.apps = containers
                            .into_iter()
                            .map(|c| RunningApp {
                                repo: c.label(LABEL_REPO).unwrap_or_default().to_string(),
                                environment: c
                                    .label(LABEL_ENVIRONMENT)
                                    .unwrap_or_default()
                                    .to_string(),
                                app: c.label(LABEL_APP).unwrap_or_default().to_string(),
                                sha: c.label(LABEL_SHA).unwrap_or_default().into(),
                                container: c.name.clone(),
                                state: c.state.clone(),
                                status: c.status.clone(),
                            })
                            .collect();
                    }
                }
            }
            report
        });
        futures::future::join_all(asks).await
    }
}
