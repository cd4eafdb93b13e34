//! What a volume point holds: one filesystem, or a whole disk with a partition table (MBR or
//! GPT) whose partitions are volumes of their own.
//!
//! Volume 0 is always the whole image; on a disk, partition N is volume N (as `/dev/sdaN`).
//! Everything here reads a few sectors and trusts none of them: a table that points outside the
//! image, overlaps itself or loops is reported, not followed.

use std::io;
use std::sync::Arc;

use serde::Serialize;

use crate::image::{Image, Slice};

/// One volume of a point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    /// 0 for the whole image, the partition number otherwise.
    pub number: u32,
    /// Byte offset in the image.
    pub start: u64,
    pub size: u64,
    /// `whole`, `mbr` or `gpt`.
    pub table: String,
    /// The partition's type: a GPT type's name (or its GUID), an MBR type byte (`0x83`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub partition_type: String,
    /// A GPT partition's name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub label: String,
    /// What the volume's first sectors say it holds: `ext4`, `xfs`, `btrfs`, `vfat`, `swap`,
    /// `lvm2`, `ntfs`, `gpt`, `mbr`, or empty when unknown.
    pub content: String,
    /// Volume 0 of a disk whose partition table is damaged: what is wrong with it (the whole
    /// image can still be served or exported).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub problem: String,
}

fn read(img: &dyn Image, at: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    if at.checked_add(len as u64).is_some_and(|end| end <= img.size()) {
        img.read_at(&mut buf, at)?;
    }
    Ok(buf)
}

/// What the bytes at the start of a volume are (see [`Volume::content`]).
pub fn detect_content(img: &dyn Image) -> io::Result<String> {
    let head = read(img, 0, 4096)?;
    let sb = read(img, 1024, 1024)?;
    let kind = if sb[56..58] == [0x53, 0xEF] {
        // ext2/3/4 by their feature flags: a journal makes ext3, extents or 64bit make ext4.
        let compat = u32::from_le_bytes(sb[92..96].try_into().unwrap());
        let incompat = u32::from_le_bytes(sb[96..100].try_into().unwrap());
        if incompat & (0x40 | 0x80 | 0x200) != 0 {
            "ext4"
        } else if compat & 0x4 != 0 {
            "ext3"
        } else {
            "ext2"
        }
    } else if &head[..4] == b"XFSB" {
        "xfs"
    } else if &read(img, 0x10040, 8)?[..] == b"_BHRfS_M" {
        "btrfs"
    } else if &head[3..11] == b"NTFS    " {
        "ntfs"
    } else if &head[512..520] == b"LABELONE" {
        "lvm2"
    } else if &head[4086..4096] == b"SWAPSPACE2" || &head[4086..4096] == b"SWAP-SPACE" {
        "swap"
    } else if &head[82..87] == b"FAT32" || &head[54..57] == b"FAT" {
        "vfat"
    } else if &head[512..520] == b"EFI PART" {
        "gpt"
    } else if head[510..512] == [0x55, 0xAA] && looks_like_mbr(&head) {
        "mbr"
    } else {
        ""
    };
    Ok(kind.to_string())
}

/// The volumes of `img`: the whole image first, then its partitions, if it is a disk.
pub fn volumes(img: &Arc<dyn Image>) -> io::Result<Vec<Volume>> {
    let content = detect_content(img.as_ref())?;
    let whole = Volume {
        number: 0,
        start: 0,
        size: img.size(),
        table: "whole".into(),
        partition_type: String::new(),
        label: String::new(),
        content: content.clone(),
        problem: String::new(),
    };
    let parts = match content.as_str() {
        "gpt" => gpt(img.as_ref()),
        "mbr" => mbr(img.as_ref()),
        _ => Ok(Vec::new()),
    };
    // A damaged table leaves the whole image usable: it is volume 0, with what is wrong.
    let mut parts = match parts {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Ok(vec![Volume { problem: e.to_string(), ..whole }]);
        }
        Err(e) => return Err(e),
    };
    for p in &mut parts {
        let slice = Slice { inner: img.clone(), start: p.start, len: p.size, what: String::new() };
        p.content = detect_content(&slice)?;
    }
    parts.insert(0, whole);
    Ok(parts)
}

/// Volume `number` of `img` as an image of its own.
pub fn open_volume(img: &Arc<dyn Image>, number: u32) -> io::Result<Arc<dyn Image>> {
    // The whole image needs no table read, and no damage in one stops it.
    if number == 0 {
        return Ok(img.clone());
    }
    let all = volumes(img)?;
    let Some(v) = all.iter().find(|v| v.number == number) else {
        let have: Vec<String> = all.iter().map(|v| v.number.to_string()).collect();
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} has no volume {number} (it has {})", img.describe(), have.join(", ")),
        ));
    };
    Ok(Arc::new(Slice {
        inner: img.clone(),
        start: v.start,
        len: v.size,
        what: format!("{} volume {number}", img.describe()),
    }))
}

/// Whether a sector ending in 55 AA is a partition table, not another boot sector (FAT, exFAT,
/// BitLocker end the same way): some entry in use, and every entry in use well formed.
fn looks_like_mbr(sector: &[u8]) -> bool {
    let entries = mbr_entries(sector);
    let used: Vec<&MbrEntry> = entries.iter().filter(|e| e.kind != 0).collect();
    !used.is_empty() && used.iter().all(|e| matches!(e.boot, 0x00 | 0x80) && e.start != 0 && e.sectors != 0)
}

struct MbrEntry {
    boot: u8,
    kind: u8,
    start: u64,
    sectors: u64,
}

fn mbr_entries(sector: &[u8]) -> Vec<MbrEntry> {
    (0..4)
        .map(|i| {
            let e = &sector[446 + 16 * i..462 + 16 * i];
            MbrEntry {
                boot: e[0],
                kind: e[4],
                start: u32::from_le_bytes(e[8..12].try_into().unwrap()) as u64,
                sectors: u32::from_le_bytes(e[12..16].try_into().unwrap()) as u64,
            }
        })
        .collect()
}

fn bad(img: &dyn Image, what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", img.describe()))
}

fn partition(img: &dyn Image, table: &str, number: u32, start: u64, size: u64) -> io::Result<Volume> {
    if size == 0 || start.checked_add(size).is_none_or(|end| end > img.size()) {
        return Err(bad(img, format!("{table} partition {number} lies outside the disk ({size} bytes at {start})")));
    }
    Ok(Volume {
        number,
        start,
        size,
        table: table.into(),
        partition_type: String::new(),
        label: String::new(),
        content: String::new(),
        problem: String::new(),
    })
}

fn mbr(img: &dyn Image) -> io::Result<Vec<Volume>> {
    let mut out = Vec::new();
    let first = read(img, 0, 512)?;
    let mut extended = None;
    for (i, e) in mbr_entries(&first).into_iter().enumerate() {
        match e.kind {
            0 => {}
            0x05 | 0x0F | 0x85 => extended = Some(e.start),
            kind => {
                let mut v = partition(img, "mbr", i as u32 + 1, e.start * 512, e.sectors * 512)?;
                v.partition_type = format!("{kind:#04x}");
                out.push(v);
            }
        }
    }
    // Logical partitions: a chain of boot records inside the extended one, each offset from it.
    if let Some(base) = extended {
        let mut at = base;
        for n in 5u32.. {
            if n > 5 + 128 {
                return Err(bad(img, "the chain of logical partitions does not end".into()));
            }
            let ebr = read(img, at * 512, 512)?;
            if ebr[510..512] != [0x55, 0xAA] {
                break;
            }
            let es = mbr_entries(&ebr);
            if es[0].kind != 0 {
                let mut v = partition(img, "mbr", n, (at + es[0].start) * 512, es[0].sectors * 512)?;
                v.partition_type = format!("{:#04x}", es[0].kind);
                out.push(v);
            }
            if es[1].kind == 0 || es[1].start == 0 {
                break;
            }
            at = base + es[1].start;
        }
    }
    Ok(out)
}

fn guid(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        u32::from_le_bytes(b[0..4].try_into().unwrap()),
        u16::from_le_bytes(b[4..6].try_into().unwrap()),
        u16::from_le_bytes(b[6..8].try_into().unwrap()),
        b[8],
        b[9],
        hex::encode_upper(&b[10..16])
    )
}

fn gpt_type_name(g: &str) -> Option<&'static str> {
    Some(match g {
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI system",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "A19D880F-05FC-4D3B-A006-743F0F84911E" => "Linux RAID",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "933AC7E1-2EB4-4F13-B844-0E14E2AEF915" => "Linux home",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        _ => return None,
    })
}

fn gpt(img: &dyn Image) -> io::Result<Vec<Volume>> {
    let h = read(img, 512, 512)?;
    let entries_lba = u64::from_le_bytes(h[72..80].try_into().unwrap());
    let count = u32::from_le_bytes(h[80..84].try_into().unwrap());
    let size = u32::from_le_bytes(h[84..88].try_into().unwrap()) as usize;
    if !(128..=4096).contains(&size) || count > 1024 {
        return Err(bad(img, format!("GPT header is damaged ({count} entries of {size} bytes)")));
    }
    let table = read(img, entries_lba.saturating_mul(512), count as usize * size)?;
    let mut out = Vec::new();
    for (i, e) in table.chunks(size).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) =
            (u64::from_le_bytes(e[32..40].try_into().unwrap()), u64::from_le_bytes(e[40..48].try_into().unwrap()));
        if last < first {
            return Err(bad(img, format!("GPT partition {} ends before it starts", i + 1)));
        }
        let mut v =
            partition(img, "gpt", i as u32 + 1, first.saturating_mul(512), (last - first + 1).saturating_mul(512))?;
        let t = guid(&e[..16]);
        v.partition_type = gpt_type_name(&t).map(str::to_string).unwrap_or(t);
        let name: Vec<u16> =
            e[56..128].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&c| c != 0).collect();
        v.label = String::from_utf16_lossy(&name);
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::MemImage as Mem;

    fn mbr_disk(entries: &[(u8, u32, u32)]) -> Vec<u8> {
        let mut d = vec![0u8; 4 << 20];
        for (i, &(kind, start, sectors)) in entries.iter().enumerate() {
            let e = &mut d[446 + 16 * i..462 + 16 * i];
            e[4] = kind;
            e[8..12].copy_from_slice(&start.to_le_bytes());
            e[12..16].copy_from_slice(&sectors.to_le_bytes());
        }
        d[510] = 0x55;
        d[511] = 0xAA;
        d
    }

    #[test]
    fn mbr_partitions_are_volumes_by_number() {
        let mut d = mbr_disk(&[(0x83, 2048, 2048), (0x82, 4096, 1024)]);
        d[2048 * 512 + 1024 + 56] = 0x53;
        d[2048 * 512 + 1024 + 57] = 0xEF;
        let img: Arc<dyn Image> = Arc::new(Mem(d));
        let v = volumes(&img).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!((v[0].number, v[0].content.as_str()), (0, "mbr"));
        assert_eq!((v[1].number, v[1].start, v[1].size, v[1].content.as_str()), (1, 1 << 20, 1 << 20, "ext2"));
        assert_eq!((v[2].number, v[2].partition_type.as_str()), (2, "0x82"));
        let p = open_volume(&img, 1).unwrap();
        assert_eq!(p.size(), 1 << 20);
        assert!(open_volume(&img, 7).err().unwrap().to_string().contains("no volume 7 (it has 0, 1, 2)"));
    }

    #[test]
    fn a_table_pointing_outside_the_disk_is_named_and_the_whole_image_stays() {
        let img: Arc<dyn Image> = Arc::new(Mem(mbr_disk(&[(0x83, 2048, 1 << 20)])));
        let v = volumes(&img).unwrap();
        assert_eq!(v.len(), 1);
        assert!(v[0].problem.contains("outside the disk"), "{v:?}");
        assert_eq!(open_volume(&img, 0).unwrap().size(), 4 << 20);
        assert!(open_volume(&img, 1).is_err());
    }

    #[test]
    fn another_boot_sector_is_not_a_partition_table() {
        // Boot code where the entries would be: flags that no partition table has.
        let mut d = vec![0u8; 1 << 20];
        d[446..510].iter_mut().enumerate().for_each(|(i, b)| *b = (i * 37 + 11) as u8);
        d[510] = 0x55;
        d[511] = 0xAA;
        let img: Arc<dyn Image> = Arc::new(Mem(d));
        assert_eq!(detect_content(img.as_ref()).unwrap(), "");
        assert_eq!(volumes(&img).unwrap().len(), 1);
    }

    #[test]
    fn a_looping_logical_chain_is_an_error() {
        // An extended partition whose second boot record names itself as the next one.
        let mut d = mbr_disk(&[(0x05, 2048, 4096)]);
        let ebr = 2048 * 512;
        d[ebr + 446 + 4] = 0x83;
        d[ebr + 446 + 8..ebr + 446 + 12].copy_from_slice(&1u32.to_le_bytes());
        d[ebr + 446 + 12..ebr + 446 + 16].copy_from_slice(&8u32.to_le_bytes());
        d[ebr + 462 + 4] = 0x05;
        d[ebr + 510] = 0x55;
        d[ebr + 511] = 0xAA;
        let img: Arc<dyn Image> = Arc::new(Mem(d.clone()));
        assert_eq!(volumes(&img).unwrap().len(), 2, "a zero link ends the chain");
        let mut looping = d;
        looping[ebr + 462 + 8..ebr + 462 + 12].copy_from_slice(&2048u32.to_le_bytes());
        let second = ebr + 2048 * 512;
        looping.resize(looping.len().max(second + 512), 0);
        looping[second + 446 + 4] = 0x83;
        looping[second + 446 + 8..second + 446 + 12].copy_from_slice(&1u32.to_le_bytes());
        looping[second + 446 + 12..second + 446 + 16].copy_from_slice(&8u32.to_le_bytes());
        looping[second + 462 + 4] = 0x05;
        // Link to offset 2048 again: the same record forever.
        looping[second + 462 + 8..second + 462 + 12].copy_from_slice(&2048u32.to_le_bytes());
        looping[second + 510] = 0x55;
        looping[second + 511] = 0xAA;
        let img: Arc<dyn Image> = Arc::new(Mem(looping));
        let v = volumes(&img).unwrap();
        assert!(v.len() == 1 && v[0].problem.contains("does not end"), "{v:?}");
    }
}
