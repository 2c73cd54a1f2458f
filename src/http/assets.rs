//! Dropship's own scripts and stylesheet, compiled in and served from `/assets/{name}`: pages
//! carry no inline script or style, so the Content-Security-Policy can refuse all of it.
//! Pages link each file with its content hash (`?v=`), so it may be cached for a year.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::HttpError;

/// Every asset: name, content type, content.
const ASSETS: [(&str, &str, &str); 4] = [
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
    (
        "live.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/live.js"),
    ),
    (
        "deployment.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/deployment.js"),
    ),
    (
        "app-logs.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app-logs.js"),
    ),
];

/// The first 12 hex digits of each asset's SHA-256, in `ASSETS` order.
static VERSIONS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|(_, _, content)| hex::encode(Sha256::digest(content.as_bytes()))[..12].to_string())
        .collect()
});

/// The URL of asset `name`, with its version.
pub(super) fn url(name: &str) -> String {
    let index = ASSETS
        .iter()
        .position(|(n, _, _)| *n == name)
        .unwrap_or_else(|| panic!("no asset {name}"));
    format!("/assets/{name}?v={}", VERSIONS[index])
}

pub(super) async fn serve(Path(name): Path<String>) -> Result<Response, HttpError> {
    let Some((_, content_type, content)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return Err(HttpError::not_found(format!("no asset {name}")));
    };
    Ok((
        [
            (header::CONTENT_TYPE, *content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        *content,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_asset_has_a_versioned_url() {
        for (name, _, _) in super::ASSETS {
            let url = super::url(name);
            assert!(url.starts_with(&format!("/assets/{name}?v=")), "{url}");
        }
    }
}
