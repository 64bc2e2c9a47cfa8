# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_keyward_global_optspecs
    string join \n h/help V/version
end

function __fish_keyward_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_keyward_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_keyward_using_subcommand
    set -l cmd (__fish_keyward_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c keyward -n "__fish_keyward_needs_command" -s h -l help -d 'Print help'
complete -c keyward -n "__fish_keyward_needs_command" -s V -l version -d 'Print version'
complete -c keyward -n "__fish_keyward_needs_command" -f -a "serve" -d 'Serve the verify port from a data directory (created with fresh secrets on first run)'
complete -c keyward -n "__fish_keyward_needs_command" -f -a "doctor" -d 'Check this host for what keyward needs and what makes it fast: each check passes, warns or fails with its remedy (exit 1 on a fail; `serve` refuses on the same fails)'
complete -c keyward -n "__fish_keyward_needs_command" -f -a "config" -d 'Validate or show a configuration without starting'
complete -c keyward -n "__fish_keyward_needs_command" -f -a "generate-assets" -d 'Write the man pages and shell completions generated from this CLI into a directory'
complete -c keyward -n "__fish_keyward_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l config -d 'TOML file with any of the settings below (flags given here override it)' -r -F
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l data-dir -d 'Data directory: secrets and key table [default: ./keyward-data]' -r -F
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l listen -d 'Verify port address: HOST:PORT, or unix:/PATH for a Unix-domain socket (mode 0660; a stale socket file is replaced only when nothing listens on it) [default: 127.0.0.1:7500]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l control -d 'Control port address, for admin operations (keep it on loopback) [default: 127.0.0.1:7501]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l metrics-listen -d 'Metrics listener (GET /metrics, /healthz, /readyz): HOST:PORT, or "" for none [default: 127.0.0.1:7502]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l audit-rotate-bytes -d 'Rotate audit.log once it holds this many bytes [default: 67108864]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l log-format -d 'Log lines as text or as JSON objects, one per line [default: text]' -r -f -a "text\t''
json\t''"
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l log-level -d 'Least severe log lines written [default: info]' -r -f -a "error\t''
warning\t''
info\t''
debug\t''"
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l replication -d 'Where changes go: local (this node\'s delta log) or nats (a JetStream stream every node follows; see docs/CLUSTER.md) [default: local]' -r -f -a "local\t'This node\'s own delta log: one node'
nats\t'A NATS JetStream stream that every node follows'"
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l nats-servers -d 'NATS server URLs, comma-separated, e.g. nats://10.0.0.1:4222,nats://10.0.0.2:4222' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l nats-stream -d 'The JetStream stream holding the changes [default: KEYWARD]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l nats-credentials -d 'A NATS credentials file (.creds) [default: none]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l nats-replicas -d 'Copies of the stream JetStream keeps, when this node creates it [default: 3]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l node-name -d 'This node\'s name in the cluster [default: the host name]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l verify-at-wait-ms -d 'How long a VERIFY_AT may wait for the sequence it asks for before it is answered stale [default: 5]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l max-staleness-ms -d 'Replicated mode: once the change stream has been silent this long, answer stale instead of valid until it answers again; 0 keeps answering [default: 0]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l shards -d 'Number of shards (one pinned thread each) [default: one per available CPU]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l cpus -d 'CPUs to pin shards to, comma-separated, e.g. 0,2 [default: those this process may use]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l control-cpus -d 'CPUs for the control plane and every other thread that is not a shard, comma-separated [default: those this process may use that no shard uses]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l connections-per-shard-max -d 'Open connections per shard before new ones are refused [default: 4096]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l frame-body-bytes-max -d 'Largest frame body accepted, in bytes [default: 65536]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l idle-timeout-ms -d 'Close connections idle this long, in milliseconds [default: 300000]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l frame-timeout-ms -d 'A frame must arrive whole within this of its first byte, in milliseconds [default: 10000]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l control-idle-timeout-ms -d 'Close control connections silent this long between requests, in milliseconds [default: 60000]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l frame-buffer-bytes-per-shard-max -d 'Bytes one shard may hold in read buffers grown for large frames [default: 67108864]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l bind-retry-ms -d 'Keep retrying to bind a port still held (e.g. by a server just killed) this long, in milliseconds [default: 2000]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l busy-poll-us -d 'Microseconds a shard keeps looking for work before it sleeps in the kernel: 0 saves CPU, more cuts the latency of the next request at low load [default: 0]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l receive-buffers -d 'Provided receive buffers per shard, a power of two [default: 1024]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l receive-buffer-bytes -d 'Bytes of each receive buffer [default: 4096]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l unsent-bytes-per-connection-max -d 'Unsent answers one connection may hold before it is no longer read, in bytes [default: 1048576]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l listen-backlog -d 'Kernel accept backlog per shard [default: 1024]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l io-memory-bytes -d 'Memory the control plane registers with io_uring, in bytes [default: 262144]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l compact-changes-max -d 'Compact once this many key records changed since the snapshot [default: 100000]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l compact-log-bytes-max -d 'Compact once the delta log holds this many bytes [default: 268435456]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l token-prefix -d 'Prefix of derived tokens [default: kwt]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l token-ttl-max-seconds -d 'Longest lifetime a derived token may get, in seconds [default: 3600]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l prefix -d 'Prefix of secret keys [default: kw]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -l public-prefix -d 'Prefix of keys marked public [default: kwpub]' -r
complete -c keyward -n "__fish_keyward_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l config -d 'TOML file with any of the settings below (flags given here override it)' -r -F
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l data-dir -d 'Data directory: secrets and key table [default: ./keyward-data]' -r -F
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l listen -d 'Verify port address: HOST:PORT, or unix:/PATH for a Unix-domain socket (mode 0660; a stale socket file is replaced only when nothing listens on it) [default: 127.0.0.1:7500]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l control -d 'Control port address, for admin operations (keep it on loopback) [default: 127.0.0.1:7501]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l metrics-listen -d 'Metrics listener (GET /metrics, /healthz, /readyz): HOST:PORT, or "" for none [default: 127.0.0.1:7502]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l audit-rotate-bytes -d 'Rotate audit.log once it holds this many bytes [default: 67108864]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l log-format -d 'Log lines as text or as JSON objects, one per line [default: text]' -r -f -a "text\t''
json\t''"
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l log-level -d 'Least severe log lines written [default: info]' -r -f -a "error\t''
warning\t''
info\t''
debug\t''"
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l replication -d 'Where changes go: local (this node\'s delta log) or nats (a JetStream stream every node follows; see docs/CLUSTER.md) [default: local]' -r -f -a "local\t'This node\'s own delta log: one node'
nats\t'A NATS JetStream stream that every node follows'"
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l nats-servers -d 'NATS server URLs, comma-separated, e.g. nats://10.0.0.1:4222,nats://10.0.0.2:4222' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l nats-stream -d 'The JetStream stream holding the changes [default: KEYWARD]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l nats-credentials -d 'A NATS credentials file (.creds) [default: none]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l nats-replicas -d 'Copies of the stream JetStream keeps, when this node creates it [default: 3]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l node-name -d 'This node\'s name in the cluster [default: the host name]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l verify-at-wait-ms -d 'How long a VERIFY_AT may wait for the sequence it asks for before it is answered stale [default: 5]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l max-staleness-ms -d 'Replicated mode: once the change stream has been silent this long, answer stale instead of valid until it answers again; 0 keeps answering [default: 0]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l shards -d 'Number of shards (one pinned thread each) [default: one per available CPU]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l cpus -d 'CPUs to pin shards to, comma-separated, e.g. 0,2 [default: those this process may use]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l control-cpus -d 'CPUs for the control plane and every other thread that is not a shard, comma-separated [default: those this process may use that no shard uses]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l connections-per-shard-max -d 'Open connections per shard before new ones are refused [default: 4096]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l frame-body-bytes-max -d 'Largest frame body accepted, in bytes [default: 65536]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l idle-timeout-ms -d 'Close connections idle this long, in milliseconds [default: 300000]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l frame-timeout-ms -d 'A frame must arrive whole within this of its first byte, in milliseconds [default: 10000]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l control-idle-timeout-ms -d 'Close control connections silent this long between requests, in milliseconds [default: 60000]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l frame-buffer-bytes-per-shard-max -d 'Bytes one shard may hold in read buffers grown for large frames [default: 67108864]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l bind-retry-ms -d 'Keep retrying to bind a port still held (e.g. by a server just killed) this long, in milliseconds [default: 2000]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l busy-poll-us -d 'Microseconds a shard keeps looking for work before it sleeps in the kernel: 0 saves CPU, more cuts the latency of the next request at low load [default: 0]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l receive-buffers -d 'Provided receive buffers per shard, a power of two [default: 1024]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l receive-buffer-bytes -d 'Bytes of each receive buffer [default: 4096]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l unsent-bytes-per-connection-max -d 'Unsent answers one connection may hold before it is no longer read, in bytes [default: 1048576]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l listen-backlog -d 'Kernel accept backlog per shard [default: 1024]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l io-memory-bytes -d 'Memory the control plane registers with io_uring, in bytes [default: 262144]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l compact-changes-max -d 'Compact once this many key records changed since the snapshot [default: 100000]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l compact-log-bytes-max -d 'Compact once the delta log holds this many bytes [default: 268435456]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l token-prefix -d 'Prefix of derived tokens [default: kwt]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l token-ttl-max-seconds -d 'Longest lifetime a derived token may get, in seconds [default: 3600]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l prefix -d 'Prefix of secret keys [default: kw]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l public-prefix -d 'Prefix of keys marked public [default: kwpub]' -r
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -l json -d 'One JSON object ({"verdict", "checks": [{name, verdict, found, remedy}]}) for fleet tooling'
complete -c keyward -n "__fish_keyward_using_subcommand doctor" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keyward -n "__fish_keyward_using_subcommand config; and not __fish_seen_subcommand_from check print help" -s h -l help -d 'Print help'
complete -c keyward -n "__fish_keyward_using_subcommand config; and not __fish_seen_subcommand_from check print help" -f -a "check" -d 'Check a configuration (the file, then any flags) as `serve` would, without starting: exit 0 when it is valid, 1 with the reason when not'
complete -c keyward -n "__fish_keyward_using_subcommand config; and not __fish_seen_subcommand_from check print help" -f -a "print" -d 'Print the effective configuration as TOML: defaults, overridden by the file, overridden by the flags. It holds no secrets (those live in the data directory)'
complete -c keyward -n "__fish_keyward_using_subcommand config; and not __fish_seen_subcommand_from check print help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l config -d 'TOML file with any of the settings below (flags given here override it)' -r -F
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l data-dir -d 'Data directory: secrets and key table [default: ./keyward-data]' -r -F
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l listen -d 'Verify port address: HOST:PORT, or unix:/PATH for a Unix-domain socket (mode 0660; a stale socket file is replaced only when nothing listens on it) [default: 127.0.0.1:7500]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l control -d 'Control port address, for admin operations (keep it on loopback) [default: 127.0.0.1:7501]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l metrics-listen -d 'Metrics listener (GET /metrics, /healthz, /readyz): HOST:PORT, or "" for none [default: 127.0.0.1:7502]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l audit-rotate-bytes -d 'Rotate audit.log once it holds this many bytes [default: 67108864]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l log-format -d 'Log lines as text or as JSON objects, one per line [default: text]' -r -f -a "text\t''
json\t''"
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l log-level -d 'Least severe log lines written [default: info]' -r -f -a "error\t''
warning\t''
info\t''
debug\t''"
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l replication -d 'Where changes go: local (this node\'s delta log) or nats (a JetStream stream every node follows; see docs/CLUSTER.md) [default: local]' -r -f -a "local\t'This node\'s own delta log: one node'
nats\t'A NATS JetStream stream that every node follows'"
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l nats-servers -d 'NATS server URLs, comma-separated, e.g. nats://10.0.0.1:4222,nats://10.0.0.2:4222' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l nats-stream -d 'The JetStream stream holding the changes [default: KEYWARD]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l nats-credentials -d 'A NATS credentials file (.creds) [default: none]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l nats-replicas -d 'Copies of the stream JetStream keeps, when this node creates it [default: 3]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l node-name -d 'This node\'s name in the cluster [default: the host name]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l verify-at-wait-ms -d 'How long a VERIFY_AT may wait for the sequence it asks for before it is answered stale [default: 5]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l max-staleness-ms -d 'Replicated mode: once the change stream has been silent this long, answer stale instead of valid until it answers again; 0 keeps answering [default: 0]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l shards -d 'Number of shards (one pinned thread each) [default: one per available CPU]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l cpus -d 'CPUs to pin shards to, comma-separated, e.g. 0,2 [default: those this process may use]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l control-cpus -d 'CPUs for the control plane and every other thread that is not a shard, comma-separated [default: those this process may use that no shard uses]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l connections-per-shard-max -d 'Open connections per shard before new ones are refused [default: 4096]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l frame-body-bytes-max -d 'Largest frame body accepted, in bytes [default: 65536]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l idle-timeout-ms -d 'Close connections idle this long, in milliseconds [default: 300000]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l frame-timeout-ms -d 'A frame must arrive whole within this of its first byte, in milliseconds [default: 10000]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l control-idle-timeout-ms -d 'Close control connections silent this long between requests, in milliseconds [default: 60000]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l frame-buffer-bytes-per-shard-max -d 'Bytes one shard may hold in read buffers grown for large frames [default: 67108864]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l bind-retry-ms -d 'Keep retrying to bind a port still held (e.g. by a server just killed) this long, in milliseconds [default: 2000]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l busy-poll-us -d 'Microseconds a shard keeps looking for work before it sleeps in the kernel: 0 saves CPU, more cuts the latency of the next request at low load [default: 0]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l receive-buffers -d 'Provided receive buffers per shard, a power of two [default: 1024]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l receive-buffer-bytes -d 'Bytes of each receive buffer [default: 4096]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l unsent-bytes-per-connection-max -d 'Unsent answers one connection may hold before it is no longer read, in bytes [default: 1048576]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l listen-backlog -d 'Kernel accept backlog per shard [default: 1024]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l io-memory-bytes -d 'Memory the control plane registers with io_uring, in bytes [default: 262144]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l compact-changes-max -d 'Compact once this many key records changed since the snapshot [default: 100000]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l compact-log-bytes-max -d 'Compact once the delta log holds this many bytes [default: 268435456]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l token-prefix -d 'Prefix of derived tokens [default: kwt]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l token-ttl-max-seconds -d 'Longest lifetime a derived token may get, in seconds [default: 3600]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l prefix -d 'Prefix of secret keys [default: kw]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -l public-prefix -d 'Prefix of keys marked public [default: kwpub]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from check" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l config -d 'TOML file with any of the settings below (flags given here override it)' -r -F
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l data-dir -d 'Data directory: secrets and key table [default: ./keyward-data]' -r -F
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l listen -d 'Verify port address: HOST:PORT, or unix:/PATH for a Unix-domain socket (mode 0660; a stale socket file is replaced only when nothing listens on it) [default: 127.0.0.1:7500]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l control -d 'Control port address, for admin operations (keep it on loopback) [default: 127.0.0.1:7501]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l metrics-listen -d 'Metrics listener (GET /metrics, /healthz, /readyz): HOST:PORT, or "" for none [default: 127.0.0.1:7502]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l audit-rotate-bytes -d 'Rotate audit.log once it holds this many bytes [default: 67108864]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l log-format -d 'Log lines as text or as JSON objects, one per line [default: text]' -r -f -a "text\t''
json\t''"
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l log-level -d 'Least severe log lines written [default: info]' -r -f -a "error\t''
warning\t''
info\t''
debug\t''"
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l replication -d 'Where changes go: local (this node\'s delta log) or nats (a JetStream stream every node follows; see docs/CLUSTER.md) [default: local]' -r -f -a "local\t'This node\'s own delta log: one node'
nats\t'A NATS JetStream stream that every node follows'"
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l nats-servers -d 'NATS server URLs, comma-separated, e.g. nats://10.0.0.1:4222,nats://10.0.0.2:4222' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l nats-stream -d 'The JetStream stream holding the changes [default: KEYWARD]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l nats-credentials -d 'A NATS credentials file (.creds) [default: none]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l nats-replicas -d 'Copies of the stream JetStream keeps, when this node creates it [default: 3]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l node-name -d 'This node\'s name in the cluster [default: the host name]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l verify-at-wait-ms -d 'How long a VERIFY_AT may wait for the sequence it asks for before it is answered stale [default: 5]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l max-staleness-ms -d 'Replicated mode: once the change stream has been silent this long, answer stale instead of valid until it answers again; 0 keeps answering [default: 0]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l shards -d 'Number of shards (one pinned thread each) [default: one per available CPU]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l cpus -d 'CPUs to pin shards to, comma-separated, e.g. 0,2 [default: those this process may use]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l control-cpus -d 'CPUs for the control plane and every other thread that is not a shard, comma-separated [default: those this process may use that no shard uses]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l connections-per-shard-max -d 'Open connections per shard before new ones are refused [default: 4096]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l frame-body-bytes-max -d 'Largest frame body accepted, in bytes [default: 65536]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l idle-timeout-ms -d 'Close connections idle this long, in milliseconds [default: 300000]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l frame-timeout-ms -d 'A frame must arrive whole within this of its first byte, in milliseconds [default: 10000]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l control-idle-timeout-ms -d 'Close control connections silent this long between requests, in milliseconds [default: 60000]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l frame-buffer-bytes-per-shard-max -d 'Bytes one shard may hold in read buffers grown for large frames [default: 67108864]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l bind-retry-ms -d 'Keep retrying to bind a port still held (e.g. by a server just killed) this long, in milliseconds [default: 2000]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l busy-poll-us -d 'Microseconds a shard keeps looking for work before it sleeps in the kernel: 0 saves CPU, more cuts the latency of the next request at low load [default: 0]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l receive-buffers -d 'Provided receive buffers per shard, a power of two [default: 1024]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l receive-buffer-bytes -d 'Bytes of each receive buffer [default: 4096]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l unsent-bytes-per-connection-max -d 'Unsent answers one connection may hold before it is no longer read, in bytes [default: 1048576]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l listen-backlog -d 'Kernel accept backlog per shard [default: 1024]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l io-memory-bytes -d 'Memory the control plane registers with io_uring, in bytes [default: 262144]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l compact-changes-max -d 'Compact once this many key records changed since the snapshot [default: 100000]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l compact-log-bytes-max -d 'Compact once the delta log holds this many bytes [default: 268435456]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l token-prefix -d 'Prefix of derived tokens [default: kwt]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l token-ttl-max-seconds -d 'Longest lifetime a derived token may get, in seconds [default: 3600]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l prefix -d 'Prefix of secret keys [default: kw]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -l public-prefix -d 'Prefix of keys marked public [default: kwpub]' -r
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from print" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "check" -d 'Check a configuration (the file, then any flags) as `serve` would, without starting: exit 0 when it is valid, 1 with the reason when not'
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "print" -d 'Print the effective configuration as TOML: defaults, overridden by the file, overridden by the flags. It holds no secrets (those live in the data directory)'
complete -c keyward -n "__fish_keyward_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c keyward -n "__fish_keyward_using_subcommand generate-assets" -s h -l help -d 'Print help'
complete -c keyward -n "__fish_keyward_using_subcommand help; and not __fish_seen_subcommand_from serve doctor config generate-assets help" -f -a "serve" -d 'Serve the verify port from a data directory (created with fresh secrets on first run)'
complete -c keyward -n "__fish_keyward_using_subcommand help; and not __fish_seen_subcommand_from serve doctor config generate-assets help" -f -a "doctor" -d 'Check this host for what keyward needs and what makes it fast: each check passes, warns or fails with its remedy (exit 1 on a fail; `serve` refuses on the same fails)'
complete -c keyward -n "__fish_keyward_using_subcommand help; and not __fish_seen_subcommand_from serve doctor config generate-assets help" -f -a "config" -d 'Validate or show a configuration without starting'
complete -c keyward -n "__fish_keyward_using_subcommand help; and not __fish_seen_subcommand_from serve doctor config generate-assets help" -f -a "generate-assets" -d 'Write the man pages and shell completions generated from this CLI into a directory'
complete -c keyward -n "__fish_keyward_using_subcommand help; and not __fish_seen_subcommand_from serve doctor config generate-assets help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c keyward -n "__fish_keyward_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "check" -d 'Check a configuration (the file, then any flags) as `serve` would, without starting: exit 0 when it is valid, 1 with the reason when not'
complete -c keyward -n "__fish_keyward_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "print" -d 'Print the effective configuration as TOML: defaults, overridden by the file, overridden by the flags. It holds no secrets (those live in the data directory)'
