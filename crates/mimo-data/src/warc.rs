//! Streaming WARC reader (WARC/1.0 and 1.1, plain or multi-member gzip) yielding HTML payloads.
//!
//! Damaged input costs only the damaged records:
//! - an invalid Content-Length (missing, not a number, or one that does not end at a record boundary) is
//!   reported as a malformed record and the reader scans forward to the next line starting `WARC/<digit>`;
//! - a payload over [`WarcLimits::max_record_bytes`] (16 MiB by default, measured after decompression)
//!   is streamed past without being buffered and counted as oversized; if a record header turns up
//!   inside the claimed payload, the length was bogus and reading resumes there;
//! - gzip input is decoded member by member (`stream::GzMembers`): corrupt members are skipped to
//!   the next gzip header, and a member expanding past the record cap at more than
//!   [`WarcLimits::max_gzip_ratio`]× is abandoned as a decompression bomb;
//! - a truncated final record yields one error.

use crate::stream::{GzMembers, Peek};
use crate::DataError;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

/// Caps applied while reading WARC files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarcLimits {
    /// Largest record payload (Content-Length, decompressed) that is read; larger ones are skipped.
    pub max_record_bytes: u64,
    /// Largest header block; a longer one is malformed and skipped.
    pub max_header_bytes: usize,
    /// Gzip members may expand past `max_record_bytes` only below this ratio (decompressed/compressed);
    /// WARC text compresses 3–10×, a run of one byte ~1000×.
    pub max_gzip_ratio: u64,
}

impl Default for WarcLimits {
    fn default() -> Self {
        WarcLimits {
            max_record_bytes: 16 << 20,
            max_header_bytes: 64 << 10,
            max_gzip_ratio: 100,
        }
    }
}

/// Why a record could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarcErrorKind {
    /// The input ends inside a record.
    Truncated,
    /// Missing, invalid or wrong Content-Length.
    BadLength,
    /// Not a WARC header where one should be, or an overlong header.
    BadHeader,
    /// An HTML payload over the record cap.
    Oversized,
    /// An HTTP response that cannot be decoded.
    BadHttp,
    /// Payload neither UTF-8 nor a declared Latin charset.
    InvalidUtf8,
    /// The underlying reader failed.
    Io,
}

impl WarcErrorKind {
    /// Exclusion reason used in stage reports.
    pub fn reason(self) -> &'static str {
        match self {
            WarcErrorKind::Truncated => "malformed:truncated_warc",
            WarcErrorKind::BadLength => "malformed:warc_length",
            WarcErrorKind::BadHeader => "malformed:warc",
            WarcErrorKind::Oversized => "oversized_record",
            WarcErrorKind::BadHttp => "malformed:http",
            WarcErrorKind::InvalidUtf8 => "malformed:invalid_utf8",
            WarcErrorKind::Io => "malformed:read_error",
        }
    }
}

/// A record that could not be turned into HTML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct WarcError {
    /// What went wrong.
    pub kind: WarcErrorKind,
    /// Human-readable detail.
    pub detail: String,
}

/// One WARC record of interest: a `response` (HTTP) or `resource` record with an HTML payload.
#[derive(Debug)]
pub struct WarcDoc {
    /// `WARC-Target-URI`, if present.
    pub url: Option<String>,
    /// The decoded HTML, or why it could not be read.
    pub html: Result<String, WarcError>,
}

/// What a WARC read saw besides the documents it yielded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarcStats {
    /// Well-formed records read.
    pub records: u64,
    /// Records that are not HTML (or not responses/resources), including oversized non-HTML ones.
    pub skipped: u64,
    /// Damaged records (each also yielded as an error document).
    pub malformed: u64,
    /// Records over the payload cap, streamed past.
    pub oversized: u64,
    /// Forward scans to the next record header.
    pub resyncs: u64,
    /// Gzip members that failed to decode.
    pub bad_gzip_members: u64,
    /// Gzip members abandoned as decompression bombs.
    pub gzip_bombs: u64,
}

fn err(url: Option<String>, kind: WarcErrorKind, detail: impl Into<String>) -> WarcDoc {
    WarcDoc {
        url,
        html: Err(WarcError {
            kind,
            detail: detail.into(),
        }),
    }
}

/// Opens a WARC file (gzip or plain, by content) and streams it through [`read_warc`].
pub fn read_warc_file(
    path: &Path,
    limits: &WarcLimits,
    f: impl FnMut(WarcDoc),
) -> Result<WarcStats, DataError> {
    let file = File::open(path).map_err(DataError::io(path))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let head = r.fill_buf().map_err(DataError::io(path))?;
    if !head.starts_with(&[0x1f, 0x8b]) {
        return Ok(read_warc(r, limits, f));
    }
    let mut g = GzMembers::new(r, limits.max_record_bytes, limits.max_gzip_ratio);
    let mut st = read_warc(&mut g, limits, f);
    st.bad_gzip_members = g.stats.bad_members;
    st.gzip_bombs = g.stats.bombs;
    Ok(st)
}

/// Streams records from `r` (already decompressed), calling `f` for every HTML response or resource and
/// for every damaged record (as an error); other records are counted in the returned stats.
pub fn read_warc(r: impl Read, limits: &WarcLimits, mut f: impl FnMut(WarcDoc)) -> WarcStats {
    let mut rd = Reader {
        p: Peek::new(r),
        limits,
        stats: WarcStats::default(),
    };
    loop {
        match rd.record() {
            Ok(Next::Eof) => break,
            Ok(Next::Doc(d)) => f(d),
            Ok(Next::Nothing) => {}
            Err(e) => {
                rd.stats.malformed += 1;
                f(err(
                    None,
                    WarcErrorKind::Io,
                    format!("WARC read error: {e}"),
                ));
                break;
            }
        }
    }
    rd.stats
}

/// Outcome of reading one record.
enum Next {
    Eof,
    Doc(WarcDoc),
    Nothing,
}

/// The WARC fields the reader uses.
#[derive(Default)]
struct Headers {
    url: Option<String>,
    wtype: String,
    ctype: String,
    /// Parsed Content-Length, or the offending text.
    len: Option<Result<u64, String>>,
}

impl Headers {
    fn field(&mut self, line: &[u8]) {
        let h = String::from_utf8_lossy(line);
        let Some((k, v)) = h.split_once(':') else {
            return;
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "warc-target-uri" => self.url = Some(v.trim_matches(['<', '>']).to_string()),
            "warc-type" => self.wtype = v.to_ascii_lowercase(),
            "content-type" => self.ctype = v.to_ascii_lowercase(),
            "content-length" => {
                let parsed = parse_length(v).ok_or_else(|| v.chars().take(40).collect());
                self.len = match (self.len.take(), parsed) {
                    (Some(Ok(a)), Ok(b)) if a != b => Some(Err(format!("{a} and {b}"))),
                    (Some(Err(e)), _) => Some(Err(e)),
                    (_, p) => Some(p),
                };
            }
            _ => {}
        }
    }

    /// True when the record would be yielded as HTML (`http_head` is the start of the payload).
    fn is_html(&self, http_head: &[u8]) -> bool {
        match self.wtype.as_str() {
            "response" if self.ctype.contains("application/http") => {
                http_content_type(http_head).is_some_and(|(ct, _, _)| ct.contains("html"))
            }
            "resource" | "response" => self.ctype.contains("html"),
            _ => false,
        }
    }
}

/// A decimal Content-Length (digits only).
fn parse_length(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// A line that begins a WARC record: `WARC/` and a version digit.
fn is_record_start(b: &[u8]) -> bool {
    b.len() >= 6 && b.starts_with(b"WARC/") && b[5].is_ascii_digit()
}

/// Index of the first record start at a line start after byte 0 of `b`.
fn find_record_start(b: &[u8]) -> Option<usize> {
    b.iter()
        .enumerate()
        .filter(|(_, &c)| c == b'\n')
        .map(|(i, _)| i + 1)
        .find(|&i| is_record_start(&b[i..]))
}

enum LineRead {
    Line(Vec<u8>),
    /// End of input; the partial line.
    Eof,
    TooLong,
}

/// Where a forward scan stopped.
enum Scan {
    /// At a record start (not consumed).
    Found,
    /// After `limit` bytes.
    Limit,
    Eof,
}

struct Reader<'l, R> {
    p: Peek<R>,
    limits: &'l WarcLimits,
    stats: WarcStats,
}

impl<R: Read> Reader<'_, R> {
    fn record(&mut self) -> io::Result<Next> {
        if !self.skip_whitespace(usize::MAX)? {
            return Ok(Next::Eof);
        }
        if !is_record_start(self.p.peek(6)?) {
            let d = "expected a WARC version line; skipping to the next record";
            return self.resync(None, WarcErrorKind::BadHeader, d, false);
        }
        let h = match self.headers()? {
            Ok(h) => h,
            Err(next) => return Ok(next),
        };
        let len = match &h.len {
            Some(Ok(n)) => *n,
            Some(Err(v)) => {
                let d = format!("invalid WARC Content-Length {v:?}; skipping to the next record");
                return self.resync(h.url, WarcErrorKind::BadLength, &d, true);
            }
            None => {
                let d = "WARC record without a Content-Length; skipping to the next record";
                return self.resync(h.url, WarcErrorKind::BadLength, d, true);
            }
        };
        if len > self.limits.max_record_bytes {
            return self.oversized(h, len);
        }
        let mut body = Vec::with_capacity(len as usize);
        (&mut self.p).take(len).read_to_end(&mut body)?;
        if (body.len() as u64) < len && find_record_start(&body).is_none() {
            self.stats.malformed += 1;
            let d = format!("truncated WARC record: {} of {len} bytes", body.len());
            return Ok(Next::Doc(err(h.url, WarcErrorKind::Truncated, d)));
        }
        if (body.len() as u64) < len || !self.at_boundary()? {
            return self.length_mismatch(h.url, len, &body);
        }
        self.stats.records += 1;
        Ok(self.dispatch(h, &body))
    }

    /// Consumes ASCII whitespace (at most `max` bytes); false at the end of input.
    fn skip_whitespace(&mut self, max: usize) -> io::Result<bool> {
        let mut left = max;
        loop {
            let chunk = self.p.fill_buf()?;
            if chunk.is_empty() {
                return Ok(false);
            }
            let len = chunk.len();
            let n = chunk
                .iter()
                .take(left)
                .take_while(|b| b.is_ascii_whitespace())
                .count();
            self.p.consume(n);
            left -= n;
            if n < len || left == 0 {
                return Ok(true);
            }
        }
    }

    /// Reads the header block; `Err(next)` when it is damaged (already reported).
    fn headers(&mut self) -> io::Result<Result<Headers, Next>> {
        let mut h = Headers::default();
        let mut room = self.limits.max_header_bytes;
        let mut first = true;
        loop {
            let line = match read_line(&mut self.p, room)? {
                LineRead::Line(l) => l,
                LineRead::Eof => {
                    self.stats.malformed += 1;
                    let d = err(h.url, WarcErrorKind::Truncated, "truncated WARC header");
                    return Ok(Err(Next::Doc(d)));
                }
                LineRead::TooLong => {
                    let d = format!(
                        "WARC header longer than {} bytes",
                        self.limits.max_header_bytes
                    );
                    return Ok(Err(self.resync(
                        h.url,
                        WarcErrorKind::BadHeader,
                        &d,
                        false,
                    )?));
                }
            };
            room = room.saturating_sub(line.len());
            if !first && is_record_start(&line) {
                // The header was cut short and the next record begins here.
                self.p.unread(&line);
                self.stats.malformed += 1;
                self.stats.resyncs += 1;
                let d = "WARC header cut short by the next record";
                return Ok(Err(Next::Doc(err(h.url, WarcErrorKind::BadHeader, d))));
            }
            first = false;
            if line.iter().all(u8::is_ascii_whitespace) {
                return Ok(Ok(h));
            }
            h.field(&line);
        }
    }

    /// Reports a damaged record and scans to the next record start.
    fn resync(
        &mut self,
        url: Option<String>,
        kind: WarcErrorKind,
        detail: &str,
        line_start: bool,
    ) -> io::Result<Next> {
        self.stats.malformed += 1;
        self.stats.resyncs += 1;
        scan_to_record(&mut self.p, u64::MAX, line_start)?;
        Ok(Next::Doc(err(url, kind, detail)))
    }

    /// True when the record block is followed by blank lines and then the next record or the end.
    fn at_boundary(&mut self) -> io::Result<bool> {
        const MAX_GAP: usize = 1024;
        let mut gap = 0;
        loop {
            let b = self.p.peek(gap + 1)?;
            if b.len() <= gap {
                return Ok(true);
            }
            if gap >= MAX_GAP || !b[gap].is_ascii_whitespace() {
                break;
            }
            gap += 1;
        }
        let b = self.p.peek(gap + 6)?;
        Ok(is_record_start(&b[gap..]))
    }

    /// The Content-Length does not end the record: resume at a record start inside the body, if any.
    fn length_mismatch(&mut self, url: Option<String>, len: u64, body: &[u8]) -> io::Result<Next> {
        self.stats.malformed += 1;
        self.stats.resyncs += 1;
        let start = if is_record_start(body) {
            Some(0)
        } else {
            find_record_start(body)
        };
        // A body ending in the first bytes of a record start ("WAR") is resumed there too.
        let line = body.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
        match start {
            Some(i) => self.p.unread(&body[i..]),
            None if body.len() - line < 6 => {
                self.p.unread(&body[line..]);
                scan_to_record(&mut self.p, u64::MAX, true)?;
            }
            None => {
                scan_to_record(&mut self.p, u64::MAX, false)?;
            }
        }
        let d = format!("WARC Content-Length {len} does not end at a record boundary");
        Ok(Next::Doc(err(url, WarcErrorKind::BadLength, d)))
    }

    /// Streams past a payload over the cap; reports it when it is HTML.
    fn oversized(&mut self, h: Headers, len: u64) -> io::Result<Next> {
        let head = self.p.peek(len.min(8 << 10) as usize)?;
        let html = h.is_html(head);
        match scan_to_record(&mut self.p, len, true)? {
            Scan::Limit if self.at_boundary()? => {}
            Scan::Limit => {
                return self.resync(
                    h.url,
                    WarcErrorKind::BadLength,
                    "oversized WARC record does not end at a record boundary",
                    false,
                )
            }
            Scan::Found => {
                self.stats.malformed += 1;
                self.stats.resyncs += 1;
                let d = format!("WARC Content-Length {len} runs into the next record");
                return Ok(Next::Doc(err(h.url, WarcErrorKind::BadLength, d)));
            }
            Scan::Eof => {
                self.stats.malformed += 1;
                let d = format!("truncated WARC record: Content-Length {len} runs past the end");
                return Ok(Next::Doc(err(h.url, WarcErrorKind::Truncated, d)));
            }
        }
        self.stats.records += 1;
        self.stats.oversized += 1;
        if !html {
            self.stats.skipped += 1;
            return Ok(Next::Nothing);
        }
        let cap = self.limits.max_record_bytes;
        let d = format!("WARC record payload of {len} bytes exceeds the {cap}-byte cap");
        Ok(Next::Doc(err(h.url, WarcErrorKind::Oversized, d)))
    }

    fn dispatch(&mut self, h: Headers, body: &[u8]) -> Next {
        let res = match h.wtype.as_str() {
            "response" if h.ctype.contains("application/http") => http_html(body),
            "resource" | "response" if h.ctype.contains("html") => Some(decode(body, &h.ctype)),
            _ => None,
        };
        match res {
            None => {
                self.stats.skipped += 1;
                Next::Nothing
            }
            Some(Ok(html)) => Next::Doc(WarcDoc {
                url: h.url,
                html: Ok(html),
            }),
            Some(Err(e)) => {
                self.stats.malformed += 1;
                Next::Doc(WarcDoc {
                    url: h.url,
                    html: Err(e),
                })
            }
        }
    }
}

/// Reads one line of at most `max` bytes (newline included).
fn read_line<R: Read>(p: &mut Peek<R>, max: usize) -> io::Result<LineRead> {
    let mut line = Vec::new();
    loop {
        let chunk = p.fill_buf()?;
        if chunk.is_empty() {
            return Ok(LineRead::Eof);
        }
        let room = max.saturating_sub(line.len());
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) if i < room => {
                line.extend_from_slice(&chunk[..=i]);
                p.consume(i + 1);
                return Ok(LineRead::Line(line));
            }
            _ => {
                let n = chunk.len().min(room);
                if n == 0 {
                    return Ok(LineRead::TooLong);
                }
                line.extend_from_slice(&chunk[..n]);
                p.consume(n);
            }
        }
    }
}

/// Consumes input until a line that starts a record (left unread), `limit` bytes, or the end.
/// `line_start`: whether the current position is at the start of a line.
fn scan_to_record<R: Read>(
    p: &mut Peek<R>,
    mut limit: u64,
    mut line_start: bool,
) -> io::Result<Scan> {
    loop {
        if line_start && is_record_start(p.peek(6)?) {
            return Ok(Scan::Found);
        }
        if limit == 0 {
            return Ok(Scan::Limit);
        }
        let chunk = p.fill_buf()?;
        if chunk.is_empty() {
            return Ok(Scan::Eof);
        }
        let window = &chunk[..chunk
            .len()
            .min(usize::try_from(limit).unwrap_or(usize::MAX))];
        let (n, nl) = match window.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (window.len(), false),
        };
        p.consume(n);
        limit -= n as u64;
        line_start = nl;
    }
}

/// Content type, chunked flag and content encoding of an HTTP response head, if it has one.
fn http_content_type(head: &[u8]) -> Option<(String, bool, Option<String>)> {
    let end = find(head, b"\r\n\r\n")
        .or_else(|| find(head, b"\n\n"))
        .unwrap_or(head.len());
    let head = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
    let mut ctype = None;
    let mut chunked = false;
    let mut encoded = None;
    for l in head.lines().skip(1) {
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            match k.trim() {
                "content-type" => ctype = Some(v.to_string()),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "content-encoding" if !v.is_empty() && v != "identity" => {
                    encoded = Some(v.to_string())
                }
                _ => {}
            }
        }
    }
    Some((ctype?, chunked, encoded))
}

fn bad_http(detail: impl Into<String>) -> WarcError {
    WarcError {
        kind: WarcErrorKind::BadHttp,
        detail: detail.into(),
    }
}

/// Splits an HTTP response; `None` when it is not HTML.
fn http_html(body: &[u8]) -> Option<Result<String, WarcError>> {
    let (head, payload) = match find(body, b"\r\n\r\n") {
        Some(i) => (&body[..i], &body[i + 4..]),
        None => match find(body, b"\n\n") {
            Some(i) => (&body[..i], &body[i + 2..]),
            None => return Some(Err(bad_http("HTTP response without header/body separator"))),
        },
    };
    let (ctype, chunked, encoded) = http_content_type(head)?;
    if !ctype.contains("html") {
        return None;
    }
    if let Some(enc) = encoded {
        return Some(Err(bad_http(format!("unsupported Content-Encoding {enc}"))));
    }
    let payload = if chunked {
        match dechunk(payload) {
            Some(p) => p,
            None => return Some(Err(bad_http("malformed chunked transfer encoding"))),
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
pub(crate) fn decode(b: &[u8], ctype: &str) -> Result<String, WarcError> {
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
                Err(WarcError {
                    kind: WarcErrorKind::InvalidUtf8,
                    detail: format!("invalid UTF-8 ({e}) and no supported charset declared"),
                })
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

    #[test]
    fn content_length_parsing() {
        assert_eq!(parse_length("12"), Some(12));
        for bad in ["", "-1", "1e3", "12 ", "0x10", "99999999999999999999999"] {
            assert_eq!(parse_length(bad), None, "{bad}");
        }
        let mut h = Headers::default();
        h.field(b"Content-Length: 5\r\n");
        h.field(b"Content-Length: 6\r\n");
        assert!(matches!(h.len, Some(Err(_))));
    }
}
