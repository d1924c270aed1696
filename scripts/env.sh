# Shared settings for the project's scripts (sourced).
export TIDB_EBS_CACHE="${TIDB_EBS_CACHE:-$HOME/.cache/tidb-ebs-backup}"
# The cargo target dir lives outside the clone so a fresh checkout (CI) starts warm.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TIDB_EBS_CACHE/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
mkdir -p "$TIDB_EBS_CACHE"
