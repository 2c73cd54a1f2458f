//! A git commit's id.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A commit's id as GitHub names it: 40 hexadecimal digits (64 in a SHA-256 repository). The
/// type does not check the form: a value from GitHub reaches a URL only percent-encoded and a
/// script only as an environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sha(String);

impl Sha {
    pub fn new(sha: impl Into<String>) -> Sha {
        Sha(sha.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 7 digits, as people read a commit's id (all of it if shorter).
    pub fn short(&self) -> &str {
        self.0.get(..7).unwrap_or(&self.0)
    }
}

impl std::ops::Deref for Sha {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Sha {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Sha {
    fn from(sha: String) -> Sha {
        Sha(sha)
    }
}

impl From<&str> for Sha {
    fn from(sha: &str) -> Sha {
        Sha(sha.to_string())
    }
}

impl PartialEq<str> for Sha {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Sha {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::Sha;

    #[test]
    fn short_is_seven_digits_or_all_of_a_shorter_id() {
        let sha = Sha::new("f95f852bd8fca8fcc58a9a2d6c842781e32a215e");
        assert_eq!(sha.short(), "f95f852");
        assert_eq!(Sha::new("abc").short(), "abc");
        assert_eq!(Sha::new("").short(), "");
    }
}
