//! The body of a /metrics response: the encoding a client asks for, the
//! output that lays held text and precompressed pieces out without copying
//! or compressing them again, and the two ways it reaches the connection
//! (laid out before the response starts, or streamed while rendering).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::gzip;

/// How a scrape wants the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

impl Encoding {
    /// Gzip when the client accepts it (Prometheus always asks), honouring
    /// `q=0` refusals; anything else gets plain text.
    pub fn from_accept(accept: Option<&str>) -> Self {
        let Some(accept) = accept else { return Self::Identity };
        for item in accept.split(',') {
            let mut fields = item.split(';');
            let coding = fields.next().unwrap_or("").trim();
            if !["gzip", "x-gzip", "*"].iter().any(|c| coding.eq_ignore_ascii_case(c)) {
                continue;
            }
            let refused = fields.any(|f| {
                f.trim().strip_prefix("q=").and_then(|q| q.trim().parse::<f64>().ok()).is_some_and(|q| q <= 0.0)
            });
            if !refused {
                return Self::Gzip;
            }
        }
        Self::Identity
    }
}

/// Prerendered text handed to the connection without a copy.
pub(crate) struct HeldText(Arc<str>);

impl AsRef<[u8]> for HeldText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// The body as it is sent: text as is, or one gzip member into which
/// prerendered pieces are laid without compressing them again.
pub(crate) struct Output<'a> {
    gzip: Option<gzip::GzipWriter>,
    chunk: usize,
    send: &'a mut dyn FnMut(Bytes) -> bool,
    open: bool,
    written: Written,
}

/// What a scrape's body held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Bytes sent, as encoded.
    pub bytes: u64,
    /// Precompressed pieces laid in without compressing them again.
    pub pieces: usize,
}

impl<'a> Output<'a> {
    pub(crate) fn new(encoding: Encoding, chunk: usize, send: &'a mut dyn FnMut(Bytes) -> bool) -> Self {
        let gzip = (encoding == Encoding::Gzip).then(gzip::GzipWriter::new);
        Self { gzip, chunk, send, open: true, written: Written::default() }
    }

    pub(crate) fn takes_pieces(&self) -> bool {
        self.gzip.is_some()
    }

    fn emit(&mut self, bytes: impl Into<Bytes>) {
        let bytes = bytes.into();
        if self.open && !bytes.is_empty() {
            self.written.bytes += bytes.len() as u64;
            self.open = (self.send)(bytes);
        }
    }

    /// Takes `text` (written at scrape time) and sends what is ready.
    pub(crate) fn text(&mut self, text: &mut String) {
        if !self.open || text.is_empty() {
            text.clear();
            return;
        }
        if self.gzip.is_some() {
            self.compress(text);
            text.clear();
        } else {
            let full = std::mem::replace(text, String::with_capacity(self.chunk + 4096));
            self.emit(full.into_bytes());
        }
    }

    fn compress(&mut self, text: &str) {
        let Some(gz) = &mut self.gzip else { return };
        if let Err(e) = gz.text(text) {
            tracing::error!(problem = %e, "cannot serve /metrics");
            self.open = false;
            return;
        }
        if gz.ready() >= self.chunk {
            let ready = gz.take();
            self.emit(ready);
        }
    }

    /// Held text after `pending` text: plain, a large one goes out as
    /// slices of the held bytes (no copy); compressed, it is compressed now.
    pub(crate) fn held(&mut self, pending: &mut String, held: &Arc<str>) {
        if self.gzip.is_some() {
            self.text(pending);
            self.compress(held);
        } else if held.len() <= self.chunk / 4 {
            pending.push_str(held);
            if pending.len() >= self.chunk {
                self.text(pending);
            }
        } else {
            self.text(pending);
            self.emit_slices(&Bytes::from_owner(HeldText(held.clone())));
        }
    }

    fn emit_slices(&mut self, bytes: &Bytes) {
        let mut at = 0;
        while at < bytes.len() {
            let end = (at + self.chunk.max(1)).min(bytes.len());
            self.emit(bytes.slice(at..end));
            at = end;
        }
    }

    /// Lays a prerendered piece after `pending` text. A large piece goes out
    /// as slices of the held bytes: no copy, no chunk over `chunk`.
    pub(crate) fn piece(&mut self, pending: &mut String, piece: &gzip::Piece) -> Result<(), String> {
        self.text(pending);
        let Some(gz) = &mut self.gzip else { return Ok(()) };
        self.written.pieces += 1;
        let Some(shared) = gz.piece(piece, self.chunk / 4).map_err(|e| e.to_string())? else {
            if gz.ready() >= self.chunk {
                let ready = gz.take();
                self.emit(ready);
            }
            return Ok(());
        };
        let before = gz.take();
        self.emit(before);
        self.emit_slices(&shared);
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<Written, String> {
        if let Some(gz) = self.gzip.take() {
            let rest = gz.finish().map_err(|e| e.to_string())?;
            self.emit(rest);
        }
        Ok(self.written)
    }
}

/// The response body: chunks as the blocking renderer hands them over.
pub(crate) struct Chunks(pub tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// A body laid out before the response starts.
pub(crate) struct Frames(pub std::collections::VecDeque<Bytes>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.iter().map(|b| b.len() as u64).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_is_read_as_clients_mean_it() {
        use Encoding::*;
        for (header, want) in [
            (None, Identity),
            (Some("gzip"), Gzip),
            (Some("identity"), Identity),
            (Some("br, GZIP;q=0.5"), Gzip),
            (Some("gzip;q=0"), Identity),
            (Some("gzip; q=0.0, identity"), Identity),
            (Some("*"), Gzip),
            (Some("x-gzip"), Gzip),
            (Some("deflate, br"), Identity),
            (Some(""), Identity),
        ] {
            assert_eq!(Encoding::from_accept(header), want, "{header:?}");
        }
    }
}
