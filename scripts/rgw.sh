#!/usr/bin/env bash
# A single-node Ceph RGW (S3) on 127.0.0.1 for tests: mon, one bluestore OSD on a sparse file,
# radosgw, a user with known keys and a bucket. No systemd, nothing outside DIR.
#
#   scripts/rgw.sh start DIR PORT [PID]  boots it (S3 at http://127.0.0.1:PORT), writes
#                                        DIR/env.json; with PID, stops it once that process ends
#   scripts/rgw.sh stop DIR              stops its daemons and removes DIR
#   scripts/rgw.sh stop-gateway DIR      stops only radosgw (S3 down; the cluster keeps its data)
#   scripts/rgw.sh start-gateway DIR     starts radosgw again, waits until S3 answers
#
# The mon listens on PORT+1 and the OSD on PORT+2..PORT+9. Needs the Debian packages ceph-mon,
# ceph-osd, radosgw and ceph-common (scripts/setup.sh installs them).
set -Eeuo pipefail

ACCESS_KEY=registry-mirror-test
SECRET_KEY=registry-mirror-test-secret-0123456789
BUCKET=registry-mirror
REGION=us-east-1
POOLS=(.rgw.root default.rgw.log default.rgw.control default.rgw.meta default.rgw.buckets.index
  default.rgw.buckets.data default.rgw.buckets.non-ec)

usage() {
  echo "usage: $0 start DIR PORT [PID] | stop DIR | stop-gateway DIR | start-gateway DIR" >&2
  exit 2
}

# Stops the daemons started in DIR (SIGKILL after 15 s).
halt() {
  local dir=$1 pids=() pid
  for file in "$dir"/run/*.pid; do
    [ -f "$file" ] && pids+=("$(cat "$file")")
  done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # The daemons exit within seconds of SIGTERM; give up waiting (SIGKILL) after 15 s.
  for _ in $(seq 150); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}

stop() {
  halt "$1"
  rm -rf "$1"
}

start() {
  local dir=$1 port=$2 owner=${3:-}
  local mon_port=$((port + 1)) conf="$dir/ceph.conf" fsid osd_uuid began=$SECONDS
  mkdir -p "$dir"/{run,log,mon,osd,rgw}
  dir=$(cd "$dir" && pwd)
  # A failed boot stops what it started; its logs stay in DIR/log.
  trap 'halt "$dir"' ERR
  conf="$dir/ceph.conf"
  fsid=$(uuidgen)
  cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_port
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind port min = $((port + 2))
ms bind port max = $((port + 9))
auth cluster required = none
auth service required = none
auth client required = none
run dir = $dir/run
pid file = $dir/run/\$name.pid
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
mon data = $dir/mon/\$name
osd data = $dir/osd/\$name
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
# Small on RAM: a test cluster holds little.
osd memory target = 939524096
bluestore cache autotune = false
bluestore cache size = 67108864
osd objectstore = bluestore
bluestore block path = $dir/osd/block
bluestore block create = true
bluestore block size = 21474836480
bluestore block db create = false
bluestore block wal create = false
osd op num shards = 1
osd op num threads per shard = 2

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$port
rgw data = $dir/rgw
rgw thread pool size = 64
# AUTH_NONE cannot satisfy the default (secure): radosgw would hang reaching the mon.
ms mon client mode = crc
rgw enable usage log = false
rgw dns name = 127.0.0.1
EOF

  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$dir/monmap" >/dev/null
  ceph-mon -c "$conf" -i a --mkfs --monmap "$dir/monmap"
  ceph-mon -c "$conf" -i a

  osd_uuid=$(uuidgen)
  local id
  id=$(ceph -c "$conf" osd new "$osd_uuid")
  mkdir -p "$dir/osd/osd.$id"
  ceph-osd -c "$conf" -i "$id" --mkfs --osd-uuid "$osd_uuid" 2>"$dir/log/osd-mkfs.log"
  ceph-osd -c "$conf" -i "$id" 2>"$dir/log/osd-start.log"

  # Created lazily, the RGW pools would stall the first multipart upload for seconds.
  for pool in "${POOLS[@]}"; do
    ceph -c "$conf" osd pool create "$pool" 8 8 >/dev/null 2>&1
    ceph -c "$conf" osd pool application enable "$pool" rgw >/dev/null 2>&1
  done

  # radosgw forks once it reached the mon; it would wait forever if it never does.
  timeout 60 radosgw -c "$conf" -n client.rgw.a
  radosgw-admin -c "$conf" user create --uid=registry-mirror --display-name=registry-mirror \
    --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" >/dev/null

  local endpoint="http://127.0.0.1:$port"
  for _ in $(seq 300); do
    curl -s -o /dev/null "$endpoint/" && break
    sleep 0.1
  done
  local status
  status=$(curl -s -o "$dir/log/create-bucket.xml" -w '%{http_code}' -X PUT \
    --aws-sigv4 "aws:amz:$REGION:s3" --user "$ACCESS_KEY:$SECRET_KEY" \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$endpoint/$BUCKET")
  if [ "$status" != 200 ]; then
    echo "rgw.sh: creating bucket $BUCKET answered $status: $(cat "$dir/log/create-bucket.xml")" >&2
    exit 1
  fi
  cat >"$dir/env.json" <<EOF
{"endpoint": "$endpoint", "region": "$REGION", "bucket": "$BUCKET", "accessKeyId": "$ACCESS_KEY", "secretAccessKey": "$SECRET_KEY"}
EOF
  if [ -n "$owner" ]; then
    # A watcher outside the owner's process group: it stops the cluster however the owner ends.
    setsid bash -c "while kill -0 $owner 2>/dev/null; do sleep 1; done; exec bash '$(realpath "$0")' stop '$dir'" \
      </dev/null >/dev/null 2>&1 &
  fi
  echo "rgw.sh: S3 at $endpoint (bucket $BUCKET) in $((SECONDS - began)) s"
}

# The gateway's pid, from its pid file.
gateway_pid() {
  cat "$1/run/client.rgw.a.pid"
}

stop_gateway() {
  local dir=$1 pid
  pid=$(gateway_pid "$dir")
  kill "$pid"
  for _ in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}

start_gateway() {
  local dir=$1 endpoint
  endpoint=$(sed -E 's/.*"endpoint": "([^"]+)".*/\1/' "$dir/env.json")
  timeout 60 radosgw -c "$dir/ceph.conf" -n client.rgw.a
  for _ in $(seq 300); do
    curl -s -o /dev/null "$endpoint/" && return 0
    sleep 0.1
  done
  echo "rgw.sh: the gateway did not answer at $endpoint" >&2
  exit 1
}

case "${1:-}" in
  start) [ $# = 3 ] || [ $# = 4 ] || usage; start "$2" "$3" "${4:-}" ;;
  stop) [ $# = 2 ] || usage; stop "$2" ;;
  stop-gateway) [ $# = 2 ] || usage; stop_gateway "$2" ;;
  start-gateway) [ $# = 2 ] || usage; start_gateway "$2" ;;
  *) usage ;;
esac
