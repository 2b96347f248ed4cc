//! The data directory holds the database, the node's secrets (`meta` tree), the generated TLS
//! key and the admin socket: nothing in it is for anyone but the node's own user. It is
//! created 0700, every file the process creates is 0600 (umask 0o077), and modes an older
//! version or an operator left wider are narrowed at start, with a log line.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

/// Mode of the data directory and of directories inside it.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file inside it (sled's files, the TLS key and certificate, the admin socket).
pub const FILE_MODE: u32 = 0o600;

/// Make files the process creates from now on owner-only, then create `dir` (0700) or
/// narrow its and its entries' modes. Call before opening the database.
pub fn prepare(dir: &Path) -> anyhow::Result<()> {
    restrict_umask();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .with_context(|| format!("creating data dir {}", dir.display()))?;
    // A directory we may not chmod (a volume owned by someone else) is the operator's
    // choice: say so, but run.
    match narrow(dir, 0) {
        Ok(0) => {}
        Ok(narrowed) => tracing::warn!(
            data_dir = %dir.display(),
            entries = narrowed,
            "data dir: narrowed group/other permissions to owner-only"
        ),
        Err(e) => tracing::warn!(
            data_dir = %dir.display(),
            error = %format!("{e:#}"),
            "data dir: could not make it owner-only"
        ),
    }
    Ok(())
}

/// Set the process umask to 0o077: sled, the certificate writer and the socket binder create
/// their files with the modes their libraries choose (0644, 0755), and the umask is the one
/// place that covers them all, including files sled creates later (snapshots).
fn restrict_umask() {
    // SAFETY: umask(2) only swaps an integer in the process's kernel state; it touches no
    // memory of ours and cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Narrow `path` and (for a directory) what it contains, down to a small depth (sled keeps
/// `db/` and `db/blobs/`). Returns how many entries changed. Symlinks are not followed.
fn narrow(path: &Path, depth: usize) -> anyhow::Result<usize> {
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("reading the mode of {}", path.display()))?;
    if meta.file_type().is_symlink() {
        return Ok(0);
    }
    let want = if meta.is_dir() { DIR_MODE } else { FILE_MODE };
    let mode = meta.permissions().mode() & 0o777;
    let mut changed = 0;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & want))
            .with_context(|| format!("narrowing the mode of {}", path.display()))?;
        changed += 1;
    }
    if meta.is_dir() && depth < 4 {
        for entry in std::fs::read_dir(path)? {
            changed += narrow(&entry?.path(), depth + 1)?;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_owner_only_and_narrows_what_exists() {
        let root = std::env::temp_dir().join(format!("sb-datadir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("data");
        prepare(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let f = dir.join("old-file");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let sub = dir.join("db");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&dir).unwrap();
        assert_eq!((mode(&dir), mode(&sub), mode(&f)), (0o700, 0o700, 0o600));
        // With the umask in place, new files are owner-only from the start.
        let g = dir.join("new-file");
        std::fs::write(&g, b"x").unwrap();
        assert_eq!(mode(&g), 0o600);
        let _ = std::fs::remove_dir_all(&root);
    }
}
