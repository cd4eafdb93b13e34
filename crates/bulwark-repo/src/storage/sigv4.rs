//! AWS Signature Version 4, as S3 requests need it: the canonical request, the string to sign
//! and the signing key chain, over `sha2` (HMAC-SHA256 is a dozen lines; a crate for it would
//! be one more thing to compile on a two-core builder).

use sha2::{Digest, Sha256};

/// The SHA-256 of an empty payload, in hex: what a request without a body signs.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&sha256(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(data);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Percent-encodes everything but RFC 3986's unreserved characters (and `/` when `keep_slash`),
/// as SigV4 wants for paths (`keep_slash`) and for query names and values.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The query string of a request, encoded and in the order SigV4 signs it (which is also a valid
/// order to send it in).
pub fn canonical_query(query: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, String)> =
        query.iter().map(|(k, v)| (uri_encode(k, false), uri_encode(v, false))).collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// What a signature covers.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as sent: already percent-encoded, starting with `/`.
    pub path: &'a str,
    pub query: &'a [(String, String)],
    /// Every header to sign, `host`, `x-amz-date` and `x-amz-content-sha256` among them; names
    /// in lower case.
    pub headers: &'a [(String, String)],
    /// Hex SHA-256 of the body (the value of `x-amz-content-sha256`).
    pub payload_hash: &'a str,
}

/// The `Authorization` header value for `req`, made at `amz_date` (`YYYYMMDDTHHMMSSZ`, the
/// value of its `x-amz-date` header).
pub fn authorization(
    access_key: &str,
    secret_key: &str,
    region: &str,
    service: &str,
    amz_date: &str,
    req: &Request<'_>,
) -> String {
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect();
    headers.sort();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        req.path,
        canonical_query(req.query),
        canonical_headers,
        signed,
        req.payload_hash
    );
    let day = &amz_date[..8];
    let scope = format!("{day}/{region}/{service}/aws4_request");
    let to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex::encode(sha256(canonical.as_bytes())));
    let mut key = hmac_sha256(format!("AWS4{secret_key}").as_bytes(), day.as_bytes());
    for part in [region, service, "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac_sha256(&key, to_sign.as_bytes()));
    format!("AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test cases 2 and 6 (a key longer than the block).
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    fn example(method: &str, path: &str, query: &[(&str, &str)], extra: &[(&str, &str)], payload: &str) -> String {
        let query: Vec<(String, String)> = query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut headers = vec![
            ("host".to_string(), "examplebucket.s3.amazonaws.com".to_string()),
            ("x-amz-content-sha256".to_string(), payload.to_string()),
            ("x-amz-date".to_string(), "20130524T000000Z".to_string()),
        ];
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        authorization(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "us-east-1",
            "s3",
            "20130524T000000Z",
            &Request { method, path, query: &query, headers: &headers, payload_hash: payload },
        )
    }

    #[test]
    fn signs_the_documented_examples() {
        // The examples of AWS's "Signature Calculations for the Authorization Header".
        let get = example("GET", "/test.txt", &[], &[("range", "bytes=0-9")], EMPTY_SHA256);
        assert!(get.ends_with("Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"), "{get}");
        assert!(get.contains("SignedHeaders=host;range;x-amz-content-sha256;x-amz-date"), "{get}");
        let list = example("GET", "/", &[("max-keys", "2"), ("prefix", "J")], &[], EMPTY_SHA256);
        assert!(list.ends_with("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"), "{list}");
        let lifecycle = example("GET", "/", &[("lifecycle", "")], &[], EMPTY_SHA256);
        assert!(
            lifecycle.ends_with("Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
            "{lifecycle}"
        );
        let body = b"Welcome to Amazon S3.";
        let put = example(
            "PUT",
            &format!("/{}", uri_encode("test$file.text", true)),
            &[],
            &[("date", "Fri, 24 May 2013 00:00:00 GMT"), ("x-amz-storage-class", "REDUCED_REDUNDANCY")],
            &hex::encode(sha256(body)),
        );
        assert!(put.ends_with("Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"), "{put}");
    }

    #[test]
    fn encodes_as_sigv4_wants() {
        assert_eq!(uri_encode("a b/c~d+e", true), "a%20b/c~d%2Be");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        assert_eq!(canonical_query(&[("uploads".into(), "".into()), ("a".into(), "x y".into())]), "a=x%20y&uploads=");
    }
}
