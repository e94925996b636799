//! Byte-stream plumbing for the WARC reader: a buffered reader that can peek ahead and push bytes back,
//! and a gzip decoder that reads member by member, skipping corrupt members and decompression bombs.

use flate2::bufread::GzDecoder;
use std::io::{self, BufRead, Read};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b, 0x08];

/// A buffered reader with [`Peek::peek`] (look at the next `n` bytes) and [`Peek::unread`].
pub(crate) struct Peek<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
    /// Bytes consumed so far (pushed-back bytes are subtracted again).
    consumed: u64,
}

impl<R: Read> Peek<R> {
    pub(crate) fn new(inner: R) -> Self {
        Peek {
            inner,
            buf: Vec::new(),
            pos: 0,
            eof: false,
            consumed: 0,
        }
    }

    /// Bytes consumed from this reader so far.
    pub(crate) fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The next `n` bytes (fewer only at end of input), without consuming them.
    pub(crate) fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        while self.buf.len() - self.pos < n && !self.eof {
            self.refill(n)?;
        }
        let end = self.buf.len().min(self.pos + n);
        Ok(&self.buf[self.pos..end])
    }

    /// Puts `bytes` back in front of the unread input.
    pub(crate) fn unread(&mut self, bytes: &[u8]) {
        let mut b = Vec::with_capacity(bytes.len() + self.buf.len() - self.pos);
        b.extend_from_slice(bytes);
        b.extend_from_slice(&self.buf[self.pos..]);
        self.buf = b;
        self.pos = 0;
        self.consumed = self.consumed.saturating_sub(bytes.len() as u64);
    }

    /// Reads more input, keeping the unread part and room for at least `want` bytes.
    fn refill(&mut self, want: usize) -> io::Result<()> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let have = self.buf.len();
        let chunk = want.saturating_sub(have).max(64 << 10);
        self.buf.resize(have + chunk, 0);
        let r = loop {
            match self.inner.read(&mut self.buf[have..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        let n = *r.as_ref().unwrap_or(&0);
        self.buf.truncate(have + n);
        if n == 0 {
            self.eof = true;
        }
        r.map(|_| ())
    }
}

impl<R: Read> BufRead for Peek<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos >= self.buf.len() && !self.eof {
            self.refill(1)?;
        }
        Ok(&self.buf[self.pos..])
    }

    fn consume(&mut self, amt: usize) {
        let amt = amt.min(self.buf.len() - self.pos);
        self.pos += amt;
        self.consumed += amt as u64;
    }
}

impl<R: Read> Read for Peek<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Counts of what [`GzMembers`] skipped.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GzStats {
    /// Members that failed to decode (bad header, corrupt data, CRC mismatch, truncated).
    pub bad_members: u64,
    /// Members abandoned for expanding past the size and ratio bound.
    pub bombs: u64,
    /// Garbage bytes skipped between members.
    pub garbage_bytes: u64,
}

enum GzState<R> {
    /// At a member boundary.
    Between(Peek<R>),
    /// Inside a member: decoder, bytes decompressed, compressed offset where the member began.
    In(GzDecoder<Peek<R>>, u64, u64),
    /// Input exhausted (or unusable).
    Done,
}

/// Multi-member gzip decoder that resynchronises: a corrupt member is counted and decoding resumes at the
/// next gzip header, after a line break (so that a WARC record in the next member starts a line). A member that decompresses past `max_bytes` at more than `max_ratio`× its compressed
/// size is abandoned as a decompression bomb (skipped to the next header), which bounds the work a small
/// file can cause; an ordinary whole-file gzip of text stays far below the ratio.
pub(crate) struct GzMembers<R> {
    state: GzState<R>,
    /// A member was cut short: emit a line break so the next member's record starts a line.
    pending_break: bool,
    max_bytes: u64,
    max_ratio: u64,
    pub(crate) stats: GzStats,
}

impl<R: Read> GzMembers<R> {
    pub(crate) fn new(inner: R, max_bytes: u64, max_ratio: u64) -> Self {
        GzMembers {
            state: GzState::Between(Peek::new(inner)),
            pending_break: false,
            max_bytes,
            max_ratio: max_ratio.max(1),
            stats: GzStats::default(),
        }
    }

    /// At a boundary: starts the next member, skipping garbage up to the next gzip header.
    fn start_member(&mut self, mut p: Peek<R>) -> io::Result<GzState<R>> {
        let skipped = skip_to_magic(&mut p)?;
        if skipped > 0 {
            self.stats.garbage_bytes += skipped;
        }
        if p.peek(1)?.is_empty() {
            return Ok(GzState::Done);
        }
        let at = p.consumed();
        Ok(GzState::In(GzDecoder::new(p), 0, at))
    }

    /// Drops the rest of a bad member: steps past its header byte so the scan finds the next one.
    fn abandon(&mut self, d: GzDecoder<Peek<R>>, start: u64) -> GzState<R> {
        self.pending_break = true;
        let mut p = d.into_inner();
        if p.consumed() == start {
            p.consume(1);
        }
        GzState::Between(p)
    }
}

impl<R: Read> Read for GzMembers<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pending_break && !out.is_empty() && matches!(self.state, GzState::Between(_)) {
                self.pending_break = false;
                out[0] = b'\n';
                return Ok(1);
            }
            match std::mem::replace(&mut self.state, GzState::Done) {
                GzState::Done => return Ok(0),
                GzState::Between(p) => self.state = self.start_member(p)?,
                GzState::In(mut d, produced, start) => match d.read(out) {
                    Ok(0) => self.state = GzState::Between(d.into_inner()),
                    Ok(n) => {
                        let produced = produced + n as u64;
                        let packed = d.get_ref().consumed().saturating_sub(start).max(1);
                        if produced > self.max_bytes && produced / packed > self.max_ratio {
                            self.stats.bombs += 1;
                            self.state = self.abandon(d, start);
                            continue;
                        }
                        self.state = GzState::In(d, produced, start);
                        return Ok(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                        self.state = GzState::In(d, produced, start)
                    }
                    Err(_) => {
                        self.stats.bad_members += 1;
                        self.state = self.abandon(d, start);
                    }
                },
            }
        }
    }
}

/// Consumes bytes up to the next gzip header (or the end); returns how many were skipped.
fn skip_to_magic<R: Read>(p: &mut Peek<R>) -> io::Result<u64> {
    let mut skipped = 0u64;
    loop {
        let head = p.peek(GZIP_MAGIC.len())?;
        if head.is_empty() || head == GZIP_MAGIC {
            return Ok(skipped);
        }
        let chunk = p.fill_buf()?;
        // Skip to the next 0x1f after the current byte (or the whole chunk).
        let n = chunk
            .iter()
            .skip(1)
            .position(|&b| b == GZIP_MAGIC[0])
            .map_or(chunk.len(), |i| i + 1);
        p.consume(n);
        skipped += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = e.write_all(data);
        e.finish().unwrap_or_default()
    }

    fn decode(input: &[u8], max_bytes: u64) -> (Vec<u8>, GzStats) {
        let mut g = GzMembers::new(input, max_bytes, 50);
        let mut out = Vec::new();
        let r = g.read_to_end(&mut out);
        assert!(r.is_ok(), "{r:?}");
        (out, g.stats)
    }

    #[test]
    fn members_garbage_corruption_and_bombs() {
        let mut f = gz(b"one ");
        f.extend(b"junk\x1f\x8bjunk");
        let mut bad = gz(b"two two two two");
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        bad[mid + 1] ^= 0xff;
        f.extend(bad);
        f.extend(gz(&vec![b'z'; 1 << 20]));
        f.extend(gz(b"three"));
        let mut cut = gz(b"four four four");
        cut.truncate(cut.len() - 5);
        f.extend(cut);
        let (out, st) = decode(&f, 1 << 16);
        let s = String::from_utf8_lossy(&out);
        assert!(s.starts_with("one "), "{s}");
        assert!(s.ends_with("three") || s.contains("three"), "{s}");
        assert!(out.len() < (1 << 20), "bomb abandoned");
        assert_eq!(st.bombs, 1);
        assert!(st.bad_members >= 2, "{st:?}");
        assert!(st.garbage_bytes > 0);
    }

    #[test]
    fn peek_and_unread() {
        let mut p = Peek::new(&b"abcdef"[..]);
        assert_eq!(p.peek(3).ok(), Some(&b"abc"[..]));
        p.consume(4);
        p.unread(b"XY");
        let mut s = String::new();
        assert!(p.read_to_string(&mut s).is_ok());
        assert_eq!(s, "XYef");
        assert_eq!(p.peek(10).ok(), Some(&b""[..]));
    }
}
