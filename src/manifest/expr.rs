//! `${{ ... }}` expressions: the deployment's facts, substituted into scripts and values.

use serde_json::Value;

/// What expressions can name: one deployment of one repository.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub deployment_id: i64,
    pub sha: String,
    pub git_ref: String,
    pub environment: String,
    pub task: String,
    pub payload: Value,
    pub repo_owner: String,
    pub repo_name: String,
    /// GitHub's `transient_environment`: the environment is a preview.
    pub transient: bool,
}

/// A reference inside `${{ }}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reference {
    Sha,
    Ref,
    Environment,
    Id,
    Task,
    Payload(Vec<String>),
    RepoOwner,
    RepoName,
}

/// One `${{ ... }}` occurrence: byte range in the text and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Occurrence {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) inner: String,
}

/// Finds every `${{ ... }}` in `text`; an unclosed one is returned with `end == text.len()`.
pub(crate) fn occurrences(text: &str) -> Vec<Occurrence> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = text[from..].find("${{") {
        let start = from + offset;
        match text[start + 3..].find("}}") {
            Some(close) => {
                let end = start + 3 + close + 2;
                found.push(Occurrence {
                    start,
                    end,
                    inner: text[start + 3..end - 2].trim().to_string(),
                });
                from = end;
            }
            None => {
                found.push(Occurrence {
                    start,
                    end: text.len(),
                    inner: text[start + 3..].trim().to_string(),
                });
                break;
            }
        }
    }
    found
}

/// Parses what stands inside `${{ }}`.
pub(crate) fn parse_reference(inner: &str) -> Result<Reference, String> {
    let reference = match inner {
        "deployment.sha" => Reference::Sha,
        "deployment.ref" => Reference::Ref,
        "deployment.environment" => Reference::Environment,
        "deployment.id" => Reference::Id,
        "deployment.task" => Reference::Task,
        "repo.owner" => Reference::RepoOwner,
        "repo.name" => Reference::RepoName,
        other => match other.strip_prefix("deployment.payload.") {
            Some(keys) if keys.split('.').all(valid_key) => {
                Reference::Payload(keys.split('.').map(str::to_string).collect())
            }
            _ => {
                return Err(format!(
                    "unknown expression `{other}`: use deployment.sha, deployment.ref, deployment.environment, deployment.id, deployment.task, deployment.payload.KEY, repo.owner or repo.name"
                ));
            }
        },
    };
    Ok(reference)
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Reference {
    /// The environment variable that carries this reference's value into a script:
    /// `DROPSHIP_REF`, or for `deployment.payload.a-b.c` `DROPSHIP_PAYLOAD_A_B__C`.
    pub(crate) fn variable_name(&self) -> String {
        match self {
            Reference::Sha => "DROPSHIP_SHA".into(),
            Reference::Ref => "DROPSHIP_REF".into(),
            Reference::Environment => "DROPSHIP_ENVIRONMENT".into(),
            Reference::Id => "DROPSHIP_DEPLOYMENT_ID".into(),
            Reference::Task => "DROPSHIP_TASK".into(),
            Reference::RepoOwner => "DROPSHIP_REPO_OWNER".into(),
            Reference::RepoName => "DROPSHIP_REPO_NAME".into(),
            Reference::Payload(keys) => {
                let keys: Vec<String> = keys
                    .iter()
                    .map(|k| k.to_ascii_uppercase().replace('-', "_"))
                    .collect();
                format!("DROPSHIP_PAYLOAD_{}", keys.join("__"))
            }
        }
    }
}

impl Context {
    /// The value of a reference, as text. A missing payload key is empty; an object or array
    /// is its JSON.
    pub(crate) fn value(&self, reference: &Reference) -> String {
        match reference {
            Reference::Sha => self.sha.clone(),
            Reference::Ref => self.git_ref.clone(),
            Reference::Environment => self.environment.clone(),
            Reference::Id => self.deployment_id.to_string(),
            Reference::Task => self.task.clone(),
            Reference::RepoOwner => self.repo_owner.clone(),
            Reference::RepoName => self.repo_name.clone(),
            Reference::Payload(keys) => {
                let mut value = &self.payload;
                for key in keys {
                    match value.get(key) {
                        Some(inner) => value = inner,
                        None => return String::new(),
                    }
                }
                match value {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }
            }
        }
    }

    /// `DROPSHIP_*` variables exported to every step.
    pub fn environment_variables(&self) -> Vec<(String, String)> {
        vec![
            (
                "DROPSHIP_DEPLOYMENT_ID".into(),
                self.deployment_id.to_string(),
            ),
            ("DROPSHIP_SHA".into(), self.sha.clone()),
            ("DROPSHIP_REF".into(), self.git_ref.clone()),
            ("DROPSHIP_ENVIRONMENT".into(), self.environment.clone()),
            ("DROPSHIP_TASK".into(), self.task.clone()),
            (
                "DROPSHIP_REPO".into(),
                format!("{}/{}", self.repo_owner, self.repo_name),
            ),
            ("DROPSHIP_REPO_OWNER".into(), self.repo_owner.clone()),
            ("DROPSHIP_REPO_NAME".into(), self.repo_name.clone()),
            ("DROPSHIP_PAYLOAD".into(), self.payload.to_string()),
        ]
    }
}

/// How a substituted value is written where no shell reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Quoting {
    /// As it is: the text is data (a Docker label, an environment variable's value, a build
    /// argument), never parsed by a shell.
    Raw,
    /// Percent-encoded, so that a value stays inside the URL component it stands in and
    /// cannot change the scheme, host or path around it. RFC 3986's unreserved characters
    /// stay as they are ([`URL_COMPONENT`]): `pr-12` is `pr-12`, not `pr%2D12`.
    Url,
}

/// What [`Quoting::Url`] encodes: everything but RFC 3986's unreserved characters (ALPHA,
/// DIGIT, `-`, `.`, `_`, `~`), which mean the same encoded or not.
const URL_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Replaces every expression in `text` by its value; the text was validated already, so an
/// expression that does not parse is left as written. Scripts never go through here: see
/// [`super::shell::rewrite`].
pub(crate) fn substitute(text: &str, context: &Context, quoting: Quoting) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for occurrence in occurrences(text) {
        out.push_str(&text[last..occurrence.start]);
        match parse_reference(&occurrence.inner) {
            Ok(reference) => {
                let value = context.value(&reference);
                match quoting {
                    Quoting::Raw => out.push_str(&value),
                    Quoting::Url => {
                        out.extend(percent_encoding::utf8_percent_encode(&value, URL_COMPONENT))
                    }
                }
            }
            Err(_) => out.push_str(&text[occurrence.start..occurrence.end]),
        }
        last = occurrence.end;
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> Context {
        Context {
            deployment_id: 42,
            sha: "abc123".into(),
            git_ref: "main".into(),
            environment: "production".into(),
            task: "deploy".into(),
            payload: serde_json::json!({"version": "1.2", "nested": {"n": 3}, "evil": "'; rm -rf / #"}),
            repo_owner: "acme".into(),
            repo_name: "shop".into(),
            transient: false,
        }
    }

    #[test]
    fn substitution_writes_values_raw_or_percent_encoded() {
        let cases = [
            ("${{ deployment.sha }}", Quoting::Raw, "abc123"),
            (
                "${{deployment.ref}}-${{ deployment.id }}",
                Quoting::Raw,
                "main-42",
            ),
            ("${{ deployment.payload.nested.n }}", Quoting::Raw, "3"),
            ("${{ deployment.payload.missing }}", Quoting::Raw, ""),
            (
                "${{ deployment.payload.evil }}",
                Quoting::Raw,
                "'; rm -rf / #",
            ),
            (
                "https://example.com/${{ deployment.payload.evil }}",
                Quoting::Url,
                "https://example.com/%27%3B%20rm%20-rf%20%2F%20%23",
            ),
        ];
        for (input, quoting, expected) in cases {
            assert_eq!(substitute(input, &context(), quoting), expected, "{input}");
        }
    }

    #[test]
    fn url_encoding_leaves_unreserved_characters_as_they_are() {
        let mut context = context();
        context.environment = "pr-12".into();
        context.git_ref = "a_b.c~d-E9/@:?#%".into();
        assert_eq!(
            substitute(
                "https://${{ deployment.environment }}.example.com/${{ deployment.ref }}",
                &context,
                Quoting::Url
            ),
            "https://pr-12.example.com/a_b.c~d-E9%2F%40%3A%3F%23%25"
        );
    }

    #[test]
    fn references() {
        assert_eq!(parse_reference("deployment.task"), Ok(Reference::Task));
        assert!(
            parse_reference("deployment.shaa")
                .unwrap_err()
                .contains("unknown expression `deployment.shaa`")
        );
        assert!(parse_reference("deployment.payload.").is_err());
        assert!(parse_reference("secrets.X").is_err());
    }
}
