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

// localOverlayScript runs in a private mount namespace: the ipnix mount is
// the store directory of a lower Nix store whose database `ipnix register`
// fills, an overlay joins it with an empty upper layer, and Nix >= 2.22
// uses the result as a local-overlay:// store. $NIXCHROOT, when set, is a
// chroot holding that Nix (the scratch directory is bound into it at the
// same path, so every path agrees inside and outside).
const localOverlayScript = `
set -eu
S=$SCRATCH
mkdir -p $S/lower/nix/store $S/lower/nix/var/nix $S/upper $S/work $S/merged/nix/store
N=""
if [ -n "${NIXCHROOT:-}" ]; then
  mkdir -p $NIXCHROOT$S
  # A shared mount, bound into the chroot as its peer: the FUSE and overlay
  # mounts made under it later show inside too.
  mount --bind $S $S
  mount --make-rshared $S
  mount --rbind $S $NIXCHROOT$S
  mount -t proc proc $NIXCHROOT/proc
  mount --rbind /dev $NIXCHROOT/dev
  N="chroot $NIXCHROOT"
fi
export NIX_CONFIG="extra-experimental-features = nix-command local-overlay-store
substituters =
build-users-group ="
$N nix --version
$IPNIX mount --api $API --substituter file://$CACHE --trusted-public-key "$PUB" \
  --closure $TOP --metrics 127.0.0.1:0 $S/lower/nix/store > $S/log 2>&1 &
pid=$!
for i in $(seq 300); do grep -q "ipnix: serving" $S/log && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
mount -t overlay overlay -o lowerdir=$S/lower/nix/store,upperdir=$S/upper,workdir=$S/work $S/merged/nix/store
# The lower store's database, filled while it is mounted (as for paths
# added later): ipnix serves the empty .links Nix wants in a store it opens
# for writing.
$IPNIX register --substituter file://$CACHE --trusted-public-key "$PUB" $TOP > $S/db
$N nix-store --store "local?root=$S/lower" --load-db < $S/db && echo LOADED
STORE="local-overlay://?root=$S/merged&lower-store=$S/lower&upper-layer=$S/upper"
echo "store: $STORE"
echo "== path-info"; $N nix path-info --store "$STORE" -r $TOP | sort
echo "== verify"; $N nix-store --store "$STORE" --verify-path $TOP && echo VERIFY-OK
echo "== references"; $N nix-store --store "$STORE" -q --references $TOP
echo "== read"; cat $S/merged$LIB/share/msg
echo "== fetched"; curl -s http://$(sed -n 's|.*metrics on http://\([^/]*\)/metrics.*|\1|p' $S/log)/metrics | grep '^ipnix_fetch_bytes_total'
kill -TERM $pid
`

// localOverlayNix finds a Nix >= 2.22 (local-overlay:// store): on PATH,
// or in the chroot named by IPNIX_NIX_CHROOT (e.g. one made with
// `debootstrap --variant=minbase --include=nix-bin trixie DIR`).
func localOverlayNix(t *testing.T) (chroot string) {
	t.Helper()
	version := func(out []byte) (int, int) {
		m := regexp.MustCompile(`(\d+)\.(\d+)`).FindSubmatch(out)
		if m == nil {
			return 0, 0
		}
		a, _ := strconv.Atoi(string(m[1]))
		b, _ := strconv.Atoi(string(m[2]))
		return a, b
	}
	new := func(out []byte) bool { a, b := version(out); return a > 2 || a == 2 && b >= 22 }
	if out, err := exec.Command("nix", "--version").Output(); err == nil && new(out) {
		return ""
	}
	if dir := os.Getenv("IPNIX_NIX_CHROOT"); dir != "" {
		// Nix needs /proc; mounted in a namespace of this command's own.
		out, err := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c",
			`mount -t proc proc "$1/proc" && chroot "$1" nix --version`, "sh", dir).Output()
		if err == nil && new(out) {
			return dir
		}
		t.Fatalf("IPNIX_NIX_CHROOT=%s holds no Nix >= 2.22: %v %s", dir, err, out)
	}
	t.Skip("no Nix >= 2.22 for the local-overlay store: the one on PATH is older and IPNIX_NIX_CHROOT is unset (debootstrap --variant=minbase --include=nix-bin trixie DIR makes one)")
	return ""
}

// With Nix's local-overlay store: the ipnix mount is the lower store's
// store directory, its database filled by `ipnix register`; Nix sees the
// closure valid, with its references, and reads it lazily.
func TestLocalOverlayStore(t *testing.T) {
	p := publishClosure(t)
	chroot := localOverlayNix(t)
	lib := p.closure.path(t, "ipnix-test-lib")
	scratch := t.TempDir()
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "bash", "-c", localOverlayScript)
	cmd.Env = append(os.Environ(), "SCRATCH="+scratch, "IPNIX="+ipnixBin, "API="+p.kubo.api, "CACHE="+p.cache,
		"PUB="+p.pub, "TOP="+p.closure.top, "LIB="+lib, "NIXCHROOT="+chroot)
	var out []byte
	var err error
	withTimeout(t, 3*time.Minute, "the local-overlay script", func(context.Context) { out, err = cmd.CombinedOutput() })
	text := string(out)
	t.Logf("local-overlay script output:\n%s", text)
	if err != nil {
		t.Fatalf("local-overlay script: %v", err)
	}
	for _, want := range []string{"LOADED", "VERIFY-OK", "hello from lib"} {
		if !strings.Contains(text, want) {
			t.Errorf("missing %q", want)
		}
	}
	for _, sp := range p.closure.paths {
		if !strings.Contains(text, sp) {
			t.Errorf("path-info -r lacks %s", sp)
		}
	}
}
