//! The operator's scripts around a backup (pre-job, pre-freeze, post-thaw, post-job), run on
//! the computer with a time limit.
//!
//! A script runs as `/bin/sh -c COMMAND` in a process group of its own, so that a script that
//! hangs is stopped whole (its children too) when its time is up: a pre-freeze script must never
//! hold a frozen application past the freeze limit, and a post-job script must never hold the
//! task forever. Its output (stdout and stderr, line by line) goes to the task's log.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Time a pre-job or post-job script may take by default (Veeam's default too).
pub const JOB_SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);

/// One script: the command line and how long it may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub command: String,
    pub timeout: Duration,
}

/// How a script ended, for the task's log and the point's notes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptRun {
    pub elapsed: Duration,
    /// Lines it printed (stdout and stderr as they came), at most [`KEPT_LINES`].
    pub output: Vec<String>,
}

/// Output lines kept per script: enough to say why it failed, bounded whatever it prints.
pub const KEPT_LINES: usize = 200;

/// Runs `script` (`what` names it in messages: "pre-freeze script") with `env` added to the
/// agent's environment. Fails when it cannot start, exits non-zero or is killed by a signal,
/// or runs past its timeout (then it is killed with its whole process group).
pub fn run(
    what: &str,
    script: &Script,
    env: &[(String, String)],
    log: &mut dyn FnMut(String),
) -> Result<ScriptRun, String> {
    let started = Instant::now();
    log(format!("{what}: {}", script.command));
    let mut child = Command::new("/bin/sh")
        .args(["-c", &script.command])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("{what} could not start: {e}"))?;
    let (tx, rx) = mpsc::channel::<String>();
    let readers: Vec<_> = [
        child.stdout.take().map(|o| Box::new(o) as Box<dyn Read + Send>),
        child.stderr.take().map(|e| Box::new(e) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|out| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        })
    })
    .collect();
    drop(tx);
    let mut output = Vec::new();
    let mut keep = |line: String, log: &mut dyn FnMut(String)| {
        log(format!("{what}: {line}"));
        if output.len() < KEPT_LINES {
            output.push(line);
        }
    };
    let deadline = started + script.timeout;
    let status = loop {
        while let Ok(line) = rx.try_recv() {
            keep(line, log);
        }
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => return Err(format!("{what}: cannot wait for it: {e}")),
        }
        if Instant::now() >= deadline {
            kill_group(child.id());
            let _ = child.wait();
            break None;
        }
        let _ = rx.recv_timeout(Duration::from_millis(20)).map(|line| keep(line, log));
    };
    // Children left in the group keep the pipes open: stop them too, so the readers end.
    kill_group(child.id());
    for r in readers {
        let _ = r.join();
    }
    for line in rx.try_iter() {
        keep(line, log);
    }
    let elapsed = started.elapsed();
    match status {
        None => {
            Err(format!("{what} ran past its timeout of {} and was killed ({})", human(script.timeout), script.command))
        }
        Some(s) if s.success() => {
            log(format!("{what}: done in {}", human(elapsed)));
            Ok(ScriptRun { elapsed, output })
        }
        Some(s) => {
            let last = output.last().map(|l| format!(": {l}")).unwrap_or_default();
            Err(format!("{what} failed ({s}){last}"))
        }
    }
}

/// Kills every process of the group led by `pid` (the script and whatever it started).
fn kill_group(pid: u32) {
    // SAFETY: kill(2) with a negative pid signals a process group; it takes no pointers and
    // cannot affect this process's memory. The group is the script's own (process_group(0)).
    unsafe {
        libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
    }
}

/// `1.2 s`, `10 min`: durations as the log shows them.
pub fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 120.0 {
        format!("{s:.1} s")
    } else {
        format!("{:.0} min", s / 60.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(command: &str, secs: u64) -> Script {
        Script { command: command.into(), timeout: Duration::from_secs(secs) }
    }

    #[test]
    fn output_and_status_come_back() {
        let mut log = Vec::new();
        let env = [("BULWARK_TASK_ID".to_string(), "t-1".to_string())];
        let ok = run("pre-job script", &script("echo one; echo two >&2; echo $BULWARK_TASK_ID", 10), &env, &mut |l| {
            log.push(l)
        })
        .unwrap();
        assert_eq!(ok.output.len(), 3, "{ok:?}");
        assert!(ok.output.contains(&"t-1".to_string()), "{ok:?}");
        assert!(log.iter().any(|l| l == "pre-job script: two"), "{log:?}");

        let e = run("post-job script", &script("echo the disk is full; exit 3", 10), &[], &mut |_| {}).unwrap_err();
        assert!(e.contains("post-job script failed") && e.contains("exit status: 3"), "{e}");
        assert!(e.contains("the disk is full"), "{e}");
        let e = run("pre-job script", &script("/nonexistent/script", 10), &[], &mut |_| {}).unwrap_err();
        assert!(e.contains("failed"), "{e}");
    }

    /// A script that hangs is killed at its timeout with everything it started, even a child
    /// that holds its output open.
    #[test]
    fn a_hanging_script_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let cmd = format!("sleep 300 & echo $! > {}; echo started; wait", pidfile.display());
        let started = Instant::now();
        let mut log = Vec::new();
        let e =
            run("pre-freeze script", &Script { command: cmd, timeout: Duration::from_millis(500) }, &[], &mut |l| {
                log.push(l)
            })
            .unwrap_err();
        assert!(e.contains("ran past its timeout of 0.5 s and was killed"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
        assert!(log.iter().any(|l| l == "pre-freeze script: started"), "{log:?}");
        let child: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        // The killed child may linger as a zombie of init for an instant: alive means running.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{child}/stat")).ok();
            let running = state.as_deref().is_some_and(|s| !s.contains(") Z "));
            if !running {
                break;
            }
            assert!(Instant::now() < deadline, "the script's child {child} still runs");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
