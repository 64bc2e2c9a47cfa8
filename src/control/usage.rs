//! Per-key usage and security events, as the shards report them (`crate::usage`), and refused
//! admin tokens: merged here, persisted and audited about once a second.
//!
//! Security events go into the audit trail throttled, so no caller can fill the disk: at most
//! one line per key (or, for wrong admin tokens, per client address) and event kind per
//! [`SECURITY_WINDOW`], carrying the count of events since the last line, and at most
//! [`SECURITY_LINES_PER_WINDOW_MAX`] such lines in all per window; events past that are counted
//! and go into later lines. The first event of a quiet key is written within a second.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{commit, Control};
use crate::audit::Entry;
use crate::credential::KeyId;
use crate::usage::{IdMap, KeyUsage, Report, UsageStore, REPORT_INTERVAL};

/// The throttle's window: one line per key per window.
pub const SECURITY_WINDOW: Duration = Duration::from_secs(60);
/// Most security-event lines in one window, all keys and addresses together.
pub const SECURITY_LINES_PER_WINDOW_MAX: u64 = 1000;
/// How often the control plane looks whether the usage thread has finished.
const PERSIST_POLL: Duration = Duration::from_millis(5);
/// Most client addresses tracked for wrong tokens; others are counted together.
const ADDRESSES_MAX: usize = 4096;

/// Counts of events per subject, written at most once per window per subject.
struct Throttle<K> {
    subjects: HashMap<K, Subject>,
}

struct Subject {
    last_line: Option<Instant>,
    pending: BTreeMap<&'static str, u64>,
}

impl<K: Eq + Hash + Clone> Throttle<K> {
    fn new() -> Throttle<K> {
        Throttle {
            subjects: HashMap::new(),
        }
    }

    fn record(&mut self, subject: K, event: &'static str, count: u64) {
        if count == 0 {
            return;
        }
        let entry = self.subjects.entry(subject).or_insert(Subject {
            last_line: None,
            pending: BTreeMap::new(),
        });
        *entry.pending.entry(event).or_default() += count;
    }

    /// The subjects whose lines are due, with their counts (a line per event kind), within
    /// `budget` lines; forgets
    /// subjects quiet for a whole window.
    fn due(&mut self, now: Instant, budget: &mut u64) -> Vec<(K, BTreeMap<&'static str, u64>)> {
        let mut lines = Vec::new();
        for (subject, state) in self.subjects.iter_mut() {
            let ready = state
                .last_line
                .is_none_or(|last| now.duration_since(last) >= SECURITY_WINDOW);
            let lines_needed = state.pending.len() as u64;
            if ready && lines_needed > 0 && *budget >= lines_needed {
                *budget -= lines_needed;
                state.last_line = Some(now);
                lines.push((subject.clone(), std::mem::take(&mut state.pending)));
            }
        }
        self.subjects.retain(|_, state| {
            !state.pending.is_empty()
                || state
                    .last_line
                    .is_some_and(|last| now.duration_since(last) < SECURITY_WINDOW)
        });
        lines
    }
}

/// A key's usage as the control plane keeps it: with whether it changed since it was last
/// persisted (so a merge marks it with one lookup, not a second set).
#[derive(Clone, Copy, Default)]
struct Kept {
    usage: KeyUsage,
    dirty: bool,
}

/// The control plane's usage table and throttles.
pub(super) struct State {
    table: RefCell<IdMap<Kept>>,
    /// The keys marked dirty, in the order they were.
    changed: RefCell<Vec<u64>>,
    store: RefCell<Option<UsageStore>>,
    security: RefCell<Throttle<u64>>,
    unauthorized: RefCell<Throttle<Option<IpAddr>>>,
    window_started: Cell<Option<Instant>>,
    window_lines: Cell<u64>,
}

impl State {
    pub(super) fn new((store, loaded): (UsageStore, IdMap<KeyUsage>)) -> State {
        State {
            table: RefCell::new(
                loaded
                    .into_iter()
                    .map(|(id, usage)| {
                        (
                            id,
                            Kept {
                                usage,
                                dirty: false,
                            },
                        )
                    })
                    .collect(),
            ),
            changed: RefCell::new(Vec::new()),
            store: RefCell::new(Some(store)),
            security: RefCell::new(Throttle::new()),
            unauthorized: RefCell::new(Throttle::new()),
            window_started: Cell::new(None),
            window_lines: Cell::new(0),
        }
    }

    /// Keys with usage recorded.
    pub(super) fn keys(&self) -> usize {
        self.table.borrow().len()
    }

    pub(super) fn get(&self, id: KeyId) -> Option<KeyUsage> {
        self.table.borrow().get(&id.0).map(|kept| kept.usage)
    }

    /// Merges one shard's report.
    pub(super) fn merge(&self, report: Report) {
        let mut table = self.table.borrow_mut();
        let mut changed = self.changed.borrow_mut();
        for (id, tally) in report.tallies {
            let kept = table.entry(id).or_default();
            if !kept.dirty {
                kept.dirty = true;
                changed.push(id);
            }
            let usage = &mut kept.usage;
            usage.last_used = usage.last_used.max(report.at);
            usage.valid += u64::from(tally.valid);
            usage.refused += u64::from(tally.refused);
        }
        let mut security = self.security.borrow_mut();
        for (id, events) in report.events {
            security.record(id, "revoked", u64::from(events.revoked));
            security.record(id, "address_denied", u64::from(events.address_denied));
            security.record(id, "tenant_mismatch", u64::from(events.tenant_mismatch));
        }
    }

    /// Counts a request refused for its admin token.
    pub(super) fn unauthorized(&self, client: Option<IpAddr>) {
        let mut throttle = self.unauthorized.borrow_mut();
        let subject = match client {
            Some(address)
                if throttle.subjects.len() < ADDRESSES_MAX
                    || throttle.subjects.contains_key(&Some(address)) =>
            {
                Some(address)
            }
            _ => None,
        };
        throttle.record(subject, "unauthorized", 1);
    }

    /// The security lines due now, within the window's budget.
    fn due_lines(&self, control: &Control, now: Instant) -> Vec<Entry> {
        if self
            .window_started
            .get()
            .is_none_or(|started| now.duration_since(started) >= SECURITY_WINDOW)
        {
            self.window_started.set(Some(now));
            self.window_lines.set(0);
        }
        let mut budget = SECURITY_LINES_PER_WINDOW_MAX - self.window_lines.get();
        let before = budget;
        let mut lines = Vec::new();
        for (id, counts) in self.security.borrow_mut().due(now, &mut budget) {
            let tenant = control.view.borrow().find(KeyId(id)).map(|r| r.tenant);
            for (event, count) in counts {
                let mut entry = Entry::now("verify", "security", event);
                entry.key = Some(id);
                entry.tenant = tenant.clone().filter(|t| !t.is_empty());
                entry.detail = Some(
                    serde_json::json!({ "count": count, "window_seconds": SECURITY_WINDOW.as_secs() }),
                );
                lines.push(entry);
            }
        }
        for (address, counts) in self.unauthorized.borrow_mut().due(now, &mut budget) {
            for (event, count) in counts {
                let mut entry = Entry::now("unknown", "control", event);
                entry.client = Some(address.map_or("other addresses".into(), |a| a.to_string()));
                entry.detail = Some(
                    serde_json::json!({ "count": count, "window_seconds": SECURITY_WINDOW.as_secs() }),
                );
                lines.push(entry);
            }
        }
        self.window_lines
            .set(self.window_lines.get() + (before - budget));
        lines
    }
}

/// Once per interval: writes the due security lines and persists the changed usage.
pub(super) async fn every_interval(control: Rc<Control>) {
    loop {
        glommio::timer::sleep(REPORT_INTERVAL).await;
        for entry in control.usage.due_lines(&control, Instant::now()) {
            commit::audit_later(&control, entry);
        }
        persist(&control).await;
    }
}

/// The store back from the usage thread, with how its write went.
type Persisted = (UsageStore, std::io::Result<()>);

async fn persist(control: &Control) {
    let state = &control.usage;
    let ids = std::mem::take(&mut *state.changed.borrow_mut());
    if ids.is_empty() {
        return;
    }
    let Some(mut store) = state.store.borrow_mut().take() else {
        return; // an earlier write failed: counting goes on in memory
    };
    let (changed, all) = {
        let mut table = state.table.borrow_mut();
        let mut changed = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(kept) = table.get_mut(&id) {
                kept.dirty = false;
                changed.push((id, kept.usage));
            }
        }
        let all = store.wants_rewrite(table.len()).then(|| {
            table
                .iter()
                .map(|(id, kept)| (*id, kept.usage))
                .collect::<Vec<_>>()
        });
        (changed, all)
    };
    // Its own thread, not the executor's blocking pool: that pool makes the delta log durable,
    // and a revocation's fsync must not wait behind a megabyte of usage figures.
    let slot: Arc<Mutex<Option<Persisted>>> = Arc::default();
    let filled = slot.clone();
    let spawned = std::thread::Builder::new()
        .name("keyward-usage".into())
        .spawn(move || {
            let result = match all {
                Some(all) => store.rewrite(&all),
                None => store.append(&changed),
            };
            *filled.lock().unwrap_or_else(|e| e.into_inner()) = Some((store, result));
        });
    if let Err(error) = spawned {
        crate::log_error!("cannot start a thread to persist key usage: {error}; usage is counted in memory only until a restart");
        return;
    }
    let (store, result) = loop {
        if let Some(done) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
            break done;
        }
        glommio::timer::sleep(PERSIST_POLL).await;
    };
    match result {
        Ok(()) => *state.store.borrow_mut() = Some(store),
        Err(error) => crate::log_error!(
            "cannot persist key usage: {error}; usage is counted in memory only until a restart"
        ),
    }
}
