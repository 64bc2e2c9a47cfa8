//! `keyward doctor`: is this host fit to run keyward, and fit to run it fast? Each check is a
//! verdict — pass, warn or fail — with what was found and, when it is not a pass, the remedy in
//! one line. `keyward serve` runs the same checks at start and refuses on a fail with the same
//! words (docs/DEPLOY.md lists every check).
//!
//! The io_uring checks probe the kernel with the data plane's own set-up code (`uring.rs`); the
//! host checks read `/proc` and `/sys` (`host.rs`). Nothing here changes the host.

mod host;
mod uring;

pub use host::{files_needed, parse_cpu_list};

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::ServerConfig;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// As keyward needs it and as makes it fast.
    Pass,
    /// keyward runs, but slower or less predictably than it could, or with less headroom.
    Warn,
    /// keyward cannot run like this: `serve` refuses to start.
    Fail,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// One check's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// A stable name, for fleet tooling (`--json`).
    pub name: &'static str,
    pub verdict: Verdict,
    /// What was found.
    pub found: String,
    /// What to do about it, in one line; empty on a pass.
    pub remedy: String,
}

impl Check {
    fn pass(name: &'static str, found: impl Into<String>) -> Check {
        Check {
            name,
            verdict: Verdict::Pass,
            found: found.into(),
            remedy: String::new(),
        }
    }

    fn warn(name: &'static str, found: impl Into<String>, remedy: impl Into<String>) -> Check {
        Check {
            name,
            verdict: Verdict::Warn,
            found: found.into(),
            remedy: remedy.into(),
        }
    }

    fn fail(name: &'static str, found: impl Into<String>, remedy: impl Into<String>) -> Check {
        Check {
            name,
            verdict: Verdict::Fail,
            found: found.into(),
            remedy: remedy.into(),
        }
    }

    /// `NAME: FOUND; REMEDY` — the words `serve` refuses with and the log's warning lines.
    pub fn sentence(&self) -> String {
        if self.remedy.is_empty() {
            format!("{}: {}", self.name, self.found)
        } else {
            format!("{}: {}; {}", self.name, self.found, self.remedy)
        }
    }
}

/// Every check, in the order they are shown, for a server started with `config`.
pub fn run(config: &ServerConfig) -> Vec<Check> {
    let mut checks = Vec::new();
    checks.push(host::kernel());
    checks.extend(uring::checks());
    checks.push(host::locked_memory(config));
    checks.push(host::open_files(config));
    checks.push(host::data_directory(config));
    let cpus = crate::server::choose_cpus(config);
    checks.push(host::shard_cpus(config, &cpus));
    checks.push(host::control_cpus(config, &cpus));
    checks.push(host::isolation(&cpus));
    checks.push(host::smt(&cpus));
    checks.push(host::numa(config, &cpus));
    checks.push(host::governor(&cpus));
    checks.push(host::huge_pages());
    checks.push(host::somaxconn(config));
    checks.push(host::clock_source());
    checks
}

/// Checks whose warning is about speed, not about whether keyward can do its work: `serve`
/// sums these up in one line instead of a warning each (most hosts have some).
pub const TUNING: [&str; 9] = [
    "kernel",
    "io_uring defer_taskrun",
    "io_uring registered ring",
    "cpu isolation",
    "smt siblings",
    "numa",
    "cpu frequency",
    "transparent huge pages",
    "clock source",
];

/// What `serve` runs before it touches anything: `Err` with every fail's sentence (joined by
/// "; and "), else the warnings, which it logs once it serves.
pub fn preflight(config: &ServerConfig) -> Result<Vec<Check>, String> {
    let checks = run(config);
    let fails: Vec<String> = checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .map(Check::sentence)
        .collect();
    if !fails.is_empty() {
        return Err(format!(
            "this host cannot run keyward as configured: {} (`keyward doctor` shows every check)",
            fails.join("; and ")
        ));
    }
    Ok(checks
        .into_iter()
        .filter(|c| c.verdict == Verdict::Warn)
        .collect())
}

/// Logs `serve`'s start-up warnings: each one that concerns capacity or correctness, and the
/// tuning ones summed up in one line.
pub fn log_warnings(warnings: &[Check]) {
    let mut tuning = Vec::new();
    for warning in warnings {
        if TUNING.contains(&warning.name) {
            tuning.push(warning.name);
        } else {
            crate::log_warn!("{}", warning.sentence());
        }
    }
    if !tuning.is_empty() {
        crate::log_info!(
            "host tuning: {} could be better for latency (`keyward doctor` says how)",
            tuning.join(", ")
        );
    }
}

/// The worst verdict among `checks` (a pass when there are none).
pub fn worst(checks: &[Check]) -> Verdict {
    checks
        .iter()
        .map(|c| c.verdict)
        .max()
        .unwrap_or(Verdict::Pass)
}

/// The report a person reads: one line per check, the remedy on the next for a warn or fail,
/// and a count at the end.
pub fn render_text(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for check in checks {
        let _ = writeln!(
            out,
            "{}  {:width$}  {}",
            check.verdict.name(),
            check.name,
            check.found
        );
        if !check.remedy.is_empty() {
            let _ = writeln!(out, "      {:width$}  -> {}", "", check.remedy);
        }
    }
    let count = |v: Verdict| checks.iter().filter(|c| c.verdict == v).count();
    let _ = writeln!(
        out,
        "{} pass, {} warn, {} fail",
        count(Verdict::Pass),
        count(Verdict::Warn),
        count(Verdict::Fail)
    );
    out
}

/// The report for fleet tooling: `{"verdict": worst, "checks": [{name, verdict, found, remedy}]}`.
pub fn render_json(checks: &[Check]) -> String {
    let report = serde_json::json!({
        "verdict": worst(checks),
        "checks": checks,
    });
    report.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_verdict_decides_and_a_fail_names_itself_in_the_refusal() {
        let checks = vec![
            Check::pass("a", "fine"),
            Check::warn("b", "slow", "make it fast"),
        ];
        assert_eq!(worst(&checks), Verdict::Warn);
        assert_eq!(checks[1].sentence(), "b: slow; make it fast");
        let text = render_text(&checks);
        assert!(text.contains("warn  b  slow\n"), "{text}");
        assert!(text.contains("-> make it fast"), "{text}");
        assert!(text.ends_with("1 pass, 1 warn, 0 fail\n"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&render_json(&checks)).unwrap();
        assert_eq!(json["verdict"], "warn");
        assert_eq!(json["checks"][1]["remedy"], "make it fast");
    }
}
