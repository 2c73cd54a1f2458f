//! [`Executor`] over SSH, through the system OpenSSH client (the `openssh` crate).
//!
//! One multiplexed master connection per server, opened on first use, reused by every step and
//! deployment, checked before each command and reopened when it has dropped, and closed after
//! `ssh.idle_timeout` without use. Each server gets its own `ssh -F` config file written by
//! Dropship, so `~/.ssh/config` and the global known-hosts file play no part: the host key is
//! checked strictly against the pinned key (or the key remembered by `accept-new`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use openssh::{ForwardType, KnownHosts, Session, SessionBuilder, Socket, Stdio};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::shell_quote;
use super::{
    ExecError, Executor, Exit, Job, KILL_DEADLINE, Output, Stream, deadline, exit_from,
    kill_script, killed_count, pump, render,
};
use crate::config::{HostKey, ServerEntry, SshSection};

pub struct Ssh {
    name: String,
    host: String,
    host_key: HostKey,
    config_file: PathBuf,
    known_hosts: PathBuf,
    control_dir: PathBuf,
    idle_timeout: Duration,
    /// The master connection and when it was last used.
    session: Mutex<Option<(Arc<Session>, Instant)>>,
    /// Commands running now; an idle master is closed only when this is zero.
    in_flight: AtomicUsize,
    metrics: Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for Ssh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ssh")
            .field("name", &self.name)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl Ssh {
    /// Writes the server's ssh config and known-hosts files under `data_dir/ssh` and starts
    /// the idle reaper.
    pub fn new(
        server: &ServerEntry,
        data_dir: &Path,
        settings: &SshSection,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Arc<Ssh>> {
        let host_key = server.host_key()?;
        let dir = data_dir.join("ssh");
        create_private_dir(&dir)?;
        let known_hosts = dir.join(format!("{}.known_hosts", server.name));
        let alias = format!("dropship-{}", server.name);
        match &host_key {
            HostKey::Pinned(key) => {
                std::fs::write(&known_hosts, format!("{alias} {key}\n"))
                    .with_context(|| format!("writing {}", known_hosts.display()))?;
            }
            HostKey::AcceptNew => {
                if !known_hosts.exists() {
                    std::fs::write(&known_hosts, "")
                        .with_context(|| format!("writing {}", known_hosts.display()))?;
                }
            }
        }
        let strict = match host_key {
            HostKey::Pinned(_) => "yes",
            HostKey::AcceptNew => "accept-new",
        };
        let mut config = format!(
            "Host *\n  HostName {host}\n  Port {port}\n  HostKeyAlias {alias}\n  UserKnownHostsFile {known}\n  \
             GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking {strict}\n  UpdateHostKeys no\n  BatchMode yes\n  \
             ConnectTimeout {timeout}\n  ServerAliveInterval 15\n  ServerAliveCountMax 3\n  LogLevel ERROR\n",
            host = server.host,
            port = server.port,
            known = known_hosts.display(),
            timeout = settings.connect_timeout.as_secs().max(1),
        );
        if let Some(user) = &server.user {
            config.push_str(&format!("  User {user}\n"));
        }
        if let Some(identity) = &server.identity_file {
            config.push_str(&format!(
                "  IdentityFile {}\n  IdentitiesOnly yes\n",
                identity.display()
            ));
        }
        let config_file = dir.join(format!("{}.config", server.name));
        std::fs::write(&config_file, config)
            .with_context(|| format!("writing {}", config_file.display()))?;
        // Control sockets must fit in a Unix socket path (108 bytes).
        let control_dir = if dir.as_os_str().len() < 60 {
            dir.clone()
        } else {
            let short = std::env::temp_dir().join(format!("dropship-ssh-{}", std::process::id()));
            create_private_dir(&short)?;
            short
        };
        let ssh = Arc::new(Ssh {
            name: server.name.clone(),
            host: server.host.clone(),
            host_key,
            config_file,
            known_hosts,
            control_dir,
            idle_timeout: settings.idle_timeout,
            session: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            metrics,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(reap_idle(Arc::downgrade(&ssh)));
        }
        Ok(ssh)
    }

    /// The live master connection, opening or reopening it as needed.
    async fn session(&self) -> Result<Arc<Session>, ExecError> {
        let mut guard = self.session.lock().await;
        let mut reconnect = false;
        if let Some((session, _)) = guard.as_ref() {
            if session.check().await.is_ok() {
                let session = session.clone();
                *guard = Some((session.clone(), Instant::now()));
                return Ok(session);
            }
            tracing::info!(server = %self.name, "ssh master connection dropped; reconnecting");
            *guard = None;
            self.metrics.ssh_closed();
            reconnect = true;
        }
        let mut builder = SessionBuilder::default();
        builder
            .config_file(&self.config_file)
            .control_directory(&self.control_dir)
            .known_hosts_check(match self.host_key {
                HostKey::Pinned(_) => KnownHosts::Strict,
                HostKey::AcceptNew => KnownHosts::Accept,
            });
        let session = builder
            .connect_mux(format!("dropship-{}", self.name))
            .await
            .map_err(|e| self.connect_error(&e))?;
        let session = Arc::new(session);
        *guard = Some((session.clone(), Instant::now()));
        self.metrics.ssh_opened(reconnect);
        tracing::debug!(server = %self.name, "ssh master connection opened");
        Ok(session)
    }

    fn connect_error(&self, error: &openssh::Error) -> ExecError {
        let mut detail = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(inner) = source {
            detail.push_str(": ");
            detail.push_str(&inner.to_string());
            source = inner.source();
        }
        let detail = detail.split_whitespace().collect::<Vec<_>>().join(" ");
        if detail.contains("Host key verification failed")
            || detail.contains("HOST IDENTIFICATION HAS CHANGED")
            || detail.contains("host key for")
        {
            let why = match self.host_key {
                HostKey::Pinned(_) => "the server's key does not match the pinned host_key",
                HostKey::AcceptNew => {
                    "the server's key differs from the one first seen (accept-new)"
                }
            };
            ExecError::HostKey {
                server: self.name.clone(),
                detail: why.to_string(),
            }
        } else {
            ExecError::Connect {
                server: self.name.clone(),
                detail,
            }
        }
    }

    async fn run_once(&self, job: &Job, output: &Output) -> Result<Exit, ExecError> {
        let session = self.session().await?;
        let (command, stdin) = render(job);
        let io = |what: &str, e: &dyn std::fmt::Display| ExecError::Io {
            server: self.name.clone(),
            detail: format!("{what}: {e}"),
        };
        let started = Instant::now();
        let mut child =
            Session::to_raw_command(session.clone(), format!("sh -c {}", shell_quote(&command)))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .await
                .map_err(|e| self.connect_error(&e))?;
        let mut input = child.stdin().take().expect("stdin is piped");
        input
            .write_all(stdin.as_bytes())
            .await
            .map_err(|e| io("writing the script", &e))?;
        input
            .shutdown()
            .await
            .map_err(|e| io("closing the script", &e))?;
        drop(input);
        let stdout = tokio::spawn(pump(
            child.stdout().take().expect("stdout is piped"),
            Stream::Stdout,
            output.clone(),
        ));
        let stderr = tokio::spawn(pump(
            child.stderr().take().expect("stderr is piped"),
            Stream::Stderr,
            output.clone(),
        ));
        let ended = tokio::select! {
            ended = tokio::time::timeout(deadline(job), child.wait()) => ended.ok(),
            () = job.stop.cancelled() => None,
        };
        let status = match ended {
            Some(status) => status.map_err(|e| io("waiting for the command", &e))?,
            // Stopped, or the server's `timeout` did not end it: kill the job's processes over
            // a channel of their own, then let this one go.
            None => {
                let killed = self.kill(std::slice::from_ref(&job.group)).await;
                super::end_readers([stdout, stderr]).await;
                return super::ended_by_dropship(job, killed);
            }
        };
        let _ = stdout.await;
        let _ = stderr.await;
        // ssh reports a lost connection as exit code 255 with no signal; make sure the master
        // is still there, or the failure was the connection's, not the command's.
        if status.code() == Some(255) && session.check().await.is_err() {
            return Err(ExecError::Connect {
                server: self.name.clone(),
                detail: "connection lost during the step".into(),
            });
        }
        Ok(exit_from(status, started.elapsed(), job))
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

async fn reap_idle(ssh: std::sync::Weak<Ssh>) {
    let period = {
        let Some(ssh) = ssh.upgrade() else { return };
        (ssh.idle_timeout / 4).max(Duration::from_millis(100))
    };
    let mut ticks = tokio::time::interval(period);
    loop {
        ticks.tick().await;
        let Some(ssh) = ssh.upgrade() else { return };
        if ssh.in_flight.load(Ordering::SeqCst) > 0 {
            continue;
        }
        let Ok(mut guard) = ssh.session.try_lock() else {
            continue;
        };
        if guard
            .as_ref()
            .is_some_and(|(_, used)| used.elapsed() >= ssh.idle_timeout)
        {
            if let Some((session, _)) = guard.take() {
                tracing::debug!(server = %ssh.name, "closing idle ssh master connection");
                ssh.metrics.ssh_closed();
                if let Ok(session) = Arc::try_unwrap(session) {
                    let _ = session.close().await;
                }
            }
        }
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Keeps the master connection from being closed as idle while held (a container log stream,
/// a health wait).
#[derive(Debug)]
pub struct Lease(Arc<Ssh>);

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A Unix socket here that leads to a socket on the server, through the master connection.
/// It lasts as long as that connection: [`Forward::is_current`] tells whether it still does.
#[derive(Debug)]
pub struct Forward {
    pub local: PathBuf,
    session: std::sync::Weak<Session>,
}

impl Forward {
    /// Whether the master connection that carries it is still the live one.
    pub fn is_current(&self, ssh: &Ssh) -> bool {
        let Ok(guard) = ssh.session.try_lock() else {
            return true;
        };
        match (guard.as_ref(), self.session.upgrade()) {
            (Some((live, _)), Some(mine)) => Arc::ptr_eq(live, &mine),
            _ => false,
        }
    }
}

/// Where a forward leads on the server.
#[derive(Debug, Clone)]
pub enum Remote {
    Unix(String),
    Tcp(String, u16),
}

impl Remote {
    fn socket(&self) -> Socket<'_> {
        match self {
            Remote::Unix(path) => Socket::UnixSocket {
                path: Path::new(path).into(),
            },
            Remote::Tcp(host, port) => Socket::TcpSocket {
                host: host.as_str().into(),
                port: *port,
            },
        }
    }
}

impl Ssh {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks the master connection, reopening it if it dropped.
    pub async fn connected(&self) -> Result<(), ExecError> {
        self.session().await.map(|_| ())
    }

    /// Holds the connection open (not idle) until the lease is dropped.
    pub fn lease(self: &Arc<Self>) -> Lease {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Lease(self.clone())
    }

    /// Opens a Unix socket at `local` that leads to `remote` on the server, over the master
    /// connection (opening it first if needed). A stale socket file at `local` is replaced.
    pub async fn forward(&self, local: &Path, remote: &Remote) -> Result<Forward, ExecError> {
        let session = self.session().await?;
        let _ = std::fs::remove_file(local);
        session
            .request_port_forward(
                ForwardType::Local,
                Socket::UnixSocket { path: local.into() },
                remote.socket(),
            )
            .await
            .map_err(|e| ExecError::Io {
                server: self.name.clone(),
                detail: format!("forwarding {remote:?} over SSH: {e}"),
            })?;
        Ok(Forward {
            local: local.to_path_buf(),
            session: Arc::downgrade(&session),
        })
    }

    /// Closes a forward opened by [`Ssh::forward`] (if its connection still exists).
    pub async fn close_forward(&self, forward: Forward, remote: &Remote) {
        if let Some(session) = forward.session.upgrade() {
            let _ = session
                .close_port_forward(
                    ForwardType::Local,
                    Socket::UnixSocket {
                        path: forward.local.as_path().into(),
                    },
                    remote.socket(),
                )
                .await;
        }
        let _ = std::fs::remove_file(&forward.local);
    }

    /// A directory for forwarded sockets, short enough for Unix socket paths.
    pub fn socket_dir(&self) -> &Path {
        &self.control_dir
    }
}

#[async_trait]
impl Executor for Ssh {
    async fn run(&self, job: &Job, output: Output) -> Result<Exit, ExecError> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _guard = InFlight(&self.in_flight);
        self.run_once(job, &output).await
    }

    async fn kill(&self, groups: &[String]) -> Result<u32, ExecError> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _guard = InFlight(&self.in_flight);
        let kill = async {
            let session = self.session().await?;
            let output = Session::to_raw_command(
                session,
                format!("sh -c {}", shell_quote(&kill_script(groups))),
            )
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| self.connect_error(&e))?;
            Ok(killed_count(&String::from_utf8_lossy(&output.stdout)))
        };
        tokio::time::timeout(KILL_DEADLINE, kill)
            .await
            .unwrap_or_else(|_| {
                Err(ExecError::Io {
                    server: self.name.clone(),
                    detail: format!(
                        "killing jobs {} took over {KILL_DEADLINE:?}",
                        groups.join(", ")
                    ),
                })
            })
    }

    async fn check(&self) -> Result<String, ExecError> {
        let session = self.session().await?;
        let output = session
            .command("uname")
            .arg("-sr")
            .output()
            .await
            .map_err(|e| self.connect_error(&e))?;
        if !output.status.success() {
            return Err(ExecError::Io {
                server: self.name.clone(),
                detail: format!(
                    "uname failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    fn host_key_status(&self) -> String {
        match &self.host_key {
            HostKey::Pinned(key) => {
                let kind = key.split_whitespace().next().unwrap_or("key");
                format!("pinned {kind}")
            }
            HostKey::AcceptNew => {
                let remembered = std::fs::read_to_string(&self.known_hosts)
                    .map(|t| !t.trim().is_empty())
                    .unwrap_or(false);
                if remembered {
                    "accept-new (key remembered)".into()
                } else {
                    "accept-new (no key seen yet)".into()
                }
            }
        }
    }
}
