//! The host checks: limits, the data directory, the shards' CPUs, and the kernel settings that
//! decide whether the measured figures show up on this box. Each reads `/proc` or `/sys` only.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use super::Check;
use crate::config::ServerConfig;
use crate::endpoint::Endpoint;

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// A kernel CPU list (`0-3,8,10-11`) as a set; `None` when it does not parse.
pub fn parse_cpu_list(text: &str) -> Option<BTreeSet<usize>> {
    let mut cpus = BTreeSet::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((low, high)) => {
                let (low, high) = (low.parse::<usize>().ok()?, high.parse::<usize>().ok()?);
                if high < low || high - low > 65_536 {
                    return None;
                }
                cpus.extend(low..=high);
            }
            None => {
                cpus.insert(part.parse().ok()?);
            }
        }
    }
    Some(cpus)
}

fn cpu_list_file(path: &str) -> BTreeSet<usize> {
    read(path)
        .and_then(|t| parse_cpu_list(&t))
        .unwrap_or_default()
}

fn show(cpus: impl IntoIterator<Item = usize>) -> String {
    let list: Vec<String> = cpus.into_iter().map(|c| c.to_string()).collect();
    list.join(",")
}

pub fn kernel() -> Check {
    const NAME: &str = "kernel";
    let Some(release) = read("/proc/sys/kernel/osrelease") else {
        return Check::warn(
            NAME,
            "cannot read /proc/sys/kernel/osrelease",
            "mount /proc; the io_uring probes below decide",
        );
    };
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    let (major, minor) = crate::server::KERNEL_MIN;
    if version >= (major, minor) {
        Check::pass(NAME, format!("Linux {release} ({major}.{minor} or newer)"))
    } else {
        Check::warn(
            NAME,
            format!(
                "Linux {release} is older than {major}.{minor}, the oldest keyward is tested on"
            ),
            "upgrade the kernel; the io_uring probes below decide whether it runs",
        )
    }
}

/// Bytes the server locks: the control plane's registered I/O memory and, per shard, its
/// ring's queues and its buffer ring's entries (16 bytes each), a page-rounded bound.
pub fn locked_bytes_needed(config: &ServerConfig, shards: usize) -> u64 {
    let per_shard = 64 * 1024 + u64::from(config.receive_buffers) * 16;
    config.io_memory_bytes as u64 + shards as u64 * per_shard
}

/// capability(7): the bit of CAP_IPC_LOCK in /proc/self/status's CapEff.
const CAP_IPC_LOCK: u32 = 14;

fn has_capability(bit: u32) -> bool {
    let Some(status) = read("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << bit) != 0)
}

fn limit(resource: libc::__rlimit_resource_t) -> Option<(u64, u64)> {
    let mut value = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to a local struct.
    if unsafe { libc::getrlimit(resource, &mut value) } != 0 {
        return None;
    }
    Some((value.rlim_cur, value.rlim_max))
}

fn show_limit(value: u64) -> String {
    if value == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        value.to_string()
    }
}

pub fn locked_memory(config: &ServerConfig) -> Check {
    const NAME: &str = "locked memory";
    let shards = crate::server::choose_cpus(config).len();
    let needed = locked_bytes_needed(config, shards);
    let Some((soft, _)) = limit(libc::RLIMIT_MEMLOCK) else {
        return Check::warn(NAME, "cannot read RLIMIT_MEMLOCK", "check `ulimit -l`");
    };
    let found = format!(
        "RLIMIT_MEMLOCK {} bytes; {shards} shard(s) and io_memory_bytes need about {needed}",
        show_limit(soft)
    );
    if soft >= needed {
        Check::pass(NAME, found)
    } else if has_capability(CAP_IPC_LOCK) {
        Check::pass(NAME, format!("{found} (exempt: CAP_IPC_LOCK)"))
    } else {
        Check::fail(
            NAME,
            found,
            format!(
                "raise it to at least {} KiB (ulimit -l, or LimitMEMLOCK= in the systemd unit)",
                needed.div_ceil(1024)
            ),
        )
    }
}

/// Descriptors the server needs: `.0` to start at all (the data directory's files, standard
/// streams, and per shard its ring, doorbell and listener), `.1` to hold every connection the
/// settings allow, the control port's included.
pub fn files_needed(config: &ServerConfig, shards: usize) -> (u64, u64) {
    let start =
        crate::server::FILES_RESERVED + crate::server::FILES_RESERVED_PER_SHARD * shards as u64;
    let connections = shards as u64 * config.connections_per_shard_max as u64
        + crate::control::CONTROL_CONNECTIONS_MAX as u64;
    (start, start + connections)
}

pub fn open_files(config: &ServerConfig) -> Check {
    const NAME: &str = "open files";
    let shards = crate::server::choose_cpus(config).len();
    let (start, needed) = files_needed(config, shards);
    let Some((soft, hard)) = limit(libc::RLIMIT_NOFILE) else {
        return Check::warn(NAME, "cannot read RLIMIT_NOFILE", "check `ulimit -n`");
    };
    let found = format!(
        "RLIMIT_NOFILE soft {} hard {} (serve raises soft to hard); {shards} shard(s) x connections_per_shard_max {} need {needed}",
        show_limit(soft),
        show_limit(hard),
        config.connections_per_shard_max
    );
    let remedy = format!("raise it to {needed} (LimitNOFILE={needed} in the systemd unit, or ulimit -n {needed}), or lower connections_per_shard_max");
    if hard >= needed {
        Check::pass(NAME, found)
    } else if hard > start {
        Check::warn(
            NAME,
            format!("{found}: past the limit new connections are refused busy"),
            remedy,
        )
    } else {
        Check::fail(
            NAME,
            format!("{found}: {start} are needed before the first connection"),
            remedy,
        )
    }
}

pub fn data_directory(config: &ServerConfig) -> Check {
    const NAME: &str = "data directory";
    let dir = &config.data_dir;
    let writable = |path: &Path| {
        let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
            return false;
        };
        // SAFETY: access with a NUL-terminated path.
        unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
    };
    if dir.is_dir() {
        if writable(dir) {
            Check::pass(NAME, format!("{} exists and is writable", dir.display()))
        } else {
            Check::fail(
                NAME,
                format!("{} is not writable by this user", dir.display()),
                "run as the directory's owner (the package's `keyward` user), or chown it",
            )
        }
    } else if dir.exists() {
        Check::fail(
            NAME,
            format!("{} is not a directory", dir.display()),
            "point data_dir at a directory",
        )
    } else {
        // create_dir_all makes every missing level: the nearest existing one must be writable.
        let parent = dir
            .ancestors()
            .skip(1)
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .find(|p| p.exists())
            .unwrap_or(Path::new("/"));
        if parent.is_dir() && writable(parent) {
            Check::pass(
                NAME,
                format!("{} will be created on the first start", dir.display()),
            )
        } else {
            Check::fail(
                NAME,
                format!(
                    "{} does not exist and {} is not a writable directory",
                    dir.display(),
                    parent.display()
                ),
                "create the directory (mode 0700) for the user keyward runs as",
            )
        }
    }
}

fn allowed_cpus() -> BTreeSet<usize> {
    core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|id| id.id).collect())
        .unwrap_or_default()
}

pub fn shard_cpus(config: &ServerConfig, cpus: &[usize]) -> Check {
    const NAME: &str = "shard cpus";
    let online = cpu_list_file("/sys/devices/system/cpu/online");
    let allowed = allowed_cpus();
    let missing: Vec<usize> = cpus
        .iter()
        .copied()
        .filter(|c| !allowed.contains(c) || (!online.is_empty() && !online.contains(c)))
        .collect();
    let distinct: BTreeSet<usize> = cpus.iter().copied().collect();
    let found = format!(
        "{} shard(s) on CPU(s) {}; online {}, allowed to this process {}",
        cpus.len(),
        show(cpus.iter().copied()),
        show(online.iter().copied()),
        show(allowed.iter().copied())
    );
    if !missing.is_empty() {
        Check::warn(
            NAME,
            format!(
                "{found}: CPU(s) {} are offline or not allowed, so those shards run unpinned",
                show(missing)
            ),
            "set `cpus` to CPUs this process may use (see CPUAffinity= and taskset)",
        )
    } else if distinct.len() < cpus.len() {
        Check::warn(
            NAME,
            format!("{found}: shards share a CPU"),
            "use at most one shard per CPU (`shards`, `cpus`)",
        )
    } else if config.cpus.is_empty() && !online.is_empty() && distinct.len() == online.len() {
        Check::pass(
            NAME,
            format!("{found}; the control plane and the kernel's network work share them"),
        )
    } else {
        Check::pass(NAME, found)
    }
}

/// Where the threads that are not shards run (`control_cpus`), against the shards' CPUs.
pub fn control_cpus(config: &ServerConfig, cpus: &[usize]) -> Check {
    const NAME: &str = "control cpus";
    const REMEDY: &str = "set `control_cpus` to CPUs this process may use that no shard uses";
    let control = crate::server::choose_control_cpus(config, cpus);
    if control.is_empty() {
        return Check::pass(
            NAME,
            "unpinned: the shards use every CPU this process may run on, and the control plane \
             shares them",
        );
    }
    let online = cpu_list_file("/sys/devices/system/cpu/online");
    let allowed = allowed_cpus();
    let (usable, missing): (Vec<usize>, Vec<usize>) = control
        .iter()
        .partition(|c| allowed.contains(c) && (online.is_empty() || online.contains(c)));
    let shared: BTreeSet<usize> = usable
        .iter()
        .filter(|c| cpus.contains(c))
        .copied()
        .collect();
    let found = format!(
        "the control plane on CPU(s) {}",
        show(control.iter().copied())
    );
    if usable.is_empty() {
        Check::warn(
            NAME,
            format!("{found}: all offline or not allowed to this process, so it runs unpinned"),
            REMEDY,
        )
    } else if !missing.is_empty() {
        Check::warn(
            NAME,
            format!(
                "{found}: CPU(s) {} are offline or not allowed, so it runs on {}",
                show(missing),
                show(usable)
            ),
            REMEDY,
        )
    } else if !shared.is_empty() {
        Check::warn(
            NAME,
            format!(
                "{found}, shared with shards on CPU(s) {}: changes and compactions take time \
                 from verification there",
                show(shared)
            ),
            REMEDY,
        )
    } else {
        Check::pass(NAME, format!("{found}, which no shard uses"))
    }
}

pub fn isolation(cpus: &[usize]) -> Check {
    const NAME: &str = "cpu isolation";
    let isolated = cpu_list_file("/sys/devices/system/cpu/isolated");
    let nohz = cpu_list_file("/sys/devices/system/cpu/nohz_full");
    let shared: Vec<usize> = cpus
        .iter()
        .copied()
        .filter(|c| !isolated.contains(c))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if shared.is_empty() {
        let ticks = if cpus.iter().all(|c| nohz.contains(c)) {
            " and tickless (nohz_full)"
        } else {
            " (not nohz_full: the scheduler tick still interrupts them)"
        };
        Check::pass(NAME, format!("shard CPUs are isolated (isolcpus){ticks}"))
    } else {
        Check::warn(
            NAME,
            format!(
                "shard CPU(s) {} are not isolated: other tasks may run on them (isolated: {})",
                show(shared),
                if isolated.is_empty() {
                    "none".to_string()
                } else {
                    show(isolated)
                }
            ),
            "for steady latency boot with isolcpus=LIST nohz_full=LIST for the shard CPUs (docs/DEPLOY.md)",
        )
    }
}

pub fn smt(cpus: &[usize]) -> Check {
    const NAME: &str = "smt siblings";
    let mut cores: Vec<(usize, BTreeSet<usize>)> = Vec::new();
    for &cpu in cpus {
        let siblings = cpu_list_file(&format!(
            "/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
        ));
        cores.push((cpu, siblings));
    }
    let shard_set: BTreeSet<usize> = cpus.iter().copied().collect();
    let mut sharing = Vec::new();
    for (cpu, siblings) in &cores {
        for sibling in siblings {
            if sibling > cpu && shard_set.contains(sibling) {
                sharing.push(format!("{cpu}+{sibling}"));
            }
        }
    }
    let smt_on = cores.iter().any(|(_, s)| s.len() > 1);
    if !sharing.is_empty() {
        Check::warn(
            NAME,
            format!(
                "shards run on both threads of a core ({}): they compete for its caches and ports",
                sharing.join(", ")
            ),
            "give shards one thread per core (`cpus`) or turn SMT off (`echo off > /sys/devices/system/cpu/smt/control`)",
        )
    } else if smt_on {
        Check::pass(NAME, "SMT is on; each shard has a core of its own")
    } else {
        Check::pass(NAME, "no SMT siblings among the shard CPUs")
    }
}

fn numa_node_of(cpu: usize) -> Option<usize> {
    let entries = std::fs::read_dir(format!("/sys/devices/system/cpu/cpu{cpu}")).ok()?;
    entries.flatten().find_map(|entry| {
        entry
            .file_name()
            .to_str()?
            .strip_prefix("node")?
            .parse()
            .ok()
    })
}

/// The interface that holds `address`, when one does.
fn interface_of(address: IpAddr) -> Option<String> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned, valid until freeifaddrs.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr whose family says its real type.
        let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
        let ip = match family {
            libc::AF_INET => {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let raw = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                IpAddr::from(u32::from_be(raw.sin_addr.s_addr).to_be_bytes())
            }
            libc::AF_INET6 => {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let raw = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                IpAddr::from(raw.sin6_addr.s6_addr)
            }
            _ => continue,
        };
        if ip == address {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
            found = Some(name.to_string_lossy().into_owned());
            break;
        }
    }
    // SAFETY: the list getifaddrs allocated, freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

pub fn numa(config: &ServerConfig, cpus: &[usize]) -> Check {
    const NAME: &str = "numa";
    let nodes: BTreeSet<usize> = cpus.iter().filter_map(|&c| numa_node_of(c)).collect();
    let nic = match &config.listen {
        Endpoint::Tcp(address) if !address.ip().is_unspecified() => {
            interface_of(address.ip()).map(|name| {
                let node = read(format!("/sys/class/net/{name}/device/numa_node"))
                    .and_then(|t| t.parse::<i64>().ok())
                    .filter(|n| *n >= 0);
                (name, node)
            })
        }
        _ => None,
    };
    let nic_text = match &nic {
        Some((name, Some(node))) => format!("; the verify port's NIC {name} is on node {node}"),
        Some((name, None)) => format!("; the verify port's interface {name} has no NUMA node"),
        None => "; the verify port's NIC is not known (a wildcard or Unix address)".into(),
    };
    if nodes.len() > 1 {
        return Check::warn(
            NAME,
            format!(
                "shards span NUMA nodes {}: the shared key table is remote memory for some{nic_text}",
                show(nodes)
            ),
            "run one keyward per node, or keep `cpus` on one node",
        );
    }
    if let (Some(&node), Some((name, Some(nic_node)))) = (nodes.iter().next(), &nic) {
        if *nic_node as usize != node {
            return Check::warn(
                NAME,
                format!("shards are on node {node} but {name} is on node {nic_node}"),
                "choose shard CPUs on the NIC's node (docs/DEPLOY.md, choosing CPUs)",
            );
        }
    }
    match nodes.iter().next() {
        Some(node) => Check::pass(NAME, format!("shards on NUMA node {node}{nic_text}")),
        None => Check::pass(NAME, format!("no NUMA topology exposed{nic_text}")),
    }
}

pub fn governor(cpus: &[usize]) -> Check {
    const NAME: &str = "cpu frequency";
    let mut slow = Vec::new();
    let mut seen = false;
    for &cpu in cpus {
        if let Some(governor) = read(format!(
            "/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"
        )) {
            seen = true;
            if governor != "performance" {
                slow.push(format!("CPU {cpu}: {governor}"));
            }
        }
    }
    if !seen {
        Check::pass(
            NAME,
            "no frequency scaling exposed (a virtual machine, or a fixed frequency)",
        )
    } else if slow.is_empty() {
        Check::pass(NAME, "shard CPUs use the performance governor")
    } else {
        Check::warn(
            NAME,
            format!(
                "shard CPUs scale their frequency ({}): the first requests after a pause are slow",
                slow.join(", ")
            ),
            "`cpupower frequency-set -g performance` (or set scaling_governor to performance)",
        )
    }
}

pub fn huge_pages() -> Check {
    const NAME: &str = "transparent huge pages";
    match read("/sys/kernel/mm/transparent_hugepage/enabled") {
        None => Check::pass(NAME, "not available on this kernel"),
        Some(text) if text.contains("[always]") => Check::warn(
            NAME,
            "enabled = always: khugepaged compaction can stall a shard",
            "`echo madvise > /sys/kernel/mm/transparent_hugepage/enabled` (and on the kernel command line)",
        ),
        Some(text) => Check::pass(NAME, format!("enabled = {text}")),
    }
}

pub fn somaxconn(config: &ServerConfig) -> Check {
    const NAME: &str = "listen backlog";
    let Some(max) = read("/proc/sys/net/core/somaxconn").and_then(|t| t.parse::<u32>().ok()) else {
        return Check::pass(NAME, "net.core.somaxconn is not readable here");
    };
    let backlog = config.listen_backlog;
    if max >= backlog {
        Check::pass(
            NAME,
            format!("net.core.somaxconn {max} >= listen_backlog {backlog}"),
        )
    } else {
        Check::warn(
            NAME,
            format!("net.core.somaxconn {max} caps listen_backlog {backlog}: bursts of new connections are dropped sooner"),
            format!("`sysctl net.core.somaxconn={backlog}` (and in /etc/sysctl.d/), or lower listen_backlog"),
        )
    }
}

pub fn clock_source() -> Check {
    const NAME: &str = "clock source";
    match read("/sys/devices/system/clocksource/clocksource0/current_clocksource") {
        None => Check::pass(NAME, "not exposed here"),
        Some(source)
            if [
                "tsc",
                "kvm-clock",
                "arch_sys_counter",
                "hyperv_clocksource_tsc_page",
            ]
            .contains(&source.as_str()) =>
        {
            Check::pass(
                NAME,
                format!("{source}: reading the clock needs no system call"),
            )
        }
        Some(source) => Check::warn(
            NAME,
            format!("{source}: every clock read is a system call, and a shard reads it every turn"),
            "use tsc where the CPU has a stable one (`clocksource=tsc` on the kernel command line)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_as_the_kernel_writes_them() {
        let set = |v: &[usize]| v.iter().copied().collect::<BTreeSet<_>>();
        assert_eq!(
            parse_cpu_list("0-3,8,10-11"),
            Some(set(&[0, 1, 2, 3, 8, 10, 11]))
        );
        assert_eq!(parse_cpu_list(""), Some(set(&[])));
        assert_eq!(parse_cpu_list("5"), Some(set(&[5])));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list("0-99999999"), None);
    }

    #[test]
    fn the_file_limit_counts_every_connection_the_settings_allow() {
        let config = ServerConfig::default();
        let (start, needed) = files_needed(&config, 2);
        assert_eq!(needed - start, 2 * 4096 + 256);
        assert_eq!(start, 64 + 2 * 16);
    }
}
