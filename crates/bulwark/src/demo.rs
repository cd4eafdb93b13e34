//! The quick start: one command that shows the whole data path on a generated disk image.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context, Result};
use bulwark_agent::{BackupOptions, RestoreOptions};
use bulwark_repo::{InitOptions, Repository};

use crate::ui;

const MARKER: &str = ".bulwark-demo";

fn file_digest(path: &Path) -> Result<blake3::Hash> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize());
        }
        h.update(&buf[..n]);
    }
}

pub fn run(dir: &Path, size_mib: u64, cancel: &AtomicBool) -> Result<()> {
    if size_mib == 0 {
        bail!("--size-mib must be at least 1");
    }
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            bail!("{} exists and was not made by `bulwark demo`; choose another --dir", dir.display());
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear the previous demo in {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "made by bulwark demo\n")?;
    let image = dir.join("disk.img");
    let repo_path = dir.join("repo");

    println!("1. generating a {size_mib} MiB disk image ({}): 35% zero, 35% text, 30% random", image.display());
    bulwark_imagegen::generate(&image, size_mib << 20, 1)?;
    let first = file_digest(&image)?;

    println!("2. creating repository {}", repo_path.display());
    let repo = Repository::init(&repo_path, &InitOptions::default())?;
    let opts = BackupOptions::new("demo-disk");

    println!("3. full backup");
    let bar = ui::bar(size_mib << 20, "backup", false);
    let full = bulwark_agent::backup_volume(&repo, &image, &opts, &|n| bar.inc(n), cancel)?;
    bar.finish_and_clear();

    println!("4. changing 1% of the image, then an incremental backup");
    bulwark_imagegen::mutate(&image, 1.0, 1, 0)?;
    let second = file_digest(&image)?;
    let bar = ui::bar(size_mib << 20, "backup", false);
    let incr = bulwark_agent::backup_volume(&repo, &image, &opts, &|n| bar.inc(n), cancel)?;
    bar.finish_and_clear();

    println!("5. restoring both points and comparing them with the image as it was backed up");
    let mut restores = Vec::new();
    for (report, expected, file) in [(&full, first, "restored-full.img"), (&incr, second, "restored-incremental.img")] {
        let m = repo.resolve(&report.point)?;
        let target = dir.join(file);
        let bar = ui::bar(m.volume_size, "restore", false);
        let r = bulwark_agent::restore_volume(&repo, &m, &target, &RestoreOptions::default(), &|n| bar.inc(n), cancel)?;
        bar.finish_and_clear();
        let same = file_digest(&target)? == expected;
        if !same {
            bail!(
                "restore of {} into {} differs from the source: this is a bug, please report it",
                m.id,
                target.display()
            );
        }
        restores.push(r);
    }

    println!("6. verifying the repository");
    let v = bulwark_repo::verify::verify(
        &repo,
        bulwark_repo::verify::Selection::All,
        bulwark_agent::default_threads(),
        &|_| {},
    )?;
    if !v.ok {
        bail!("verify found damage in a fresh repository: this is a bug, please report it");
    }

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!();
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>9} {:>11}",
        "step", "read MiB", "new MiB", "stored MiB", "seconds", "MiB/s"
    );
    for (label, r) in [("full backup", &full), ("incremental (1%)", &incr)] {
        let s = &r.stats;
        println!(
            "{label:<22} {:>10.1} {:>10.1} {:>10.1} {:>9.2} {:>11.0}",
            mib(s.read_bytes),
            mib(s.new_bytes),
            mib(s.stored_bytes),
            s.duration_s,
            mib(s.read_bytes) / s.duration_s.max(1e-6)
        );
    }
    for (label, r) in [("restore full", &restores[0]), ("restore incremental", &restores[1])] {
        println!(
            "{label:<22} {:>10} {:>10} {:>10.1} {:>9.2} {:>11.0}",
            "",
            "",
            mib(r.written_bytes),
            r.duration_s,
            mib(r.volume_size) / r.duration_s.max(1e-6)
        );
    }
    println!();
    println!(
        "both restores are byte-identical to the image at backup time; verify checked {} chunks: healthy",
        v.chunks_checked
    );
    println!(
        "the incremental stored {:.2}% of what the full stored",
        100.0 * incr.stats.stored_bytes as f64 / full.stats.stored_bytes.max(1) as f64
    );
    println!("explore: bulwark points --repo {}", repo_path.display());
    Ok(())
}
