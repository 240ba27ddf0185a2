//! The stretches of the recording whose serial output has been shown (half-open position
//! intervals), so that going back and forth over a stretch shows its output once.

use std::collections::BTreeMap;

use ttvm_vmm::run::singlestep::Position;

#[derive(Debug, Clone, Default)]
pub struct Shown {
    /// start -> end, disjoint and not touching.
    spans: BTreeMap<Position, Position>,
}

impl Shown {
    /// If `pos` was shown: the end of its stretch.
    pub fn end_of(&self, pos: Position) -> Option<Position> {
        self.spans
            .range(..=pos)
            .next_back()
            .and_then(|(_, &end)| (end > pos).then_some(end))
    }

    /// The start of the first shown stretch after `pos`.
    pub fn next_start(&self, pos: Position) -> Option<Position> {
        self.spans.range(pos + 1..).next().map(|(&s, _)| s)
    }

    /// Marks `[start, end)` as shown.
    pub fn insert(&mut self, mut start: Position, mut end: Position) {
        if start >= end {
            return;
        }
        if let Some((&s, &e)) = self.spans.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        let inside: Vec<Position> = self.spans.range(start..=end).map(|(&s, _)| s).collect();
        for s in inside {
            if let Some(e) = self.spans.remove(&s) {
                end = end.max(e);
            }
        }
        self.spans.insert(start, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stretches_merge() {
        let mut s = Shown::default();
        s.insert(10, 20);
        s.insert(30, 40);
        assert_eq!(s.end_of(9), None);
        assert_eq!(s.end_of(10), Some(20));
        assert_eq!(s.end_of(20), None);
        assert_eq!(s.next_start(20), Some(30));
        assert_eq!(s.next_start(30), None);
        s.insert(20, 30);
        assert_eq!(s.end_of(12), Some(40));
        s.insert(5, 50);
        assert_eq!(s.spans.len(), 1);
        assert_eq!(s.end_of(5), Some(50));
        s.insert(7, 7);
        assert_eq!(s.spans.len(), 1);
    }
}
