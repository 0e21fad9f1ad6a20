use std::os::unix::fs::PermissionsExt;

use super::*;

const GOOD: &str = "0123456789abcdef0123456789abcdef";

fn refusal(result: anyhow::Result<HmacSecret>) -> String {
    format!("{:#}", result.unwrap_err())
}

#[test]
fn the_development_secret_is_created_private_once_and_then_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dev-secret");
    let first = HmacSecret::development(&path).unwrap();
    let second = HmacSecret::development(&path).unwrap();
    assert!(first.development);
    assert_eq!(first.bytes, second.bytes);
    assert_eq!(first.bytes.len(), 64);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_blank_or_short_variable_is_refused_instead_of_falling_back() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev-secret");
    for blank in ["", "   ", "\t\n"] {
        let error = refusal(HmacSecret::from_env_value("S", Some(blank.into()), &dev));
        assert!(error.contains("S is set but blank"), "{error}");
    }
    let error = refusal(HmacSecret::from_env_value("S", Some("x".repeat(31)), &dev));
    assert!(error.contains("S is 31 bytes long"), "{error}");
    assert!(
        !dev.exists(),
        "no development secret is made for a set variable"
    );
    let secret = HmacSecret::from_env_value("S", Some(GOOD.into()), &dev).unwrap();
    assert!(!secret.development);
}

#[test]
fn a_development_file_others_can_read_or_too_short_or_not_regular_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev-secret");

    std::fs::write(&path, GOOD).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(refusal(HmacSecret::development(&path)).contains("its mode is 644"));

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, "k").unwrap();
    assert!(refusal(HmacSecret::development(&path)).contains("it holds 1 bytes"));

    let link = dir.path().join("link");
    std::fs::write(&path, GOOD).unwrap();
    std::os::unix::fs::symlink(&path, &link).unwrap();
    assert!(refusal(HmacSecret::development(&link)).contains("symbolic link"));

    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    assert!(refusal(HmacSecret::development(&folder)).contains("not a regular file"));

    assert_eq!(
        HmacSecret::development(&path).unwrap().bytes,
        GOOD.as_bytes()
    );
}

#[test]
fn a_dangling_symlink_is_not_followed_to_create_the_secret_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere");
    let link = dir.path().join("dev-secret");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(refusal(HmacSecret::development(&link)).contains("symbolic link"));
    assert!(!target.exists());
}
