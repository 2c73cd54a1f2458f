//! [`Executor`] on this machine, for the built-in `local` server.

use std::process::Stdio;
use std::time::Instant;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{
    ExecError, Executor, Exit, Job, KILL_DEADLINE, Output, Stream, deadline, exit_from,
    kill_script, killed_count, pump, render,
};

#[derive(Debug)]
pub struct Local {
    name: String,
}

impl Local {
    pub fn new(name: &str) -> Local {
        Local {
            name: name.to_string(),
        }
    }

    fn io_error(&self, what: &str, error: std::io::Error) -> ExecError {
        ExecError::Io {
            server: self.name.clone(),
            detail: format!("{what}: {error}"),
        }
    }
}

#[async_trait]
impl Executor for Local {
    async fn run(&self, job: &Job, output: Output) -> Result<Exit, ExecError> {
        let (command, stdin) = render(job);
        let started = Instant::now();
        // A process group of its own (never Dropship's), and no mark but the job's.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .process_group(0)
            .env_remove("DROPSHIP_JOB")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| self.io_error("starting sh", e))?;
        let mut input = child.stdin.take().expect("stdin is piped");
        input
            .write_all(stdin.as_bytes())
            .await
            .map_err(|e| self.io_error("writing the script", e))?;
        drop(input);
        let stdout = tokio::spawn(pump(
            child.stdout.take().expect("stdout is piped"),
            Stream::Stdout,
            output.clone(),
        ));
        let stderr = tokio::spawn(pump(
            child.stderr.take().expect("stderr is piped"),
            Stream::Stderr,
            output,
        ));
        let ended = tokio::select! {
            ended = tokio::time::timeout(deadline(job), child.wait()) => ended.ok(),
            () = job.stop.cancelled() => None,
        };
        let status = match ended {
            Some(status) => status.map_err(|e| self.io_error("waiting for the command", e))?,
            None => {
                let killed = self.kill(std::slice::from_ref(&job.group)).await;
                super::end_readers([stdout, stderr]).await;
                let _ = child.kill().await;
                return super::ended_by_dropship(job, killed);
            }
        };
        let _ = stdout.await;
        let _ = stderr.await;
        Ok(exit_from(status, started.elapsed(), job))
    }

    async fn kill(&self, groups: &[String]) -> Result<u32, ExecError> {
        let run = Command::new("sh")
            .arg("-c")
            .arg(kill_script(groups))
            .env_remove("DROPSHIP_JOB")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(KILL_DEADLINE, run)
            .await
            .map_err(|_| self.io_error("killing a job", std::io::ErrorKind::TimedOut.into()))?
            .map_err(|e| self.io_error("killing a job", e))?;
        Ok(killed_count(&String::from_utf8_lossy(&output.stdout)))
    }

    async fn check(&self) -> Result<String, ExecError> {
        let output = Command::new("uname")
            .arg("-sr")
            .output()
            .await
            .map_err(|e| self.io_error("running uname", e))?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    fn host_key_status(&self) -> String {
        "local (no SSH)".to_string()
    }
}
