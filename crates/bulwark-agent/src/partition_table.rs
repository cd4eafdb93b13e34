//! A whole disk restored onto a larger one: a GUID partition table keeps its backup copy in
//! the disk's last sectors, so restored as it was it would sit in the middle of the new disk,
//! the space after it unusable and tools warning of a damaged table. [`grow_gpt`] moves the
//! backup entries and header to the new end, extends the last usable sector and the protective
//! MBR to match, and wipes the old backup header (as `sgdisk -e` does), so the extra space is
//! free to partition or to grow the last partition into.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const SIGNATURE: &[u8; 8] = b"EFI PART";

/// CRC-32 (IEEE, reflected), as GPT uses for its header and entries.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// `header` (its declared size) with its CRC field recomputed.
fn seal(header: &mut [u8]) {
    header[16..20].fill(0);
    let crc = crc32(header);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
}

/// What was done, for the restore's notes; `None` when the disk holds no GPT or is not larger.
pub fn grow_gpt(dev: &File, old_size: u64, new_size: u64) -> io::Result<Option<String>> {
    if new_size <= old_size {
        return Ok(None);
    }
    // The primary header is in the second logical sector: 512 bytes, or 4096 on 4Kn disks.
    let mut found = None;
    for sector in [512u64, 4096] {
        let mut b = vec![0u8; sector as usize];
        if old_size < 2 * sector {
            break;
        }
        dev.read_exact_at(&mut b, sector)?;
        if &b[..8] == SIGNATURE {
            found = Some((sector, b));
            break;
        }
    }
    let Some((ss, mut primary)) = found else { return Ok(None) };
    let damaged = |why: &str| Ok(Some(format!("the GPT was not moved to the end of the larger disk: {why}")));
    let size = u32_at(&primary, 12) as usize;
    if !(92..=ss as usize).contains(&size) {
        return damaged("its header has an impossible size");
    }
    let mut check = primary[..size].to_vec();
    let stored = u32_at(&check, 16);
    seal(&mut check);
    if u32_at(&check, 16) != stored || u64_at(&primary, 24) != 1 {
        return damaged("its primary header is damaged");
    }
    let (count, entry) = (u32_at(&primary, 80) as u64, u32_at(&primary, 84) as u64);
    let entries_bytes = count * entry;
    if entry < 128 || entries_bytes > 1 << 20 {
        return damaged("its entry array has an impossible size");
    }
    let mut entries = vec![0u8; entries_bytes as usize];
    dev.read_exact_at(&mut entries, u64_at(&primary, 72) * ss)?;
    if crc32(&entries) != u32_at(&primary, 88) {
        return damaged("its partition entries are damaged");
    }
    let last = new_size / ss - 1;
    let entry_sectors = entries_bytes.div_ceil(ss);
    let backup_entries = last - entry_sectors;
    // Partitions that reach past the new last usable sector cannot be (the disk is larger).
    let old_backup = u64_at(&primary, 32);
    put_u64(&mut primary, 32, last);
    put_u64(&mut primary, 48, backup_entries - 1);
    let mut backup = primary[..size].to_vec();
    put_u64(&mut backup, 24, last);
    put_u64(&mut backup, 32, 1);
    put_u64(&mut backup, 72, backup_entries);
    seal(&mut backup);
    seal(&mut primary[..size]);
    backup.resize(ss as usize, 0);

    // Backup first: until the primary names the new end, the table still reads as before.
    dev.write_all_at(&entries, backup_entries * ss)?;
    dev.write_all_at(&backup, last * ss)?;
    dev.write_all_at(&primary, ss)?;
    if old_backup * ss < new_size && old_backup != last && old_backup > 1 {
        let mut old = vec![0u8; ss as usize];
        dev.read_exact_at(&mut old, old_backup * ss)?;
        if &old[..8] == SIGNATURE {
            dev.write_all_at(&vec![0u8; ss as usize], old_backup * ss)?;
        }
    }
    // The protective MBR's partition spans the whole disk (capped at what 32 bits can say).
    let mut mbr = [0u8; 512];
    dev.read_exact_at(&mut mbr, 0)?;
    if mbr[510..512] == [0x55, 0xAA] {
        for e in 0..4 {
            let at = 446 + e * 16;
            if mbr[at + 4] == 0xEE {
                let span = u32::try_from(last).unwrap_or(u32::MAX);
                mbr[at + 12..at + 16].copy_from_slice(&span.to_le_bytes());
                dev.write_all_at(&mbr, 0)?;
                break;
            }
        }
    }
    dev.sync_all()?;
    Ok(Some(format!(
        "the disk is {} MiB larger than the one backed up: the GPT's backup copy was moved to its end, and \
         the space after the last partition is free",
        (new_size - old_size) >> 20
    )))
}

/// Asks the kernel to read the partition table of the whole disk `dev` (at `path`) again, so
/// the partitions of a disk just restored appear; a note when it could not (a partition is in
/// use), `None` otherwise and for devices that have no partitions of their own.
pub fn reread(dev: &File, path: &std::path::Path) -> Option<String> {
    use std::os::fd::AsRawFd;
    const BLKRRPART: libc::c_ulong = 0x125F; // _IO(0x12, 95)
                                             // SAFETY: BLKRRPART takes no argument; the descriptor is open for the call's duration.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), BLKRRPART, 0) };
    let err = io::Error::last_os_error();
    // EINVAL: a partition or a device that cannot be partitioned (a logical volume).
    (rc != 0 && err.raw_os_error() != Some(libc::EINVAL)).then(|| {
        format!(
            "the kernel did not read {}'s new partition table ({err}): run partprobe or reboot before using its partitions",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    fn sfdisk(args: &[&str], input: Option<&str>, disk: &std::path::Path) -> Option<String> {
        use std::io::Write;
        let mut c = Command::new("sfdisk");
        c.args(args).arg(disk).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
        c.stderr(std::process::Stdio::piped());
        let mut child = c.spawn().ok()?;
        child.stdin.take().unwrap().write_all(input.unwrap_or("").as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        Some(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    }

    #[test]
    fn a_gpt_restored_onto_a_larger_disk_ends_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        File::create(&disk).unwrap().set_len(64 << 20).unwrap();
        let layout = "label: gpt\nsize=1MiB, type=21686148-6449-6E6F-744E-656564454649\nsize=40MiB\ntype=swap\n";
        let Some(made) = sfdisk(&["-q"], Some(layout), &disk) else {
            eprintln!("sfdisk is not installed: skipped");
            return;
        };
        assert!(sfdisk(&["--verify"], None, &disk).unwrap().contains("No errors detected"), "{made}");
        let before = sfdisk(&["-d"], None, &disk).unwrap();
        // The restore: the same bytes at the start of a disk twice as large.
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&disk).unwrap();
        f.set_len(128 << 20).unwrap();
        let grown = sfdisk(&["--verify"], None, &disk).unwrap();
        assert!(!grown.contains("No errors detected"), "a moved disk end is seen as damage: {grown}");

        let note = grow_gpt(&f, 64 << 20, 128 << 20).unwrap().unwrap();
        assert!(note.contains("64 MiB larger"), "{note}");
        let verify = sfdisk(&["--verify"], None, &disk).unwrap();
        assert!(verify.contains("No errors detected"), "{verify}");
        let after = sfdisk(&["-d"], None, &disk).unwrap();
        assert!(after.contains(&format!("last-lba: {}", (128u64 << 20) / 512 - 34)), "{after}");
        // The partitions are those backed up.
        let parts = |d: &str| d.lines().filter(|l| l.contains(" : start=")).map(str::to_string).collect::<Vec<_>>();
        assert_eq!(parts(&before), parts(&after));
        // The free space can be used: a partition of 60 MiB fits after the last one.
        sfdisk(&["-q", "--append"], Some("size=60MiB\n"), &disk).unwrap();
        assert_eq!(parts(&sfdisk(&["-d"], None, &disk).unwrap()).len(), 4);
        // Not larger, or no GPT: nothing to do.
        assert_eq!(grow_gpt(&f, 128 << 20, 128 << 20).unwrap(), None);
        let plain = dir.path().join("plain.img");
        let p = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&plain).unwrap();
        p.set_len(8 << 20).unwrap();
        assert_eq!(grow_gpt(&p, 4 << 20, 8 << 20).unwrap(), None);
    }

    #[test]
    fn a_damaged_table_is_left_alone_saying_why() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        File::create(&disk).unwrap().set_len(16 << 20).unwrap();
        if sfdisk(&["-q"], Some("label: gpt\nsize=4MiB\n"), &disk).is_none() {
            return;
        }
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&disk).unwrap();
        // One bit of the first entry's name flipped.
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 1024 + 60).unwrap();
        f.write_all_at(&[b[0] ^ 1], 1024 + 60).unwrap();
        f.set_len(32 << 20).unwrap();
        let note = grow_gpt(&f, 16 << 20, 32 << 20).unwrap().unwrap();
        assert!(note.contains("partition entries are damaged"), "{note}");
    }
}
