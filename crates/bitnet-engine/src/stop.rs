//! Stop strings over streamed text: text that could still become a stop string is held back, so
//! a client never sees the beginning of a stop string that later completes.

/// Accumulates streamed text and releases what is safe to show.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

/// What feeding a piece of text produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text safe to emit now (possibly empty); generation goes on.
    Continue(String),
    /// A stop string matched: emit this text (everything before the stop string) and stop.
    Stopped(String),
}

impl StopMatcher {
    /// A matcher for the given stop strings (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Feeds newly decoded text.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        self.pending.push_str(text);
        if self.stops.is_empty() {
            return StopOutcome::Continue(std::mem::take(&mut self.pending));
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = hit {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return StopOutcome::Stopped(out);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.pending.ends_with(&s[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopOutcome::Continue(out)
    }

    /// Releases held-back text at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn holds_back_partial_matches_and_stops() {
        let mut m = StopMatcher::new(&stops(&["\n\nUser:"]));
        assert_eq!(m.push("Hello"), StopOutcome::Continue("Hello".into()));
        assert_eq!(m.push(" there\n"), StopOutcome::Continue(" there".into()));
        assert_eq!(m.push("\nUs"), StopOutcome::Continue(String::new()));
        assert_eq!(m.push("er: hi"), StopOutcome::Stopped(String::new()));
    }

    #[test]
    fn releases_false_alarms() {
        let mut m = StopMatcher::new(&stops(&["END"]));
        assert_eq!(m.push("the E"), StopOutcome::Continue("the ".into()));
        assert_eq!(m.push("ND"), StopOutcome::Stopped("".into()));
        let mut m = StopMatcher::new(&stops(&["END"]));
        assert_eq!(m.push("EN"), StopOutcome::Continue("".into()));
        assert_eq!(m.push("d"), StopOutcome::Continue("ENd".into()));
        assert_eq!(m.push("E"), StopOutcome::Continue("".into()));
        assert_eq!(m.finish(), "E");
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_is_safe() {
        let mut m = StopMatcher::new(&stops(&["çb", "x"]));
        assert_eq!(m.push("aç"), StopOutcome::Continue("a".into()));
        assert_eq!(m.push("bx"), StopOutcome::Stopped("".into()));
        let mut m = StopMatcher::new(&stops(&["b", "a"]));
        assert_eq!(m.push("zab"), StopOutcome::Stopped("z".into()));
    }
}
