#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bulwark() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bulwark"));
    c.env_remove("BULWARK_PASSWORD");
    c
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Run {
    let Output { status, stdout, stderr } = cmd.output().expect("bulwark runs");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into(),
        stderr: String::from_utf8_lossy(&stderr).into(),
    }
}

/// Runs and insists on success, returning stdout.
pub fn ok(cmd: &mut Command) -> String {
    let r = run(cmd);
    assert_eq!(r.code, 0, "{cmd:?} failed:\n{}\n{}", r.stdout, r.stderr);
    r.stdout
}

pub fn json(cmd: &mut Command) -> serde_json::Value {
    serde_json::from_str(&ok(cmd.arg("--json"))).expect("valid JSON")
}

pub fn init_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    ok(bulwark().args(["repo", "init"]).arg(&repo));
    repo
}

pub fn backup(repo: &Path, source: &Path, name: &str) -> serde_json::Value {
    json(bulwark().arg("backup").arg(source).arg("--repo").arg(repo).args(["--name", name]))
}

pub fn restore(repo: &Path, point: &str, to: &Path) -> Run {
    run(bulwark().args(["restore", point]).arg("--repo").arg(repo).arg("--to").arg(to))
}

pub fn verify(repo: &Path) -> Run {
    run(bulwark().arg("verify").arg("--repo").arg(repo).arg("--json"))
}

pub fn no_staged_files(repo: &Path) -> bool {
    fn walk(p: &Path) -> bool {
        std::fs::read_dir(p).unwrap().map(|e| e.unwrap()).all(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                !name.starts_with(".tmp-")
            }
        })
    }
    walk(repo)
}
