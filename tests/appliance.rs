//! The appliance around the server: `keyward doctor` against what this machine is, `keyward
//! config check|print`, the packaged configuration file, the man pages and completions, and the
//! systemd notifications (READY=1, STATUS=, WATCHDOG=1, STOPPING=1) on a real notify socket.

mod common;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use keyward::client::Client;
use keyward::config::ServerConfig;

fn keyward() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keyward"))
}

/// Runs `command` with its open-files limit (soft and hard) set to `files`.
fn with_file_limit(command: &mut Command, files: u64) -> &mut Command {
    common::with_file_limits(command, files, files)
}

fn doctor_json(output: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("doctor --json printed {text:?}: {e}"))
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check named {name:?} in {report}"))
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

#[test]
fn doctor_says_what_this_machine_is() {
    let directory = tempfile::tempdir().unwrap();
    let output = keyward()
        .args(["doctor", "--json", "--shards", "1", "--data-dir"])
        .arg(directory.path().join("data"))
        .output()
        .unwrap();
    let report = doctor_json(&output);
    let verdicts: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["verdict"].as_str().unwrap())
        .collect();
    let failed = verdicts.contains(&"fail");
    assert_eq!(output.status.success(), !failed, "exit code vs {report}");
    let worst = if failed {
        "fail"
    } else if verdicts.contains(&"warn") {
        "warn"
    } else {
        "pass"
    };
    assert_eq!(report["verdict"], worst, "{report}");

    // This machine runs every test server on io_uring: every probe of it passes.
    for name in [
        "io_uring",
        "io_uring ext_arg",
        "io_uring buffer ring",
        "io_uring multishot accept",
        "io_uring multishot receive",
    ] {
        assert_eq!(check(&report, name)["verdict"], "pass", "{name}: {report}");
    }
    let release = read_trimmed("/proc/sys/kernel/osrelease").unwrap();
    let kernel = check(&report, "kernel");
    assert!(
        kernel["found"].as_str().unwrap().contains(&release),
        "{kernel}"
    );
    assert_eq!(check(&report, "data directory")["verdict"], "pass");

    // Each host setting's verdict follows what the files say.
    let huge = check(&report, "transparent huge pages");
    match read_trimmed("/sys/kernel/mm/transparent_hugepage/enabled") {
        Some(text) if text.contains("[always]") => assert_eq!(huge["verdict"], "warn", "{huge}"),
        _ => assert_eq!(huge["verdict"], "pass", "{huge}"),
    }
    let backlog = check(&report, "listen backlog");
    if let Some(max) = read_trimmed("/proc/sys/net/core/somaxconn") {
        let max: u32 = max.parse().unwrap();
        let expected = if max >= 1024 { "pass" } else { "warn" };
        assert_eq!(backlog["verdict"], expected, "{backlog}");
        assert!(backlog["found"]
            .as_str()
            .unwrap()
            .contains(&max.to_string()));
    }
    let isolation = check(&report, "cpu isolation");
    let isolated = read_trimmed("/sys/devices/system/cpu/isolated").unwrap_or_default();
    if isolated.is_empty() {
        assert_eq!(isolation["verdict"], "warn", "{isolation}");
        assert!(!isolation["remedy"].as_str().unwrap().is_empty());
    }
    let clock = check(&report, "clock source");
    if let Some(source) =
        read_trimmed("/sys/devices/system/clocksource/clocksource0/current_clocksource")
    {
        assert!(
            clock["found"].as_str().unwrap().starts_with(&source),
            "{clock}"
        );
        let fast = [
            "tsc",
            "kvm-clock",
            "arch_sys_counter",
            "hyperv_clocksource_tsc_page",
        ];
        let expected = if fast.contains(&source.as_str()) {
            "pass"
        } else {
            "warn"
        };
        assert_eq!(clock["verdict"], expected, "{clock}");
    }
    // A warn or fail always says what to do; a pass never needs to.
    for check in report["checks"].as_array().unwrap() {
        let remedy = check["remedy"].as_str().unwrap();
        assert_eq!(check["verdict"] == "pass", remedy.is_empty(), "{check}");
    }

    // The text report says the same, one line per check and the count.
    let text = keyward()
        .args(["doctor", "--shards", "1", "--data-dir"])
        .arg(directory.path().join("data"))
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("io_uring multishot receive"), "{text}");
    assert!(text.trim_end().ends_with(" fail"), "{text}");
}

#[test]
fn a_lowered_file_limit_warns_then_fails_and_serve_refuses_with_the_same_words() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("data");
    let doctor = |files: u64| {
        let mut command = keyward();
        command
            .args(["doctor", "--json", "--shards", "1", "--data-dir"])
            .arg(&data);
        with_file_limit(&mut command, files).output().unwrap()
    };
    // 1 shard x 4096 connections need about 4.4k descriptors: 1000 serves fewer (a warn).
    let output = doctor(1000);
    let report = doctor_json(&output);
    let files = check(&report, "open files");
    assert_eq!(files["verdict"], "warn", "{files}");
    assert!(files["found"]
        .as_str()
        .unwrap()
        .contains("soft 1000 hard 1000"));
    assert!(files["remedy"].as_str().unwrap().contains("LimitNOFILE="));
    assert!(output.status.success(), "a warn is not a failure");

    // 40 cannot even hold the server's own files: a fail, exit 1.
    let output = doctor(40);
    let report = doctor_json(&output);
    let files = check(&report, "open files");
    assert_eq!(files["verdict"], "fail", "{files}");
    assert_eq!(output.status.code(), Some(1));

    let mut serve = common::keyward_command(&data, &["--shards", "1"]);
    let refused = with_file_limit(&mut serve, 40).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let sentence = format!(
        "open files: {}; {}",
        files["found"].as_str().unwrap(),
        files["remedy"].as_str().unwrap()
    );
    assert!(
        stderr.contains(&sentence),
        "serve said {stderr:?}, doctor {sentence:?}"
    );
    assert!(!data.exists(), "a refused start touched the data directory");
}

#[test]
fn config_check_names_what_is_wrong_and_print_shows_the_effective_configuration() {
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("keyward.toml");
    let run = |args: &[&str]| {
        keyward()
            .args(args)
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap()
    };

    std::fs::write(&file, "shards = 2\nshardz = 3\n").unwrap();
    let output = run(&["config", "check"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown field `shardz`"), "{stderr}");

    std::fs::write(&file, "connections_per_shard_max = 0\n").unwrap();
    let output = run(&["config", "check"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("connections_per_shard_max must be"),
        "{stderr}"
    );

    std::fs::write(&file, "shards = 2\nlog_level = \"debug\"\n").unwrap();
    let output = run(&["config", "check"]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("valid"));

    // print: the defaults, then the file, then the flags; it parses back to the same thing.
    let output = run(&["config", "print", "--listen", "127.0.0.1:9500"]);
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    let parsed: ServerConfig = toml::from_str(&printed).unwrap();
    let expected = ServerConfig {
        shards: 2,
        log_level: keyward::logging::Level::Debug,
        listen: "127.0.0.1:9500".parse().unwrap(),
        ..ServerConfig::default()
    };
    assert_eq!(parsed, expected);
    for line in ServerConfig::default().to_toml().lines() {
        let key = line.split(" = ").next().unwrap();
        assert!(
            printed.contains(&format!("{key} = ")),
            "{key} missing from {printed}"
        );
    }
}

fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/package")
}

#[test]
fn the_packaged_configuration_documents_every_setting_with_its_true_default() {
    let text = std::fs::read_to_string(package_dir().join("keyward.toml")).unwrap();
    let packaged: ServerConfig = toml::from_str(&text).unwrap();
    let expected = ServerConfig {
        data_dir: "/var/lib/keyward".into(),
        ..ServerConfig::default()
    };
    assert_eq!(
        packaged, expected,
        "the package changes only the data directory"
    );
    // Uncommenting every "# name = value" line changes nothing: each documented default is true.
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(key, _)| {
                    key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                }) =>
            {
                format!("{rest}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    let all: ServerConfig = toml::from_str(&uncommented)
        .unwrap_or_else(|e| panic!("the documented defaults do not parse: {e}"));
    assert_eq!(all, expected, "a documented default is not the real one");
    // And every setting there is, is documented.
    let documented: toml::Table = toml::from_str(&uncommented).unwrap();
    let every: toml::Table = toml::from_str(&ServerConfig::default().to_toml()).unwrap();
    for key in every.keys() {
        assert!(
            documented.contains_key(key),
            "{key} is not in the packaged keyward.toml"
        );
    }
}

#[test]
fn the_man_pages_and_completions_are_the_clis() {
    let directory = tempfile::tempdir().unwrap();
    let status = keyward()
        .arg("generate-assets")
        .arg(directory.path())
        .status()
        .unwrap();
    assert!(status.success());
    if let Err(drift) = keyward::assets::compare(directory.path(), &package_dir(), "keyward") {
        panic!("{drift}: run tools/package/generate-assets.sh");
    }
    let page = std::fs::read_to_string(directory.path().join("man/keyward-doctor.1")).unwrap();
    assert!(page.contains("\\-\\-json"), "{page}");
}

/// A notify socket like systemd's: reads `NAME=value` datagrams.
struct Notifications {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Notifications {
    fn bind(directory: &Path) -> Notifications {
        let path = directory.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        Notifications { socket, path }
    }

    /// The next datagram's lines, or `None` after `timeout`.
    fn next(&self, timeout: Duration) -> Option<Vec<String>> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buffer = [0u8; 4096];
        let n = self.socket.recv(&mut buffer).ok()?;
        Some(
            String::from_utf8_lossy(&buffer[..n])
                .lines()
                .map(str::to_string)
                .collect(),
        )
    }

    /// Datagrams until `deadline`, each with when it came.
    fn until(&self, deadline: Instant) -> Vec<(Instant, Vec<String>)> {
        let mut got = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if let Some(lines) = self.next(left.max(Duration::from_millis(1))) {
                got.push((Instant::now(), lines));
            }
        }
        got
    }
}

fn pings(got: &[(Instant, Vec<String>)]) -> Vec<Instant> {
    got.iter()
        .filter(|(_, lines)| lines.iter().any(|l| l == "WATCHDOG=1"))
        .map(|(at, _)| *at)
        .collect()
}

/// One of a process's threads: its id, its name and the CPUs it may run on
/// (`Cpus_allowed_list`).
#[derive(Debug)]
struct Thread {
    id: i32,
    name: String,
    cpus: String,
}

/// Every thread of process `pid`, from /proc.
fn threads(pid: u32) -> Vec<Thread> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap();
        let path = task.path();
        let (Ok(name), Ok(status)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("status")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let cpus = status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string();
        threads.push(Thread {
            id: task.file_name().to_str().unwrap().parse().unwrap(),
            name: name.trim().to_string(),
            cpus,
        });
    }
    threads
}

/// The id of the server's first thread named `name` (threads a thread starts take its name, so
/// the one that started the others has the lowest id).
fn thread_id(pid: u32, name: &str) -> i32 {
    threads(pid)
        .into_iter()
        .filter(|thread| thread.name == name)
        .map(|thread| thread.id)
        .min()
        .unwrap_or_else(|| panic!("no thread {name} in process {pid}"))
}

/// Stops one thread of `child` alone with ptrace (the rest run on) until [`resume_thread`].
fn stop_thread(child: &mut std::process::Child, thread: i32) {
    // SAFETY: ptrace on a thread of our own child, waited for and detached by resume_thread.
    let seized = unsafe { libc::ptrace(libc::PTRACE_SEIZE, thread, 0, 0) };
    if seized != 0 {
        let error = std::io::Error::last_os_error();
        let _ = child.kill();
        let _ = child.wait();
        panic!("cannot stop a thread with ptrace ({error}): run the tests as root or allow ptrace");
    }
    // SAFETY: as above.
    unsafe {
        assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, thread, 0, 0), 0);
        let mut status = 0;
        assert_eq!(libc::waitpid(thread, &mut status, libc::__WALL), thread);
    }
}

fn resume_thread(thread: i32) {
    // SAFETY: detaching a thread stop_thread seized lets it run again.
    unsafe { libc::ptrace(libc::PTRACE_DETACH, thread, 0, 0) };
}

/// Stops `thread` for 2.5 s: the pings stop and the status names `stalled`; resumed, the pings
/// come back.
fn watchdog_stops_while_stopped(
    child: &mut std::process::Child,
    notify: &Notifications,
    thread: i32,
    stalled: &str,
) {
    stop_thread(child, thread);
    let got = notify.until(Instant::now() + Duration::from_millis(2500));
    let stalled_at = Instant::now();
    // One ping may have been decided before the stop; none after the next look.
    let during = pings(&got);
    assert!(
        during.len() <= 1,
        "{} pings while {stalled} was stopped",
        during.len()
    );
    let expected = format!("STATUS=stalled: {stalled} stopped ticking");
    assert!(
        got.iter()
            .flat_map(|(_, lines)| lines)
            .any(|l| l == &expected),
        "{expected} not in {got:?}"
    );
    resume_thread(thread);
    let got = notify.until(stalled_at + Duration::from_millis(2500));
    assert!(
        pings(&got).len() >= 2,
        "pings resume once {stalled} runs: {got:?}"
    );
}

#[test]
fn ready_comes_once_the_verify_port_answers_and_the_watchdog_stops_when_a_shard_or_the_control_plane_stalls(
) {
    let directory = tempfile::tempdir().unwrap();
    let notify = Notifications::bind(directory.path());
    let verify: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let data = directory.path().join("data");
    let mut command = common::keyward_command_at(
        &data,
        &verify.to_string(),
        "127.0.0.1:0",
        &["--shards", "2"],
    );
    command
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = command.spawn().unwrap();
    let pid = child.id();

    // STATUS lines while it starts, then READY=1: at that moment the verify port answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut statuses = Vec::new();
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("READY=1 within 30 s");
        let lines = notify.next(left).expect("READY=1 within 30 s");
        if lines.iter().any(|l| l == "READY=1") {
            let mut client = Client::connect(verify).expect("the verify port accepts at READY=1");
            client.ping().expect("the verify port answers at READY=1");
            assert!(
                lines.iter().any(|l| l.starts_with("STATUS=serving 0 keys")),
                "{lines:?}"
            );
            break;
        }
        statuses.extend(lines);
    }
    assert!(
        statuses.iter().any(|l| l.starts_with("STATUS=starting")),
        "{statuses:?}"
    );

    // WATCHDOG_USEC = 1 s: a ping every half second while every shard ticks.
    let got = notify.until(Instant::now() + Duration::from_millis(2300));
    let healthy = pings(&got);
    assert!(
        (3..=6).contains(&healthy.len()),
        "{} pings in 2.3 s",
        healthy.len()
    );
    // Half of WATCHDOG_USEC apart on average; none late enough to let the watchdog fire.
    let mean = (healthy[healthy.len() - 1] - healthy[0]) / (healthy.len() as u32 - 1);
    assert!(
        mean >= Duration::from_millis(400) && mean <= Duration::from_millis(650),
        "pings {mean:?} apart on average"
    );
    for pair in healthy.windows(2) {
        assert!(
            pair[1] - pair[0] < Duration::from_secs(1),
            "a ping came late"
        );
    }

    // Stop one shard's thread alone, then the control plane's: each time the pings stop and
    // the status says what stopped.
    let shard = thread_id(pid, "keyward-shard-1");
    watchdog_stops_while_stopped(&mut child, &notify, shard, "shard(s) [1]");
    let control = thread_id(pid, "keyward-control");
    watchdog_stops_while_stopped(&mut child, &notify, control, "the control plane");

    // SIGTERM: STOPPING=1, and a clean exit.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let got = notify.until(Instant::now() + Duration::from_secs(3));
    assert!(
        got.iter().flat_map(|(_, l)| l).any(|l| l == "STOPPING=1"),
        "{got:?}"
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn output_to_a_reader_that_has_gone_ends_quietly_not_in_a_panic() {
    //! `keyward config print | head -1` panicked: println! on a closed pipe.
    let output = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["config", "print"])
        .stdout(common::closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(keyward::stdout::EXIT_READER_GONE),
        "{stderr}"
    );
    assert_eq!(stderr, "");
}

#[test]
fn threads_that_are_not_shards_stay_off_the_shards_cpus() {
    let allowed = core_affinity::get_core_ids().unwrap_or_default();
    if allowed.len() < 2 {
        eprintln!(
            "skipped: needs two CPUs, this process may use {}",
            allowed.len()
        );
        return;
    }
    let (shard_cpu, other_cpu) = (allowed[0].id, allowed[1].id);
    let shard = shard_cpu.to_string();
    let other = other_cpu.to_string();
    // By default the control plane takes the CPUs the shards leave; given, the ones it is given
    // (here the same CPU both ways, the only other one there is).
    for extra in [vec![], vec!["--control-cpus", other.as_str()]] {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--shards", "1", "--cpus", shard.as_str()];
        args.extend(extra.iter().copied());
        let server = common::Server::start(dir.path(), &args);
        let mut client = Client::connect(server.address).unwrap();
        client.ping().unwrap();
        let threads = threads(server.child.id());
        let names: Vec<&str> = threads.iter().map(|thread| thread.name.as_str()).collect();
        assert!(names.contains(&"keyward-shard-0"), "{threads:?}");
        assert!(names.contains(&"keyward-control"), "{threads:?}");
        for thread in &threads {
            if thread.name.starts_with("iou-") {
                continue; // the kernel's io_uring workers follow the ring, not us
            }
            let expected = if thread.name.starts_with("keyward-shard") {
                &shard
            } else {
                &other
            };
            assert_eq!(
                &thread.cpus, expected,
                "{} with {args:?}: {threads:?}",
                thread.name
            );
        }
        let (status, _) = server.stop();
        assert!(status.success());
    }
}
