//! The JWT secret decides who is admin: a blank or short variable, and a development-secret file
//! that others could read, plant or redirect, are refused at startup rather than signed with.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

const LONG_ENOUGH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Runs `palisade serve` in `dir` (SQLite there, no Redis); its exit success and stderr, or
/// `None` when it was still running (serving) after a few seconds.
async fn serve(dir: &Path, secret: Option<&str>) -> Option<(bool, String)> {
    let config = dir.join("hardening.yaml");
    std::fs::write(&config, "server:\n  listen: 127.0.0.1:0\n").unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade"));
    command
        .args(["serve", "--config", config.to_str().unwrap()])
        .current_dir(dir)
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("p.db").display()),
        )
        .env_remove("REDIS_URL")
        .env_remove("PALISADE_JWT_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(secret) = secret {
        command.env("PALISADE_JWT_SECRET", secret);
    }
    let child = command.spawn().unwrap();
    let output = tokio::time::timeout(Duration::from_secs(5), child.wait_with_output())
        .await
        .ok()?
        .unwrap();
    Some((
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into(),
    ))
}

async fn refused(dir: &Path, secret: Option<&str>, reason: &str) {
    match serve(dir, secret).await {
        Some((false, stderr)) => {
            assert!(stderr.contains(reason), "expected `{reason}` in {stderr}")
        }
        other => panic!("not refused (expected `{reason}`): {other:?}"),
    }
}

#[tokio::test]
async fn a_blank_or_short_jwt_secret_is_refused_at_startup_instead_of_replaced_by_the_development_one()
 {
    let dir = tempfile::tempdir().unwrap();
    refused(
        dir.path(),
        Some("  \t "),
        "PALISADE_JWT_SECRET is set but blank",
    )
    .await;
    refused(
        dir.path(),
        Some("short"),
        "PALISADE_JWT_SECRET is 5 bytes long",
    )
    .await;
    assert!(!dir.path().join(".palisade").exists());
}

#[tokio::test]
async fn a_planted_short_world_readable_or_symlinked_development_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let planted = dir.path().join(".palisade/dev-secret");
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    let private = |path: &Path| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    };

    std::fs::write(&planted, "k").unwrap();
    private(&planted);
    refused(dir.path(), None, "it holds 1 bytes").await;

    std::fs::write(&planted, LONG_ENOUGH).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(dir.path(), None, "its mode is 644").await;

    let elsewhere = dir.path().join("elsewhere");
    std::fs::write(&elsewhere, LONG_ENOUGH).unwrap();
    private(&elsewhere);
    std::fs::remove_file(&planted).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &planted).unwrap();
    refused(dir.path(), None, "it is a symbolic link").await;
}

#[test]
fn a_missing_development_secret_is_created_readable_by_its_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["token", "--sub", "dev"])
        .current_dir(dir.path())
        .env_remove("PALISADE_JWT_SECRET")
        .env_remove("PALISADE_CONFIG")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let created = dir.path().join(".palisade/dev-secret");
    let mode = std::fs::metadata(&created).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&created).unwrap().len(), 64);
}
