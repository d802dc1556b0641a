#!/bin/bash
# The upgrader under a real systemd: run by container.sh, which sets $IN (a prefix that runs a command
# inside the booted container). Prints one TAP line per scenario; exits non-zero if any failed.
# The unit under test is systemd/upgrader@.service with only the binary's path substituted.
set -uo pipefail
: "${IN:?run me through container.sh}"

BIN=/opt/app/dist/upgrader.cjs
AGENT=/opt/app/dist/examples/example-agent.js
n=0
failed=0

c() { $IN "$@"; }
prop() { c systemctl show -p "$2" --value "upgrader@$1.service"; }
agents() { c pgrep -fc "$AGENT" || true; }

# wait_until SECONDS DESCRIPTION COMMAND...: polls an observable fact, with a deadline.
wait_until() {
  local seconds=$1 what=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out after ${seconds}s waiting until $what" >&2; return 1; fi
    sleep 0.1
  done
}
status_has() { prop "$1" StatusText | grep -q -- "$2"; }
state_is() { [ "$(prop "$1" ActiveState)" = "$2" ]; }
no_agents() { [ "$(agents)" = 0 ]; }

# make_root NAME [VERSION:EXAMPLE_JSON ...]: versions 1.0.0 and 2.0.0 of the example agent, current -> 1.0.0.
make_root() {
  local name=$1; shift
  local root=/var/lib/upgrader/$name
  c sh -c "mkdir -p $root/versions && ln -sfn versions/1.0.0 $root/current"
  for spec in 1.0.0: 2.0.0: "$@"; do
    local version=${spec%%:*} json=${spec#*:}
    c sh -c "mkdir -p $root/versions/$version/bin && printf '#!/bin/sh\nexec node $AGENT\n' > $root/versions/$version/bin/agent && chmod 755 $root/versions/$version/bin/agent"
    [ -n "$json" ] && c sh -c "printf '%s' '$json' > $root/versions/$version/example.json"
  done
  return 0
}
desire() { c sh -c "echo $2 > /var/lib/upgrader/$1/desired-version"; }

scenario() {
  local name=$1; shift
  n=$((n + 1))
  local out
  if out=$( ( set -e; "$@" ) 2>&1 ); then
    echo "ok $n - $name"
  else
    failed=$((failed + 1))
    echo "not ok $n - $name"
    printf '%s\n' "$out" | sed 's/^/# /'
  fi
}

t_verify() {
  local out
  out=$(c systemd-analyze verify upgrader@check.service 2>&1)
  [ -z "$out" ] || { echo "systemd-analyze verify printed: $out"; return 1; }
}

t_ready_gates_active() {
  make_root a '1.0.0:{"verifyMs":1500}'
  c systemctl start --no-block upgrader@a.service
  sleep 0.5
  [ "$(prop a ActiveState)" = activating ] || { echo "expected activating before ready, got $(prop a ActiveState)"; return 1; }
  wait_until 15 "the unit is active" state_is a active
  wait_until 5 "STATUS= names the version" status_has a "running 1.0.0"
  c "$BIN" status --root /var/lib/upgrader/a >/dev/null
}

t_live_handoff_keeps_main_pid() {
  local main samples
  main=$(prop a MainPID)
  c sh -c 'rm -f /tmp/samples; while :; do systemctl show -p ActiveState --value upgrader@a.service >> /tmp/samples; sleep 0.05; done' &
  local sampler=$!
  desire a 2.0.0
  wait_until 20 "2.0.0 runs" status_has a "running 2.0.0"
  sleep 0.5
  kill $sampler; wait $sampler 2>/dev/null || true
  c pkill -f 'ActiveState --value upgrader@a' || true
  samples=$(c sort -u /tmp/samples)
  [ "$samples" = active ] || { echo "the unit was not active throughout: $samples"; return 1; }
  [ "$(prop a MainPID)" = "$main" ] || { echo "MainPID changed from $main to $(prop a MainPID)"; return 1; }
  [ "$(c readlink /var/lib/upgrader/a/current)" = versions/2.0.0 ]
  [ "$(agents)" = 1 ] || { echo "expected one agent, found $(agents)"; return 1; }
}

t_failed_candidate_stays_active() {
  c sh -c 'mkdir -p /var/lib/upgrader/a/versions/3.0.0/bin && cp /var/lib/upgrader/a/versions/2.0.0/bin/agent /var/lib/upgrader/a/versions/3.0.0/bin/ && echo "{\"verify\":\"fail\",\"reason\":\"schema too new\"}" > /var/lib/upgrader/a/versions/3.0.0/example.json'
  desire a 3.0.0
  wait_until 20 "the failure shows in STATUS=" status_has a "2.0.0 -> 3.0.0 failed"
  prop a StatusText | grep -q "^running 2.0.0" || { echo "STATUS= is $(prop a StatusText)"; return 1; }
  state_is a active
  [ "$(c readlink /var/lib/upgrader/a/current)" = versions/2.0.0 ]
}

t_kill_main_restarts_and_recovers() {
  local main
  main=$(prop a MainPID)
  c systemctl kill -s KILL --kill-whom=main upgrader@a.service
  wait_until 20 "systemd restarted the upgrader" sh -c "[ \"\$($IN systemctl show -p MainPID --value upgrader@a.service)\" != $main ] && [ \"\$($IN systemctl show -p MainPID --value upgrader@a.service)\" != 0 ]"
  wait_until 20 "the unit is active again" state_is a active
  [ "$(prop a NRestarts)" -ge 1 ]
  [ "$(agents)" = 1 ] || { echo "expected one agent after recovery, found $(agents)"; return 1; }
  c "$BIN" status --root /var/lib/upgrader/a | grep -q "current *2.0.0"
}

t_halt_keeps_unit_active() {
  c "$BIN" halt --root /var/lib/upgrader/a --by systemd-test
  no_agents || { echo "agents left after the halt: $(agents)"; return 1; }
  state_is a active || { echo "the unit is $(prop a ActiveState) once halted"; return 1; }
  status_has a "halted since" || { echo "STATUS= once halted: $(prop a StatusText)"; return 1; }
  # A restart comes back halted: READY=1 without an agent, nothing started.
  c systemctl restart upgrader@a.service
  state_is a active || { echo "the unit is $(prop a ActiveState) after a restart while halted"; return 1; }
  status_has a "asked by systemd-test" || { echo "STATUS= after the restart: $(prop a StatusText)"; return 1; }
  no_agents || { echo "an agent started after the restart: $(agents)"; return 1; }
  c "$BIN" resume --root /var/lib/upgrader/a
  wait_until 20 "one agent again" sh -c "[ \"\$($IN pgrep -fc $AGENT)\" = 1 ]"
}

t_stop_idle_leaves_nothing() {
  c systemctl stop upgrader@a.service
  state_is a inactive
  no_agents || { echo "agents left: $(agents)"; return 1; }
  [ "$(prop a ExecMainStatus)" = 0 ] || { echo "the upgrader exited with $(prop a ExecMainStatus)"; return 1; }
}

t_stop_mid_handoff_leaves_nothing() {
  make_root b '2.0.0:{"verifyMs":8000}'
  c systemctl start upgrader@b.service
  desire b 2.0.0
  wait_until 20 "the handoff is under way" status_has b "upgrading 1.0.0 -> 2.0.0"
  c systemctl stop upgrader@b.service
  state_is b inactive || { echo "state $(prop b ActiveState)"; return 1; }
  no_agents || { echo "agents left: $(agents)"; return 1; }
  [ "$(c readlink /var/lib/upgrader/b/current)" = versions/1.0.0 ] || { echo "current -> $(c readlink /var/lib/upgrader/b/current)"; return 1; }
  local report
  report=$(c "$BIN" status --root /var/lib/upgrader/b --json || true)
  printf '%s' "$report" | grep -q '"result": "failed"' || { echo "status: $report"; c journalctl -u upgrader@b --no-pager | tail -20; return 1; }
}

t_crash_loop_is_limited() {
  make_root c '1.0.0:{"crashAfterGoMs":200}'
  c systemctl start upgrader@c.service || true
  wait_until 60 "the start limit stops the crash loop" sh -c "[ \"\$($IN systemctl show -p Result --value upgrader@c.service)\" = start-limit-hit ]"
  state_is c failed
  [ "$(prop c ExecMainStatus)" = 2 ] || { echo "expected the agent's status 2, got $(prop c ExecMainStatus)"; return 1; }
  no_agents
}

t_runs_under_user() {
  c useradd --system --no-create-home upgrader 2>/dev/null || true
  make_root u '2.0.0:{"verifyMs":300}'
  c chown -R upgrader:upgrader /var/lib/upgrader/u
  c mkdir -p /etc/systemd/system/upgrader@u.service.d
  c cp /opt/app/systemd/user.conf.example /etc/systemd/system/upgrader@u.service.d/user.conf
  c systemctl daemon-reload
  c systemctl start upgrader@u.service
  state_is u active
  local main
  main=$(prop u MainPID)
  [ "$(c ps -o user= -p "$main" | tr -d ' ')" = upgrader ] || { echo "the upgrader runs as $(c ps -o user= -p "$main")"; return 1; }
  wait_until 5 "STATUS= from a non-root upgrader" status_has u "running 1.0.0"
  desire u 2.0.0
  wait_until 20 "2.0.0 runs under User=" status_has u "running 2.0.0"
  [ "$(prop u MainPID)" = "$main" ]
  c systemctl stop upgrader@u.service
  no_agents
}

scenario "systemd-analyze verify reports nothing" t_verify
scenario "the unit is active only after the agent's ready, and STATUS= shows the version" t_ready_gates_active
scenario "a live handoff keeps MainPID and the unit active throughout" t_live_handoff_keeps_main_pid
scenario "a failed candidate leaves the unit active on the old version, reason in STATUS=" t_failed_candidate_stays_active
scenario "SIGKILL of the upgrader: systemd restarts it and the root recovers with one agent" t_kill_main_restarts_and_recovers
scenario "upgrader halt keeps the unit active with no agent, STATUS= says who halted it, a restart comes back halted, resume starts it again" t_halt_keeps_unit_active
scenario "systemctl stop while idle leaves no process" t_stop_idle_leaves_nothing
scenario "systemctl stop mid-handoff leaves no process and current on the old version" t_stop_mid_handoff_leaves_nothing
scenario "a crash-looping agent hits the start limit" t_crash_loop_is_limited
scenario "the same under User= a non-root user" t_runs_under_user

echo "1..$n"
echo "$((n - failed)) passed, $failed failed"
[ "$failed" = 0 ]
