//! Instant recovery: `bulwark serve` (a point as an NBD export) and `bulwark export` (a point as
//! an image file), judged by the tools people use with them: libnbd's nbdinfo and nbdcopy,
//! qemu-img, qemu-io, and a VM booting from a served point in qemu.
//!
//! The tools are required (`.ci/run` installs them); BULWARK_SKIP_MISSING_TOOLS=1 turns a
//! missing tool into a skipped test instead of a failure.

mod common;
mod stored;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;

/// Whether every tool is installed. A missing one fails the test with the package that has it,
/// unless BULWARK_SKIP_MISSING_TOOLS is set.
fn have_tools(tools: &[(&str, &str)]) -> bool {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(t, _)| {
            !Command::new("sh").arg("-c").arg(format!("command -v {t}")).output().unwrap().status.success()
        })
        .map(|(t, p)| format!("{t} (Debian package {p})"))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!("missing tools: {}; .ci/run installs them", missing.join(", "));
    if std::env::var_os("BULWARK_SKIP_MISSING_TOOLS").is_some() {
        eprintln!("skipped: {msg}");
        return false;
    }
    panic!("{msg} (BULWARK_SKIP_MISSING_TOOLS=1 skips such tests)");
}

const NBDINFO: (&str, &str) = ("nbdinfo", "libnbd-bin");
const NBDCOPY: (&str, &str) = ("nbdcopy", "libnbd-bin");
const QEMU_IMG: (&str, &str) = ("qemu-img", "qemu-utils");
const QEMU_IO: (&str, &str) = ("qemu-io", "qemu-utils");

/// The test image: random data, a 2 MiB zero range (two zero blocks of the point), a small
/// zero range inside a block, and a size that is no multiple of the 1 MiB block size.
fn test_image(dir: &Path, seed: u64) -> (PathBuf, Vec<u8>) {
    let mut data = bulwark_testkit::random_bytes(6 * MIB + 25 * 512, seed);
    data[MIB..3 * MIB].fill(0);
    data[4 * MIB + 100..4 * MIB + 9000].fill(0);
    let path = dir.join(format!("disk{seed}.img"));
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

fn point_of(repo: &Path, image: &Path, name: &str) -> String {
    backup(repo, image, name)["point"].as_str().unwrap().to_string()
}

/// A running `bulwark serve`; stopped with SIGTERM when dropped.
struct Serving {
    child: Option<Child>,
    url: String,
    port: u16,
    export: String,
    info: serde_json::Value,
    log: PathBuf,
}

impl Serving {
    fn start(repo: &Path, point: &str, extra: &[&str], dir: &Path) -> Serving {
        let log = dir.join(format!("serve-{}.log", std::process::id() ^ rand_u64() as u32));
        let mut child = bulwark()
            .args(["serve", point, "--listen", "127.0.0.1:0", "--json", "--repo"])
            .arg(repo)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let info: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            let _ = child.wait();
            panic!("serve printed {line:?}; its log:\n{}", std::fs::read_to_string(&log).unwrap())
        });
        let url = info["url"].as_str().unwrap().to_string();
        let port = info["listening"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap();
        let export = info["export"].as_str().unwrap().to_string();
        Serving { child: Some(child), url, port, export, info, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// SIGTERM, then the exit status and the log.
    fn stop(&mut self) -> (i32, String) {
        let mut child = self.child.take().expect("running");
        ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
        let status = child.wait().unwrap();
        (status.code().unwrap_or(-1), self.log())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut b).unwrap();
    u64::from_le_bytes(b)
}

fn tool(name: &str) -> Command {
    Command::new(name)
}

/// nbdcopy of the whole export into a file, read back.
fn copy_out(url: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("copy-{}.img", rand_u64()));
    ok(tool("nbdcopy").arg(url).arg(&out));
    let data = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    data
}

/// Every file under `dir` with its length and content: a repository compared before and after.
fn snapshot_tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A read-only export as nbdinfo, qemu-img and nbdcopy see it: the right size, read-only,
/// listed, identical to the original; another name refused.
#[test]
fn served_point_reads_back_identical() {
    if !have_tools(&[NBDINFO, NBDCOPY, QEMU_IMG, QEMU_IO]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let (image, data) = test_image(dir.path(), 1);
    let point = point_of(&repo, &image, "disk");
    let srv = Serving::start(&repo, "disk:latest", &[], dir.path());
    assert_eq!(srv.export, point, "the default export name is the point id");
    assert_eq!(srv.url, format!("nbd://127.0.0.1:{}/{point}", srv.port));
    assert!(srv.info["qemu"].as_str().unwrap().contains(&format!("file={},format=raw", srv.url)));

    let info = ok(tool("nbdinfo").arg(&srv.url));
    assert!(info.contains(&format!("export-size: {}", data.len())), "{info}");
    assert!(info.contains("is_read_only: true"), "{info}");
    let list = ok(tool("nbdinfo").arg("--list").arg(format!("nbd://127.0.0.1:{}", srv.port)));
    assert!(list.contains(&format!("export=\"{point}\"")), "{list}");

    let cmp = ok(tool("qemu-img").args(["compare", "-f", "raw", "-F", "raw", &srv.url]).arg(&image));
    assert!(cmp.contains("identical"), "{cmp}");
    assert!(copy_out(&srv.url, dir.path()) == data, "nbdcopy's copy differs from the original");

    let wrong = run(tool("nbdinfo").arg(format!("nbd://127.0.0.1:{}/other", srv.port)));
    assert_ne!(wrong.code, 0, "another export name is refused");
    assert!(wrong.stderr.contains("other"), "{}", wrong.stderr);
    let write = run(tool("qemu-io").args(["-f", "raw", "-c", "write 0 4k", &srv.url]));
    assert!(write.code != 0 && write.stderr.contains("Permission denied"), "{}", write.stderr);
}

/// A client that speaks the protocol by hand up to transmission (simple replies).
fn raw_client(port: u16, export: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..8], b"NBDMAGIC");
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut go = b"IHAVEOPT".to_vec();
    go.extend_from_slice(&7u32.to_be_bytes());
    go.extend_from_slice(&(4 + export.len() as u32 + 2).to_be_bytes());
    go.extend_from_slice(&(export.len() as u32).to_be_bytes());
    go.extend_from_slice(export.as_bytes());
    go.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&go).unwrap();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut d = vec![0u8; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
        s.read_exact(&mut d).unwrap();
        match kind {
            1 => return s,
            3 => continue,
            other => panic!("NBD_OPT_GO answered {other:#x}: {}", String::from_utf8_lossy(&d)),
        }
    }
}

fn raw_read(s: &mut std::net::TcpStream, offset: u64, len: u32) -> (u32, Vec<u8>) {
    let mut req = 0x2560_9513u32.to_be_bytes().to_vec();
    req.extend_from_slice(&[0, 0, 0, 0]);
    req.extend_from_slice(&77u64.to_be_bytes());
    req.extend_from_slice(&offset.to_be_bytes());
    req.extend_from_slice(&len.to_be_bytes());
    s.write_all(&req).unwrap();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    let error = u32::from_be_bytes(h[4..8].try_into().unwrap());
    let mut data = vec![];
    if error == 0 {
        data = vec![0u8; len as usize];
        s.read_exact(&mut data).unwrap();
    }
    (error, data)
}

/// Garbage from one client costs that client its connection, and nobody else anything.
#[test]
fn garbage_from_one_client_does_not_harm_another() {
    if !have_tools(&[NBDINFO]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let (image, data) = test_image(dir.path(), 2);
    let point = point_of(&repo, &image, "disk");
    let srv = Serving::start(&repo, &point, &[], dir.path());
    let mut good = raw_client(srv.port, &point);
    assert_eq!(raw_read(&mut good, 0, 4096).1, data[..4096]);

    let mut bad = raw_client(srv.port, &point);
    bad.write_all(&[0x5a; 28]).unwrap();
    let mut b = [0u8; 1];
    assert!(matches!(bad.read(&mut b), Ok(0) | Err(_)), "a bad magic ends the connection");
    let mut absurd = raw_client(srv.port, &point);
    let mut req = 0x2560_9513u32.to_be_bytes().to_vec();
    req.extend_from_slice(&[0, 0, 0, 1]);
    req.extend_from_slice(&[0; 16]);
    req.extend_from_slice(&u32::MAX.to_be_bytes());
    absurd.write_all(&req).unwrap();
    assert!(matches!(absurd.read(&mut b), Ok(0) | Err(_)), "a 4 GiB write ends the connection");
    let mut junk = std::net::TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    junk.write_all(&[0xff; 512]).unwrap();
    // A write to a read-only export: refused with EPERM, and the connection stays.
    let mut req = 0x2560_9513u32.to_be_bytes().to_vec();
    req.extend_from_slice(&[0, 0, 0, 1]);
    req.extend_from_slice(&[0; 16]);
    req.extend_from_slice(&4u32.to_be_bytes());
    req.extend_from_slice(b"evil");
    good.write_all(&req).unwrap();
    let mut h = [0u8; 16];
    good.read_exact(&mut h).unwrap();
    assert_eq!(u32::from_be_bytes(h[4..8].try_into().unwrap()), 1, "EPERM");

    let (error, got) = raw_read(&mut good, 5 * MIB as u64 + 3, 70_000);
    assert_eq!(error, 0);
    assert_eq!(got, data[5 * MIB + 3..5 * MIB + 3 + 70_000], "the other client still reads");
    assert!(ok(tool("nbdinfo").arg(&srv.url)).contains("export-size"), "new clients still come in");
    // Logged as the connection closes: the client may see the close a moment before.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !srv.log().contains("protocol violation") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(srv.log().contains("protocol violation"), "{}", srv.log());
}

/// Writes through a writable export land in its overlay and read back; the repository does not
/// change, the point verifies and restores as it was, and the overlay is gone at stop.
#[test]
fn writable_export_keeps_writes_in_an_overlay() {
    if !have_tools(&[NBDCOPY, QEMU_IO]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let (image, data) = test_image(dir.path(), 3);
    let point = point_of(&repo, &image, "disk");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let before = snapshot_tree(&repo);
    let mut srv =
        Serving::start(&repo, &point, &["--writable", "--scratch-dir", scratch.to_str().unwrap()], dir.path());
    assert_eq!(srv.info["writable"], true);
    let out = ok(tool("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0xab 1048576 65536",
        "-c",
        "write -P 0xcd 4097 100",
        "-c",
        "write -z 5242880 1048576",
        "-c",
        "write -P 0x11 6291000 500",
        &srv.url,
    ]));
    assert!(!out.contains("failed"), "{out}");
    let mut model = data.clone();
    model[MIB..MIB + 65536].fill(0xab);
    model[4097..4197].fill(0xcd);
    model[5 * MIB..6 * MIB].fill(0);
    model[6_291_000..6_291_500].fill(0x11);
    assert!(copy_out(&srv.url, dir.path()) == model, "the export reads back what was written");
    let check = ok(tool("qemu-io").args(["-f", "raw", "-c", "read -P 0xab 1048576 65536", &srv.url]));
    assert!(!check.contains("failed") && !check.contains("mismatch"), "{check}");
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0, "the overlay has no name to leave behind");

    let (code, log) = srv.stop();
    assert_eq!(code, 0, "SIGTERM stops serving cleanly:\n{log}");
    assert!(log.contains("overlay") && log.contains("discarded"), "{log}");
    assert!(snapshot_tree(&repo) == before, "the repository is never written");
    let v = verify(&repo);
    assert_eq!(v.code, 0, "{}\n{}", v.stdout, v.stderr);
    let restored = dir.path().join("restored.img");
    let r = restore(&repo, &point, &restored);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(std::fs::read(&restored).unwrap() == data, "the point restores as it was backed up");
}

/// An overlay whose disk fills answers ENOSPC, and the export goes on serving.
#[test]
fn full_overlay_disk_answers_enospc_and_keeps_serving() {
    if !have_tools(&[NBDCOPY, QEMU_IO]) {
        return;
    }
    assert!(bulwark_testkit::is_root(), "mounting a small tmpfs needs root (as the loop device tests do)");
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let (image, data) = test_image(dir.path(), 4);
    let point = point_of(&repo, &image, "disk");
    let small = tempfile::tempdir().unwrap();
    bulwark_testkit::run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(small.path()));
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(small.path());
    let mut srv =
        Serving::start(&repo, &point, &["--writable", "--scratch-dir", small.path().to_str().unwrap()], dir.path());
    let out = run(tool("qemu-io").args(["-f", "raw", "-c", "write -P 0xee 0 4M", &srv.url]));
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(said.contains("No space left on device"), "{said}");
    assert!(copy_out(&srv.url, dir.path()) == data, "the failed write changed nothing, and reads go on");
    let (code, log) = srv.stop();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("No space left on device"), "the server says why: {log}");
}

/// Raw, qcow2 and vmdk exports hold the point's bytes; raw is sparse; an existing file is kept
/// unless --overwrite; a missing qemu-img is named.
#[test]
fn exports_match_the_original() {
    if !have_tools(&[QEMU_IMG]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let (image, data) = test_image(dir.path(), 5);
    let point = point_of(&repo, &image, "disk");
    let export = |to: &Path, format: &str, extra: &[&str]| {
        run(bulwark()
            .args(["export", &point, "--format", format, "--json", "--repo"])
            .arg(&repo)
            .arg("--to")
            .arg(to)
            .args(extra))
    };
    let raw = dir.path().join("out.raw");
    let r = export(&raw, "raw", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["size"], data.len() as u64);
    assert!(std::fs::read(&raw).unwrap() == data, "the raw export is the original");
    let meta = std::fs::metadata(&raw).unwrap();
    assert!(
        meta.blocks() * 512 < meta.len() - MIB as u64,
        "zero ranges stay holes: {} of {}",
        meta.blocks() * 512,
        meta.len()
    );

    let refused = export(&raw, "raw", &[]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("already exists") && refused.stderr.contains("--overwrite"), "{}", refused.stderr);
    assert_eq!(export(&raw, "raw", &["--overwrite"]).code, 0);

    for format in ["qcow2", "vmdk"] {
        let to = dir.path().join(format!("out.{format}"));
        let r = export(&to, format, &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let cmp = ok(tool("qemu-img").args(["compare", "-f", format, "-F", "raw"]).arg(&to).arg(&image));
        assert!(cmp.contains("identical"), "{format}: {cmp}");
    }
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert!(!names.iter().any(|n| n.contains("partial")), "no temporary file is left: {names:?}");

    let empty = tempfile::tempdir().unwrap();
    let r = run(bulwark()
        .args(["export", &point, "--format", "qcow2", "--repo"])
        .arg(&repo)
        .arg("--to")
        .arg(dir.path().join("none.qcow2"))
        .env("PATH", empty.path()));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("qemu-img is not installed"), "{}", r.stderr);
    assert!(!dir.path().join("none.qcow2").exists());
}

/// A partition of a disk point, served and exported on its own.
#[test]
fn a_partition_is_a_volume_of_its_own() {
    if !have_tools(&[NBDINFO, NBDCOPY]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let (image, mut data) = test_image(dir.path(), 6);
    // An MBR with one Linux partition: sectors 2048..8192 (1 MiB to 4 MiB).
    data[..512].fill(0);
    let entry = &mut data[446..462];
    entry[4] = 0x83;
    entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
    entry[12..16].copy_from_slice(&6144u32.to_le_bytes());
    data[510] = 0x55;
    data[511] = 0xaa;
    std::fs::write(&image, &data).unwrap();
    let point = point_of(&repo, &image, "disk");
    let part = &data[MIB..4 * MIB];

    let srv = Serving::start(&repo, &point, &["--volume", "1"], dir.path());
    assert_eq!(srv.export, format!("{point}-v1"));
    assert!(ok(tool("nbdinfo").arg(&srv.url)).contains(&format!("export-size: {}", part.len())));
    assert!(copy_out(&srv.url, dir.path()) == part);

    let to = dir.path().join("part.raw");
    ok(bulwark().args(["export", &point, "--volume", "1", "--repo"]).arg(&repo).arg("--to").arg(&to));
    assert!(std::fs::read(&to).unwrap() == part);
}

/// What the operator is told when the point, the volume or a chunk is not there.
#[test]
fn unknown_points_volumes_and_damaged_chunks_are_explained() {
    if !have_tools(&[NBDCOPY, QEMU_IO]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let (image, data) = test_image(dir.path(), 7);
    let point = point_of(&repo, &image, "disk");
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("f"), b"x").unwrap();
    let files = point_of(&repo, &tree, "files");

    let serve = |point: &str, extra: &[&str]| {
        run(bulwark().args(["serve", point, "--listen", "127.0.0.1:0", "--repo"]).arg(&repo).args(extra))
    };
    let r = serve("nope:latest", &[]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no restore point nope:latest"), "{}", r.stderr);
    let r = serve(&point, &["--volume", "3"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("has no volume 3"), "{}", r.stderr);
    let r = serve(&files, &[]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("file-level point"), "{}", r.stderr);
    let r = run(bulwark().args(["export", "nope:latest", "--repo"]).arg(&repo).arg("--to").arg(dir.path().join("x")));
    assert!(r.code == 1 && r.stderr.contains("no restore point"), "{}", r.stderr);

    // Damage the chunk of block 4 (an index entry is 32 bytes after a 24-byte header).
    let index = std::fs::read(repo.join(format!("points/{point}.index"))).unwrap();
    let hex: String = index[24 + 4 * 32..24 + 5 * 32].iter().map(|b| format!("{b:02x}")).collect();
    let r = bulwark_repo::Repository::open(repo.as_path(), None).unwrap();
    for c in stored::copies(&r, &repo, [bulwark_repo::ChunkId::from_hex(&hex).unwrap()]) {
        c.flip();
    }

    let srv = Serving::start(&repo, &point, &[], dir.path());
    let bad = run(tool("qemu-io").args(["-r", "-f", "raw", "-c", "read 4194304 65536", &srv.url]));
    let said = format!("{}{}", bad.stdout, bad.stderr);
    assert!(said.contains("Input/output error"), "the client gets EIO: {said}");
    let good = ok(tool("qemu-io").args(["-r", "-f", "raw", "-c", "read -v 0 16", &srv.url]));
    assert!(!good.contains("failed"), "healthy blocks still read: {good}");
    assert!(run(tool("nbdcopy").arg(&srv.url).arg(dir.path().join("c.img"))).code != 0, "a copy fails");
    let log = srv.log();
    assert!(log.contains("block 4") && log.contains(&hex) && log.contains("damaged"), "the log says why: {log}");
    let _ = data;
}

/// A VM boots from a served point: its boot sector, read over NBD by qemu's BIOS, reads a sector
/// near the end of the disk and prints it on the serial port.
#[test]
fn a_vm_boots_from_a_served_point() {
    if !have_tools(&[("nasm", "nasm"), ("qemu-system-x86_64", "qemu-system-x86")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let asm = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mbr.asm");
    let mbr = dir.path().join("mbr.bin");
    ok(tool("nasm").args(["-f", "bin", "-o"]).arg(&mbr).arg(&asm));
    let mbr = std::fs::read(&mbr).unwrap();
    assert_eq!(mbr.len(), 512);
    let nonce = format!("{:016x}", rand_u64());
    let mut disk = vec![0u8; 64 * MIB];
    disk[..512].copy_from_slice(&mbr);
    disk[2 * MIB..3 * MIB].copy_from_slice(&bulwark_testkit::random_bytes(MIB, 8));
    let text = format!("BULWARK-BOOT-OK {nonce}\0");
    disk[122_880 * 512..122_880 * 512 + text.len()].copy_from_slice(text.as_bytes());
    let image = dir.path().join("boot.img");
    std::fs::write(&image, &disk).unwrap();
    let point = point_of(&repo, &image, "vm");
    let srv = Serving::start(&repo, &point, &[], dir.path());

    let mut vm = tool("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "32", "-display", "none", "-monitor", "none", "-serial", "stdio"])
        .args(["-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-drive"])
        .arg(format!("file={},format=raw,if=ide,snapshot=on", srv.url))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A guard against a hang, not a speed check: the VM normally ends in well under a second.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = vm.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = vm.kill();
            let _ = vm.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    vm.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut err = String::new();
    vm.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = status.unwrap_or_else(|| panic!("the VM did not finish in 60 s; serial: {out:?}; stderr: {err}"));
    assert!(out.contains(&format!("BULWARK-BOOT-OK {nonce}")), "serial: {out:?}; stderr: {err}");
    assert_eq!(status.code(), Some(33), "isa-debug-exit with 0x10; serial: {out:?}; stderr: {err}");
}
