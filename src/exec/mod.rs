//! Running a step's script on a server: over SSH ([`Ssh`]) or on this machine ([`Local`]).
//!
//! Both feed the script through the command's standard input, never its arguments, so that
//! secrets exported by the script do not show in the server's process list. The script runs
//! under `sh -e` inside `timeout`, so a step that outlives its timeout is killed on the server.

mod local;
mod ssh;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

pub use local::Local;
pub use ssh::{Forward, Lease, Remote, Ssh};

use crate::config::Config;
use crate::manifest::shell_quote;

/// Grace given to `timeout` to kill the command before Dropship drops the connection itself.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// A longer line is cut (and says so), to keep one runaway line from filling memory.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// What to run.
#[derive(Clone)]
pub struct Job {
    pub script: String,
    pub env: Vec<(String, String)>,
    pub secrets: Vec<(String, SecretString)>,
    pub working_dir: Option<String>,
    pub timeout: Duration,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("script", &self.script)
            .field("env", &self.env)
            .field(
                "secrets",
                &self
                    .secrets
                    .iter()
                    .map(|(name, _)| name)
                    .collect::<Vec<_>>(),
            )
            .field("working_dir", &self.working_dir)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// How the command ended. Any of these is an outcome to record, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// Killed by a signal (no exit code).
    Signal,
    TimedOut,
}

/// Dropship could not run the command at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    #[error("{server}: host key verification failed: {detail}")]
    HostKey { server: String, detail: String },
    #[error("{server}: cannot connect: {detail}")]
    Connect { server: String, detail: String },
    #[error("{server}: {detail}")]
    Io { server: String, detail: String },
}

/// A line of output, as it arrives.
pub type Output = mpsc::UnboundedSender<(Stream, String)>;

/// Runs commands on one server.
#[async_trait]
pub trait Executor: Send + Sync + fmt::Debug {
    /// Runs `job`, sending its output line by line, until it exits or times out.
    async fn run(&self, job: &Job, output: Output) -> Result<Exit, ExecError>;
    /// Connects (if needed) and describes the server (`Linux 6.1.0`).
    async fn check(&self) -> Result<String, ExecError>;
    /// A human description of how the host key is checked.
    fn host_key_status(&self) -> String;
}

/// The executors of every configured server, by name.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    /// Shared: the engine (and so the fleet) is cloned into every deployment task.
    executors: Arc<HashMap<String, Arc<dyn Executor>>>,
    /// The SSH connections among them, which also carry the Docker engines' sockets.
    ssh: Arc<HashMap<String, Arc<Ssh>>>,
}

impl Fleet {
    pub fn from_config(
        config: &Config,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Fleet> {
        let mut executors: HashMap<String, Arc<dyn Executor>> = HashMap::new();
        let mut connections = HashMap::new();
        for server in &config.servers {
            let executor: Arc<dyn Executor> = if server.is_local() {
                Arc::new(Local::new(&server.name))
            } else {
                let ssh = Ssh::new(
                    server,
                    &config.server.data_dir,
                    &config.ssh,
                    metrics.clone(),
                )?;
                connections.insert(server.name.clone(), ssh.clone());
                ssh
            };
            executors.insert(server.name.clone(), executor);
        }
        Ok(Fleet {
            executors: Arc::new(executors),
            ssh: Arc::new(connections),
        })
    }

    /// The SSH connection of an SSH server.
    pub fn ssh(&self, server: &str) -> Option<Arc<Ssh>> {
        self.ssh.get(server).cloned()
    }

    pub fn get(&self, server: &str) -> Option<Arc<dyn Executor>> {
        self.executors.get(server).cloned()
    }
}

/// The command line (for `sh -c`) and the standard input that run `job`.
pub(crate) fn render(job: &Job) -> (String, String) {
    let mut stdin = String::from("unset DROPSHIP_SCRIPT\n");
    for (name, value) in &job.env {
        stdin.push_str(&format!("export {name}={}\n", shell_quote(value)));
    }
    for (name, value) in &job.secrets {
        stdin.push_str(&format!(
            "export {name}={}\n",
            shell_quote(value.expose_secret())
        ));
    }
    if let Some(dir) = &job.working_dir {
        stdin.push_str(&format!("cd -- {} || exit 1\n", shell_quote(dir)));
    }
    stdin.push_str(&job.script);
    stdin.push('\n');
    let seconds = job.timeout.as_secs().max(1);
    let kill_after = KILL_GRACE.as_secs();
    let command = format!(
        "DROPSHIP_SCRIPT=$(cat) && export DROPSHIP_SCRIPT && \
         if command -v timeout >/dev/null 2>&1; then exec timeout -k {kill_after} {seconds} sh -ec 'eval \"$DROPSHIP_SCRIPT\"' </dev/null; \
         else exec sh -ec 'eval \"$DROPSHIP_SCRIPT\"' </dev/null; fi"
    );
    (command, stdin)
}

/// How long Dropship waits for a job before it gives up on the server's `timeout`.
pub(crate) fn deadline(job: &Job) -> Duration {
    job.timeout + KILL_GRACE + Duration::from_secs(5)
}

/// Reads `reader` line by line into `output` until it ends.
pub(crate) async fn pump<R: AsyncRead + Unpin>(reader: R, stream: Stream, output: Output) {
    let mut reader = BufReader::new(reader);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match (&mut reader)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut buffer)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let cut = !buffer.ends_with(b"\n") && buffer.len() >= MAX_LINE_BYTES;
                while buffer.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buffer.pop();
                }
                let mut line = String::from_utf8_lossy(&buffer).into_owned();
                if cut {
                    line.push_str(" [line cut at 64 KiB]");
                }
                let _ = output.send((stream, line));
            }
        }
    }
}

/// Maps a finished process's status, `timeout`'s 124 and a kill after it to [`Exit`].
pub(crate) fn exit_from(status: std::process::ExitStatus, elapsed: Duration, job: &Job) -> Exit {
    match status.code() {
        Some(124) if elapsed >= job.timeout => Exit::TimedOut,
        Some(137) if elapsed >= job.timeout => Exit::TimedOut,
        Some(code) => Exit::Code(code),
        None => Exit::Signal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_job_streams_lines_and_exit_code_and_hides_secrets_from_argv() {
        let local = Local::new("local");
        let job = Job {
            script: "echo \"$GREETING $TOKEN\"\necho oops >&2\nexit 3".into(),
            env: vec![("GREETING".into(), "it's".into())],
            secrets: vec![("TOKEN".into(), SecretString::from("s3cr3t"))],
            working_dir: Some("/".into()),
            timeout: Duration::from_secs(30),
        };
        let (command, _) = render(&job);
        assert!(!command.contains("s3cr3t"));
        assert!(!format!("{job:?}").contains("s3cr3t"));
        let (sender, mut lines) = mpsc::unbounded_channel();
        let exit = local.run(&job, sender).await.unwrap();
        assert_eq!(exit, Exit::Code(3));
        let mut seen = Vec::new();
        while let Ok(line) = lines.try_recv() {
            seen.push(line);
        }
        assert!(
            seen.contains(&(Stream::Stdout, "it's s3cr3t".into())),
            "{seen:?}"
        );
        assert!(seen.contains(&(Stream::Stderr, "oops".into())), "{seen:?}");
    }

    #[tokio::test]
    async fn failing_command_stops_the_script() {
        let job = Job {
            script: "false\necho not reached".into(),
            env: vec![],
            secrets: vec![],
            working_dir: None,
            timeout: Duration::from_secs(30),
        };
        let (sender, mut lines) = mpsc::unbounded_channel();
        assert_eq!(
            Local::new("local").run(&job, sender).await.unwrap(),
            Exit::Code(1)
        );
        assert!(lines.try_recv().is_err());
    }

    #[tokio::test]
    async fn timeout_kills_the_command() {
        let job = Job {
            script: "echo started; sleep 30; echo not reached".into(),
            env: vec![],
            secrets: vec![],
            working_dir: None,
            timeout: Duration::from_secs(1),
        };
        let (sender, _lines) = mpsc::unbounded_channel();
        assert_eq!(
            Local::new("local").run(&job, sender).await.unwrap(),
            Exit::TimedOut
        );
    }
}
