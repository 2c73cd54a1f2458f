//! Build contexts: GitHub's repository tarball turned into the tar archive Docker builds from.

use std::io::Read;

/// Repacks a gzipped repository tarball (entries under one top directory, as GitHub's tarball
/// endpoint serves it) into an uncompressed tar of the directory `context` inside it (`.` for
/// the root), with paths relative to that directory. Links that point out of the context are
/// refused, like anything else that would escape it.
pub fn build_context(tarball_gz: &[u8], context: &str) -> Result<Vec<u8>, String> {
    let context = context.trim_matches('/');
    let prefix: Vec<&str> = if context == "." || context.is_empty() {
        Vec::new()
    } else {
        context.split('/').filter(|p| *p != ".").collect()
    };
    let mut input = tar::Archive::new(flate2::read::GzDecoder::new(tarball_gz));
    let mut output = tar::Builder::new(Vec::new());
    let mut found = false;
    let entries = input
        .entries()
        .map_err(|e| format!("reading the repository tarball: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("reading the repository tarball: {e}"))?;
        let kind = entry.header().entry_type();
        // GitHub adds a global pax header carrying the commit id; it is not a file.
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| format!("a tarball entry has a bad path: {e}"))?
            .into_owned();
        let parts: Vec<String> = path
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        // parts[0] is the top directory (`owner-repo-sha`).
        let inside = &parts[1.min(parts.len())..];
        if inside.len() < prefix.len() || inside[..prefix.len()] != prefix[..] {
            continue;
        }
        let relative: Vec<&str> = inside[prefix.len()..].iter().map(String::as_str).collect();
        if relative.contains(&"..") {
            return Err(format!(
                "tarball entry {} climbs out of the repository",
                path.display()
            ));
        }
        if relative.is_empty() {
            found = true;
            continue;
        }
        found = true;
        let relative = relative.join("/");
        let mut header = entry.header().clone();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(|e| format!("link {}: {e}", path.display()))?
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            let depth = relative.matches('/').count() as i64;
            if target.starts_with('/') || escapes(&target, depth) {
                return Err(format!(
                    "{relative} links to {target}, outside the build context"
                ));
            }
            output
                .append_link(&mut header, &relative, &target)
                .map_err(|e| format!("packing {relative}: {e}"))?;
            continue;
        }
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        output
            .append_data(&mut header, &relative, data.as_slice())
            .map_err(|e| format!("packing {relative}: {e}"))?;
    }
    if !found {
        return Err(format!(
            "the build context `{context}` is not a directory of the repository"
        ));
    }
    output
        .into_inner()
        .map_err(|e| format!("finishing the build context: {e}"))
}

/// Whether a relative link target, from a file `depth` directories deep, climbs above the root.
fn escapes(target: &str, depth: i64) -> bool {
    let mut level = depth;
    for part in target.split('/') {
        match part {
            ".." => level -= 1,
            "" | "." => {}
            _ => level += 1,
        }
        if level < 0 {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(files: &[(&str, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, body) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(
                    &mut header,
                    format!("acme-shop-0123abc/{path}"),
                    body.as_bytes(),
                )
                .unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn names(tar_bytes: &[u8]) -> Vec<String> {
        tar::Archive::new(tar_bytes)
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn the_top_directory_and_other_directories_are_dropped() {
        let gz = tarball(&[
            ("Dockerfile", "FROM scratch"),
            ("web/Dockerfile", "x"),
            ("web/app.txt", "y"),
        ]);
        assert_eq!(
            names(&build_context(&gz, ".").unwrap()),
            ["Dockerfile", "web/Dockerfile", "web/app.txt"]
        );
        assert_eq!(
            names(&build_context(&gz, "web").unwrap()),
            ["Dockerfile", "app.txt"]
        );
        assert!(
            build_context(&gz, "nope")
                .unwrap_err()
                .contains("not a directory")
        );
    }

    #[test]
    fn links_out_of_the_context_are_refused() {
        assert!(escapes("../../etc/passwd", 0));
        assert!(!escapes("../sibling", 1));
        assert!(!escapes("same", 0));
    }
}
