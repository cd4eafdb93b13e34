//! An integrity digest inside the repository's JSON objects (config, key file, and manifests of
//! unencrypted repositories), so that any change to them is seen, even one that still parses.
//!
//! The object carries a top-level field `"integrity"`: the BLAKE3 digest (unkeyed: damage, not
//! an attacker, is what it is for; encrypted repositories authenticate their manifests with
//! their key) of the object's exact bytes with that field's value set to 64 zeros. Hashing the
//! bytes as stored avoids any question of canonical JSON.

use serde::Serialize;

pub(crate) const FIELD: &str = "integrity";
const ZEROS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What [`check`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Checked {
    /// The digest matches: the object is as written. Carries the object without the field.
    Intact(serde_json::Value),
    /// No digest field: written before repositories carried digests.
    Unsealed(serde_json::Value),
    Damaged(String),
}

/// `value` as pretty JSON with its integrity digest.
pub(crate) fn seal<T: Serialize>(value: &T) -> Vec<u8> {
    let mut v = serde_json::to_value(value).expect("repository objects serialize");
    let obj = v.as_object_mut().expect("repository objects are JSON objects");
    obj.insert(FIELD.into(), ZEROS.into());
    let mut bytes = serde_json::to_vec_pretty(&v).expect("JSON serializes");
    let at = field_at(&bytes, ZEROS).expect("the placeholder was just written");
    let digest = blake3::hash(&bytes).to_hex();
    bytes[at..at + 64].copy_from_slice(digest.as_bytes());
    bytes
}

/// Checks an object [`seal`] wrote (or one from before digests, reported as such).
pub(crate) fn check(raw: &[u8]) -> Checked {
    let mut v: serde_json::Value = match serde_json::from_slice(raw) {
        Ok(v) => v,
        Err(e) => return Checked::Damaged(format!("not valid JSON ({e})")),
    };
    let Some(obj) = v.as_object_mut() else { return Checked::Damaged("not a JSON object".into()) };
    let Some(field) = obj.remove(FIELD) else {
        // A bit flipped in the field's name would pass for an object from before digests.
        if obj.keys().any(|k| near(k, FIELD)) {
            return Checked::Damaged("its integrity field is garbled".into());
        }
        return Checked::Unsealed(v);
    };
    let Some(digest) = field.as_str().filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit())) else {
        return Checked::Damaged("its integrity digest is garbled".into());
    };
    let Some(at) = field_at(raw, digest) else { return Checked::Damaged("its integrity digest is misplaced".into()) };
    let mut zeroed = raw.to_vec();
    zeroed[at..at + 64].copy_from_slice(ZEROS.as_bytes());
    if blake3::hash(&zeroed).to_hex().as_str() != digest {
        return Checked::Damaged("it fails its integrity check (changed since it was written)".into());
    }
    Checked::Intact(v)
}

/// Where the value of the (single) `"integrity": "VALUE"` in `raw` starts.
fn field_at(raw: &[u8], value: &str) -> Option<usize> {
    let needle = format!("\"{FIELD}\": \"{value}\"");
    let mut hits = raw.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle.as_bytes());
    let (first, _) = hits.next()?;
    if hits.next().is_some() {
        return None;
    }
    Some(first + needle.len() - value.len() - 1)
}

/// Same length and at most one byte different.
pub(crate) fn near(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).filter(|(x, y)| x != y).count() <= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_single_bit_flip_is_seen() {
        let obj = serde_json::json!({"name": "vol", "parent": null, "size": 1234, "ratio": 0.25});
        let sealed = seal(&obj);
        assert_eq!(check(&sealed), Checked::Intact(obj));
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut b = sealed.clone();
                b[i] ^= 1 << bit;
                match check(&b) {
                    Checked::Damaged(_) => {}
                    // Whitespace that is still whitespace changes nothing JSON sees, but the
                    // digest covers it too.
                    other => panic!("flip of bit {bit} of byte {i} ({:?}) passed: {other:?}", b[i] as char),
                }
            }
        }
    }

    #[test]
    fn objects_from_before_digests_are_told_apart() {
        let raw = br#"{"name": "vol"}"#;
        assert!(matches!(check(raw), Checked::Unsealed(_)));
        assert!(matches!(check(br#"{"name": "vol", "integritz": "00"}"#), Checked::Damaged(_)));
    }
}
