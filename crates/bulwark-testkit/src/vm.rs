//! A real-kernel lab: a small qemu VM running Debian's generic kernel, for what the host's
//! kernel cannot do (device-mapper, LVM, NBD). The kernel comes unpacked from its Debian
//! package (`BULWARK_LAB_KERNEL`, set by `.ci/run`); the initramfs is made per VM from
//! `busybox-static`, the modules the lab needs and `vm/init.sh`. The guest sees the host's root
//! read-only over virtio-9p and chroots into it, so it runs the freshly built `bulwark` and the
//! host's lvm2, e2fsprogs and xfsprogs; it writes to tmpfs, to its virtio disks (image files in
//! the VM's folder) and to its exchange folder (`/lab` in the guest, [`Vm::exchange`] on the
//! host, shared writable over 9p).
//!
//! Commands go to a shell loop on the guest's second serial port, one at a time: the script is
//! written to the exchange folder, its number sent, and the guest answers
//! `bulwark-lab-done N STATUS` once the script exited; its output is read from the folder. The
//! first serial port is the kernel's console, kept in the VM's folder and printed when a test
//! panics. The network is qemu's user mode only: the guest reaches the host's loopback as
//! 10.0.2.2.
//!
//! A VM is killed and its folder removed on drop. qemu also dies with the thread that started
//! it (a parent-death signal: a killed test run leaves no VM), and a VM folder whose test
//! process is gone (its qemu too, if still running: the qemu whose working directory it is) is
//! removed by the next VM's start.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INIT: &str = include_str!("vm/init.sh");
/// The init of [`Lab::system_initramfs`]: mounts the root the kernel's command line names and
/// hands over to its `/sbin/init`, as a distribution's initramfs does.
const SYSTEM_INIT: &str = include_str!("vm/system-init.sh");

/// Modules loaded by the init, with their dependencies, before the host's root is mounted.
const BOOT_MODULES: &[&str] = &["crc32c_generic", "virtio_pci", "virtio_blk", "virtio_net", "9pnet_virtio", "9p"];
/// Modules put in the initramfs for the guest's `modprobe` and the kernel's own requests
/// (`mount -t xfs`, LVM's device-mapper targets).
const ON_DEMAND_MODULES: &[&str] = &["ext4", "xfs", "dm-mod", "dm-snapshot", "dm-thin-pool", "nbd", "overlay"];

/// Longest wait for the guest's shell after qemu starts (TCG on a busy machine).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// A kernel to boot: the root of an unpacked `linux-image-*-amd64` package.
#[derive(Debug, Clone)]
pub struct Lab {
    kernel: PathBuf,
    modules: PathBuf,
}

impl Lab {
    /// The lab named by `BULWARK_LAB_KERNEL`. `None` skips a lab test, saying so; where the run
    /// promised a lab (`BULWARK_REQUIRE_LAB`, as `.ci/run` sets it) a missing one is a failure,
    /// not a silent pass.
    pub fn find() -> Option<Lab> {
        let required = std::env::var_os("BULWARK_REQUIRE_LAB").is_some();
        let found = std::env::var_os("BULWARK_LAB_KERNEL")
            .map(|root| Lab::at(Path::new(&root)).unwrap_or_else(|e| panic!("BULWARK_LAB_KERNEL: {e}")));
        let missing_tool = ["qemu-system-x86_64", "busybox", "cpio", "depmod"]
            .into_iter()
            .find(|t| which(t).is_none() && !Path::new("/sbin").join(t).exists());
        match (found, missing_tool) {
            (Some(lab), None) => Some(lab),
            (found, tool) => {
                let why = match (found, tool) {
                    (None, _) => "BULWARK_LAB_KERNEL is not set".to_string(),
                    (_, Some(t)) => format!("{t} is not installed"),
                    _ => unreachable!(),
                };
                assert!(!required, "BULWARK_REQUIRE_LAB is set but {why}: no kernel lab to test in");
                eprintln!("{why}: kernel lab test skipped (.ci/run sets up the lab)");
                None
            }
        }
    }

    /// The lab for the kernel package unpacked at `root` (`dpkg -x`); writes its module
    /// index (`depmod`) when the package came without one.
    pub fn at(root: &Path) -> Result<Lab, String> {
        let boot = root.join("boot");
        let kernel = std::fs::read_dir(&boot)
            .map_err(|e| format!("{}: {e}", boot.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
            .ok_or_else(|| format!("no vmlinuz-* in {}", boot.display()))?;
        let version = kernel.file_name().unwrap().to_string_lossy().trim_start_matches("vmlinuz-").to_string();
        let modules = root.join("lib/modules").join(&version);
        if !modules.join("modules.dep").exists() {
            let out = Command::new("depmod").arg("-b").arg(root).arg(&version).output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => return Err(format!("depmod failed: {}", String::from_utf8_lossy(&o.stderr))),
                Err(e) => return Err(format!("cannot run depmod: {e}")),
            }
        }
        Ok(Lab { kernel, modules })
    }

    /// The kernel's release (`uname -r` in the guest).
    pub fn version(&self) -> String {
        self.modules.file_name().unwrap().to_string_lossy().to_string()
    }

    /// The kernel image (`vmlinuz-*`).
    pub fn kernel(&self) -> &Path {
        &self.kernel
    }

    /// Writes to `out` the initramfs of an installed computer of the lab: it loads virtio and
    /// ext4, mounts `root=` read-only and switches to it, running its `/sbin/init`.
    pub fn system_initramfs(&self, out: &Path) {
        let work = tempfile::tempdir().expect("a folder for the initramfs");
        self.make_initramfs_with(
            work.path(),
            out,
            SYSTEM_INIT,
            &["crc32c_generic", "virtio_pci", "virtio_blk", "ext4"],
            &[],
        );
    }

    /// Boots a computer from `disk` (a raw image: its own boot loader, BIOS), its console on
    /// the first serial port, and waits until the console shows `want`, the guest powers off,
    /// or `timeout` passes; returns the console and the time to `want`. qemu is killed after.
    pub fn boot_disk(&self, disk: &Path, want: &str, timeout: Duration) -> Result<(String, Duration), String> {
        let dir = tempfile::Builder::new().prefix(&format!("vm-{}-", std::process::id())).tempdir_in(lab_base());
        let dir = dir.map_err(|e| format!("a folder for the VM: {e}"))?;
        let console = dir.path().join("console.log");
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.current_dir(dir.path())
            .args(["-accel", "tcg", "-m", "512", "-display", "none", "-monitor", "none", "-nodefaults", "-no-reboot"])
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio,cache=unsafe", disk.display()))
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-pidfile")
            .arg(dir.path().join("qemu.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: as in `VmBuilder::boot`: only prctl between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::Kill))
                    .map_err(Into::into)
            });
        }
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| format!("start qemu-system-x86_64: {e}"))?;
        let read = || String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned();
        let outcome = loop {
            let text = read();
            if text.contains(want) {
                break Ok((text, started.elapsed()));
            }
            if let Ok(Some(status)) = child.try_wait() {
                let text = read();
                break match text.contains(want) {
                    true => Ok((text, started.elapsed())),
                    false => Err(format!("the computer stopped ({status}) before {want:?}:\n{}", tail(&text, 40))),
                };
            }
            if started.elapsed() > timeout {
                break Err(format!("no {want:?} within {timeout:?}:\n{}", tail(&text, 40)));
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let _ = child.kill();
        let _ = child.wait();
        outcome
    }

    /// Writes the lab's own initramfs (uncompressed newc cpio: nothing to unpack under TCG).
    fn make_initramfs(&self, work: &Path, out: &Path) {
        self.make_initramfs_with(work, out, INIT, BOOT_MODULES, ON_DEMAND_MODULES);
    }

    /// An initramfs of busybox, `init` and the modules named: `boot` (with what they need)
    /// loaded by the init in order, `on_demand` there for modprobe.
    fn make_initramfs_with(&self, work: &Path, out: &Path, init: &str, boot_modules: &[&str], on_demand: &[&str]) {
        let root = work.join("initramfs");
        let version = self.version();
        let mods = root.join("lib/modules").join(&version);
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(&mods).unwrap();
        let busybox = which("busybox").unwrap_or_else(|| PathBuf::from("/bin/busybox"));
        std::fs::copy(&busybox, root.join("bin/busybox")).expect("copy busybox (busybox-static)");
        write_executable(&root.join("init"), init);

        let deps = parse_modules_dep(&std::fs::read_to_string(self.modules.join("modules.dep")).unwrap());
        let mut boot = Vec::new();
        for m in boot_modules {
            add_with_deps(&deps, &find_module(&deps, m), &mut boot);
        }
        let mut all = boot.clone();
        for m in on_demand {
            add_with_deps(&deps, &find_module(&deps, m), &mut all);
        }
        for rel in &all {
            let to = mods.join(rel);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(self.modules.join(rel), &to).unwrap_or_else(|e| panic!("copy module {rel}: {e}"));
        }
        for f in ["modules.order", "modules.builtin", "modules.builtin.modinfo"] {
            let _ = std::fs::copy(self.modules.join(f), mods.join(f));
        }
        crate::run(Command::new("depmod").arg("-b").arg(&root).arg(&version));
        std::fs::write(root.join("modules.load"), boot.join("\n") + "\n").unwrap();
        let cpio = format!("cd '{}' && find . | cpio -o -H newc --quiet > '{}'", root.display(), out.display());
        crate::run(Command::new("sh").args(["-c", &cpio]));
        std::fs::remove_dir_all(&root).unwrap();
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(tool)).find(|p| p.is_file())
}

fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `modules.dep`: module path → the paths it needs.
fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m.to_string(), d.split_whitespace().map(str::to_string).collect()))
        .collect()
}

/// The path of module `name` (`dm-mod` and `dm_mod` alike).
fn find_module(deps: &BTreeMap<String, Vec<String>>, name: &str) -> String {
    let norm = |s: &str| s.replace('-', "_");
    deps.keys()
        .find(|p| p.rsplit('/').next().and_then(|f| f.strip_suffix(".ko")).is_some_and(|f| norm(f) == norm(name)))
        .unwrap_or_else(|| panic!("module {name} is not in the lab kernel"))
        .clone()
}

/// Adds `module` after everything it needs, each once.
fn add_with_deps(deps: &BTreeMap<String, Vec<String>>, module: &str, out: &mut Vec<String>) {
    if out.iter().any(|m| m == module) {
        return;
    }
    for d in deps.get(module).into_iter().flatten() {
        add_with_deps(deps, d, out);
    }
    out.push(module.to_string());
}

/// A VM to boot: its disks and size.
pub struct VmBuilder {
    lab: Lab,
    disks: Vec<(String, u64)>,
    memory_mib: u32,
    /// TCP ports: the host's (on 127.0.0.1) to the guest's.
    forwards: Vec<(u16, u16)>,
}

impl VmBuilder {
    /// A zero-filled (sparse) virtio disk of `size` bytes; the guest sees disks in the order
    /// added as /dev/vda, /dev/vdb…, the host as [`Vm::disk`]`(name)`.
    pub fn disk(mut self, name: &str, size: u64) -> Self {
        self.disks.push((name.to_string(), size));
        self
    }

    /// Connections to the host's `127.0.0.1:host_port` reach the guest's `guest_port`: how a
    /// server on the host calls an agent in the guest.
    pub fn forward(mut self, host_port: u16, guest_port: u16) -> Self {
        self.forwards.push((host_port, guest_port));
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Boots the VM and waits for its shell.
    pub fn boot(self) -> Vm {
        let base = lab_base();
        remove_stale_vms(&base);
        let dir = tempfile::Builder::new()
            .prefix(&format!("vm-{}-", std::process::id()))
            .tempdir_in(&base)
            .expect("a VM folder");
        let exchange = dir.path().join("lab");
        std::fs::create_dir(&exchange).unwrap();
        let initramfs = dir.path().join("initramfs.cpio");
        self.lab.make_initramfs(dir.path(), &initramfs);
        let socket = dir.path().join("cmd.sock");
        let listener = UnixListener::bind(&socket).expect("bind the command socket");
        let console = dir.path().join("console.log");

        let mut cmd = Command::new("qemu-system-x86_64");
        // In its folder: how a later start tells this qemu from a process that reused its pid.
        cmd.current_dir(dir.path());
        cmd.args(["-accel", "tcg", "-m", &self.memory_mib.to_string(), "-smp", "2"])
            .args(["-display", "none", "-monitor", "none", "-nodefaults", "-no-reboot"])
            .arg("-kernel")
            .arg(&self.lab.kernel)
            .arg("-initrd")
            .arg(&initramfs)
            .args(["-append", &kernel_command_line()])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-chardev")
            .arg(format!("socket,id=cmd,path={}", socket.display()))
            .args(["-serial", "chardev:cmd"])
            .args(["-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap"])
            .arg("-virtfs")
            .arg(format!("local,path={},mount_tag=lab,security_model=none,multidevs=remap", exchange.display()))
            // No option ROM: iPXE costs a second of boot and the guest never boots from network.
            .arg("-netdev")
            .arg(
                self.forwards
                    .iter()
                    .fold("user,id=n0".to_string(), |n, (h, g)| n + &format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}")),
            )
            .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
            .arg("-pidfile")
            .arg(dir.path().join("qemu.pid"));
        for (name, size) in &self.disks {
            let path = dir.path().join(format!("{name}.img"));
            std::fs::File::create(&path).and_then(|f| f.set_len(*size)).expect("create a disk image");
            cmd.arg("-drive").arg(format!("file={},format=raw,if=virtio,cache=unsafe", path.display()));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("qemu.err")).unwrap());
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl
        // (async-signal-safe, no allocation). The signal comes when the thread that spawned
        // qemu ends: a test's thread, which owns the VM anyway.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::Kill))
                    .map_err(Into::into)
            });
        }
        let started = Instant::now();
        let child = cmd.spawn().expect("start qemu-system-x86_64");
        let mut vm = Vm {
            dir,
            child,
            reader: None,
            writer: None,
            next: 0,
            disks: self.disks.iter().map(|(n, _)| n.clone()).collect(),
        };
        let stream = vm.accept(&listener, started);
        vm.writer = Some(stream.try_clone().unwrap());
        vm.reader = Some(BufReader::new(stream));
        vm.wait_line(|l| l == "bulwark-lab-ready", BOOT_TIMEOUT, "the guest's shell");
        eprintln!("lab VM ready in {:.1} s", started.elapsed().as_secs_f64());
        vm
    }
}

/// Where VM folders live: one per VM, named after the test process (`vm-PID-…`).
pub fn lab_base() -> PathBuf {
    let base = std::env::temp_dir().join("bulwark-lab");
    std::fs::create_dir_all(&base).expect("the lab's folder");
    base
}

/// Removes the folders (and kills the qemu) of VMs whose test process died.
fn remove_stale_vms(base: &Path) {
    for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix("vm-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Some(qemu) =
            std::fs::read_to_string(e.path().join("qemu.pid")).ok().and_then(|p| p.trim().parse::<i32>().ok())
        {
            // Only a qemu of this folder (it runs in it): the pid may have been reused since.
            let cwd = std::fs::read_link(format!("/proc/{qemu}/cwd"));
            let ours = cwd.is_ok_and(|c| std::fs::canonicalize(e.path()).is_ok_and(|p| p == c));
            if ours {
                let _ = Command::new("kill").args(["-9", &qemu.to_string()]).status();
            }
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

/// A running VM; killed and its folder removed on drop.
pub struct Vm {
    dir: tempfile::TempDir,
    child: Child,
    reader: Option<BufReader<UnixStream>>,
    writer: Option<UnixStream>,
    next: u64,
    disks: Vec<String>,
}

/// What a guest command did.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A command running in the background in the guest ([`Vm::spawn`]).
#[derive(Debug, Clone)]
pub struct Background {
    /// Its process id in the guest (the leader of its own session).
    pub pid: u32,
    out: PathBuf,
    err: PathBuf,
}

impl Background {
    /// What it printed so far: standard output, standard error.
    pub fn output(&self) -> (String, String) {
        let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
        (read(&self.out), read(&self.err))
    }
}

impl Vm {
    /// A VM of the lab, 1 GiB of memory, no disks yet.
    pub fn builder(lab: &Lab) -> VmBuilder {
        VmBuilder { lab: lab.clone(), disks: Vec::new(), memory_mib: 1024, forwards: Vec::new() }
    }

    /// The VM's folder on the host (disks, console, exchange folder), removed on drop.
    pub fn folder(&self) -> &Path {
        self.dir.path()
    }

    /// qemu's process id on the host.
    pub fn qemu_pid(&self) -> u32 {
        self.child.id()
    }

    /// The exchange folder: `/lab` in the guest, writable by both.
    pub fn exchange(&self) -> PathBuf {
        self.dir.path().join("lab")
    }

    /// The image file of disk `name` on the host.
    pub fn disk(&self, name: &str) -> PathBuf {
        assert!(self.disks.iter().any(|d| d == name), "no disk {name}");
        self.dir.path().join(format!("{name}.img"))
    }

    /// The kernel's console so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.path().join("console.log")).unwrap_or_default()).into_owned()
    }

    fn accept(&mut self, listener: &UnixListener, started: Instant) -> UnixStream {
        listener.set_nonblocking(true).unwrap();
        loop {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    return s;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Ok(Some(st)) = self.child.try_wait() {
                        self.fail(&format!("qemu exited ({st}) before connecting its serial port"));
                    }
                    if started.elapsed() > BOOT_TIMEOUT {
                        self.fail("qemu did not connect its serial port");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept qemu's serial port: {e}"),
            }
        }
    }

    /// Reads lines from the command port until one satisfies `want`.
    fn wait_line(&mut self, want: impl Fn(&str) -> bool, timeout: Duration, what: &str) -> String {
        let deadline = Instant::now() + timeout;
        let mut line = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.fail(&format!("timed out after {} s waiting for {what}", timeout.as_secs()));
            }
            let reader = self.reader.as_mut().unwrap();
            reader.get_ref().set_read_timeout(Some(left.min(Duration::from_secs(1)))).unwrap();
            match reader.read_line(&mut line) {
                Ok(0) => self.fail(&format!("the guest closed its command port while waiting for {what}")),
                Ok(_) if line.ends_with('\n') => {
                    let l = line.trim_end().to_string();
                    if want(&l) {
                        return l;
                    }
                    line.clear();
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    if let Ok(Some(st)) = self.child.try_wait() {
                        self.fail(&format!("qemu exited ({st}) while waiting for {what}"));
                    }
                }
                Err(e) => self.fail(&format!("reading the command port: {e}")),
            }
        }
    }

    fn fail(&mut self, what: &str) -> ! {
        panic!("lab VM: {what}\n--- console (last lines) ---\n{}", tail(&self.console(), 40));
    }

    /// Runs `script` (by the guest's /bin/sh, in /lab) and waits for it, up to `timeout`.
    pub fn run_timeout(&mut self, script: &str, timeout: Duration) -> Output {
        self.next += 1;
        let n = self.next;
        let x = self.exchange();
        std::fs::write(x.join(format!("{n}.sh")), script).unwrap();
        let w = self.writer.as_mut().unwrap();
        w.write_all(format!("{n}\n").as_bytes()).and_then(|()| w.flush()).expect("send a command to the guest");
        let prefix = format!("bulwark-lab-done {n} ");
        let done = self.wait_line(|l| l.starts_with(&prefix), timeout, &format!("command {n}: {script}"));
        let status = done[prefix.len()..].trim().parse().unwrap_or(-1);
        let read = |p: PathBuf| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
        let out = Output { status, stdout: read(x.join(format!("{n}.out"))), stderr: read(x.join(format!("{n}.err"))) };
        for ext in ["sh", "out", "err"] {
            let _ = std::fs::remove_file(x.join(format!("{n}.{ext}")));
        }
        out
    }

    /// Runs `script` in the guest (up to 10 minutes).
    pub fn run(&mut self, script: &str) -> Output {
        self.run_timeout(script, Duration::from_secs(600))
    }

    /// Runs `script`, which must succeed; returns its standard output.
    pub fn ok(&mut self, script: &str) -> String {
        let o = self.run(script);
        if o.status != 0 {
            self.fail(&format!(
                "`{script}` exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                o.status,
                tail(&o.stdout, 30),
                tail(&o.stderr, 30)
            ));
        }
        o.stdout
    }

    /// Starts `script` in the background in a session of its own (so a signal to its pid
    /// reaches what it runs when it `exec`s); its output is kept in the exchange folder.
    pub fn spawn(&mut self, script: &str) -> Background {
        self.next += 1;
        let n = self.next;
        let x = self.exchange();
        std::fs::write(x.join(format!("bg{n}.sh")), script).unwrap();
        let pid = self.ok(&format!("setsid sh /lab/bg{n}.sh </dev/null >/lab/bg{n}.out 2>/lab/bg{n}.err & echo $!"));
        Background {
            pid: pid.trim().parse().expect("a pid"),
            out: x.join(format!("bg{n}.out")),
            err: x.join(format!("bg{n}.err")),
        }
    }

    /// Whether process `pid` still runs in the guest.
    pub fn alive(&mut self, pid: u32) -> bool {
        self.run(&format!("kill -0 {pid}")).status == 0
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- lab VM console (last lines) ---\n{}", tail(&self.console(), 60));
        }
        // The TempDir removes the folder (disks, exchange, console).
    }
}

/// The guest kernel's command line. It names the folder the test binaries were built in
/// (`lab.show=`), which the guest shows at its own path: the guest's /tmp and /run are its
/// own, so a checkout built under either (CI's may be) would otherwise be hidden from it.
fn kernel_command_line() -> String {
    let mut line = String::from("console=ttyS0 panic=-1 printk.time=1 loglevel=4");
    // A test binary is target/<profile>/deps/NAME: its profile folder holds the binaries.
    let exe = std::env::current_exe().ok();
    let built = exe.as_deref().and_then(Path::parent).and_then(Path::parent);
    if let Some(dir) = built.and_then(Path::to_str).filter(|d| !d.contains(char::is_whitespace)) {
        line.push_str(&format!(" lab.show={dir}"));
    }
    line
}
