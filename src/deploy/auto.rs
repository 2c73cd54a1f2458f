//! Auto-deploy: when a branch moves (`push`) or every check on its new commit has passed
//! (`check_suite` completed with success), the manifest's `auto_deploy` rules may ask for a
//! deployment. Dropship then creates it on GitHub, so it is recorded and shown like any other,
//! and GitHub delivers it back as a `deployment` webhook.

use std::sync::Arc;

use crate::config::Config;
use crate::github::{GithubApi, ManifestSource, NewGithubDeployment};
use crate::manifest::{AutoDeployRule, AutoDeployTrigger, Manifest};
use crate::store::Store;
use crate::webhook::BranchMoved;

/// What one rule did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AutoDeployed {
    pub environment: String,
    pub task: String,
    /// The GitHub deployment created; `None` when none was (see `note`).
    pub github_deployment_id: Option<i64>,
    pub note: String,
}

/// Why nothing was considered at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotConsidered {
    #[error("{0} is a fork: forks never auto-deploy")]
    Fork(String),
    #[error(transparent)]
    Refused(#[from] crate::config::Refused),
    #[error("the check suite concluded {0}, not success")]
    NotGreen(String),
    #[error("the manifest at {0}: {1}")]
    Manifest(String, String),
}

/// Applies auto-deploy rules. Built once at start; cheap to clone.
#[derive(Debug, Clone)]
pub struct AutoDeployer {
    config: Arc<Config>,
    /// Claims each commit's auto-deploy to an environment once ever.
    store: Arc<dyn Store>,
    manifests: Arc<dyn ManifestSource>,
    /// Creates the GitHub deployments; none for `dropship run`.
    github: Option<Arc<dyn GithubApi>>,
}

impl AutoDeployer {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        manifests: Arc<dyn ManifestSource>,
        github: Option<Arc<dyn GithubApi>>,
    ) -> AutoDeployer {
        AutoDeployer {
            config,
            store,
            manifests,
            github,
        }
    }

    /// Applies the `auto_deploy` rules of the manifest at the moved commit for `trigger`.
    pub async fn auto_deploy(
        &self,
        moved: &BranchMoved,
        trigger: AutoDeployTrigger,
    ) -> Result<Vec<AutoDeployed>, NotConsidered> {
        if moved.fork {
            return Err(NotConsidered::Fork(moved.repository.clone()));
        }
        self.config.admit_repository(&moved.repository)?;
        if trigger == AutoDeployTrigger::Checks && moved.conclusion.as_deref() != Some("success") {
            return Err(NotConsidered::NotGreen(
                moved.conclusion.clone().unwrap_or_else(|| "nothing".into()),
            ));
        }
        let short = moved.sha.short().to_string();
        let file = match self
            .manifests
            .manifest(&moved.repository, &moved.sha, moved.installation_id)
            .await
        {
            Ok(Some(file)) => file,
            Ok(None) => return Ok(Vec::new()),
            Err(error) => return Err(NotConsidered::Manifest(short, error.message)),
        };
        let manifest = Manifest::parse(&file.path, &file.text)
            .map_err(|d| NotConsidered::Manifest(short.clone(), d.first().to_string()))?;
        let mut done = Vec::new();
        for rule in manifest.auto_deploy() {
            if rule.on == trigger && rule.matches(&moved.branch) {
                done.push(self.apply(moved, &rule).await);
            }
        }
        Ok(done)
    }

    /// What one matching rule did: a GitHub deployment created, or a note why none was.
    async fn apply(&self, moved: &BranchMoved, rule: &AutoDeployRule) -> AutoDeployed {
        let (github_deployment_id, note) = match self.try_apply(moved, rule).await {
            Ok((id, description)) => (Some(id), description),
            Err(note) => (None, note),
        };
        AutoDeployed {
            environment: rule.environment.clone(),
            task: rule.task.clone(),
            github_deployment_id,
            note,
        }
    }

    /// Admitted, still the branch's head (for checks), claimed once, created: the GitHub
    /// deployment's id and description, or why it was not made.
    async fn try_apply(
        &self,
        moved: &BranchMoved,
        rule: &AutoDeployRule,
    ) -> Result<(i64, String), String> {
        self.config
            .admit(&moved.repository, &rule.environment)
            .map_err(|refused| refused.to_string())?;
        if rule.on == AutoDeployTrigger::Checks {
            self.still_head(moved).await?;
        }
        self.claim(moved, rule).await?;
        self.create(moved, rule).await
    }

    /// Whether the branch still points at the suite's commit. A suite names its head branch,
    /// but a fork's pull request may have a branch of the same name: deploy only the commit
    /// the branch points at here.
    async fn still_head(&self, moved: &BranchMoved) -> Result<(), String> {
        let Some(github) = &self.github else {
            return Ok(());
        };
        match github
            .commit_sha(&moved.repository, &moved.branch, moved.installation_id)
            .await
        {
            Ok(sha) if moved.sha == *sha => Ok(()),
            Ok(sha) => Err(format!(
                "{} now points at {}, not {}: nothing deployed",
                moved.branch,
                crate::sha::Sha::from(sha).short(),
                moved.sha.short()
            )),
            Err(error) => Err(format!("reading {}: {}", moved.branch, error.message)),
        }
    }

    /// Claims the auto-deploy of this commit to the rule's environment, once ever.
    async fn claim(&self, moved: &BranchMoved, rule: &AutoDeployRule) -> Result<(), String> {
        match self
            .store
            .claim_auto_deploy(
                &moved.repository,
                &rule.environment,
                &moved.sha,
                rule.on.as_str(),
            )
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "{} was auto-deployed to {} before",
                moved.sha.short(),
                rule.environment
            )),
            Err(error) => Err(format!("recording the auto-deploy: {error:#}")),
        }
    }

    /// Creates the GitHub deployment; on failure gives the claim back, so a later event may
    /// succeed.
    async fn create(
        &self,
        moved: &BranchMoved,
        rule: &AutoDeployRule,
    ) -> Result<(i64, String), String> {
        let trigger_name = rule.on.as_str();
        let description = format!("auto-deploy of {} ({trigger_name})", moved.branch);
        let payload = serde_json::json!({
            "dropship": { "auto_deploy": { "branch": moved.branch, "trigger": trigger_name } }
        });
        let created = super::actions::create_github_deployment(
            self.github.as_ref(),
            &moved.repository,
            &NewGithubDeployment {
                git_ref: &moved.sha,
                task: &rule.task,
                environment: &rule.environment,
                description: &description,
                auto_merge: false,
                // On push, deploy now; on checks, GitHub verifies every context passed
                // (a 409 until they all have).
                required_contexts: (rule.on == AutoDeployTrigger::Push).then(Vec::new),
                payload,
            },
            moved.installation_id,
        )
        .await;
        let short = moved.sha.short();
        match created {
            Ok(created) => {
                tracing::info!(
                    repo = %moved.repository, environment = %rule.environment,
                    sha = %short, github_deployment = created.id, "auto-deploy created"
                );
                Ok((created.id, description))
            }
            Err(error) => {
                if let Err(e) = self
                    .store
                    .release_auto_deploy(&moved.repository, &rule.environment, &moved.sha)
                    .await
                {
                    tracing::error!(error = format!("{e:#}"), "releasing an auto-deploy claim");
                }
                tracing::warn!(
                    repo = %moved.repository, environment = %rule.environment,
                    sha = %short, error = %error, "auto-deploy not created"
                );
                Err(format!("not created: {error}"))
            }
        }
    }
}
