//! Real OpenSSH servers on 127.0.0.1, with throwaway host and client keys.
//!
//! They log in a dedicated user, `dropship-test`, whose home is empty and whose shell is
//! `/bin/sh`, so no profile script slows or changes a command.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use std::io::{BufRead, BufReader};

pub const USER: &str = "dropship-test";

/// A client key pair that every test server accepts.
pub struct ClientKey {
    _dir: tempfile::TempDir,
    pub private: PathBuf,
    pub public: String,
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "dropship-test", "-f"])
        .arg(path)
        .status()
        .expect("running ssh-keygen");
    assert!(status.success(), "ssh-keygen failed");
}

impl ClientKey {
    pub fn new() -> ClientKey {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("id_ed25519");
        keygen(&private);
        let public = std::fs::read_to_string(dir.path().join("id_ed25519.pub")).unwrap();
        ClientKey {
            _dir: dir,
            private,
            public,
        }
    }
}

/// Whether sshd can run here; creates the test user once. `None` means skip (see
/// [`super::missing`]).
pub fn available() -> Option<()> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        if !Path::new("/usr/sbin/sshd").exists() {
            return Err("OpenSSH server (/usr/sbin/sshd)".into());
        }
        std::fs::create_dir_all("/run/sshd").map_err(|e| format!("/run/sshd: {e}"))?;
        let exists = Command::new("id")
            .arg(USER)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !exists {
            let status = Command::new("useradd")
                .args([
                    "--system",
                    "--create-home",
                    "--home-dir",
                    "/var/lib/dropship-test",
                    "--shell",
                    "/bin/sh",
                    USER,
                ])
                .status()
                .map_err(|e| format!("useradd: {e}"))?;
            // 9: created meanwhile by another test binary.
            if !status.success() && status.code() != Some(9) {
                return Err(format!("the test user {USER} (useradd needs root)"));
            }
        }
        // A --system account is locked (`!`), and sshd without PAM refuses locked accounts:
        // `*` allows key logins and no password.
        let status = Command::new("usermod")
            .args(["-p", "*", USER])
            .status()
            .map_err(|e| format!("usermod: {e}"))?;
        if !status.success() {
            return Err(format!(
                "unlocking the test user {USER} (usermod needs root)"
            ));
        }
        Ok(())
    });
    match ready {
        Ok(()) => Some(()),
        Err(what) => {
            super::missing(what);
            None
        }
    }
}

/// One running `sshd -D`.
pub struct Sshd {
    child: Child,
    config: PathBuf,
    pub port: u16,
    /// `ssh-ed25519 AAAA...`: what an operator pins.
    pub host_key: String,
    _dir: tempfile::TempDir,
}

impl Sshd {
    pub fn start(client: &ClientKey) -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let host_key_path = dir.path().join("host_ed25519");
        keygen(&host_key_path);
        let host_key = std::fs::read_to_string(dir.path().join("host_ed25519.pub")).unwrap();
        let host_key = host_key
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(&authorized, &client.public).unwrap();
        std::fs::set_permissions(&authorized, std::fs::Permissions::from_mode(0o644)).unwrap();
        for _attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let config = dir.path().join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPidFile none\nUsePAM no\n\
                     StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                     AllowUsers {USER}\nMaxSessions 200\nMaxStartups 200:30:400\nLogLevel INFO\nPrintMotd no\n",
                    hk = host_key_path.display(),
                    ak = authorized.display(),
                ),
            )
            .unwrap();
            if let Some(child) = launch(&config) {
                return Sshd {
                    child,
                    port,
                    host_key,
                    config,
                    _dir: dir,
                };
            }
        }
        panic!("sshd could not bind a port after 5 attempts");
    }

    /// Kills the server and every connection it holds, then starts it again on the same port
    /// with the same keys: what a rebooted machine looks like.
    pub fn restart(&mut self) {
        self.kill();
        for _attempt in 0..20 {
            if let Some(child) = launch(&self.config) {
                self.child = child;
                return;
            }
        }
        panic!("sshd did not come back on port {}", self.port);
    }

    /// The `[[servers]]` entry for this server.
    pub fn server_toml(
        &self,
        name: &str,
        roles: &[&str],
        client: &ClientKey,
        host_key: &str,
    ) -> String {
        let roles = roles
            .iter()
            .map(|r| format!("\"{r}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "[[servers]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"{USER}\"\nidentity_file = \"{key}\"\nhost_key = \"{host_key}\"\nroles = [{roles}]\n\n",
            port = self.port,
            key = client.private.display(),
        )
    }
}

/// Starts `sshd -D` in its own process group; `None` if it could not bind its port.
fn launch(config: &Path) -> Option<Child> {
    let mut child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sshd");
    let stderr = child.stderr.take().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Server listening on") {
                let _ = ready_tx.send(true);
            } else if line.contains("Address already in use") || line.contains("Cannot bind") {
                let _ = ready_tx.send(false);
            }
        }
    });
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(true) => Some(child),
        Ok(false) => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
        Err(_) => panic!("sshd neither started nor failed within 10 s"),
    }
}

impl Sshd {
    /// Kills the listener and its connections (each connection's process starts a session of
    /// its own, so a process-group kill would miss it).
    fn kill(&mut self) {
        // Children first, walking down: each connection is a monitor, its unprivileged child
        // (which holds the socket) and the session's processes.
        let mut pending = vec![self.child.id()];
        let mut all = Vec::new();
        while let Some(pid) = pending.pop() {
            all.push(pid);
            let children = Command::new("ps")
                .args(["-o", "pid=", "--ppid", &pid.to_string()])
                .output();
            if let Ok(out) = children {
                pending.extend(
                    String::from_utf8_lossy(&out.stdout)
                        .split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
        let pids: Vec<String> = all.iter().map(u32::to_string).collect();
        let _ = Command::new("kill").arg("-KILL").args(&pids).status();
        let _ = self.child.wait();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}
