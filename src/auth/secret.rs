//! Where the JWT HMAC secret comes from. Secrets never live in hardening.yaml: the file names the
//! environment variable. With the variable unset, a development secret is generated once and kept in
//! `.palisade/dev-secret` (git-ignored), so `palisade token` in another terminal signs with the same
//! secret as the running server.
//!
//! Whoever knows the secret can sign any token, the admin role included, so both sources are held
//! to the same bar: a variable that is set but blank or short is refused (never silently replaced
//! by the development secret), and the development file is used only when it is a private regular
//! file of at least [`MIN_SECRET_BYTES`].

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rand::RngCore;

/// Directory for local development state, relative to the working directory.
pub const DEV_DIR: &str = ".palisade";

/// Shortest secret accepted: 256 bits, the output size of HS256 (RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;

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
        let value = match std::env::var(env_name) {
            Ok(value) => Some(value),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => bail!("{env_name} is not valid UTF-8"),
        };
        Self::from_env_value(env_name, value, &PathBuf::from(DEV_DIR).join("dev-secret"))
    }

    fn from_env_value(
        env_name: &str,
        value: Option<String>,
        dev_file: &Path,
    ) -> anyhow::Result<Self> {
        let Some(value) = value else {
            return Self::development(dev_file);
        };
        let length = value.trim().len();
        if length == 0 {
            bail!(
                "{env_name} is set but blank; set a secret of at least {MIN_SECRET_BYTES} bytes, or unset it for a development secret"
            );
        }
        if length < MIN_SECRET_BYTES {
            bail!(
                "{env_name} is {length} bytes long; a JWT secret needs at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)"
            );
        }
        Ok(Self {
            bytes: value.into_bytes(),
            development: false,
        })
    }

    fn development(path: &Path) -> anyhow::Result<Self> {
        let secret = match read_private(path) {
            Ok(existing) => existing,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                create_private(path).with_context(|| format!("creating {}", path.display()))?
            }
            Err(error) => {
                return Err(error).with_context(|| {
                    format!(
                        "refusing the development secret {} (delete it to have a new one generated)",
                        path.display()
                    )
                });
            }
        };
        Ok(Self {
            bytes: secret.into_bytes(),
            development: true,
        })
    }
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// Reads an existing development secret: opened without following a symlink, and checked on the
/// opened file itself, so what is checked is what is read.
#[cfg(unix)]
fn read_private(path: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    // Non-blocking, so a FIFO planted in its place cannot hang the startup.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => invalid("it is a symbolic link".into()),
            _ => e,
        })?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(invalid("it is not a regular file".into()));
    }
    if metadata.mode() & 0o077 != 0 {
        return Err(invalid(format!(
            "its mode is {:o}: others can read it (it must be 600)",
            metadata.mode() & 0o777
        )));
    }
    let mut secret = String::new();
    file.read_to_string(&mut secret)?;
    let secret = secret.trim().to_string();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(invalid(format!(
            "it holds {} bytes; a secret needs at least {MIN_SECRET_BYTES}",
            secret.len()
        )));
    }
    Ok(secret)
}

#[cfg(not(unix))]
fn read_private(path: &Path) -> std::io::Result<String> {
    let secret = std::fs::read_to_string(path)?.trim().to_string();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(invalid(format!(
            "it holds {} bytes; a secret needs at least {MIN_SECRET_BYTES}",
            secret.len()
        )));
    }
    Ok(secret)
}

/// Generates a secret and writes it to a new file only the owner can read. The file must not
/// exist yet, and a symlink in its place is not followed.
fn create_private(path: &Path) -> std::io::Result<String> {
    use std::io::Write;
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path)?.write_all(secret.as_bytes())?;
    Ok(secret)
}

fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

#[cfg(all(test, unix))]
#[path = "secret_tests.rs"]
mod tests;
