//! Test support: real loop devices, real filesystems and image helpers, so every crate's tests
//! use the same, correct set-up and tear-down. Needs root (CI runs as root).

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Whether the tests run as root (loop devices and mounts need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}
