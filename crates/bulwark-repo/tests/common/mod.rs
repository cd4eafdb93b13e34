//! Volume points written and read back block by block, for the tests of the pack layout on
//! every storage (`packs.rs`, `s3.rs`).

use bulwark_repo::{
    BlockRef, BlockSize, ChunkId, Compression, Manifest, PointKind, PointSpec, PointStats, PointWriter, Repository,
};

/// The block size of the tests' points.
pub const BS: usize = 64 << 10;

pub fn spec(name: &str, blocks: usize, parent: Option<&Manifest>) -> PointSpec {
    PointSpec {
        kind: PointKind::Volume,
        name: name.into(),
        source: "test".into(),
        volume_size: (blocks * BS) as u64,
        block_size: BlockSize::new(BS as u32).unwrap(),
        compression: Compression::None,
        parent: parent.map(|m| m.id.clone()),
        snapshot: String::new(),
        consistency: String::new(),
        key_scope: None,
    }
}

/// Writes blocks through `w`, storing those the repository does not let it reuse; their ids.
pub fn write_blocks(repo: &Repository, w: &mut PointWriter, blocks: &[Vec<u8>]) -> bulwark_repo::Result<Vec<ChunkId>> {
    let mut codec = repo.codec(Compression::None);
    let mut ids = Vec::with_capacity(blocks.len());
    for b in blocks {
        let id = codec.digest(b);
        if !repo.reuse_chunk(&id)? {
            repo.put_chunk(&id, &codec.encode(&id, b))?;
        }
        w.push_block(&BlockRef::Chunk(id))?;
        ids.push(id);
    }
    Ok(ids)
}

pub fn backup(repo: &Repository, name: &str, blocks: &[Vec<u8>]) -> Manifest {
    let mut w = repo.begin_point(spec(name, blocks.len(), None)).unwrap();
    write_blocks(repo, &mut w, blocks).unwrap();
    w.commit(PointStats::default()).unwrap()
}

/// Reads a point back whole and compares it with what was written.
pub fn assert_restores(repo: &Repository, m: &Manifest, blocks: &[Vec<u8>]) {
    let mut index = repo.open_index(m).unwrap();
    let mut codec = repo.codec(Compression::None);
    for (i, b) in blocks.iter().enumerate() {
        let Some(BlockRef::Chunk(id)) = index.next_block().unwrap() else { panic!("block {i} is no chunk") };
        assert_eq!(&repo.read_chunk(&mut codec, &id).unwrap(), b, "block {i} of {}", m.id);
    }
}
