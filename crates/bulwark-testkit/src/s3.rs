//! A private S3 server for tests: SeaweedFS's all-in-one `weed mini`, on free loopback ports in
//! a temporary directory, so tests can run side by side, and be stopped and started again on
//! the same ports and data (what "the storage went away mid-backup" tests need).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `weed` binary S3 tests use: `BULWARK_WEED`, else `weed` on the `PATH`. `None` skips an
/// S3 test, saying so; where the run promised a server (`BULWARK_REQUIRE_S3`, as `.ci/run` sets
/// it) a missing binary is a failure, not a silent pass.
pub fn weed_binary() -> Option<PathBuf> {
    let found = match std::env::var_os("BULWARK_WEED") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "BULWARK_WEED names {}, which is not a file", p.display());
            Some(p)
        }
        None => std::env::var_os("PATH")
            .and_then(|path| std::env::split_paths(&path).map(|d| d.join("weed")).find(|p| p.is_file())),
    };
    if found.is_none() {
        if std::env::var_os("BULWARK_REQUIRE_S3").is_some() {
            panic!("BULWARK_REQUIRE_S3 is set but there is no weed binary (BULWARK_WEED, or weed on PATH)");
        }
        eprintln!("no weed binary (BULWARK_WEED, or weed on PATH): S3 test skipped (.ci/run installs one)");
    }
    found
}

/// The ports one server listens on.
#[derive(Debug, Clone, Copy)]
struct Ports {
    s3: u16,
    s3_grpc: u16,
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    admin: u16,
    https: u16,
}

impl Ports {
    /// Free loopback ports. All are held until all are chosen, so none is picked twice; another
    /// process can still take one before the server binds it, which [`S3Server::start_with`]
    /// survives by trying again with new ones.
    fn pick() -> Ports {
        let mut held = Vec::new();
        let mut take = || {
            let l = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
            let p = l.local_addr().expect("a bound port").port();
            held.push(l);
            p
        };
        let [s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc, https] =
            [(); 9].map(|()| take());
        // The admin server's plugin worker dials the admin's HTTP port + 10000 for gRPC whatever
        // -admin.port.grpc says, so that one must be free too.
        let admin = loop {
            let l = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
            let p = l.local_addr().expect("a bound port").port();
            if p <= u16::MAX - 10000 {
                if let Ok(g) = TcpListener::bind(("127.0.0.1", p + 10000)) {
                    held.push(l);
                    held.push(g);
                    break p;
                }
            }
        };
        Ports { s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc, admin, https }
    }
}

/// A running `weed mini` (S3 on loopback), killed on drop.
pub struct S3Server {
    weed: PathBuf,
    dir: tempfile::TempDir,
    ports: Ports,
    credentials: Option<(String, String)>,
    tls: bool,
    child: Option<Child>,
}

impl S3Server {
    /// A server accepting any credentials; `None` (the test skips) when there is no `weed`.
    pub fn start() -> Option<S3Server> {
        S3Server::start_with(None, false)
    }

    /// A server that accepts only this access key and secret (and refuses any other).
    pub fn start_with_credentials(access_key: &str, secret_key: &str) -> Option<S3Server> {
        S3Server::start_with(Some((access_key.into(), secret_key.into())), false)
    }

    /// A server that also answers HTTPS ([`S3Server::https_endpoint`]), with a certificate for
    /// 127.0.0.1 from a CA of its own ([`S3Server::ca_file`]), made with the `openssl` command.
    pub fn start_tls() -> Option<S3Server> {
        S3Server::start_with(None, true)
    }

    fn start_with(credentials: Option<(String, String)>, tls: bool) -> Option<S3Server> {
        let weed = weed_binary()?;
        let mut last = String::new();
        for _ in 0..3 {
            let mut s = S3Server {
                weed: weed.clone(),
                dir: tempfile::tempdir().expect("a temporary directory"),
                ports: Ports::pick(),
                credentials: credentials.clone(),
                tls,
                child: None,
            };
            if tls {
                s.make_certificates();
            }
            match s.launch() {
                Ok(()) => return Some(s),
                // Most likely a port taken between picking and binding: new ports.
                Err(e) => last = e,
            }
        }
        panic!("weed mini did not start: {last}");
    }

    /// `http://127.0.0.1:PORT`, the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    /// `https://127.0.0.1:PORT`, the S3 endpoint over TLS (of a server from
    /// [`S3Server::start_tls`]).
    pub fn https_endpoint(&self) -> String {
        assert!(self.tls, "a server started without TLS");
        format!("https://127.0.0.1:{}", self.ports.https)
    }

    /// The PEM file of the CA that signed the HTTPS endpoint's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn make_certificates(&self) {
        let d = self.dir.path();
        let openssl = |args: &[&str]| {
            crate::run(Command::new("openssl").args(args).current_dir(d));
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=bulwark test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(d.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write the extension file");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
    }

    /// An `s3://` location of `bucket` (and `prefix`) on this server.
    pub fn location(&self, bucket: &str, prefix: &str) -> String {
        let path = if prefix.is_empty() { bucket.to_string() } else { format!("{bucket}/{prefix}") };
        format!("s3://{path}?endpoint={}", self.endpoint())
    }

    /// The directory holding the server's data and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server at once (SIGKILL), as a crash or a pulled cable would stop it, and
    /// waits until it is gone and its ports are free. Its data stays for [`S3Server::restart`].
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let sockets = self.grpc_sockets();
            // A paused process dies of SIGKILL too.
            let _ = c.kill();
            let _ = c.wait();
            for s in sockets {
                let _ = std::fs::remove_file(s);
            }
        }
    }

    /// The Unix sockets weed binds beside its gRPC ports, outside our directory (their place is
    /// built into weed), found among the bound sockets the kernel lists: left behind, they would
    /// pile up with every test run.
    fn grpc_sockets(&self) -> Vec<PathBuf> {
        let p = self.ports;
        let ports = [p.s3_grpc, p.master_grpc, p.volume_grpc, p.filer_grpc, p.admin + 10000];
        let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
        let mut out: Vec<PathBuf> = table
            .lines()
            .filter_map(|l| l.split_whitespace().nth(7))
            .map(PathBuf::from)
            .filter(|path| {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.starts_with("seaweedfs-") && ports.iter().any(|p| name.ends_with(&format!("-grpc-{p}.sock")))
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Freezes the server (SIGSTOP): connections open, nothing answered, as a hung server or a
    /// black-holed network would behave.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("the S3 server is running");
        crate::run(Command::new("kill").arg(sig).arg(child.id().to_string()));
    }

    /// Starts the server again on the same ports and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the S3 server is still running");
        if let Err(e) = self.launch() {
            panic!("weed mini did not start again: {e}");
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("weed.log")
    }

    fn launch(&mut self) -> Result<(), String> {
        let dir = self.dir.path();
        let data = dir.join("data");
        std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        let p = self.ports;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("{}: {e}", self.log_path().display()))?;
        let mut cmd = Command::new(&self.weed);
        cmd.arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-s3.port={}", p.s3))
            .arg(format!("-s3.port.grpc={}", p.s3_grpc))
            .arg(format!("-master.port={}", p.master))
            .arg(format!("-master.port.grpc={}", p.master_grpc))
            .arg(format!("-volume.port={}", p.volume))
            .arg(format!("-volume.port.grpc={}", p.volume_grpc))
            .arg(format!("-filer.port={}", p.filer))
            .arg(format!("-filer.port.grpc={}", p.filer_grpc))
            .arg(format!("-admin.port={}", p.admin))
            .arg(format!("-admin.port.grpc={}", p.admin + 10000))
            // Off: the admin UI, WebDAV, the Iceberg and Lance catalogues, usage reports.
            .args(["-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg("-master.telemetry=false")
            // As AWS does: a PUT into a missing bucket fails rather than creating it.
            .arg("-s3.autoCreateBucket=false")
            .arg(format!("-s3.localSocket={}", dir.join("s3.sock").display()))
            .arg(format!("-filer.localSocket={}", dir.join("filer.sock").display()))
            // Its own log files go to the temporary directory, not the machine's.
            .env("TMPDIR", dir)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("S3_BUCKET")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        if self.tls {
            cmd.arg(format!("-s3.port.https={}", p.https))
                .arg(format!("-s3.cert.file={}", dir.join("server.pem").display()))
                .arg(format!("-s3.key.file={}", dir.join("server.key").display()));
        }
        if let Some((key, secret)) = &self.credentials {
            // weed mini makes a user of these, and then refuses anonymous and other keys.
            cmd.env("AWS_ACCESS_KEY_ID", key).env("AWS_SECRET_ACCESS_KEY", secret);
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot run {}: {e}", self.weed.display()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("weed mini exited ({status}); its log:\n{}", self.log_tail()));
            }
            if let Some(status) = http_status(p.s3) {
                // 200 to an anonymous listing, or 403 with credentials configured: S3 answers
                // from the filer. A 5xx means it is still coming up.
                if status < 500 {
                    self.child = Some(child);
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("S3 did not answer within a minute; weed's log:\n{}", self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The status of `GET /` on a loopback port, if something answers HTTP there.
fn http_status(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
