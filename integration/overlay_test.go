package integration

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// overlayScript runs in a private mount namespace, with a scratch /nix
// (store and state) bound over the real one, so that the machine's own
// store and database are never touched, and Nix's garbage collector runs
// on the scratch store only.
const overlayScript = `
set -eu
S=$SCRATCH
mkdir -p $S/nix/store $S/nix/var/nix $S/lower
mount --bind $S/nix /nix
echo "an earlier build" > /nix/store/earlier-file
# A first mount killed outright leaves its overlay behind; the next start
# clears it.
$IPNIX mount --overlay /nix/store --api $API --substituter file://$CACHE \
  --trusted-public-key "$PUB" --closure $TOP $S/lower > $S/log0 2>&1 &
pid=$!
for i in $(seq 300); do grep -q "ipnix: serving" $S/log0 && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
kill -KILL $pid; wait $pid 2>/dev/null || true
$IPNIX mount --overlay /nix/store --api $API --substituter file://$CACHE \
  --trusted-public-key "$PUB" --closure $TOP --metrics 127.0.0.1:0 $S/lower > $S/log 2>&1 &
pid=$!
for i in $(seq 300); do grep -q "ipnix: serving" $S/log && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
cat $S/log
echo "== verify-path"; nix-store --verify-path $TOP && echo VERIFY-OK
echo "== path-info"; nix --extra-experimental-features nix-command path-info -r $TOP | sort
echo "== references"; nix-store -q --references $TOP
echo "== run"; $BIN/bin/hello
echo "== earlier"; cat /nix/store/earlier-file
echo "== gc"; nix-store --gc > /dev/null 2>&1 && echo GC-OK
nix-store --verify-path $TOP && echo VERIFY-AFTER-GC-OK
cat $LIB/share/msg
echo "== fetched"; curl -s http://$(sed -n 's|.*metrics on http://\([^/]*\)/metrics.*|\1|p' $S/log)/metrics | grep '^ipnix_fetch_bytes_total'
echo "== stop"; kill -TERM $pid; wait $pid || true
tail -3 $S/log
echo "== mounts"; grep -E " ($S/lower|/nix/store) " /proc/mounts || echo NO-MOUNTS
echo "== whiteouts"; find $S/nix/store -type c | head; echo WHITEOUTS-END
echo "== store"; ls $S/nix/store
echo "== db"; nix-store --check-validity $TOP 2>&1 || echo GONE-FROM-DB
`

// One command puts a published closure under /nix/store, lazily: Nix
// holds its paths valid (verify-path, path-info, references), a program
// runs from its /nix/store path fetching only what it reads, Nix's GC
// keeps it, and stopping leaves the store as it was (no whiteouts, no
// mounts) plus what was there before.
func TestOverlayOneCommand(t *testing.T) {
	p := publishClosure(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare(1)")
	}
	bin := p.closure.path(t, "ipnix-test-bin")
	lib := p.closure.path(t, "ipnix-test-lib")
	scratch := t.TempDir()
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "bash", "-c", overlayScript)
	cmd.Env = append(os.Environ(), "SCRATCH="+scratch, "IPNIX="+ipnixBin, "API="+p.kubo.api, "CACHE="+p.cache,
		"PUB="+p.pub, "TOP="+p.closure.top, "BIN="+bin, "LIB="+lib, "NIX_CONFIG=substituters =")
	var out []byte
	var err error
	withTimeout(t, 3*time.Minute, "the overlay script", func(context.Context) { out, err = cmd.CombinedOutput() })
	text := string(out)
	t.Logf("overlay script output:\n%s", text)
	if err != nil {
		t.Fatalf("overlay script: %v", err)
	}
	for _, want := range []string{"VERIFY-OK", "GC-OK", "VERIFY-AFTER-GC-OK", "hello from lib", "an earlier build", "NO-MOUNTS", "GONE-FROM-DB"} {
		if !strings.Contains(text, want) {
			t.Errorf("missing %q", want)
		}
	}
	for _, sp := range p.closure.paths {
		if !strings.Contains(text[strings.Index(text, "== path-info"):strings.Index(text, "== references")], sp) {
			t.Errorf("nix path-info -r lacks %s", sp)
		}
	}
	if i := strings.Index(text, "== whiteouts\n"); i < 0 || !strings.HasPrefix(text[i+len("== whiteouts\n"):], "WHITEOUTS-END") {
		t.Errorf("whiteouts left in the store")
	}
	// The lazy paths never landed in the store itself (the collector,
	// run on the scratch store, removed the unregistered file put there).
	if i := strings.Index(text, "== store\n"); i < 0 || strings.TrimSpace(text[i+len("== store\n"):strings.Index(text, "== db")]) != "" {
		t.Errorf("the store after stopping holds more than before")
	}
	// Only what the program read was fetched: far less than the closure.
	var total int64
	for _, sp := range p.closure.paths {
		total += int64(p.narInfo(t, sp).NarSize)
	}
	if m := regexpFetched.FindStringSubmatch(text); m == nil {
		t.Errorf("no fetch counter in the output")
	} else if n := atoi(m[1]); n*4 > total {
		t.Errorf("fetched %d of %d bytes of the closure to run one program", n, total)
	} else {
		t.Logf("fetched %d of %d bytes of the closure", n, total)
	}
}

var regexpFetched = regexp.MustCompile(`ipnix_fetch_bytes_total ([0-9]+)`)

func atoi(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}
