//! `bulwark scale-out …`: scale-out repositories through the server.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::admin::{connect, print, Admin};

#[derive(Subcommand)]
pub enum ScaleOutCmd {
    /// Scale-out repositories: their placement policy and extents.
    List,
    /// One scale-out repository, extent by extent: maintenance, points, stored bytes, backup
    /// chains and tasks queued or running.
    Show {
        /// The scale-out repository.
        name: String,
    },
    /// Make a scale-out repository of existing repositories (its extents).
    ///
    /// Jobs then name it as their repository. Each computer's backup chain lives on one extent
    /// (an incremental needs its parent's data beside it); a new chain goes where the policy
    /// says, and each extent keeps its own task maximum. The extents must not be written by any
    /// job directly.
    Create {
        /// The name jobs use for it (shared with repositories: no repository may have it).
        name: String,
        /// A repository to make an extent (repeat for each).
        #[arg(long = "extent", value_name = "REPOSITORY", required = true)]
        extents: Vec<String>,
        /// Where new chains go: `locality` (the extent holding the least data) or `performance`
        /// (the extent with the most free task slots when the task starts).
        #[arg(long, default_value = "locality", value_parser = ["locality", "performance"])]
        policy: String,
    },
    /// Change the policy, add extents, or remove extents that hold no chain.
    Update {
        /// The scale-out repository.
        name: String,
        /// Where new chains go from now on.
        #[arg(long, value_parser = ["locality", "performance"])]
        policy: Option<String>,
        /// A repository to add as an extent (repeatable).
        #[arg(long = "add-extent", value_name = "REPOSITORY")]
        add: Vec<String>,
        /// An extent to take out (repeatable); it must hold no chain: evacuate it first.
        #[arg(long = "remove-extent", value_name = "REPOSITORY")]
        remove: Vec<String>,
    },
    /// Forget the scale-out repository; its extents stay as repositories of their own.
    Delete {
        /// The scale-out repository.
        name: String,
    },
    /// Put an extent in maintenance (`on`: it takes no backups; the tasks of chains on it fail
    /// saying so) or end it (`off`).
    Maintenance {
        /// The scale-out repository.
        name: String,
        /// The extent (a repository's name).
        extent: String,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Move every backup chain off an extent in maintenance into the other extents of its
    /// transport node.
    ///
    /// Each chain is copied point by point, oldest first, keeping point ids and times (so its
    /// next backup is an incremental where it went), then forgotten on the extent and moved in
    /// the catalog. Safe to run again after an interruption. Exits 1 if anything stayed behind.
    Evacuate {
        /// The scale-out repository.
        name: String,
        /// The extent to empty.
        extent: String,
    },
}

pub fn scale_out(a: Admin<ScaleOutCmd>) -> Result<ExitCode> {
    let (api, o) = (connect(&a.opts.conn)?, &a.opts);
    let columns = ["name", "policy", "extents"];
    let v = match a.cmd {
        ScaleOutCmd::List => {
            let v = api.call("GET", "/scale-out", None)?;
            if o.json {
                v
            } else {
                let rows: Vec<Value> = v.as_array().into_iter().flatten().map(summary).collect();
                print(o, &Value::Array(rows), &columns);
                return Ok(ExitCode::SUCCESS);
            }
        }
        ScaleOutCmd::Show { name } => {
            let v = api.call("GET", &format!("/scale-out/{name}"), None)?;
            return Ok(show(o, &v));
        }
        ScaleOutCmd::Create { name, extents, policy } => {
            let v =
                api.call("POST", "/scale-out", Some(json!({"name": name, "extents": extents, "policy": policy})))?;
            return Ok(show(o, &v));
        }
        ScaleOutCmd::Update { name, policy, add, remove } => {
            if policy.is_none() && add.is_empty() && remove.is_empty() {
                bail!("nothing to change: give --policy, --add-extent or --remove-extent");
            }
            let body = json!({"policy": policy, "add_extents": add, "remove_extents": remove});
            let v = api.call("PATCH", &format!("/scale-out/{name}"), Some(body))?;
            return Ok(show(o, &v));
        }
        ScaleOutCmd::Delete { name } => api.call("DELETE", &format!("/scale-out/{name}"), None)?,
        ScaleOutCmd::Maintenance { name, extent, state } => {
            let body = json!({"on": state == "on"});
            let v = api.call("POST", &format!("/scale-out/{name}/extents/{extent}/maintenance"), Some(body))?;
            return Ok(show(o, &v));
        }
        ScaleOutCmd::Evacuate { name, extent } => {
            let v = api.call("POST", &format!("/scale-out/{name}/extents/{extent}/evacuate"), None)?;
            let clean = v["errors"].as_array().is_none_or(|e| e.is_empty());
            if o.json {
                print(o, &v, &[]);
            } else {
                print(o, &v["chains"], &["name", "computer", "to", "points", "stored_bytes"]);
                for e in v["errors"].as_array().into_iter().flatten() {
                    eprintln!("error: {}", e.as_str().unwrap_or_default());
                }
                println!(
                    "{} point(s) moved off {extent}; {}",
                    v["moved_points"],
                    if v["empty"] == true {
                        format!("it is empty: `bulwark scale-out update {name} --remove-extent {extent}` takes it out")
                    } else {
                        "it still holds points (see the errors above)".into()
                    }
                );
            }
            return Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
    };
    print(o, &v, &columns);
    Ok(ExitCode::SUCCESS)
}

/// A listing row: the extents in words.
fn summary(v: &Value) -> Value {
    let extents: Vec<String> = v["extents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let name = e["repository"].as_str().unwrap_or_default();
            if e["maintenance"] == true {
                format!("{name} (maintenance)")
            } else {
                name.to_string()
            }
        })
        .collect();
    json!({"name": v["name"], "policy": v["policy"], "extents": extents})
}

fn show(o: &crate::admin::Opts, v: &Value) -> ExitCode {
    if o.json {
        print(o, v, &[]);
    } else {
        println!("{} (policy {})", v["name"].as_str().unwrap_or_default(), v["policy"].as_str().unwrap_or_default());
        print(o, &v["extents"], &["repository", "maintenance", "points", "stored_bytes", "chains", "open_tasks"]);
    }
    ExitCode::SUCCESS
}
