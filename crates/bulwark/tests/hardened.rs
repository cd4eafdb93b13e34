//! `bulwark hardened-service` as an operator runs it: root, a socket for the transport node's
//! user, a real repository on ext4 whose point files that user then cannot delete.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use bulwark_hardened::{ErrorKind, HardenedClient};
use chrono::{TimeDelta, Utc};
use common::*;

/// The transport node's user and group here (`nobody`, and `nogroup` on Debian).
const MOVER_UID: u32 = 65534;
const MOVER_GID: u32 = 65534;

/// A running `bulwark hardened-service`; stopped with SIGTERM when dropped.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn start(args: &[&std::ffi::OsStr], log: PathBuf) -> Daemon {
        let mut child = bulwark()
            .arg("hardened-service")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let info: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            let _ = child.wait();
            panic!("hardened-service printed {line:?}; its log:\n{}", std::fs::read_to_string(&log).unwrap())
        });
        assert_eq!(info["role"], "hardened-service", "{info}");
        Daemon { child: Some(child), log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// SIGTERM, then the exit status.
    fn stop(&mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
        child.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

/// The name of the group with id `gid` (its name differs between distributions).
fn group_name(gid: u32) -> String {
    let groups = std::fs::read_to_string("/etc/group").unwrap();
    groups
        .lines()
        .find_map(|l| {
            let f: Vec<_> = l.split(':').collect();
            (f.get(2) == Some(&gid.to_string().as_str())).then(|| f[0].to_string())
        })
        .unwrap_or_else(|| panic!("no group with id {gid} in /etc/group"))
}

/// Every file of the repository a point needs: all but its locks and collection state.
fn repository_files(repo: &Path) -> Vec<String> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = format!("{rel}{}", e.file_name().to_string_lossy());
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), &format!("{name}/"), out);
            } else if e.file_type().unwrap().is_file() {
                out.push(name);
            }
        }
    }
    let mut out = Vec::new();
    walk(repo, "", &mut out);
    out.retain(|k| !k.starts_with("locks/") && !k.starts_with("gc/"));
    out.sort();
    out
}

fn as_data_mover(script: &str) -> Output {
    Command::new("setpriv")
        .args([&format!("--reuid={MOVER_UID}"), &format!("--regid={MOVER_GID}"), "--clear-groups", "sh", "-c", script])
        .output()
        .unwrap()
}

fn q(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

fn assert_not_permitted(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("Operation not permitted"), "{what}: {:?} {stderr:?}", out.status);
}

/// Runs `f` on a thread with the credentials of `uid`/`gid`: the service sees a connection from
/// that user, as from the transport node. Only this thread gives up root.
fn on_thread_as<T: Send + 'static>(uid: u32, gid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: neither id is -1, the one raw value that is no id.
        let (uid, gid) = unsafe { (rustix::process::Uid::from_raw(uid), rustix::process::Gid::from_raw(gid)) };
        rustix::thread::set_thread_groups(&[]).unwrap();
        rustix::thread::set_thread_res_gid(gid, gid, gid).unwrap();
        rustix::thread::set_thread_res_uid(uid, uid, uid).unwrap();
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn hardened_service_refuses_to_start_without_root_or_without_the_capability() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (root, state) = (dir.path().join("repos"), dir.path().join("state"));
    std::fs::create_dir(&root).unwrap();
    let exe = env!("CARGO_BIN_EXE_bulwark");
    let service_args = |c: &mut Command| {
        c.arg(exe).arg("hardened-service").arg("--root").arg(&root).arg("--socket").arg(dir.path().join("s.sock"));
        c.arg("--state").arg(&state);
    };
    let mut not_root = Command::new("setpriv");
    not_root.args([&format!("--reuid={MOVER_UID}"), &format!("--regid={MOVER_GID}"), "--clear-groups"]);
    service_args(&mut not_root);
    let r = run(&mut not_root);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("must run as root"), "{}", r.stderr);

    let mut no_cap = Command::new("setpriv");
    no_cap.args(["--bounding-set=-linux_immutable", "--inh-caps=-linux_immutable"]);
    service_args(&mut no_cap);
    let r = run(&mut no_cap);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("without CAP_LINUX_IMMUTABLE"), "{}", r.stderr);
    assert!(!state.exists() && !dir.path().join("s.sock").exists(), "a refused start leaves nothing behind");
}

#[test]
fn hardened_service_locks_a_points_files_for_the_transport_user_and_keeps_dates_across_a_restart() {
    assert!(bulwark_testkit::is_root(), "loop mounts and the immutable attribute need root; run as root");
    let dir = tempfile::tempdir().unwrap();
    let fs = bulwark_testkit::MountedFs::create(dir.path(), "ext4", 64 << 20);
    let root = fs.path().join("repos");
    std::fs::create_dir(&root).unwrap();
    let source = dir.path().join("source");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("a.txt"), bulwark_testkit::random_bytes(300_000, 7)).unwrap();
    std::fs::write(source.join("b.txt"), b"hello").unwrap();
    let repo = init_repo(&root);
    let point = backup(&repo, &source, "files")["point"].as_str().unwrap().to_string();
    ok(Command::new("chown").args(["-R", &format!("{MOVER_UID}:{MOVER_GID}")]).arg(&repo));
    let files = repository_files(&repo);
    assert!(
        files.iter().any(|k| k.ends_with(".manifest")) && files.iter().any(|k| k.starts_with("data/")),
        "{files:?}"
    );
    let (short, long): (Vec<String>, Vec<String>) = files.iter().cloned().partition(|k| k.ends_with(".index"));
    assert!(!short.is_empty(), "{files:?}");

    let sockets = dir.path().join("run");
    std::fs::create_dir(&sockets).unwrap();
    std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (socket, state) = (sockets.join("hardened.sock"), dir.path().join("state"));
    let group = group_name(MOVER_GID);
    let args: Vec<std::ffi::OsString> = ["--root".as_ref(), root.as_os_str(), "--socket".as_ref(), socket.as_os_str()]
        .into_iter()
        .chain(["--state".as_ref(), state.as_os_str(), "--group".as_ref(), group.as_ref()])
        .map(Into::into)
        .collect();
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let mut daemon = Daemon::start(&args, dir.path().join("service-1.log"));
    let md = std::fs::metadata(&socket).unwrap();
    assert_eq!((md.mode() & 0o777, md.gid()), (0o660, MOVER_GID));

    let until = Utc::now() + TimeDelta::try_days(30).unwrap();
    let soon = Utc::now() + TimeDelta::try_seconds(2).unwrap();
    let (s, r, l, sh) = (socket.clone(), repo.clone(), long.clone(), short.clone());
    on_thread_as(MOVER_UID, MOVER_GID, move || {
        let mut client = HardenedClient::connect(&s).unwrap();
        client.lock(&r, &l, until).unwrap();
        client.lock(&r, &sh, soon).unwrap();
        let e = client.lock(Path::new("/etc"), &["passwd".to_string()], until).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    });
    for key in &files {
        let p = repo.join(key);
        assert_not_permitted(&as_data_mover(&format!("rm -f {}", q(&p))), &format!("delete {key}"));
        assert_not_permitted(&as_data_mover(&format!("echo x >> {}", q(&p))), &format!("append to {key}"));
    }
    // Reading is untouched: the point restores from the locked repository.
    let restored = dir.path().join("restored");
    ok(bulwark().args(["restore", &point]).arg("--repo").arg(&repo).arg("--to").arg(&restored));
    assert_eq!(std::fs::read(restored.join("b.txt")).unwrap(), b"hello");

    let log = daemon.log();
    assert!(
        log.contains(&format!("uid={MOVER_UID}")) && log.contains("pid="),
        "requests are logged with the peer:\n{log}"
    );
    assert!(log.contains("lock refused"), "{log}");
    assert_eq!(daemon.stop(), 0, "SIGTERM stops the service cleanly:\n{}", daemon.log());
    assert!(!socket.exists());

    // Stopped, the locks stay; restarted after the short date, the start's sweep ends that one.
    assert_not_permitted(&as_data_mover(&format!("rm -f {}", q(&repo.join(&long[0])))), "delete while stopped");
    std::thread::sleep((soon - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(200));
    let _daemon = Daemon::start(&args, dir.path().join("service-2.log"));
    let (s, r, f) = (socket.clone(), repo.clone(), files.clone());
    let status =
        on_thread_as(MOVER_UID, MOVER_GID, move || HardenedClient::connect(&s).unwrap().status(&r, &f).unwrap());
    for s in &status {
        let expected = if short.contains(&s.key) { None } else { Some(until) };
        assert_eq!(s.locked_until, expected, "{}", s.key);
    }
    for key in &short {
        let out = as_data_mover(&format!("rm {}", q(&repo.join(key))));
        assert!(out.status.success(), "delete {key} after its date: {}", String::from_utf8_lossy(&out.stderr));
    }
    // The dates are readable by anyone on the host.
    let ledgers: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ledger"))
        .collect();
    assert_eq!(ledgers.len(), 1, "{ledgers:?}");
    let out = as_data_mover(&format!("cat {}", q(&ledgers[0])));
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&long[0]));
}

/// A repository made with `--immutable-days`: every point is locked at commit through the
/// service, so a writer without CAP_LINUX_IMMUTABLE (the data mover, ransomware with its
/// credentials) can delete none of what the point needs, `forget` refuses with the date, and
/// `gc` keeps it all.
#[test]
fn an_immutable_repository_locks_every_point_at_commit() {
    assert!(bulwark_testkit::is_root(), "loop mounts and the immutable attribute need root; run as root");
    let dir = tempfile::tempdir().unwrap();
    let fs = bulwark_testkit::MountedFs::create(dir.path(), "ext4", 64 << 20);
    let root = fs.path().join("repos");
    std::fs::create_dir(&root).unwrap();
    let (socket, state) = (dir.path().join("hardened.sock"), dir.path().join("state"));
    let args: Vec<&std::ffi::OsStr> = vec![
        "--root".as_ref(),
        root.as_os_str(),
        "--socket".as_ref(),
        socket.as_os_str(),
        "--state".as_ref(),
        state.as_os_str(),
    ];
    let _daemon = Daemon::start(&args, dir.path().join("service.log"));
    // The writer: root, but without the capability that clears the attribute.
    let writer = |args: &[&std::ffi::OsStr]| {
        let mut c = Command::new("setpriv");
        c.args(["--bounding-set=-linux_immutable", "--inh-caps=-linux_immutable"]).arg(env!("CARGO_BIN_EXE_bulwark"));
        c.args(args).env("BULWARK_HARDENED_SOCKET", &socket).env_remove("BULWARK_PASSWORD");
        run(&mut c)
    };
    let repo = root.join("immutable");
    let r = writer(&["repo".as_ref(), "init".as_ref(), "--immutable-days".as_ref(), "7".as_ref(), repo.as_os_str()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let image = dir.path().join("disk.img");
    std::fs::write(&image, bulwark_testkit::mixed_bytes(6 << 20, 1 << 20, 3)).unwrap();
    let r = writer(&[
        "backup".as_ref(),
        image.as_os_str(),
        "--repo".as_ref(),
        repo.as_os_str(),
        "--name".as_ref(),
        "vm".as_ref(),
        "--json".as_ref(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let point = serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["point"].as_str().unwrap().to_string();

    // Everything but locks and collection state resists a writer without the capability.
    let files = repository_files(&repo);
    assert!(files.iter().any(|k| k.starts_with("data/")) && files.iter().any(|k| k.starts_with("index/")), "{files:?}");
    for key in &files {
        let path = repo.join(key);
        let out = Command::new("setpriv")
            .args(["--bounding-set=-linux_immutable", "--inh-caps=-linux_immutable", "rm", "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert_not_permitted(&out, key);
        assert!(path.exists(), "{key} was deleted");
    }
    // A forget is refused with the date; a collection keeps everything.
    let r = writer(&["forget".as_ref(), "--repo".as_ref(), repo.as_os_str(), "--point".as_ref(), point.as_ref()]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("immutable until") && r.stderr.contains(&point), "{}", r.stderr);
    let r = writer(&["gc".as_ref(), "--repo".as_ref(), repo.as_os_str(), "--json".as_ref()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(repository_files(&repo), files);
    let out = dir.path().join("out.img");
    let r = writer(&[
        "restore".as_ref(),
        point.as_ref(),
        "--repo".as_ref(),
        repo.as_os_str(),
        "--to".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&image).unwrap(), "the restore differs");

    // Without the service, no immutable repository is made, and nothing is left of the attempt.
    let elsewhere = root.join("no-service");
    let mut c = bulwark();
    c.args(["repo", "init", "--immutable-days", "7"])
        .arg(&elsewhere)
        .env("BULWARK_HARDENED_SOCKET", dir.path().join("none.sock"));
    let r = run(&mut c);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("immutability service") && r.stderr.contains("not running"), "{}", r.stderr);
    assert!(!elsewhere.exists());
}
