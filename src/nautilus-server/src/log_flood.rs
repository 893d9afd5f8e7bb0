//! Repeated log events summed up: a flood of one cheap bad request (a refused
//! task's 500, a failed accept) must not become a flood of log lines, which
//! would cost the log reader (in the enclave a serial console) and push other
//! lines out of the lossy queue.
//!
//! [`FloodFilter`] is a per-layer filter on the log output: each WARN or
//! ERROR call site writes its first [`PER_WINDOW`] events of a window, and
//! the rest are counted. At the end of each window ([`FloodFilter::report`],
//! called every [`WINDOW`] by the binary's log thread) one line per call
//! site says how many more there were, so the count is never lost.
//!
//! Hand-written: tracing-subscriber filters by level, target and fields, but
//! has nothing that counts events per call site. INFO and below are not
//! limited: INFO is one line per finished task (bounded by the task slots,
//! and what an operator audits by), DEBUG and TRACE are asked for on purpose.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tracing::callsite::Identifier;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter};

/// Events one call site may write per window.
pub const PER_WINDOW: u64 = 10;

/// How often the counts are reported and start again.
pub const WINDOW: Duration = Duration::from_secs(10);

/// The summaries' own target: never limited, or a flood at many call sites
/// could hide its own count.
const SUMMARY_TARGET: &str = "nautilus_server::log_flood";

/// How much of a suppressed event's message its summary quotes.
const QUOTED_CHARS: usize = 200;

/// Counts WARN and ERROR events per call site; clones share the counts (one
/// goes to the subscriber, one to the thread that reports).
#[derive(Debug, Clone)]
pub struct FloodFilter {
    sites: Arc<Mutex<HashMap<Identifier, Site>>>,
    per_window: u64,
}

#[derive(Debug)]
struct Site {
    meta: &'static Metadata<'static>,
    written: u64,
    suppressed: u64,
    /// The message of the first suppressed event, quoted in the summary.
    like: Option<String>,
}

/// One call site's suppressed events in a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    /// Events not written.
    pub count: u64,
    /// The first one's message (or its target, when it has none).
    pub like: String,
    /// Their level.
    pub level: Level,
    /// Their target.
    pub target: &'static str,
    /// `file:line` of the call site.
    pub at: String,
}

impl Default for FloodFilter {
    fn default() -> Self {
        Self::new(PER_WINDOW)
    }
}

impl FloodFilter {
    /// Writes the first `per_window` events of each call site per window.
    pub fn new(per_window: u64) -> Self {
        Self {
            sites: Arc::default(),
            per_window,
        }
    }

    /// Ends the window: what each call site had suppressed in it. The next
    /// window starts empty.
    pub fn end_window(&self) -> Vec<Suppressed> {
        // Taken whole, so the map holds only the call sites of one window.
        let sites = std::mem::take(&mut *self.lock());
        let mut out: Vec<Suppressed> = sites
            .into_values()
            .filter(|s| s.suppressed > 0)
            .map(|s| Suppressed {
                count: s.suppressed,
                like: s.like.unwrap_or_else(|| s.meta.target().to_owned()),
                level: *s.meta.level(),
                target: s.meta.target(),
                at: match (s.meta.file(), s.meta.line()) {
                    (Some(file), Some(line)) => format!("{file}:{line}"),
                    (Some(file), None) => file.to_owned(),
                    _ => "an unknown place".to_owned(),
                },
            })
            .collect();
        // The same order each time, for people and tests.
        out.sort_by(|a, b| a.at.cmp(&b.at));
        out
    }

    /// Ends the window and logs one line per call site that had events
    /// suppressed, at their level (so a `RUST_LOG=error` still shows the
    /// count of suppressed errors).
    pub fn report(&self, window: Duration) {
        let secs = window.as_secs();
        for s in self.end_window() {
            let Suppressed {
                count,
                like,
                target,
                at,
                ..
            } = &s;
            if s.level == Level::ERROR {
                tracing::error!(target: SUMMARY_TARGET, suppressed = count,
                    "{count} more like `{like}` ({target}) at {at} in the last {secs} s");
            } else {
                tracing::warn!(target: SUMMARY_TARGET, suppressed = count,
                    "{count} more like `{like}` ({target}) at {at} in the last {secs} s");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Identifier, Site>> {
        // The counts stay usable even if a holder panicked.
        self.sites.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S: Subscriber> Filter<S> for FloodFilter {
    /// Every call site is of interest: the decision is per event.
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        // Greater is more verbose: INFO, DEBUG and TRACE pass uncounted.
        if *meta.level() > Level::WARN || meta.target() == SUMMARY_TARGET {
            return true;
        }
        let first_suppressed = {
            let mut sites = self.lock();
            let site = sites.entry(meta.callsite()).or_insert(Site {
                meta,
                written: 0,
                suppressed: 0,
                like: None,
            });
            if site.written < self.per_window {
                site.written += 1;
                return true;
            }
            site.suppressed += 1;
            site.like.is_none()
        };
        // Formatted outside the lock: a field's Debug may itself log.
        if first_suppressed {
            let mut message = Message(None);
            event.record(&mut message);
            if let Some(text) = message.0 {
                if let Some(site) = self.lock().get_mut(&meta.callsite()) {
                    site.like.get_or_insert(text);
                }
            }
        }
        false
    }
}

/// An event's `message` field, cut to [`QUOTED_CHARS`].
struct Message(Option<String>);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if field.name() == "message" {
            let text = format!("{value:?}");
            self.0 = Some(match text.char_indices().nth(QUOTED_CHARS) {
                Some((cut, _)) => format!("{}…", &text[..cut]),
                None => text,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    use super::*;

    /// Counts the events it is given.
    #[derive(Clone, Default)]
    struct Written(Arc<AtomicU64>);

    impl<S: Subscriber> Layer<S> for Written {
        fn on_event(&self, _event: &Event<'_>, _cx: tracing_subscriber::layer::Context<'_, S>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn warn_at_one_site(n: u64, what: &str) {
        for _ in 0..n {
            tracing::warn!(what, "the same warning about {what}");
        }
    }

    #[test]
    fn each_call_site_writes_its_share_per_window_and_the_rest_is_counted() {
        let flood = FloodFilter::new(10);
        let written = Written::default();
        let subscriber =
            tracing_subscriber::registry().with(written.clone().with_filter(flood.clone()));
        tracing::subscriber::with_default(subscriber, || {
            warn_at_one_site(25, "x");
            for _ in 0..3 {
                tracing::error!("another site");
            }
            for _ in 0..30 {
                tracing::info!("info is not limited");
            }
            // The summaries themselves are never suppressed.
            for _ in 0..20 {
                tracing::warn!(target: SUMMARY_TARGET, "a summary");
            }
        });
        assert_eq!(written.0.load(Ordering::SeqCst), 10 + 3 + 30 + 20);

        let report = flood.end_window();
        assert_eq!(report.len(), 1, "{report:?}");
        assert_eq!(report[0].count, 15);
        assert_eq!(report[0].like, "the same warning about x");
        assert_eq!(report[0].level, Level::WARN);
        assert!(report[0].at.contains("log_flood.rs:"), "{report:?}");

        // A new window: the site writes its share again.
        let subscriber =
            tracing_subscriber::registry().with(written.clone().with_filter(flood.clone()));
        tracing::subscriber::with_default(subscriber, || warn_at_one_site(12, "y"));
        assert_eq!(written.0.load(Ordering::SeqCst), 63 + 10);
        let report = flood.end_window();
        assert_eq!(report[0].count, 2);
        assert_eq!(report[0].like, "the same warning about y");
        assert!(flood.end_window().is_empty());
    }

    #[test]
    fn a_long_message_is_quoted_cut_on_a_character_boundary() {
        let flood = FloodFilter::new(0);
        let subscriber =
            tracing_subscriber::registry().with(Written::default().with_filter(flood.clone()));
        let long = "é".repeat(QUOTED_CHARS * 2);
        tracing::subscriber::with_default(subscriber, || tracing::error!("{long}"));
        let report = flood.end_window();
        assert_eq!(report[0].like.chars().count(), QUOTED_CHARS + 1);
        assert_eq!(report[0].level, Level::ERROR);
    }
}
