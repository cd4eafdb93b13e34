//! Credentials against real processes: join tokens that leave no trace in the process list,
//! pre and post commands hidden from viewers, login lockouts.

mod cluster;

use std::process::Command;

use cluster::server::{admin_token, cli, cli_as, join_token, start_node, start_server, start_server_with, Http};
use cluster::{bulwark_exe, Cluster};

fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap()).replace('\0', " ")
}

/// A node process joining `server` as `role` `name`; `how` adds the token's argument.
fn node_command(server: &cluster::server::Server, role: &str, name: &str, dir: &std::path::Path) -> Command {
    let mut c = Command::new(bulwark_exe());
    c.args([role, "--name", name, "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.join(name));
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

/// A viewer: created by the admin, logged in; its token.
fn viewer(http: &Http, admin: &str) -> String {
    let (st, v) =
        http.call("POST", "/users", Some(admin), Some(r#"{"name": "eve", "password": "0123456789ab", "role": "viewer"}"#));
    assert_eq!(st, 200, "{v}");
    let (st, v) = http.login("eve", "0123456789ab");
    assert_eq!(st, 200, "{v}");
    v["token"].as_str().unwrap().to_string()
}

#[test]
fn viewers_never_see_pre_and_post_commands_or_their_output() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("server"), None);
    let repos = dir.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let _transport = start_node(&server, "transport", "store-1", dir.path(), &["--root", repos.to_str().unwrap()], None);
    let _agent = start_node(&server, "agent", "pc-0", dir.path(), &[], None);
    let disk = dir.path().join("disk.img");
    bulwark_imagegen::generate(&disk, 4 << 20, 7).unwrap();
    let repo = repos.join("main");
    cli(&server, &["repository", "create", "main", "--transport", "store-1", "--path", repo.to_str().unwrap()]).unwrap();
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
    let eve = viewer(&http, &admin_token(&server));
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
    let (st, _) =
        http.call("POST", "/users", Some(&admin), Some(r#"{"name": "eve", "password": "0123456789ab", "role": "viewer"}"#));
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
