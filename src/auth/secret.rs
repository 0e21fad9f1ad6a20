//! Where the JWT HMAC secret comes from. Secrets never live in hardening.yaml: the file names the
//! environment variable. With the variable unset, a development secret is generated once and kept in
//! `.palisade/dev-secret` (git-ignored), so `palisade token` in another terminal signs with the same
//! secret as the running server.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::RngCore;

/// Directory for local development state, relative to the working directory.
pub const DEV_DIR: &str = ".palisade";

#[derive(Clone)]
pub struct HmacSecret {
    pub bytes: Vec<u8>,
    /// Generated locally: fine for trying Palisade out, never for production.
    pub development: bool,
}

impl std::fmt::Debug for HmacSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacSecret")
            .field("development", &self.development)
            .finish_non_exhaustive()
    }
}

impl HmacSecret {
    /// The secret from `env_name`, else the development secret (created when missing).
    pub fn resolve(env_name: &str) -> anyhow::Result<Self> {
        match std::env::var(env_name) {
            Ok(value) if !value.trim().is_empty() => Ok(Self {
                bytes: value.into_bytes(),
                development: false,
            }),
            _ => Self::development(&PathBuf::from(DEV_DIR).join("dev-secret")),
        }
    }

    fn development(path: &Path) -> anyhow::Result<Self> {
        if let Ok(existing) = std::fs::read_to_string(path)
            && !existing.trim().is_empty()
        {
            return Ok(Self {
                bytes: existing.trim().as_bytes().to_vec(),
                development: true,
            });
        }
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        write_private(path, &secret).with_context(|| format!("writing {}", path.display()))?;
        Ok(Self {
            bytes: secret.into_bytes(),
            development: true,
        })
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_development_secret_is_created_once_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dev-secret");
        let first = HmacSecret::development(&path).unwrap();
        let second = HmacSecret::development(&path).unwrap();
        assert!(first.development);
        assert_eq!(first.bytes, second.bytes);
        assert_eq!(first.bytes.len(), 64);
    }
}
