//! A change to a job: only the settings named, merged into the stored job (`PATCH
//! /api/v1/jobs/{name}`). Replacing the whole job (PUT) silently drops every setting the caller
//! did not repeat; a change names what it changes and keeps the rest.
//!
//! The change is a JSON object of the job's own fields. A field given replaces the job's; `null`
//! puts it back to its default (no schedule, no window, no retention, no excludes…); `retention`
//! and `retries` merge field by field, so `{"retention": {"keep_daily": 7}}` keeps `keep_last`.
//! Unknown fields are refused, as everywhere in the API, and so is `name`: a job's name is the
//! key of its restore point chains. The merged job is then checked like a new one.

use serde_json::{Map, Value};

use crate::model::Job;

/// Settings that are groups of settings: a change merges into them instead of replacing them.
const MERGED: [&str; 2] = ["retention", "retries"];

/// A change to a job as the API describes it: any of a job's settings but its name, each
/// replacing the stored one; `null` puts one back to its default; `retention` and `retries`
/// merge field by field.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct JobChange(pub Map<String, Value>);

/// A validated change to a job, not yet applied.
#[derive(Debug, Clone, PartialEq)]
pub struct JobUpdate(Map<String, Value>);

impl JobUpdate {
    /// Takes a change as the API receives it; refuses what is not one (see the module's doc).
    pub fn parse(v: Value, current: &Job) -> Result<JobUpdate, String> {
        let Value::Object(fields) = v else {
            return Err("a job change is a JSON object of the fields to change".into());
        };
        if fields.is_empty() {
            return Err("nothing to change: give the fields to change".into());
        }
        let known = serde_json::to_value(current).map_err(|e| e.to_string())?;
        for k in fields.keys() {
            if k == "name" {
                return Err(format!(
                    "a job's name cannot change (it names the job's restore point chains); create job {:?} anew",
                    fields[k].as_str().unwrap_or_default()
                ));
            }
            if known.get(k).is_none() {
                let mut names: Vec<&String> = known.as_object().into_iter().flat_map(|o| o.keys()).collect();
                names.retain(|n| *n != "name");
                return Err(format!(
                    "unknown field `{k}`: a job has {}",
                    names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        Ok(JobUpdate(fields))
    }

    /// The job with this change: still to be checked ([`Job::validate`] and the objects it
    /// names) before it is stored.
    pub fn apply(&self, current: &Job) -> Result<Job, String> {
        let Value::Object(mut job) = serde_json::to_value(current).map_err(|e| e.to_string())? else {
            return Err("a job serializes to an object".into());
        };
        for (k, v) in &self.0 {
            match (v, job.get_mut(k)) {
                // Back to the default: absent, the field takes its default when read back.
                (Value::Null, _) => {
                    job.remove(k);
                }
                (Value::Object(change), Some(Value::Object(group))) if MERGED.contains(&k.as_str()) => {
                    for (field, value) in change {
                        if value.is_null() {
                            group.remove(field);
                        } else {
                            group.insert(field.clone(), value.clone());
                        }
                    }
                }
                _ => {
                    job.insert(k.clone(), v.clone());
                }
            }
        }
        serde_json::from_value(Value::Object(job)).map_err(|e| match e.to_string() {
            m if m.starts_with("missing field") => format!("{m}: it cannot be cleared, only changed"),
            m => m,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::schedule::{Schedule, Window};

    fn job() -> Job {
        serde_json::from_value(json!({
            "name": "nightly", "computers": ["pc-1"], "repository": "main", "sources": ["/dev/vdb"],
            "schedule": {"kind": "daily", "at": "22:00", "weekdays": ["mon", "tue"]},
            "window": {"start": "22:00", "end": "06:00"},
            "retention": {"keep_last": 14}, "retries": {"tries": 5, "delay_minutes": 3},
            "exclude": ["/var/cache"],
        }))
        .unwrap()
    }

    fn update(change: Value) -> Result<Job, String> {
        let j = job();
        JobUpdate::parse(change, &j)?.apply(&j)
    }

    #[test]
    fn changing_the_retention_keeps_the_schedule_and_window() {
        let j = update(json!({"retention": {"keep_daily": 7}})).unwrap();
        assert_eq!(j.retention.keep_last, Some(14));
        assert_eq!(j.retention.keep_daily, Some(7));
        assert_eq!(j.schedule, job().schedule);
        assert_eq!(j.window, job().window);
        assert_eq!(j.exclude, vec!["/var/cache".to_string()]);
        let j = update(json!({"retries": {"delay_minutes": 1}})).unwrap();
        assert_eq!((j.retries.tries, j.retries.delay_minutes), (5, 1));
    }

    #[test]
    fn null_clears_a_setting_to_its_default() {
        let j = update(json!({"schedule": null, "window": null, "exclude": null, "retention": null})).unwrap();
        assert_eq!((j.schedule, j.window), (None, None));
        assert!(j.exclude.is_empty());
        assert_eq!(j.retention, Default::default());
        let j = update(json!({"retention": {"keep_last": null}})).unwrap();
        assert_eq!(j.retention.keep_last, None);
        let e = update(json!({"repository": null})).unwrap_err();
        assert!(e.contains("repository") && e.contains("cannot be cleared"), "{e}");
    }

    #[test]
    fn a_new_schedule_or_window_replaces_the_old_one_whole() {
        let j = update(json!({"schedule": {"kind": "periodic", "every_minutes": 60}, "window": {"start": "01:00", "end": "05:00"}}))
            .unwrap();
        assert_eq!(j.schedule, Some(Schedule::Periodic { every_minutes: 60 }));
        assert_eq!(j.window, Some(Window { start: "01:00".into(), end: "05:00".into() }));
        assert_eq!(j.retention.keep_last, Some(14));
    }

    #[test]
    fn unknown_fields_the_name_and_wrong_types_are_refused() {
        let e = update(json!({"bogus": 1})).unwrap_err();
        assert!(e.contains("unknown field `bogus`") && e.contains("schedule"), "{e}");
        let e = update(json!({"name": "other"})).unwrap_err();
        assert!(e.contains("name cannot change"), "{e}");
        assert!(update(json!({"retention": {"keep_yearly": 1}})).unwrap_err().contains("keep_yearly"));
        assert!(update(json!({"streams": "many"})).unwrap_err().contains("invalid type"));
        assert!(update(json!({})).unwrap_err().contains("nothing to change"));
        assert!(update(json!([1])).unwrap_err().contains("JSON object"));
    }
}
