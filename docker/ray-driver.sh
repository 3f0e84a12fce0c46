#!/bin/sh
# Run a Ray driver (the sweep) in a container of its own: join the cluster as a node without CPUs, run the
# command, leave the cluster, and exit with the command's status.
#
# Ray 2.x attaches a driver to a raylet on its own host (ray.init(address=HOST:PORT) looks for a local node),
# so a driver outside the head/worker containers first joins as a zero-CPU node: no trial is scheduled here.
#
#   RAY_HEAD_ADDRESS  head GCS address (default ray-head:6379)
#   RAY_NODE_IP       this node's IP address as the cluster sees it (default: Ray finds it)
#   RAY_AUTH_MODE / RAY_AUTH_TOKEN  the cluster's token authentication (from .env through compose)
#
# Ctrl-C / SIGTERM reach the command as SIGINT (the sweep marks its open runs KILLED), then the node leaves.
set -u

head="${RAY_HEAD_ADDRESS:-ray-head:6379}"
if [ "$#" -eq 0 ]; then
    echo "usage: ray-driver.sh COMMAND [ARG...]" >&2
    exit 2
fi

log="$(mktemp "${TMPDIR:-/tmp}/ray-driver-node.XXXXXX")"
ray start --address="$head" --num-cpus=0 ${RAY_NODE_IP:+--node-ip-address="$RAY_NODE_IP"} --block >"$log" 2>&1 &
ray_pid=$!

leave() {
    kill -TERM "$ray_pid" 2>/dev/null
    wait "$ray_pid" 2>/dev/null
    rm -f "$log"
}

trap 'leave; exit 130' INT TERM
# Wait (up to 120 s) until the node runs.
tries=0
until grep -q "Ray runtime started" "$log" 2>/dev/null; do
    if ! kill -0 "$ray_pid" 2>/dev/null || [ "$tries" -ge 1200 ]; then
        tail -n 20 "$log" >&2
        echo "ray-driver: cannot join the Ray cluster at $head (see above)" >&2
        leave
        exit 1
    fi
    tries=$((tries + 1))
    sleep 0.1
done

# The command gets SIGINT back (an asynchronous command of sh starts with it ignored) and a session of its own,
# so a Ctrl-C on the terminal reaches it once, through the trap below, not twice.
env --default-signal=INT setsid "$@" &
child=$!
trap 'kill -INT "$child" 2>/dev/null' INT TERM
# wait returns early when a trapped signal arrives: keep waiting until the command has really ended.
while :; do
    wait "$child"
    status=$?
    kill -0 "$child" 2>/dev/null || break
done
trap - INT TERM
leave
exit "$status"
