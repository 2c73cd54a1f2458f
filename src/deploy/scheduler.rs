//! Orders deployments: one at a time per repository and environment, in order of arrival, at
//! most `max_running` at once. When an environment frees up, its newest queued deployment runs
//! and older queued ones end as superseded.
//!
//! The store is the durable record; the scheduler keeps a bounded working set in memory: the
//! environments with deployments waiting, in order of arrival, not the deployments. It reads
//! them from the store at start, then learns of new arrivals through its [`Queue`] (intake
//! pushes after the commit), so dispatching never rescans the table. Only when more than
//! `[server] queued_in_memory` environments wait, or a hand-over is lost, does it read the
//! store again as its working set empties, oldest first; until everything waiting fits, the
//! channel is ignored. Which deployment of an environment runs, and which are superseded, is
//! always read from the store when the environment's turn comes.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{Runner, StopReason};
use crate::store::{Deployment, State, Store};

/// A repository and environment.
type Key = (String, String);

/// How long after a failed read of the store the scheduler reads again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);
/// Failed reads of environments' deployments in one dispatching pass at most.
const MAX_FAILED_READS: usize = 8;

/// Hands recorded deployments to the scheduler.
#[derive(Debug, Clone)]
pub struct Queue {
    sender: mpsc::Sender<Key>,
    /// Set when a deployment could not be handed over (the channel was full): the scheduler
    /// then reads the store instead.
    overflow: Arc<AtomicBool>,
}

impl Queue {
    /// Schedules a deployment that is already recorded as queued. Never waits: if the
    /// scheduler's channel is full, it finds this one in the store later.
    pub fn push(&self, deployment: &Deployment) {
        let key = (deployment.repo.clone(), deployment.environment.clone());
        // If the scheduler has stopped, the deployment stays queued in the store and the next
        // start runs it.
        if self.sender.try_send(key).is_err() {
            self.overflow.store(true, Ordering::Release);
        }
    }
}

#[derive(Debug)]
pub struct Scheduler {
    /// Runs each deployment started, and ends those a newer one supersedes.
    runner: Runner,
    /// Where queued deployments wait.
    store: Arc<dyn Store>,
    /// How long running deployments may go on after shutdown begins (`shutdown_grace`).
    grace: Duration,
    receiver: mpsc::Receiver<Key>,
    overflow: Arc<AtomicBool>,
    max_running: usize,
    /// Environments kept waiting in memory at most, and the room in the channel.
    max_waiting: usize,
}

/// The environments with deployments waiting, in order of arrival of each one's oldest waiting
/// deployment; at most `max_waiting` of them.
#[derive(Debug, Default)]
struct Waiting {
    keys: HashSet<Key>,
    order: VecDeque<Key>,
    /// Whether the store may hold waiting environments that are not here: at start, and after a
    /// hand-over was lost. While it is set, the channel is ignored and the store, read oldest
    /// first, is the only source, so that the order of arrival holds.
    from_store: bool,
}

impl Waiting {
    fn push(&mut self, key: Key) {
        if self.keys.insert(key.clone()) {
            self.order.push_back(key);
        }
    }

    /// An environment handed over through the channel.
    fn handed_over(&mut self, key: Key, max_waiting: usize) {
        if self.from_store || (self.keys.len() >= max_waiting && !self.keys.contains(&key)) {
            self.from_store = true;
        } else {
            self.push(key);
        }
    }

    /// The next environment in line, taken out.
    fn pop(&mut self) -> Option<Key> {
        let key = self.order.pop_front()?;
        self.keys.remove(&key);
        Some(key)
    }
}

impl Scheduler {
    /// Builds the scheduler; it reads what is queued from the store when it runs.
    pub fn new(
        runner: Runner,
        store: Arc<dyn Store>,
        max_running: usize,
        max_waiting: usize,
        grace: Duration,
    ) -> (Scheduler, Queue) {
        let max_waiting = max_waiting.max(1);
        let (sender, receiver) = mpsc::channel(max_waiting);
        let overflow = Arc::new(AtomicBool::new(false));
        let scheduler = Scheduler {
            runner,
            store,
            grace,
            receiver,
            overflow: overflow.clone(),
            max_running: max_running.max(1),
            max_waiting,
        };
        (scheduler, Queue { sender, overflow })
    }

    /// Runs until `shutdown` resolves; running deployments are then abandoned, and the next
    /// start finishes them as interrupted.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut waiting = Waiting {
            from_store: true,
            ..Waiting::default()
        };
        let mut busy: HashSet<Key> = HashSet::new();
        let mut running: JoinSet<(Key, bool)> = JoinSet::new();
        // A deployment the store would not start (its environment's lease was held) is looked
        // for again in the store after `RETRY`.
        let mut deferred = false;
        loop {
            let refill_failed = self.refill(&mut waiting).await;
            let dispatch_failed = self.dispatch(&mut waiting, &mut busy, &mut running).await;
            // A failed read of the store is tried again after `RETRY`.
            let read_failed = refill_failed || dispatch_failed || std::mem::take(&mut deferred);
            tokio::select! {
                _ = &mut shutdown => {
                    self.wind_down(running).await;
                    return;
                }
                Some(key) = self.receiver.recv() => {
                    waiting.handed_over(key, self.max_waiting);
                    // Take everything already sent before dispatching once.
                    while let Ok(key) = self.receiver.try_recv() {
                        waiting.handed_over(key, self.max_waiting);
                    }
                }
                _ = tokio::time::sleep(RETRY), if read_failed => {}
                Some(finished) = running.join_next(), if !running.is_empty() => {
                    match finished {
                        Ok((key, waits)) => {
                            busy.remove(&key);
                            if waits {
                                waiting.from_store = true;
                                deferred = true;
                            }
                        }
                        // `run_to_end` ends a run that panics; a task that panicked anyway
                        // leaves its environment busy: better stuck than run twice.
                        Err(error) if error.is_panic() => tracing::error!("a deployment task panicked"),
                        Err(_) => {}
                    }
                }
            }
        }
    }

    /// On shutdown: nothing new starts (queued deployments stay queued for the next start),
    /// and running ones that have not begun a step go back to the queue at once; the others
    /// may finish within the grace; then they are stopped (their steps' processes killed) and
    /// end `error` ("interrupted: shutdown"), each within the kill deadline.
    async fn wind_down(&self, mut running: JoinSet<(Key, bool)>) {
        if running.is_empty() {
            return;
        }
        self.runner.stop_unbegun(StopReason::Shutdown);
        tracing::info!(
            running = running.len(),
            grace = %humantime::format_duration(self.grace),
            "shutting down: letting running deployments finish"
        );
        let finish = async { while running.join_next().await.is_some() {} };
        if tokio::time::timeout(self.grace, finish).await.is_ok() {
            return;
        }
        tracing::warn!(
            running = running.len(),
            "shutdown grace over: stopping the deployments still running"
        );
        self.runner.stop_all(StopReason::Shutdown);
        let stopped = async { while running.join_next().await.is_some() {} };
        // Killing takes at most the kill deadline per step; past that, they are dropped, and
        // the next start ends them `error` and kills what they left.
        if tokio::time::timeout(crate::exec::KILL_DEADLINE + RETRY, stopped)
            .await
            .is_err()
        {
            tracing::error!(
                running = running.len(),
                "deployments did not stop in time; abandoning them"
            );
            running.abort_all();
        }
    }

    /// Reads the environments with queued deployments from the store, oldest arrival first,
    /// while it may hold some that are not waiting here, once at most half of `max_waiting` is
    /// taken. True when the read failed.
    async fn refill(&self, waiting: &mut Waiting) -> bool {
        if self.overflow.swap(false, Ordering::Acquire) {
            waiting.from_store = true;
        }
        if !waiting.from_store || waiting.keys.len() > self.max_waiting / 2 {
            return false;
        }
        let read = self
            .store
            .queued_environments(self.max_waiting as i64)
            .await;
        let failed = read.is_err();
        match read {
            Ok(keys) => {
                // Everything waiting fit: from here on the channel hands over what arrives.
                waiting.from_store = keys.len() == self.max_waiting;
                for key in keys {
                    if waiting.keys.len() >= self.max_waiting {
                        waiting.from_store = true;
                        break;
                    }
                    waiting.push(key);
                }
            }
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "reading the queued deployments"
                );
            }
        }
        failed
    }

    /// Starts what may start, in order of arrival. Costs O(started + busy), never O(waiting):
    /// it stops as soon as every slot is taken. True when a read of the store failed.
    async fn dispatch(
        &self,
        waiting: &mut Waiting,
        busy: &mut HashSet<Key>,
        running: &mut JoinSet<(Key, bool)>,
    ) -> bool {
        // Environments with a deployment running keep their place in line.
        let mut busy_waiting = Vec::new();
        let mut failures = 0;
        while running.len() < self.max_running {
            let Some(key) = waiting.pop() else {
                break;
            };
            if busy.contains(&key) {
                busy_waiting.push(key);
                continue;
            }
            let (newest, older) = match self.queued_in(&key).await {
                Ok(Some(queued)) => queued,
                // Nothing waits there any more (a deployment handed over twice).
                Ok(None) => continue,
                Err(error) => {
                    // Tried again after `RETRY`, in its place; the other environments go on.
                    tracing::error!(
                        repo = %key.0, environment = %key.1,
                        error = format!("{error:#}"),
                        "reading a deployment to start it"
                    );
                    busy_waiting.push(key);
                    // A bad row holds back its own environment only; a store that is down
                    // is not asked again and again in one pass.
                    failures += 1;
                    if failures == MAX_FAILED_READS {
                        break;
                    }
                    continue;
                }
            };
            for older_id in older {
                let older = match self.store.deployment(older_id).await {
                    Ok(Some(older)) if older.state == State::Queued => older,
                    Ok(_) => continue,
                    Err(error) => {
                        tracing::error!(
                            error = format!("{error:#}"),
                            deployment.id = older_id,
                            "reading a deployment to supersede it"
                        );
                        continue;
                    }
                };
                self.runner.supersede(&older, &newest).await;
            }
            busy.insert(key.clone());
            let runner = self.runner.clone();
            running.spawn(async move {
                let waits = runner.run_to_end(newest).await;
                (key, waits)
            });
        }
        for key in busy_waiting.into_iter().rev() {
            waiting.keys.insert(key.clone());
            waiting.order.push_front(key);
        }
        failures > 0
    }

    /// The newest queued deployment of an environment, and the ids of the older ones queued
    /// there; none if nothing is queued there.
    async fn queued_in(
        &self,
        (repo, environment): &Key,
    ) -> anyhow::Result<Option<(Deployment, Vec<i64>)>> {
        let mut ids = self.store.queued_in(repo, environment).await?;
        while let Some(id) = ids.pop() {
            match self.store.deployment(id).await? {
                Some(newest) if newest.state == State::Queued => return Ok(Some((newest, ids))),
                // Started or ended since the list was read.
                _ => continue,
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;

    use tokio_util::sync::CancellationToken;

    use super::{Queue, Scheduler};
    use crate::config::Config;
    use crate::github::{ApiError, FixedManifest, ManifestFile, ManifestSource};
    use crate::logs::Event;
    use crate::server::Local;
    use crate::store::{Deployment, Inserted, NewDeployment, State, Transition};

    const MANIFEST: &str = "version: 1\nenvironments:\n  production:\n    servers: [local]\ntasks:\n  deploy:\n    - name: ok\n      run: \"true\"\n";

    /// Dropship on this machine, its data in `data`, manifests from `manifests`.
    async fn local(data: &std::path::Path, manifests: Arc<dyn ManifestSource>) -> Local {
        let config = Config::from_toml(&format!(
            "[server]\ndata_dir = \"{}\"\n[[servers]]\nname = \"local\"\nhost = \"local\"\n[[repos]]\nname = \"acme/shop\"\nservers = [\"local\"]\n",
            data.display()
        ))
        .unwrap();
        crate::server::local(Arc::new(config), manifests)
            .await
            .unwrap()
    }

    /// Records a deployment of `sha` to acme/shop's production.
    async fn insert(local: &Local, github_id: i64, sha: &str) -> Deployment {
        let new = NewDeployment {
            github_id: Some(github_id),
            repo: "acme/shop".into(),
            environment: "production".into(),
            task: "deploy".into(),
            git_ref: "main".into(),
            sha: sha.into(),
            payload: serde_json::json!({}),
            description: None,
            creator: None,
            installation_id: None,
            transient: false,
            production: true,
        };
        match local
            .store
            .insert_deployment(new, None, None)
            .await
            .unwrap()
        {
            Inserted::New(deployment) => deployment,
            Inserted::Duplicate(_) => panic!("a duplicate"),
        }
    }

    /// A running scheduler with `max_running` places; cancel the token to stop it.
    fn start(
        local: &Local,
        max_running: usize,
    ) -> (Queue, CancellationToken, tokio::task::JoinHandle<()>) {
        let (scheduler, queue) = Scheduler::new(
            local.runner.clone(),
            local.store.clone(),
            max_running,
            10,
            Duration::from_secs(1),
        );
        let stop = CancellationToken::new();
        let running = tokio::spawn(scheduler.run(stop.clone().cancelled_owned()));
        (queue, stop, running)
    }

    const BROKEN: &str = "bad0000000000000000000000000000000000000";
    const GOOD: &str = "600d000000000000000000000000000000000000";

    /// A manifest source that panics for one commit, standing in for a bug anywhere in a run.
    #[derive(Debug)]
    struct PanicsAt;

    #[async_trait]
    impl ManifestSource for PanicsAt {
        async fn file(
            &self,
            _repo: &str,
            sha: &str,
            path: &str,
            _installation: Option<i64>,
        ) -> Result<Option<ManifestFile>, ApiError> {
            assert_ne!(sha, BROKEN, "a bug in a deployment's run");
            Ok(Some(ManifestFile {
                path: path.into(),
                text: MANIFEST.into(),
            }))
        }

        async fn tarball(
            &self,
            _repo: &str,
            _sha: &str,
            _installation: Option<i64>,
        ) -> Result<Vec<u8>, ApiError> {
            Err(ApiError::local("no tarball here"))
        }
    }

    /// A run that panics ends its deployment `error`, saying so, and frees its environment:
    /// the next deployment there runs, with one running place in all.
    #[tokio::test]
    async fn a_panic_in_a_run_ends_the_deployment_error_and_frees_its_environment() {
        let data = tempfile::tempdir().unwrap();
        let local = local(data.path(), Arc::new(PanicsAt)).await;
        let mut events = local.bus.subscribe();
        let (queue, stop, scheduler) = start(&local, 1);
        let mut ids = Vec::new();
        for (github_id, sha) in [(1, BROKEN), (2, GOOD)] {
            let deployment = insert(&local, github_id, sha).await;
            ids.push(deployment.id);
            queue.push(&deployment);
            // The second is pushed once the first has started, so it is not superseded.
            if sha == BROKEN {
                loop {
                    let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
                        .await
                        .expect("the first deployment starts")
                        .unwrap();
                    if matches!(
                        &*event,
                        Event::State {
                            state: State::Running,
                            ..
                        }
                    ) {
                        break;
                    }
                }
            }
        }
        let mut ended = std::collections::HashMap::new();
        while ended.len() < 2 {
            let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
                .await
                .expect("both deployments end")
                .unwrap();
            if let Event::State {
                deployment_id,
                state,
                description,
            } = &*event
                && state.is_final()
            {
                ended.insert(*deployment_id, (*state, description.clone().unwrap()));
            }
        }
        let (state, description) = &ended[&ids[0]];
        assert_eq!(*state, State::Error);
        assert!(description.contains("a bug"), "{description}");
        assert_eq!(ended[&ids[1]].0, State::Success, "{:?}", ended[&ids[1]]);
        stop.cancel();
        scheduler.await.unwrap();
    }

    /// A deployment the store shows running (another Dropship's, or one no memory knows of)
    /// holds its environment: a queued one there waits, and runs once that one ended.
    #[tokio::test]
    async fn the_store_holds_each_environments_run_lease() {
        let data = tempfile::tempdir().unwrap();
        let manifest = FixedManifest::new(ManifestFile {
            path: "dropship.yml".into(),
            text: MANIFEST.into(),
        });
        let local = local(data.path(), Arc::new(manifest)).await;
        let holder = insert(&local, 1, GOOD).await;
        let transition = |state| Transition {
            state,
            description: None,
            environment_url: None,
            status: None,
            check: None,
        };
        assert!(
            local
                .store
                .transition(holder.id, transition(State::Running))
                .await
                .unwrap()
        );
        let waiting = insert(&local, 2, GOOD).await;
        let mut events = local.bus.subscribe();
        let (queue, stop, scheduler) = start(&local, 4);
        queue.push(&waiting);
        // Tried, and refused by the store: its log says why it waits.
        loop {
            let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
                .await
                .expect("a try to start it")
                .unwrap();
            match &*event {
                Event::Log(line) if line.deployment_id == waiting.id => {
                    assert_eq!(
                        line.line,
                        "waiting: another deployment of production is running"
                    );
                    break;
                }
                Event::State { deployment_id, .. } => {
                    assert_ne!(*deployment_id, waiting.id, "it ran beside the holder")
                }
                _ => {}
            }
        }
        let state = local
            .store
            .deployment(waiting.id)
            .await
            .unwrap()
            .unwrap()
            .state;
        assert_eq!(state, State::Queued);
        assert!(
            local
                .store
                .transition(holder.id, transition(State::Success))
                .await
                .unwrap()
        );
        loop {
            let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
                .await
                .expect("it runs once the holder ended")
                .unwrap();
            if let Event::State {
                deployment_id,
                state,
                ..
            } = &*event
                && *deployment_id == waiting.id
                && state.is_final()
            {
                assert_eq!(*state, State::Success);
                break;
            }
        }
        stop.cancel();
        scheduler.await.unwrap();
    }
}
