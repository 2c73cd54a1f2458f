//! Paths of Dropship's own pages, built from names that come from outside (repositories,
//! environments, commits): every segment percent-encoded, so no name can add a segment, a
//! query or a fragment.

/// What a path segment escapes: all but unreserved characters.
pub(super) const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `/`-joined path segments, each percent-encoded.
pub(super) fn path(segments: &[&str]) -> String {
    segments
        .iter()
        .map(|s| format!("/{}", percent_encoding::utf8_percent_encode(s, SEGMENT)))
        .collect()
}

/// `owner` and `name` of `owner/name`, split as `Deployment::repo_parts` splits a
/// deployment's, for a repository named without one at hand.
pub(super) fn repo_parts(repo: &str) -> (&str, &str) {
    repo.split_once('/').unwrap_or(("", repo))
}

/// The path of an environment (`repo` is `owner/name`) followed by `rest`.
pub(super) fn environment_path(prefix: &str, repo: &str, environment: &str, rest: &str) -> String {
    let (owner, name) = repo_parts(repo);
    format!("{}{}{rest}", prefix, path(&[owner, name, environment]))
}
