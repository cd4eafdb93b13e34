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

/// Sends raw frames on one stream and returns the mover's answers, or its refusal.
fn raw(
    c: &Cluster,
    m: &MoverStarted,
    node: &str,
    id: &Identity,
    frames: Vec<AgentFrame>,
) -> Result<Vec<String>, String> {
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
            match f.frame {
                Some(mover_frame::Frame::Error(e)) => out.push(format!("error: {e}")),
                Some(other) => out.push(format!("{other:?}").chars().take(40).collect()),
                None => {}
            }
        }
        Ok(out)
    })
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
    assert_eq!(report.status, "failed");

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
    assert_eq!(report.status, "failed");
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
    let intruder = bulwark_server::manager::Manager::new(Arc::clone(&cfg));
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
fn an_agent_cannot_replace_stored_chunks_or_read_other_backups() {
    let c = Cluster::new();
    let repos = c.dir.path().join("repos");
    std::fs::create_dir_all(&repos).unwrap();
    let repo_dir = repos.join("r");
    init_repo(&repo_dir);
    let repo = bulwark_repo::Repository::open(&repo_dir, None).unwrap();
    // A chunk another computer's point uses.
    let id = bulwark_repo::ChunkId([7; 32]);
    repo.put_chunk(&id, b"the original stored bytes").unwrap();
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
    let answers =
        raw(&c, &m, "t1", &a1, vec![open(&m.ticket, 1), frame(agent_frame::Frame::Latest("web-2-disk".into()))])
            .unwrap();
    assert!(answers.iter().any(|a| a.contains("\"web-2-disk\" is not one of task sneaky's")), "{answers:?}");

    let m = start(vec!["a1-disk".into()]);
    let spec = bulwark_repo::PointSpec {
        kind: bulwark_repo::PointKind::Volume,
        name: "a1-disk".into(),
        source: "/dev/vda".into(),
        volume_size: 1 << 20,
        block_size: bulwark_repo::BlockSize::DEFAULT,
        compression: Default::default(),
        parent: None,
        snapshot: "none".into(),
        consistency: "crash".into(),
    };
    let frames = vec![
        open(&m.ticket, 1),
        frame(agent_frame::Frame::Begin(serde_json::to_string(&spec).unwrap())),
        frame(agent_frame::Frame::Put(Put { id: id.0.to_vec(), data: b"forged replacement bytes!".to_vec() })),
        frame(agent_frame::Frame::Flush(Default::default())),
    ];
    let answers = raw(&c, &m, "t1", &a1, frames).unwrap();
    assert!(answers.iter().any(|a| a.starts_with("Flushed")), "{answers:?}");
    let mut codec_free = Vec::new();
    std::io::Read::read_to_end(&mut repo.storage().open_read(&id.key()).unwrap(), &mut codec_free).unwrap();
    assert_eq!(codec_free, b"the original stored bytes");
    assert!(points(&repo_dir).is_empty());
}
