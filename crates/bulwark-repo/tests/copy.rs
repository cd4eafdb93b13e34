//! Copying restore points between repositories (the evacuation of a scale-out extent): the same
//! points, restorable byte for byte, whatever keys each repository names its chunks with.

use bulwark_repo::copy::copy_point;
use bulwark_repo::tree::{EntryKind, FileExtent, TreeEntry, PIECE};
use bulwark_repo::verify::{verify, Selection};
use bulwark_repo::{
    BlockRef, BlockSize, ChunkId, Compression, FileSummary, InitOptions, Manifest, PointKind, PointSpec, PointStats,
    PointWriter, RepoError, Repository,
};

const BS: usize = 64 << 10;

fn spec(kind: PointKind, name: &str, blocks: usize, parent: Option<&Manifest>) -> PointSpec {
    PointSpec {
        kind,
        name: name.into(),
        source: "test".into(),
        volume_size: (blocks * BS) as u64,
        block_size: BlockSize::new(if kind == PointKind::Files { PIECE } else { BS } as u32).unwrap(),
        compression: if kind == PointKind::Files { Compression::DedupeFriendly } else { Compression::None },
        parent: parent.map(|m| m.id.clone()),
        snapshot: "none".into(),
        consistency: "crash-consistent".into(),
        key_scope: None,
    }
}

/// Block `i` of a volume called `seed`: distinct for every (seed, i), incompressible.
fn block(seed: u64, i: usize) -> Vec<u8> {
    let mut out = vec![0; BS];
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(&(i as u64).to_le_bytes());
    h.finalize_xof().fill(&mut out);
    out
}

/// Stores `b` unless the repository lets it be reused; its name.
fn store(repo: &Repository, compression: Compression, b: &[u8]) -> ChunkId {
    let mut codec = repo.codec(compression);
    let id = codec.digest(b);
    if !repo.reuse_chunk(&id).unwrap() {
        repo.put_chunk(&id, &codec.encode(&id, b)).unwrap();
    }
    id
}

/// A volume; `None` is a zero block.
type Volume = Vec<Option<Vec<u8>>>;

fn write_blocks(repo: &Repository, w: &mut PointWriter, blocks: &Volume) {
    for b in blocks {
        let r = match b {
            Some(b) => BlockRef::Chunk(store(repo, Compression::None, b)),
            None => BlockRef::Zero,
        };
        w.push_block(&r).unwrap();
    }
}

fn backup(repo: &Repository, name: &str, blocks: &Volume, parent: Option<&Manifest>) -> Manifest {
    let mut w = repo.begin_point(spec(PointKind::Volume, name, blocks.len(), parent)).unwrap();
    write_blocks(repo, &mut w, blocks);
    let stats = PointStats { source_bytes: (blocks.len() * BS) as u64, read_bytes: 7, ..Default::default() };
    w.commit(stats).unwrap()
}

/// Reads a volume point back whole and compares it with what was written.
fn assert_restores(repo: &Repository, m: &Manifest, blocks: &Volume) {
    let mut index = repo.open_index(m).unwrap();
    let mut codec = repo.codec(Compression::None);
    for (i, b) in blocks.iter().enumerate() {
        match (index.next_block().unwrap().unwrap(), b) {
            (BlockRef::Chunk(id), Some(b)) => {
                assert_eq!(&repo.read_chunk(&mut codec, &id).unwrap(), b, "block {i} of {}", m.id)
            }
            (BlockRef::Zero, None) => {}
            (r, _) => panic!("block {i} of {}: {r:?}", m.id),
        }
    }
    assert!(index.next_block().unwrap().is_none());
}

/// A file tree: files with their content (a `None` extent is a hole), and enough symlinks to
/// need more than one tree piece.
struct Files {
    files: Vec<(String, Vec<Option<Vec<u8>>>)>,
    links: usize,
}

fn files(seed: u64, links: usize) -> Files {
    let files = (0..6)
        .map(|f| {
            let content = (0..4).map(|x| (x != 2).then(|| block(seed * 100 + f / 2, x as usize))).collect();
            (format!("dir/file{f}"), content)
        })
        .collect();
    Files { files, links }
}

fn file_backup(repo: &Repository, name: &str, fs: &Files, parent: Option<&Manifest>) -> Manifest {
    let sp = spec(PointKind::Files, name, 0, parent);
    let compression = sp.compression;
    let w = repo.begin_point(sp).unwrap();
    let mut entries = vec![TreeEntry::new(EntryKind::Dir, Vec::new()), TreeEntry::new(EntryKind::Dir, b"dir".to_vec())];
    for (path, content) in &fs.files {
        let mut e = TreeEntry::new(EntryKind::File, path.as_bytes().to_vec());
        e.size = (content.len() * BS) as u64;
        e.mode = 0o640;
        for (x, b) in content.iter().enumerate() {
            let chunk = b.as_ref().map(|b| store(repo, compression, b));
            e.extents.push(FileExtent { offset: (x * BS) as u64, length: BS as u64, chunk });
        }
        entries.push(e);
    }
    for l in 0..fs.links {
        let mut e = TreeEntry::new(EntryKind::Symlink, format!("links/{l:08}-a-fairly-long-name").into_bytes());
        e.target = format!("../dir/file{}", l % 6).into_bytes();
        entries.push(e);
    }
    let mut stream = Vec::new();
    for e in &entries {
        e.encode(&mut stream);
    }
    let pieces: Vec<ChunkId> = stream.chunks(PIECE).map(|p| store(repo, compression, p)).collect();
    let summary =
        FileSummary { entries: entries.len() as u64, files: 6, dirs: 2, status: "ok".into(), ..Default::default() };
    let stats = PointStats { source_bytes: 6 * 4 * BS as u64, ..Default::default() };
    w.commit_files(&pieces, stream.len() as u64, stats, summary).unwrap()
}

/// Reads a file point's tree and every file's content back and compares them with `fs`.
fn assert_files_restore(repo: &Repository, m: &Manifest, fs: &Files) {
    let data = repo.for_point(m);
    let mut codec = data.codec(Compression::None);
    let (mut seen_files, mut seen_links) = (0, 0);
    repo.read_tree(m, |e| {
        match e.kind {
            EntryKind::File => {
                let (path, content) = &fs.files[seen_files];
                assert_eq!(&e.path_lossy(), path);
                assert_eq!(e.extents.len(), content.len());
                for (x, b) in e.extents.iter().zip(content) {
                    let got = x.chunk.map(|c| data.read_chunk(&mut codec, &c).unwrap());
                    assert_eq!(&got, b, "{path} at {} in {}", x.offset, m.id);
                }
                seen_files += 1;
            }
            EntryKind::Symlink => {
                assert_eq!(e.target, format!("../dir/file{}", seen_links % 6).into_bytes());
                seen_links += 1;
            }
            _ => {}
        }
        Ok(())
    })
    .unwrap();
    assert_eq!((seen_files, seen_links), (fs.files.len(), fs.links));
}

fn repo(path: std::path::PathBuf, password: Option<&str>) -> Repository {
    let opts = InitOptions {
        pack_size: Some(1 << 20),
        password: password.map(|p| p.as_bytes().to_vec()),
        kdf: bulwark_repo::crypto::KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 },
        ..Default::default()
    };
    Repository::init(path, &opts).unwrap()
}

/// The manifest as it would be but for its index authenticator, which the keys decide.
fn identity(m: &Manifest) -> Manifest {
    Manifest { index_auth: String::new(), ..m.clone() }
}

fn objects(repo: &Repository) -> Vec<String> {
    let mut v: Vec<String> = repo.storage().list("").unwrap().into_iter().map(|e| e.name).collect();
    v.retain(|k| !k.starts_with("locks/"));
    v.sort();
    v
}

fn copy_both_kinds(from_password: Option<&str>, to_password: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let from = repo(dir.path().join("from"), from_password);
    let to = repo(dir.path().join("to"), to_password);

    // A chain of volume points: the child shares most blocks, zero blocks in both.
    let v1: Volume = (0..40).map(|i| (i % 7 != 3).then(|| block(1, i))).collect();
    let mut v2 = v1.clone();
    for (i, b) in v2.iter_mut().enumerate().skip(30) {
        *b = (i % 5 != 0).then(|| block(2, i));
    }
    let p1 = backup(&from, "vol", &v1, None);
    let p2 = backup(&from, "vol", &v2, Some(&p1));
    // A chain of file points whose trees take two pieces; the child changes a file.
    let f1_files = files(3, 12_000);
    let mut f2_files = files(3, 12_000);
    f2_files.files[5].1[0] = Some(block(9, 0));
    let f1 = file_backup(&from, "files", &f1_files, None);
    let f2 = file_backup(&from, "files", &f2_files, Some(&f1));
    assert!(f1.volume_size > PIECE as u64, "the tree takes one piece only");

    let progress = std::sync::atomic::AtomicU64::new(0);
    let mut copied = Vec::new();
    for m in [&p1, &p2, &f1, &f2] {
        let c = copy_point(&from, &to, &m.id, &|n| progress.store(n, std::sync::atomic::Ordering::Relaxed)).unwrap();
        assert!(c.copied && c.stored_bytes > 0, "{c:?}");
        assert_eq!(identity(&c.manifest), identity(m));
        assert_eq!(to.load_manifest(&m.id).unwrap(), c.manifest);
        copied.push(c);
    }
    assert_eq!(progress.into_inner(), f2.volume_size + 6 * 3 * BS as u64);
    // The child reuses what its parent brought.
    assert!(copied[1].chunks_reused >= 25 && copied[1].chunks_stored <= 12, "{:?}", copied[1]);
    assert_eq!(to.list_points().unwrap().iter().map(identity).collect::<Vec<_>>(), [&p1, &p2, &f1, &f2].map(identity));
    let [c1, c2, g1, g2] = [0, 1, 2, 3].map(|i| copied[i].manifest.clone());
    assert_restores(&to, &c1, &v1);
    assert_restores(&to, &c2, &v2);
    assert_files_restore(&to, &g1, &f1_files);
    assert_files_restore(&to, &g2, &f2_files);
    let report = verify(&to, Selection::All, 2, &|_| {}).unwrap();
    assert!(report.ok && report.points.len() == 4, "{report:?}");

    // Again: nothing is copied, nothing written.
    let before = objects(&to);
    for m in [&p1, &p2, &f1, &f2] {
        let c = copy_point(&from, &to, &m.id, &|_| {}).unwrap();
        assert!(!c.copied && c.stored_bytes == 0, "{c:?}");
        assert_eq!(identity(&c.manifest), identity(m));
    }
    assert_eq!(objects(&to), before);
    // A point copied and then forgotten in the source is still found present.
    from.delete_point(&p1.id).unwrap();
    assert!(!copy_point(&from, &to, &p1.id, &|_| {}).unwrap().copied);
}

#[test]
fn plain_points_copy_into_an_encrypted_repository() {
    copy_both_kinds(None, Some("target secret"));
}

#[test]
fn encrypted_points_copy_into_a_plain_repository() {
    copy_both_kinds(Some("source secret"), None);
}

#[test]
fn points_copy_between_plain_repositories_and_between_encrypted_ones() {
    copy_both_kinds(None, None);
    copy_both_kinds(Some("one"), Some("another"));
}

#[test]
fn a_damaged_source_chunk_fails_the_copy_and_leaves_no_point() {
    for to_password in [None, Some("secret")] {
        let dir = tempfile::tempdir().unwrap();
        let from = repo(dir.path().join("from"), None);
        let to = repo(dir.path().join("to"), to_password);
        let v: Volume = (0..40).map(|i| Some(block(4, i))).collect();
        let m = backup(&from, "d", &v, None);
        let victim = from.codec(Compression::None).digest(v[17].as_ref().unwrap());
        let copies = from.chunk_copies(&victim).unwrap();
        let (key, offset, _) = &copies[0];
        let path = dir.path().join("from").join(key);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[*offset as usize + 100] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();

        let e = copy_point(&from, &to, &m.id, &|_| {}).unwrap_err();
        assert!(matches!(e, RepoError::DamagedPoint { .. }), "{e:?}");
        let text = e.to_string();
        let range = format!("block 17 (bytes {}..{})", 17 * BS, 18 * BS);
        assert!(text.contains(m.id.as_str()) && text.contains(&range) && text.contains("damaged"), "{text}");
        // Nothing of the point is visible in the target, and what is there is sound.
        let catalog = to.catalog().unwrap();
        assert!(catalog.points.is_empty() && catalog.orphans.is_empty() && catalog.damaged.is_empty());
        assert!(matches!(to.load_manifest(&m.id), Err(RepoError::NoSuchPoint { .. })));
        assert!(verify(&to, Selection::All, 2, &|_| {}).unwrap().ok);
    }
}

#[test]
fn a_computers_points_keep_their_scope_in_an_isolated_target() {
    let dir = tempfile::tempdir().unwrap();
    let isolated = |name: &str, password: &str| {
        let opts = InitOptions {
            pack_size: Some(1 << 20),
            password: Some(password.as_bytes().to_vec()),
            kdf: bulwark_repo::crypto::KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 },
            isolation: bulwark_repo::Isolation::Computer,
            ..Default::default()
        };
        Repository::init(dir.path().join(name), &opts).unwrap()
    };
    let from = isolated("from", "one");
    let to = isolated("to", "two");
    let v: Volume = (0..20).map(|i| Some(block(6, i))).collect();
    let m = backup(&from.scoped("pc1"), "pc1", &v, None);
    assert_eq!(m.key_scope.as_deref(), Some("pc1"));
    let c = copy_point(&from, &to, &m.id, &|_| {}).unwrap();
    assert!(c.copied);
    assert_eq!(identity(&c.manifest), identity(&m));
    // Written with the computer's keys: that computer's handle reuses the copy's chunks.
    assert_restores(&to.for_point(&c.manifest), &c.manifest, &v);
    let pc1 = to.scoped("pc1");
    let mut w = pc1.begin_point(spec(PointKind::Volume, "pc1", 1, None)).unwrap();
    assert!(pc1.reuse_chunk(&pc1.codec(Compression::None).digest(v[0].as_ref().unwrap())).unwrap());
    w.push_block(&BlockRef::Zero).unwrap();
    drop(w);
    assert!(verify(&to, Selection::All, 2, &|_| {}).unwrap().ok);
}
