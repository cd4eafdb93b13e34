//! What one source, one job or one copied file must not be able to do to the others, end to end
//! on a real server, transport node and agent: two sources whose readable names collide keep
//! their own restore points (retention and the previous point stay in one backup chain); a
//! second job on the same source and repository is refused; repository passwords are sealed in
//! the config database, whose directory and files are private, and a copy of the database
//! without the server's secret key unseals nothing; commands take credentials from the sealed
//! store as environment variables; a password for an unencrypted repository is
//! refused instead of reported as encryption.

mod cluster;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use cluster::bulwark_exe;
use cluster::server::{cli, start_node, start_server};
use serde_json::Value;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Restores file-level point `id` of `repo` into a new directory and reads `file` from it.
fn restored_file(repo: &Path, id: &str, dir: &Path, file: &str) -> String {
    let out = dir.join(format!("restored-{id}"));
    let st = Command::new(bulwark_exe()).args(["restore", id, "--repo"]).arg(repo).arg("--to").arg(&out).output();
    let st = st.unwrap();
    assert!(st.status.success(), "restore of {id}: {}", String::from_utf8_lossy(&st.stderr));
    std::fs::read_to_string(out.join(file)).unwrap()
}

/// The error of the first task of the newest session of `job` (sessions are listed newest first).
fn last_task_error(server: &cluster::server::Server, job: &str) -> String {
    let sessions = cli(server, &["session", "list", "--job", job]).unwrap();
    let id = sessions.as_array().unwrap()[0]["id"].as_str().unwrap().to_string();
    let s = cli(server, &["session", "show", &id]).unwrap();
    assert_eq!(s["status"], "failed", "{s:#}");
    s["tasks"][0]["error"].as_str().unwrap_or_default().to_string()
}

fn points_of(server: &cluster::server::Server, repository: &str) -> Vec<Value> {
    let all = cli(server, &["point", "list"]).unwrap();
    all.as_array().unwrap().iter().filter(|p| p["repository"] == repository).cloned().collect()
}

#[test]
fn colliding_sources_keep_their_own_chains_and_secrets_stay_sealed() {
    assert!(bulwark_testkit::is_root(), "needs root");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let server = start_server(&data, None);
    let repos = dir.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let transport = start_node(&server, "transport", "store-1", dir.path(), &["--root", repos.to_str().unwrap()], None);
    let agent = start_node(&server, "agent", "db", dir.path(), &[], None);

    // Private data directories: the server's (CA key, secret key, database), the nodes' (keys).
    assert_eq!(mode(&data), 0o700);
    for f in ["config.db", "secret.key", "ca.key", "initial-admin-token", "initial-admin-password"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&transport.data_dir), 0o700);
    assert_eq!(mode(&agent.data_dir), 0o700);

    // `/src/a-b` and `/src/a/b` once made one restore point name: retention of one deleted the
    // other's points, and each was the other's "previous point".
    let src = dir.path().join("src");
    let (dash, slash) = (src.join("a-b"), src.join("a/b"));
    std::fs::create_dir_all(&dash).unwrap();
    std::fs::create_dir_all(&slash).unwrap();
    let main = repos.join("main");
    cli(&server, &["repository", "create", "main", "--transport", "store-1", "--path", main.to_str().unwrap()])
        .unwrap();
    let (dash_s, slash_s) = (dash.to_str().unwrap(), slash.to_str().unwrap());
    let job = ["job", "create", "files", "--computer", "db", "--repository", "main", "--mode", "files"];
    cli(&server, &[&job[..], &["--source", dash_s, "--source", slash_s, "--keep-last", "1"]].concat()).unwrap();
    for round in 0..2 {
        std::fs::write(dash.join("f"), format!("dash {round}")).unwrap();
        std::fs::write(slash.join("f"), format!("slash {round}")).unwrap();
        let s = cli(&server, &["job", "start", "files", "--wait"]).unwrap();
        assert_eq!(s["status"], "success", "{s:#}");
    }
    let points = points_of(&server, "main");
    assert_eq!(points.len(), 2, "one point per source after keep-last 1: {points:#?}");
    assert_eq!(cluster::points(&main).len(), 2);
    assert_ne!(points[0]["name"], points[1]["name"]);
    for p in &points {
        let id = p["id"].as_str().unwrap();
        let shown = cli(&server, &["point", "show", id]).unwrap();
        let want = if shown["manifest"]["source"] == dash_s { "dash 1" } else { "slash 1" };
        assert_eq!(restored_file(&main, id, dir.path(), "f"), want, "{shown:#}");
    }

    // A second job on the same source and repository would prune the first one's points.
    let other = ["job", "create", "other", "--computer", "db", "--repository", "main", "--mode", "files"];
    cli(&server, &[&other[..], &["--source", dash_s, "--tries", "1"]].concat()).unwrap();
    cli(&server, &["job", "start", "other", "--wait"]).unwrap_err();
    let e = last_task_error(&server, "other");
    assert!(e.contains("job files already backs up") && e.contains(dash_s), "{e}");
    assert_eq!(points_of(&server, "main").len(), 2);

    // An encrypted repository: its password never reaches the database in clear.
    let secret = "correct horse battery staple";
    let pw = dir.path().join("pw");
    std::fs::write(&pw, secret).unwrap();
    let vault = repos.join("vault");
    let create = ["repository", "create", "vault", "--transport", "store-1", "--path", vault.to_str().unwrap()];
    let r = cli(&server, &[&create[..], &["--password-file", pw.to_str().unwrap()]].concat()).unwrap();
    assert_eq!(r["encrypted"], true);
    // A command's credential comes from the sealed store, not from the command's text.
    let db_password = "pg-s3cret-for-the-pre-step";
    let value = dir.path().join("value");
    std::fs::write(&value, format!("{db_password}\n")).unwrap();
    let marker = dir.path().join("pre-step-saw-the-secret");
    let pre = format!("printf %s \"$BULWARK_SECRET_PGPASS\" > '{}'", marker.display());
    let job = ["job", "create", "sealed", "--computer", "db", "--repository", "vault", "--mode", "files"];
    cli(
        &server,
        &[&job[..], &["--source", dash_s, "--tries", "1", "--pre-command", &pre, "--secret", "pgpass"]].concat(),
    )
    .unwrap();
    cli(&server, &["job", "start", "sealed", "--wait"]).unwrap_err();
    assert!(last_task_error(&server, "sealed").contains("secret pgpass, which is not set"));
    cli(&server, &["secret", "set", "pgpass", "--value-file", value.to_str().unwrap()]).unwrap();
    let listed = cli(&server, &["secret", "list"]).unwrap();
    assert_eq!(listed[0]["name"], "pgpass");
    assert!(!listed.to_string().contains(db_password), "{listed}");
    let s = cli(&server, &["job", "start", "sealed", "--wait"]).unwrap();
    assert_eq!(s["status"], "success", "{s:#}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), db_password, "the pre-step's environment");
    assert!(!s.to_string().contains(db_password), "the task's log shows the secret");
    for f in ["config.db", "config.db-wal"] {
        let bytes = std::fs::read(data.join(f)).unwrap_or_default();
        for clear in [secret, db_password] {
            assert!(!bytes.windows(clear.len()).any(|w| w == clear.as_bytes()), "{f} holds {clear:?} in clear");
        }
    }

    // A password for a repository that exists unencrypted: refused, not recorded as encrypted.
    let create = ["repository", "create", "fake", "--transport", "store-1", "--path", main.to_str().unwrap()];
    let e = cli(&server, &[&create[..], &["--password-file", pw.to_str().unwrap()]].concat()).unwrap_err();
    assert!(e.contains("not encrypted"), "{e}");
    assert!(cli(&server, &["repository", "show", "fake"]).is_err());

    // The database copied without the server's secret key: the password cannot be had from it.
    let mut server = server;
    let _ = server.child.kill();
    let _ = server.child.wait();
    let copy = dir.path().join("copied");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["config.db", "config.db-wal", "config.db-shm", "ca.pem", "ca.key", "initial-admin-token"] {
        let _ = std::fs::copy(data.join(f), copy.join(f));
    }
    drop(server);
    let thief = start_server(&copy, None);
    assert!(cli(&thief, &["job", "start", "sealed", "--wait"]).is_err());
    let e = last_task_error(&thief, "sealed");
    assert!(e.contains("cannot be unsealed"), "{e}");
    drop((agent, transport));
}
