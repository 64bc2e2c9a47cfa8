//! Shared helpers for the integration tests: build a data directory with known keys, start the
//! real `keyward` binary on a loopback port, stop it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use keyward::credential::{Hasher, Prefixes};
use keyward::datadir::DataDir;
use keyward::endpoint::Endpoint;
use keyward::keyset::{self, ExpectedKey};
use keyward::record::{KeyRecord, UnixSeconds};
use keyward::snapshot;

/// Writes `records` as the table of a fresh data directory and returns its pepper's hasher.
pub fn data_dir_with(path: &Path, records: impl FnOnce(&Hasher) -> Vec<KeyRecord>) -> Hasher {
    let data_dir = DataDir::open_or_create(path).unwrap();
    let hasher = Hasher::new(data_dir.pepper());
    let records = records(&hasher);
    let bytes = snapshot::encode(&records, 0, UnixSeconds::now()).unwrap();
    snapshot::write_atomic(&data_dir.snapshot_path(), &bytes).unwrap();
    hasher
}

/// A data directory holding a generated key set; returns the credentials and expected answers.
pub fn generated_data_dir(path: &Path, count: usize) -> Vec<ExpectedKey> {
    let mut keys = Vec::new();
    data_dir_with(path, |hasher| {
        let set = keyset::generate(count, hasher, &Prefixes::default(), UnixSeconds::now());
        keys = set.keys;
        set.records
    });
    keys
}

/// A running `keyward serve` child process, killed when dropped.
pub struct Server {
    pub child: Child,
    /// The verify port's TCP address (unspecified when it listens on a Unix socket).
    pub address: SocketAddr,
    pub endpoint: Endpoint,
    pub control: SocketAddr,
    /// The metrics listener (`/metrics`, `/healthz`, `/readyz`), when the server has one.
    pub metrics: Option<SocketAddr>,
    pub stdout: BufReader<ChildStdout>,
    pub data_dir: PathBuf,
}

pub fn keyward_command(data_dir: &Path, extra: &[&str]) -> Command {
    keyward_command_at(data_dir, "127.0.0.1:0", "127.0.0.1:0", extra)
}

/// `keyward serve` on given verify and control addresses.
pub fn keyward_command_at(data_dir: &Path, listen: &str, control: &str, extra: &[&str]) -> Command {
    // KEYWARD_BIN runs the tests against another build of the server (an older release, say).
    let binary = std::env::var_os("KEYWARD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_keyward")));
    let mut command = Command::new(binary);
    command.arg("serve").arg("--data-dir").arg(data_dir).args([
        "--listen",
        listen,
        "--control",
        control,
    ]);
    if std::env::var_os("KEYWARD_BIN").is_none() && !extra.contains(&"--metrics-listen") {
        // Any free port, so servers of tests running at once do not contend for 7502 (an
        // older build under KEYWARD_BIN has no metrics listener).
        command.args(["--metrics-listen", "127.0.0.1:0"]);
    }
    if !extra.contains(&"--busy-poll-us") {
        // No busy polling, so tests on two shared CPUs do not starve each other (the old name
        // of the flag, so KEYWARD_BIN may be an older build).
        command.args(["--spin-before-park-us", "0"]);
    }
    command
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

impl Server {
    /// Starts the server with 2 shards (unless `extra` says otherwise) and waits until it listens.
    // The child is waited for by `Drop` once it is inside `Server`, and before every panic.
    #[allow(clippy::zombie_processes)]
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        let mut args: Vec<&str> = extra.to_vec();
        if !extra.contains(&"--shards") {
            args.extend(["--shards", "2"]);
        }
        Server::start_command(keyward_command(data_dir, &args), data_dir)
    }

    /// Starts a prepared `keyward serve` command and waits until it listens.
    #[allow(clippy::zombie_processes)]
    pub fn start_command(mut command: Command, data_dir: &Path) -> Server {
        let mut child = command.spawn().expect("start keyward");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut line = String::new();
        let mut verify = None;
        let mut control = None;
        let mut metrics = None;
        loop {
            line.clear();
            let read = stdout.read_line(&mut line).unwrap();
            if read == 0 {
                let mut stderr = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                let status = child.wait().unwrap();
                panic!("keyward exited ({status}) before listening: {stderr}");
            }
            let word_after = |marker: &str| {
                line.split(marker)
                    .nth(1)
                    .map(|rest| rest.split_whitespace().next().unwrap().to_string())
            };
            if let Some(found) = word_after("verify port listening on ") {
                verify = Some(found.parse::<Endpoint>().unwrap());
            }
            if let Some(found) = word_after("control port listening on ") {
                control = Some(found.parse::<SocketAddr>().unwrap());
            }
            if let Some(found) = word_after("metrics listening on ") {
                metrics = Some(found.parse::<SocketAddr>().unwrap());
            }
            if line.contains("press Ctrl-C to stop") {
                let endpoint = verify.expect("the verify port line comes first");
                return Server {
                    child,
                    address: endpoint
                        .tcp()
                        .unwrap_or_else(|| "0.0.0.0:0".parse().unwrap()),
                    endpoint,
                    control: control.expect("the control port line comes first"),
                    metrics,
                    stdout,
                    data_dir: data_dir.to_path_buf(),
                };
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("keyward did not start listening in time");
            }
        }
    }

    /// Sends SIGTERM and returns the exit status and the rest of stdout. A server that has not
    /// stopped within 30 s is killed and the test fails (so a shutdown bug cannot hang CI).
    pub fn stop(mut self) -> (ExitStatus, String) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("keyward did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        (status, rest)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// An admin client holding this server's token.
    pub fn admin(&self) -> keyward::admin::AdminClient {
        let token = std::fs::read_to_string(self.data_dir.join("admin.token")).unwrap();
        let admin = keyward::admin::AdminClient::connect(self.control, token.trim()).unwrap();
        // A change not acknowledged within a minute is a hang: fail instead of waiting 10 min.
        admin.set_timeout(Some(Duration::from_secs(60))).unwrap();
        admin
    }

    /// Kills the server with SIGKILL (no shutdown at all) and reaps it.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Runs the server expecting it to refuse to start; returns (exit status, stderr).
pub fn start_expecting_failure(data_dir: &Path, extra: &[&str]) -> (ExitStatus, String) {
    refusal(keyward_command(data_dir, extra))
}

/// Runs a prepared `keyward serve` expecting it to refuse to start: (exit status, stderr). A
/// server still running after 30 s started instead: it is killed and the test fails (rather than
/// waiting for it forever).
pub fn refusal(mut command: Command) -> (ExitStatus, String) {
    let mut child = command.stdout(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("keyward started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

/// Sets `command`'s open-files limit (soft and hard) for the process it starts.
pub fn with_file_limits(command: &mut Command, soft: u64, hard: u64) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child before exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Resident memory of a process, in KiB.
pub fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap()
}

/// One HTTP/1.1 request; returns the status code and the body.
pub fn http(address: SocketAddr, request: &str) -> (u16, String) {
    try_http(address, request).expect("connect")
}

/// [`http`], or `None` when nothing listens at `address` (yet).
pub fn try_http(address: SocketAddr, request: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    // Read what comes until the server closes (a reset after a refused request included).
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(read) = stream.read(&mut chunk) {
        if read == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..read]);
    }
    let response = String::from_utf8_lossy(&bytes).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Some((status, body))
}

pub fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    http(
        address,
        &format!("GET {path} HTTP/1.1\r\nHost: keyward\r\nConnection: close\r\n\r\n"),
    )
}

/// Whether `program` can be run; when it cannot, the test skips (saying so) unless
/// KEYWARD_REQUIRE_BASELINES is set, as `.ci/run` sets it after installing `package`.
pub fn installed(program: &str, package: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("KEYWARD_REQUIRE_BASELINES").is_none(),
            "{program} is not installed (apt-get install {package})"
        );
        eprintln!("skipping: {program} is not installed (apt-get install {package})");
    }
    found
}

/// A free loopback port (closed again at once: the process that binds it next may race).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The write end of a pipe whose reader has already gone, as under `| head` once head has read
/// enough. (`std::io::pipe` would do, but it is newer than the supported Rust.)
pub fn closed_pipe() -> std::process::Stdio {
    use std::os::fd::FromRawFd;
    let mut ends = [0; 2];
    // SAFETY: pipe2 fills both descriptors; each is then owned exactly once.
    assert_eq!(
        unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) },
        0
    );
    drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(ends[0]) });
    std::process::Stdio::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(ends[1]) })
}
