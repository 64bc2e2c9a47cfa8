complete -c keyward-loadgen -l generate-assets -d 'Write the man page and shell completions generated from this CLI into DIR, and exit' -r -F
complete -c keyward-loadgen -l server -d 'Server to drive: a keyward verify port, or a Redis/memcached address; HOST:PORT, or unix:/PATH for a Unix-domain socket' -r
complete -c keyward-loadgen -l protocol -d 'Wire protocol: keyward, or a baseline store looking up the same credentials' -r -f -a "keyward\t'keyward\'s verify port (VERIFY, VERIFY_BATCH, PING)'
resp\t'Redis or anything speaking RESP: GET (MGET with --batch), PING'
memcache\t'memcached text protocol: get, version (as the no-op)'"
complete -c keyward-loadgen -l keys -d 'Key file (`keyward-ctl keys generate --out-keys`): credential, expected status, scopes, allowlist' -r -F
complete -c keyward-loadgen -l op -d 'What to send: lookups (VERIFY, GET), the protocol\'s no-op (PING, the I/O ceiling), or a control-port operation' -r -f -a "verify\t'VERIFY (keyward), GET (resp), get (memcache)'
ping\t'PING (keyward, resp) or version (memcache): the I/O ceiling'
issue\t'Control port: ISSUE with --connections concurrent clients'
revoke\t'Control port: REVOKE (keys are issued first, unmeasured)'
import\t'Control port: IMPORT --requests keys in batches of --batch (default 1000)'
propagation\t'Revoke --requests keys (default 1000) on --control, one at a time, and time how long each stays valid on --server (another node of a cluster) after the acknowledgement'"
complete -c keyward-loadgen -l connections -d 'Open connections, spread over the client threads' -r
complete -c keyward-loadgen -l depth -d 'Requests in flight per connection: always this many in closed loop, at most this many in open loop' -r
complete -c keyward-loadgen -l refill -d 'Closed loop: how a connection refills its pipeline: `each` sends a new request per answer (the pipeline stays full), `whole` sends the next --depth requests together once all answers are in (as redis-benchmark\'s -P does)' -r -f -a "each\t''
whole\t''"
complete -c keyward-loadgen -l rate -d 'Open loop: requests per second in all, sent on a fixed schedule' -r
complete -c keyward-loadgen -l batch -d 'Credentials per request: VERIFY_BATCH (keyward) or MGET (resp); 0 sends one per request' -r
complete -c keyward-loadgen -l mix -d 'Mix of credential kinds by weight, e.g. valid=90,unknown=4,revoked=2,expired=2,malformed=1,derived=1 (kinds: any status name in the key file, malformed, derived). Default: the whole key file, each credential equally likely' -r
complete -c keyward-loadgen -l zipf -d 'Key popularity: Zipf with this exponent (e.g. 1.1) instead of uniform' -r
complete -c keyward-loadgen -l scope -d 'Require this scope in every VERIFY (expected statuses follow the key file\'s scopes)' -r
complete -c keyward-loadgen -l client-address -d 'Name this end-client address in every VERIFY (checked against key allowlists)' -r
complete -c keyward-loadgen -l tokens -d 'Derived tokens to mint (DERIVE, ttl 1 h) from valid keys before the run, for the `derived` kind; without --mix, the run sends only these tokens' -r
complete -c keyward-loadgen -l seed -d 'Seed of the request sequence (mix and popularity draws)' -r
complete -c keyward-loadgen -l threads -d 'Client threads, each pinned to one CPU of --cpus (or not pinned when --cpus is empty)' -r
complete -c keyward-loadgen -l cpus -d 'CPUs for the client threads, comma-separated' -r
complete -c keyward-loadgen -l duration -d 'Measured seconds, after the warm-up (default 10, or unbounded with --requests)' -r
complete -c keyward-loadgen -l warmup -d 'Warm-up in seconds: sent and checked but not counted' -r
complete -c keyward-loadgen -l requests -d 'Measured requests to send (stops early when --duration ends first). Control operations: how many (for import: how many keys; default 10000)' -r
complete -c keyward-loadgen -l slo-p99 -d 'Latency bound for --sweep, e.g. 1ms, 500us' -r
complete -c keyward-loadgen -l sweep-steps -d 'Sweep steps between zero and the closed-loop capacity' -r
complete -c keyward-loadgen -l hgrm -d 'Write the HdrHistogram percentile distribution (.hgrm, milliseconds) here' -r -F
complete -c keyward-loadgen -l plot -d 'Draw latency by percentile (or, with --sweep, latency against throughput) as SVG here' -r -F
complete -c keyward-loadgen -l control -d 'Control port, for --op issue, revoke and import' -r
complete -c keyward-loadgen -l token-file -d 'Admin token file, for the control operations' -r -F
complete -c keyward-loadgen -l pace-ms -d 'Control operations: each client waits this long before each request (light steady load)' -r
complete -c keyward-loadgen -l prepare -d 'Baselines: store every credential the run will look up (value: its status and scopes) in the Redis or memcached server, then exit. Run once before measuring'
complete -c keyward-loadgen -l sweep -d 'Step the open-loop rate up to saturation and report the highest rate whose p99 stays under --slo-p99. Each step runs --duration seconds'
complete -c keyward-loadgen -l json -d 'Print the final report as JSON'
complete -c keyward-loadgen -l quiet -d 'No progress line'
complete -c keyward-loadgen -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keyward-loadgen -s V -l version -d 'Print version'
