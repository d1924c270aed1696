# Helpers sourced by the harness scripts.
free_port() { # [HOST]: a port nothing listens on now
  python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "${1:-127.0.0.1}"
}
wait_for() { # description, command...: polls for up to 60 s
  local what="$1"; shift
  for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "timed out waiting for $what" >&2; return 1
}
alive() { # PID: running (a zombie waiting for its reaper is not)
  local state
  state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
  [ -n "$state" ] && [ "$state" != Z ]
}
stop_pidfiles() { # PIDFILE...: TERM to all at once, KILL to what still runs after 10 s; removes the files
  local f p pids=() left
  for f; do if [ -f "$f" ]; then pids+=("$(cat "$f")"); fi; done
  if [ ${#pids[@]} -gt 0 ]; then
    kill "${pids[@]}" 2>/dev/null
    for _ in $(seq 1 100); do
      left=(); for p in "${pids[@]}"; do alive "$p" && left+=("$p"); done
      [ ${#left[@]} -gt 0 ] || break
      sleep 0.1
    done
    [ ${#left[@]} -eq 0 ] || kill -9 "${left[@]}" 2>/dev/null
  fi
  rm -f "$@"
}
