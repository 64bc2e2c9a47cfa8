# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_keyward_ctl_global_optspecs
    string join \n h/help V/version
end

function __fish_keyward_ctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_keyward_ctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_keyward_ctl_using_subcommand
    set -l cmd (__fish_keyward_ctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -s V -l version -d 'Print version'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "verify" -d 'Ask a running server whether a credential is valid (exit 0: valid, 1: not valid)'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "keys" -d 'Key sets for tests, demos and benchmarks'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "table" -d 'Offline key-table (snapshot) tools'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "issue" -d 'Mint a new key on a running server; prints the credential (shown only this once)'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "import" -d 'Import foreign keys from a file (one per line, or JSON lines), in batches of up to 1000'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "revoke" -d 'Revoke a key by id or by credential; every shard refuses it before this returns'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "rotate" -d 'Replace a key with a new one (same tenant, scopes, allowlist and expiry unless given)'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "update" -d 'Change a key\'s name, scopes or address allowlist'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "inspect" -d 'Show a key\'s record (never its secret), by id or by credential'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "list" -d 'List keys, optionally of one tenant, a page at a time'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "stats" -d 'Sequence numbers, counts, log size, snapshot age and replication state of a running server'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "compact" -d 'Write a new snapshot now and shorten the delta log'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "stat" -d 'A live line per interval from the server\'s metrics listener: verifies/s by status, connections, p99 service time, applied sequence (like `redis-cli --stat`)'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "self-revoke" -d 'Revoke a key you hold, over the verify port (no admin token: the key is the proof)'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "token" -d 'Derived capability tokens: derive, attenuate offline, inspect'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "log" -d 'Offline delta-log tools: check a log, cut a damaged one'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "admin" -d 'Named admin tokens with a role (read or write): add, remove, list'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "audit" -d 'The audit trail of a data directory: check its hash chain, read it'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "cluster" -d 'Cluster nodes: carry the secrets and admin tokens to a new node'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "backup" -d 'Copy a data directory, with the server running or stopped, into a new directory: files in the order that keeps the copy consistent (the delta log before the key table), each fsynced, then the copy checked as a start would check it (docs/DEPLOY.md)'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "generate-assets" -d 'Write the man pages and shell completions generated from this CLI into a directory'
complete -c keyward-ctl -n "__fish_keyward_ctl_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand verify" -l server -d 'Verify port of the server: HOST:PORT, or unix:/PATH' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand verify" -l scope -d 'Scope the key must carry, e.g. orders:read' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand verify" -l ip -d 'Address of the end client, checked against the key\'s allowlist' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand verify" -l tenant -d 'Tenant the key must belong to' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand verify" -l json -d 'Print the answer as JSON'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand verify" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand keys; and not __fish_seen_subcommand_from generate help" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand keys; and not __fish_seen_subcommand_from generate help" -f -a "generate" -d 'Mint N keys into a data directory\'s table and write their plaintext credentials, each with the status a plain VERIFY must return, to a key file'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand keys; and not __fish_seen_subcommand_from generate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand keys; and __fish_seen_subcommand_from generate" -l data-dir -d 'Data directory (created if missing; the server must not be running on it)' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand keys; and __fish_seen_subcommand_from generate" -l count -d 'How many credentials to write (about 1 in 20 is deliberately unknown to the table)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand keys; and __fish_seen_subcommand_from generate" -l out-keys -d 'Where to write the credentials (mode 0600): `credential<TAB>status` per line' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand keys; and __fish_seen_subcommand_from generate" -l prefix -d 'Prefix of secret keys (must match the server\'s --prefix)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand keys; and __fish_seen_subcommand_from generate" -l public-prefix -d 'Prefix of public keys (must match the server\'s --public-prefix)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand keys; and __fish_seen_subcommand_from generate" -l force -d 'Replace a table that already holds keys'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand keys; and __fish_seen_subcommand_from generate" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand keys; and __fish_seen_subcommand_from help" -f -a "generate" -d 'Mint N keys into a data directory\'s table and write their plaintext credentials, each with the status a plain VERIFY must return, to a key file'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand keys; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and not __fish_seen_subcommand_from build inspect stats upgrade check help" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and not __fish_seen_subcommand_from build inspect stats upgrade check help" -f -a "build" -d 'Build a data directory\'s table from JSON lines (one key per line; see docs/FORMATS.md)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and not __fish_seen_subcommand_from build inspect stats upgrade check help" -f -a "inspect" -d 'Show a snapshot\'s header, counts and first records (never secrets)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and not __fish_seen_subcommand_from build inspect stats upgrade check help" -f -a "stats" -d 'Where a snapshot\'s bytes go (bytes per key by section), the hash tables\' load factor and probe lengths, and the interned names'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and not __fish_seen_subcommand_from build inspect stats upgrade check help" -f -a "upgrade" -d 'Rewrite an older-format snapshot in the current format, keeping every key, its sequence and creation time (stop the server first). A current snapshot is left as it is'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and not __fish_seen_subcommand_from build inspect stats upgrade check help" -f -a "check" -d 'Fully validate a snapshot (exit 0: good, 1: refused, with the reason)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and not __fish_seen_subcommand_from build inspect stats upgrade check help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and __fish_seen_subcommand_from build" -l data-dir -d 'Data directory (created if missing; the server must not be running on it)' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and __fish_seen_subcommand_from build" -l from -d 'The JSON-lines file' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and __fish_seen_subcommand_from build" -l prefix -d 'Prefix of secret keys (must match the server\'s --prefix)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and __fish_seen_subcommand_from build" -l public-prefix -d 'Prefix of public keys (must match the server\'s --public-prefix)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and __fish_seen_subcommand_from build" -l force -d 'Replace a table that already holds keys'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and __fish_seen_subcommand_from build" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and __fish_seen_subcommand_from inspect" -l records -d 'How many records to list' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and __fish_seen_subcommand_from inspect" -l json -d 'Print as JSON'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and __fish_seen_subcommand_from inspect" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and __fish_seen_subcommand_from stats" -l json -d 'Print as JSON'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and __fish_seen_subcommand_from stats" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and __fish_seen_subcommand_from upgrade" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and __fish_seen_subcommand_from check" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and __fish_seen_subcommand_from help" -f -a "build" -d 'Build a data directory\'s table from JSON lines (one key per line; see docs/FORMATS.md)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and __fish_seen_subcommand_from help" -f -a "inspect" -d 'Show a snapshot\'s header, counts and first records (never secrets)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and __fish_seen_subcommand_from help" -f -a "stats" -d 'Where a snapshot\'s bytes go (bytes per key by section), the hash tables\' load factor and probe lengths, and the interned names'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and __fish_seen_subcommand_from help" -f -a "upgrade" -d 'Rewrite an older-format snapshot in the current format, keeping every key, its sequence and creation time (stop the server first). A current snapshot is left as it is'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and __fish_seen_subcommand_from help" -f -a "check" -d 'Fully validate a snapshot (exit 0: good, 1: refused, with the reason)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand table; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand issue" -l control -d 'Control port of the server' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand issue" -l data-dir -d 'Data directory whose admin.token to use' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand issue" -l token-file -d 'File holding the admin token (overrides --data-dir)' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand issue" -l tenant -d 'Tenant the key belongs to' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand issue" -l name -d 'A name for people' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand issue" -l scopes -d 'Scopes, comma-separated (e.g. orders:read,orders:write)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand issue" -l expires -d 'Expiry, Unix seconds' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand issue" -l ttl -d 'Expiry as seconds from now' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand issue" -l allow -d 'Client-address ranges allowed, comma-separated CIDRs' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand issue" -l idempotency-key -d 'Retrying with the same idempotency key returns the same credential' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand issue" -l json -d 'Print the server\'s answer as JSON'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand issue" -l public -d 'Mint with the public prefix'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand issue" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand import" -l control -d 'Control port of the server' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand import" -l data-dir -d 'Data directory whose admin.token to use' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand import" -l token-file -d 'File holding the admin token (overrides --data-dir)' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand import" -l tenant -d 'Tenant for raw-key lines' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand import" -l scopes -d 'Scopes for raw-key lines, comma-separated' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand import" -l batch -d 'Keys per IMPORT request (1 to 1000)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand import" -l json -d 'Print the server\'s answer as JSON'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand import" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand revoke" -l control -d 'Control port of the server' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand revoke" -l data-dir -d 'Data directory whose admin.token to use' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand revoke" -l token-file -d 'File holding the admin token (overrides --data-dir)' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand revoke" -l reason -d 'Why, for the log' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand revoke" -l json -d 'Print the server\'s answer as JSON'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand revoke" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand rotate" -l control -d 'Control port of the server' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand rotate" -l data-dir -d 'Data directory whose admin.token to use' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand rotate" -l token-file -d 'File holding the admin token (overrides --data-dir)' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand rotate" -l grace -d 'Keep the old key valid this many seconds; without it the old key is revoked at once' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand rotate" -l scopes -d 'New scopes, comma-separated' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand rotate" -l expires -d 'New expiry, Unix seconds' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand rotate" -l json -d 'Print the server\'s answer as JSON'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand rotate" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand update" -l control -d 'Control port of the server' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand update" -l data-dir -d 'Data directory whose admin.token to use' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand update" -l token-file -d 'File holding the admin token (overrides --data-dir)' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand update" -l name -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand update" -l scopes -d 'New scopes, comma-separated (replace the old ones)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand update" -l allow -d 'New allowlist, comma-separated CIDRs (replaces the old one)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand update" -l json -d 'Print the server\'s answer as JSON'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand update" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand inspect" -l control -d 'Control port of the server' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand inspect" -l data-dir -d 'Data directory whose admin.token to use' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand inspect" -l token-file -d 'File holding the admin token (overrides --data-dir)' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand inspect" -l json -d 'Print the server\'s answer as JSON'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand inspect" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand list" -l control -d 'Control port of the server' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand list" -l data-dir -d 'Data directory whose admin.token to use' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand list" -l token-file -d 'File holding the admin token (overrides --data-dir)' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand list" -l tenant -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand list" -l after -d 'Start after this key id (the `next` of the previous page)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand list" -l limit -d 'Keys per page (1 to 1000)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand list" -l unused-since -d 'Only keys not used for this long (e.g. 90d, 12h, 2w): last used before then, or never used and created before then' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand list" -l json -d 'Print the server\'s answer as JSON'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand list" -l all -d 'Follow `next` until the last page'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand list" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand stats" -l control -d 'Control port of the server' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand stats" -l data-dir -d 'Data directory whose admin.token to use' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand stats" -l token-file -d 'File holding the admin token (overrides --data-dir)' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand stats" -l json -d 'Print the server\'s answer as JSON'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand stats" -l digest -d 'Also a digest of every key\'s state, to compare nodes of a cluster (reads the whole table: about a second per ten million keys)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand stats" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand compact" -l control -d 'Control port of the server' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand compact" -l data-dir -d 'Data directory whose admin.token to use' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand compact" -l token-file -d 'File holding the admin token (overrides --data-dir)' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand compact" -l json -d 'Print the server\'s answer as JSON'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand compact" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand stat" -l metrics -d 'The server\'s metrics listener (`metrics_listen`)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand stat" -l interval -d 'Seconds between lines' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand stat" -l count -d 'Stop after this many lines [default: run until interrupted]' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand stat" -l json -d 'One JSON object per line'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand stat" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand self-revoke" -l server -d 'Verify port of the server: HOST:PORT, or unix:/PATH' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand self-revoke" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and not __fish_seen_subcommand_from derive attenuate inspect help" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and not __fish_seen_subcommand_from derive attenuate inspect help" -f -a "derive" -d 'Mint a short-lived token from a key: with the key itself (--key, verify port), or as an admin by key id (--id, control port). Prints the token'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and not __fish_seen_subcommand_from derive attenuate inspect help" -f -a "attenuate" -d 'Narrow a token offline (no server needed): the result can only do less'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and not __fish_seen_subcommand_from derive attenuate inspect help" -f -a "inspect" -d 'Show a token\'s parent and caveats (offline; does not check its signature)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and not __fish_seen_subcommand_from derive attenuate inspect help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from derive" -l key -d 'The parent key\'s credential (self-service, over the verify port)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from derive" -l id -d 'The parent key\'s id (admin, over the control port)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from derive" -l server -d 'Verify port, for --key: HOST:PORT, or unix:/PATH' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from derive" -l ttl -d 'Lifetime in seconds from now' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from derive" -l scopes -d 'Only these scopes, comma-separated (--scope works too)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from derive" -l tenant -d 'Only for this tenant' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from derive" -l allow -d 'Only from these client-address ranges, comma-separated CIDRs (each is required)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from derive" -l claim -d 'An opaque claim returned on every valid verify: KEY=VALUE (repeatable)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from derive" -l control -d 'Control port of the server' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from derive" -l data-dir -d 'Data directory whose admin.token to use' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from derive" -l token-file -d 'File holding the admin token (overrides --data-dir)' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from derive" -l json -d 'Print the server\'s answer as JSON'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from derive" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from attenuate" -l ttl -d 'Lifetime in seconds from now' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from attenuate" -l scopes -d 'Only these scopes, comma-separated (--scope works too)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from attenuate" -l tenant -d 'Only for this tenant' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from attenuate" -l allow -d 'Only from these client-address ranges, comma-separated CIDRs (each is required)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from attenuate" -l claim -d 'An opaque claim returned on every valid verify: KEY=VALUE (repeatable)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from attenuate" -l not-before -d 'Invalid before this Unix time' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from attenuate" -l prefix -d 'Prefix of derived tokens' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from attenuate" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from inspect" -l prefix -d 'Prefix of derived tokens' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from inspect" -l json
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from inspect" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "derive" -d 'Mint a short-lived token from a key: with the key itself (--key, verify port), or as an admin by key id (--id, control port). Prints the token'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "attenuate" -d 'Narrow a token offline (no server needed): the result can only do less'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "inspect" -d 'Show a token\'s parent and caveats (offline; does not check its signature)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand log; and not __fish_seen_subcommand_from check cut help" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand log; and not __fish_seen_subcommand_from check cut help" -f -a "check" -d 'List every record of the delta log and where damage begins (the server must be stopped). Exit 0: no damage; 1: damage found'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand log; and not __fish_seen_subcommand_from check cut help" -f -a "cut" -d 'Cut the delta log at a byte offset, dropping every record from there on. The whole log is first copied to deltas.log.damaged-OFFSET beside it, and the changes dropped are listed so they can be made again (a revocation dropped here is undone until it is)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand log; and not __fish_seen_subcommand_from check cut help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand log; and __fish_seen_subcommand_from check" -l data-dir -d 'Data directory' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand log; and __fish_seen_subcommand_from check" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand log; and __fish_seen_subcommand_from cut" -l data-dir -d 'Data directory (the server must be stopped)' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand log; and __fish_seen_subcommand_from cut" -l at -d 'Byte offset to cut at: the damaged record\'s, as the server\'s refusal names it' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand log; and __fish_seen_subcommand_from cut" -l drop-changes -d 'Confirms that the records from OFFSET on are to be dropped'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand log; and __fish_seen_subcommand_from cut" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand log; and __fish_seen_subcommand_from help" -f -a "check" -d 'List every record of the delta log and where damage begins (the server must be stopped). Exit 0: no damage; 1: damage found'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand log; and __fish_seen_subcommand_from help" -f -a "cut" -d 'Cut the delta log at a byte offset, dropping every record from there on. The whole log is first copied to deltas.log.damaged-OFFSET beside it, and the changes dropped are listed so they can be made again (a revocation dropped here is undone until it is)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand log; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and not __fish_seen_subcommand_from add remove list help" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and not __fish_seen_subcommand_from add remove list help" -f -a "add" -d 'Add an admin; prints its new token (shown only this once)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and not __fish_seen_subcommand_from add remove list help" -f -a "remove" -d 'Remove an admin: its token is refused from its next request on'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and not __fish_seen_subcommand_from add remove list help" -f -a "list" -d 'List the admins and their roles (never their tokens)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and not __fish_seen_subcommand_from add remove list help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from add" -l role -d 'read: inspect, list, stats, derive; write: everything' -r -f -a "read\t''
write\t''"
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from add" -l token-out -d 'Write the token to this file (mode 0600) instead of printing it' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from add" -l control -d 'Control port of the server' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from add" -l data-dir -d 'Data directory whose admin.token to use' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from add" -l token-file -d 'File holding the admin token (overrides --data-dir)' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from add" -l json -d 'Print the server\'s answer as JSON'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from remove" -l control -d 'Control port of the server' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from remove" -l data-dir -d 'Data directory whose admin.token to use' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from remove" -l token-file -d 'File holding the admin token (overrides --data-dir)' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from remove" -l json -d 'Print the server\'s answer as JSON'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from remove" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from list" -l control -d 'Control port of the server' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from list" -l data-dir -d 'Data directory whose admin.token to use' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from list" -l token-file -d 'File holding the admin token (overrides --data-dir)' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from list" -l json -d 'Print the server\'s answer as JSON'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from help" -f -a "add" -d 'Add an admin; prints its new token (shown only this once)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from help" -f -a "remove" -d 'Remove an admin: its token is refused from its next request on'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from help" -f -a "list" -d 'List the admins and their roles (never their tokens)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand admin; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand audit; and not __fish_seen_subcommand_from verify tail help" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand audit; and not __fish_seen_subcommand_from verify tail help" -f -a "verify" -d 'Check the hash chain across every file; names the first bad line. Prints the hash of the last line: record it elsewhere to detect lines cut off the end'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand audit; and not __fish_seen_subcommand_from verify tail help" -f -a "tail" -d 'Print the last lines, optionally only of one key or tenant or since a time, and with --follow keep printing new ones (across rotation) until interrupted'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand audit; and not __fish_seen_subcommand_from verify tail help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand audit; and __fish_seen_subcommand_from verify" -l data-dir -d 'Data directory holding audit.log' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand audit; and __fish_seen_subcommand_from verify" -l json -d 'Print the result as JSON'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand audit; and __fish_seen_subcommand_from verify" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand audit; and __fish_seen_subcommand_from tail" -l data-dir -d 'Data directory holding audit.log' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand audit; and __fish_seen_subcommand_from tail" -l key -d 'Only lines about this key id' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand audit; and __fish_seen_subcommand_from tail" -l tenant -d 'Only lines about this tenant' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand audit; and __fish_seen_subcommand_from tail" -l since -d 'Only lines from this time on: an age (30s, 10m, 2h, 7d, 2w) or a UTC time or its start (2026-11-30, 2026-11-30T16:00)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand audit; and __fish_seen_subcommand_from tail" -s n -l lines -d 'How many of the matching lines to print first (0: all)' -r
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand audit; and __fish_seen_subcommand_from tail" -s f -l follow -d 'Keep printing new lines as they are written'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand audit; and __fish_seen_subcommand_from tail" -l json -d 'Print the lines as they are stored (JSON), not as text'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand audit; and __fish_seen_subcommand_from tail" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand audit; and __fish_seen_subcommand_from help" -f -a "verify" -d 'Check the hash chain across every file; names the first bad line. Prints the hash of the last line: record it elsewhere to detect lines cut off the end'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand audit; and __fish_seen_subcommand_from help" -f -a "tail" -d 'Print the last lines, optionally only of one key or tenant or since a time, and with --follow keep printing new ones (across rotation) until interrupted'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand audit; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand cluster; and not __fish_seen_subcommand_from export-secrets import-secrets help" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand cluster; and not __fish_seen_subcommand_from export-secrets import-secrets help" -f -a "export-secrets" -d 'Write this node\'s secrets (key-hash pepper, master secret) and admin tokens to a file (mode 0600) for `import-secrets` on a new node. The file unlocks every key: move it over a channel you trust (scp, a secrets manager), then delete it'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand cluster; and not __fish_seen_subcommand_from export-secrets import-secrets help" -f -a "import-secrets" -d 'Make a new data directory holding the secrets and admin tokens of an exported file and an empty key table; `keyward serve --replication nats` on it then joins the cluster'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand cluster; and not __fish_seen_subcommand_from export-secrets import-secrets help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand cluster; and __fish_seen_subcommand_from export-secrets" -l data-dir -d 'Data directory of a node of the cluster' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand cluster; and __fish_seen_subcommand_from export-secrets" -l out -d 'Where to write the secrets file (it must not exist)' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand cluster; and __fish_seen_subcommand_from export-secrets" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand cluster; and __fish_seen_subcommand_from import-secrets" -l data-dir -d 'The new node\'s data directory (absent or empty)' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand cluster; and __fish_seen_subcommand_from import-secrets" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand cluster; and __fish_seen_subcommand_from help" -f -a "export-secrets" -d 'Write this node\'s secrets (key-hash pepper, master secret) and admin tokens to a file (mode 0600) for `import-secrets` on a new node. The file unlocks every key: move it over a channel you trust (scp, a secrets manager), then delete it'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand cluster; and __fish_seen_subcommand_from help" -f -a "import-secrets" -d 'Make a new data directory holding the secrets and admin tokens of an exported file and an empty key table; `keyward serve --replication nats` on it then joins the cluster'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand cluster; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand backup" -l data-dir -d 'The data directory to back up' -r -F
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand backup" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand generate-assets" -s h -l help -d 'Print help'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "verify" -d 'Ask a running server whether a credential is valid (exit 0: valid, 1: not valid)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "keys" -d 'Key sets for tests, demos and benchmarks'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "table" -d 'Offline key-table (snapshot) tools'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "issue" -d 'Mint a new key on a running server; prints the credential (shown only this once)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "import" -d 'Import foreign keys from a file (one per line, or JSON lines), in batches of up to 1000'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "revoke" -d 'Revoke a key by id or by credential; every shard refuses it before this returns'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "rotate" -d 'Replace a key with a new one (same tenant, scopes, allowlist and expiry unless given)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "update" -d 'Change a key\'s name, scopes or address allowlist'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "inspect" -d 'Show a key\'s record (never its secret), by id or by credential'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "list" -d 'List keys, optionally of one tenant, a page at a time'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "stats" -d 'Sequence numbers, counts, log size, snapshot age and replication state of a running server'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "compact" -d 'Write a new snapshot now and shorten the delta log'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "stat" -d 'A live line per interval from the server\'s metrics listener: verifies/s by status, connections, p99 service time, applied sequence (like `redis-cli --stat`)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "self-revoke" -d 'Revoke a key you hold, over the verify port (no admin token: the key is the proof)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "token" -d 'Derived capability tokens: derive, attenuate offline, inspect'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "log" -d 'Offline delta-log tools: check a log, cut a damaged one'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "admin" -d 'Named admin tokens with a role (read or write): add, remove, list'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "audit" -d 'The audit trail of a data directory: check its hash chain, read it'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "cluster" -d 'Cluster nodes: carry the secrets and admin tokens to a new node'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "backup" -d 'Copy a data directory, with the server running or stopped, into a new directory: files in the order that keeps the copy consistent (the delta log before the key table), each fsynced, then the copy checked as a start would check it (docs/DEPLOY.md)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "generate-assets" -d 'Write the man pages and shell completions generated from this CLI into a directory'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and not __fish_seen_subcommand_from verify keys table issue import revoke rotate update inspect list stats compact stat self-revoke token log admin audit cluster backup generate-assets help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and __fish_seen_subcommand_from keys" -f -a "generate" -d 'Mint N keys into a data directory\'s table and write their plaintext credentials, each with the status a plain VERIFY must return, to a key file'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and __fish_seen_subcommand_from table" -f -a "build" -d 'Build a data directory\'s table from JSON lines (one key per line; see docs/FORMATS.md)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and __fish_seen_subcommand_from table" -f -a "inspect" -d 'Show a snapshot\'s header, counts and first records (never secrets)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and __fish_seen_subcommand_from table" -f -a "stats" -d 'Where a snapshot\'s bytes go (bytes per key by section), the hash tables\' load factor and probe lengths, and the interned names'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and __fish_seen_subcommand_from table" -f -a "upgrade" -d 'Rewrite an older-format snapshot in the current format, keeping every key, its sequence and creation time (stop the server first). A current snapshot is left as it is'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and __fish_seen_subcommand_from table" -f -a "check" -d 'Fully validate a snapshot (exit 0: good, 1: refused, with the reason)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and __fish_seen_subcommand_from token" -f -a "derive" -d 'Mint a short-lived token from a key: with the key itself (--key, verify port), or as an admin by key id (--id, control port). Prints the token'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and __fish_seen_subcommand_from token" -f -a "attenuate" -d 'Narrow a token offline (no server needed): the result can only do less'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and __fish_seen_subcommand_from token" -f -a "inspect" -d 'Show a token\'s parent and caveats (offline; does not check its signature)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and __fish_seen_subcommand_from log" -f -a "check" -d 'List every record of the delta log and where damage begins (the server must be stopped). Exit 0: no damage; 1: damage found'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and __fish_seen_subcommand_from log" -f -a "cut" -d 'Cut the delta log at a byte offset, dropping every record from there on. The whole log is first copied to deltas.log.damaged-OFFSET beside it, and the changes dropped are listed so they can be made again (a revocation dropped here is undone until it is)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and __fish_seen_subcommand_from admin" -f -a "add" -d 'Add an admin; prints its new token (shown only this once)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and __fish_seen_subcommand_from admin" -f -a "remove" -d 'Remove an admin: its token is refused from its next request on'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and __fish_seen_subcommand_from admin" -f -a "list" -d 'List the admins and their roles (never their tokens)'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and __fish_seen_subcommand_from audit" -f -a "verify" -d 'Check the hash chain across every file; names the first bad line. Prints the hash of the last line: record it elsewhere to detect lines cut off the end'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and __fish_seen_subcommand_from audit" -f -a "tail" -d 'Print the last lines, optionally only of one key or tenant or since a time, and with --follow keep printing new ones (across rotation) until interrupted'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and __fish_seen_subcommand_from cluster" -f -a "export-secrets" -d 'Write this node\'s secrets (key-hash pepper, master secret) and admin tokens to a file (mode 0600) for `import-secrets` on a new node. The file unlocks every key: move it over a channel you trust (scp, a secrets manager), then delete it'
complete -c keyward-ctl -n "__fish_keyward_ctl_using_subcommand help; and __fish_seen_subcommand_from cluster" -f -a "import-secrets" -d 'Make a new data directory holding the secrets and admin tokens of an exported file and an empty key table; `keyward serve --replication nats` on it then joins the cluster'
