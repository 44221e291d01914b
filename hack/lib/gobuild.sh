# Shared by hack/build-*.sh: build Go commands one at a time into a versioned cache, with progress.
# The caller sets TOOL (message prefix), MOD (Go module dir), BIN, LOGS and LDFLAGS, then calls `build`.

die() { echo "$TOOL: $*" >&2; exit 1; }

gobuild_init() {  # gobuild_init GO_MINOR_PREFIX WHY
  command -v go >/dev/null 2>&1 || die "no Go toolchain on PATH: install Go ${1#go}.x ($2)"
  local gov
  gov="$(GOTOOLCHAIN=local go env GOVERSION)"
  case "$gov" in
    "$1"*) ;;
    *) die "Go $gov found; $2 needs Go ${1#go}.x (see docs/local-cluster.md)" ;;
  esac
  export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
  mkdir -p "$BIN" "$LOGS"
  # Two builds into one cache (parallel test runs, make -j) would race on the same .tmp files:
  # the second waits for the first, then finds its binaries cached.
  exec 9>"$BIN/.build.lock"
  if ! flock -n 9; then
    echo "$TOOL: another build into $BIN is running; waiting for it ..."
    flock 9
  fi
}

have() {  # have NAME WANT: the cached binary exists and reports WANT
  local out
  [ -x "$BIN/$1" ] || return 1
  out="$("$BIN/$1" --version 2>/dev/null || "$BIN/$1" version --client 2>/dev/null || "$BIN/$1" version 2>/dev/null || true)"
  [[ "$out" == *"$2"* ]]
}

download_modules() {
  echo "$TOOL: downloading modules ..."
  ( cd "$MOD" && go mod download ) >"$LOGS/download.log" 2>&1 \
    || { tail -20 "$LOGS/download.log" >&2; die "go mod download failed; log: $LOGS/download.log"; }
}

build() {  # build NAME PKG WANT [TAGS]
  local name=$1 pkg=$2 want=$3 tags=${4:-} start log pid n=0
  if have "$name" "$want"; then echo "$TOOL: $name $want cached"; return; fi
  log="$LOGS/$name.log"
  start=$(date +%s)
  echo "$TOOL: building $name ($pkg) ..."
  ( cd "$MOD" && go build -trimpath ${tags:+-tags "$tags"} -ldflags "$LDFLAGS" -o "$BIN/$name.tmp" "$pkg" ) >"$log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1; n=$((n + 1))
    if (( n % 30 == 0 )) && kill -0 "$pid" 2>/dev/null; then
      echo "$TOOL:   $name still building, $(( $(date +%s) - start ))s"
    fi
  done
  wait "$pid" || { tail -20 "$log" >&2; die "building $name failed; full log: $log"; }
  mv "$BIN/$name.tmp" "$BIN/$name"
  have "$name" "$want" || die "$name built but does not report $want (log: $log)"
  echo "$TOOL: $name done in $(( $(date +%s) - start ))s"
}
