//! The events Dropship acts on, read from the raw body and the `X-GitHub-Event` header.

use serde::Deserialize;
use serde_json::Value;

/// A parsed delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Ping {
        zen: Option<String>,
    },
    Deployment(Box<DeploymentEvent>),
    /// A pull request was closed (merged or not): its previews go.
    PullRequestClosed {
        /// `owner/name`.
        repository: String,
        number: i64,
        /// The pull request's head branch, which its preview deployments deployed.
        head_ref: String,
        /// The head branch lives in another repository (a fork, or one since deleted): its
        /// name says nothing about this repository's branches.
        from_fork: bool,
    },
    /// Commits pushed to a branch of a repository (not a tag, not a deletion).
    Push(Box<BranchMoved>),
    /// A check suite on a commit completed (with any conclusion).
    CheckSuiteCompleted(Box<BranchMoved>),
    /// Any other event or action: recorded and ignored.
    Ignored {
        event: String,
        action: Option<String>,
    },
}

/// What Dropship needs from a `deployment` event with action `created`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentEvent {
    pub github_id: i64,
    pub sha: crate::sha::Sha,
    pub git_ref: String,
    pub task: String,
    pub environment: String,
    pub payload: Value,
    pub description: Option<String>,
    pub creator: Option<String>,
    pub transient_environment: bool,
    pub production_environment: bool,
    /// `owner/name`.
    pub repository: String,
    /// Present when the delivery came to a GitHub App.
    pub installation_id: Option<i64>,
}

/// A branch that moved (`push`) or whose commit's checks completed (`check_suite`): what
/// auto-deploy rules need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchMoved {
    /// `owner/name` of the repository the delivery is for.
    pub repository: String,
    /// Whether that repository is a fork.
    pub fork: bool,
    /// The branch name (`main`, not `refs/heads/main`).
    pub branch: String,
    pub sha: crate::sha::Sha,
    /// Who pushed (`push`), or the app whose suite it is (`check_suite`).
    pub actor: Option<String>,
    /// `check_suite` only: its conclusion (`success`, `failure`, ...).
    pub conclusion: Option<String>,
    /// `check_suite` only: the id of the GitHub App the suite belongs to.
    pub app_id: Option<i64>,
    pub installation_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// A field we need is missing or has the wrong type; `path` names it (`deployment.sha`).
    #[error("invalid `{event}` payload at `{path}`: {message}")]
    Field {
        event: String,
        path: String,
        message: String,
    },
}

#[derive(Deserialize)]
struct Envelope {
    action: Option<String>,
}

#[derive(Deserialize)]
struct Ping {
    zen: Option<String>,
}

#[derive(Deserialize)]
struct RawDeploymentEvent {
    deployment: RawDeployment,
    repository: RawRepository,
    installation: Option<RawInstallation>,
}

#[derive(Deserialize)]
struct RawDeployment {
    id: i64,
    sha: String,
    #[serde(rename = "ref")]
    git_ref: String,
    task: String,
    environment: String,
    #[serde(default)]
    payload: Value,
    description: Option<String>,
    creator: Option<RawUser>,
    #[serde(default)]
    transient_environment: bool,
    #[serde(default)]
    production_environment: bool,
}

#[derive(Deserialize)]
struct RawPullRequestEvent {
    number: i64,
    pull_request: RawPullRequest,
    repository: RawRepository,
}

#[derive(Deserialize)]
struct RawPullRequest {
    head: RawBranch,
}

#[derive(Deserialize)]
struct RawBranch {
    #[serde(rename = "ref")]
    git_ref: String,
    /// Null when the head repository was deleted.
    #[serde(default)]
    repo: Option<RawRepository>,
}

#[derive(Deserialize)]
struct RawRepository {
    full_name: String,
    #[serde(default)]
    fork: bool,
}

#[derive(Deserialize)]
struct RawPush {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: RawRepository,
    pusher: Option<RawPusher>,
    installation: Option<RawInstallation>,
}

#[derive(Deserialize)]
struct RawPusher {
    name: Option<String>,
}

#[derive(Deserialize)]
struct RawCheckSuiteEvent {
    check_suite: RawCheckSuite,
    repository: RawRepository,
    installation: Option<RawInstallation>,
}

#[derive(Deserialize)]
struct RawCheckSuite {
    head_branch: Option<String>,
    head_sha: String,
    conclusion: Option<String>,
    app: Option<RawApp>,
}

#[derive(Deserialize)]
struct RawApp {
    id: i64,
    name: Option<String>,
}

#[derive(Deserialize)]
struct RawUser {
    login: String,
}

#[derive(Deserialize)]
struct RawInstallation {
    id: i64,
}

impl Event {
    /// The events (`X-GitHub-Event` values) [`parse`] reads; every other event parses to
    /// [`Event::Ignored`].
    pub const HANDLED: [&str; 5] = ["deployment", "ping", "push", "check_suite", "pull_request"];
}

/// Parses a delivery of event `event` (the `X-GitHub-Event` header).
pub fn parse(event: &str, body: &[u8]) -> Result<Event, PayloadError> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| PayloadError::NotJson(e.to_string()))?;
    match (event, envelope.action.as_deref()) {
        ("ping", _) => {
            let ping: Ping = typed(event, body)?;
            Ok(Event::Ping { zen: ping.zen })
        }
        ("deployment", Some("created")) => {
            let raw: RawDeploymentEvent = typed(event, body)?;
            let d = raw.deployment;
            // GitHub stores the payload as JSON; older deliveries sometimes carry it as a string.
            let payload = match d.payload {
                Value::String(s) if s.trim_start().starts_with('{') => {
                    serde_json::from_str(&s).unwrap_or(Value::String(s))
                }
                Value::Null => Value::Object(Default::default()),
                other => other,
            };
            Ok(Event::Deployment(Box::new(DeploymentEvent {
                github_id: d.id,
                sha: d.sha.into(),
                git_ref: d.git_ref,
                task: d.task,
                environment: d.environment,
                payload,
                description: d.description,
                creator: d.creator.map(|c| c.login),
                transient_environment: d.transient_environment,
                production_environment: d.production_environment,
                repository: raw.repository.full_name,
                installation_id: raw.installation.map(|i| i.id),
            })))
        }
        ("pull_request", Some("closed")) => {
            let raw: RawPullRequestEvent = typed(event, body)?;
            let head = raw.pull_request.head;
            let from_fork = head
                .repo
                .is_none_or(|r| !r.full_name.eq_ignore_ascii_case(&raw.repository.full_name));
            Ok(Event::PullRequestClosed {
                repository: raw.repository.full_name,
                number: raw.number,
                head_ref: head.git_ref,
                from_fork,
            })
        }
        ("push", _) => {
            let raw: RawPush = typed(event, body)?;
            match raw.git_ref.strip_prefix("refs/heads/") {
                Some(branch) if !raw.deleted => Ok(Event::Push(Box::new(BranchMoved {
                    repository: raw.repository.full_name,
                    fork: raw.repository.fork,
                    branch: branch.to_string(),
                    sha: raw.after.into(),
                    actor: raw.pusher.and_then(|p| p.name),
                    conclusion: None,
                    app_id: None,
                    installation_id: raw.installation.map(|i| i.id),
                }))),
                // A tag, or a deleted branch.
                _ => Ok(Event::Ignored {
                    event: event.to_string(),
                    action: None,
                }),
            }
        }
        ("check_suite", Some("completed")) => {
            let raw: RawCheckSuiteEvent = typed(event, body)?;
            let suite = raw.check_suite;
            match suite.head_branch {
                Some(branch) => Ok(Event::CheckSuiteCompleted(Box::new(BranchMoved {
                    repository: raw.repository.full_name,
                    fork: raw.repository.fork,
                    branch,
                    sha: suite.head_sha.into(),
                    actor: suite.app.as_ref().and_then(|a| a.name.clone()),
                    conclusion: suite.conclusion,
                    app_id: suite.app.map(|a| a.id),
                    installation_id: raw.installation.map(|i| i.id),
                }))),
                // A suite on a commit no branch points at.
                None => Ok(Event::Ignored {
                    event: event.to_string(),
                    action: Some("completed".into()),
                }),
            }
        }
        (event, action) => Ok(Event::Ignored {
            event: event.to_string(),
            action: action.map(str::to_string),
        }),
    }
}

fn typed<T: serde::de::DeserializeOwned>(event: &str, body: &[u8]) -> Result<T, PayloadError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde_json appends " at line L column C"; the path says where already.
        let message = match inner.find(" at line ") {
            Some(i) => inner[..i].to_string(),
            None => inner,
        };
        PayloadError::Field {
            event: event.to_string(),
            path,
            message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/github/webhooks/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(path).unwrap()
    }

    #[test]
    fn real_deployment_payload() {
        let Event::Deployment(d) =
            parse("deployment", &fixture("deployment.created.json")).unwrap()
        else {
            panic!("not a deployment")
        };
        assert_eq!(d.github_id, 145988746);
        assert_eq!(d.sha, "f95f852bd8fca8fcc58a9a2d6c842781e32a215e");
        assert_eq!(d.git_ref, "master");
        assert_eq!(d.task, "deploy");
        assert_eq!(d.environment, "production");
        assert_eq!(d.repository, "Codertocat/Hello-World");
        assert_eq!(d.creator.as_deref(), Some("Codertocat"));
        assert_eq!(d.installation_id, None);
    }

    #[test]
    fn installation_id_from_app_delivery() {
        let event = parse(
            "deployment",
            &fixture("deployment.created.with-installation.json"),
        )
        .unwrap();
        let Event::Deployment(d) = event else {
            panic!("not a deployment")
        };
        assert!(d.installation_id.is_some());
    }

    #[test]
    fn ping_and_other_events() {
        assert!(matches!(
            parse("ping", &fixture("ping.event.json")).unwrap(),
            Event::Ping { zen: Some(_) }
        ));
        // GitHub's example push is of a tag, which deploys nothing.
        assert_eq!(
            parse("push", &fixture("push.event.json")).unwrap(),
            Event::Ignored {
                event: "push".into(),
                action: None
            }
        );
        assert_eq!(
            parse(
                "deployment_status",
                &fixture("deployment_status.created.json")
            )
            .unwrap(),
            Event::Ignored {
                event: "deployment_status".into(),
                action: Some("created".into())
            }
        );
    }

    #[test]
    fn a_push_to_a_branch_and_a_completed_check_suite() {
        let mut push: Value = serde_json::from_slice(&fixture("push.event.json")).unwrap();
        push["ref"] = "refs/heads/main".into();
        push["after"] = "4544205a385319fd846d5df4ed2e3b8173529d78".into();
        // The example deletes its tag.
        push["deleted"] = false.into();
        push["created"] = true.into();
        let Event::Push(moved) = parse("push", &serde_json::to_vec(&push).unwrap()).unwrap() else {
            panic!("not a push")
        };
        assert_eq!(moved.repository, "Codertocat/Hello-World");
        assert_eq!(moved.branch, "main");
        assert_eq!(moved.sha, "4544205a385319fd846d5df4ed2e3b8173529d78");
        assert!(!moved.fork);
        push["deleted"] = true.into();
        assert!(matches!(
            parse("push", &serde_json::to_vec(&push).unwrap()).unwrap(),
            Event::Ignored { .. }
        ));

        let Event::CheckSuiteCompleted(suite) =
            parse("check_suite", &fixture("check_suite.completed.json")).unwrap()
        else {
            panic!("not a check suite")
        };
        assert_eq!(suite.branch, "changes");
        assert_eq!(suite.sha, "ec26c3e57ca3a959ca5aad62de7213c562f8c821");
        assert_eq!(suite.conclusion.as_deref(), Some("success"));
        assert_eq!(suite.app_id, Some(29310));
    }

    #[test]
    fn a_closed_pull_request_names_its_head_branch_and_whether_it_is_a_fork() {
        let body = fixture("pull_request.closed.json");
        assert_eq!(
            parse("pull_request", &body).unwrap(),
            Event::PullRequestClosed {
                repository: "Codertocat/Hello-World".into(),
                number: 2,
                head_ref: "changes".into(),
                from_fork: false,
            }
        );
        let mut forked: serde_json::Value = serde_json::from_slice(&body).unwrap();
        forked["pull_request"]["head"]["repo"]["full_name"] = "mallory/Hello-World".into();
        let Event::PullRequestClosed { from_fork, .. } =
            parse("pull_request", &serde_json::to_vec(&forked).unwrap()).unwrap()
        else {
            panic!("not a closed pull request")
        };
        assert!(from_fork);
        forked["pull_request"]["head"]["repo"] = serde_json::Value::Null;
        let Event::PullRequestClosed { from_fork, .. } =
            parse("pull_request", &serde_json::to_vec(&forked).unwrap()).unwrap()
        else {
            panic!("not a closed pull request")
        };
        assert!(from_fork, "a deleted head repository is not this one");
        let opened = br#"{"action": "opened", "number": 12}"#;
        assert!(matches!(
            parse("pull_request", opened).unwrap(),
            Event::Ignored { .. }
        ));
        let broken =
            br#"{"action": "closed", "number": 12, "repository": {"full_name": "acme/shop"}}"#;
        assert_eq!(
            parse("pull_request", broken).unwrap_err().to_string(),
            "invalid `pull_request` payload at `.`: missing field `pull_request`"
        );
    }

    #[test]
    fn malformed_payloads_name_the_field() {
        assert!(matches!(
            parse("deployment", b"{not json").unwrap_err(),
            PayloadError::NotJson(_)
        ));
        let mut body: Value = serde_json::from_slice(&fixture("deployment.created.json")).unwrap();
        body["deployment"].as_object_mut().unwrap().remove("sha");
        let error = parse("deployment", &serde_json::to_vec(&body).unwrap()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid `deployment` payload at `deployment`: missing field `sha`"
        );
        body["deployment"]["sha"] = Value::from(12);
        let error = parse("deployment", &serde_json::to_vec(&body).unwrap()).unwrap_err();
        assert!(error.to_string().contains("`deployment.sha`"), "{error}");
    }
}
