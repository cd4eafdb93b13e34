//! What a data mover and an agent refuse: no certificate, another CA's certificate, a revoked
//! one, another agent's ticket, a wrong or reused ticket, another protocol version, malformed
//! frames, a caller in the wrong role. Each refusal is logged with its reason and the
//! repository is left exactly as it was.

mod cluster;

use std::path::Path;
use std::sync::Arc;

use bulwark_agent::remote::{MoverEndpoint, RemoteTarget};
use bulwark_proto::pb::data_mover_client::DataMoverClient;
use bulwark_proto::pb::{agent_frame, mover_frame, AgentFrame, MoverRef, MoverSpec, MoverStarted, Open, Put};
use bulwark_proto::pki::{identity_name, Ca, Identity, Role};
use bulwark_proto::tls::{self, Revocations, TlsIdentity};
use cluster::*;

fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    walk(dir, &mut out);
    out.sort();
    out
}

fn start_mover(c: &Cluster, transport: &Daemon, repo: &Path, agent: &str) -> MoverStarted {
    c.rt.block_on(async {
        let mut t = c.manager.transport(&transport.node()).await.unwrap();
        t.start_mover(MoverSpec {
            protocol: bulwark_proto::PROTOCOL,
            task_id: format!("refusal-{agent}"),
            repository: repo.display().to_string(),
            agent: agent.into(),
            max_streams: 2,
            connect_timeout_s: 30,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
    })
}

fn stop_mover(c: &Cluster, transport: &Daemon, m: &MoverStarted) -> bulwark_proto::pb::MoverReport {
    c.rt.block_on(async {
        let mut t = c.manager.transport(&transport.node()).await.unwrap();
        let r = MoverRef { protocol: bulwark_proto::PROTOCOL, mover_id: m.mover_id.clone() };
        t.stop_mover(r).await.unwrap().into_inner()
    })
}

/// Connects to the mover as `id` (or with no certificate) and opens one stream.
fn connect(
    c: &Cluster,
    m: &MoverStarted,
    node: &str,
    id: Option<&Identity>,
    ticket: &str,
) -> Result<RemoteTarget, String> {
    let tls_id = id.map(|i| TlsIdentity::new(i).unwrap());
    let cfg = tls::client_config(
        tls_id.as_ref(),
        id.is_none().then(|| c.ca.fingerprint()).as_deref(),
        &Revocations::default(),
    )
    .unwrap();
    let ep = MoverEndpoint { address: m.address.clone(), node: node.into(), ticket: ticket.into(), streams: 1 };
    c.rt.block_on(RemoteTarget::connect(&ep, cfg)).map_err(|e| e.to_string())
}

/// [`connect`], which must be refused; the reason.
fn refused(c: &Cluster, m: &MoverStarted, node: &str, id: Option<&Identity>, ticket: &str) -> String {
    match connect(c, m, node, id, ticket) {
        Ok(_) => panic!("connection accepted"),
        Err(e) => e,
    }
}

/// Sends raw frames on one stream and returns the mover's answers (shortened), or its refusal.
fn raw(
    c: &Cluster,
    m: &MoverStarted,
    node: &str,
    id: &Identity,
    frames: Vec<AgentFrame>,
) -> Result<Vec<String>, String> {
    Ok(raw_frames(c, m, node, id, frames)?
        .into_iter()
        .map(|f| match f {
            mover_frame::Frame::Error(e) => format!("error: {e}"),
            other => format!("{other:?}").chars().take(40).collect(),
        })
        .collect())
}

/// Sends raw frames on one stream and returns the mover's answers, or its refusal.
fn raw_frames(
    c: &Cluster,
    m: &MoverStarted,
    node: &str,
    id: &Identity,
    frames: Vec<AgentFrame>,
) -> Result<Vec<mover_frame::Frame>, String> {
    let tls_id = TlsIdentity::new(id).unwrap();
    let cfg = tls::client_config(Some(&tls_id), None, &Revocations::default()).unwrap();
    c.rt.block_on(async {
        let ch =
            tls::connect(&m.address, &identity_name(Role::Transport, node), cfg).await.map_err(|e| e.to_string())?;
        let mut s = DataMoverClient::new(ch)
            .session(tokio_stream::iter(frames))
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        let mut out = Vec::new();
        loop {
            // The data mover ends its process right after its last word: a broken stream
            // after answers is its end, not a refusal.
            let f = match s.message().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(st) if out.is_empty() => return Err(st.message().to_string()),
                Err(_) => break,
            };
            out.extend(f.frame);
        }
        Ok(out)
    })
}

/// The point agent a1's tasks in these tests may begin.
fn a1_disk() -> bulwark_repo::PointSpec {
    bulwark_repo::PointSpec {
        kind: bulwark_repo::PointKind::Volume,
        name: "a1-disk".into(),
        source: "/dev/vda".into(),
        volume_size: 1 << 20,
        block_size: bulwark_repo::BlockSize::DEFAULT,
        compression: Default::default(),
        parent: None,
        snapshot: "none".into(),
        consistency: "crash".into(),
        key_scope: None,
    }
}

fn open(ticket: &str, protocol: u32) -> AgentFrame {
    AgentFrame { frame: Some(agent_frame::Frame::Open(Open { protocol, ticket: ticket.into(), stream: 0 })) }
}

#[test]
fn refused_peers_tickets_and_frames_leave_the_repository_untouched() {
    let c = Cluster::new();
    let repos = c.dir.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let repo = repos.join("r");
    init_repo(&repo);
    let before = listing(&repo);
    let agent = c.start(Role::Agent, "a1", &[]);
    let transport = c.start(Role::Transport, "t1", &["--root", repos.to_str().unwrap()]);
    let a1 = Identity::load(&agent.data_dir).unwrap().unwrap();
    let log_has = |what: &str| {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !transport.log_text().contains(what) {
            assert!(std::time::Instant::now() < until, "{what:?} not logged:\n{}", transport.log_text());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };

    let m = start_mover(&c, &transport, &repo, "a1");
    // No certificate.
    let e = refused(&c, &m, "t1", None, &m.ticket);
    assert!(e.contains("refused") || e.contains("transport error") || e.contains("certificate"), "{e}");
    log_has("refused connection from 127.0.0.1");
    // A certificate from another CA, even with the right name and ticket.
    let mut rogue = Ca::load_or_create(&c.dir.path().join("rogue-ca")).unwrap().issue(Role::Agent, "a1").unwrap();
    rogue.ca_pem = c.ca.cert_pem().to_string(); // it trusts our mover; our mover must not trust it
    refused(&c, &m, "t1", Some(&rogue), &m.ticket);
    log_has("refused client certificate of agent a1");
    // Another agent presenting a1's ticket.
    let other = c.ca.issue(Role::Agent, "b2").unwrap();
    let e = refused(&c, &m, "t1", Some(&other), &m.ticket);
    assert!(e.contains("issued to agent a1, not to b2"), "{e}");
    log_has("issued to agent a1, not to b2");
    // A wrong ticket.
    let e = refused(&c, &m, "t1", Some(&a1), &"0".repeat(64));
    assert!(e.contains("ticket is not the one"), "{e}");
    // Another protocol version.
    let e = raw(&c, &m, "t1", &a1, vec![open(&m.ticket, 99)]).unwrap_err();
    assert!(e.contains("protocol mismatch") && e.contains("99"), "{e}");
    log_has("protocol mismatch");
    // The right agent: accepted. A second connection with the same ticket: refused.
    let first = connect(&c, &m, "t1", Some(&a1), &m.ticket).unwrap();
    let e = refused(&c, &m, "t1", Some(&a1), &m.ticket);
    assert!(e.contains("already used by another connection"), "{e}");
    drop(first);
    let report = stop_mover(&c, &transport, &m);
    assert_eq!(report.status(), bulwark_proto::pb::MoverStatus::Failed);

    // Malformed frames end the session with the reason, before anything is written.
    let m = start_mover(&c, &transport, &repo, "a1");
    let bad_put =
        AgentFrame { frame: Some(agent_frame::Frame::Put(Put { id: vec![1, 2, 3, 4, 5], data: vec![0; 64] })) };
    let answers = raw(&c, &m, "t1", &a1, vec![open(&m.ticket, bulwark_proto::PROTOCOL), bad_put]).unwrap();
    assert!(
        answers.iter().any(|a| a.contains("put: 5 bytes is not a whole number of 32-byte chunk ids")),
        "{answers:?}"
    );
    let report = c.rt.block_on(async {
        let mut t = c.manager.transport(&transport.node()).await.unwrap();
        let r = MoverRef { protocol: bulwark_proto::PROTOCOL, mover_id: m.mover_id.clone() };
        t.wait_mover(r).await.unwrap().into_inner()
    });
    assert_eq!(report.status(), bulwark_proto::pb::MoverStatus::Failed);
    assert!(report.error.contains("32-byte chunk ids"), "{}", report.error);
    log_has("put: 5 bytes is not a whole number");

    // A revoked certificate is refused from the moment the server says so.
    let stolen = c.ca.issue(Role::Agent, "a1").unwrap();
    let serial = stolen.peer_identity().unwrap().serial;
    c.rt.block_on(c.manager.push_revocations(Role::Transport, &transport.node(), vec![serial])).unwrap();
    let m = start_mover(&c, &transport, &repo, "a1");
    refused(&c, &m, "t1", Some(&stolen), &m.ticket);
    log_has("Revoked");
    stop_mover(&c, &transport, &m);

    // Only the server may call an agent or a transport service.
    let other_tls = TlsIdentity::new(&other).unwrap();
    let cfg = tls::client_config(Some(&other_tls), None, &Revocations::default()).unwrap();
    let intruder = bulwark_server::task_driver::Manager::new(Arc::clone(&cfg));
    let e = c.rt.block_on(intruder.inventory(&agent.node())).unwrap_err().to_string();
    assert!(e.contains("may not"), "{e}");
    wait_for(5, "agent log", || agent.log_text().contains("refused read the inventory from agent b2"));

    assert_eq!(listing(&repo), before, "the repository changed");
    assert!(points(&repo).is_empty());
}

#[test]
fn the_decoder_survives_the_fuzz_corpus() {
    // Every input the fuzzer kept (fuzz/corpus/frames) decodes to a request or an error,
    // never a panic; crashes it found once are in there too.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/frames");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let bytes = std::fs::read(e.path()).unwrap();
        let _ = bulwark_transport::frames::decode(&bytes);
        n += 1;
    }
    assert!(n >= 10, "the corpus in {} has {n} inputs", dir.display());
}

#[test]
fn a_hostile_agent_cannot_replace_plant_or_read_chunks() {
    let c = Cluster::new();
    let repos = c.dir.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let repo_dir = repos.join("r");
    init_repo(&repo_dir);
    let repo = bulwark_repo::Repository::open(&repo_dir, None).unwrap();
    // A chunk another computer's point uses.
    let mut codec = repo.codec(bulwark_repo::Compression::Optimal);
    let block = b"another computer's block".repeat(100);
    let id = codec.digest(&block);
    let original = codec.encode(&id, &block);
    repo.put_chunk(&id, &original).unwrap();
    repo.flush().unwrap();
    let agent = c.start(Role::Agent, "a1", &[]);
    let transport = c.start(Role::Transport, "t1", &["--root", repos.to_str().unwrap()]);
    let a1 = Identity::load(&agent.data_dir).unwrap().unwrap();
    let start = |names: Vec<String>| {
        c.rt.block_on(async {
            let mut t = c.manager.transport(&transport.node()).await.unwrap();
            t.start_mover(MoverSpec {
                protocol: bulwark_proto::PROTOCOL,
                task_id: "sneaky".into(),
                repository: repo_dir.display().to_string(),
                agent: "a1".into(),
                max_streams: 1,
                connect_timeout_s: 30,
                names,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
        })
    };
    let frame = |f: agent_frame::Frame| AgentFrame { frame: Some(f) };

    let m = start(vec!["a1-disk".into()]);
    let answers = raw(
        &c,
        &m,
        "t1",
        &a1,
        vec![open(&m.ticket, bulwark_proto::PROTOCOL), frame(agent_frame::Frame::Latest("web-2-disk".into()))],
    )
    .unwrap();
    assert!(answers.iter().any(|a| a.contains("\"web-2-disk\" is not one of task sneaky's")), "{answers:?}");

    let m = start(vec!["a1-disk".into()]);
    let spec = a1_disk();
    let frames = vec![
        open(&m.ticket, bulwark_proto::PROTOCOL),
        frame(agent_frame::Frame::Begin(serde_json::to_string(&spec).unwrap())),
        frame(agent_frame::Frame::Put(Put { id: id.0.to_vec(), data: b"forged replacement bytes!".to_vec() })),
        frame(agent_frame::Frame::Flush(Default::default())),
    ];
    let answers = raw(&c, &m, "t1", &a1, frames).unwrap();
    assert!(answers.iter().any(|a| a.starts_with("Flushed")), "{answers:?}");
    let fresh = bulwark_repo::Repository::open(&repo_dir, None).unwrap();
    assert_eq!(fresh.read_stored_chunk(&id).unwrap(), original);
    assert_eq!(fresh.chunk_copies(&id).unwrap().len(), 1, "a second copy was planted");
    assert!(points(&repo_dir).is_empty());

    // Dedup poisoning: the agent names content another computer will back up and uploads other
    // bytes under that name. The mover checks the upload against its name, refuses it and fails
    // the task; the name stays free, so the victim's own upload is what gets stored.
    let victims_block = vec![0x5a_u8; 64 << 10];
    let target = codec.digest(&victims_block);
    let forged = codec.encode(&target, &vec![0xa5_u8; 64 << 10]);
    let m = start(vec!["a1-disk".into()]);
    let frames = vec![
        open(&m.ticket, bulwark_proto::PROTOCOL),
        frame(agent_frame::Frame::Begin(serde_json::to_string(&spec).unwrap())),
        frame(agent_frame::Frame::Put(Put { id: target.0.to_vec(), data: forged })),
        frame(agent_frame::Frame::Flush(Default::default())),
    ];
    let answers = raw(&c, &m, "t1", &a1, frames).unwrap();
    assert!(
        answers.iter().any(|a| a.contains("does not hold what its name says") && a.contains("digest mismatch")),
        "{answers:?}"
    );
    assert!(!answers.iter().any(|a| a.starts_with("Flushed")), "{answers:?}");
    let report = c.rt.block_on(async {
        let mut t = c.manager.transport(&transport.node()).await.unwrap();
        let r = MoverRef { protocol: bulwark_proto::PROTOCOL, mover_id: m.mover_id.clone() };
        t.wait_mover(r).await.unwrap().into_inner()
    });
    assert_eq!(report.status(), bulwark_proto::pb::MoverStatus::Failed);
    assert!(report.error.contains(&format!("chunk {target} sent by agent a1")), "{}", report.error);
    let stored = || bulwark_repo::Repository::open(&repo_dir, None).unwrap().chunk_copies(&target).unwrap();
    assert!(stored().is_empty(), "the forged chunk was stored");
    // Nor does a commit right behind the forged upload (one stream, no flush) make a point of it.
    let m = start(vec!["a1-disk".into()]);
    let stats = serde_json::to_string(&bulwark_repo::PointStats::default()).unwrap();
    let frames = vec![
        open(&m.ticket, bulwark_proto::PROTOCOL),
        frame(agent_frame::Frame::Begin(serde_json::to_string(&spec).unwrap())),
        frame(agent_frame::Frame::Put(Put { id: target.0.to_vec(), data: codec.encode(&target, &[0xa5; 64 << 10]) })),
        frame(agent_frame::Frame::Blocks(target.0.to_vec())),
        frame(agent_frame::Frame::Commit(bulwark_proto::pb::Commit { stats_json: stats, ..Default::default() })),
    ];
    let answers = raw(&c, &m, "t1", &a1, frames).unwrap();
    assert!(answers.iter().any(|a| a.contains("does not hold what its name says")), "{answers:?}");
    assert!(!answers.iter().any(|a| a.starts_with("Committed")), "{answers:?}");
    assert!(points(&repo_dir).is_empty(), "a point was committed on a refused chunk");
    assert!(stored().is_empty());
    // An honest upload of the same name is stored and reads back as the victim's block.
    let m = start(vec!["a1-disk".into()]);
    let frames = vec![
        open(&m.ticket, bulwark_proto::PROTOCOL),
        frame(agent_frame::Frame::Begin(serde_json::to_string(&spec).unwrap())),
        frame(agent_frame::Frame::Put(Put { id: target.0.to_vec(), data: codec.encode(&target, &victims_block) })),
        frame(agent_frame::Frame::Flush(Default::default())),
    ];
    let answers = raw(&c, &m, "t1", &a1, frames).unwrap();
    assert!(answers.iter().any(|a| a.starts_with("Flushed")), "{answers:?}");
    assert_eq!(repo.read_chunk(&mut codec, &target).unwrap(), victims_block);
}

/// Per-computer keys: an agent of an isolated repository is handed its own computer's keys, not
/// the master key, and cannot learn whether content another computer backed up is stored; in a
/// shared repository it gets the master key and can (the trust that setting documents).
#[test]
fn an_agent_learns_nothing_of_other_computers_in_an_isolated_repository() {
    let c = Cluster::new();
    let repos = c.dir.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let agent = c.start(Role::Agent, "a1", &[]);
    let transport = c.start(Role::Transport, "t1", &["--root", repos.to_str().unwrap()]);
    let a1 = Identity::load(&agent.data_dir).unwrap().unwrap();
    let frame = |f: agent_frame::Frame| AgentFrame { frame: Some(f) };
    let spec = a1_disk();
    let secret_block = vec![0x42_u8; 256 << 10];
    for isolation in [bulwark_repo::Isolation::Computer, bulwark_repo::Isolation::Shared] {
        let dir = repos.join(isolation.name());
        let opts = bulwark_repo::InitOptions {
            password: Some(b"correct horse".to_vec()),
            kdf: bulwark_repo::crypto::KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 },
            isolation,
            ..Default::default()
        };
        let repo = bulwark_repo::Repository::init(&dir, &opts).unwrap();
        // Computer a2 stores a block the hostile agent a1 guesses it holds.
        let victim = repo.scoped("a2");
        let mut vc = victim.codec(Default::default());
        let vid = vc.digest(&secret_block);
        victim.put_chunk(&vid, &vc.encode(&vid, &secret_block)).unwrap();
        victim.flush().unwrap();

        let m = c.rt.block_on(async {
            let mut t = c.manager.transport(&transport.node()).await.unwrap();
            t.start_mover(MoverSpec {
                protocol: bulwark_proto::PROTOCOL,
                task_id: format!("curious-{}", isolation.name()),
                repository: dir.display().to_string(),
                password: "correct horse".into(),
                agent: "a1".into(),
                max_streams: 1,
                connect_timeout_s: 30,
                names: vec!["a1-disk".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
        });
        let handed = repo.scoped("a1").keys().master_key().unwrap();
        let mut guess =
            bulwark_repo::ChunkCodec::new(bulwark_repo::crypto::Keys::from_master(&handed), Default::default());
        let guessed = guess.digest(&secret_block);
        let frames = vec![
            open(&m.ticket, bulwark_proto::PROTOCOL),
            frame(agent_frame::Frame::Begin(serde_json::to_string(&spec).unwrap())),
            frame(agent_frame::Frame::Query(bulwark_proto::pb::Query { ids: guessed.0.to_vec() })),
            frame(agent_frame::Frame::Flush(Default::default())),
        ];
        let answers = raw_frames(&c, &m, "t1", &a1, frames).unwrap();
        let key = answers.iter().find_map(|f| match f {
            mover_frame::Frame::Opened(o) => Some(o.master_key.clone()),
            _ => None,
        });
        let have = answers.iter().find_map(|f| match f {
            mover_frame::Frame::Have(h) => Some(h.clone()),
            _ => None,
        });
        assert_eq!(key.as_deref(), Some(&handed[..]), "{isolation:?}: the key the agent was handed");
        let master = repo.keys().master_key().unwrap();
        match isolation {
            bulwark_repo::Isolation::Computer => {
                assert_ne!(&handed[..], &master[..]);
                assert_eq!(have, Some(vec![0]), "the isolated agent learned that a2 holds the block");
                // With the keys it holds it cannot read a2's chunk either.
                assert!(repo.scoped("a1").read_chunk(&mut guess, &vid).is_err());
            }
            bulwark_repo::Isolation::Shared => {
                assert_eq!(&handed[..], &master[..]);
                assert_eq!(have, Some(vec![1]), "a shared repository answers for every computer");
            }
        }
        stop_mover(&c, &transport, &m);
    }
}
