//! Data at rest: the data folder is the server user's alone. Folders 0700, files 0600 (Secrets
//! among them), and a data folder an earlier run left open to others is narrowed at start.
#![cfg(unix)]

use rivulet_testkit as support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::json;
use support::*;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_written_owner_only_and_loose_data_folders_are_narrowed() {
    let outer = tempfile::tempdir().unwrap();
    let data = outer.path().join("data");
    // What an earlier version left: everything readable by everyone.
    let old_dir = data.join("resources/core/configmaps/default");
    std::fs::create_dir_all(&old_dir).unwrap();
    let old_file = old_dir.join("settings.json");
    std::fs::write(
        &old_file,
        serde_json::to_vec(&json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "default", "resourceVersion": "1"},
            "data": {"a": "b"}
        }))
        .unwrap(),
    )
    .unwrap();
    for dir in [
        data.as_path(),
        &data.join("resources"),
        &data.join("resources/core"),
        &data.join("resources/core/configmaps"),
        &old_dir,
    ] {
        set_mode(dir, 0o755);
    }
    set_mode(&old_file, 0o644);

    let dir = data.clone();
    let server = TestServer::start_with(move |options| options.data_dir = dir).await;

    assert_eq!(mode(&data), 0o700, "the data folder");
    assert_eq!(mode(&data.join("resources")), 0o700);
    assert_eq!(mode(&old_dir), 0o700);
    assert_eq!(mode(&old_file), 0o600, "a file left by an earlier run");
    assert!(
        server
            .get("ConfigMap", "default", "settings")
            .await
            .is_some(),
        "the narrowed file is still read"
    );

    server
        .apply(&json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "creds", "namespace": "default"},
            "stringData": {"password": "hunter2"}
        }))
        .await;
    let secrets = data.join("resources/core/secrets");
    let file = secrets.join("default/creds.json");
    assert!(file.exists(), "the Secret is stored at {}", file.display());
    assert_eq!(mode(&file), 0o600, "the Secret's file");
    assert_eq!(mode(&secrets), 0o700);
    assert_eq!(mode(&secrets.join("default")), 0o700);
    let leftovers: Vec<_> = std::fs::read_dir(secrets.join("default"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| mode(p) & 0o077 != 0)
        .collect();
    assert!(leftovers.is_empty(), "open to others: {leftovers:?}");
}
