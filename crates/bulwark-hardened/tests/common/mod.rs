//! A hardened repository on a real ext4 filesystem, and ways to act as the data mover.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bulwark_testkit::MountedFs;

/// The data mover's user and group in these tests (`nobody`, `nogroup` on Debian).
pub const MOVER_UID: u32 = 65534;
pub const MOVER_GID: u32 = 65534;

/// The files of a repository with one committed point, as the repository lays them out.
pub const KEYS: &[&str] = &[
    "config",
    "keys/default",
    "points/5e1c0a77.manifest",
    "points/5e1c0a77.index",
    "data/3f/3f2a9c41d07e",
    "data/b0/b07d52e6a1f9",
    "index/0a1b2c3d",
];

/// A root on its own ext4 filesystem holding one repository (owned by the data mover's user),
/// and a state directory elsewhere.
pub struct Fixture {
    // Field order: the filesystem is unmounted before its directory goes.
    pub fs: MountedFs,
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub repo: PathBuf,
    pub state: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        assert!(bulwark_testkit::is_root(), "loop mounts and the immutable attribute need root; run as root");
        let dir = tempfile::tempdir().unwrap();
        let fs = MountedFs::create(dir.path(), "ext4", 32 << 20);
        let root = fs.path().join("repos");
        let repo = root.join("r1");
        for sub in ["keys", "points", "data/3f", "data/b0", "index", "locks", "gc"] {
            fs::create_dir_all(repo.join(sub)).unwrap();
        }
        for (i, key) in KEYS.iter().enumerate() {
            fs::write(repo.join(key), content(i)).unwrap();
        }
        chown_tree(&repo);
        let state = dir.path().join("state");
        Fixture { fs, dir, root, repo, state }
    }

    pub fn config(&self) -> bulwark_hardened::ServiceConfig {
        bulwark_hardened::ServiceConfig::new(vec![self.root.clone()], self.state.clone())
    }

    pub fn service(&self) -> bulwark_hardened::Service {
        bulwark_hardened::Service::open(self.config()).unwrap()
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.repo.join(key)
    }
}

pub fn keys() -> Vec<String> {
    KEYS.iter().map(|k| k.to_string()).collect()
}

/// The bytes the fixture wrote for `KEYS[i]`.
pub fn content(i: usize) -> Vec<u8> {
    bulwark_testkit::random_bytes(4096 + i * 100, i as u64 + 1)
}

fn chown_tree(path: &Path) {
    std::os::unix::fs::lchown(path, Some(MOVER_UID), Some(MOVER_GID)).unwrap();
    if path.is_dir() {
        for e in fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path());
        }
    }
}

/// Whether the file has the immutable attribute.
pub fn is_immutable(path: &Path) -> bool {
    let f = fs::File::open(path).unwrap();
    rustix::fs::ioctl_getflags(&f).unwrap().contains(rustix::fs::IFlags::IMMUTABLE)
}

/// Runs a shell command as root without `CAP_LINUX_IMMUTABLE`: root's every other power, so a
/// refusal is the attribute's doing.
pub fn without_capability(script: &str) -> Output {
    Command::new("setpriv")
        .args(["--bounding-set=-linux_immutable", "--inh-caps=-linux_immutable", "sh", "-c", script])
        .output()
        .unwrap()
}

/// Runs a shell command as the data mover's user, who owns the repository's files.
pub fn as_data_mover(script: &str) -> Output {
    Command::new("setpriv")
        .args([&format!("--reuid={MOVER_UID}"), &format!("--regid={MOVER_GID}"), "--clear-groups", "sh", "-c", script])
        .output()
        .unwrap()
}

pub fn assert_not_permitted(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Operation not permitted"),
        "{what}: expected EPERM, got {:?}, stderr {stderr:?}",
        out.status
    );
}

pub fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what}: {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// Quotes a path for `sh -c`.
pub fn q(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// Every way the data mover (or root without the capability) could destroy or change a file:
/// each must fail with EPERM, and the file must keep its bytes.
pub fn assert_file_is_locked(path: &Path, bytes: &[u8]) {
    let p = q(path);
    let attempts = [
        ("delete", format!("rm -f {p}")),
        ("append", format!("echo x >> {p}")),
        ("overwrite", format!("echo x > {p}")),
        ("truncate", format!("truncate -s 0 {p}")),
        ("rename", format!("mv {p} {p}.moved")),
        ("hard link", format!("ln {p} {p}.link")),
        ("chmod", format!("chmod 0666 {p}")),
        ("clear the attribute", format!("chattr -i {p}")),
    ];
    for (what, script) in &attempts {
        assert_not_permitted(
            &without_capability(script),
            &format!("{what} {} as root without the capability", path.display()),
        );
    }
    for (what, script) in &attempts {
        assert_not_permitted(&as_data_mover(script), &format!("{what} {} as the data mover", path.display()));
    }
    assert_eq!(fs::read(path).unwrap(), bytes, "{} changed", path.display());
    assert!(is_immutable(path), "{} lost its attribute", path.display());
}

/// A directory others may traverse (a socket's directory, say); tempdirs are 0700.
pub fn open_to_all(dir: &Path) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs `f` on a thread with the credentials of `uid`/`gid` (no supplementary groups): the
/// kernel sees that user at `connect`, as it would a separate process. Only this thread
/// changes; it gives up root for good.
pub fn on_thread_as<T: Send + 'static>(uid: u32, gid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
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
