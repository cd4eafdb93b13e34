//! LVM snapshots for real, in the kernel lab (a qemu VM with Debian's kernel: the host's has
//! no device-mapper): the lab itself boots and runs the freshly built `bulwark`; backups of
//! logical volumes through `bulwark backup --snapshot lvm`, classic and thin, restore byte for
//! byte what the snapshot held. Skipped without a lab unless `BULWARK_REQUIRE_LAB` is set.

use bulwark_testkit::{Lab, Vm};

const MIB: u64 = 1 << 20;

fn bulwark() -> &'static str {
    env!("CARGO_BIN_EXE_bulwark")
}

#[test]
fn lab_boots_loads_dm_mod_and_runs_bulwark() {
    let Some(lab) = Lab::find() else { return };
    let mut vm = Vm::builder(&lab).disk("data", 64 * MIB).boot();
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
    vm.ok(&format!("kill {}", bg.pid));
    vm.ok(&format!("while kill -0 {} 2>/dev/null; do sleep 0.1; done", bg.pid));
    assert_eq!(bg.output().0, "started\n");
}
