//! The damage matrix: damage to each kind of repository object (chunks, tree pieces, indexes,
//! manifests, config, key file), in a plain and in an encrypted repository, through the command
//! line. Each case builds a small repository (a
//! volume point "vol", a file point "files" and a healthy volume point "other"), damages one
//! object, and checks what the operator sees and what heals it: `verify` names the damage and
//! moves damaged chunks aside, healthy points stay listed and restorable, the next backup of the
//! damaged name (or `verify --repair --from`) makes the damaged point whole again, and what
//! cannot be read is kept by `gc` until `forget --point` removes it.
//!
//! The repositories here keep one file per chunk (`repo init --loose`, the layout of format 3
//! and older), so a case can damage exactly one chunk's object; damage inside pack files is
//! covered by `bulwark-repo`'s `tests/packs.rs`.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;
use serde_json::Value;

const PASSWORD: &str = "damage-matrix";
const BLOCK: usize = 256 << 10;

/// A repository holding the three points every case starts from.
struct Repo {
    dir: tempfile::TempDir,
    path: PathBuf,
    encrypted: bool,
    /// Sources: the "vol" image (4 blocks of distinct data), the "files" tree, the "other" image.
    image: PathBuf,
    tree: PathBuf,
    other: PathBuf,
    vol: String,
    files: String,
}

impl Repo {
    fn new(encrypted: bool) -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo");
        let image = dir.path().join("vol.img");
        std::fs::write(&image, bulwark_testkit::random_bytes(4 * BLOCK, 11)).unwrap();
        let other = dir.path().join("other.img");
        std::fs::write(&other, bulwark_testkit::random_bytes(2 * BLOCK, 12)).unwrap();
        let tree = dir.path().join("src");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("big.bin"), bulwark_testkit::random_bytes(400_000, 13)).unwrap();
        std::fs::write(tree.join("notes.txt"), b"a small file\n").unwrap();
        std::fs::write(tree.join("sub/small.bin"), bulwark_testkit::random_bytes(5_000, 14)).unwrap();
        let mut init = bulwark();
        init.args(["repo", "init", "--loose"]).arg(&path);
        if encrypted {
            init.args(["--encryption", "aes256gcm"]).env("BULWARK_PASSWORD", PASSWORD);
        }
        ok(&mut init);
        let mut r = Repo { dir, path, encrypted, image, tree, other, vol: String::new(), files: String::new() };
        r.vol = r.backup("vol");
        r.files = r.backup("files");
        r.backup("other");
        r
    }

    /// `bulwark ARGS --repo REPO`, with the password when the repository is encrypted.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = bulwark();
        c.args(args).arg("--repo").arg(&self.path);
        if self.encrypted {
            c.env("BULWARK_PASSWORD", PASSWORD);
        }
        c
    }

    fn source(&self, name: &str) -> &Path {
        match name {
            "vol" => &self.image,
            "files" => &self.tree,
            _ => &self.other,
        }
    }

    /// Backs `name` up from its (unchanged) source; returns the new point's id.
    fn backup(&self, name: &str) -> String {
        let src = self.source(name).to_str().unwrap();
        let mut c = self.cmd(&["backup", src, "--name", name]);
        if name != "files" {
            c.args(["--block-size", "256K"]);
        }
        json(&mut c)["point"].as_str().unwrap().to_string()
    }

    /// `verify [POINT] --json`: exit status and report.
    fn verify(&self, point: Option<&str>) -> (i32, Value) {
        let r = run(self.cmd(&["verify", "--json"]).args(point));
        let v = serde_json::from_str(&r.stdout).unwrap_or_else(|_| panic!("verify: {}\n{}", r.stdout, r.stderr));
        (r.code, v)
    }

    fn verify_clean(&self, point: Option<&str>, what: &str) {
        let (code, v) = self.verify(point);
        assert_eq!(code, 0, "{what}: verify {point:?} should be clean: {v:#}");
    }

    fn restore(&self, point: &str, to: &Path) -> Run {
        run(&mut self.cmd(&["restore", point, "--to", to.to_str().unwrap()]))
    }

    /// The chunks a point's index lists (block chunks of a volume, tree pieces of a file point).
    fn index_entries(&self, point: &str) -> Vec<String> {
        let raw = std::fs::read(self.path.join(format!("points/{point}.index"))).unwrap();
        raw[24..raw.len() - 32].chunks(32).filter(|e| e.iter().any(|&b| b != 0)).map(hex).collect()
    }

    fn chunk(&self, hex: &str) -> PathBuf {
        self.path.join("chunks").join(&hex[..2]).join(hex)
    }

    /// Every chunk file in the repository.
    fn chunk_files(&self) -> BTreeSet<PathBuf> {
        let mut out = BTreeSet::new();
        for d in std::fs::read_dir(self.path.join("chunks")).unwrap() {
            for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
                out.insert(f.unwrap().path());
            }
        }
        out
    }

    /// The chunk holding big.bin of the file point: the largest chunk no index lists.
    fn content_chunk(&self) -> PathBuf {
        let indexed: BTreeSet<PathBuf> = std::fs::read_dir(self.path.join("points"))
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".index").map(String::from))
            .flat_map(|p| self.index_entries(&p))
            .map(|h| self.chunk(&h))
            .collect();
        let size = |p: &PathBuf| std::fs::metadata(p).unwrap().len();
        let content = self.chunk_files().into_iter().filter(|p| !indexed.contains(p));
        content.max_by_key(size).expect("the file point has content chunks")
    }

    /// Sets every chunk and point object's modification time an hour back, so that `gc` would
    /// delete whatever it does not keep on purpose.
    fn age(&self) {
        let then = SystemTime::now() - Duration::from_secs(3600);
        let points = std::fs::read_dir(self.path.join("points")).unwrap().map(|e| e.unwrap().path());
        for p in self.chunk_files().into_iter().chain(points) {
            std::fs::File::options().write(true).open(&p).unwrap().set_modified(then).unwrap();
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What happens to the object.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Harm {
    /// One bit flipped in place, in the middle (the file keeps its inode and attributes).
    Flip,
    /// Cut to half its length.
    Truncate,
    Delete,
}

fn harm(path: &Path, how: Harm) {
    let len = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).len();
    match how {
        Harm::Flip => {
            let f = std::fs::File::options().read(true).write(true).open(path).unwrap();
            let mut b = [0u8];
            f.read_exact_at(&mut b, len / 2).unwrap();
            f.write_all_at(&[b[0] ^ 0x10], len / 2).unwrap();
        }
        Harm::Truncate => std::fs::File::options().write(true).open(path).unwrap().set_len(len / 2).unwrap(),
        Harm::Delete => std::fs::remove_file(path).unwrap(),
    }
}

/// The object damaged.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    /// The chunk of block 1 of "vol".
    Block,
    /// The content chunk of big.bin in "files".
    Content,
    /// A tree piece of "files" (listed in its index).
    Piece,
    /// `points/ID.index` of "vol" (true) or "files" (false).
    Index(bool),
    /// `points/ID.manifest` of "vol" (true) or "files" (false).
    Manifest(bool),
}

impl Target {
    fn on_volume(self) -> bool {
        matches!(self, Target::Block | Target::Index(true) | Target::Manifest(true))
    }

    fn is_chunk(self) -> bool {
        matches!(self, Target::Block | Target::Content | Target::Piece)
    }

    /// Data that the next backup stores again, healing the old point. A tree piece is the old
    /// point's own description of its files, times included: the next backup of an unchanged
    /// source describes them identically (backups move no access times), so it heals too.
    fn heals(self) -> bool {
        matches!(self, Target::Block | Target::Content | Target::Piece)
    }
}

/// What the case does after the damage.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Flow {
    /// `verify` first (reports, quarantine, listing, restores, gc), then the next backup.
    Verify,
    /// The next backup at once, with no `verify` before it.
    Backup,
    /// `verify --repair --from SOURCE`, no backup.
    Repair,
}

fn damage_case(encrypted: bool, target: Target, how: Harm, flow: Flow) {
    let r = Repo::new(encrypted);
    let (name, victim) = if target.on_volume() { ("vol", r.vol.clone()) } else { ("files", r.files.clone()) };
    let object = match target {
        Target::Block => r.chunk(&r.index_entries(&r.vol)[1]),
        Target::Content => r.content_chunk(),
        Target::Piece => r.chunk(&r.index_entries(&r.files)[0]),
        Target::Index(_) => r.path.join(format!("points/{victim}.index")),
        Target::Manifest(_) => r.path.join(format!("points/{victim}.manifest")),
    };
    harm(&object, how);
    let ctx = format!("{} {target:?} {how:?} {flow:?}", if encrypted { "encrypted" } else { "plain" });

    match flow {
        Flow::Backup => {
            let new = r.backup(name);
            r.verify_clean(Some(&new), &ctx);
            if target.heals() {
                r.verify_clean(Some(&victim), &format!("{ctx}: the old point is whole again"));
            } else {
                let (code, v) = r.verify(Some(&victim));
                assert_eq!(code, 3, "{ctx}: the old point is still named damaged: {v:#}");
                ok(&mut r.cmd(&["forget", "--point", &victim]));
            }
            r.verify_clean(None, &ctx);
            return;
        }
        Flow::Repair => {
            let src = r.source(name).to_str().unwrap();
            let out = run(&mut r.cmd(&["verify", "--json", "--repair", "--from", src]));
            assert_eq!(out.code, 0, "{ctx}: repair: {}\n{}", out.stdout, out.stderr);
            let v: Value = serde_json::from_str(&out.stdout).unwrap();
            assert!(v["repair"]["stored_chunks"].as_u64().unwrap() >= 1, "{ctx}: {v:#}");
            r.verify_clean(Some(&victim), &format!("{ctx}: repaired without a backup"));
            return;
        }
        Flow::Verify => {}
    }

    // verify names the damaged point, and only it.
    let (code, v) = r.verify(None);
    assert_eq!(code, 3, "{ctx}: {v:#}");
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 3, "{ctx}: {v:#}");
    for p in points {
        assert_eq!(p["ok"], p["point"] != victim.as_str(), "{ctx}: only {victim} is damaged: {v:#}");
    }
    let h = points.iter().find(|p| p["point"] == victim.as_str()).unwrap();
    let problem = h["problem"].as_str().unwrap_or_default();
    match target {
        Target::Block => {
            let ranges = h["damaged_ranges"].as_array().unwrap();
            assert_eq!(ranges.len(), 1, "{ctx}: {h:#}");
            assert!(ranges[0]["first_block"] == 1 && ranges[0]["last_block"] == 1, "{ctx}: {h:#}");
        }
        Target::Content => {
            let files: Vec<&str> =
                h["damaged_files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
            assert_eq!(files, ["big.bin"], "{ctx}: {h:#}");
        }
        Target::Piece => {
            let piece = object.file_name().unwrap().to_str().unwrap();
            assert!(problem.contains(piece), "{ctx}: the problem names the tree piece {piece}: {h:#}");
        }
        Target::Index(_) => assert!(problem.contains("index"), "{ctx}: {h:#}"),
        Target::Manifest(_) if how == Harm::Delete => assert!(problem.contains("manifest is gone"), "{ctx}: {h:#}"),
        Target::Manifest(_) => assert!(problem.contains("manifest"), "{ctx}: {h:#}"),
    }
    // A damaged chunk is moved aside (a missing one has nothing to move).
    if target.is_chunk() {
        let aside = PathBuf::from(format!("{}.damaged", object.display()));
        assert!(!object.exists(), "{ctx}: {} moved away", object.display());
        assert_eq!(aside.exists(), how != Harm::Delete, "{ctx}: {}", aside.display());
    }

    // Listing: every point, the damaged manifest's as damaged.
    let listed = json(&mut r.cmd(&["points"]));
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3, "{ctx}: {listed:#?}");
    for p in listed {
        let damaged = matches!(target, Target::Manifest(_)) && p["id"] == victim.as_str();
        assert_eq!(p["status"], if damaged { "damaged" } else { "ok" }, "{ctx}: {p:#}");
    }

    // Healthy points restore; the damaged one does not, and leaves no volume behind.
    let out = r.dir.path().join("other.out");
    let done = r.restore("other:latest", &out);
    assert_eq!(done.code, 0, "{ctx}: {}", done.stderr);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&r.other).unwrap(), "{ctx}: other restored whole");
    let out = r.dir.path().join("victim.out");
    let failed = r.restore(&victim, &out);
    assert_ne!(failed.code, 0, "{ctx}: restoring the damaged point fails: {}", failed.stdout);
    if target.on_volume() {
        assert!(!out.exists(), "{ctx}: no volume left behind");
    } else if target == Target::Content {
        assert!(failed.stderr.contains("incomplete"), "{ctx}: {}", failed.stderr);
    }

    // gc keeps what belongs to a point it cannot read.
    if matches!(target, Target::Manifest(_)) {
        r.age();
        let before = r.chunk_files();
        let gc = json(&mut r.cmd(&["gc"]));
        assert!(r.path.join(format!("points/{victim}.index")).exists(), "{ctx}: gc kept the index: {gc:#}");
        assert_eq!(r.chunk_files(), before, "{ctx}: gc kept every chunk: {gc:#}");
    }

    // The next backup of the damaged name works and verifies clean; where a chunk was damaged,
    // the old point is whole again too (chunks are shared by name).
    let new = r.backup(name);
    r.verify_clean(Some(&new), &ctx);
    if target.heals() {
        r.verify_clean(Some(&victim), &format!("{ctx}: the old point is whole again"));
    } else {
        ok(&mut r.cmd(&["forget", "--point", &victim]));
        assert!(!r.path.join(format!("points/{victim}.index")).exists(), "{ctx}: forget removed the index");
    }
    r.verify_clean(None, &ctx);
}

/// One test per case and repository kind: `name: target, harm, flow;`.
macro_rules! cases {
    ($($(#[$attr:meta])* $name:ident: $target:expr, $harm:ident, $flow:ident;)*) => {
        mod plain {
            use super::*;
            $($(#[$attr])* #[test] fn $name() { damage_case(false, $target, Harm::$harm, Flow::$flow) })*
        }
        mod encrypted {
            use super::*;
            $($(#[$attr])* #[test] fn $name() { damage_case(true, $target, Harm::$harm, Flow::$flow) })*
        }
    };
}

cases! {
    block_flip: Target::Block, Flip, Verify;
    block_truncate: Target::Block, Truncate, Verify;
    block_delete: Target::Block, Delete, Verify;
    block_flip_unverified_backup: Target::Block, Flip, Backup;
    block_truncate_unverified_backup: Target::Block, Truncate, Backup;
    block_delete_unverified_backup: Target::Block, Delete, Backup;
    block_flip_repair: Target::Block, Flip, Repair;
    block_delete_repair: Target::Block, Delete, Repair;
    content_flip: Target::Content, Flip, Verify;
    content_truncate: Target::Content, Truncate, Verify;
    content_delete: Target::Content, Delete, Verify;
    content_flip_unverified_backup: Target::Content, Flip, Backup;
    content_truncate_unverified_backup: Target::Content, Truncate, Backup;
    content_delete_unverified_backup: Target::Content, Delete, Backup;
    content_flip_repair: Target::Content, Flip, Repair;
    content_delete_repair: Target::Content, Delete, Repair;
    piece_flip: Target::Piece, Flip, Verify;
    piece_truncate: Target::Piece, Truncate, Verify;
    piece_delete: Target::Piece, Delete, Verify;
    piece_flip_unverified_backup: Target::Piece, Flip, Backup;
    volume_index_flip: Target::Index(true), Flip, Verify;
    volume_index_truncate: Target::Index(true), Truncate, Verify;
    file_index_flip: Target::Index(false), Flip, Verify;
    file_index_truncate: Target::Index(false), Truncate, Verify;
    volume_manifest_flip: Target::Manifest(true), Flip, Verify;
    volume_manifest_truncate: Target::Manifest(true), Truncate, Verify;
    volume_manifest_delete: Target::Manifest(true), Delete, Verify;
    file_manifest_flip: Target::Manifest(false), Flip, Verify;
    file_manifest_truncate: Target::Manifest(false), Truncate, Verify;
    file_manifest_delete: Target::Manifest(false), Delete, Verify;
}

/// `config` and `config.copy`: either one damaged, any command works (a damaged primary is
/// healed from the copy, byte for byte); both damaged, the config is named as damaged.
fn config_copies(encrypted: bool) {
    let r = Repo::new(encrypted);
    let (config, copy) = (r.path.join("config"), r.path.join("config.copy"));
    let original = std::fs::read(&config).unwrap();
    let commands: [&[&str]; 3] = [&["points"], &["verify"], &["ls", "files:latest"]];
    for (how, args) in [Harm::Flip, Harm::Truncate, Harm::Delete].into_iter().zip(commands) {
        harm(&config, how);
        ok(&mut r.cmd(args));
        assert!(std::fs::read(&config).unwrap() == original, "{how:?}: config healed from its copy");
        harm(&copy, how);
        ok(&mut r.cmd(args));
        std::fs::write(&copy, &original).unwrap();
    }
    for how in [Harm::Flip, Harm::Truncate] {
        harm(&config, how);
        harm(&copy, how);
        let out = run(&mut r.cmd(&["points"]));
        assert!(out.code == 1 && out.stderr.contains("config file is damaged"), "{how:?}: {}", out.stderr);
        std::fs::write(&config, &original).unwrap();
        std::fs::write(&copy, &original).unwrap();
    }
    r.verify_clean(None, "config restored");
}

#[test]
fn plain_config_and_its_copy() {
    config_copies(false);
}

#[test]
fn encrypted_config_and_its_copy() {
    config_copies(true);
}

/// `keys/default` and `keys/default.copy`: either one damaged, the right password opens the
/// repository (a damaged primary is healed); both damaged, the key file is named as damaged,
/// never as a wrong password; a wrong password with whole key files is named as such.
#[test]
fn key_file_and_its_copy() {
    let r = Repo::new(true);
    let (key, copy) = (r.path.join("keys/default"), r.path.join("keys/default.copy"));
    let original = std::fs::read(&key).unwrap();
    for how in [Harm::Flip, Harm::Truncate, Harm::Delete] {
        harm(&key, how);
        ok(&mut r.cmd(&["points"]));
        assert!(std::fs::read(&key).unwrap() == original, "{how:?}: key file healed from its copy");
        harm(&copy, how);
        ok(&mut r.cmd(&["points"]));
        std::fs::write(&copy, &original).unwrap();
    }
    for how in [Harm::Flip, Harm::Truncate] {
        harm(&key, how);
        harm(&copy, how);
        let out = run(&mut r.cmd(&["points"]));
        assert_eq!(out.code, 1, "{how:?}: {}", out.stderr);
        assert!(out.stderr.contains("key file") && out.stderr.contains("damaged"), "{how:?}: {}", out.stderr);
        assert!(!out.stderr.contains("wrong password"), "{how:?}: {}", out.stderr);
        std::fs::write(&key, &original).unwrap();
        std::fs::write(&copy, &original).unwrap();
    }
    let out = run(r.cmd(&["points"]).env("BULWARK_PASSWORD", "not it"));
    assert!(out.code == 1 && out.stderr.contains("wrong password"), "{}", out.stderr);
    r.verify_clean(None, "key files restored");
}

/// Unmounts a bind mount when dropped, however the test ends.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A repository this user may only read (a read-only bind mount, used as nobody): listing,
/// `ls`, `verify` (which finds the damage but cannot move it aside) and restores all work.
fn read_only(encrypted: bool) {
    assert!(bulwark_testkit::is_root(), "mounts need root; run the suite as root");
    let r = Repo::new(encrypted);
    let block = r.chunk(&r.index_entries(&r.vol)[1]);
    harm(&block, Harm::Flip);
    std::fs::set_permissions(r.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(Command::new("chmod").args(["-R", "a+rX"]).arg(&r.path).status().unwrap().success());
    let mnt = r.dir.path().join("ro");
    std::fs::create_dir(&mnt).unwrap();
    bulwark_testkit::run(Command::new("mount").args(["--bind", "-o", "ro"]).arg(&r.path).arg(&mnt));
    let _unmount = Unmount(mnt.clone());
    assert!(std::fs::write(mnt.join("probe"), b"x").is_err(), "the bind mount is read-only");
    let out = r.dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::chown(&out, Some(65534), Some(65534)).unwrap();
    let as_nobody = |args: &[&str]| {
        run(Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_bulwark"))
            .args(args)
            .arg("--repo")
            .arg(&mnt)
            .env("BULWARK_PASSWORD", PASSWORD))
    };

    let listed = as_nobody(&["points", "--json"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert_eq!(serde_json::from_str::<Value>(&listed.stdout).unwrap().as_array().unwrap().len(), 3);
    let ls = as_nobody(&["ls", "files:latest", "--json"]);
    assert!(ls.code == 0 && ls.stdout.contains("big.bin"), "{}\n{}", ls.stdout, ls.stderr);
    let verify = as_nobody(&["verify", "--json"]);
    assert_eq!(verify.code, 3, "{}\n{}", verify.stdout, verify.stderr);
    let v: Value = serde_json::from_str(&verify.stdout).unwrap();
    let note = v["quarantine_failed"].as_str().unwrap_or_default();
    assert!(note.contains("not moved aside"), "{v:#}");
    assert!(block.exists(), "the damaged chunk is where it was");
    let to = out.join("other.img");
    let restored = as_nobody(&["restore", "other:latest", "--to", to.to_str().unwrap()]);
    assert_eq!(restored.code, 0, "{}", restored.stderr);
    assert!(std::fs::read(&to).unwrap() == std::fs::read(&r.other).unwrap(), "other restored whole");
}

#[test]
fn plain_read_only_repository() {
    read_only(false);
}

#[test]
fn encrypted_read_only_repository() {
    read_only(true);
}
