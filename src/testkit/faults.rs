//! Fault plans shared by the fakes: "the next N calls matching X fail with F", or all of them.

/// How many matching calls a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Times {
    /// The next `n` matching calls; then the fault is spent.
    Next(usize),
    /// Every matching call, until the plan is cleared.
    Always,
}

struct Entry<M, F> {
    matcher: M,
    left: Option<usize>,
    fault: F,
}

/// Faults waiting for a matching call, in the order they were added (the first match wins).
pub struct FaultPlan<M, F> {
    entries: Vec<Entry<M, F>>,
}

impl<M, F> Default for FaultPlan<M, F> {
    fn default() -> Self {
        Self { entries: Vec::new() }
    }
}

impl<M, F: Clone> FaultPlan<M, F> {
    pub fn add(&mut self, matcher: M, times: Times, fault: F) {
        let left = match times {
            Times::Next(0) => return,
            Times::Next(n) => Some(n),
            Times::Always => None,
        };
        self.entries.push(Entry { matcher, left, fault });
    }

    /// The fault for a call `matches` accepts, counting it against its entry.
    pub fn take(&mut self, matches: impl Fn(&M) -> bool) -> Option<F> {
        let index = self.entries.iter().position(|e| matches(&e.matcher))?;
        let entry = &mut self.entries[index];
        let fault = entry.fault.clone();
        if let Some(left) = entry.left.as_mut() {
            *left -= 1;
            if *left == 0 {
                self.entries.remove(index);
            }
        }
        Some(fault)
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_n_is_spent_and_always_stays_until_cleared() {
        let mut plan = FaultPlan::default();
        plan.add("a", Times::Next(2), 1);
        plan.add("b", Times::Always, 2);
        plan.add("c", Times::Next(0), 3);
        assert_eq!(plan.take(|m| *m == "a"), Some(1));
        assert_eq!(plan.take(|m| *m == "a"), Some(1));
        assert_eq!(plan.take(|m| *m == "a"), None);
        assert_eq!(plan.take(|m| *m == "c"), None, "zero times is no fault");
        for _ in 0..5 {
            assert_eq!(plan.take(|m| *m == "b"), Some(2));
        }
        plan.clear();
        assert_eq!(plan.take(|m| *m == "b"), None);
    }
}
