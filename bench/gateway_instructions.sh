#!/bin/bash
# Instructions per proxied request in the gateway worker, counted by callgrind (repeatable under
# load, unlike wall-clock figures): an upstream nginx (return 200), the gateway (workers: 1) under
# valgrind with instrumentation off until warmed up, then on around an 8 s wrk run (10
# connections, or CONNS, 9 headers); instructions / requests. `read_path_per_req` counts only what the
# socket reads trigger (excludes timers such as the periodic sweep).
#
#   bench/gateway_instructions.sh [LABEL]             the compiled build if current
#   CORRAL_COMPILED=off bench/gateway_instructions.sh  the interpreted modules
#   FEATURES=1 bench/gateway_instructions.sh           issue 6's standard policies on the route
#   CONNS=1 bench/gateway_instructions.sh              one connection: every request a loop wake-up
#
# Needs valgrind, nginx, wrk and curl.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LABEL="${1:-gateway}"
W=$(mktemp -d /tmp/cgw.XXXX)
UP=$(python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])")
GW=$(python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])")
mkdir -p $W/up
cat > $W/up/nginx.conf <<NG
worker_processes 1; daemon off; pid $W/up/pid; error_log $W/up/err;
events {}
http { access_log off; server { listen 127.0.0.1:$UP; location / { return 200; } } }
NG
nginx -c $W/up/nginx.conf -p $W/up & NPID=$!
if [ -n "${FEATURES:-}" ]; then
cat > $W/gw.yaml <<G
listen: 127.0.0.1:$GW
workers: 1
policies:
  rate_limits:
    per-client: {rate: 1000000, burst: 1000000, key: client_ip}
  concurrency:
    api: {max_in_flight: 10000, queue: 100, queue_timeout: 1s}
routes:
  - name: api
    match: {path_prefix: /}
    upstreams: [127.0.0.1:$UP]
    rate_limits: [per-client]
    concurrency: [api]
    criticality: normal
    breaker: {window: 10s, min_calls: 20, error_rate: 50, open_time: 5s, half_open_probes: 2}
    fallback: {status: 503, body: degraded}
G
else
cat > $W/gw.yaml <<G
listen: 127.0.0.1:$GW
workers: 1
routes:
  - name: api
    match: {path_prefix: /}
    upstreams: [127.0.0.1:$UP]
G
fi
cd "$ROOT"
valgrind --tool=callgrind --trace-children=yes --instr-atstart=no --callgrind-out-file=$W/cg.out.%p .venv/bin/python -m corral.gateway.serve --config $W/gw.yaml 2>$W/vg.err & GPID=$!
for i in $(seq 1 200); do curl -s -o /dev/null http://127.0.0.1:$GW/ && break; sleep 0.5; done
wrk -t1 -c10 -d3s http://127.0.0.1:$GW/ >/dev/null
WPID=$(pgrep -n -f "valgrind.*serve --worker 0")
callgrind_control -i on $WPID >/dev/null
OUT=$(wrk -t1 -c${CONNS:-10} -d8s -H 'User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36' -H 'Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8' -H 'Accept-Language: en-US,en;q=0.9' -H 'Accept-Encoding: gzip, deflate, br' -H 'Referer: https://shop.example.com/catalog/shoes?page=2' -H 'Cookie: session=5f3c9a7e21b84d0f9c1a; theme=dark; ab=b' -H 'Cache-Control: no-cache' -H 'X-Client-Version: 4.12.1' http://127.0.0.1:$GW/)
callgrind_control -i off $WPID >/dev/null
timeout 60 callgrind_control -d $WPID >/dev/null
REQ=$(echo "$OUT" | grep "requests in" | awk '{print $1}')
pkill -P $GPID; kill $GPID $NPID; wait 2>/dev/null
IR=$(grep -h "^totals:" $W/cg.out.*.1 | awk "{s+=\$2} END {print s}")
RD=$(callgrind_annotate --inclusive=yes $W/cg.out.*.1 2>/dev/null | grep -m1 "stream.c:uv__read " | awk '{gsub(",","",$1); print $1}')
echo "$LABEL requests=$REQ Ir=$IR per_req=$(python3 -c "print(round($IR/$REQ))") read_path_per_req=$(python3 -c "print(round($RD/$REQ))")"
[ -n "${KEEP:-}" ] && echo "kept $W" || rm -rf $W
