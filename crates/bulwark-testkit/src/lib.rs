//! Test support: real loop devices, real filesystems, image helpers and a real S3 server, so
//! every crate's tests use the same, correct set-up and tear-down. Needs root (CI runs as root)
//! for loop devices and mounts.

use std::path::{Path, PathBuf};
use std::process::Command;

pub mod s3;
pub mod vm;
pub use s3::{weed_binary, S3Server};
pub use vm::{Lab, Vm};

/// Runs a command that must succeed; returns its standard output.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A loop device over an image file; detached on drop.
pub struct LoopDevice {
    pub device: PathBuf,
    pub image: PathBuf,
}

impl LoopDevice {
    /// A new zero-filled image of `size` bytes in `dir`, attached to a free loop device.
    pub fn create(dir: &Path, name: &str, size: u64) -> LoopDevice {
        let image = dir.join(name);
        std::fs::File::create(&image).and_then(|f| f.set_len(size)).expect("create image");
        LoopDevice::attach(&image)
    }

    pub fn attach(image: &Path) -> LoopDevice {
        let dev = run(Command::new("losetup").args(["--find", "--show"]).arg(image));
        LoopDevice { device: PathBuf::from(dev), image: image.to_path_buf() }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// A filesystem made on a fresh loop device and mounted on a temporary directory; unmounted
/// and detached on drop.
pub struct MountedFs {
    pub mountpoint: tempfile::TempDir,
    // Field order matters: unmount (Drop of MountedFs) runs before the loop device detaches.
    pub loopdev: LoopDevice,
}

impl MountedFs {
    /// `fstype` is `ext4`, `xfs` or `btrfs`.
    pub fn create(dir: &Path, fstype: &str, size: u64) -> MountedFs {
        Self::on_image(&dir.join(format!("{fstype}.img")), fstype, size, &[])
    }

    /// Makes a filesystem on the image file `image` (created with `size` bytes unless it exists)
    /// with extra `mkfs` arguments, and mounts it.
    pub fn on_image(image: &Path, fstype: &str, size: u64, mkfs_args: &[&str]) -> MountedFs {
        if !image.exists() {
            std::fs::File::create(image).and_then(|f| f.set_len(size)).expect("create image");
        }
        let loopdev = LoopDevice::attach(image);
        let mkfs = format!("mkfs.{fstype}");
        let mut cmd = Command::new(&mkfs);
        if fstype == "ext4" {
            cmd.args(["-q", "-F"]);
        } else {
            cmd.args(["-q", "-f"]);
        }
        run(cmd.args(mkfs_args).arg(&loopdev.device));
        let mountpoint = tempfile::tempdir().expect("mountpoint");
        run(Command::new("mount").arg(&loopdev.device).arg(mountpoint.path()));
        MountedFs { mountpoint, loopdev }
    }

    pub fn path(&self) -> &Path {
        self.mountpoint.path()
    }
}

impl Drop for MountedFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mountpoint.path()).status();
    }
}

/// Bytes of a small pseudo-random image: a mix of zero, repeated and random blocks.
pub fn mixed_bytes(len: usize, block: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for b in out.chunks_mut(block) {
        match next() % 4 {
            0 => {}
            1 => b.iter_mut().enumerate().for_each(|(i, x)| *x = (i % 251) as u8),
            _ => b.iter_mut().for_each(|x| *x = next() as u8),
        }
    }
    out
}

/// Deterministic incompressible bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for c in out.chunks_mut(8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        c.copy_from_slice(&s.to_le_bytes()[..c.len()]);
    }
    out
}

/// Mounts an existing filesystem image read-only (without replaying any journal); unmounted and
/// detached on drop.
pub fn mount_read_only(image: &Path) -> MountedFs {
    let loopdev = LoopDevice::attach(image);
    let mountpoint = tempfile::tempdir().expect("mountpoint");
    run(Command::new("mount").args(["-o", "ro"]).arg(&loopdev.device).arg(mountpoint.path()));
    MountedFs { mountpoint, loopdev }
}

/// The PostgreSQL server tests may create databases on (`BULWARK_TEST_POSTGRES`, an admin URL
/// ending in a database name). `None` skips a PostgreSQL variant, saying so; where the run
/// promised one (`BULWARK_REQUIRE_POSTGRES`, as `.ci/run` sets it) a missing server is a
/// failure, not a silent pass.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("BULWARK_TEST_POSTGRES") {
        Ok(url) => Some(url),
        Err(_) if std::env::var_os("BULWARK_REQUIRE_POSTGRES").is_some() => {
            panic!("BULWARK_REQUIRE_POSTGRES is set but BULWARK_TEST_POSTGRES is not: no PostgreSQL to test against")
        }
        Err(_) => {
            eprintln!("BULWARK_TEST_POSTGRES is not set: PostgreSQL variant skipped (.ci/run sets it)");
            None
        }
    }
}

/// Whether the tests run as root (loop devices and mounts need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// Everything a restore must reproduce about a tree, entry by entry, for comparing two trees:
/// type, mode, owner, size, modification time (ns), extended attributes, symlink target,
/// device number, content digest, which entries are hard links of one another, and whether a
/// file is sparse. (Access times are left out: reading a tree to describe it changes them.)
pub fn describe_tree(root: &Path) -> std::collections::BTreeMap<Vec<u8>, String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = std::collections::BTreeMap::new();
    let mut inodes: std::collections::HashMap<u64, Vec<u8>> = std::collections::HashMap::new();
    let mut stack = vec![(root.to_path_buf(), Vec::<u8>::new())];
    while let Some((abs, rel)) = stack.pop() {
        let md = std::fs::symlink_metadata(&abs).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "chardev"
        } else if ft.is_block_device() {
            "blockdev"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        let mut d = format!(
            "{kind} mode={:o} uid={} gid={} mtime={}.{:09}",
            md.mode() & 0o7777,
            md.uid(),
            md.gid(),
            md.mtime(),
            md.mtime_nsec()
        );
        let mut names = vec![0u8; 65536];
        if let Ok(n) = rustix::fs::llistxattr(&abs, &mut names) {
            let mut list: Vec<&[u8]> = names[..n].split(|&b| b == 0).filter(|x| !x.is_empty()).collect();
            list.sort();
            for name in list {
                let mut v = vec![0u8; 65536];
                let n = rustix::fs::lgetxattr(&abs, std::ffi::OsStr::from_bytes(name), &mut v).unwrap_or(0);
                d.push_str(&format!(" xattr[{}]={}", String::from_utf8_lossy(name), blake3::hash(&v[..n]).to_hex()));
            }
        }
        match kind {
            "file" => {
                if md.nlink() > 1 {
                    if let Some(first) = inodes.get(&md.ino()) {
                        d.push_str(&format!(" link-of={}", String::from_utf8_lossy(first)));
                    } else {
                        inodes.insert(md.ino(), rel.clone());
                    }
                }
                let data = std::fs::read(&abs).unwrap();
                d.push_str(&format!(" size={} content={}", md.size(), blake3::hash(&data).to_hex()));
                if md.blocks() * 512 < md.size() / 2 {
                    d.push_str(" sparse");
                }
            }
            "symlink" => d.push_str(&format!(" target={:?}", std::fs::read_link(&abs).unwrap())),
            "chardev" | "blockdev" => d.push_str(&format!(" rdev={}", md.rdev())),
            "dir" => {
                // Sorted, so two trees are walked in the same order and link groups get the
                // same first path.
                let mut children: Vec<_> = std::fs::read_dir(&abs).unwrap().map(|e| e.unwrap().file_name()).collect();
                children.sort();
                for name in children.into_iter().rev() {
                    let mut r = rel.clone();
                    if !r.is_empty() {
                        r.push(b'/');
                    }
                    r.extend_from_slice(name.as_bytes());
                    stack.push((abs.join(&name), r));
                }
            }
            _ => {}
        }
        out.insert(rel, d);
    }
    out
}

/// Asserts two tree descriptions are equal, listing the first differences by path.
pub fn assert_same_tree(
    got: &std::collections::BTreeMap<Vec<u8>, String>,
    want: &std::collections::BTreeMap<Vec<u8>, String>,
    what: &str,
) {
    let mut diffs = Vec::new();
    for (p, w) in want {
        match got.get(p) {
            Some(g) if g == w => {}
            Some(g) => diffs.push(format!("{:?}:\n   want {w}\n   got  {g}", String::from_utf8_lossy(p))),
            None => diffs.push(format!("{:?}: missing", String::from_utf8_lossy(p))),
        }
    }
    for p in got.keys().filter(|p| !want.contains_key(*p)) {
        diffs.push(format!("{:?}: unexpected", String::from_utf8_lossy(p)));
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} differences:\n{}",
        diffs.len(),
        diffs.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
}
