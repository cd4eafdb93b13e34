//! `--exclude` patterns for file-level backup.
//!
//! `*` matches within one path component, `**` across components, `?` one byte. A pattern with a
//! `/` is matched against the whole path from the backup's root (a leading `/` is that root);
//! one without is matched against every entry's name at any depth. An excluded directory is not
//! descended into.

#[derive(Debug, Clone)]
pub struct Exclude {
    patterns: Vec<(bool, Vec<u8>)>,
}

impl Exclude {
    pub fn new(patterns: &[String]) -> Self {
        Exclude {
            patterns: patterns
                .iter()
                .map(|p| {
                    let anchored = p.contains('/');
                    (anchored, p.trim_start_matches('/').trim_end_matches('/').as_bytes().to_vec())
                })
                .collect(),
        }
    }

    /// Whether the entry at `path` (relative, `/`-separated) is excluded.
    pub fn matches(&self, path: &[u8]) -> bool {
        let name = path.rsplit(|&c| c == b'/').next().unwrap_or(path);
        self.patterns.iter().any(|(anchored, p)| if *anchored { glob(p, path) } else { glob(p, name) })
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    if p.starts_with(b"**") {
        let rest = p[2..].strip_prefix(b"/").unwrap_or(&p[2..]);
        return (0..=s.len()).any(|i| (i == 0 || s[i - 1] == b'/') && glob(rest, &s[i..])) || glob(rest, s);
    }
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            let rest = &p[1..];
            for i in 0..=s.len() {
                if glob(rest, &s[i..]) {
                    return true;
                }
                if i < s.len() && s[i] == b'/' {
                    break;
                }
            }
            false
        }
        (Some(b'?'), Some(&c)) => c != b'/' && glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) => a == b && glob(&p[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_paths_and_double_stars() {
        let e = Exclude::new(&["*.tmp".into(), "/var/cache".into(), "home/**/.cache".into()]);
        assert!(e.matches(b"a/b/x.tmp"));
        assert!(!e.matches(b"a/b/x.tmpl"));
        assert!(e.matches(b"var/cache"));
        assert!(!e.matches(b"x/var/cache"));
        assert!(e.matches(b"home/ann/.cache"));
        assert!(e.matches(b"home/ann/deep/er/.cache"));
        assert!(!e.matches(b"home/ann/.cachex"));
    }
}
