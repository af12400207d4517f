//! Body frames read ahead of sending, and the size hints of bodies made of a read-ahead part and a
//! stream.

use std::collections::VecDeque;

use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// Body frames read ahead of sending, in order. Most bodies read ahead are one piece of data
/// (a small answer, or the start of an upload): it is held inline, and only a second frame, or
/// trailers, takes an allocation. A `VecDeque` alone costs an allocation and a free per response.
/// A whole answer leaves it as `ResponseBody::Full` or `ResponseBody::Buffered`, so responses do
/// not carry it.
#[derive(Debug, Default)]
pub struct Frames {
    /// The first piece of data, when it came first; empty when there is none.
    first: Bytes,
    /// Every later frame (or every frame, when the first was not data).
    rest: VecDeque<Frame<Bytes>>,
}

impl Frames {
    pub fn push_back(&mut self, frame: Frame<Bytes>) {
        if self.first.is_empty() && self.rest.is_empty() {
            match frame.into_data() {
                // An empty piece of data says nothing: it is dropped.
                Ok(data) => self.first = data,
                Err(frame) => self.rest.push_back(frame),
            }
        } else {
            self.rest.push_back(frame);
        }
    }

    pub fn pop_front(&mut self) -> Option<Frame<Bytes>> {
        if self.first.is_empty() {
            self.rest.pop_front()
        } else {
            Some(Frame::data(std::mem::take(&mut self.first)))
        }
    }

    /// The first piece of data (empty when there is none), and every later frame.
    pub fn into_parts(self) -> (Bytes, VecDeque<Frame<Bytes>>) {
        (self.first, self.rest)
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_empty() && self.rest.is_empty()
    }

    /// Bytes of data held.
    pub(crate) fn data_len(&self) -> u64 {
        self.first.len() as u64 + data_len(&self.rest)
    }
}

/// Bytes of data in `frames`.
pub(crate) fn data_len(frames: &VecDeque<Frame<Bytes>>) -> u64 {
    frames
        .iter()
        .map(|f| f.data_ref().map_or(0, |d| d.len() as u64))
        .sum()
}

/// The size of a body made of `before` bytes already read, then a stream hinted as `rest`.
pub(crate) fn hint_after(before: u64, rest: SizeHint) -> SizeHint {
    let mut hint = SizeHint::new();
    hint.set_lower(before + rest.lower());
    if let Some(upper) = rest.upper() {
        hint.set_upper(before + upper);
    }
    hint
}

/// Helpers for tests of bodies made of frames.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub(crate) fn data(s: &'static str) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(s.as_bytes()))
    }

    /// What a body made of `frames` sends, in order: data as text, trailers as their count.
    pub(crate) fn drain(frames: &mut Frames) -> Vec<String> {
        std::iter::from_fn(|| frames.pop_front())
            .map(|f| match f.into_data() {
                Ok(d) => String::from_utf8_lossy(&d).into_owned(),
                Err(f) => format!("trailers:{}", f.into_trailers().map_or(0, |t| t.len())),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn frames_keep_their_order_whether_inline_or_queued() {
        let trailers = || {
            let mut t = http::HeaderMap::new();
            t.insert("x-checksum", http::HeaderValue::from_static("1"));
            Frame::trailers(t)
        };
        let mut f = Frames::default();
        assert!(f.is_empty());
        f.push_back(data("ab"));
        f.push_back(data("cde"));
        f.push_back(trailers());
        assert_eq!(f.data_len(), 5);
        assert_eq!(drain(&mut f), ["ab", "cde", "trailers:1"]);
        assert!(f.is_empty());

        // Trailers first: what follows queues behind them, not before.
        f.push_back(trailers());
        f.push_back(data("x"));
        assert_eq!(drain(&mut f), ["trailers:1", "x"]);

        // Taken and refilled: the first piece is inline again, and ahead of the later ones.
        f.push_back(data("1"));
        assert_eq!(
            f.pop_front().and_then(|f| f.into_data().ok()).as_deref(),
            Some(&b"1"[..])
        );
        f.push_back(data("2"));
        f.push_back(data("3"));
        assert_eq!(drain(&mut f), ["2", "3"]);

        // An empty piece of data carries nothing.
        f.push_back(data(""));
        assert!(f.is_empty());
    }
}
