//! Image references: what config and the container backend both read from an image's name.

/// The registry part of an image reference (`127.0.0.1:5000/app:1` → `127.0.0.1:5000`), or
/// `docker.io` for Docker Hub names.
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_the_first_component_only_when_it_looks_like_a_host() {
        assert_eq!(registry_of("127.0.0.1:5000/app:1"), "127.0.0.1:5000");
        assert_eq!(registry_of("ghcr.io/acme/app"), "ghcr.io");
        assert_eq!(registry_of("localhost/app"), "localhost");
        assert_eq!(registry_of("acme/app:2"), "docker.io");
        assert_eq!(registry_of("busybox"), "docker.io");
    }
}
