//! What the application-aware processing tests share: a database's filesystem, ext4 inside an
//! image file on XFS (so the reflink snapshot applies and freezes the ext4), a repository, the
//! backups of the image and what a test checks after them.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use bulwark_testkit::{LoopDevice, MountedFs};
use serde_json::Value;

use crate::common::{bulwark, ok, run, Run};

/// Lets the database's own user through a directory (tempdirs are private to root).
pub fn open_up(p: &Path) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs and insists on success, returning stdout.
pub fn must(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The database's disk: an ext4 image of its own on XFS, mounted, and a repository beside it.
pub struct Disk {
    pub image: PathBuf,
    // Dropped in this order: the ext4 unmounted before the XFS holding its image, both before
    // the directory goes.
    pub ext4: MountedFs,
    _xfs: MountedFs,
    pub dir: tempfile::TempDir,
}

impl Disk {
    pub fn new(image: &str, size: u64) -> Disk {
        let dir = tempfile::tempdir().unwrap();
        open_up(dir.path());
        let xfs = MountedFs::create(dir.path(), "xfs", 1 << 30);
        let image = xfs.path().join(image);
        let ext4 = MountedFs::on_image(&image, "ext4", size, &[]);
        open_up(ext4.path());
        ok(bulwark().args(["repo", "init"]).arg(dir.path().join("repo")));
        Disk { image, ext4, _xfs: xfs, dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `bulwark backup` of the image with the reflink snapshot, and `extra`; its JSON report.
    pub fn backup(&self, extra: &[&str]) -> Run {
        run(bulwark()
            .arg("backup")
            .arg(&self.image)
            .arg("--repo")
            .arg(self.path("repo"))
            .args(["--name", "db", "--snapshot", "reflink", "--snapshot-retry-wait", "0", "--json"])
            .args(extra))
    }

    pub fn points(&self) -> Vec<Value> {
        let out = ok(bulwark().args(["points", "--json", "--repo"]).arg(self.path("repo")));
        serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().clone()
    }

    /// The filesystem holding the data directory takes writes (it is not left frozen).
    pub fn assert_writable(&self) {
        let probe = self.ext4.path().join("probe");
        let out = Command::new("timeout")
            .arg("10")
            .arg("sh")
            .arg("-c")
            .arg(format!("echo x > {}", probe.display()))
            .status()
            .unwrap();
        assert!(out.success(), "the filesystem of the data directory was left frozen");
    }
}

/// An image mounted for the test's length.
pub struct Mounted {
    pub at: PathBuf,
    _dev: LoopDevice,
}

impl Mounted {
    pub fn new(image: &Path, at: &Path) -> Mounted {
        let dev = LoopDevice::attach(image);
        std::fs::create_dir_all(at).unwrap();
        must(Command::new("mount").arg(&dev.device).arg(at));
        Mounted { at: at.into(), _dev: dev }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}
