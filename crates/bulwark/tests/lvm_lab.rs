//! LVM snapshots for real, in the kernel lab (a qemu VM with Debian's kernel: the host's has
//! no device-mapper): the lab itself boots and runs the freshly built `bulwark`; backups of
//! logical volumes through `bulwark backup --snapshot lvm`, classic and thin, restore byte for
//! byte what the snapshot held. Skipped without a lab unless `BULWARK_REQUIRE_LAB` is set.

use std::time::{Duration, Instant};

use bulwark_testkit::{Lab, Vm};

const MIB: u64 = 1 << 20;

fn bulwark() -> &'static str {
    env!("CARGO_BIN_EXE_bulwark")
}

#[test]
fn lab_boots_loads_dm_mod_and_runs_bulwark() {
    let Some(lab) = Lab::find() else { return };
    // What a killed test run leaves: the folder of a VM whose test process is gone, and its
    // qemu still running (here a stand-in, in the folder as qemu is).
    let gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    drop(gone.wait_with_output());
    let stale = bulwark_testkit::vm::lab_base().join(format!("vm-{gone_pid}-stale"));
    std::fs::create_dir_all(&stale).unwrap();
    let mut stand_in = std::process::Command::new("sleep").arg("600").current_dir(&stale).spawn().unwrap();
    std::fs::write(stale.join("qemu.pid"), stand_in.id().to_string()).unwrap();

    let mut vm = Vm::builder(&lab).disk("data", 64 * MIB).boot();
    let killed = stand_in.try_wait().unwrap();
    let _ = stand_in.kill();
    let _ = stand_in.wait();
    assert!(!stale.exists(), "the stale VM folder is removed at the next VM's start");
    assert!(killed.is_some_and(|s| !s.success()), "its qemu is killed");

    assert_eq!(vm.ok("uname -r").trim(), lab.version());
    vm.ok("modprobe dm-mod && test -c /dev/mapper/control");
    let lvm = vm.ok("lvm version");
    assert!(lvm.contains("Driver version:"), "LVM reaches the kernel's device-mapper:\n{lvm}");
    let host = std::process::Command::new(bulwark()).arg("--version").output().unwrap();
    assert_eq!(vm.ok(&format!("{} --version", bulwark())), String::from_utf8_lossy(&host.stdout));
    // The guest's disk is writable and the host sees what the guest wrote.
    vm.ok("printf lab > /dev/vda && sync");
    assert_eq!(&std::fs::read(vm.disk("data")).unwrap()[..3], b"lab");
    // A failing command's status and error output come back.
    let o = vm.run("echo out; echo err >&2; exit 7");
    assert_eq!((o.status, o.stdout.as_str(), o.stderr.as_str()), (7, "out\n", "err\n"));
    // A background process runs until killed.
    let bg = vm.spawn("echo started; exec sleep 600");
    assert!(vm.alive(bg.pid));
    // Killed once it has said so (a loaded host may not have run its first line yet).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while bg.output().0.is_empty() {
        assert!(std::time::Instant::now() < until, "the background process never printed");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    vm.ok(&format!("kill {}", bg.pid));
    vm.ok(&format!("while kill -0 {} 2>/dev/null; do sleep 0.1; done", bg.pid));
    assert_eq!(bg.output().0, "started\n");

    // Dropped: qemu is gone and so is the VM's folder.
    let (folder, qemu) = (vm.folder().to_path_buf(), vm.qemu_pid());
    drop(vm);
    assert!(!folder.exists(), "{} left behind", folder.display());
    assert!(!std::path::Path::new(&format!("/proc/{qemu}")).exists(), "qemu {qemu} still runs");
}

/// A VM with a volume group `vg` on /dev/vda and an unencrypted repository /mnt/repo/r on an
/// ext4 filesystem of its own (/dev/vdb).
fn lvm_vm(lab: &Lab) -> Vm {
    let mut vm = Vm::builder(lab).disk("pv", 512 * MIB).disk("repo", 512 * MIB).boot();
    vm.ok(&format!(
        "pvcreate -q /dev/vda && vgcreate -q vg /dev/vda && mkfs.ext4 -q /dev/vdb && mkdir /mnt/repo \
         && mount /dev/vdb /mnt/repo && {} repo init /mnt/repo/r",
        bulwark()
    ));
    vm
}

/// `bulwark backup` in the guest: the JSON report when it succeeded, else (exit status, stderr).
fn backup(vm: &mut Vm, lv: &str, extra: &str) -> Result<serde_json::Value, (i32, String)> {
    let o = vm.run(&format!(
        "{} backup /dev/vg/{lv} --repo /mnt/repo/r --name {lv} --snapshot lvm --snapshot-retry-wait 0 --json {extra}",
        bulwark()
    ));
    match o.status {
        0 => Ok(serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", o.stdout))),
        s => Err((s, o.stderr)),
    }
}

/// Writes `body` as the post-thaw script; `$SNAP` in it is the snapshot being taken (the only
/// one in `vg`). Returns the option that runs it.
fn post_thaw(vm: &Vm, body: &str) -> String {
    let script = format!("SNAP=/dev/vg/$(lvs --noheadings -o lv_name vg | grep -o 'bulwark-snap-[^ ]*')\n{body}\n");
    std::fs::write(vm.exchange().join("post-thaw.sh"), script).unwrap();
    "--post-thaw-script 'sh -e /lab/post-thaw.sh'".into()
}

fn leftover_snapshots(vm: &mut Vm) -> String {
    vm.ok("lvs --noheadings -o lv_name vg | grep bulwark-snap || true").trim().to_string()
}

fn points(vm: &mut Vm) -> Vec<serde_json::Value> {
    let out = vm.ok(&format!("{} points --json --repo /mnt/repo/r", bulwark()));
    serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().unwrap().clone()
}

/// Backs up the mounted ext4 filesystem of `lv` (written just before, not synced) and checks
/// the point: byte for byte the snapshot, a clean filesystem (frozen for the snapshot) holding
/// the files written.
fn frozen_filesystem_roundtrip(vm: &mut Vm, lv: &str) -> serde_json::Value {
    vm.ok(&format!(
        "mkfs.ext4 -q /dev/vg/{lv} && mkdir /mnt/{lv} && mount /dev/vg/{lv} /mnt/{lv} \
         && head -c 8M /dev/urandom > /mnt/{lv}/a && cp /mnt/{lv}/a /mnt/{lv}/b && echo note > /mnt/{lv}/c"
    ));
    let started = Instant::now();
    // The snapshot's content, copied while it exists: what the point must restore.
    let copy = post_thaw(vm, "dd if=$SNAP of=/mnt/repo/snap.img bs=1M status=none");
    let report = backup(vm, lv, &copy).unwrap_or_else(|e| panic!("{e:?}"));
    eprintln!("backup of {lv} in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(report["snapshot"], "lvm", "{report}");
    assert_eq!(report["consistency"], "frozen", "{report}");
    assert_eq!(leftover_snapshots(vm), "", "the snapshot is removed after the backup");
    let point = report["point"].as_str().unwrap();
    vm.ok(&format!("{} restore {point} --repo /mnt/repo/r --to /mnt/repo/restored.img", bulwark()));
    vm.ok("cmp /mnt/repo/restored.img /mnt/repo/snap.img");
    // Frozen: the journal was flushed and the filesystem marked clean for the snapshot.
    let features = vm.ok("dumpe2fs -h /mnt/repo/restored.img 2>/dev/null | grep -i features");
    assert!(!features.contains("needs_recovery"), "the snapshot's filesystem was not frozen:\n{features}");
    vm.ok("e2fsck -fn /mnt/repo/restored.img");
    for f in ["a", "b", "c"] {
        vm.ok(&format!("debugfs -R 'cat /{f}' /mnt/repo/restored.img 2>/dev/null | cmp - /mnt/{lv}/{f}"));
    }
    report
}

#[test]
fn classic_snapshot_of_mounted_ext4_is_frozen_and_restores_byte_for_byte() {
    let Some(lab) = Lab::find() else { return };
    let mut vm = lvm_vm(&lab);
    vm.ok("lvcreate -q -L 64M -n data vg");
    let report = frozen_filesystem_roundtrip(&mut vm, "data");
    let notes = report["notes"].to_string();
    assert!(notes.contains("classic snapshot of vg/data with 16.00 MiB of copy-on-write space"), "{notes}");
}

#[test]
fn thin_snapshot_of_mounted_ext4_is_frozen_and_restores_byte_for_byte() {
    let Some(lab) = Lab::find() else { return };
    let mut vm = lvm_vm(&lab);
    vm.ok("lvcreate -q -L 128M -T vg/pool && lvcreate -q -V 64M -T vg/pool -n thin");
    let report = frozen_filesystem_roundtrip(&mut vm, "thin");
    assert!(!report["notes"].to_string().contains("copy-on-write space"), "{report}");
}

#[test]
fn classic_snapshot_overflow_fails_the_attempt_retries_and_never_commits_it() {
    let Some(lab) = Lab::find() else { return };
    let mut vm = lvm_vm(&lab);
    vm.ok("lvcreate -q -L 64M -n data vg && dd if=/dev/urandom of=/dev/vg/data bs=1M count=64 status=none");
    let overflow = "dd if=/dev/urandom of=/dev/vg/data bs=1M count=40 oflag=direct status=none";

    // Every try overflows, after its snapshot was read whole into the page cache: every read
    // succeeds, and only the check after the read sees the snapshot invalid.
    let script = post_thaw(&vm, &format!("dd if=$SNAP of=/dev/null bs=1M status=none\n{overflow}"));
    let (status, stderr) = backup(&mut vm, "data", &format!("--lvm-snapshot-size 4M {script}")).unwrap_err();
    assert_ne!(status, 0);
    assert!(
        stderr.contains("overflowed") && stderr.contains("invalidated") && stderr.contains("nothing was committed"),
        "{stderr}"
    );
    assert!(points(&mut vm).is_empty(), "no point from an invalid snapshot");
    assert_eq!(leftover_snapshots(&mut vm), "", "each invalid snapshot is removed");

    // The first try overflows while nothing was read yet (its reads fail); the second, with
    // twice the space and no writes, is committed and restores the volume as it is now.
    let once = post_thaw(&vm, &format!("[ -e /lab/once ] || {{ touch /lab/once && {overflow}; }}"));
    let report = backup(&mut vm, "data", &format!("--lvm-snapshot-size 4M {once}")).unwrap_or_else(|e| panic!("{e:?}"));
    let notes = report["notes"].to_string();
    assert!(notes.contains("attempt 1 of 3 failed: snapshot vg/bulwark-snap-"), "{notes}");
    assert!(notes.contains("with 8.00 MiB of copy-on-write space"), "{notes}");
    assert_eq!(points(&mut vm).len(), 1);
    let point = report["point"].as_str().unwrap();
    vm.ok(&format!("{} restore {point} --repo /mnt/repo/r --to /mnt/repo/restored.img", bulwark()));
    vm.ok("cmp /mnt/repo/restored.img /dev/vg/data");
    assert_eq!(leftover_snapshots(&mut vm), "");
}

#[test]
fn classic_snapshot_needs_free_space_in_the_volume_group() {
    let Some(lab) = Lab::find() else { return };
    let mut vm = lvm_vm(&lab);
    vm.ok("lvcreate -q -L 64M -n data vg && lvcreate -q -l 100%FREE -n filler vg");
    let (_, stderr) = backup(&mut vm, "data", "--snapshot-tries 1").unwrap_err();
    assert!(stderr.contains("volume group vg has no free extent") && stderr.contains("vgextend"), "{stderr}");
    assert!(points(&mut vm).is_empty());
    // Less free than the policy wants: the snapshot gets what there is, and says so.
    vm.ok("lvremove -q -f vg/filler && lvcreate -q -l 100%FREE -n filler vg && lvreduce -q -f -L -8M vg/filler");
    let report = backup(&mut vm, "data", "").unwrap_or_else(|e| panic!("{e:?}"));
    assert!(report["notes"].to_string().contains("all that volume group vg has free"), "{report}");
}

#[test]
fn backup_killed_during_lvm_snapshot_leaves_one_that_the_next_backup_removes() {
    let Some(lab) = Lab::find() else { return };
    let mut vm = lvm_vm(&lab);
    vm.ok("lvcreate -q -L 32M -n data vg && dd if=/dev/urandom of=/dev/vg/data bs=1M count=32 status=none");
    // Held after its snapshot was made, until killed.
    let held = vm.spawn(&format!(
        "exec {} backup /dev/vg/data --repo /mnt/repo/r --name data --snapshot lvm --freeze-limit 600 \
         --post-thaw-script 'touch /lab/snapped; sleep 600'",
        bulwark()
    ));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !vm.exchange().join("snapped").exists() {
        assert!(Instant::now() < deadline, "no snapshot made: {:?}", held.output());
        std::thread::sleep(Duration::from_millis(200));
    }
    let left = leftover_snapshots(&mut vm);
    assert!(left.starts_with(&format!("bulwark-snap-{}-", held.pid)), "{left}");
    let killed = vm.run_timeout(
        &format!("kill -9 {0} && while kill -0 {0} 2>/dev/null; do sleep 0.1; done", held.pid),
        Duration::from_secs(60),
    );
    assert_eq!(killed.status, 0, "{killed:?}");
    assert_eq!(leftover_snapshots(&mut vm), left, "a killed backup cannot remove its snapshot");

    let report = backup(&mut vm, "data", "").unwrap_or_else(|e| panic!("{e:?}"));
    let notes = report["notes"].to_string();
    assert!(notes.contains(&format!("removed stale snapshot vg/{left}")), "{notes}");
    assert_eq!(leftover_snapshots(&mut vm), "");
    let point = report["point"].as_str().unwrap();
    vm.ok(&format!("{} restore {point} --repo /mnt/repo/r --to /mnt/repo/restored.img", bulwark()));
    vm.ok("cmp /mnt/repo/restored.img /dev/vg/data");
}

/// Per-MiB digests of a device in the guest, one line per point block.
fn block_digests(vm: &mut Vm, dev: &str) -> Vec<String> {
    vm.ok(&format!("split -b 1M --filter=md5sum {dev}")).lines().map(str::to_string).collect()
}

/// Writes `count` 64 KiB pieces of random data at scattered, 64 KiB-aligned places of `dev`
/// (`size` bytes), the same places for the same `seed`.
fn scattered_writes(vm: &mut Vm, dev: &str, size: u64, count: u64, seed: u64) {
    let mut x = seed | 1;
    let mut script = String::new();
    for _ in 0..count {
        // xorshift: the same scatter every run.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = x % (size / (64 << 10));
        script.push_str(&format!(
            "dd if=/dev/urandom of={dev} bs=64K seek={at} count=1 conv=notrunc oflag=direct status=none\n"
        ));
    }
    vm.ok(&script);
}

#[test]
fn thin_incremental_reads_what_the_pool_says_changed_and_falls_back_when_it_cannot_tell() {
    let Some(lab) = Lab::find() else { return };
    // BULWARK_LAB_THIN_MIB sizes the volume (bench/lab.sh measures a larger one).
    let mib: u64 = std::env::var("BULWARK_LAB_THIN_MIB").ok().and_then(|m| m.parse().ok()).unwrap_or(256);
    let (size, pool) = (mib * MIB, (mib * 2 + 88) * MIB);
    let mut vm = Vm::builder(&lab).disk("pv", pool + 256 * MIB).disk("repo", size * 4 + 256 * MIB).boot();
    vm.ok(&format!(
        "pvcreate -q /dev/vda && vgcreate -q vg /dev/vda && mkfs.ext4 -q /dev/vdb && mkdir /mnt/repo \
         && mount /dev/vdb /mnt/repo && {} repo init /mnt/repo/r \
         && lvcreate -q -L {}M -T vg/pool && lvcreate -q -V {mib}M -T vg/pool -n thin \
         && dd if=/dev/urandom of=/dev/vg/thin bs=1M count={mib} status=none",
        bulwark(),
        pool / MIB
    ));
    let tracked = "--state-dir /mnt/repo/state";
    let kept = |vm: &mut Vm| vm.ok("lvs --noheadings -o lv_name vg | grep bulwark- || true").trim().to_string();

    let t = Instant::now();
    let full = backup(&mut vm, "thin", tracked).unwrap_or_else(|e| panic!("{e:?}"));
    let full_s = t.elapsed().as_secs_f64();
    assert_eq!(full["change_tracking"], false, "{full}");
    assert_eq!(full["read_bytes"], size, "{full}");
    assert_eq!(kept(&mut vm), "bulwark-cbt-thin-thin", "the snapshot is kept, renamed, for the next backup");

    // 1% of the volume rewritten in 64 KiB pieces.
    let before = block_digests(&mut vm, "/dev/vg/thin");
    scattered_writes(&mut vm, "/dev/vg/thin", size, size / 100 / (64 << 10), 42);
    let after = block_digests(&mut vm, "/dev/vg/thin");
    let differing = before.iter().zip(&after).filter(|(a, b)| a != b).count() as u64;
    assert!(differing > 20, "the writes changed {differing} blocks");

    let t = Instant::now();
    let inc = backup(&mut vm, "thin", tracked).unwrap_or_else(|e| panic!("{e:?}"));
    let inc_s = t.elapsed().as_secs_f64();
    assert_eq!(inc["change_tracking"], true, "{inc}");
    let read = inc["read_bytes"].as_u64().unwrap();
    let ratio = read as f64 / (differing * MIB) as f64;
    eprintln!(
        "thin tracking: {differing} blocks of 1 MiB differ, {} MiB read ({ratio:.2}x); full {full_s:.1} s, \
         incremental {inc_s:.1} s",
        read / MIB
    );
    assert!(read >= differing * MIB, "a changed block was not read: {inc}");
    assert!(ratio <= 1.25, "read {ratio:.2}x the changed blocks: {inc}");
    assert_eq!(kept(&mut vm), "bulwark-cbt-thin-thin", "one kept snapshot, the newest");
    let point = inc["point"].as_str().unwrap();
    vm.ok(&format!("{} restore {point} --repo /mnt/repo/r --to /mnt/repo/restored.img", bulwark()));
    vm.ok("cmp /mnt/repo/restored.img /dev/vg/thin && rm /mnt/repo/restored.img");

    // The same change again, found by digest comparison: every block read; nothing kept for
    // tracking.
    scattered_writes(&mut vm, "/dev/vg/thin", size, size / 100 / (64 << 10), 43);
    let t = Instant::now();
    let digest = backup(&mut vm, "thin", &format!("{tracked} --cbt none")).unwrap_or_else(|e| panic!("{e:?}"));
    eprintln!(
        "digest comparison: {} MiB read in {:.1} s",
        digest["read_bytes"].as_u64().unwrap() / MIB,
        t.elapsed().as_secs_f64()
    );
    assert_eq!(digest["read_bytes"], size, "{digest}");
    assert_eq!(kept(&mut vm), "", "tracking turned off keeps no snapshot");
    let first = backup(&mut vm, "thin", tracked).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(first["notes"].to_string().contains("no tracking state"), "{first}");

    // The kept snapshot gone, or another in its place: every block read, saying why.
    vm.ok("lvremove -q -f vg/bulwark-cbt-thin-thin");
    scattered_writes(&mut vm, "/dev/vg/thin", size, 4, 7);
    let gone = backup(&mut vm, "thin", tracked).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(gone["change_tracking"], false, "{gone}");
    assert!(gone["notes"].to_string().contains("vg/bulwark-cbt-thin-thin) is gone"), "{gone}");
    vm.ok("lvremove -q -f vg/bulwark-cbt-thin-thin && lvcreate -q -s -n bulwark-cbt-thin-thin vg/thin");
    scattered_writes(&mut vm, "/dev/vg/thin", size, 4, 9);
    let other = backup(&mut vm, "thin", tracked).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(other["change_tracking"], false, "{other}");
    assert!(other["notes"].to_string().contains("is not the thin snapshot the last backup kept"), "{other}");
    let point = other["point"].as_str().unwrap();
    vm.ok(&format!("{} restore {point} --repo /mnt/repo/r --to /mnt/repo/restored.img", bulwark()));
    vm.ok("cmp /mnt/repo/restored.img /dev/vg/thin");
    // And tracked again from there.
    scattered_writes(&mut vm, "/dev/vg/thin", size, 4, 11);
    let again = backup(&mut vm, "thin", tracked).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(again["change_tracking"], true, "{again}");
    assert!(again["read_bytes"].as_u64().unwrap() <= 4 * 2 * MIB, "{again}");

    // A pool filled past 80%: the snapshot is not kept (the blocks it would hold may be needed
    // by the volume), saying so; the next backup compares digests.
    let used: f64 = vm.ok("lvs --noheadings -o data_percent vg/pool").trim().replace(',', ".").parse().unwrap();
    let fill = ((85.0 - used) / 100.0 * pool as f64) as u64 / MIB + 1;
    vm.ok(&format!(
        "lvcreate -q -V {fill}M -T vg/pool -n filler && dd if=/dev/urandom of=/dev/vg/filler bs=1M count={fill} status=none"
    ));
    let full = backup(&mut vm, "thin", tracked).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(full["change_tracking"], true, "{full}");
    assert!(full["notes"].to_string().contains("thin pool vg/pool is 8"), "{full}");
    assert_eq!(kept(&mut vm), "", "nothing kept in a pool that full");
    let next = backup(&mut vm, "thin", tracked).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(next["change_tracking"], false, "{next}");
}

#[test]
fn reflink_incremental_of_an_image_reads_what_changed() {
    let Some(lab) = Lab::find() else { return };
    let mut vm = Vm::builder(&lab).disk("xfs", 1024 * MIB).disk("repo", 1024 * MIB).boot();
    vm.ok(&format!(
        "mkfs.xfs -q /dev/vda && mkdir /mnt/x && mount /dev/vda /mnt/x && mkfs.ext4 -q /dev/vdb && mkdir /mnt/repo \
         && mount /dev/vdb /mnt/repo && {} repo init /mnt/repo/r \
         && dd if=/dev/urandom of=/mnt/x/disk.img bs=1M count=256 status=none && sync",
        bulwark()
    ));
    let size = 256 * MIB;
    let backup = |vm: &mut Vm| -> serde_json::Value {
        let out = vm.ok(&format!(
            "{} backup /mnt/x/disk.img --repo /mnt/repo/r --name img --snapshot reflink --json",
            bulwark()
        ));
        serde_json::from_str(&out).unwrap()
    };
    let full = backup(&mut vm);
    assert_eq!(full["read_bytes"], size, "{full}");
    // A hypervisor reading the image (its page cache in large folios), then the guest's
    // writes as qemu makes them (buffered pwrite into the image): 1% in 64 KiB pieces.
    vm.ok("cat /mnt/x/disk.img > /dev/null");
    let before = block_digests(&mut vm, "/mnt/x/disk.img");
    scattered_writes(&mut vm, "/mnt/x/disk.img", size, size / 100 / (64 << 10), 41);
    let after = block_digests(&mut vm, "/mnt/x/disk.img");
    let differing = before.iter().zip(&after).filter(|(a, b)| a != b).count() as u64;
    let inc = backup(&mut vm);
    assert_eq!(inc["change_tracking"], true, "{inc}");
    let read = inc["read_bytes"].as_u64().unwrap();
    let ratio = read as f64 / (differing * MIB) as f64;
    eprintln!("reflink tracking: {differing} blocks of 1 MiB differ, {} MiB read ({ratio:.2}x)", read / MIB);
    assert!(read >= differing * MIB, "a changed block was not read: {inc}");
    assert!(ratio <= 1.25, "read {ratio:.2}x the changed blocks: {inc}");
}

/// Figures for docs/BENCHMARKS.md (bench/lab.sh): reading a logical volume through a classic
/// snapshot against reading it directly, raw (dd) and as a backup. Not a test of behaviour.
#[test]
#[ignore = "a benchmark: bench/lab.sh runs it"]
fn lab_figures_classic_snapshot_throughput() {
    let Some(lab) = Lab::find() else { return };
    let mib: u64 = std::env::var("BULWARK_LAB_FIGURE_MIB").ok().and_then(|m| m.parse().ok()).unwrap_or(512);
    let mut vm = Vm::builder(&lab).disk("pv", (mib * 2 + 256) * MIB).disk("repo", (mib * 3 + 256) * MIB).boot();
    vm.ok(&format!(
        "pvcreate -q /dev/vda && vgcreate -q vg /dev/vda && mkfs.ext4 -q /dev/vdb && mkdir /mnt/repo \
         && mount /dev/vdb /mnt/repo && {0} repo init /mnt/repo/direct && {0} repo init /mnt/repo/snap \
         && lvcreate -q -L {mib}M -n data vg && dd if=/dev/urandom of=/dev/vg/data bs=1M count={mib} status=none",
        bulwark()
    ));
    let timed = |vm: &mut Vm, script: &str| {
        let t = Instant::now();
        vm.ok(script);
        (mib as f64) / t.elapsed().as_secs_f64()
    };
    let origin = timed(&mut vm, "dd if=/dev/vg/data of=/dev/null bs=8M iflag=direct status=none");
    vm.ok("lvcreate -q -s -l 20%ORIGIN -n raw vg/data");
    let snapshot = timed(&mut vm, "dd if=/dev/vg/raw of=/dev/null bs=8M iflag=direct status=none");
    vm.ok("lvremove -q -f vg/raw");
    let backup = |vm: &mut Vm, repo: &str, snap: &str| {
        let out = vm.ok(&format!(
            "{} backup /dev/vg/data --repo /mnt/repo/{repo} --name data --snapshot {snap} --json",
            bulwark()
        ));
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        (mib as f64) / r["duration_s"].as_f64().unwrap()
    };
    let direct = backup(&mut vm, "direct", "none");
    let through = backup(&mut vm, "snap", "lvm");
    eprintln!(
        "classic snapshot, {mib} MiB volume: dd of the origin {origin:.0} MiB/s, of a classic snapshot \
         {snapshot:.0} MiB/s ({:.2}x); backup of the origin {direct:.0} MiB/s, through a classic snapshot \
         {through:.0} MiB/s ({:.2}x)",
        snapshot / origin,
        through / direct
    );
}
