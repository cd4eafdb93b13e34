//! Managed agents in the kernel lab, against a server, transport node and repository on the
//! host. Entire-computer backup and bare-metal restore: a computer with a GPT disk (BIOS boot partition with GRUB, ext4 root, swap) runs the agent in managed mode
//! against a server, transport node and repository on the host; a job of mode `computer`
//! backs it up; a recovery environment (the lab's initramfs, `bulwark` in it) joins the server
//! and restores the point onto a blank, larger disk; and that disk boots on its own and prints
//! what was written before the backup. And an agent killed during an LVM backup removes the
//! snapshot it left when it starts again. Skipped without a lab unless `BULWARK_REQUIRE_LAB` is
//! set.

mod cluster;

use std::process::Command;
use std::time::{Duration, Instant};

use bulwark_testkit::vm::Background;
use bulwark_testkit::{Lab, Vm};
use cluster::server::{admin_token, cli, join_token, start_server_on, Server};
use cluster::{bulwark_exe, Daemon};

const MIB: u64 = 1 << 20;
/// Where an agent in a guest listens.
const AGENT_PORT: u16 = 9441;

/// The host's own IPv4 address on its network: host processes reach it directly, a guest
/// through qemu's user network (which connects from the host), so the server, the transport
/// node and its data movers are reached at the same address from both.
fn host_address() -> String {
    let out = Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]).output().expect("run ip");
    let text = String::from_utf8_lossy(&out.stdout);
    let addr = text.split_whitespace().skip_while(|w| *w != "inet").nth(1).and_then(|a| a.split('/').next());
    addr.expect("the host has an IPv4 address besides loopback, for the lab's guests to reach it").to_string()
}

/// A free TCP port on the host's loopback (for a forward into a guest).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The server, a transport node with repository `main`, all on the host's address.
struct Site {
    // Dropped in this order: the processes (their logs shown if the test failed), then the folder.
    server: Server,
    _transport: Daemon,
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let host = host_address();
        let server = start_server_on(&dir.path().join("server"), &host, None, &[]);
        let repos = dir.path().join("repos");
        std::fs::create_dir_all(&repos).unwrap();
        // Listening on every address, called at the host's.
        let port = std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
        let token = join_token(&server, "transport", "store");
        let data = dir.path().join("store");
        let mut cmd = Command::new(bulwark_exe());
        cmd.args(["transport", "--name", "store", "--root", repos.to_str().unwrap(), "--data-dir"]).arg(&data);
        cmd.args(["--listen", &format!("0.0.0.0:{port}"), "--advertise", &format!("{host}:{port}")]);
        cmd.args(["--server", &format!("https://{}", server.address), "--join-token", &token]);
        let transport = cluster::Cluster::spawn(cmd, "store", data);
        let repo = repos.join("main");
        cli(&server, &["repository", "create", "main", "--transport", "store", "--path", repo.to_str().unwrap()])
            .unwrap();
        Site { dir, server, _transport: transport }
    }

    /// Starts an agent named `name` in `vm` (its port forwarded from `port` on the host),
    /// joined with a fresh token; the server's CA is at /lab/ca.pem for the CLI in the guest.
    fn agent_in(&self, vm: &mut Vm, name: &str, port: u16) -> Background {
        std::fs::copy(self.server.dir.join("ca.pem"), vm.exchange().join("ca.pem")).unwrap();
        let token = join_token(&self.server, "agent", name);
        std::fs::write(vm.exchange().join("join-token"), token).unwrap();
        let agent = vm.spawn(&format!(
            "exec {} agent --name {name} --data-dir /run/agent --listen 0.0.0.0:{AGENT_PORT} \
             --advertise 127.0.0.1:{port} --server https://{} --join-token-file /lab/join-token",
            bulwark_exe(),
            self.server.address
        ));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let computers = cli(&self.server, &["computer", "list"]).unwrap();
            let joined = computers.as_array().unwrap().iter().any(|c| c["name"] == name);
            if joined {
                break;
            }
            assert!(Instant::now() < deadline, "agent {name} did not join: {:?}", agent.output());
            std::thread::sleep(Duration::from_millis(500));
        }
        agent
    }

    /// The CLI in the guest, talking to the server as its administrator.
    fn guest_cli(&self, args: &str) -> String {
        format!(
            "BULWARK_SERVER=https://{} BULWARK_TOKEN={} BULWARK_CA_CERT=/lab/ca.pem {} {args}",
            self.server.address,
            admin_token(&self.server),
            bulwark_exe()
        )
    }
}

/// Makes /dev/vda of `vm` a computer's disk that boots on its own: GPT, BIOS boot partition
/// with GRUB, an ext4 root with the lab's kernel, an initramfs and a busybox `/sbin/init` that
/// prints `/etc/nonce`, and a swap partition.
fn install_computer(lab: &Lab, vm: &mut Vm, nonce: &str) {
    let x = vm.exchange();
    std::fs::copy(lab.kernel(), x.join("vmlinuz")).unwrap();
    lab.system_initramfs(&x.join("initrd.img"));
    std::fs::write(
        x.join("init"),
        "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n\
         echo \"bulwark-nonce: $(/bin/busybox cat /etc/nonce)\"\n/bin/busybox poweroff -f\n",
    )
    .unwrap();
    std::fs::write(
        x.join("grub.cfg"),
        "set timeout=0\nserial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n\
         linux /boot/vmlinuz root=/dev/vda2 console=ttyS0 panic=-1 loglevel=4\ninitrd /boot/initrd.img\nboot\n",
    )
    .unwrap();
    vm.ok(&format!(
        "printf 'label: gpt\\nsize=1MiB, type=21686148-6449-6E6F-744E-656564454649\\nsize=150MiB\\ntype=swap\\n' \
           | sfdisk -q /dev/vda \
         && {{ dd if=/dev/urandom of=/dev/vda3 bs=1M status=none 2>/dev/null; true; }} && mkswap /dev/vda3 >/dev/null \
         && mkfs.ext4 -q /dev/vda2 \
         && mkdir /mnt/root && mount /dev/vda2 /mnt/root \
         && mkdir -p /mnt/root/bin /mnt/root/sbin /mnt/root/etc /mnt/root/proc /mnt/root/dev /mnt/root/boot/grub \
         && cp /bin/busybox /mnt/root/bin/busybox && cp /lab/init /mnt/root/sbin/init && chmod 755 /mnt/root/sbin/init \
         && cp /lab/vmlinuz /lab/initrd.img /mnt/root/boot/ && cp /lab/grub.cfg /mnt/root/boot/grub/grub.cfg \
         && head -c 60M /dev/urandom > /mnt/root/junk && sync && rm /mnt/root/junk \
         && head -c 24M /dev/urandom > /mnt/root/data && echo {nonce} > /mnt/root/etc/nonce \
         && grub-install --target=i386-pc --boot-directory=/mnt/root/boot /dev/vda 2>&1 \
         && umount /mnt/root && sync"
    ));
}

#[test]
fn entire_computer_backed_up_by_its_agent_restores_onto_bare_metal_and_boots() {
    let Some(lab) = Lab::find() else { return };
    let site = Site::new();
    let nonce =
        format!("{:016x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());

    // The computer: one 256 MiB disk, its agent managed by the server on the host.
    let port = free_port();
    let mut pc = Vm::builder(&lab).disk("disk", 256 * MIB).forward(port, AGENT_PORT).boot();
    install_computer(&lab, &mut pc, &nonce);
    site.agent_in(&mut pc, "pc", port);
    cli(&site.server, &["job", "create", "whole", "--mode", "computer", "--computer", "pc", "--repository", "main"])
        .unwrap();
    let started = Instant::now();
    let session = cli(&site.server, &["job", "start", "whole", "--wait"]).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("entire-computer backup in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(session["status"], "success", "{session}");
    let points = cli(&site.server, &["point", "list"]).unwrap();
    let points = points.as_array().unwrap();
    assert_eq!(points.len(), 1, "one whole disk, one point: {points:?}");
    let point = &points[0];
    assert_eq!(point["source"], "/dev/vda", "{point}");
    let id = point["id"].as_str().unwrap().to_string();
    // The swap partition and the root's free blocks (both full of old data) are not stored.
    let stats = &point["stats"];
    assert!(stats["zero_bytes"].as_u64().unwrap() > 180 * MIB, "{point}");
    assert!(stats["new_bytes"].as_u64().unwrap() < 80 * MIB, "{point}");
    // The computer as it was installed boots (so a restored disk that does not is the
    // restore's fault).
    boots_to_nonce(&lab, pc, "disk", &site.dir.path().join("original.img"), &nonce, "the installed computer");

    // Bare metal: a recovery environment with two blank disks, one larger than the computer's
    // and one smaller.
    let port = free_port();
    let mut rescue =
        Vm::builder(&lab).disk("large", 320 * MIB).disk("small", 128 * MIB).forward(port, AGENT_PORT).boot();
    site.agent_in(&mut rescue, "rescue", port);
    let small = rescue.run(&site.guest_cli(&format!("restore {id} --computer rescue --to /dev/vdb")));
    assert_ne!(small.status, 0, "{small:?}");
    assert!(small.stderr.contains("too small"), "{small:?}");
    assert!(std::fs::read(rescue.disk("small")).unwrap().iter().all(|&b| b == 0), "nothing written to the small disk");

    let started = Instant::now();
    let done = rescue.ok(&site.guest_cli(&format!("restore {id} --computer rescue --to /dev/vda --json")));
    let restore_s = started.elapsed().as_secs_f64();
    eprintln!("bare-metal restore of the 256 MiB disk in {restore_s:.1} s: {done}");
    assert!(done.contains("GPT's backup copy was moved"), "{done}");
    let verify = rescue.ok("sfdisk --verify /dev/vda 2>&1; sfdisk -d /dev/vda");
    assert!(verify.contains("No errors detected"), "{verify}");
    assert!(verify.contains(&format!("last-lba: {}", 320 * MIB / 512 - 34)), "{verify}");
    rescue.ok("e2fsck -fn /dev/vda2 && sync");

    // The restored disk boots by itself: BIOS, GRUB, the kernel and initramfs from the
    // restored root, its /sbin/init printing what was written before the backup.
    boots_to_nonce(&lab, rescue, "large", &site.dir.path().join("restored.img"), &nonce, "the restored disk");
}

/// Takes disk `name` out of `vm` (to `to`; the VM is then stopped), boots it on its own and
/// waits for its init to print `nonce`; `what` names the disk in the figures and failures.
fn boots_to_nonce(lab: &Lab, vm: Vm, name: &str, to: &std::path::Path, nonce: &str, what: &str) {
    std::fs::rename(vm.disk(name), to).unwrap();
    drop(vm);
    let (_, took) = lab
        .boot_disk(to, &format!("bulwark-nonce: {nonce}"), Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{what} does not boot: {e}"));
    eprintln!("{what} booted to its init in {:.1} s", took.as_secs_f64());
}

#[test]
fn agent_killed_during_an_lvm_backup_removes_its_snapshot_when_it_starts_again() {
    let Some(lab) = Lab::find() else { return };
    let site = Site::new();
    let port = free_port();
    let mut vm = Vm::builder(&lab).disk("pv", 256 * MIB).forward(port, AGENT_PORT).boot();
    vm.ok("pvcreate -q /dev/vda && vgcreate -q vg /dev/vda && lvcreate -q -L 32M -n data vg \
           && dd if=/dev/urandom of=/dev/vg/data bs=1M count=32 status=none");
    let agent = site.agent_in(&mut vm, "db", port);
    // The first try holds its snapshot (in the post-thaw script) until the agent is killed.
    let hold = "[ -e /lab/snapped ] || { touch /lab/snapped; sleep 300; }";
    let job = ["job", "create", "data", "--mode", "volumes", "--computer", "db", "--repository", "main"];
    let settings = ["--source", "/dev/vg/data", "--snapshot", "lvm", "--lvm-snapshot-size", "12M", "--tries", "1"];
    let settings = [&settings[..], &["--freeze-limit", "600"]].concat();
    let settings = [&settings[..], &["--post-thaw-script", hold]].concat();
    cli(&site.server, &[&job[..], &settings[..]].concat()).unwrap();
    cli(&site.server, &["job", "start", "data"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !vm.exchange().join("snapped").exists() {
        assert!(Instant::now() < deadline, "no snapshot made: {:?}", agent.output());
        std::thread::sleep(Duration::from_millis(200));
    }
    let snapshots =
        |vm: &mut Vm| vm.ok("lvs --noheadings -o lv_name vg | grep bulwark-snap || true").trim().to_string();
    let left = snapshots(&mut vm);
    assert!(left.starts_with(&format!("bulwark-snap-{}-", agent.pid)), "{left}");
    // The job's size for classic snapshots reached the agent.
    assert_eq!(vm.ok(&format!("lvs --noheadings --units m -o lv_size vg/{left}")).trim(), "12.00m");
    vm.ok(&format!("kill -9 {0}; while kill -0 {0} 2>/dev/null; do sleep 0.1; done", agent.pid));
    assert_eq!(snapshots(&mut vm), left, "a killed agent cannot remove its snapshot");

    // Started again (its identity kept): the snapshot is gone before it takes any task.
    let again = vm.spawn(&format!(
        "exec {} agent --data-dir /run/agent --listen 0.0.0.0:{AGENT_PORT} --advertise 127.0.0.1:{port}",
        bulwark_exe()
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !again.output().0.contains("listening") {
        assert!(Instant::now() < deadline, "the agent did not start again: {:?}", again.output());
        std::thread::sleep(Duration::from_millis(200));
    }
    let now = snapshots(&mut vm);
    assert!(!now.contains(&left), "the killed agent's snapshot is still there: {now}");
    assert!(again.output().1.contains(&format!("removed snapshot vg/{left}")), "{:?}", again.output());
    // And the job goes on: once the interrupted session has ended (its agent gone, its only
    // try failed), a new one backs the volume up.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let sessions = cli(&site.server, &["session", "list"]).unwrap();
        if sessions.as_array().unwrap().iter().all(|s| s["ended"].is_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "the interrupted session never ended: {sessions}");
        std::thread::sleep(Duration::from_secs(1));
    }
    let done = cli(&site.server, &["job", "start", "data", "--wait"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(snapshots(&mut vm), "", "no snapshot left after the next backup");
}
