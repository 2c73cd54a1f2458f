//! Compose steps: the stack's files, fetched at the deployment's sha, are copied into
//! `containers.compose_root/PROJECT` on the server (and nowhere else), then `docker compose`
//! (or the older `docker-compose`) brings the project up or down over SSH.

use base64::Engine as _;

use super::container::Say;
use super::{Runner, StepOutcome};
use crate::exec::shell_quote;
use crate::manifest::{ComposePlan, PlannedStep, safe_relative_path, valid_project};
use crate::store::Deployment;

/// The script that writes `files` into the project directory and runs Compose. Every path is
/// checked on the server too: the project directory and each file's directory must resolve
/// inside the root, and no file may be a symlink.
pub(super) fn compose_script(
    root: &str,
    project: &str,
    files: &[(String, String)],
    up: bool,
) -> String {
    let mut script = format!(
        r#"root={root}
dir="$root"/{project}
mkdir -p "$root"
root_real=$(cd "$root" && pwd -P)
if [ -L "$dir" ]; then echo "refusing $dir: it is a symlink" >&2; exit 3; fi
mkdir -p "$dir"
dir_real=$(cd "$dir" && pwd -P)
case "$dir_real" in "$root_real"/*) ;; *) echo "refusing $dir: it resolves to $dir_real, outside $root_real" >&2; exit 3;; esac
"#,
        root = shell_quote(root),
        project = shell_quote(project),
    );
    let mut flags = String::new();
    for (path, text) in files {
        let encoded = base64::engine::general_purpose::STANDARD.encode(text);
        script.push_str(&format!(
            r#"target="$dir_real"/{path}
mkdir -p "$(dirname "$target")"
parent_real=$(cd "$(dirname "$target")" && pwd -P)
case "$parent_real" in "$dir_real"|"$dir_real"/*) ;; *) echo "refusing {shown}: it resolves outside $dir_real" >&2; exit 3;; esac
if [ -L "$target" ]; then echo "refusing {shown}: it is a symlink on the server" >&2; exit 3; fi
printf '%s' {encoded} | base64 -d > "$target.dropship-new" && mv -f "$target.dropship-new" "$target"
"#,
            path = shell_quote(path),
            shown = path.replace(['"', '\'', '`', '$', '\\'], "_"),
            encoded = shell_quote(&encoded),
        ));
        flags.push_str(&format!(" -f {}", shell_quote(path)));
    }
    script.push_str(&format!(
        r#"echo "compose project {shown} in $dir_real"
cd "$dir_real"
if docker compose version >/dev/null 2>&1; then set -- docker compose
elif command -v docker-compose >/dev/null 2>&1; then set -- docker-compose
else echo "neither 'docker compose' nor 'docker-compose' is installed on $(hostname)" >&2; exit 127
fi
"$@" -p {project}{flags} {command}
"$@" -p {project}{flags} ps
"#,
        shown = project,
        project = shell_quote(project),
        command = if up {
            "up -d --remove-orphans"
        } else {
            "down --remove-orphans"
        },
    ));
    script
}

impl Runner {
    /// Brings `plan`'s project up (or down) on `server`.
    pub(super) async fn compose(
        &self,
        deployment: &Deployment,
        step: &PlannedStep,
        plan: &ComposePlan,
        up: bool,
        server: &str,
        say: &Say,
    ) -> Result<StepOutcome, crate::exec::ExecError> {
        // Checked when the manifest was read; checked again here, right before use.
        if !valid_project(&plan.project) {
            return Ok(StepOutcome::Failed(format!(
                "compose project `{}` is not a valid name",
                plan.project
            )));
        }
        // The repository's container policy, checked on each file as it will run.
        let unset = crate::config::ContainerPolicy::default();
        let policy = self
            .config
            .repo(&deployment.repo)
            .map_or(&unset, |r| &r.containers);
        let (owner, name) = deployment.repo_parts();
        let digest = crate::manifest::repo_digest(owner, name);
        let mut files = Vec::new();
        for path in &plan.files {
            if let Err(why) = safe_relative_path(path) {
                return Ok(StepOutcome::Failed(format!("compose file {why}")));
            }
            match self
                .manifests
                .file(
                    &deployment.repo,
                    &deployment.sha,
                    path,
                    deployment.installation_id,
                )
                .await
            {
                Ok(Some(file)) => {
                    if up {
                        if let Err(refused) =
                            crate::manifest::check_compose_file(path, &file.text, policy, &digest)
                        {
                            return Ok(StepOutcome::Failed(format!(
                                "compose file refused by the operator's container policy:\n{refused}"
                            )));
                        }
                    }
                    files.push((path.clone(), file.text));
                }
                Ok(None) => {
                    return Ok(StepOutcome::Failed(format!(
                        "compose file {path} does not exist in {} at {}",
                        deployment.repo,
                        deployment.sha.short()
                    )));
                }
                Err(error) => {
                    return Ok(StepOutcome::Failed(format!(
                        "cannot read compose file {path}: {error}"
                    )));
                }
            }
        }
        say.note(format!(
            "compose {} {} ({}) in {}/{}",
            if up { "up" } else { "down" },
            plan.project,
            plan.files.join(", "),
            self.config.containers.compose_root.trim_end_matches('/'),
            plan.project
        ));
        let mut job = self.job(deployment, step, say);
        job.script = compose_script(
            self.config.containers.compose_root.trim_end_matches('/'),
            &plan.project,
            &files,
            up,
        );
        job.env
            .extend(plan.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        job.working_dir = None;
        let exit = self.run_script(server, &job, say).await?;
        if up && exit == crate::exec::Exit::Code(0) {
            self.record_services(deployment, server, &plan.project, say)
                .await;
        }
        Ok(exit.into())
    }

    /// Notes the stack's services and their states, read from the engine, on the
    /// deployment page (when Dropship can reach the server's engine).
    async fn record_services(
        &self,
        deployment: &Deployment,
        server: &str,
        project: &str,
        say: &Say,
    ) {
        let Some(host) = self.hosts.get(server) else {
            return;
        };
        match host.compose_services(project).await {
            Ok(services) => {
                for service in &services {
                    say.note(format!(
                        "service {} ({}): {} — {}",
                        service
                            .label("com.docker.compose.service")
                            .unwrap_or(&service.name),
                        service.name,
                        service.state,
                        service.status
                    ));
                }
                let snapshot = services
                    .iter()
                    .map(|s| crate::store::Service {
                        deployment_id: deployment.id,
                        server: server.to_string(),
                        project: project.to_string(),
                        service: s
                            .label("com.docker.compose.service")
                            .unwrap_or(&s.name)
                            .to_string(),
                        container: s.name.clone(),
                        state: s.state.clone(),
                        status: s.status.clone(),
                    })
                    .collect::<Vec<_>>();
                if let Err(error) = self.store.save_services(&snapshot).await {
                    tracing::warn!(error = format!("{error:#}"), "saving compose services");
                }
            }
            Err(error) => say.note(format!("cannot list the stack's services: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_checks_every_path_on_the_server_and_quotes_everything() {
        let script = compose_script(
            "/srv/compose",
            "shop-prod",
            &[("deploy/compose.yml".into(), "services: {}\n".into())],
            true,
        );
        assert!(script.contains("root=/srv/compose\n"), "{script}");
        assert!(script.contains("up -d --remove-orphans"));
        assert!(script.contains("-f deploy/compose.yml "));
        let odd = compose_script(
            "/srv/my stacks",
            "p",
            &[("a b.yml".into(), String::new())],
            true,
        );
        assert!(odd.contains("root='/srv/my stacks'"), "{odd}");
        assert!(odd.contains("-f 'a b.yml'"), "{odd}");
        assert!(script.contains("refusing"));
        let down = compose_script("/srv/compose", "shop", &[], false);
        assert!(down.contains("down --remove-orphans"));
    }
}
