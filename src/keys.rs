//! Dropship's own secret key, kept in a file beside (not in) the database.
//!
//! Capabilities Dropship hands out (a deployment page's `?token=`, proofs it gives itself) are
//! HMAC-SHA256 values under this key, derived again when they come back instead of being
//! stored: a copy of the database alone opens no page and forges no proof.
//!
//! The key is 32 random bytes in `server.key_file` (default `<server.data_dir>/dropship.key`),
//! created with mode 0600 at first start. Replacing or deleting it invalidates every link and
//! proof made under the old key.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The key file's length in bytes.
pub const KEY_BYTES: usize = 32;

/// What a deployment page's token is a MAC of (`Keys::log_token`).
const LOG_PURPOSE: &str = "log";

/// Stands for a deployment's log token in what is stored for GitHub (statuses and check runs in
/// the outbox): the outbox puts the token in when it posts ([`Keys::fill_log_token`]), so the
/// database holds none.
pub const LOG_TOKEN_SLOT: &str = "{log_token}";

/// The secret key. `Debug` shows only where it came from.
#[derive(Clone)]
pub struct Keys {
    /// HMAC-SHA256 keyed with the secret, cloned for each MAC.
    keyed: HmacSha256,
    #[cfg(test)]
    secret: [u8; KEY_BYTES],
    path: PathBuf,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Reads the key at `path`, creating it (32 random bytes, mode 0600, and its directory)
    /// if it does not exist. A key readable by group or others, or not 32 bytes long, is
    /// refused.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Keys> {
        if !path.exists() {
            create(path)?;
        }
        let metadata = std::fs::metadata(path)
            .with_context(|| format!("reading the key file {}", path.display()))?;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "the key file {} is readable by others (mode {mode:o}); `chmod 600` it",
                path.display()
            );
        }
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading the key file {}", path.display()))?;
        let secret: [u8; KEY_BYTES] = bytes.as_slice().try_into().map_err(|_| {
            anyhow::anyhow!(
                "the key file {} must hold {KEY_BYTES} bytes, found {}; delete it to make a new one (every log link made under it stops working)",
                path.display(),
                bytes.len()
            )
        })?;
        Ok(Keys::new(secret, path.to_path_buf()))
    }

    /// A key held only in memory, for tests and tools.
    pub fn from_bytes(secret: [u8; KEY_BYTES]) -> Keys {
        Keys::new(secret, PathBuf::from("(in memory)"))
    }

    fn new(secret: [u8; KEY_BYTES], path: PathBuf) -> Keys {
        Keys {
            keyed: HmacSha256::new_from_slice(&secret).expect("HMAC takes any key"),
            #[cfg(test)]
            secret,
            path,
        }
    }

    /// HMAC-SHA256 of `message` for `purpose`, hex. The purpose separates uses: a MAC made for
    /// one purpose never verifies for another.
    pub fn mac(&self, purpose: &str, message: &[u8]) -> String {
        hex::encode(self.keyed_mac(purpose, message).finalize().into_bytes())
    }

    /// Whether `candidate` is [`Keys::mac`] of `message` for `purpose` (hex, either case),
    /// compared in constant time ([`Mac::verify_slice`]).
    pub fn verify(&self, purpose: &str, message: &[u8], candidate: &str) -> bool {
        hex::decode(candidate).is_ok_and(|candidate| {
            self.keyed_mac(purpose, message)
                .verify_slice(&candidate)
                .is_ok()
        })
    }

    /// A short name for this Dropship (10 hex digits, a MAC of nothing under its key): it tells
    /// its jobs on a server from those of another Dropship deploying there too. Instances that
    /// share one key and store share it, as they share deployment ids.
    pub fn instance(&self) -> String {
        self.mac("instance", b"")[..10].to_string()
    }

    /// The capability token in deployment `id`'s `log_url`.
    pub fn log_token(&self, id: i64) -> String {
        self.mac(LOG_PURPOSE, id.to_string().as_bytes())
    }

    /// Whether `token` opens deployment `id`'s page and log.
    pub fn verify_log_token(&self, id: i64, token: &str) -> bool {
        self.verify(LOG_PURPOSE, id.to_string().as_bytes(), token)
    }

    /// `text` with every [`LOG_TOKEN_SLOT`] replaced by deployment `id`'s log token.
    pub fn fill_log_token<'a>(&self, id: i64, text: &'a str) -> std::borrow::Cow<'a, str> {
        if text.contains(LOG_TOKEN_SLOT) {
            std::borrow::Cow::Owned(text.replace(LOG_TOKEN_SLOT, &self.log_token(id)))
        } else {
            std::borrow::Cow::Borrowed(text)
        }
    }

    /// The keyed MAC fed with `purpose` and `message`, not yet finalized.
    fn keyed_mac(&self, purpose: &str, message: &[u8]) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        // The purpose's length first, so no two (purpose, message) pairs feed the same bytes.
        mac.update(&(purpose.len() as u64).to_be_bytes());
        mac.update(purpose.as_bytes());
        mac.update(message);
        mac
    }
}

fn create(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the key file's directory {}", dir.display()))?;
    }
    use rand::RngExt;
    let secret: [u8; KEY_BYTES] = rand::rng().random();
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => file,
        // Another process made it first: use theirs.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(error) => {
            return Err(error).with_context(|| format!("creating the key file {}", path.display()));
        }
    };
    file.write_all(&secret)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing the key file {}", path.display()))?;
    tracing::info!(path = %path.display(), "created a new secret key");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dropship.key");
        let first = Keys::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), KEY_BYTES);
        let again = Keys::load_or_create(&path).unwrap();
        assert_eq!(first.log_token(7), again.log_token(7));
        assert!(!format!("{first:?}").contains(&hex::encode(first.secret)));
    }

    #[test]
    fn macs_depend_on_the_key_the_purpose_and_the_message() {
        let one = Keys::from_bytes([1; KEY_BYTES]);
        let two = Keys::from_bytes([2; KEY_BYTES]);
        let token = one.log_token(42);
        assert_eq!(token.len(), 64);
        assert!(one.verify_log_token(42, &token));
        assert!(!one.verify_log_token(43, &token));
        assert!(!two.verify_log_token(42, &token));
        assert!(!one.verify("lock-proof", b"42", &token));
        assert!(!one.verify_log_token(42, &token[..63]));
        assert!(!one.verify_log_token(42, ""));
        assert_ne!(one.mac("a", b"b\0c"), one.mac("a\0b", b"c"));
    }

    #[test]
    fn a_shared_or_short_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dropship.key");
        std::fs::write(&path, [0u8; KEY_BYTES]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Keys::load_or_create(&path).unwrap_err().to_string();
        assert!(error.contains("readable by others"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, [0u8; 5]).unwrap();
        let error = Keys::load_or_create(&path).unwrap_err().to_string();
        assert!(error.contains("must hold 32 bytes, found 5"), "{error}");
    }
}
