//! Orders deployments: one at a time per repository and environment, in order of arrival; when
//! an environment frees up, the newest queued deployment runs and older queued ones end as
//! superseded.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::Engine;
use crate::store::State;

#[derive(Debug, Clone)]
pub struct Scheduler {
    engine: Engine,
    /// Notified when a deployment is queued.
    wake: Arc<Notify>,
}

impl Scheduler {
    pub fn new(engine: Engine, wake: Arc<Notify>) -> Scheduler {
        Scheduler { engine, wake }
    }

    /// Runs until `shutdown` resolves; running deployments are then abandoned, and the next
    /// start finishes them as interrupted.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut busy: HashSet<(String, String)> = HashSet::new();
        let mut running: JoinSet<(String, String)> = JoinSet::new();
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Err(error) = self.dispatch(&mut busy, &mut running).await {
                tracing::error!(error = format!("{error:#}"), "scheduling deployments");
            }
            tokio::select! {
                _ = &mut shutdown => {
                    running.abort_all();
                    return;
                }
                _ = &mut notified => {}
                Some(finished) = running.join_next(), if !running.is_empty() => {
                    match finished {
                        Ok(key) => { busy.remove(&key); }
                        Err(error) if error.is_panic() => tracing::error!("a deployment task panicked"),
                        Err(_) => {}
                    }
                    // A panicked task's key stays busy: better stuck than running twice.
                }
            }
        }
    }

    async fn dispatch(
        &self,
        busy: &mut HashSet<(String, String)>,
        running: &mut JoinSet<(String, String)>,
    ) -> anyhow::Result<()> {
        let queued = self.engine.store.queued().await?;
        let mut by_environment: BTreeMap<(String, String), Vec<_>> = BTreeMap::new();
        for deployment in queued {
            by_environment
                .entry((deployment.repo.clone(), deployment.environment.clone()))
                .or_default()
                .push(deployment);
        }
        for (key, mut waiting) in by_environment {
            if busy.contains(&key) {
                continue;
            }
            let newest = waiting.pop().expect("groups are never empty");
            for older in waiting {
                let description = format!("superseded by deployment {}", newest.public_id());
                self.engine
                    .transition(&older, State::Error, &description, None)
                    .await?;
                if let Ok(log) = self.engine.logs.open(older.id).await {
                    log.note(description);
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
        Ok(())
    }
}
