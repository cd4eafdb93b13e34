//! Application-aware processing: before a snapshot the agent makes the applications on the
//! computer consistent, and releases them right after it (step 6 of the job flow).
//!
//! Each application is reached through one database session that lives from its preparation to
//! its release: a PostgreSQL backup or a MySQL read lock belongs to the session that started it,
//! so two separate scripts cannot do this (see the research notes, section 5).
//!
//! The order around each snapshot try (see [`crate::snapshot::create_with_retries`]):
//! application preparation → pre-freeze script → snapshot → post-thaw script → application
//! release. What to do when an application cannot be prepared is the job's [`AppPolicy`].

mod postgres;

pub use bulwark_proto::apps::{AppKind, AppPolicy, AppSpec};
pub use bulwark_repo::ApplicationRecord;

/// The password of `spec`: its `password-secret` from `env` (the task's `BULWARK_SECRET_<NAME>`
/// variables), or the first line of its `password-file`, or none.
pub(crate) fn password(spec: &AppSpec, env: &[(String, String)]) -> Result<Option<String>, String> {
    if let Some(name) = &spec.password_secret {
        let var = format!("BULWARK_SECRET_{}", name.to_ascii_uppercase());
        return match env.iter().find(|(k, _)| *k == var) {
            Some((_, v)) => Ok(Some(v.clone())),
            None => Err(format!(
                "{}: the password secret {name} was not handed to this task (name it in the job's secrets)",
                spec.kind.as_str()
            )),
        };
    }
    let Some(f) = &spec.password_file else { return Ok(None) };
    let text = std::fs::read_to_string(f)
        .map_err(|e| format!("cannot read the password file {} of {}: {e}", f.display(), spec.kind.as_str()))?;
    Ok(Some(text.lines().next().unwrap_or("").to_string()))
}

/// An application held consistent for the snapshot; [`Prepared::release`] lets it go.
pub trait Prepared: Send {
    /// Ends what preparation began (in the same session) and says what was done.
    fn release(self: Box<Self>, log: &mut dyn FnMut(String)) -> Result<ApplicationRecord, String>;
}

/// Prepares `spec`'s application for a snapshot of a volume: connects (with the password
/// `env` or a file gives, if any), and does what makes its files on disk consistent
/// (PostgreSQL: a checkpoint).
pub fn prepare(
    spec: &AppSpec,
    env: &[(String, String)],
    log: &mut dyn FnMut(String),
) -> Result<Box<dyn Prepared>, String> {
    let password = password(spec, env)?;
    match spec.kind {
        AppKind::Postgres => postgres::prepare(spec, password, log),
    }
}
