//! The store's contract: what every implementation of [`Store`] must do, written once and
//! generic over the implementation, one case per concern. An implementation runs the whole
//! suite with `contract_tests!(fresh)`, where `fresh()` is an async function answering a guard
//! (kept alive for the test: a temporary directory, a test database) and a new, empty store.
//! The SQLite store runs it in `store/sqlite`; a second database runs it unchanged.

use super::*;

/// One `#[tokio::test]` per case below, against the stores `$fresh` builds.
macro_rules! contract_tests {
    ($fresh:ident) => {
        mod contract {
            use $crate::store::contract as case;

            #[tokio::test]
            async fn deployments_are_recorded_once_started_once_and_statuses_kept_in_order() {
                let (_guard, store) = super::$fresh().await;
                case::deployments_and_statuses(&store).await;
            }

            #[tokio::test]
            async fn queued_deployments_are_found_by_environment_oldest_first() {
                let (_guard, store) = super::$fresh().await;
                case::queued(&store).await;
            }

            #[tokio::test]
            async fn step_runs_are_saved_and_replaced_per_step_and_server() {
                let (_guard, store) = super::$fresh().await;
                case::steps(&store).await;
            }

            #[tokio::test]
            async fn deployment_logs_read_forwards_backwards_and_per_step() {
                let (_guard, store) = super::$fresh().await;
                case::deployment_logs(&store).await;
            }

            #[tokio::test]
            async fn a_check_run_update_waits_behind_the_statuses_before_it() {
                let (_guard, store) = super::$fresh().await;
                case::checks(&store).await;
            }

            #[tokio::test]
            async fn containers_and_followed_servers_are_remembered() {
                let (_guard, store) = super::$fresh().await;
                case::containers(&store).await;
            }

            #[tokio::test]
            async fn app_logs_get_ids_move_cursors_and_keep_the_newest_bytes() {
                let (_guard, store) = super::$fresh().await;
                case::app_logs(&store).await;
            }

            #[tokio::test]
            async fn routes_are_saved_replaced_and_deleted() {
                let (_guard, store) = super::$fresh().await;
                case::routes(&store).await;
            }

            #[tokio::test]
            async fn sessions_expire_and_the_audit_log_reads_newest_first() {
                let (_guard, store) = super::$fresh().await;
                case::people(&store).await;
            }

            #[tokio::test]
            async fn an_environment_is_locked_once_until_unlocked_or_expired_and_previews_are_found_by_ref() {
                let (_guard, store) = super::$fresh().await;
                case::environments(&store).await;
            }

            #[tokio::test]
            async fn an_auto_deploy_is_claimed_once_until_given_back() {
                let (_guard, store) = super::$fresh().await;
                case::auto_deploys(&store).await;
            }
        }
    };
}
pub(crate) use contract_tests;

fn new_deployment(github_id: i64) -> NewDeployment {
    NewDeployment {
        github_id: Some(github_id),
        repo: "acme/shop".into(),
        environment: "production".into(),
        task: "deploy".into(),
        git_ref: "main".into(),
        sha: "abc".into(),
        payload: serde_json::json!({"v": 1}),
        description: None,
        creator: Some("octocat".into()),
        installation_id: None,
        transient: false,
        production: true,
    }
}

fn running() -> Transition {
    Transition {
        state: State::Running,
        description: Some("running".into()),
        environment_url: None,
        status: None,
        check: None,
    }
}

fn status(state: StatusState) -> StatusDraft {
    StatusDraft {
        state,
        description: state.as_str().to_string(),
        log_url: None,
        environment_url: None,
    }
}

/// Records deployment `github_id` of `environment`, new.
async fn insert(store: &impl Store, github_id: i64, environment: &str) -> Deployment {
    let mut deployment = new_deployment(github_id);
    deployment.environment = environment.into();
    match store
        .insert_deployment(deployment, None, None)
        .await
        .unwrap()
    {
        Inserted::New(deployment) => deployment,
        Inserted::Duplicate(_) => panic!("deployment {github_id} recorded before"),
    }
}

/// A story of using the store: record, redeliver, start once, finish, post statuses in order.
pub(crate) async fn deployments_and_statuses(store: &impl Store) {
    let queued: StatusFn = Box::new(move |_d: &Deployment| status(StatusState::Queued));
    let Inserted::New(first) = store
        .insert_deployment(new_deployment(7), Some(queued), None)
        .await
        .unwrap()
    else {
        panic!("not new");
    };
    let again = store
        .insert_deployment(new_deployment(7), None, None)
        .await
        .unwrap();
    assert_eq!(again, Inserted::Duplicate(first.clone()));
    assert_eq!(
        store.queued_environments(10).await.unwrap(),
        vec![(first.repo.clone(), first.environment.clone())]
    );
    assert_eq!(
        store
            .queued_in(&first.repo, &first.environment)
            .await
            .unwrap(),
        vec![first.id]
    );

    // Another deployment of the same environment waits while this one runs.
    let Inserted::New(second) = store
        .insert_deployment(new_deployment(8), None, None)
        .await
        .unwrap()
    else {
        panic!("not new");
    };
    assert_eq!(second.environment, first.environment);
    assert!(store.transition(first.id, running()).await.unwrap());
    assert!(
        !store.transition(first.id, running()).await.unwrap(),
        "started twice"
    );
    assert!(
        !store.transition(second.id, running()).await.unwrap(),
        "two running in one environment"
    );
    let done = Transition {
        state: State::Success,
        description: Some("done".into()),
        environment_url: Some("https://shop.example.com".into()),
        status: Some(status(StatusState::Success)),
        check: None,
    };
    assert!(store.transition(first.id, done).await.unwrap());
    let stored = store.deployment(first.id).await.unwrap().unwrap();
    assert_eq!(stored.state, State::Success);
    assert_eq!(
        stored.environment_url.as_deref(),
        Some("https://shop.example.com")
    );
    assert!(stored.started_at.is_some() && stored.finished_at.is_some());

    // The outbox hands out one status per deployment at a time, oldest first.
    let due = store.due_statuses(now_ms(), 10).await.unwrap();
    assert_eq!(
        due.iter().map(|s| s.state.as_str()).collect::<Vec<_>>(),
        ["queued"]
    );
    assert_eq!(due[0].sending_since, None);
    store.status_sending(due[0].id).await.unwrap();
    let sending = store.due_statuses(now_ms(), 10).await.unwrap();
    assert!(
        sending[0].sending_since.is_some(),
        "a post under way is remembered"
    );
    store.status_delivered(due[0].id).await.unwrap();
    let due = store.due_statuses(now_ms(), 10).await.unwrap();
    assert_eq!(
        due.iter().map(|s| s.state.as_str()).collect::<Vec<_>>(),
        ["success"]
    );
    store.status_sending(due[0].id).await.unwrap();
    store
        .status_retry(due[0].id, 0, "no answer", false)
        .await
        .unwrap();
    let unanswered = store.due_statuses(now_ms(), 10).await.unwrap();
    assert!(
        unanswered[0].sending_since.is_some(),
        "a post that got no answer may have got through"
    );
    store
        .status_retry(due[0].id, now_ms() + 60_000, "502", true)
        .await
        .unwrap();
    let retried = store.statuses(first.id).await.unwrap();
    let retried = retried.iter().find(|s| s.id == due[0].id).unwrap();
    assert!(
        retried.sending_since.is_none(),
        "a refused post was not posted"
    );
    assert!(store.due_statuses(now_ms(), 10).await.unwrap().is_empty());
    assert!(store.next_status_due().await.unwrap().unwrap() > now_ms());

    // A status given up on is kept, with its error, and is no longer due.
    let pending = store.statuses(first.id).await.unwrap();
    assert_eq!(pending.len(), 2);
    store
        .status_failed(pending[1].id, "422 Unprocessable")
        .await
        .unwrap();
    let kept = store.statuses(first.id).await.unwrap();
    assert!(kept[1].failed_at.is_some());
    assert_eq!(kept[1].last_error.as_deref(), Some("422 Unprocessable"));
    assert_eq!(store.next_status_due().await.unwrap(), None);
    assert!(store.deployment(first.id + 1000).await.unwrap().is_none());
    assert!(
        store
            .has_github_deployment(first.github_id.unwrap())
            .await
            .unwrap()
    );
    assert!(!store.has_github_deployment(987_654).await.unwrap());
    assert_eq!(
        store
            .newest_github_id(&first.repo, &first.environment)
            .await
            .unwrap(),
        Some(8)
    );
    assert_eq!(
        store
            .newest_github_id(&first.repo, "nowhere")
            .await
            .unwrap(),
        None
    );

    // A status enqueued again (a resend) goes behind the others and is due at once.
    store
        .enqueue_status(first.id, &status(StatusState::Success))
        .await
        .unwrap();
    let due = store.due_statuses(now_ms(), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].state, "success");
    assert!(due[0].id > kept[1].id);

    // Its environment free again, the other deployment starts.
    assert!(store.transition(second.id, running()).await.unwrap());
}

/// Queued deployments by environment, in order of arrival; listing and the newest per
/// environment.
pub(crate) async fn queued(store: &impl Store) {
    let a1 = insert(store, 1, "a").await;
    let b1 = insert(store, 2, "b").await;
    let a2 = insert(store, 3, "a").await;
    let c1 = insert(store, 4, "c").await;
    let env = |name: &str| ("acme/shop".to_string(), name.to_string());
    assert_eq!(
        store.queued_environments(10).await.unwrap(),
        vec![env("a"), env("b"), env("c")]
    );
    assert_eq!(
        store.queued_environments(2).await.unwrap(),
        vec![env("a"), env("b")]
    );
    assert_eq!(
        store.queued_in("acme/shop", "a").await.unwrap(),
        vec![a1.id, a2.id]
    );
    assert!(store.queued_in("acme/shop", "z").await.unwrap().is_empty());

    // Once `a`'s oldest starts, `b` has the oldest queued deployment.
    assert!(store.transition(a1.id, running()).await.unwrap());
    assert_eq!(
        store.queued_environments(10).await.unwrap(),
        vec![env("b"), env("a"), env("c")]
    );
    assert_eq!(
        store
            .running()
            .await
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect::<Vec<_>>(),
        vec![a1.id]
    );

    let listed = store
        .list_deployments(&ListFilter {
            environment: Some("a".into()),
            limit: 10,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    let mut ids: Vec<i64> = listed.iter().map(|d| d.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![a1.id, a2.id]);
    let running_only = store
        .list_deployments(&ListFilter {
            state: Some(State::Running),
            limit: 10,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        running_only.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![a1.id]
    );

    let mut latest: Vec<(String, i64)> = store
        .latest_per_environment(None)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.environment, d.id))
        .collect();
    latest.sort();
    assert_eq!(
        latest,
        vec![
            ("a".into(), a2.id),
            ("b".into(), b1.id),
            ("c".into(), c1.id)
        ]
    );
    let latest_running = store
        .latest_per_environment(Some(State::Running))
        .await
        .unwrap();
    assert_eq!(
        latest_running.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![a1.id]
    );
}

/// A step run is one row per (step, server): saving it again replaces it.
pub(crate) async fn steps(store: &impl Store) {
    let deployment = insert(store, 10, "production").await;
    let step = |index: i64, server: &str, state: StepState| StepRun {
        deployment_id: deployment.id,
        step_index: index,
        step: format!("step {index}"),
        server: server.into(),
        state,
        exit_code: None,
        message: None,
        started_at: Some(1),
        finished_at: None,
    };
    store
        .save_step(&step(0, "web1", StepState::Running))
        .await
        .unwrap();
    store
        .save_step(&step(0, "web2", StepState::Running))
        .await
        .unwrap();
    let failed = StepRun {
        exit_code: Some(3),
        message: Some("exit 3".into()),
        finished_at: Some(2),
        ..step(0, "web1", StepState::Failure)
    };
    store.save_step(&failed).await.unwrap();
    store
        .save_step(&step(1, "web1", StepState::Pending))
        .await
        .unwrap();
    let steps = store.steps(deployment.id).await.unwrap();
    assert_eq!(steps.len(), 3);
    assert!(steps.contains(&failed));
    assert!(steps.contains(&step(0, "web2", StepState::Running)));
    assert!(store.steps(deployment.id + 1).await.unwrap().is_empty());

    // Orphan job groups: remembered once, by server, forgotten when killed.
    let jobs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(s, g)| (s.to_string(), g.to_string()))
            .collect()
    };
    store
        .add_orphan_jobs(&jobs(&[("web1", "d1-s0-web1"), ("web2", "d1-s0-web2")]))
        .await
        .unwrap();
    store
        .add_orphan_jobs(&jobs(&[("web1", "d1-s0-web1")]))
        .await
        .unwrap();
    assert_eq!(
        store.orphan_jobs(Some("web1")).await.unwrap(),
        jobs(&[("web1", "d1-s0-web1")])
    );
    assert_eq!(store.orphan_jobs(None).await.unwrap().len(), 2);
    store.orphan_killed("web1", "d1-s0-web1").await.unwrap();
    assert!(store.orphan_jobs(Some("web1")).await.unwrap().is_empty());
    assert_eq!(
        store.orphan_jobs(None).await.unwrap(),
        jobs(&[("web2", "d1-s0-web2")])
    );
}

/// A deployment's log read forwards by sequence, backwards a page at a time, and per step.
pub(crate) async fn deployment_logs(store: &impl Store) {
    let deployment = insert(store, 20, "production").await;
    let line = |seq: i64, stream: LogStream, text: &str| LogLine {
        deployment_id: deployment.id,
        seq,
        at: seq * 10,
        server: Some("web1".into()),
        step: Some("build".into()),
        stream,
        line: text.into(),
    };
    assert_eq!(store.last_log_seq(deployment.id).await.unwrap(), 0);
    let lines: Vec<LogLine> = (1..=5)
        .map(|seq| {
            let stream = if seq == 3 {
                LogStream::Dropship
            } else {
                LogStream::Stdout
            };
            line(seq, stream, &format!("line {seq}"))
        })
        .collect();
    store.append_logs(&lines[..2]).await.unwrap();
    store.append_logs(&lines[2..]).await.unwrap();
    assert_eq!(store.last_log_seq(deployment.id).await.unwrap(), 5);
    assert_eq!(store.logs(deployment.id, 0, 100).await.unwrap(), lines);
    assert_eq!(
        store.logs(deployment.id, 2, 2).await.unwrap(),
        lines[2..4].to_vec()
    );
    assert_eq!(
        store.logs_before(deployment.id, i64::MAX, 2).await.unwrap(),
        lines[3..].to_vec()
    );
    assert_eq!(
        store.logs_before(deployment.id, 4, 10).await.unwrap(),
        lines[..3].to_vec()
    );
    // The step's own output only, not Dropship's notes, the newest `limit` of it.
    let tail = store
        .step_output_tail(deployment.id, "build", "web1", 2)
        .await
        .unwrap();
    assert_eq!(tail, vec![lines[3].clone(), lines[4].clone()]);
    let tail = store
        .step_output_tail(deployment.id, "build", "web1", 3)
        .await
        .unwrap();
    assert_eq!(
        tail.iter().map(|l| l.seq).collect::<Vec<_>>(),
        vec![2, 4, 5]
    );
    assert!(
        store
            .step_output_tail(deployment.id, "build", "web2", 3)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A check-run update is delivered after the statuses enqueued before it, and the check run's
/// id is kept on the deployment.
pub(crate) async fn checks(store: &impl Store) {
    let deployment = insert(store, 30, "production").await;
    let started = Transition {
        status: Some(status(StatusState::InProgress)),
        ..running()
    };
    assert!(store.transition(deployment.id, started).await.unwrap());
    let check = CheckDraft {
        status: CheckStatus::InProgress,
        title: "Deploying".into(),
        body: serde_json::json!({"status": "in_progress"}),
    };
    store.enqueue_check(deployment.id, &check).await.unwrap();
    let items = store.statuses(deployment.id).await.unwrap();
    assert_eq!(
        items.iter().map(|i| i.kind).collect::<Vec<_>>(),
        vec![OutboxKind::Status, OutboxKind::Check]
    );
    assert_eq!(items[1].body, Some(check.body.clone()));
    let due = store.due_statuses(now_ms(), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].kind, OutboxKind::Status);
    store.status_delivered(due[0].id).await.unwrap();
    let due = store.due_statuses(now_ms(), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].kind, OutboxKind::Check);

    store.set_check_run(deployment.id, 4242).await.unwrap();
    let stored = store.deployment(deployment.id).await.unwrap().unwrap();
    assert_eq!(stored.check_run_id, Some(4242));
}

/// The containers a deployment started, and the servers whose containers are followed.
pub(crate) async fn containers(store: &impl Store) {
    let deployment = insert(store, 40, "production").await;
    let service = |name: &str| Service {
        deployment_id: deployment.id,
        server: "web1".into(),
        project: "shop".into(),
        service: name.into(),
        container: format!("shop-{name}-1"),
        state: "running".into(),
        status: "Up 2 seconds (healthy)".into(),
    };
    store
        .save_services(&[service("web"), service("worker")])
        .await
        .unwrap();
    let mut saved = store.services(deployment.id).await.unwrap();
    saved.sort_by(|a, b| a.service.cmp(&b.service));
    assert_eq!(saved, vec![service("web"), service("worker")]);
    assert!(store.services(deployment.id + 1).await.unwrap().is_empty());

    for server in ["web2", "web1", "web2"] {
        store.add_container_host(server).await.unwrap();
    }
    assert_eq!(
        store.container_hosts().await.unwrap(),
        vec!["web1".to_string(), "web2".to_string()]
    );
}

/// App log lines get ids in order, move their container's cursor, and each app keeps only its
/// newest `retention_bytes`.
pub(crate) async fn app_logs(store: &impl Store) {
    let line = |app: &str, container: &str, ts: i64, text: &str| AppLogLine {
        id: 0,
        repo: "acme/shop".into(),
        environment: "production".into(),
        app: app.into(),
        server: "web1".into(),
        container: container.into(),
        ts,
        stream: LogStream::Stdout,
        line: text.into(),
    };
    assert_eq!(store.log_cursor("c1").await.unwrap(), None);
    let stored = store
        .append_app_logs(
            vec![
                line("web", "c1", 100, "aaaaaaaaaa"),
                line("web", "c1", 200, "bbbbbbbbbb"),
                line("worker", "c2", 150, "cccccccccc"),
            ],
            1_000_000,
        )
        .await
        .unwrap();
    assert_eq!(stored.len(), 3);
    assert!(stored[0].id < stored[1].id && stored[1].id < stored[2].id);
    assert_eq!(
        store.log_cursor("c1").await.unwrap().map(|c| c.ts),
        Some(200)
    );
    let all = store
        .app_logs("acme/shop", "production", 0, 100)
        .await
        .unwrap();
    assert_eq!(all, stored);
    assert_eq!(
        store
            .app_logs("acme/shop", "production", stored[0].id, 1)
            .await
            .unwrap(),
        vec![stored[1].clone()]
    );
    assert_eq!(
        store
            .app_logs_tail("acme/shop", "production", 2)
            .await
            .unwrap(),
        stored[1..].to_vec()
    );

    // `web` may keep 22 bytes (a line counts with its newline, 11 here): its two newest
    // lines; its two oldest go, and `worker`'s line stays.
    store
        .append_app_logs(
            vec![
                line("web", "c1", 300, "dddddddddd"),
                line("web", "c1", 400, "eeeeeeeeee"),
            ],
            22,
        )
        .await
        .unwrap();
    let kept: Vec<String> = store
        .app_logs("acme/shop", "production", 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert_eq!(kept, vec!["cccccccccc", "dddddddddd", "eeeeeeeeee"]);
}

/// Routes are keyed by (repo, environment, app).
pub(crate) async fn routes(store: &impl Store) {
    let route = |app: &str, address: &str| RouteRecord {
        repo: "acme/shop".into(),
        environment: "production".into(),
        app: app.into(),
        hosts: vec![format!("{app}.example.com")],
        path_prefix: "/".into(),
        upstreams: vec![UpstreamRecord {
            address: address.into(),
            container: format!("{app}-1"),
        }],
    };
    store
        .save_route(&route("web", "127.0.0.1:8001"))
        .await
        .unwrap();
    store
        .save_route(&route("api", "127.0.0.1:8002"))
        .await
        .unwrap();
    store
        .save_route(&route("web", "127.0.0.1:9001"))
        .await
        .unwrap();
    let mut routes = store.routes().await.unwrap();
    routes.sort_by(|a, b| a.app.cmp(&b.app));
    assert_eq!(
        routes,
        vec![
            route("api", "127.0.0.1:8002"),
            route("web", "127.0.0.1:9001")
        ]
    );
    store
        .delete_route("acme/shop", "production", "api")
        .await
        .unwrap();
    assert_eq!(
        store.routes().await.unwrap(),
        vec![route("web", "127.0.0.1:9001")]
    );
}

/// Sessions, by the hash of their id, until they expire; audit entries, newest first.
pub(crate) async fn people(store: &impl Store) {
    let now = now_ms();
    store
        .create_session("live", "dee", now + 60_000)
        .await
        .unwrap();
    store.create_session("stale", "vic", now - 1).await.unwrap();
    assert_eq!(
        store.session_user("live", now).await.unwrap().as_deref(),
        Some("dee")
    );
    assert_eq!(store.session_user("stale", now).await.unwrap(), None);
    assert_eq!(store.session_user("unknown", now).await.unwrap(), None);
    store.delete_session("live").await.unwrap();
    assert_eq!(store.session_user("live", now).await.unwrap(), None);

    let entry = |at: Millis, action: &str| AuditEntry {
        at,
        actor: "dee".into(),
        action: action.into(),
        target: "acme/shop production".into(),
        detail: String::new(),
    };
    for (at, action) in [(1, "lock"), (2, "unlock"), (3, "redeploy")] {
        store.audit(&entry(at, action)).await.unwrap();
    }
    assert_eq!(
        store.audit_log(2).await.unwrap(),
        vec![entry(3, "redeploy"), entry(2, "unlock")]
    );
}

/// An environment is locked once until unlocked; previews are remembered with their ref.
pub(crate) async fn environments(store: &impl Store) {
    let lock = |by: &str| Lock {
        repo: "acme/shop".into(),
        environment: "production".into(),
        locked_by: by.into(),
        reason: "incident".into(),
        locked_at: 5,
        expires_at: None,
    };
    assert!(store.lock(&lock("dee")).await.unwrap());
    assert!(!store.lock(&lock("vic")).await.unwrap(), "locked twice");
    assert_eq!(store.locks(10).await.unwrap(), vec![lock("dee")]);
    assert!(store.unlock("acme/shop", "production", 10).await.unwrap());
    assert!(!store.unlock("acme/shop", "production", 10).await.unwrap());
    assert!(store.locks(10).await.unwrap().is_empty());

    // A lock for a while: in force until then, then no lock, and another may take its place.
    let until = |by: &str, locked_at: Millis, expires_at: Millis| Lock {
        locked_at,
        expires_at: Some(expires_at),
        ..lock(by)
    };
    assert!(store.lock(&until("dee", 100, 200)).await.unwrap());
    assert!(
        !store.lock(&until("vic", 150, 300)).await.unwrap(),
        "still in force"
    );
    assert_eq!(
        store.locks(199).await.unwrap(),
        vec![until("dee", 100, 200)]
    );
    assert!(store.locks(200).await.unwrap().is_empty(), "expired");
    assert!(!store.unlock("acme/shop", "production", 200).await.unwrap());
    assert!(
        store.lock(&until("vic", 200, 300)).await.unwrap(),
        "replaces the expired one"
    );
    assert_eq!(
        store.locks(250).await.unwrap(),
        vec![until("vic", 200, 300)]
    );

    store
        .set_preview("acme/shop", "pr-1", Some("feature"))
        .await
        .unwrap();
    store
        .set_preview("acme/shop", "pr-2", Some("feature"))
        .await
        .unwrap();
    store
        .set_preview("acme/shop", "pr-3", Some("other"))
        .await
        .unwrap();
    store.set_preview("acme/shop", "pr-2", None).await.unwrap();
    assert_eq!(
        store.previews_of_ref("acme/shop", "feature").await.unwrap(),
        vec!["pr-1".to_string()]
    );
    assert!(
        store
            .previews_of_ref("acme/other", "feature")
            .await
            .unwrap()
            .is_empty()
    );
}

/// An auto-deploy of one sha to one environment is claimed once; given back, it may be claimed
/// again.
pub(crate) async fn auto_deploys(store: &impl Store) {
    let claim = || store.claim_auto_deploy("acme/shop", "staging", "abc", "push");
    assert!(claim().await.unwrap());
    assert!(!claim().await.unwrap(), "claimed twice");
    assert!(
        store
            .claim_auto_deploy("acme/shop", "production", "abc", "push")
            .await
            .unwrap()
    );
    store
        .release_auto_deploy("acme/shop", "staging", "abc")
        .await
        .unwrap();
    assert!(claim().await.unwrap());
}
