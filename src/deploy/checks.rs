//! The GitHub check run ("dropship / ENV") that mirrors a deployment on its commit: what each
//! update says. The outbox sends them (GitHub App auth only; the Checks API takes no other).

use std::time::Duration;

use serde_json::json;

use super::format_elapsed;
use crate::store::{
    CheckConclusion, CheckDraft, CheckStatus, Deployment, LogLine, State, StepRun, StepState,
};

/// Log lines of the failing step shown in the summary.
pub(super) const FAILING_LINES: usize = 20;

/// GitHub's limit on `output.summary`.
const SUMMARY_LIMIT: usize = 65_535;

/// The check run's first state, while the deployment waits its turn.
pub(super) fn queued(deployment: &Deployment, log_url: &str) -> CheckDraft {
    CheckDraft {
        status: CheckStatus::Queued,
        title: "queued".into(),
        body: json!({
            "status": CheckStatus::Queued,
            "details_url": log_url,
            "external_id": deployment.id.to_string(),
            "output": {
                "title": format!("{} to {}: queued", deployment.task, deployment.environment),
                "summary": format!("Waiting to run `{}` on **{}**.\n\n[Log]({log_url})", deployment.task, deployment.environment),
            },
        }),
    }
}

/// The update for a state change: `in_progress` when it starts, `completed` when it ends.
pub(super) fn update(
    deployment: &Deployment,
    state: State,
    description: &str,
    steps: &[StepRun],
    failing: Option<(&StepRun, &[LogLine])>,
    log_url: &str,
    environment_url: Option<&str>,
) -> Option<CheckDraft> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let title = format!(
        "{} to {}: {description}",
        deployment.task, deployment.environment
    );
    let title: String = title.chars().take(200).collect();
    match state {
        State::Queued => None,
        State::Running => Some(CheckDraft {
            status: CheckStatus::InProgress,
            title: title.clone(),
            body: json!({
                "status": CheckStatus::InProgress,
                "started_at": now,
                "details_url": log_url,
                "output": {
                    "title": title,
                    "summary": format!("Running `{}` on **{}**.\n\n[Log]({log_url})", deployment.task, deployment.environment),
                },
            }),
        }),
        State::Success | State::Failure | State::Error | State::Inactive => {
            let conclusion = match state {
                State::Success => CheckConclusion::Success,
                State::Inactive => CheckConclusion::Neutral,
                _ if description.starts_with("cancelled") => CheckConclusion::Cancelled,
                _ => CheckConclusion::Failure,
            };
            let summary = summary(state, description, steps, failing, log_url, environment_url);
            Some(CheckDraft {
                status: CheckStatus::Completed,
                title: title.clone(),
                body: json!({
                    "status": CheckStatus::Completed,
                    "conclusion": conclusion,
                    "completed_at": now,
                    "details_url": log_url,
                    "output": { "title": title, "summary": summary },
                }),
            })
        }
    }
}

fn mark(state: StepState) -> &'static str {
    match state {
        StepState::Success => "✅",
        StepState::Failure | StepState::Error | StepState::TimedOut => "❌",
        StepState::Skipped => "⏭️",
        StepState::Running | StepState::Pending => "⏳",
    }
}

/// Markdown table cells must not contain `|` or line breaks.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// The completed check's summary: the outcome, a table of steps × servers with each result
/// and duration, the failing step's last log lines, and links.
pub(super) fn summary(
    state: State,
    description: &str,
    steps: &[StepRun],
    failing: Option<(&StepRun, &[LogLine])>,
    log_url: &str,
    environment_url: Option<&str>,
) -> String {
    let mut out = format!("**{}**: {}\n\n", state.as_str(), cell(description));
    let (servers, rows) = crate::store::grid_axes(steps);
    if !rows.is_empty() {
        out.push_str("| step |");
        for server in &servers {
            out.push_str(&format!(" {} |", cell(server)));
        }
        out.push_str("\n|---|");
        out.push_str(&"---|".repeat(servers.len()));
        out.push('\n');
        for (index, name) in &rows {
            out.push_str(&format!("| {} |", cell(name)));
            for server in &servers {
                let run = steps
                    .iter()
                    .find(|s| s.step_index == *index && s.server == *server);
                match run {
                    Some(run) => {
                        let mut text = format!("{} {}", mark(run.state), run.state.as_str());
                        if let Some(code) =
                            run.exit_code.filter(|_| run.state != StepState::Success)
                        {
                            text.push_str(&format!(" (exit {code})"));
                        }
                        if let (Some(start), Some(end)) = (run.started_at, run.finished_at) {
                            let took = Duration::from_millis((end - start).max(0) as u64);
                            text.push_str(&format!(" · {}", format_elapsed(took)));
                        }
                        out.push_str(&format!(" {} |", cell(&text)));
                    }
                    None => out.push_str(" |"),
                }
            }
            out.push('\n');
        }
        out.push('\n');
    }
    if let Some((step, lines)) = failing {
        out.push_str(&format!(
            "### {} failed on {}\n\n```text\n",
            cell(&step.step),
            cell(&step.server)
        ));
        for line in lines {
            // A fence inside the log must not end the block.
            out.push_str(&line.line.replace("```", "`\u{200b}``"));
            out.push('\n');
        }
        out.push_str("```\n\n");
    }
    out.push_str(&format!("[Log]({log_url})"));
    if let Some(url) = environment_url {
        out.push_str(&format!(" · [Environment]({url})"));
    }
    out.push('\n');
    if out.len() > SUMMARY_LIMIT {
        let mut cut = SUMMARY_LIMIT - 200;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str(&format!("\n\n… (cut; the whole log is at {log_url})\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(index: i64, name: &str, server: &str, state: StepState, took: i64) -> StepRun {
        StepRun {
            deployment_id: 1,
            step_index: index,
            step: name.into(),
            server: server.into(),
            state,
            exit_code: (state == StepState::Failure).then_some(3),
            message: None,
            started_at: Some(1_000),
            finished_at: Some(1_000 + took),
        }
    }

    #[test]
    fn the_summary_has_a_grid_the_failing_lines_and_links() {
        let steps = [
            step(0, "build", "web-1", StepState::Success, 1_200),
            step(0, "build", "web-2", StepState::Success, 900),
            step(1, "migrate | db", "web-1", StepState::Failure, 300),
            step(1, "migrate | db", "web-2", StepState::Skipped, 0),
        ];
        let lines = [LogLine {
            deployment_id: 1,
            seq: 7,
            at: 0,
            server: Some("web-1".into()),
            step: Some("migrate".into()),
            stream: crate::store::LogStream::Stderr,
            line: "relation \"users\" does not exist".into(),
        }];
        let text = summary(
            State::Failure,
            "step migrate failed on web-1 (exit 3)",
            &steps,
            Some((&steps[2], &lines)),
            "https://d.example/deployments/1?token=t",
            Some("https://shop.example"),
        );
        expect_test::expect![[r#"
            **failure**: step migrate failed on web-1 (exit 3)

            | step | web-1 | web-2 |
            |---|---|---|
            | build | ✅ success · 1.2s | ✅ success · 0.9s |
            | migrate \| db | ❌ failure (exit 3) · 0.3s | ⏭️ skipped · 0.0s |

            ### migrate \| db failed on web-1

            ```text
            relation "users" does not exist
            ```

            [Log](https://d.example/deployments/1?token=t) · [Environment](https://shop.example)
        "#]]
        .assert_eq(&text);
    }
}
