//! Files out of XFS and btrfs volume points through the command line: the mount fallback (the
//! kernel mounts the point over a copy-on-write overlay served by Bulwark's NBD server, through
//! `nbdfuse` and a loop device). Listings and restores are checked against the kernel's own
//! loop mount of a clean copy of the image; a dirty XFS log is replayed into the overlay; every
//! command leaves nothing mounted, attached or running, also when it is killed; without root the
//! refusal says why.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn sh(cmd: &mut Command) -> String {
    bulwark_testkit::run(cmd)
}

/// One test's private places: the mounts' runtime directory and the temporary directory the
/// commands get (where overlays go), both checked empty after every command.
struct Env {
    dir: tempfile::TempDir,
    run: PathBuf,
    tmp: PathBuf,
}

impl Env {
    fn new() -> Env {
        assert!(bulwark_testkit::is_root(), "the mount fallback needs root; run the suite as root");
        let dir = tempfile::tempdir().unwrap();
        let (run, tmp) = (dir.path().join("run"), dir.path().join("tmp"));
        std::fs::create_dir(&tmp).unwrap();
        Env { dir, run, tmp }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `bulwark` with this test's runtime and temporary directories.
    fn bulwark(&self) -> Command {
        let mut c = bulwark();
        c.env("BULWARK_RUNTIME_DIR", &self.run).env("TMPDIR", &self.tmp);
        c
    }

    /// Mount points under this test's runtime directory, as the kernel lists them.
    fn our_mounts(&self) -> Vec<String> {
        let run = self.run.to_string_lossy().into_owned();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        info.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| p.replace("\\040", " "))
            .filter(|p| p.starts_with(&run))
            .collect()
    }

    /// Loop devices over a file under this test's runtime directory, as `losetup` lists them.
    fn our_loops(&self) -> Vec<String> {
        let run = self.run.to_string_lossy().into_owned();
        let out = sh(Command::new("losetup").args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"]));
        out.lines().filter(|l| l.contains(&run)).map(String::from).collect()
    }

    /// Running `nbdfuse` processes serving a file under this test's runtime directory (a zombie
    /// waiting for a parent that is gone holds nothing, and is not counted).
    fn our_nbdfuse(&self) -> Vec<String> {
        let run = self.run.to_string_lossy().into_owned();
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let pid = e.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|c| c.is_ascii_digit()) {
                continue;
            }
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let zombie = std::fs::read_to_string(e.path().join("stat"))
                .map(|s| s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')))
                .unwrap_or(true);
            if cmd.contains("nbdfuse") && cmd.contains(&run) && !zombie {
                found.push(format!("{pid}: {cmd}"));
            }
        }
        found
    }

    /// What a command left: mounts, loop devices, nbdfuse processes, state and scratch files.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        left.extend(self.our_mounts().into_iter().map(|m| format!("mount {m}")));
        left.extend(self.our_loops().into_iter().map(|l| format!("loop {l}")));
        left.extend(self.our_nbdfuse().into_iter().map(|p| format!("nbdfuse {p}")));
        for d in [self.run.join("mounts"), self.tmp.clone()] {
            if let Ok(rd) = std::fs::read_dir(&d) {
                left.extend(rd.flatten().map(|e| format!("file {}", e.path().display())));
            }
        }
        left
    }

    /// Undoes what a failed test left, so its directory can go (nothing is removed through a
    /// mount) and the next test starts clean; the oracle here is `umount` and `losetup`.
    fn force_clean(&self) {
        for m in self.our_mounts().iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        for l in self.our_loops() {
            let _ = Command::new("losetup").arg("-d").arg(l.split(' ').next().unwrap()).status();
        }
        for p in self.our_nbdfuse() {
            let _ = Command::new("kill").args(["-KILL", p.split(':').next().unwrap()]).status();
        }
    }

    fn assert_clean(&self, after: &str) {
        let left = self.leftovers();
        assert!(left.is_empty(), "after {after}, left behind: {left:#?}");
    }

    /// Runs a command of this test and checks it left nothing behind.
    fn run(&self, c: &mut Command) -> Run {
        let r = run(c);
        self.assert_clean(&format!("{c:?}"));
        r
    }

    fn ok(&self, c: &mut Command) -> String {
        let r = self.run(c);
        assert_eq!(r.code, 0, "{c:?} failed:\n{}\n{}", r.stdout, r.stderr);
        r.stdout
    }

    fn json(&self, c: &mut Command) -> serde_json::Value {
        serde_json::from_str(&self.ok(c.arg("--json"))).expect("valid JSON")
    }

    fn ls(&self, repo: &Path, point: &str, dir: &str) -> BTreeMap<String, String> {
        let v = self.json(self.bulwark().args(["ls", point, dir, "--repo"]).arg(repo));
        v.as_array().unwrap().iter().map(|e| (e["name"].as_str().unwrap().to_string(), listed(e))).collect()
    }

    fn restore(&self, repo: &Path, point: &str, to: &Path, paths: &[&str], extra: &[&str]) -> Run {
        let mut c = self.bulwark();
        c.args(["restore", point, "--repo"]).arg(repo).arg("--to").arg(to);
        for p in paths {
            c.args(["--path", p]);
        }
        self.run(c.args(extra))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.force_clean();
    }
}

/// An entry of `bulwark ls --json`, in the words of [`oracle`].
fn listed(e: &serde_json::Value) -> String {
    let kind = e["kind"].as_str().unwrap();
    let mut d = format!(
        "{kind} mode={:o} uid={} gid={} size={} mtime={}.{:09} inode={} nlink={}",
        e["mode"].as_u64().unwrap(),
        e["uid"],
        e["gid"],
        e["size"],
        e["mtime"],
        e["mtime_nsec"].as_u64().unwrap(),
        e["inode"],
        e["nlink"],
    );
    if let Some(t) = e["target"].as_str() {
        d.push_str(&format!(" target={t}"));
    }
    d
}

/// The oracle's listing of `dir`: the kernel's own mount, through `std::fs`.
fn oracle(dir: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::FileTypeExt;
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = std::fs::symlink_metadata(e.path()).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        let mut d = format!(
            "{kind} mode={:o} uid={} gid={} size={} mtime={}.{:09} inode={} nlink={}",
            md.mode() & 0o7777,
            md.uid(),
            md.gid(),
            md.size(),
            md.mtime(),
            md.mtime_nsec(),
            md.ino(),
            md.nlink()
        );
        if ft.is_symlink() {
            d.push_str(&format!(" target={}", std::fs::read_link(e.path()).unwrap().to_string_lossy()));
        }
        out.insert(e.file_name().to_string_lossy().into_owned(), d);
    }
    out
}

fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let t = rustix::fs::Timespec { tv_sec: sec, tv_nsec: nsec };
    let ts = rustix::fs::Timestamps { last_access: t, last_modification: t };
    rustix::fs::utimensat(rustix::fs::CWD, p, &ts, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Fills `root` (a mounted filesystem) with every kind of entry a restore must get right.
fn make_tree(root: &Path) {
    let d = root.join("dir");
    std::fs::create_dir_all(d.join("sub/deeper")).unwrap();
    std::fs::write(d.join("big.bin"), bulwark_testkit::random_bytes(3 << 20 | 1234, 7)).unwrap();
    let sparse = std::fs::File::create(d.join("sparse")).unwrap();
    sparse.set_len(20 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"middle", 9 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"end", (20 << 20) - 3).unwrap();
    drop(sparse);
    std::fs::write(d.join("empty"), b"").unwrap();
    std::fs::write(d.join("sub/deeper/note.txt"), b"deep\n").unwrap();
    std::os::unix::fs::symlink("sub/deeper/note.txt", d.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", d.join("absolute")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc/passwd", d.join("climbing")).unwrap();
    std::fs::write(d.join("first-name"), b"one inode, two names").unwrap();
    std::fs::hard_link(d.join("first-name"), d.join("sub/second-name")).unwrap();
    for odd in ["with space", "ünïcödé ✓", "new\nline"] {
        std::fs::write(d.join(odd), odd.as_bytes()).unwrap();
    }
    std::fs::write(d.join("tool"), b"#!/bin/sh\n").unwrap();
    chmod(&d.join("tool"), 0o4755);
    let mode = rustix::fs::Mode::from_raw_mode;
    rustix::fs::mknodat(rustix::fs::CWD, d.join("fifo"), rustix::fs::FileType::Fifo, mode(0o640), 0).unwrap();
    let null = rustix::fs::makedev(1, 3);
    rustix::fs::mknodat(rustix::fs::CWD, d.join("null"), rustix::fs::FileType::CharacterDevice, mode(0o666), null)
        .unwrap();
    rustix::fs::lsetxattr(d.join("big.bin"), "user.note", b"kept", rustix::fs::XattrFlags::empty()).unwrap();
    sh(Command::new("setfacl").args(["-m", "u:4242:r"]).arg(d.join("sub/deeper/note.txt")));
    std::fs::write(root.join("secret"), b"0600").unwrap();
    chmod(&root.join("secret"), 0o600);
    chmod(&d.join("sub"), 0o750);
    std::os::unix::fs::lchown(d.join("sub"), Some(1001), Some(1002)).unwrap();
    std::os::unix::fs::lchown(d.join("big.bin"), Some(2001), Some(2002)).unwrap();
    std::os::unix::fs::lchown(d.join("link"), Some(3001), Some(3002)).unwrap();
    for (i, p) in ["dir/big.bin", "dir/sparse", "dir/empty", "dir/link", "dir/sub/deeper", "dir/sub", "dir", "secret"]
        .iter()
        .enumerate()
    {
        set_mtime(&root.join(p), 1_500_000_000 + i as i64 * 1000, 123_456_789);
    }
}

/// An image of `size` bytes holding a new `fstype` filesystem filled by `fill`, unmounted.
fn filled_image(path: &Path, fstype: &str, size: u64, fill: impl FnOnce(&Path)) {
    let fs = bulwark_testkit::MountedFs::on_image(path, fstype, size, &[]);
    fill(fs.path());
    sh(Command::new("sync").arg("-f").arg(fs.path()));
}

fn assert_verifies(env: &Env, repo: &Path) {
    let r = env.run(bulwark().arg("verify").arg("--repo").arg(repo).arg("--json"));
    assert_eq!(r.code, 0, "the points verify unchanged:\n{}\n{}", r.stdout, r.stderr);
}

#[test]
fn files_of_an_xfs_point_list_and_restore_as_the_kernel_reads_them() {
    let env = Env::new();
    let img = env.path().join("xfs.img");
    filled_image(&img, "xfs", 400 << 20, make_tree);
    let clean = env.path().join("oracle.img");
    std::fs::copy(&img, &clean).unwrap();
    let repo = init_repo(env.path());
    backup(&repo, &img, "xfs");
    // The oracle: the kernel's own mount of a clean copy, mounted all along (ours uses nouuid).
    let oracle_fs = bulwark_testkit::mount_read_only(&clean);
    let o = oracle_fs.path();

    for d in ["/", "/dir", "/dir/sub", "/dir/sub/deeper"] {
        assert_eq!(env.ls(&repo, "xfs:latest", d), oracle(&o.join(&d[1..])), "listing of {d}");
    }
    // Pages: each name once, in order, across --after.
    let first = env.json(env.bulwark().args(["ls", "xfs:latest", "/dir", "--limit", "5", "--repo"]).arg(&repo));
    let names: Vec<String> = first.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().into()).collect();
    assert_eq!(names.len(), 5);
    let rest = env.json(env.bulwark().args(["ls", "xfs:latest", "/dir", "--after", &names[4], "--repo"]).arg(&repo));
    let mut all = names.clone();
    all.extend(rest.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()));
    assert_eq!(all, oracle(&o.join("dir")).into_keys().collect::<Vec<_>>());
    // A symlink on the way is followed inside the filesystem, never out of it.
    let via = env.ls(&repo, "xfs:latest", "/dir/link");
    assert_eq!(via.len(), 1, "{via:?}");
    for escaping in ["/dir/absolute", "/dir/climbing"] {
        let r = env.run(env.bulwark().args(["ls", "xfs:latest", escaping, "--repo"]).arg(&repo));
        assert_eq!(r.code, 1, "{escaping} leads to a file the volume does not have: {}", r.stdout);
        assert!(r.stderr.contains("has no path"), "{}", r.stderr);
    }
    let r = env.run(env.bulwark().args(["ls", "xfs:latest", "/dir/../etc", "--repo"]).arg(&repo));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains(".."), "{}", r.stderr);

    // Restored with everything the kernel shows: content, mode, owner, mtime, symlinks, hard
    // links, holes, the fifo and device node, extended attributes and ACLs.
    let out = env.path().join("out");
    let r = env.restore(&repo, "xfs:latest", &out, &["/dir", "/secret"], &["--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["filesystem"], "xfs", "{report}");
    for p in ["dir", "secret"] {
        bulwark_testkit::assert_same_tree(
            &bulwark_testkit::describe_tree(&out.join(p)),
            &bulwark_testkit::describe_tree(&o.join(p)),
            p,
        );
    }
    let top: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(top.len(), 2, "only what was asked for: {top:?}");
    let (a, b) = (out.join("dir/first-name"), out.join("dir/sub/second-name"));
    assert_eq!(a.metadata().unwrap().ino(), b.metadata().unwrap().ino(), "a hard link stays one");
    let acl = sh(Command::new("getfacl").arg("-cn").arg(out.join("dir/sub/deeper/note.txt")));
    assert!(acl.contains("user:4242:r--"), "{acl}");
    // The escaping symlinks are restored as what they are, not followed.
    assert_eq!(std::fs::read_link(out.join("dir/absolute")).unwrap(), Path::new("/etc/shadow"));

    // One file deep down: its directories come with it, with their metadata.
    let out2 = env.path().join("out2");
    let r = env.restore(&repo, "xfs:latest", &out2, &["dir/sub/deeper/note.txt"], &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(std::fs::read(out2.join("dir/sub/deeper/note.txt")).unwrap(), b"deep\n");
    assert_eq!(out2.join("dir/sub").metadata().unwrap().uid(), 1001);
    drop(oracle_fs);
    assert_verifies(&env, &repo);
}

#[test]
fn a_dirty_xfs_log_is_replayed_into_the_overlay() {
    let env = Env::new();
    let img = env.path().join("live.img");
    // Unmounted when dropped, also when an assertion fails.
    let live = bulwark_testkit::MountedFs::on_image(&img, "xfs", 300 << 20, &[]);
    std::fs::create_dir_all(live.path().join("data/inner")).unwrap();
    std::fs::write(live.path().join("data/inner/data.bin"), bulwark_testkit::random_bytes(2 << 20, 3)).unwrap();
    for i in 0..20 {
        std::fs::write(live.path().join(format!("data/f{i:02}")), format!("file {i}\n")).unwrap();
    }
    sh(Command::new("sync").arg("-f").arg(live.path()));
    let copy = env.path().join("copy.img");
    std::fs::copy(&img, &copy).unwrap();
    // The oracle for the state of the log: xfs_repair, which will not touch it with -n.
    let repair = Command::new("xfs_repair").arg("-n").arg(&copy).output().unwrap();
    let said = String::from_utf8_lossy(&repair.stderr).to_string() + &String::from_utf8_lossy(&repair.stdout);
    assert!(said.contains("metadata changes in a log"), "the copy of a mounted XFS has a log to replay: {said}");
    let repo = init_repo(env.path());
    backup(&repo, &copy, "live");

    let listed = env.ls(&repo, "live:latest", "/data");
    let want: Vec<String> = oracle(&live.path().join("data")).into_keys().collect();
    assert_eq!(listed.keys().cloned().collect::<Vec<_>>(), want);
    let out = env.path().join("out");
    let r = env.restore(&repo, "live:latest", &out, &["/data"], &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let mut paths = vec!["data/inner/data.bin".to_string()];
    paths.extend((0..20).map(|i| format!("data/f{i:02}")));
    for p in &paths {
        assert!(std::fs::read(out.join(p)).unwrap() == std::fs::read(live.path().join(p)).unwrap(), "{p}");
    }
    drop(live);
    // The replay went into the overlay: the point is what was backed up.
    assert_verifies(&env, &repo);
    let whole = env.path().join("whole.img");
    let r = env.run(env.bulwark().args(["restore", "live:latest", "--repo"]).arg(&repo).arg("--to").arg(&whole));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(std::fs::read(&whole).unwrap() == std::fs::read(&copy).unwrap(), "the point's image is unchanged");
}

#[test]
fn a_btrfs_point_lists_and_restores_a_file() {
    let env = Env::new();
    let img = env.path().join("btrfs.img");
    filled_image(&img, "btrfs", 256 << 20, |root| {
        std::fs::create_dir_all(root.join("home/user")).unwrap();
        std::fs::write(root.join("home/user/notes"), bulwark_testkit::random_bytes(300_000, 9)).unwrap();
        std::fs::write(root.join("home/user/todo"), b"restore anything\n").unwrap();
        std::os::unix::fs::lchown(root.join("home/user/notes"), Some(1000), Some(1000)).unwrap();
        set_mtime(&root.join("home/user/notes"), 1_600_000_000, 5);
    });
    let clean = env.path().join("oracle.img");
    std::fs::copy(&img, &clean).unwrap();
    let repo = init_repo(env.path());
    backup(&repo, &img, "btrfs");
    let oracle_fs = bulwark_testkit::mount_read_only(&clean);
    let o = oracle_fs.path();

    assert_eq!(env.ls(&repo, "btrfs:latest", "/home/user"), oracle(&o.join("home/user")));
    let out = env.path().join("out");
    let r = env.restore(&repo, "btrfs:latest", &out, &["/home/user/notes"], &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    bulwark_testkit::assert_same_tree(
        &bulwark_testkit::describe_tree(&out.join("home/user/notes")),
        &bulwark_testkit::describe_tree(&o.join("home/user/notes")),
        "notes",
    );
    drop(oracle_fs);
    assert_verifies(&env, &repo);
}

/// Waits until a filesystem of `fstype` is mounted under the test's runtime directory.
fn wait_for_mount(env: &Env, fstype: &str, child: &mut std::process::Child) {
    let run = env.run.to_string_lossy().into_owned();
    let started = Instant::now();
    loop {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        if info.lines().any(|l| l.contains(&run) && l.contains(&format!(" - {fstype} "))) {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "the command ended before its mount was seen");
        assert!(started.elapsed() < Duration::from_secs(60), "no {fstype} mount appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_killed_command_leaves_mounts_the_next_one_cleans() {
    let env = Env::new();
    let img = env.path().join("xfs.img");
    filled_image(&img, "xfs", 400 << 20, |root| {
        std::fs::write(root.join("large"), bulwark_testkit::random_bytes(256 << 20, 5)).unwrap();
        std::fs::write(root.join("small"), b"small\n").unwrap();
    });
    let repo = init_repo(env.path());
    backup(&repo, &img, "xfs");

    let mut c = env.bulwark();
    c.args(["restore", "xfs:latest", "--path", "/large", "--repo"]).arg(&repo).arg("--to").arg(env.path().join("out"));
    let mut child = c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    wait_for_mount(&env, "xfs", &mut child);
    // Stopped first, so it is killed with everything set up, mid-restore.
    sh(Command::new("kill").args(["-STOP", &child.id().to_string()]));
    child.kill().unwrap();
    child.wait().unwrap();
    // The XFS and the nbdfuse file stay mounted, the loop device attached. (nbdfuse itself
    // may stay or stop: its server is gone.)
    assert_eq!(env.our_mounts().len(), 2, "{:?}", env.our_mounts());
    assert_eq!(env.our_loops().len(), 1, "{:?}", env.our_loops());
    assert!(env.run.join("mounts").read_dir().unwrap().count() >= 2, "the state file and the mount's directory");

    let r = env.run(env.bulwark().args(["ls", "xfs:latest", "/", "--repo"]).arg(&repo));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("left behind by a command that was stopped"), "{}", r.stderr);
    assert!(r.stdout.contains("small"), "{}", r.stdout);
    assert_verifies(&env, &repo);
}

#[test]
fn without_root_an_xfs_point_is_refused_saying_why() {
    let env = Env::new();
    let img = env.path().join("xfs.img");
    filled_image(&img, "xfs", 300 << 20, |root| std::fs::write(root.join("f"), b"x").unwrap());
    let repo = init_repo(env.path());
    backup(&repo, &img, "xfs");
    // The user nobody may read the repository, and write in a temporary directory of its own.
    chmod(env.path(), 0o755);
    sh(Command::new("chmod").args(["-R", "a+rX"]).arg(&repo));
    let tmp = env.path().join("tmp-nobody");
    std::fs::create_dir(&tmp).unwrap();
    std::os::unix::fs::chown(&tmp, Some(65534), Some(65534)).unwrap();
    let mut as_nobody = Command::new("setpriv");
    as_nobody
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_bulwark"))
        .args(["ls", "xfs:latest", "/", "--repo"])
        .arg(&repo)
        .env("BULWARK_RUNTIME_DIR", &env.run)
        .env("TMPDIR", &tmp)
        .env_remove("BULWARK_PASSWORD");
    let r = env.run(&mut as_nobody);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    for says in ["XFS", "needs root", "restore the volume whole"] {
        assert!(r.stderr.contains(says), "expected {says:?} in: {}", r.stderr);
    }
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "nothing left in its temporary directory");
}
