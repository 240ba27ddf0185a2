//! Cross-checking a complete trace's close record (in `header.json`, not checksummed)
//! against its event stream (checksummed chunk by chunk).
//!
//! The writer makes the stream's last event the `End` of the run, at the final position,
//! with the close record's end reason, and counts events and chunks into the close record.
//! Anything else means the header was edited or damaged: it is reported where the stream
//! would end, never shown as the recording's truth.
use crate::event::{Event, EventRecord};
use crate::header::CloseRecord;
use std::io::{Read, Seek};

use crate::stream::{EventStream, Tail};

/// What the close record of a complete trace gets wrong about `stream`, if anything.
/// Checked only when the stream itself is whole (damage there is reported on its own).
pub fn close_mismatch<R: Read + Seek>(
    close: &CloseRecord,
    stream: &mut EventStream<R>,
) -> Option<String> {
    if *stream.tail() != Tail::Clean || stream.known_events() != close.event_count {
        return None;
    }
    let chunks = stream.chunks().len() as u64;
    if close.chunk_count != chunks {
        return Some(format!(
            "it says {} chunks, the events file holds {chunks}",
            close.chunk_count
        ));
    }
    if !close.events_by_kind.is_empty() {
        let sum = close
            .events_by_kind
            .values()
            .fold(0u64, |a, &n| a.saturating_add(n));
        if sum != close.event_count {
            return Some(format!(
                "its events by kind add up to {sum}, its event count is {}",
                close.event_count
            ));
        }
    }
    // A damaged last chunk is reported when it is read.
    let last = stream.last_event().ok()?;
    compare_end(close, last.as_ref(), close.event_count.saturating_sub(1))
}

/// Compares the close record with the stream's last event (`index` is its number).
fn compare_end(close: &CloseRecord, last: Option<&EventRecord>, index: u64) -> Option<String> {
    let Some(last) = last else {
        return Some("the event stream is empty, so the run's end is missing".to_string());
    };
    let Event::End { reason } = &last.event else {
        return Some(format!(
            "the stream's last event (#{index} at position {}) is {}, not the end of the run",
            last.position, last.event
        ));
    };
    if *reason != close.end_reason {
        return Some(format!(
            "it says the run ended with \"{}\", the stream's end event (#{index} at position {}) says \"{reason}\"",
            close.end_reason, last.position
        ));
    }
    if last.position != close.final_position {
        return Some(format!(
            "it says the final position is {}, the stream's end event (#{index}) is at position {}",
            close.final_position, last.position
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EndReason;
    use crate::header::Timestamp;

    fn close(end_reason: EndReason, final_position: u64) -> CloseRecord {
        CloseRecord {
            end_reason,
            final_position,
            duration_nanos: 0,
            closed: Timestamp::from_unix(0),
            event_count: 1,
            chunk_count: 1,
            checkpoint_count: 0,
            events_by_kind: Default::default(),
            counters: Default::default(),
        }
    }

    #[test]
    fn end_reason_and_position_must_agree() {
        let exit = |status| EndReason::GuestExit { status };
        let end = EventRecord {
            position: 50,
            event: Event::End { reason: exit(10) },
        };
        assert_eq!(compare_end(&close(exit(10), 50), Some(&end), 0), None);
        let wrong_status = compare_end(&close(exit(7), 50), Some(&end), 0).unwrap();
        assert!(
            wrong_status.contains("\"guest exit (status 7)\""),
            "{wrong_status}"
        );
        let wrong_end = compare_end(&close(exit(10), 49), Some(&end), 0).unwrap();
        assert_eq!(
            wrong_end,
            "it says the final position is 49, the stream's end event (#0) is at position 50"
        );
        let not_end = EventRecord {
            position: 50,
            event: Event::Interrupt { vector: 32 },
        };
        let msg = compare_end(&close(exit(10), 50), Some(&not_end), 3).unwrap();
        assert!(msg.contains("not the end of the run"), "{msg}");
        assert!(compare_end(&close(exit(10), 50), None, 0).is_some());
    }
}
