//! Orders deployments: one at a time per repository and environment, in order of arrival, at
//! most `max_running` at once. When an environment frees up, its newest queued deployment runs
//! and older queued ones end as superseded.
//!
//! The store is the durable record; the scheduler keeps the working set in memory. It loads the
//! queued deployments once at start, then learns of new ones through its [`Queue`] (intake
//! pushes after the commit), so dispatching never rescans the table.

use std::collections::{HashMap, HashSet, VecDeque};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::Engine;
use crate::store::{Deployment, State};

type Key = (String, String);

/// Hands recorded deployments to the scheduler.
#[derive(Debug, Clone)]
pub struct Queue {
    sender: mpsc::UnboundedSender<Queued>,
}

/// What the scheduler keeps of a queued deployment until it starts it: its id and its
/// environment, not the record. Under a flood of webhooks the scheduler (on the background
/// runtime, at a lower priority) may take its time to read the channel; what waits there must
/// stay small. The records are in the store.
#[derive(Debug)]
struct Queued {
    id: i64,
    key: Key,
}

impl Queue {
    /// Schedules a deployment that is already recorded as queued.
    pub fn push(&self, deployment: Deployment) {
        // If the scheduler has stopped, the deployment stays queued in the store and the next
        // start runs it.
        let _ = self.sender.send(Queued {
            id: deployment.id,
            key: (deployment.repo, deployment.environment),
        });
    }
}

#[derive(Debug)]
pub struct Scheduler {
    engine: Engine,
    receiver: mpsc::UnboundedReceiver<Queued>,
    max_running: usize,
    /// The queued deployments read from the store at start.
    waiting: Waiting,
}

/// What is waiting: deployment ids per environment, in order of arrival of each environment's
/// oldest waiting deployment. Only ids: a flood of webhooks must not hold every record in
/// memory; a record is read from the store when it starts.
#[derive(Debug, Default)]
struct Waiting {
    by_key: HashMap<Key, Vec<i64>>,
    order: VecDeque<Key>,
}

impl Waiting {
    fn push(&mut self, queued: Queued) {
        let list = self.by_key.entry(queued.key.clone()).or_default();
        if list.is_empty() {
            self.order.push_back(queued.key);
        }
        list.push(queued.id);
    }
}

impl Scheduler {
    /// Reads the queued deployments from the store. Call it before intake starts: a deployment
    /// recorded after this read reaches the scheduler only through the [`Queue`], so none is
    /// seen twice.
    pub async fn load(engine: Engine, max_running: usize) -> anyhow::Result<(Scheduler, Queue)> {
        let mut waiting = Waiting::default();
        for deployment in engine.store.queued().await? {
            waiting.push(Queued {
                id: deployment.id,
                key: (deployment.repo, deployment.environment),
            });
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        let scheduler = Scheduler {
            engine,
            receiver,
            max_running: max_running.max(1),
            waiting,
        };
        Ok((scheduler, Queue { sender }))
    }

    /// Runs until `shutdown` resolves; running deployments are then abandoned, and the next
    /// start finishes them as interrupted.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut waiting = std::mem::take(&mut self.waiting);
        let mut busy: HashSet<Key> = HashSet::new();
        let mut running: JoinSet<Key> = JoinSet::new();
        loop {
            self.dispatch(&mut waiting, &mut busy, &mut running).await;
            tokio::select! {
                _ = &mut shutdown => {
                    running.abort_all();
                    return;
                }
                Some(queued) = self.receiver.recv() => {
                    waiting.push(queued);
                    // Take everything already sent before dispatching once.
                    while let Ok(queued) = self.receiver.try_recv() {
                        waiting.push(queued);
                    }
                }
                Some(finished) = running.join_next(), if !running.is_empty() => {
                    match finished {
                        Ok(key) => { busy.remove(&key); }
                        // A panicked task's environment stays busy: better stuck than run twice.
                        Err(error) if error.is_panic() => tracing::error!("a deployment task panicked"),
                        Err(_) => {}
                    }
                }
            }
        }
    }

    /// Starts what may start, in order of arrival. Costs O(started + busy), never O(waiting):
    /// it stops as soon as every slot is taken.
    async fn dispatch(
        &self,
        waiting: &mut Waiting,
        busy: &mut HashSet<Key>,
        running: &mut JoinSet<Key>,
    ) {
        // Environments with a deployment running keep their place in line.
        let mut busy_waiting = Vec::new();
        while running.len() < self.max_running {
            let Some(key) = waiting.order.pop_front() else {
                break;
            };
            if busy.contains(&key) {
                busy_waiting.push(key);
                continue;
            }
            let mut ids = waiting.by_key.remove(&key).unwrap_or_default();
            let Some(newest_id) = ids.pop() else { continue };
            let newest = match self.engine.store.deployment(newest_id).await {
                Ok(Some(deployment)) => deployment,
                Ok(None) => continue,
                Err(error) => {
                    // Try again at the next event; keep the environment's place.
                    tracing::error!(
                        error = format!("{error:#}"),
                        "reading a deployment to start it"
                    );
                    ids.push(newest_id);
                    waiting.by_key.insert(key.clone(), ids);
                    busy_waiting.push(key);
                    break;
                }
            };
            for older_id in ids {
                let older = match self.engine.store.deployment(older_id).await {
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
                let description = format!("superseded by deployment {}", newest.public_id());
                if let Ok(log) = self
                    .engine
                    .logs
                    .open(older.id, self.engine.redactor(&older))
                    .await
                {
                    log.note(&description);
                    log.flush().await;
                }
                if let Err(error) = self
                    .engine
                    .transition(&older, State::Error, &description, None)
                    .await
                {
                    tracing::error!(
                        error = format!("{error:#}"),
                        deployment.id = older.id,
                        "superseding a deployment"
                    );
                }
            }
            busy.insert(key.clone());
            let engine = self.engine.clone();
            running.spawn(async move {
                if let Err(error) = engine.run(newest).await {
                    tracing::error!(error = format!("{error:#}"), "deployment could not be run");
                }
                key
            });
        }
        for key in busy_waiting.into_iter().rev() {
            waiting.order.push_front(key);
        }
    }
}
