//! What an operator living in the admin CLI sees, against a real server, transport node and
//! agent: job settings that survive an update and read as words, warnings about sources a
//! computer lacks, errors that say the fix, a session followed line by line and left running on
//! Ctrl-C, and tables for people (local times, sizes, durations, oldest first).

mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster::server::{admin_token, cli, Http, Site};
use cluster::wait_for;
use serde_json::Value;

impl Site {
    fn repos(&self) -> PathBuf {
        self.dir.path().join("repos")
    }

    /// The CLI as a person runs it (no --json), with the server's environment.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(cluster::bulwark_exe());
        c.args(args)
            .env("BULWARK_SERVER", format!("https://{}", self.server.address))
            .env("BULWARK_TOKEN", admin_token(&self.server))
            .env("BULWARK_CA_CERT", self.server.dir.join("ca.pem"));
        c
    }

    fn human(&self, args: &[&str]) -> Run {
        run(&mut self.command(args))
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(c: &mut Command) -> Run {
    let out = c.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Whether `text` shows an instant as the tables do: local time to the second, no zone suffix.
fn has_local_time(text: &str) -> bool {
    let b = text.as_bytes();
    (0..b.len().saturating_sub(18)).any(|i| {
        let d = |j: usize| b[i + j].is_ascii_digit();
        (0..4).all(d)
            && b[i + 4] == b'-'
            && d(5)
            && d(6)
            && b[i + 7] == b'-'
            && d(8)
            && d(9)
            && b[i + 10] == b' '
            && d(11)
            && d(12)
            && b[i + 13] == b':'
            && d(14)
            && d(15)
            && b[i + 16] == b':'
            && d(17)
            && d(18)
    })
}

/// No instant in `text` is shown the way the API writes it (RFC 3339: UTC `Z`, `+00:00`,
/// nanoseconds).
fn no_raw_instants(text: &str) -> bool {
    !text.split_whitespace().any(|w| w.parse::<jiff::Timestamp>().is_ok())
}

#[test]
fn job_settings_survive_an_update_and_read_as_words() {
    let site = Site::new();
    let s = &site.server;
    // The inventory the warnings look at is the one the server last stored.
    let shown = cli(s, &["computer", "show", "pc-1"]).unwrap();
    assert_eq!(shown["online"], true);
    let listed = cli(s, &["computer", "list"]).unwrap();
    assert_eq!(listed[0]["online"], true, "computer list and show agree: {listed:#}");
    let table = site.human(&["computer", "list"]);
    assert!(table.stdout.lines().nth(1).unwrap().contains("true"), "{}", table.stdout);

    // A source the computer does not have: created, with a warning naming it.
    let create = [
        "job",
        "create",
        "nightly",
        "--computer",
        "pc-1",
        "--repository",
        "main",
        "--source",
        "/dev/bulwark-no-such-disk",
        "--daily",
        "22:00",
        "--weekdays",
        "mon,tue,wed,thu,fri",
        "--window",
        "22:00-06:00",
        "--keep-last",
        "14",
    ];
    let r = site.human(&create);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("warning: computer pc-1 has no device /dev/bulwark-no-such-disk"),
        "the warning is printed: {}",
        r.stderr
    );
    assert!(r.stdout.contains("daily 22:00 mon-fri"), "the created job is shown: {}", r.stdout);
    let v = cli(s, &["job", "update", "nightly", "--source", "/dev/bulwark-other-missing"]).unwrap();
    let warnings = v["warnings"].as_array().unwrap();
    assert!(warnings.len() == 1 && warnings[0].as_str().unwrap().contains("/dev/bulwark-other-missing"), "{v:#}");

    // Changing the retention keeps the schedule and the window.
    let v = cli(s, &["job", "update", "nightly", "--keep-daily", "7"]).unwrap();
    assert_eq!(v["schedule"]["kind"], "daily", "{v:#}");
    assert_eq!(v["schedule"]["at"], "22:00");
    assert_eq!(v["schedule"]["weekdays"].as_array().unwrap().len(), 5);
    assert_eq!(v["window"]["start"], "22:00");
    assert_eq!((v["retention"]["keep_last"].as_u64(), v["retention"]["keep_daily"].as_u64()), (Some(14), Some(7)));
    assert_eq!(v["sources"][0], "/dev/bulwark-other-missing", "the earlier update stays too");
    let next: jiff::Timestamp = v["next_run"].as_str().unwrap().parse().unwrap();
    assert!(next > jiff::Timestamp::now(), "{v:#}");

    let r = site.human(&["job", "update", "nightly", "--keep-last", "3"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for want in ["daily 22:00 mon-fri", "22:00-06:00", "last 3, daily 7", "next run"] {
        assert!(r.stdout.contains(want), "job update prints the resulting job ({want}): {}", r.stdout);
    }
    let list = site.human(&["job", "list"]);
    for want in ["SCHEDULE", "WINDOW", "LAST RESULT", "NEXT RUN", "RETENTION", "daily 22:00 mon-fri", "22:00-06:00"] {
        assert!(list.stdout.contains(want), "{want}: {}", list.stdout);
    }
    assert!(list.stdout.contains("last 3, daily 7") && list.stdout.contains("never ran"), "{}", list.stdout);
    assert!(has_local_time(&list.stdout) && no_raw_instants(&list.stdout), "{}", list.stdout);

    // Clearing: the window, then the schedule; the rest stays.
    let v = cli(s, &["job", "update", "nightly", "--no-window"]).unwrap();
    assert!(v["window"].is_null() && v["schedule"]["kind"] == "daily", "{v:#}");
    let v = cli(s, &["job", "update", "nightly", "--no-schedule"]).unwrap();
    assert!(v["schedule"].is_null() && v["next_run"].is_null(), "{v:#}");
    assert_eq!(v["retention"]["keep_last"], 3);

    // PUT still replaces a job whole.
    let http = Http::new(s);
    let token = admin_token(s);
    let whole = r#"{"name": "nightly", "computers": ["pc-1"], "repository": "main", "sources": ["/dev/sda"]}"#;
    let (status, v) = http.call("PUT", "/jobs/nightly", Some(&token), Some(whole));
    assert_eq!(status, 200, "{v}");
    assert!(v["retention"]["keep_last"].is_null() && v["sources"][0] == "/dev/sda", "{v:#}");
    let (status, v) = http.call("PATCH", "/jobs/nightly", Some(&token), Some(r#"{"name": "other"}"#));
    assert!(status == 422 && v["error"].as_str().unwrap().contains("name cannot change"), "{v}");

    // Refused before anything reaches the server.
    let r = site.human(&["job", "create", "x", "--repository", "main", "--computer", "pc-1", "--source", "/dev/x"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = site.human(&["job", "update", "x", "--weekdays", "mon"]);
    assert_eq!(r.code, 2, "--weekdays without --daily is bad usage: {}", r.stderr);
    assert!(r.stderr.contains("--daily"), "{}", r.stderr);
    let r = site.human(&["job", "create", "y", "--repository", "main", "--computer", "pc-1", "--weekdays", "mon"]);
    assert!(r.code == 2 && r.stderr.contains("--daily"), "{}", r.stderr);
    assert!(cli(s, &["job", "show", "y"]).is_err(), "nothing was created");
    let r = site.human(&["job", "update", "x"]);
    assert!(r.code == 1 && r.stderr.contains("nothing to change"), "{}", r.stderr);
    // From naming its computer to naming a group of them.
    cli(s, &["group", "create", "racks", "--computer", "pc-1"]).unwrap();
    let v = cli(s, &["job", "update", "x", "--group", "racks", "--no-computers"]).unwrap();
    assert!(v["computers"].as_array().unwrap().is_empty() && v["groups"][0] == "racks", "{v:#}");
    let r = site.human(&["job", "update", "x", "--no-groups"]);
    assert!(r.code == 1 && r.stderr.contains("at least one computer or group"), "{}", r.stderr);
}

#[test]
fn errors_say_what_to_do() {
    let site = Site::new();
    let s = &site.server;
    // No CA certificate: the server's own CA is not trusted here.
    let r = run(site.command(&["job", "list"]).env_remove("BULWARK_CA_CERT"));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("not trusted") && r.stderr.contains("BULWARK_CA_CERT") && r.stderr.contains("ca.pem"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("UnknownIssuer"), "{}", r.stderr);
    // Another CA's certificate.
    let other = site.dir.path().join("other-ca");
    bulwark_proto::pki::Ca::load_or_create(&other).unwrap();
    let r = run(site.command(&["job", "list"]).env("BULWARK_CA_CERT", other.join("ca.pem")));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not issued by") && r.stderr.contains(&*other.to_string_lossy()), "{}", r.stderr);

    // A repository outside the transport node's roots: the roots are named.
    let outside = site.dir.path().join("elsewhere/sub/repo");
    let r = site.human(&["repository", "create", "r2", "--transport", "store", "--path", outside.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not under any of this transport node's roots"), "{}", r.stderr);
    assert!(r.stderr.contains(&*site.repos().to_string_lossy()), "the roots are named: {}", r.stderr);
    assert!(!r.stderr.contains("No such file or directory"), "{}", r.stderr);
    let missing = site.repos().join("no-such-dir/repo");
    let r = site.human(&["repository", "create", "r2", "--transport", "store", "--path", missing.to_str().unwrap()]);
    assert!(r.code == 1 && r.stderr.contains("does not exist") && r.stderr.contains("create it first"), "{}", r.stderr);
    assert!(cli(s, &["repository", "show", "r2"]).is_err(), "nothing was recorded");

    // A file-level restore through the server onto a target that is a file.
    let src = site.dir.path().join("files");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    let job = ["job", "create", "etc", "--mode", "files", "--computer", "pc-1", "--repository", "main"];
    cli(s, &[&job[..], &["--source", src.to_str().unwrap(), "--snapshot", "none"]].concat()).unwrap();
    let done = cli(s, &["job", "start", "etc", "--wait"]).unwrap();
    assert_eq!(done["status"], "success", "{done:#}");
    let point = cli(s, &["point", "list"]).unwrap()[0]["id"].as_str().unwrap().to_string();
    let file = site.dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let r = site.human(&["restore", &point, "--to", file.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(&*file.to_string_lossy()) && r.stderr.contains("is a file, not a directory"),
        "the target is named with what is wrong: {}",
        r.stderr
    );
    assert!(!r.stderr.contains("invalid argument"), "{}", r.stderr);
    let r = site.human(&["restore", &point, "--to", site.dir.path().join("out").to_str().unwrap(), "--path", "nope"]);
    assert!(r.code == 1 && r.stderr.contains("has no path \"nope\""), "{}", r.stderr);
}

/// A volume job of `image` on pc-1, read live; `extra` options added.
fn volume_job(site: &Site, name: &str, image: &Path, extra: &[&str]) {
    let base = ["job", "create", name, "--computer", "pc-1", "--repository", "main", "--snapshot", "none", "--source"];
    cli(&site.server, &[&base[..], &[image.to_str().unwrap()], extra].concat()).unwrap();
}

#[test]
fn a_followed_session_says_what_happens_and_ctrl_c_leaves_it_running() {
    let site = Site::new();
    let s = &site.server;
    let image = site.dir.path().join("disk.img");
    bulwark_imagegen::generate(&image, 24 << 20, 7).unwrap();

    // Without a terminal, each task's change is a line. A source that is not there fails the
    // same way every time: said, and not retried.
    let missing = site.dir.path().join("missing.img");
    volume_job(&site, "broken", &missing, &["--tries", "2", "--retry-delay-minutes", "0"]);
    let r = site.human(&["job", "start", "broken", "--wait"]);
    assert_eq!(r.code, 1, "a failed session fails the command: {}", r.stderr);
    assert!(r.stderr.contains("following session"), "{}", r.stderr);
    let failed =
        r.stderr.lines().find(|l| l.contains("pc-1 attempt 1: failed:")).unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(failed.contains("missing.img") && has_local_time(failed), "the error and when: {failed}");
    assert!(failed.contains("not retried"), "{failed}");
    assert!(!r.stderr.contains("attempt 2"), "a permanent failure was retried: {}", r.stderr);
    // A failure that may pass (a pre-job command that failed) is retried: the failure, the
    // retry and when it is due.
    volume_job(&site, "flaky", &image, &["--tries", "2", "--retry-delay-minutes", "0", "--pre-command", "false"]);
    let r = site.human(&["job", "start", "flaky", "--wait"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("pc-1 attempt 1: failed: pre-job script failed"), "{}", r.stderr);
    assert!(r.stderr.contains("pc-1 attempt 2: retry of attempt 1, due at"), "{}", r.stderr);
    assert!(r.stderr.contains("pc-1 attempt 2: failed:"), "{}", r.stderr);
    // Its source is the next job's: it goes, or the two would prune each other's points.
    cli(s, &["job", "delete", "flaky"]).unwrap();

    // Ctrl-C stops waiting, not the session, and says how to follow or stop it.
    volume_job(&site, "slow", &image, &["--throttle-mbps", "1"]);
    let log = site.dir.path().join("wait.log");
    let mut child = site
        .command(&["job", "start", "slow", "--wait"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for(60, "the task to run", || std::fs::read_to_string(&log).unwrap().contains("attempt 1: running"));
    let sent = Instant::now();
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(sent.elapsed() < Duration::from_secs(10), "SIGINT did not end the wait");
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(130), "{text}");
    let sessions = cli(s, &["session", "list", "--job", "slow"]).unwrap();
    let id = sessions[0]["id"].as_str().unwrap();
    assert!(text.contains(&format!("session {id} of job slow goes on on the server")), "{text}");
    assert!(text.contains(&format!("bulwark session show {id}")) && text.contains("bulwark job stop slow"), "{text}");
    assert_eq!(cli(s, &["session", "show", id]).unwrap()["status"], "running", "the session goes on");
    cli(s, &["job", "stop", "slow"]).unwrap();
    // Its task ends on the agent too before the computer takes another.
    wait_for(60, "the session and its task to stop", || {
        let v = cli(s, &["session", "show", id]).unwrap();
        v["status"] != "running" && v["tasks"].as_array().unwrap().iter().all(|t| t["status"] != "running")
    });

    // Tables for people: a session that ends with a warning says why; oldest first. (The image
    // is another job's source now: that job goes, or the two would prune each other's points.)
    cli(s, &["job", "delete", "slow"]).unwrap();
    volume_job(&site, "warned", &image, &["--tries", "1", "--post-command", "echo cleanup failed >&2; exit 1"]);
    let r = site.human(&["job", "start", "warned", "--wait"]);
    assert_eq!(r.code, 0, "a warning is not a failure: {}", r.stderr);
    let list = site.human(&["session", "list"]);
    let rows: Vec<&str> = list.stdout.lines().collect();
    assert!(rows[0].contains("DURATION") && rows[0].contains("SIZE") && rows[0].contains("PROBLEM"), "{}", list.stdout);
    assert!(rows[1].contains("broken") && rows.last().unwrap().contains("warned"), "oldest first: {}", list.stdout);
    let warned = rows.last().unwrap();
    assert!(warned.contains("warning") && warned.contains("post-job script"), "the warning is shown: {warned}");
    // What it sent depends on what the stopped session left stored: a size in words, whatever it is.
    let sized = warned.split("  ").any(|c| c.trim().ends_with(" B") || c.trim().ends_with("iB"));
    assert!(sized && has_local_time(warned), "human size and time: {warned}");
    assert!(no_raw_instants(&list.stdout), "{}", list.stdout);
    let shown = site.human(&["session", "show", id]);
    assert!(has_local_time(&shown.stdout) && no_raw_instants(&shown.stdout), "{}", shown.stdout);

    // The server's point list and a repository's own listing are the same table.
    let points = site.human(&["point", "list"]);
    let header = points.stdout.lines().next().unwrap().to_string();
    for col in
        ["POINT", "COMPUTER", "NAME", "REPOSITORY", "CREATED", "SIZE", "STORED", "HEALTH", "CONSISTENCY", "SOURCE"]
    {
        assert!(header.contains(col), "{col}: {}", points.stdout);
    }
    assert!(points.stdout.contains("crash-inconsistent (no snapshot: read live)"), "{}", points.stdout);
    assert!(points.stdout.contains("24.0 MiB") && points.stdout.contains("not checked"), "{}", points.stdout);
    assert!(has_local_time(&points.stdout) && no_raw_instants(&points.stdout), "{}", points.stdout);
    let own = run(Command::new(cluster::bulwark_exe()).args(["points", "--repo"]).arg(site.repos().join("main")));
    assert_eq!(own.code, 0, "{}", own.stderr);
    let columns = |t: &str| {
        t.lines().next().unwrap().split_whitespace().filter(|c| *c != "REPOSITORY").collect::<Vec<_>>().join(" ")
    };
    assert_eq!(columns(&own.stdout), columns(&points.stdout), "the same columns:\n{}\n{}", own.stdout, points.stdout);
    let first = points.stdout.lines().nth(1).unwrap().split_whitespace().next().unwrap();
    assert!(own.stdout.lines().nth(1).unwrap().starts_with(first), "the same order: {}", own.stdout);
    assert!(own.stdout.contains("crash-inconsistent (no snapshot: read live)"), "{}", own.stdout);
    let json = cli(s, &["point", "list"]).unwrap();
    assert_eq!(json[0]["consistency"], "crash-inconsistent", "{json:#}");
    let v: Value = cli(s, &["session", "list"]).unwrap();
    assert!(v[0]["problem"].as_str().unwrap().contains("post-job script"), "newest first in JSON, as before: {v:#}");
}

/// The tasks of a session: each computer with its status.
fn task_states(s: &cluster::server::Server, session: &str) -> Vec<(String, String)> {
    let v = cli(s, &["session", "show", session]).unwrap();
    let mut out: Vec<(String, String)> = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["computer"].as_str().unwrap().to_string(), t["status"].as_str().unwrap().to_string()))
        .collect();
    out.sort();
    out
}

#[test]
fn a_retry_reruns_only_the_computers_that_failed_and_a_disabled_job_never_starts() {
    let site = Site::new();
    let s = &site.server;
    let image = site.dir.path().join("disk.img");
    bulwark_imagegen::generate(&image, 8 << 20, 11).unwrap();
    // pc-2's pre-job command fails while its flag file exists; pc-1's never does.
    let flag = site.dir.path().join("pc-2-fails");
    std::fs::write(&flag, "").unwrap();
    let pc2 = cluster::server::start_node_with(
        s,
        "agent",
        "pc-2",
        site.dir.path(),
        &[],
        None,
        &[("FAIL_FLAG", flag.to_str().unwrap())],
    );
    let job = ["job", "create", "pair", "--computer", "pc-1", "--computer", "pc-2", "--repository", "main"];
    let rest = ["--snapshot", "none", "--tries", "1", "--pre-command", "test ! -e \"$FAIL_FLAG\"", "--source"];
    cli(s, &[&job[..], &rest[..], &[image.to_str().unwrap()]].concat()).unwrap();

    // Nothing failed yet: a retry has nothing to do, and says so.
    let e = cli(s, &["job", "retry", "pair"]).unwrap_err();
    assert!(e.contains("never ran"), "{e}");
    let first = site.human(&["job", "start", "pair", "--wait"]);
    assert_eq!(first.code, 1, "pc-2 failed: {}", first.stderr);
    let sessions = cli(s, &["session", "list", "--job", "pair"]).unwrap();
    let first_id = sessions[0]["id"].as_str().unwrap().to_string();
    assert_eq!(task_states(s, &first_id), [("pc-1".into(), "success".into()), ("pc-2".into(), "failed".into())]);

    // The retry is a session of pc-2 alone, which now succeeds.
    std::fs::remove_file(&flag).unwrap();
    let r = site.human(&["job", "retry", "pair", "--wait"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let sessions = cli(s, &["session", "list", "--job", "pair"]).unwrap();
    let retry_id = sessions.as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap()).find(|id| *id != first_id);
    let retry_id = retry_id.expect("a second session").to_string();
    assert_eq!(task_states(s, &retry_id), [("pc-2".to_string(), "success".to_string())]);
    let points = cli(s, &["point", "list"]).unwrap();
    let mut by: Vec<&str> = points.as_array().unwrap().iter().map(|p| p["computer"].as_str().unwrap()).collect();
    by.sort();
    assert_eq!(by, ["pc-1", "pc-2"], "{points:#}");
    // The last session left nothing to retry.
    let e = cli(s, &["job", "retry", "pair"]).unwrap_err();
    assert!(e.contains("left no computer to retry"), "{e}");

    // Disabled: no start by hand (nor by its schedule: it has no next run), and it says how
    // to turn it on; its settings and points stay.
    cli(s, &["job", "update", "pair", "--daily", "03:00"]).unwrap();
    assert!(cli(s, &["job", "show", "pair"]).unwrap()["next_run"].is_string());
    let off = cli(s, &["job", "disable", "pair"]).unwrap();
    assert_eq!(off["enabled"], false, "{off:#}");
    assert!(off["next_run"].is_null(), "a disabled job has a next run: {off:#}");
    let e = cli(s, &["job", "start", "pair"]).unwrap_err();
    assert!(e.contains("job pair is disabled: enable it to run it"), "{e}");
    let e = cli(s, &["job", "retry", "pair"]).unwrap_err();
    assert!(e.contains("left no computer to retry"), "{e}");
    let listed = site.human(&["job", "list"]);
    assert!(listed.stdout.contains("disabled (daily 03:00)"), "{}", listed.stdout);
    assert!(listed.stdout.contains("pc-1,pc-2"), "whom it backs up: {}", listed.stdout);
    assert_eq!(cli(s, &["session", "list", "--job", "pair"]).unwrap().as_array().unwrap().len(), 2);
    let on = cli(s, &["job", "enable", "pair"]).unwrap();
    assert!(on["enabled"] == true && on["next_run"].is_string(), "{on:#}");
    let again = cli(s, &["job", "start", "pair", "--wait"]).unwrap();
    assert_eq!(again["status"], "success", "{again:#}");

    // Sessions by result, a page at a time: the second newest success is the retry.
    let (http, token) = (Http::new(s), admin_token(s));
    let (code, page) = http.call("GET", "/sessions?job=pair&status=success&limit=1&offset=1", Some(&token), None);
    assert_eq!(code, 200, "{page:#}");
    let ids: Vec<&str> = page.as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [retry_id.as_str()], "{page:#}");
    let (code, failed) = http.call("GET", "/sessions?status=failed", Some(&token), None);
    assert_eq!((code, failed.as_array().unwrap().len()), (200, 1), "{failed:#}");
    let (code, e) = http.call("GET", "/sessions?status=great", Some(&token), None);
    assert!(code == 422 && e["error"].as_str().unwrap().contains("great"), "{code} {e:#}");
    drop(pc2);
}

/// Bytes of the files under `dir` (what a repository in a directory stores), without the
/// staged ones a writer has not committed.
fn stored_under(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                todo.push(e.path());
            } else if !e.file_name().to_string_lossy().starts_with(".tmp-") {
                total += meta.len();
            }
        }
    }
    total
}

#[test]
fn a_repository_listing_says_what_it_stores_what_is_left_and_how_much_its_points_shrank() {
    let site = Site::new();
    let s = &site.server;
    let image = site.dir.path().join("disk.img");
    bulwark_imagegen::generate(&image, 32 << 20, 3).unwrap();
    volume_job(&site, "sized", &image, &[]);
    for _ in 0..2 {
        assert_eq!(cli(s, &["job", "start", "sized", "--wait"]).unwrap()["status"], "success");
    }
    // Measured in the background: the first listing asks, a later one has it.
    let mut listed = Value::Null;
    wait_for(60, "the repository to be measured", || {
        listed = cli(s, &["repository", "list"]).unwrap();
        !listed[0]["usage"].is_null()
    });
    let u = &listed[0]["usage"];
    let repo = site.repos().join("main");
    assert_eq!(u["stored_bytes"].as_u64(), Some(stored_under(&repo)), "{u:#}");
    assert_eq!(u["source_bytes"].as_u64(), Some(2 * (32 << 20)), "two points of a 32 MiB image: {u:#}");
    let reduction = u["reduction"].as_f64().unwrap();
    let expected = (2 * (32 << 20)) as f64 / u["stored_bytes"].as_f64().unwrap();
    assert!((reduction - expected).abs() < 1e-9 && reduction > 1.5, "an unchanged second point stores nothing: {u:#}");
    // The room is the filesystem's, as df sees it.
    let df = Command::new("df").args(["-B1", "--output=size,avail"]).arg(&repo).output().unwrap();
    let df = String::from_utf8(df.stdout).unwrap();
    let nums: Vec<u64> = df.lines().nth(1).unwrap().split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!(u["total_bytes"].as_u64(), Some(nums[0]), "{u:#} vs {df}");
    let free = u["free_bytes"].as_u64().unwrap();
    assert!(free.abs_diff(nums[1]) < 1 << 30, "free {free} vs df's {}", nums[1]);
    // People read it in words.
    let table = site.human(&["repository", "list"]);
    assert!(
        table.stdout.contains("REDUCTION") && table.stdout.contains(&format!("{reduction:.1}x")),
        "{}",
        table.stdout
    );
}
