//! Paths asked for, and names read from an image, before any of them is used.

/// The components of `p`, a path inside the filesystem (`/etc/hosts`; a missing leading `/`,
/// repeated slashes and `.` are accepted). `..` is refused rather than resolved: a path names
/// one entry, and climbing is what an escape looks like.
pub fn parse(p: &str) -> Result<Vec<Vec<u8>>, String> {
    if p.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    let mut out = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("has a `..` component: give the path from the filesystem's root".into()),
            c if c.len() > 255 => return Err("has a component longer than the 255 bytes a name may have".into()),
            c => out.push(c.as_bytes().to_vec()),
        }
    }
    Ok(out)
}

/// The absolute path of `components`.
pub fn join(components: &[Vec<u8>]) -> Vec<u8> {
    if components.is_empty() {
        return b"/".to_vec();
    }
    let mut out = Vec::new();
    for c in components {
        out.push(b'/');
        out.extend_from_slice(c);
    }
    out
}

/// Why a name read from a directory cannot be used as one path component, if it cannot.
pub fn bad_name(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("an empty name")
    } else if name == b"." || name == b".." {
        Some("a name `.` or `..` in a directory's entries")
    } else if name.contains(&b'/') {
        Some("a name containing `/`")
    } else if name.contains(&0) {
        Some("a name containing a NUL byte")
    } else if name.len() > 255 {
        Some("a name longer than 255 bytes")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_plain_and_absolute() {
        assert_eq!(parse("/etc//hosts/.").unwrap(), vec![b"etc".to_vec(), b"hosts".to_vec()]);
        assert_eq!(parse("etc").unwrap(), vec![b"etc".to_vec()]);
        assert!(parse("/").unwrap().is_empty());
        assert!(parse("/etc/../root").unwrap_err().contains(".."));
        assert!(parse("/a\0b").unwrap_err().contains("NUL"));
        assert!(parse(&"x".repeat(256)).is_err());
        assert_eq!(join(&parse("/a/b").unwrap()), b"/a/b");
        assert_eq!(join(&[]), b"/");
    }

    #[test]
    fn names_that_would_climb_or_nest_are_refused() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0", &[b'x'; 256]] {
            assert!(bad_name(bad).is_some(), "{bad:?}");
        }
        assert!(bad_name("é lan\nd".as_bytes()).is_none());
    }
}
