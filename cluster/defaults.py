"""Default values of the parameters that `cluster.api.Cluster`'s method signatures show.

They live here, not in the modules that use them, so that `cluster.api` can show them
without importing those modules (gpu, kill, logs, service, transfer load on first use:
about 11 ms of every ``inv`` command that opens a cluster, docs/performance.md).
"""

GPU_TIMEOUT_S = 20.0  # gpu-status: one nvidia-smi round per host
SERVICE_TIMEOUT_S = 20.0  # service-status: one systemctl round per host
LOG_LINES = 100  # logs: the last lines of each log
LOG_READ_TIMEOUT_S = 60.0  # logs: reading them
KILL_SIGNAL = "TERM"
KILL_WAIT_S = 3.0  # kill: how long to watch the processes go before reporting them alive
KILL_LIST_TIMEOUT_S = 30.0  # kill: listing the matching processes
TRANSFER_IDLE_TIMEOUT_S = 60.0  # put/get: a host that moves no byte for this long fails as `stalled`
