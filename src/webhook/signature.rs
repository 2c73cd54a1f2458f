//! `X-Hub-Signature-256`: `sha256=` + hex HMAC-SHA256 of the raw body, keyed by the secret.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("X-Hub-Signature-256 must be `sha256=` followed by 64 hex digits")]
    Malformed,
    #[error("X-Hub-Signature-256 does not match the body for any configured secret")]
    Mismatch,
    #[error("no webhook secret is configured, so no delivery can be verified")]
    NoSecret,
}

/// Checks `header` against `body` for each secret in turn; any one match verifies.
/// The comparison is constant-time ([`Mac::verify_slice`]).
pub fn verify<S: AsRef<[u8]>>(
    secrets: &[S],
    header: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    if secrets.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_digest = header
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    let expected = hex::decode(hex_digest).map_err(|_| SignatureError::Malformed)?;
    if expected.len() != 32 {
        return Err(SignatureError::Malformed);
    }
    let matched = secrets.iter().any(|secret| {
        let mut mac =
            HmacSha256::new_from_slice(secret.as_ref()).expect("HMAC takes keys of any length");
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    });
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The header value GitHub would send for `body` signed with `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Vectors {
        vectors: Vec<Vector>,
    }
    #[derive(Deserialize)]
    struct Vector {
        id: String,
        secret_utf8_hex: String,
        /// The body, or `body_file` (relative to the fixtures folder) for whole payloads.
        payload_hex: Option<String>,
        body_file: Option<String>,
        signature_hex: String,
    }

    fn vectors() -> Vec<Vector> {
        let text = include_str!("../../tests/fixtures/github/signature-vectors.json");
        serde_json::from_str::<Vectors>(text).unwrap().vectors
    }

    #[test]
    fn every_published_and_computed_vector_verifies() {
        let vectors = vectors();
        assert!(vectors.iter().any(|v| v.id == "github-docs"));
        assert!(vectors.iter().any(|v| v.body_file.is_some()));
        for v in vectors {
            let secret = hex::decode(&v.secret_utf8_hex).unwrap();
            let body = match (&v.payload_hex, &v.body_file) {
                (Some(hex_body), _) => hex::decode(hex_body).unwrap(),
                (None, Some(file)) => std::fs::read(format!(
                    "{}/tests/fixtures/github/{file}",
                    env!("CARGO_MANIFEST_DIR")
                ))
                .unwrap(),
                (None, None) => panic!("vector {} has no body", v.id),
            };
            let header = format!("sha256={}", v.signature_hex);
            assert_eq!(sign(&secret, &body), header, "vector {}", v.id);
            assert_eq!(
                verify(&[&secret], Some(&header), &body),
                Ok(()),
                "vector {}",
                v.id
            );
        }
    }

    #[test]
    fn github_docs_vector_by_value() {
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            verify(
                &["It's a Secret to Everybody"],
                Some(header),
                b"Hello, World!"
            ),
            Ok(())
        );
    }

    #[test]
    fn failures() {
        let body = b"Hello, World!";
        let good = sign(b"right", body);
        let cases: &[(&[&str], Option<&str>, SignatureError)] = &[
            (&["right"], None, SignatureError::Missing),
            (&["right"], Some(&good[7..]), SignatureError::Malformed),
            (&["right"], Some("sha1=0123"), SignatureError::Malformed),
            (&["right"], Some("sha256=zz"), SignatureError::Malformed),
            (&["right"], Some("sha256=abcd"), SignatureError::Malformed),
            (&["wrong"], Some(&good), SignatureError::Mismatch),
            (&[], Some(&good), SignatureError::NoSecret),
        ];
        for (secrets, header, expected) in cases {
            assert_eq!(
                verify(secrets, *header, body).unwrap_err(),
                *expected,
                "{header:?}"
            );
        }
        let upper = good.to_uppercase().replace("SHA256=", "sha256=");
        assert_eq!(
            verify(&["right"], Some(&upper), body),
            Ok(()),
            "hex is case-insensitive"
        );
    }

    #[test]
    fn second_secret_of_a_rotation_pair_verifies() {
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let header = sign(b"new-secret", body);
        assert_eq!(
            verify(&["old-secret", "new-secret"], Some(&header), body),
            Ok(())
        );
        assert_eq!(
            verify(&["old-secret"], Some(&header), body),
            Err(SignatureError::Mismatch)
        );
    }
}
