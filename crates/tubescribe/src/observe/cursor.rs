//! The SSE event id codec: a [`Cursor`] is the position reached in each of the event streams
//! (`<ms>-<seq>` per stream, joined with `_`; a `~<k>` suffix marks that only events `0..=k`
//! of a stream entry that maps to several events were delivered). Pure: parsing, display
//! and order; which streams there are is the event mapper's business.
//!
//! **The one order.** Events of all streams form one total order, [`order`]: stream time
//! (the id's ms), then stream index, then the id's sequence number, then the event's index
//! within its entry. Live emission and replay both follow it, so a cursor is a cut of that
//! order: everything at or before it in each stream was delivered, nothing after.

use std::cmp::Ordering;

/// Number of streams a cursor covers.
pub const STREAMS: usize = 4;

/// A position in one stream: a Redis stream id (`ms-seq`) and, when an entry maps to several
/// events and only some were delivered, the index of the last delivered one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// Milliseconds part of the stream id.
    pub ms: u64,
    /// Sequence part of the stream id.
    pub seq: u64,
    /// `Some(k)`: events `0..=k` of this entry were delivered; `None`: all of them.
    pub sub: Option<u32>,
}

impl Pos {
    /// Parses `ms-seq` or `ms-seq~k`.
    pub fn parse(s: &str) -> Option<Pos> {
        let (id, sub) = match s.split_once('~') {
            Some((id, k)) => (id, Some(k.parse().ok()?)),
            None => (s, None),
        };
        let (ms, seq) = id.split_once('-')?;
        Some(Pos {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
            sub,
        })
    }

    /// The Redis stream id `ms-seq`.
    pub fn id(&self) -> String {
        format!("{}-{}", self.ms, self.seq)
    }

    fn key(&self) -> (u64, u64, u64) {
        (
            self.ms,
            self.seq,
            self.sub.map(|k| k as u64).unwrap_or(u64::MAX),
        )
    }
}

impl PartialOrd for Pos {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pos {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)?;
        if let Some(k) = self.sub {
            write!(f, "~{k}")?;
        }
        Ok(())
    }
}

/// The place of the event at position `p` of stream `stream` in the one order of all events
/// (see the module doc): `(ms, stream, seq, index within the entry)`, the last event of an
/// entry (`sub: None`) after its partial positions.
pub fn order(stream: usize, p: Pos) -> (u64, usize, u64, u64) {
    let (ms, seq, sub) = p.key();
    (ms, stream, seq, sub)
}

/// Where a reader stands in all four streams; the SSE event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor(pub [Pos; STREAMS]);

impl Cursor {
    /// Parses the `Display` form (`<pos>_<pos>_<pos>_<pos>`); `None` if malformed.
    pub fn parse(s: &str) -> Option<Cursor> {
        let parts: Vec<&str> = s.trim().split('_').collect();
        if parts.len() != STREAMS {
            return None;
        }
        let mut c = Cursor::default();
        for (i, p) in parts.iter().enumerate() {
            c.0[i] = Pos::parse(p)?;
        }
        Some(c)
    }

    /// The stream and position of the last event delivered before this cursor (the greatest
    /// position in [`order`]); `None` for the start (all positions `0-0`).
    pub fn last(&self) -> Option<(usize, Pos)> {
        (0..STREAMS)
            .map(|i| (i, self.0[i]))
            .filter(|(_, p)| *p != Pos::default())
            .max_by_key(|(i, p)| order(*i, *p))
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("_")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_orders() {
        let c = Cursor::parse("1-0_2-3~0_0-0_17-1").unwrap();
        assert_eq!(c.to_string(), "1-0_2-3~0_0-0_17-1");
        assert_eq!(c.0[1].sub, Some(0));
        assert!(Cursor::parse("1-0_2-3").is_none());
        assert!(Cursor::parse("x-0_0-0_0-0_0-0").is_none());
        let a = Pos::parse("5-1~0").unwrap();
        let b = Pos::parse("5-1").unwrap();
        let c2 = Pos::parse("5-2").unwrap();
        assert!(a < b && b < c2);
    }

    #[test]
    fn order_is_time_then_stream_then_seq_and_last_finds_the_latest() {
        let p = |s: &str| Pos::parse(s).unwrap();
        // The same millisecond: stream 0 before stream 1 whatever the sequence numbers.
        assert!(order(0, p("7-5")) < order(1, p("7-0")));
        assert!(order(1, p("7-0")) < order(0, p("8-0")));
        assert!(order(2, p("7-1~0")) < order(2, p("7-1")));
        let c = Cursor::parse("7-5_8-0_7-9_0-0").unwrap();
        assert_eq!(c.last(), Some((1, p("8-0"))));
        assert_eq!(Cursor::default().last(), None);
    }
}
