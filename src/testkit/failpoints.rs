//! The `fail` crate's failpoints are global to the test process: a crash point configured by one test
//! would fire in any other test's backup running at the same time. So every `World` holds a shared
//! claim on the failpoints, taken when it is built, and a test that configures failpoints holds a
//! `CrashScenario`, which waits until no `World` is alive and keeps new ones from being built until it
//! ends (its own `World`s are built under it and take no claim). Between the two, a reconcile can only
//! ever meet a failpoint its own test configured.
//!
//! The lock is reader-preferring and counts claims, so a test holding two `World`s cannot deadlock;
//! a scenario waits at most for the tests running beside it.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

struct Claims {
    worlds: usize,
    scenario: bool,
}

static CLAIMS: Mutex<Claims> = Mutex::new(Claims { worlds: 0, scenario: false });
static CHANGED: Condvar = Condvar::new();

/// A failing test must not stop the others: a poisoned lock is used as it is.
fn claims() -> MutexGuard<'static, Claims> {
    CLAIMS.lock().unwrap_or_else(PoisonError::into_inner)
}

fn wait_until(mut ready: impl FnMut(&Claims) -> bool) -> MutexGuard<'static, Claims> {
    let mut claims = claims();
    while !ready(&claims) {
        claims = CHANGED.wait(claims).unwrap_or_else(PoisonError::into_inner);
    }
    claims
}

/// A `World`'s claim: no failpoint is configured while it lives.
pub struct NoFailpoints(());

impl NoFailpoints {
    pub fn claim() -> Self {
        wait_until(|c| !c.scenario).worlds += 1;
        Self(())
    }
}

impl Drop for NoFailpoints {
    fn drop(&mut self) {
        claims().worlds -= 1;
        CHANGED.notify_all();
    }
}

/// The whole process's failpoints, for one test; every failpoint is removed when it ends. The panics
/// the crash points cause are expected, so they are not printed (other panics are, as before).
#[cfg(feature = "failpoints")]
pub struct CrashScenario {
    // Dropped first: the failpoints are cleared before other Worlds may be built.
    _scenario: fail::FailScenario<'static>,
    _quiet: QuietCrashes,
    _exclusive: Exclusive,
}

#[cfg(feature = "failpoints")]
type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

/// A panic hook that says nothing of the panics crash points cause, and hands the rest to the hook
/// that was there before; that hook is put back when it is dropped.
#[cfg(feature = "failpoints")]
struct QuietCrashes(std::sync::Arc<PanicHook>);

#[cfg(feature = "failpoints")]
impl QuietCrashes {
    fn install() -> Self {
        let previous = std::sync::Arc::new(std::panic::take_hook());
        let inner = previous.clone();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied());
            // `fail` words it "failpoint <name> panic", also inside a JoinError that re-panics.
            if !message.is_some_and(|m| m.contains("failpoint ") && m.contains(" panic")) {
                inner(info);
            }
        }));
        Self(previous)
    }
}

#[cfg(feature = "failpoints")]
impl Drop for QuietCrashes {
    fn drop(&mut self) {
        let previous = self.0.clone();
        let _ = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| previous(info)));
    }
}

#[cfg(feature = "failpoints")]
struct Exclusive(());

#[cfg(feature = "failpoints")]
impl Drop for Exclusive {
    fn drop(&mut self) {
        claims().scenario = false;
        CHANGED.notify_all();
    }
}

#[cfg(feature = "failpoints")]
impl CrashScenario {
    /// Waits until no `World` lives (and no other scenario runs), then takes the failpoints.
    pub fn setup() -> Self {
        wait_until(|c| !c.scenario && c.worlds == 0).scenario = true;
        let exclusive = Exclusive(());
        Self { _scenario: fail::FailScenario::setup(), _quiet: QuietCrashes::install(), _exclusive: exclusive }
    }

    /// The next time a backup passes `point`, its process "crashes": the reconcile panics there.
    pub fn crash_once_at(&self, point: &str) {
        fail::cfg(point, "1*panic").unwrap_or_else(|e| panic!("configuring crash point {point}: {e}"));
    }

    /// No crash point is configured any more.
    pub fn clear(&self) {
        for (name, _) in fail::list() {
            fail::remove(name);
        }
    }
}
