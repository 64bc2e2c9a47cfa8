#!/usr/bin/env python3
# How much of a CPU this machine really gives: a busy loop notes every stall longer than 1 ms
# (time the virtual CPU was not running). Run one per CPU: taskset -c N python3 benches/cpu_gaps.py
import time
end = time.perf_counter_ns() + 5_000_000_000
last = time.perf_counter_ns(); gaps = []
while last < end:
    now = time.perf_counter_ns()
    if now - last > 1_000_000: gaps.append(now - last)
    last = now
print(f"gaps over 1 ms in 5 s: {len(gaps)}; largest {max(gaps)/1e6 if gaps else 0:.1f} ms; total {sum(gaps)/1e6:.0f} ms")
