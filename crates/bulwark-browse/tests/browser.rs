//! The browser's API as the server calls it, on ext4 images made by `mkfs.ext4 -d`: pages,
//! reads at any offset (HTTP Range), entries, from several threads at once.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bulwark_browse::{BrowseError, Browser, EntryKind};
use bulwark_repo::image::check_range;
use bulwark_repo::Image;

/// An image file read as a point is.
struct FileImage(std::fs::File, u64);

impl Image for FileImage {
    fn size(&self) -> u64 {
        self.1
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        check_range(self.1, buf.len(), offset)?;
        self.0.read_exact_at(buf, offset)
    }
    fn describe(&self) -> String {
        "test image".into()
    }
}

fn image(src: &Path, img: &Path) -> Arc<dyn Image> {
    let ok = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(src)
        .arg(img)
        .arg("32M")
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfs.ext4 runs (package e2fsprogs)");
    let f = std::fs::File::open(img).unwrap();
    let len = f.metadata().unwrap().len();
    Arc::new(FileImage(f, len))
}

fn bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn pages_reads_and_entries_match_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("many")).unwrap();
    for i in 0..250 {
        std::fs::write(src.join(format!("many/n{i:03}")), format!("{i}")).unwrap();
    }
    let data = bytes(5 << 20 | 333, 1);
    std::fs::write(src.join("data.bin"), &data).unwrap();
    std::os::unix::fs::symlink("data.bin", src.join("link")).unwrap();
    let b = Arc::new(Browser::open(image(&src, &dir.path().join("fs.img"))).unwrap());
    assert_eq!(b.filesystem(), "ext4");

    // Pages of 64: every name once, sorted, the last page without a cursor.
    let (mut names, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let p = b.list("/many", cursor.as_deref(), 64).unwrap();
        pages += 1;
        names.extend(p.entries.iter().map(|e| e.name.clone()));
        cursor = p.next;
        if cursor.is_none() {
            break;
        }
    }
    let want: Vec<String> = (0..250).map(|i| format!("n{i:03}")).collect();
    assert_eq!((names, pages), (want, 4));

    // Reads from several threads at once, at offsets inside blocks and across them.
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (b, data) = (b.clone(), data.clone());
            std::thread::spawn(move || {
                for (off, len) in [(0u64, 10usize), (4095 + t, 8193), (1 << 20, 1 << 20), (data.len() as u64 - 5, 100)]
                {
                    let got = b.read("/data.bin", off, len).unwrap();
                    let end = (off as usize + len).min(data.len());
                    assert!(got == data[off as usize..end], "read of {len} at {off}");
                }
                // Sequential reads go on where the last ended.
                let mut all = Vec::new();
                while all.len() < data.len() {
                    let piece = b.read("/data.bin", all.len() as u64, 3 << 20).unwrap();
                    assert!(!piece.is_empty());
                    all.extend(piece);
                }
                assert!(all == data);
                assert!(b.read("/data.bin", u64::MAX, 10).unwrap().is_empty(), "past the end: nothing");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }

    let link = b.stat("/link").unwrap();
    assert_eq!((link.kind, link.target.as_deref(), link.size), (EntryKind::Symlink, Some("data.bin"), 8));
    let file = b.stat("/data.bin").unwrap();
    assert_eq!((file.kind, file.size, file.mode), (EntryKind::File, data.len() as u64, 0o644));
    assert!(file.inode.is_some());
    assert!(matches!(b.stat("/nope"), Err(BrowseError::NotFound { .. })));
    assert!(matches!(b.list("/data.bin", None, 10), Err(BrowseError::BadPath { .. })));
    assert!(matches!(b.read("/many", 0, 10), Err(BrowseError::BadPath { .. })));
    assert!(matches!(b.stat("/many/../data.bin"), Err(BrowseError::BadPath { .. })));
}

#[test]
fn what_is_not_ext4_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("zero.img");
    std::fs::File::create(&img).unwrap().set_len(8 << 20).unwrap();
    let f = std::fs::File::open(&img).unwrap();
    let e = Browser::open(Arc::new(FileImage(f, 8 << 20))).err().unwrap();
    assert!(matches!(e, BrowseError::NoFilesystem { .. }), "{e}");
    assert!(e.to_string().contains("no filesystem"), "{e}");
}

#[test]
fn the_browser_can_be_shared_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<Browser>();
}

#[test]
fn a_node_that_does_not_mount_says_so_for_xfs() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("xfs.img");
    std::fs::File::create(&img).unwrap().set_len(300 << 20).unwrap();
    let ok = std::process::Command::new("mkfs.xfs").arg("-q").arg(&img).status().unwrap().success();
    assert!(ok, "mkfs.xfs runs (package xfsprogs)");
    let f = std::fs::File::open(&img).unwrap();
    let size = f.metadata().unwrap().len();
    let e = Browser::open_with(Arc::new(FileImage(f, size)), false).err().expect("refused");
    assert!(matches!(e, BrowseError::MountsOff { .. }), "{e}");
    assert!(e.to_string().contains("XFS") && e.to_string().contains("own computer"), "{e}");
}
