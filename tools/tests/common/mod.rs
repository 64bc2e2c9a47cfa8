//! What the keyward-ctl tests share: running keyward-ctl, and a real keyward server beside it.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub fn ctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyward-ctl"))
        .args(args)
        .output()
        .unwrap()
}

/// `keyward-ctl keys generate` of `count` keys into `data`, the key file at `keys`.
pub fn generate_keys(data: &Path, keys: &Path, count: usize) -> Output {
    ctl(&[
        "keys",
        "generate",
        "--data-dir",
        data.to_str().unwrap(),
        "--count",
        &count.to_string(),
        "--out-keys",
        keys.to_str().unwrap(),
    ])
}

pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The server binary, built beside keyward-ctl by `cargo test --workspace`.
pub fn server_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_keyward-ctl")).with_file_name("keyward");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// A running server: the child, its verify address, its control address, and its metrics
/// address when it has a metrics listener.
pub struct Server(pub Child, pub String, pub String, pub Option<String>);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn serve(data_dir: &Path) -> Server {
    serve_with_metrics(data_dir, "")
}

/// `keyward serve` on `data_dir` with 2 shards on free loopback ports, the metrics listener at
/// `metrics` ("" for none).
fn serve_command(data_dir: &Path, metrics: &str) -> Command {
    let mut command = Command::new(server_binary());
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
        ])
        .args(["--metrics-listen", metrics, "--shards", "2", "--data-dir"])
        .arg(data_dir);
    command
}

/// `serve`, with the metrics listener at `metrics` ("" for none).
pub fn serve_with_metrics(data_dir: &Path, metrics: &str) -> Server {
    let mut child = serve_command(data_dir, metrics)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let after = |line: &str, marker: &str| {
        line.split(marker)
            .nth(1)
            .map(|rest| rest.split_whitespace().next().unwrap().to_string())
    };
    let mut verify = None;
    let mut control = None;
    let mut metrics_address = None;
    loop {
        let line = lines.next().expect("server exited").unwrap();
        verify = verify.or(after(&line, "verify port listening on "));
        control = control.or(after(&line, "control port listening on "));
        metrics_address = metrics_address.or(after(&line, "metrics listening on "));
        if line.contains("press Ctrl-C to stop") {
            break;
        }
    }
    Server(
        child,
        verify.expect("verify port line"),
        control.expect("control port line"),
        metrics_address,
    )
}

/// Runs `keyward serve` on `data_dir` expecting it to refuse to start: its stderr. A server that
/// is still running after 20 s is killed and the test fails.
pub fn serve_expecting_refusal(data_dir: &Path) -> String {
    let mut child = serve_command(data_dir, "")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "keyward started on {} instead of refusing",
                data_dir.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    stderr
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
