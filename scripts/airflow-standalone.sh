#!/usr/bin/env bash
# `make airflow`: Airflow 3 standalone (api-server and UI, scheduler, dag-processor, triggerer) on
# this project's dags/ and plugins/, for one person on this machine: SQLite, LocalExecutor, no login,
# CloudTrail to read and a Slack to post to, so that the DAGs can be run up to an alert from the UI.
#
# Why a script: standalone needs the venv on PATH (it starts its components as `airflow <cmd>`),
# and stopping it cleanly needs care: SIGINT to its process group, then TERM to the supervisor,
# which otherwise lingers and keeps ports 8080/8793/8794. Settings written ${X:-default} below can
# be overridden from the environment.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-.venv}"
[[ "$VENV" == /* ]] || VENV="$ROOT/$VENV"
if [[ ! -x "$VENV/bin/airflow" ]]; then
    echo "airflow-standalone: $VENV/bin/airflow is missing; run 'make install' first" >&2
    exit 2
fi
export PATH="$VENV/bin:$PATH"
PY="$VENV/bin/python"

export AIRFLOW_HOME="${AIRFLOW_HOME:-$ROOT/var/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite:///$AIRFLOW_HOME/airflow.db}"
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-4}"  # the default 32 pre-forks 32 workers
# Paused at creation (Airflow's default, kept on purpose): unpaused, the hourly DAGs would start on
# the current hour at once, detections failing until baseline_initial has run and baseline_update
# waiting hours in its sensor. Trigger what you want; the trigger dialog can unpause the DAG.
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="${AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION:-True}"
# No login: everyone reaching the UI is admin, so the UI listens on 127.0.0.1 only.
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True
export AIRFLOW__API__HOST="${AIRFLOW__API__HOST:-127.0.0.1}"
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-8080}"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$AIRFLOW__API__PORT/execution/"

# trailguard reads a local folder in CloudTrail's S3 layout: TRAILGUARD_SOURCE, else the demo's trail
# (if `make demo` ran), else a small trail generated here once (10 quiet days, the three incidents in
# the last 2). Its own lake and state, so the demo's are never touched.
if [[ -z "${TRAILGUARD_SOURCE:-}" ]]; then
    if [[ -d "$ROOT/var/demo/trail" ]]; then
        export TRAILGUARD_SOURCE="$ROOT/var/demo/trail"
    else
        export TRAILGUARD_SOURCE="$ROOT/var/airflow/trail"
        if [[ ! -d "$TRAILGUARD_SOURCE/AWSLogs" ]]; then
            echo "Generating CloudTrail into $TRAILGUARD_SOURCE (trailguard generate)..."
            "$VENV/bin/trailguard" generate --out "$TRAILGUARD_SOURCE" --days 10 --events-per-hour 10 > /dev/null
        fi
    fi
fi
export TRAILGUARD_LAKE="${TRAILGUARD_LAKE:-$ROOT/var/airflow/lake}"
export TRAILGUARD_DB="${TRAILGUARD_DB:-sqlite:///$ROOT/var/airflow/state.db}"

# Slack: the user's connection if the environment defines it, else a local webhook (the demo's
# receiver) that writes every message it gets, rendered, to var/airflow/slack.log.
SLACK_CONN_ID="${TRAILGUARD_SLACK_CONN_ID:-slack_alerts}"
SLACK_CONN_VAR="AIRFLOW_CONN_$(tr '[:lower:]' '[:upper:]' <<< "$SLACK_CONN_ID")"
SLACK_LOG="$ROOT/var/airflow/slack.log"
sink_pid=""
if [[ -n "${!SLACK_CONN_VAR:-}" ]]; then
    slack_line="your connection $SLACK_CONN_ID ($SLACK_CONN_VAR)"
else
    port="$("$PY" -c 'from trailguard.demo import free_port; print(free_port())')"
    sink="$("$PY" -c "from trailguard.demo import sink_url; print(sink_url($port))")"
    mkdir -p "$(dirname "$SLACK_LOG")"
    touch "$SLACK_LOG"
    "$PY" -m trailguard.demo slack-sink --port "$port" --log "$SLACK_LOG" &
    sink_pid=$!
    export "$SLACK_CONN_VAR"="{\"conn_type\": \"slackwebhook\", \"password\": \"$sink\"}"
    slack_line="a local webhook on 127.0.0.1:$port; messages in: tail -f ${SLACK_LOG#"$ROOT"/}"
fi

mkdir -p "$AIRFLOW_HOME"
cat <<EOF
Airflow UI   http://127.0.0.1:$AIRFLOW__API__PORT  (no login, so the UI listens on 127.0.0.1 only; the
             scheduler's and triggerer's log servers on :8793/:8794 bind every interface, which
             Airflow has no setting for, and answer only requests signed with this home's secret)
AIRFLOW_HOME $AIRFLOW_HOME
source       $TRAILGUARD_SOURCE
lake, state  $TRAILGUARD_LAKE, $TRAILGUARD_DB
Slack        $slack_line
EOF
"$PY" -m trailguard.demo airflow-steps "$TRAILGUARD_SOURCE" || true
echo "Ctrl-C stops every component."

# Its own session and process group, so the stop below reaches every component and nothing else.
setsid airflow standalone &
pid=$!
own_group() { [[ "$(ps -o pgid= -p "$pid" | tr -d ' ')" == "$pid" ]]; }
for _ in $(seq 1 50); do own_group && break; sleep 0.1; done  # signalling it earlier would hit make
if ! own_group; then
    echo "airflow-standalone: airflow did not get its own process group; stopping it" >&2
    kill -TERM "$pid" 2>/dev/null
    [[ -z "$sink_pid" ]] || kill -TERM "$sink_pid" 2>/dev/null
    exit 1
fi

alive() { kill -0 "$1" 2>/dev/null; }
# Components of the group still running (not the supervisor, not exited children it has not reaped).
components() { ps -e -o pid=,pgid=,stat= | awk -v g="$pid" '$2 == g && $1 != g && $3 !~ /^Z/' | wc -l; }

stop_sink() {
    if [[ -n "$sink_pid" ]]; then
        kill -TERM "$sink_pid" 2>/dev/null || true
        wait "$sink_pid" 2>/dev/null || true
        sink_pid=""
    fi
}

stop() {
    trap 'kill -KILL -- "-$pid" 2>/dev/null' INT TERM  # a second Ctrl-C: no more patience
    echo "Stopping Airflow: SIGINT to its process group, as Ctrl-C would..."
    kill -INT -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do alive "$pid" && (($(components) > 0)) || break; sleep 1; done
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true  # the supervisor lingers once its children have exited
        for _ in $(seq 1 10); do alive "$pid" || break; sleep 1; done
    fi
    kill -KILL -- "-$pid" 2>/dev/null || true  # whatever is left in the group
    wait "$pid" 2>/dev/null || true
    stop_sink
    echo "Airflow stopped."
}

trap stop INT TERM
wait "$pid" || true
kill -KILL -- "-$pid" 2>/dev/null || true  # standalone ended on its own: no component outlives it
stop_sink
