//! Minimal streaming WARC reader (WARC/1.0 and 1.1, plain or multi-member gzip) yielding HTML payloads.

use std::io::{BufRead, Read};

/// One WARC record of interest: a `response` (HTTP) or `resource` record with an HTML payload.
#[derive(Debug)]
pub struct WarcDoc {
    /// `WARC-Target-URI`, if present.
    pub url: Option<String>,
    /// The decoded HTML, or why it could not be read.
    pub html: Result<String, String>,
}

/// Streams records from `r`, calling `f` for every HTML response; non-HTML and non-response records are
/// counted in the returned `(skipped, malformed)` pair. A truncated record yields one error and ends the file.
pub fn read_warc(mut r: impl BufRead, mut f: impl FnMut(WarcDoc)) -> (u64, u64) {
    let mut skipped = 0;
    let mut malformed = 0;
    let mut line = Vec::new();
    loop {
        // Version line (skip blank separators).
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                malformed += 1;
                f(WarcDoc {
                    url: None,
                    html: Err(format!("truncated WARC: {e}")),
                });
                break;
            }
        }
        let l = String::from_utf8_lossy(&line);
        let l = l.trim();
        if l.is_empty() {
            continue;
        }
        if !l.starts_with("WARC/") {
            // Resynchronise: scan for the next version line.
            malformed += 1;
            f(WarcDoc {
                url: None,
                html: Err("expected a WARC version line; skipping to the next record".into()),
            });
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return (skipped, malformed),
                    Ok(_) if line.starts_with(b"WARC/1.") => break,
                    Ok(_) => {}
                }
            }
        }
        // Headers.
        let mut url = None;
        let mut wtype = String::new();
        let mut len: Option<usize> = None;
        let mut ctype = String::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => {
                    malformed += 1;
                    f(WarcDoc {
                        url,
                        html: Err("truncated WARC header".into()),
                    });
                    return (skipped, malformed);
                }
                Ok(_) => {}
            }
            let h = String::from_utf8_lossy(&line);
            let h = h.trim();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let v = v.trim();
                match k.trim().to_ascii_lowercase().as_str() {
                    "warc-target-uri" => url = Some(v.trim_matches(['<', '>']).to_string()),
                    "warc-type" => wtype = v.to_ascii_lowercase(),
                    "content-length" => len = v.parse().ok(),
                    "content-type" => ctype = v.to_ascii_lowercase(),
                    _ => {}
                }
            }
        }
        let Some(len) = len else {
            malformed += 1;
            f(WarcDoc {
                url,
                html: Err("WARC record without a valid Content-Length".into()),
            });
            return (skipped, malformed);
        };
        let mut body = Vec::with_capacity(len.min(64 << 20));
        match (&mut r).take(len as u64).read_to_end(&mut body) {
            Ok(n) if n == len => {}
            Ok(n) => {
                malformed += 1;
                f(WarcDoc {
                    url,
                    html: Err(format!("truncated WARC record: {n} of {len} bytes")),
                });
                return (skipped, malformed);
            }
            Err(e) => {
                malformed += 1;
                f(WarcDoc {
                    url,
                    html: Err(format!("truncated WARC record: {e}")),
                });
                return (skipped, malformed);
            }
        }
        match wtype.as_str() {
            "response" if ctype.contains("application/http") => match http_html(&body) {
                Some(Ok(html)) => f(WarcDoc {
                    url,
                    html: Ok(html),
                }),
                Some(Err(e)) => {
                    malformed += 1;
                    f(WarcDoc { url, html: Err(e) })
                }
                None => skipped += 1,
            },
            "resource" | "response" if ctype.contains("html") => match decode(&body, &ctype) {
                Ok(h) => f(WarcDoc { url, html: Ok(h) }),
                Err(e) => {
                    malformed += 1;
                    f(WarcDoc { url, html: Err(e) })
                }
            },
            _ => skipped += 1,
        }
    }
    (skipped, malformed)
}

/// Splits an HTTP response; `None` when it is not HTML.
fn http_html(body: &[u8]) -> Option<Result<String, String>> {
    let (head, payload) = match find(body, b"\r\n\r\n") {
        Some(i) => (&body[..i], &body[i + 4..]),
        None => match find(body, b"\n\n") {
            Some(i) => (&body[..i], &body[i + 2..]),
            None => return Some(Err("HTTP response without header/body separator".into())),
        },
    };
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    let mut ctype = String::new();
    let mut chunked = false;
    let mut encoded = None;
    for l in head.lines().skip(1) {
        if let Some((k, v)) = l.split_once(':') {
            match k.trim() {
                "content-type" => ctype = v.trim().to_string(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "content-encoding" if !v.trim().is_empty() && v.trim() != "identity" => {
                    encoded = Some(v.trim().to_string())
                }
                _ => {}
            }
        }
    }
    if !ctype.contains("html") {
        return None;
    }
    if let Some(enc) = encoded {
        return Some(Err(format!("unsupported Content-Encoding {enc}")));
    }
    let payload = if chunked {
        match dechunk(payload) {
            Some(p) => p,
            None => return Some(Err("malformed chunked transfer encoding".into())),
        }
    } else {
        payload.to_vec()
    };
    Some(decode(&payload, &ctype))
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn dechunk(mut p: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(p.len());
    loop {
        let nl = find(p, b"\n")?;
        let size_s = String::from_utf8_lossy(&p[..nl]);
        let size = usize::from_str_radix(size_s.trim().split(';').next()?.trim(), 16).ok()?;
        p = &p[nl + 1..];
        if size == 0 {
            return Some(out);
        }
        if p.len() < size {
            return None;
        }
        out.extend_from_slice(&p[..size]);
        p = &p[size..];
        if p.starts_with(b"\r\n") {
            p = &p[2..];
        } else if p.starts_with(b"\n") {
            p = &p[1..];
        }
    }
}

/// UTF-8, or a single-byte Latin charset when declared; anything else is an error.
pub(crate) fn decode(b: &[u8], ctype: &str) -> Result<String, String> {
    match std::str::from_utf8(b) {
        Ok(s) => Ok(s.to_string()),
        Err(e) => {
            let head = String::from_utf8_lossy(&b[..b.len().min(2048)]).to_ascii_lowercase();
            let latin = [
                "iso-8859-1",
                "latin-1",
                "latin1",
                "windows-1252",
                "cp1252",
                "us-ascii",
            ];
            if latin.iter().any(|l| {
                ctype.contains(l)
                    || head.contains(&format!("charset={l}"))
                    || head.contains(&format!("charset=\"{l}"))
            }) {
                Ok(b.iter().map(|&c| c as char).collect())
            } else {
                Err(format!(
                    "invalid UTF-8 ({e}) and no supported charset declared"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_and_latin1() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(dechunk(b"5\r\nab").is_none());
        assert_eq!(
            decode(b"caf\xe9", "text/html; charset=iso-8859-1").unwrap(),
            "café"
        );
        assert!(decode(b"caf\xe9", "text/html").is_err());
    }
}
