//! Following what Dropship's containers write, after their deployment ends.
//!
//! One watcher per server listens for managed containers starting (Docker's event stream) and
//! follows each running one's stdout and stderr through the logs API, with Docker's timestamps.
//! Lines are masked (secrets), stored per app with bounded retention, then published live.
//!
//! Resuming never loses or repeats a line: each container's cursor (newest timestamp stored,
//! and how many lines carried exactly that timestamp) is stored in the same transaction as the
//! lines; a resumed follow asks Docker from that second on and drops what the cursor covers.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::broadcast;

use super::{
    ContainerHost, ContainerInfo, Hosts, LABEL_APP, LABEL_ENVIRONMENT, LABEL_REPO, LogEntry,
};
use crate::config::Config;
use crate::store::{AppLogLine, LogCursor, Store};

/// Lines stored per write at most.
const BATCH: usize = 512;
/// The longest wait before a lost engine is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The followers of every watched server. Cheap to clone.
#[derive(Clone)]
pub struct Followers {
    inner: Arc<Inner>,
}

struct Inner {
    hosts: Hosts,
    store: Arc<dyn Store>,
    config: Arc<Config>,
    /// Each repository's secret masking, built once at start.
    redactors: crate::logs::Redactors,
    live: broadcast::Sender<Arc<AppLogLine>>,
    servers: Mutex<HashSet<String>>,
    following: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Followers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Followers").finish_non_exhaustive()
    }
}

/// What is left to skip of a container's log, from its stored cursor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Skip {
    cursor: LogCursor,
    /// Lines at exactly `cursor.ts` seen so far in this follow.
    seen_at_ts: i64,
}

impl Skip {
    /// Whether `ts` is already stored; advances the cursor past it if not.
    fn is_stored(&mut self, ts: i64) -> bool {
        if ts < self.cursor.ts {
            return true;
        }
        if ts == self.cursor.ts {
            self.seen_at_ts += 1;
            if self.seen_at_ts <= self.cursor.at_ts {
                return true;
            }
            self.cursor.at_ts += 1;
            return false;
        }
        self.cursor = LogCursor { ts, at_ts: 1 };
        self.seen_at_ts = 1;
        false
    }

    /// A new follow from the same cursor: counting at its timestamp starts again.
    fn restart(&mut self) {
        self.seen_at_ts = 0;
    }
}

impl Followers {
    pub fn new(
        hosts: Hosts,
        store: Arc<dyn Store>,
        config: Arc<Config>,
        redactors: crate::logs::Redactors,
    ) -> Followers {
        Followers {
            inner: Arc::new(Inner {
                hosts,
                store,
                config,
                redactors,
                live: broadcast::channel(4096).0,
                servers: Mutex::new(HashSet::new()),
                following: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// New lines as they are stored.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AppLogLine>> {
        self.inner.live.subscribe()
    }

    /// Starts watching `server` (once), and remembers it for [`Followers::resume`].
    pub fn watch(&self, server: &str) {
        let Some(host) = self.inner.hosts.get(server) else {
            return;
        };
        if !self
            .inner
            .servers
            .lock()
            .expect("not poisoned")
            .insert(server.to_string())
        {
            return;
        }
        let this = self.clone();
        let server = server.to_string();
        tokio::spawn(async move {
            if let Err(error) = this.inner.store.add_container_host(&server).await {
                tracing::warn!(
                    server,
                    error = format!("{error:#}"),
                    "remembering a container host"
                );
            }
            this.watch_server(server, host).await;
        });
    }

    /// Watches every server watched before a restart.
    pub async fn resume(&self) -> anyhow::Result<()> {
        for server in self.inner.store.container_hosts().await? {
            self.watch(&server);
        }
        Ok(())
    }

    async fn watch_server(&self, server: String, host: Arc<dyn ContainerHost>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            // Subscribe to starts before listing, so no start falls between the two.
            let mut starts = host.starts();
            match host.list(&[]).await {
                Ok(containers) => {
                    backoff = Duration::from_millis(500);
                    for container in containers.into_iter().filter(|c| c.running) {
                        self.follow(&server, &host, container);
                    }
                }
                Err(error) => {
                    tracing::debug!(server, %error, "listing containers to follow");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
            while let Some(event) = starts.next().await {
                match event {
                    Ok(id) => match host.list(&[]).await {
                        Ok(containers) => {
                            if let Some(container) = containers.into_iter().find(|c| c.id == id) {
                                self.follow(&server, &host, container);
                            }
                        }
                        Err(error) => {
                            tracing::debug!(server, %error, "listing a started container")
                        }
                    },
                    Err(error) => {
                        tracing::debug!(server, %error, "container events ended");
                        break;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Follows one container unless it is followed already. Containers of repositories this
    /// configuration does not know (another Dropship sharing the engine) are left alone.
    fn follow(&self, server: &str, host: &Arc<dyn ContainerHost>, container: ContainerInfo) {
        let known = container
            .label(LABEL_REPO)
            .is_some_and(|repo| self.inner.config.repo(repo).is_some());
        if !known {
            return;
        }
        if !self
            .inner
            .following
            .lock()
            .expect("not poisoned")
            .insert(container.id.clone())
        {
            return;
        }
        let this = self.clone();
        let host = host.clone();
        let server = server.to_string();
        tokio::spawn(async move {
            let id = container.id.clone();
            if let Err(error) = this.follow_container(&server, &host, &container).await {
                tracing::warn!(server, container = %container.name, error = format!("{error:#}"), "following a container's log");
                this.inner
                    .following
                    .lock()
                    .expect("not poisoned")
                    .remove(&id);
            }
        });
    }

    async fn follow_container(
        &self,
        server: &str,
        host: &Arc<dyn ContainerHost>,
        container: &ContainerInfo,
    ) -> anyhow::Result<()> {
        let repo = container.label(LABEL_REPO).unwrap_or_default().to_string();
        let environment = container
            .label(LABEL_ENVIRONMENT)
            .unwrap_or_default()
            .to_string();
        let app = container.label(LABEL_APP).unwrap_or_default().to_string();
        let redactor = self.inner.redactors.for_repo(&repo).clone();
        let retention = self.inner.config.containers.log_retention_bytes;
        let mut skip = Skip {
            cursor: self
                .inner
                .store
                .log_cursor(&container.id)
                .await?
                .unwrap_or_default(),
            seen_at_ts: 0,
        };
        loop {
            skip.restart();
            let mut stream = host
                .logs(&container.id, skip.cursor.ts, true)
                .ready_chunks(BATCH);
            while let Some(chunk) = stream.next().await {
                let mut lines = Vec::with_capacity(chunk.len());
                let mut failed = None;
                for item in chunk {
                    match item {
                        Ok(LogEntry {
                            timestamp_ns,
                            stream,
                            line,
                        }) => {
                            if skip.is_stored(timestamp_ns) {
                                continue;
                            }
                            lines.push(AppLogLine {
                                id: 0,
                                repo: repo.clone(),
                                environment: environment.clone(),
                                app: app.clone(),
                                server: server.to_string(),
                                container: container.id.clone(),
                                ts: timestamp_ns,
                                stream,
                                line: redactor.redact(line),
                            });
                        }
                        Err(error) => failed = Some(error),
                    }
                }
                for line in self.inner.store.append_app_logs(lines, retention).await? {
                    let _ = self.inner.live.send(Arc::new(line));
                }
                if let Some(error) = failed {
                    tracing::debug!(server, container = %container.name, %error, "log stream broke");
                    break;
                }
            }
            // The stream ended: the container stopped, or the engine was lost. Let go of it
            // first, then look: a start that came in between finds it free.
            self.inner
                .following
                .lock()
                .expect("not poisoned")
                .remove(&container.id);
            let running = host
                .state(&container.id)
                .await
                .map(|s| s.running)
                .unwrap_or(false);
            if !running
                || !self
                    .inner
                    .following
                    .lock()
                    .expect("not poisoned")
                    .insert(container.id.clone())
            {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_follow_drops_exactly_what_is_stored() {
        // Stored: up to ts 20, with two lines at 20.
        let mut skip = Skip {
            cursor: LogCursor { ts: 20, at_ts: 2 },
            seen_at_ts: 0,
        };
        let replayed = [10, 20, 20, 20, 21, 21];
        let kept: Vec<i64> = replayed
            .into_iter()
            .filter(|ts| !skip.is_stored(*ts))
            .collect();
        assert_eq!(kept, [20, 21, 21]);
        assert_eq!(skip.cursor, LogCursor { ts: 21, at_ts: 2 });
        skip.restart();
        let again: Vec<i64> = [21, 21, 22]
            .into_iter()
            .filter(|ts| !skip.is_stored(*ts))
            .collect();
        assert_eq!(again, [22]);
    }
}
