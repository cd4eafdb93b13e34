//! Credentials against real processes: join tokens that leave no trace in the process list,
//! pre and post commands hidden from viewers, login lockouts.

mod cluster;

use std::process::Command;

use cluster::server::{
    admin_token, cli, cli_as, join_token, start_node, start_server, start_server_with, viewer_token, Http, PostgresDb,
};
use cluster::{bulwark_exe, Cluster};

fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap()).replace('\0', " ")
}

/// A node process joining `server` as `role` `name`, its data in `dir`/`name`.
fn node_command(server: &cluster::server::Server, role: &str, name: &str, dir: &std::path::Path) -> Command {
    node_command_in(server, role, name, dir, &dir.join(name))
}

fn node_command_in(
    server: &cluster::server::Server,
    role: &str,
    name: &str,
    dir: &std::path::Path,
    data_dir: &std::path::Path,
) -> Command {
    let mut c = Command::new(bulwark_exe());
    c.args([role, "--name", name, "--listen", "127.0.0.1:0", "--data-dir"]).arg(data_dir);
    c.arg("--server").arg(format!("https://{}", server.address));
    if role == "transport" {
        c.arg("--root").arg(dir);
    }
    c
}

#[test]
fn join_tokens_from_a_file_or_the_environment_and_none_left_in_ps() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server"), None);

    let file = dir.path().join("token");
    std::fs::write(&file, format!("{}\n", join_token(&server, "agent", "from-file"))).unwrap();
    let mut c = node_command(&server, "agent", "from-file", dir.path());
    c.arg("--join-token-file").arg(&file);
    let by_file = Cluster::spawn(c, "from-file", dir.path().join("from-file"));

    let token = join_token(&server, "agent", "from-env");
    let mut c = node_command(&server, "agent", "from-env", dir.path());
    c.env("BULWARK_JOIN_TOKEN", &token);
    let by_env = Cluster::spawn(c, "from-env", dir.path().join("from-env"));
    assert!(!cmdline(by_env.pid()).contains(&token));

    // On the command line, the token is visible only until the node has joined: it restarts
    // itself without it, on the same port the server recorded.
    let token = join_token(&server, "agent", "from-arg");
    let mut c = node_command(&server, "agent", "from-arg", dir.path());
    c.args(["--join-token", &token]);
    let by_arg = Cluster::spawn(c, "from-arg", dir.path().join("from-arg"));
    assert!(!cmdline(by_arg.pid()).contains(&token), "the token is still in ps: {}", cmdline(by_arg.pid()));
    assert!(!cmdline(by_arg.pid()).contains("--join-token"));

    let computers = cli(&server, &["computer", "list"]).unwrap();
    for (d, name) in [(&by_file, "from-file"), (&by_env, "from-env"), (&by_arg, "from-arg")] {
        let c = computers.as_array().unwrap().iter().find(|c| c["name"] == name).expect(name);
        assert_eq!(c["address"], d.address, "{name}: the server calls another address than the node listens on");
        let shown = cli(&server, &["computer", "show", name]).unwrap();
        assert_eq!(shown["online"], true, "{name} does not answer the server: {shown}");
    }

    // An empty token file is refused with a message naming it.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let out =
        node_command(&server, "agent", "nobody", dir.path()).arg("--join-token-file").arg(&empty).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("join token file") && err.contains("empty"), "{err}");
}

#[test]
fn viewers_never_see_pre_and_post_commands_or_their_output() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server"), None);
    let repos = dir.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let _transport =
        start_node(&server, "transport", "store-1", dir.path(), &["--root", repos.to_str().unwrap()], None);
    let _agent = start_node(&server, "agent", "pc-0", dir.path(), &[], None);
    let disk = dir.path().join("disk.img");
    bulwark_imagegen::generate(&disk, 4 << 20, 7).unwrap();
    let repo = repos.join("main");
    cli(&server, &["repository", "create", "main", "--transport", "store-1", "--path", repo.to_str().unwrap()])
        .unwrap();
    cli(
        &server,
        &[
            "job",
            "create",
            "dump",
            "--computer",
            "pc-0",
            "--repository",
            "main",
            "--source",
            disk.to_str().unwrap(),
            "--snapshot",
            "none",
            "--pre-command",
            "echo PGPASSWORD=pre-secret-4242",
            "--post-command",
            "echo post-secret-4343",
        ],
    )
    .unwrap();
    let session = cli(&server, &["job", "start", "dump", "--wait"]).unwrap();
    assert_eq!(session["status"], "success", "{session:#}");
    let id = session["id"].as_str().unwrap();
    // The admin sees them: the test would pass vacuously otherwise.
    let admin_view = cli(&server, &["session", "show", id]).unwrap().to_string();
    assert!(admin_view.contains("pre-secret-4242") && admin_view.contains("post-secret-4343"), "{admin_view}");
    assert!(cli(&server, &["job", "show", "dump"]).unwrap().to_string().contains("pre-secret-4242"));

    let http = Http::new(&server);
    let eve = viewer_token(&server);
    for (what, v) in [
        ("job show", cli_as(&server, &eve, &["job", "show", "dump"]).unwrap()),
        ("job list", cli_as(&server, &eve, &["job", "list"]).unwrap()),
        ("session show", cli_as(&server, &eve, &["session", "show", id]).unwrap()),
        ("GET /jobs/dump", http.call("GET", "/jobs/dump", Some(&eve), None).1),
        ("GET /sessions/ID", http.call("GET", &format!("/sessions/{id}"), Some(&eve), None).1),
    ] {
        let text = v.to_string();
        assert!(!text.contains("secret-4"), "{what} shows a viewer the commands or their output: {text}");
        assert!(!text.contains("echo"), "{what}: {text}");
    }
    let job = cli_as(&server, &eve, &["job", "show", "dump"]).unwrap();
    assert_eq!(job["pre_command"], "(hidden)");
    let s = cli_as(&server, &eve, &["session", "show", id]).unwrap();
    assert!(!s["tasks"][0]["log"]["lines"].as_array().unwrap().is_empty(), "the rest of the log stays: {s}");
}

#[test]
fn repeated_wrong_passwords_lock_out_the_user_then_the_address() {
    let dir = tempfile::tempdir().unwrap();
    // 3 failures lock a user, 6 an address, for 1.5 s.
    let server = start_server_with(&dir.path().join("server"), None, &[("BULWARK_LOGIN_POLICY", "3,6,1500,1500")]);
    let http = Http::new(&server);
    let admin = admin_token(&server);
    let (st, _) = http.call(
        "POST",
        "/users",
        Some(&admin),
        Some(r#"{"name": "eve", "password": "0123456789ab", "role": "viewer"}"#),
    );
    assert_eq!(st, 200);

    for _ in 0..3 {
        assert_eq!(http.login("eve", "guess-guess").0, 401);
    }
    // Locked: even the right password is refused, before it is checked.
    let (st, v) = http.login("eve", "0123456789ab");
    assert_eq!(st, 429, "{v}");
    assert!(v["error"].as_str().unwrap().contains("too many failed logins for user eve"), "{v}");
    // Another user from the same address is not locked out yet.
    let (st, _) = http.call("GET", "/jobs", Some(&admin), None);
    assert_eq!(st, 200);
    std::thread::sleep(std::time::Duration::from_millis(1700));
    let (st, v) = http.login("eve", "0123456789ab");
    assert_eq!(st, 200, "the lockout did not expire: {v}");

    // Guessing across names locks the address out, whoever logs in from it.
    for n in 0..6 {
        assert_eq!(http.login(&format!("guess-{n}"), "guess-guess").0, 401);
    }
    let (st, v) = http.login("eve", "0123456789ab");
    assert_eq!(st, 429, "{v}");
    assert!(v["error"].as_str().unwrap().contains("address 127.0.0.1"), "{v}");
    std::thread::sleep(std::time::Duration::from_millis(1700));
    assert_eq!(http.login("eve", "0123456789ab").0, 200);

    let log = std::fs::read_to_string(server.dir.with_extension("log")).unwrap();
    assert!(log.contains("failed login of user eve from 127.0.0.1: the user is locked out"), "{log}");
    assert!(log.contains("the address is locked out"), "{log}");
}

/// A node's join attempt that must fail; its error output.
fn join_refused(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(!out.status.success(), "the join succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn join_tokens_admit_their_own_name_and_removed_names_need_the_operator() {
    join_tokens_bound_to_names(None);
}

#[test]
fn join_tokens_admit_their_own_name_on_postgres() {
    if let Some(db) = PostgresDb::create("join") {
        join_tokens_bound_to_names(Some(&db.url));
    }
}

fn join_tokens_bound_to_names(db: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server"), db);
    let node = |role: &str, name: &str, token: &str| {
        let mut c = node_command(&server, role, name, dir.path());
        c.env("BULWARK_JOIN_TOKEN", token);
        c
    };
    // A refused node, from a data directory of its own (it holds no identity).
    let tries = std::cell::Cell::new(0);
    let attempt = |role: &str, name: &str, token: &str| {
        tries.set(tries.get() + 1);
        let mut c = node_command_in(&server, role, name, dir.path(), &dir.path().join(format!("try-{}", tries.get())));
        c.env("BULWARK_JOIN_TOKEN", token);
        join_refused(c)
    };
    let fresh = |name: &str| {
        let _ = std::fs::remove_dir_all(dir.path().join(name));
    };

    // A token for web-1 does not admit web-2, nor a transport; the refusals do not spend it.
    let web1 = join_token(&server, "agent", "web-1");
    let e = attempt("agent", "web-2", &web1);
    assert!(e.contains("the token admits agent web-1, not web-2"), "{e}");
    let e = attempt("transport", "web-1", &web1);
    assert!(e.contains("the token is for role agent, not transport"), "{e}");
    fresh("web-2");
    fresh("web-1");
    let mut agent = Cluster::spawn(node("agent", "web-1", &web1), "web-1", dir.path().join("web-1"));
    assert!(cli(&server, &["token", "list"]).unwrap().as_array().unwrap().iter().all(|t| t["name"] != "web-1"));

    // A token for any new name takes a new name, not a joined one.
    let any = cli(&server, &["token", "create", "--role", "agent", "--any-name"]).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let e = attempt("agent", "web-1", &any);
    assert!(e.contains("has joined already"), "{e}");

    // Nor a name that a job (or group, or catalog point) refers to: its taker would inherit it.
    cli(&server, &["group", "create", "racks", "--computer", "db-1"]).unwrap();
    let e = attempt("agent", "db-1", &any);
    assert!(e.contains("jobs, groups or restore points refer to db-1"), "{e}");

    // Removed: a plain token made for the name is refused until the operator readmits it.
    agent.kill9();
    cli(&server, &["computer", "delete", "web-1"]).unwrap();
    fresh("web-1");
    let e = attempt("agent", "web-1", &any);
    assert!(e.contains("was removed"), "{e}");
    let again = join_token(&server, "agent", "web-1");
    let e = attempt("agent", "web-1", &again);
    assert!(e.contains("bulwark computer readmit web-1"), "{e}");
    cli(&server, &["computer", "readmit", "web-1"]).unwrap();
    fresh("web-1");
    let mut agent = Cluster::spawn(node("agent", "web-1", &again), "web-1", dir.path().join("web-1"));
    assert_eq!(cli(&server, &["computer", "show", "web-1"]).unwrap()["online"], true);
    // ... or with a token made with --replace; readmission is good for one join only.
    agent.kill9();
    cli(&server, &["computer", "delete", "web-1"]).unwrap();
    fresh("web-1");
    let e = attempt("agent", "web-1", &join_token(&server, "agent", "web-1"));
    assert!(e.contains("was removed"), "{e}");
    let replace = cli(&server, &["token", "create", "--role", "agent", "--name", "web-1", "--replace"]).unwrap();
    fresh("web-1");
    let _agent =
        Cluster::spawn(node("agent", "web-1", replace["token"].as_str().unwrap()), "web-1", dir.path().join("web-1"));
    let any2 = cli(&server, &["token", "create", "--role", "agent", "--any-name"]).unwrap();
    let _other =
        Cluster::spawn(node("agent", "web-9", any2["token"].as_str().unwrap()), "web-9", dir.path().join("web-9"));

    // Transport nodes are removed (revoked) and readmitted the same way.
    let repos = dir.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let t = join_token(&server, "transport", "store-1");
    let mut store = Cluster::spawn(node("transport", "store-1", &t), "store-1", dir.path().join("store-1"));
    cli(&server, &["transport-node", "delete", "store-1"]).unwrap();
    let listed = cli(&server, &["transport-node", "list"]).unwrap();
    assert_eq!(listed[0]["revoked"], true, "{listed}");
    // The server no longer trusts it.
    let e = cli(
        &server,
        &["repository", "create", "main", "--transport", "store-1", "--path", repos.join("main").to_str().unwrap()],
    )
    .unwrap_err();
    assert!(e.to_lowercase().contains("revoked"), "{e}");
    store.kill9();
    fresh("store-1");
    let e = attempt("transport", "store-1", &join_token(&server, "transport", "store-1"));
    assert!(e.contains("bulwark transport-node readmit store-1"), "{e}");
    cli(&server, &["transport-node", "readmit", "store-1"]).unwrap();
    fresh("store-1");
    let t = join_token(&server, "transport", "store-1");
    let _store = Cluster::spawn(node("transport", "store-1", &t), "store-1", dir.path().join("store-1"));
    cli(
        &server,
        &["repository", "create", "main", "--transport", "store-1", "--path", repos.join("main").to_str().unwrap()],
    )
    .unwrap();
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let f = dir.join(name);
    std::fs::write(&f, format!("{text}\n")).unwrap();
    f.display().to_string()
}

#[test]
fn api_tokens_expire_and_are_revoked_and_passwords_rotate() {
    credentials_rotate(None);
}

#[test]
fn api_tokens_expire_and_passwords_rotate_on_postgres() {
    if let Some(db) = PostgresDb::create("tokens") {
        credentials_rotate(Some(&db.url));
    }
}

fn credentials_rotate(db: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server"), db);
    let http = Http::new(&server);
    let d = dir.path();

    // A created token works until it expires; it is listed by id, never by its secret.
    let short = cli(&server, &["token", "create", "--role", "api", "--name", "script", "--expires", "2s"]).unwrap();
    let token = short["token"].as_str().unwrap().to_string();
    assert!(cli_as(&server, &token, &["job", "list"]).is_ok());
    let listed = cli(&server, &["token", "list"]).unwrap();
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["id"] == short["id"] && t["kind"] == "api" && t["name"] == "script"));
    assert!(listed.as_array().unwrap().iter().any(|t| t["name"] == "initial" && t["expires"].is_null()));
    assert!(!listed.to_string().contains(&token));
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let e = cli_as(&server, &token, &["job", "list"]).unwrap_err();
    assert!(e.contains("expired") && e.contains("401"), "{e}");

    // Revoked: refused at once.
    let long = cli(&server, &["token", "create", "--role", "api", "--name", "ci", "--expires", "1h"]).unwrap();
    let token = long["token"].as_str().unwrap();
    assert!(cli_as(&server, token, &["job", "list"]).is_ok());
    cli(&server, &["token", "revoke", long["id"].as_str().unwrap()]).unwrap();
    let e = cli_as(&server, token, &["job", "list"]).unwrap_err();
    assert!(e.contains("unknown or revoked API token"), "{e}");
    // An unused join token is listed and revoked too.
    let join = cli(&server, &["token", "create", "--role", "agent", "--name", "pc-9"]).unwrap();
    assert!(cli(&server, &["token", "list"]).unwrap().to_string().contains("pc-9"));
    cli(&server, &["token", "revoke", join["id"].as_str().unwrap()]).unwrap();
    assert!(!cli(&server, &["token", "list"]).unwrap().to_string().contains("pc-9"));
    assert!(cli(&server, &["token", "revoke", "0000000000000000"]).unwrap_err().contains("no token"));

    // Only hashes are stored.
    for f in ["config.db", "config.db-wal"] {
        let bytes = std::fs::read(server.dir.join(f)).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&bytes).contains(token), "{f} holds a token in the clear");
    }

    // A login's token lasts 12 hours.
    cli(&server, &["user", "create", "eve", "--role", "viewer", "--password-file", &write(d, "pw", "0123456789ab")])
        .unwrap();
    let (_, l1) = http.login("eve", "0123456789ab");
    let (_, l2) = http.login("eve", "0123456789ab");
    let expires: jiff::Timestamp = l1["expires"].as_str().unwrap().parse().unwrap();
    let hours = (expires - jiff::Timestamp::now()).as_secs_f64() / 3600.0;
    assert!((11.9..=12.1).contains(&hours), "a login token lasts {hours} h");
    let (eve1, eve2) = (l1["token"].as_str().unwrap(), l2["token"].as_str().unwrap());
    // A viewer lists only its own tokens and cannot revoke others'.
    let mine = cli_as(&server, eve1, &["token", "list"]).unwrap();
    assert_eq!(mine.as_array().unwrap().len(), 2, "{mine}");
    let initial =
        listed.as_array().unwrap().iter().find(|t| t["name"] == "initial").unwrap()["id"].as_str().unwrap().to_string();
    assert!(cli_as(&server, eve1, &["token", "revoke", &initial]).unwrap_err().contains("no token"));

    // A token minted with a login (maybe a stolen one) is no way around a password change.
    let minted = cli_as(&server, eve1, &["token", "create", "--role", "api", "--name", "mine", "--expires", "never"]);
    let minted = minted.unwrap()["token"].as_str().unwrap().to_string();
    assert!(cli_as(&server, &minted, &["job", "list"]).is_ok());

    // Changing one's password needs the current one, and ends the other login sessions.
    let new_pw = write(d, "new", "another-password-1");
    let e = cli_as(&server, eve1, &["user", "passwd", "--password-file", &new_pw]).unwrap_err();
    assert!(e.contains("needs the current one"), "{e}");
    let e = cli_as(&server, eve1, &["user", "passwd", "--password-file", &new_pw, "--current-password-file", &new_pw])
        .unwrap_err();
    assert!(e.contains("current password is wrong"), "{e}");
    let cur = write(d, "cur", "0123456789ab");
    cli_as(&server, eve1, &["user", "passwd", "--password-file", &new_pw, "--current-password-file", &cur]).unwrap();
    assert_eq!(http.login("eve", "0123456789ab").0, 401);
    assert_eq!(http.login("eve", "another-password-1").0, 200);
    assert!(cli_as(&server, eve1, &["job", "list"]).is_ok(), "the session the change was made with ended");
    assert!(cli_as(&server, eve2, &["job", "list"]).is_err(), "another session survived the password change");
    assert!(cli_as(&server, &minted, &["job", "list"]).is_err(), "a minted token survived the password change");
    // A viewer changes no one else's; an admin changes anyone's without the current one.
    assert!(cli_as(&server, eve1, &["user", "passwd", "admin", "--password-file", &new_pw])
        .unwrap_err()
        .contains("403"));
    cli(&server, &["user", "passwd", "eve", "--password-file", &write(d, "third", "third-password-3")]).unwrap();
    assert_eq!(http.login("eve", "third-password-3").0, 200);

    // Deleting users: their tokens go with them; the last admin stays.
    cli(&server, &["user", "delete", "eve"]).unwrap();
    assert!(cli_as(&server, eve1, &["job", "list"]).is_err());
    let e = cli(&server, &["user", "delete", "admin"]).unwrap_err();
    assert!(e.contains("last admin"), "{e}");
    cli(&server, &["user", "create", "root2", "--role", "admin", "--password-file", &write(d, "r2", "root2-password")])
        .unwrap();
    let (_, r2) = http.login("root2", "root2-password");
    let root2 = r2["token"].as_str().unwrap();
    cli_as(&server, root2, &["user", "delete", "admin"]).unwrap();
    assert!(cli(&server, &["job", "list"]).is_err(), "the deleted admin's token still works");
    assert!(cli_as(&server, root2, &["user", "delete", "root2"]).unwrap_err().contains("last admin"));
    let users = cli_as(&server, root2, &["user", "list"]).unwrap();
    assert_eq!(users.as_array().unwrap().len(), 1, "{users}");
}
