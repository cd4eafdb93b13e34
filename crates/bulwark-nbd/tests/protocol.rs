//! The server on real TCP on loopback, spoken to byte by byte: the handshake's options, pipelined
//! requests answered by handle, writes refused or kept in the overlay, and clients that break
//! the protocol dropped without harm to the others.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bulwark_nbd::proto::*;
use bulwark_nbd::{Export, Options, Server};
use bulwark_repo::image::MemImage as Bytes;

const SIZE: usize = (3 << 20) + 555;

/// A server on an ephemeral loopback port, running on its own runtime until dropped.
struct Running {
    addr: SocketAddr,
    data: Vec<u8>,
    _scratch: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start() -> Running {
        let data = bulwark_testkit::random_bytes(SIZE, 9);
        let scratch = tempfile::tempdir().unwrap();
        let exports = vec![
            Export {
                name: "ro".into(),
                description: "read only".into(),
                image: Arc::new(Bytes(data.clone())),
                writable: false,
            },
            Export {
                name: "rw".into(),
                description: String::new(),
                image: Arc::new(Bytes(data.clone())),
                writable: true,
            },
        ];
        let opts = Options { scratch_dir: scratch.path().to_path_buf(), max_request: 1 << 20, ..Options::default() };
        let server = Server::new(exports, opts).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(l.local_addr().unwrap()).unwrap();
                server
                    .serve(l, async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv().unwrap();
        Running { addr, data, _scratch: scratch, stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

/// A client that speaks the protocol by hand.
struct Client {
    s: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        assert_eq!(u64::from_be_bytes(hello[0..8].try_into().unwrap()), NBDMAGIC);
        assert_eq!(u64::from_be_bytes(hello[8..16].try_into().unwrap()), IHAVEOPT);
        let flags = u16::from_be_bytes(hello[16..18].try_into().unwrap());
        assert_eq!(flags, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes()).unwrap();
        Client { s }
    }

    fn option(&mut self, option: u32, data: &[u8]) {
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b).unwrap();
    }

    /// One option reply: its type and data.
    fn option_reply(&mut self, option: u32) -> (u32, Vec<u8>) {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(u64::from_be_bytes(h[0..8].try_into().unwrap()), OPTION_REPLY_MAGIC);
        assert_eq!(u32::from_be_bytes(h[8..12].try_into().unwrap()), option);
        let mut d = vec![0u8; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
        self.s.read_exact(&mut d).unwrap();
        (u32::from_be_bytes(h[12..16].try_into().unwrap()), d)
    }

    /// NBD_OPT_GO or NBD_OPT_INFO: the replies up to the final one; returns (size, flags) from
    /// NBD_INFO_EXPORT, or the final error.
    fn go(&mut self, option: u32, name: &str) -> Result<(u64, u16, Vec<u16>), (u32, String)> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        self.option(option, &d);
        let (mut export, mut infos) = (None, Vec::new());
        loop {
            let (kind, data) = self.option_reply(option);
            match kind {
                REP_INFO => {
                    let t = u16::from_be_bytes(data[0..2].try_into().unwrap());
                    infos.push(t);
                    if t == INFO_EXPORT {
                        export = Some((
                            u64::from_be_bytes(data[2..10].try_into().unwrap()),
                            u16::from_be_bytes(data[10..12].try_into().unwrap()),
                        ));
                    }
                }
                REP_ACK => {
                    let (size, flags) = export.expect("NBD_INFO_EXPORT before the ACK");
                    return Ok((size, flags, infos));
                }
                err => return Err((err, String::from_utf8_lossy(&data).into())),
            }
        }
    }

    fn attach(addr: SocketAddr, name: &str) -> Client {
        let mut c = Client::connect(addr);
        c.go(OPT_GO, name).unwrap();
        c
    }

    fn send(&mut self, kind: u16, handle: u64, offset: u64, length: u32, payload: &[u8]) {
        let mut b = Request { flags: 0, kind, handle, offset, length }.encode().to_vec();
        b.extend_from_slice(payload);
        self.s.write_all(&b).unwrap();
    }

    /// One simple reply: (error, handle); `read_len` bytes of data follow a successful read.
    fn reply(&mut self, read_len: impl Fn(u64) -> usize) -> (u32, u64, Vec<u8>) {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_be_bytes(h[0..4].try_into().unwrap()), SIMPLE_REPLY_MAGIC);
        let error = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let handle = u64::from_be_bytes(h[8..16].try_into().unwrap());
        let mut data = Vec::new();
        if error == 0 {
            data = vec![0u8; read_len(handle)];
            self.s.read_exact(&mut data).unwrap();
        }
        (error, handle, data)
    }

    fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.send(CMD_READ, 7, offset, len, &[]);
        let (e, h, d) = self.reply(|_| len as usize);
        assert_eq!(h, 7);
        if e == 0 {
            Ok(d)
        } else {
            Err(e)
        }
    }

    fn command(&mut self, kind: u16, offset: u64, len: u32, payload: &[u8]) -> u32 {
        self.send(kind, 8, offset, len, payload);
        let (e, h, _) = self.reply(|_| 0);
        assert_eq!(h, 8);
        e
    }

    /// Whether the server has closed the connection (EOF or reset within the timeout).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

#[test]
fn handshake_lists_informs_and_refuses_what_it_does_not_offer() {
    let srv = Running::start();
    let mut c = Client::connect(srv.addr);
    c.option(OPT_LIST, &[]);
    let mut listed = Vec::new();
    loop {
        let (kind, d) = c.option_reply(OPT_LIST);
        if kind == REP_ACK {
            break;
        }
        assert_eq!(kind, REP_SERVER);
        let n = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize;
        listed.push(String::from_utf8(d[4..4 + n].to_vec()).unwrap());
    }
    assert_eq!(listed, ["ro", "rw"]);
    let (size, flags, infos) = c.go(OPT_INFO, "ro").unwrap();
    assert_eq!(size, SIZE as u64);
    assert!(flags & FLAG_READ_ONLY != 0 && flags & FLAG_SEND_TRIM == 0);
    assert!(infos.contains(&INFO_BLOCK_SIZE));
    let (_, flags, _) = c.go(OPT_INFO, "rw").unwrap();
    assert!(flags & FLAG_READ_ONLY == 0 && flags & FLAG_SEND_WRITE_ZEROES != 0);
    let (err, msg) = c.go(OPT_GO, "nope").unwrap_err();
    assert_eq!(err, REP_ERR_UNKNOWN);
    assert!(msg.contains("\"nope\"") && msg.contains("\"ro\""), "{msg}");
    // STARTTLS (5), meta contexts (10) and an option from the future: not supported, and the
    // handshake goes on.
    for option in [5, 10, 4242] {
        c.option(option, b"xyz");
        assert_eq!(c.option_reply(option).0, REP_ERR_UNSUP);
    }
    c.go(OPT_GO, "ro").unwrap();
    assert_eq!(c.read(10, 100).unwrap(), srv.data[10..110]);
    c.send(CMD_DISC, 1, 0, 0, &[]);
    assert!(c.closed());

    let mut c = Client::connect(srv.addr);
    c.option(OPT_ABORT, &[]);
    assert_eq!(c.option_reply(OPT_ABORT).0, REP_ACK);
    assert!(c.closed());

    // The oldest way in: NBD_OPT_EXPORT_NAME, answered with size and flags (no zeroes).
    let mut c = Client::connect(srv.addr);
    c.option(OPT_EXPORT_NAME, b"ro");
    let mut b = [0u8; 10];
    c.s.read_exact(&mut b).unwrap();
    assert_eq!(u64::from_be_bytes(b[0..8].try_into().unwrap()), SIZE as u64);
    assert_eq!(c.read(SIZE as u64 - 5, 5).unwrap(), srv.data[SIZE - 5..]);
    let mut c = Client::connect(srv.addr);
    c.option(OPT_EXPORT_NAME, b"unknown");
    assert!(c.closed(), "an unknown name has no other answer");
}

/// Many reads sent before any answer is read: every handle answered once, with its own data.
#[test]
fn pipelined_reads_are_answered_by_handle() {
    let srv = Running::start();
    let mut c = Client::attach(srv.addr, "ro");
    let reqs: Vec<(u64, u64, u32)> = (0..200u64)
        .map(|i| (1000 + i, (i * 7919 * 13) % (SIZE as u64 - 70_000), (i as u32 * 331) % 65536 + 1))
        .collect();
    let mut all = Vec::new();
    for (h, off, len) in &reqs {
        all.extend_from_slice(&Request { flags: 0, kind: CMD_READ, handle: *h, offset: *off, length: *len }.encode());
    }
    c.s.write_all(&all).unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in &reqs {
        let (e, h, data) = c.reply(|h| reqs[(h - 1000) as usize].2 as usize);
        assert_eq!(e, 0);
        let (_, off, len) = reqs[(h - 1000) as usize];
        assert_eq!(data, srv.data[off as usize..(off + u64::from(len)) as usize], "handle {h}");
        assert!(seen.insert(h), "handle {h} answered twice");
    }
}

#[test]
fn bad_requests_get_errors_and_writes_stay_in_the_overlay() {
    let srv = Running::start();
    let mut ro = Client::attach(srv.addr, "ro");
    assert_eq!(ro.command(CMD_WRITE, 0, 4, b"abcd"), EPERM, "a read-only export refuses writes");
    assert_eq!(ro.command(CMD_WRITE_ZEROES, 0, 4096, &[]), EPERM);
    assert_eq!(ro.command(CMD_TRIM, 0, 4096, &[]), EPERM);
    assert_eq!(ro.read(SIZE as u64 - 10, 11), Err(EINVAL), "a read past the end");
    assert_eq!(ro.read(u64::MAX - 1, 10), Err(EINVAL), "an offset that overflows");
    assert_eq!(ro.command(CMD_FLUSH, 0, 0, &[]), 0);
    assert_eq!(ro.read(0, 8).unwrap(), srv.data[..8], "the connection is still fine");

    let mut rw = Client::attach(srv.addr, "rw");
    let mut model = srv.data.clone();
    for (off, data) in [(5usize, vec![1u8; 3]), (4090, vec![2; 20]), (SIZE - 3, vec![3; 3]), (8192, vec![4; 8192])] {
        assert_eq!(rw.command(CMD_WRITE, off as u64, data.len() as u32, &data), 0);
        model[off..off + data.len()].copy_from_slice(&data);
    }
    assert_eq!(rw.command(CMD_WRITE_ZEROES, 100_000, 300_000, &[]), 0);
    model[100_000..400_000].fill(0);
    assert_eq!(rw.command(CMD_WRITE, SIZE as u64 - 1, 2, &[9, 9]), ENOSPC, "a write past the end");
    // A second connection sees the first one's writes (one overlay per export).
    let mut other = Client::attach(srv.addr, "rw");
    let mut back = Vec::new();
    for off in (0..SIZE).step_by(1 << 20) {
        back.extend(other.read(off as u64, (SIZE - off).min(1 << 20) as u32).unwrap());
    }
    assert!(back == model, "the writable export reads back what was written");
    let mut ro = Client::attach(srv.addr, "ro");
    assert_eq!(ro.read(0, 16_384).unwrap(), srv.data[..16_384], "the read-only export is untouched");
}

/// Garbage costs only the connection that sent it.
#[test]
fn clients_that_send_garbage_are_dropped_alone() {
    let srv = Running::start();
    let mut good = Client::attach(srv.addr, "ro");

    let mut bad_magic = Client::attach(srv.addr, "ro");
    bad_magic.s.write_all(&[0x55; 28]).unwrap();
    assert!(bad_magic.closed());

    let mut huge = Client::attach(srv.addr, "rw");
    huge.s.write_all(&Request { flags: 0, kind: CMD_WRITE, handle: 1, offset: 0, length: u32::MAX }.encode()).unwrap();
    assert!(huge.closed(), "a 4 GiB write is not read into memory");

    let mut huge_read = Client::attach(srv.addr, "ro");
    huge_read
        .s
        .write_all(&Request { flags: 0, kind: CMD_READ, handle: 1, offset: 0, length: 64 << 20 }.encode())
        .unwrap();
    assert!(huge_read.closed());

    let mut bad_option = Client::connect(srv.addr);
    bad_option.s.write_all(&[0xAB; 16]).unwrap();
    assert!(bad_option.closed());

    let mut huge_option = Client::connect(srv.addr);
    huge_option.s.write_all(&IHAVEOPT.to_be_bytes()).unwrap();
    huge_option.s.write_all(&OPT_GO.to_be_bytes()).unwrap();
    huge_option.s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert!(huge_option.closed());

    // Half a request, then gone.
    let mut gone = Client::attach(srv.addr, "ro");
    gone.s.write_all(&Request { flags: 0, kind: CMD_READ, handle: 1, offset: 0, length: 9 }.encode()[..11]).unwrap();
    drop(gone);

    assert_eq!(good.read(12345, 4096).unwrap(), srv.data[12345..12345 + 4096]);
    assert_eq!(Client::attach(srv.addr, "ro").read(0, 10).unwrap(), srv.data[..10], "new clients still come in");
}

/// One structured reply chunk: (flags, type, handle, payload).
fn chunk(c: &mut Client) -> (u16, u16, u64, Vec<u8>) {
    let mut h = [0u8; 20];
    c.s.read_exact(&mut h).unwrap();
    assert_eq!(u32::from_be_bytes(h[0..4].try_into().unwrap()), STRUCTURED_REPLY_MAGIC);
    let mut payload = vec![0u8; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
    c.s.read_exact(&mut payload).unwrap();
    (
        u16::from_be_bytes(h[4..6].try_into().unwrap()),
        u16::from_be_bytes(h[6..8].try_into().unwrap()),
        u64::from_be_bytes(h[8..16].try_into().unwrap()),
        payload,
    )
}

/// With structured replies a read comes back as one data chunk (offset, then data), other
/// requests as a final empty chunk, and errors as an error chunk with a number and a message.
#[test]
fn structured_replies_carry_data_and_errors() {
    let srv = Running::start();
    let mut c = Client::connect(srv.addr);
    c.option(OPT_STRUCTURED_REPLY, b"x");
    assert_eq!(c.option_reply(OPT_STRUCTURED_REPLY).0, REP_ERR_INVALID, "the option takes no data");
    c.option(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(c.option_reply(OPT_STRUCTURED_REPLY).0, REP_ACK);
    c.go(OPT_GO, "ro").unwrap();
    c.send(CMD_READ, 41, SIZE as u64 - 1000, 1000, &[]);
    let (flags, kind, handle, payload) = chunk(&mut c);
    assert_eq!((flags, kind, handle), (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 41));
    assert_eq!(u64::from_be_bytes(payload[..8].try_into().unwrap()), SIZE as u64 - 1000);
    assert_eq!(payload[8..], srv.data[SIZE - 1000..]);
    c.send(CMD_FLUSH, 42, 0, 0, &[]);
    assert_eq!(chunk(&mut c), (REPLY_FLAG_DONE, REPLY_TYPE_NONE, 42, vec![]));
    c.send(CMD_WRITE, 43, 0, 3, b"abc");
    let (flags, kind, handle, payload) = chunk(&mut c);
    assert_eq!((flags, kind, handle), (REPLY_FLAG_DONE, REPLY_TYPE_ERROR, 43));
    assert_eq!(u32::from_be_bytes(payload[0..4].try_into().unwrap()), EPERM);
    let n = u16::from_be_bytes(payload[4..6].try_into().unwrap()) as usize;
    assert_eq!(String::from_utf8_lossy(&payload[6..6 + n]), "the export is read-only");
    c.send(CMD_READ, 44, SIZE as u64, 1, &[]);
    let (_, kind, handle, payload) = chunk(&mut c);
    assert_eq!((kind, handle, u32::from_be_bytes(payload[0..4].try_into().unwrap())), (REPLY_TYPE_ERROR, 44, EINVAL));
}

/// Many clients at once, each reading its own ranges: every one gets its own bytes.
#[test]
fn many_clients_at_once() {
    let srv = Running::start();
    std::thread::scope(|s| {
        for t in 0..48u64 {
            let srv = &srv;
            s.spawn(move || {
                let mut c = Client::attach(srv.addr, if t % 2 == 0 { "ro" } else { "rw" });
                for i in 0..20u64 {
                    let off = (t * 65_537 + i * 131_071) % (SIZE as u64 - 40_000);
                    let len = 1 + ((t * 7 + i * 13) % 40_000) as u32;
                    let got = c.read(off, len).unwrap();
                    assert!(got == srv.data[off as usize..off as usize + len as usize], "client {t}, read {i}");
                }
            });
        }
    });
}
