package fusefs

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ipnix/ipnix/fetch/fetchtest"
	"github.com/ipnix/ipnix/internal/testmounts"
)

// tbRecorder records what a test helper would do to its test.
type tbRecorder struct {
	testing.TB
	fatal, skip bool
}

func (r *tbRecorder) Helper()                           {}
func (r *tbRecorder) Fatalf(format string, args ...any) { r.fatal = true }
func (r *tbRecorder) Skipf(format string, args ...any)  { r.skip = true }

// Under CI a machine that cannot mount fails the mount tests instead of
// skipping them.
func TestRequireMount(t *testing.T) {
	for _, tc := range []struct {
		missing     string
		required    bool
		fatal, skip bool
	}{
		{"", false, false, false},
		{"", true, false, false},
		{"/dev/fuse", false, false, true},
		{"/dev/fuse", true, true, false},
	} {
		r := &tbRecorder{TB: t}
		requireMount(r, tc.missing, tc.required)
		if r.fatal != tc.fatal || r.skip != tc.skip {
			t.Errorf("missing %q, required %v: fatal %v skip %v, want %v %v", tc.missing, tc.required, r.fatal, r.skip, tc.fatal, tc.skip)
		}
	}
}

func TestWantOpens(t *testing.T) {
	pt := uint64(fuse.CAP_PASSTHROUGH)
	for _, tc := range []struct {
		files, noPassthrough, root bool
		flags                      uint64
		want                       bool
	}{
		{true, false, true, pt, true},
		{true, false, true, pt | fuse.CAP_ASYNC_READ, true},
		{false, false, true, pt, false},
		{true, true, true, pt, false},
		{true, false, false, pt, false},
		{true, false, true, fuse.CAP_ASYNC_READ, false},
	} {
		if got := wantOpens(tc.files, tc.noPassthrough, tc.root, tc.flags); got != tc.want {
			t.Errorf("wantOpens(%v, %v, %v, %#x) = %v", tc.files, tc.noPassthrough, tc.root, tc.flags, got)
		}
	}
}

// The passthrough decision is taken when INIT is answered, before the
// server reads any other request: an OPEN can never find it undecided
// (answered ENOSYS then, the kernel would not send OPEN again for the
// mount's life). newServer returns with INIT answered and nothing else
// served, so the decision must be there already.
func TestOpensDecidedBeforeServing(t *testing.T) {
	requireFuse(t)
	fsys, err := New(Config{Resolver: &fakeResolver{}, Blocks: fetchtest.NewStore(), FilesDir: filepath.Join(t.TempDir(), "files"), FilesQuota: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	dir := t.TempDir()
	srv, err := newServer(dir, fsys, MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer testmounts.Track(dir)()
	want := wantOpens(true, false, os.Geteuid() == 0, srv.KernelSettings().Flags64())
	got := fsys.opens.Load()
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		t.Error(err)
	}
	if err := srv.Unmount(); err != nil {
		t.Errorf("unmount: %v", err)
		_ = Detach(dir)
	}
	if got != want {
		t.Fatalf("before serving, opens = %v; want %v", got, want)
	}
	if !want {
		t.Logf("this kernel or user gets no passthrough (root %v, kernel flags %#x): only the undecided=off case is checked", os.Geteuid() == 0, srv.KernelSettings().Flags64())
	}
}

// access(2) answers as on a native filesystem: the kernel checks modes
// itself (default_permissions), so even root may not execute a 0444 file.
// With allow_other, other users read the store as before.
func TestAccessLikeNativeFilesystem(t *testing.T) {
	e := newEnvOpts(t, Config{}, 64<<20, MountOptions{AllowOther: true})
	nar, ls := makeNar(t, testTree())
	base := e.add(t, "pkg", nar, nar, ls)
	p := func(name string) string { return filepath.Join(e.dir, base, name) }
	for _, tc := range []struct {
		name string
		mode uint32
		want error
	}{
		{"share/doc/readme", unix.X_OK, syscall.EACCES},
		{"share/doc/readme", unix.R_OK, nil},
		{"share/doc/readme", unix.W_OK, syscall.EROFS},
		{"bin/tool", unix.X_OK, nil},
		{"bin/tool", unix.R_OK | unix.X_OK, nil},
		{"share/doc", unix.X_OK, nil},
		{".", unix.R_OK | unix.X_OK, nil},
	} {
		err := unix.Access(p(tc.name), tc.mode)
		if !errors.Is(err, tc.want) && !(err == nil && tc.want == nil) {
			t.Errorf("access(%s, %d) as uid %d = %v, want %v", tc.name, tc.mode, os.Geteuid(), err, tc.want)
		}
		err = unix.Faccessat(unix.AT_FDCWD, p(tc.name), tc.mode, unix.AT_EACCESS)
		if !errors.Is(err, tc.want) && !(err == nil && tc.want == nil) {
			t.Errorf("faccessat(%s, %d, AT_EACCESS) = %v, want %v", tc.name, tc.mode, err, tc.want)
		}
	}
	if os.Geteuid() != 0 {
		t.Log("not root: allow_other for another user not checked")
		return
	}
	// Another user, through allow_other. The mount point's parents may be
	// closed to that user (t.TempDir is 0700), so it reaches the mount
	// through a descriptor inherited from here.
	d, err := os.Open(filepath.Join(e.dir, base))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	script := `cd /proc/self/fd/3 &&
		test -r share/doc/readme && ! test -x share/doc/readme &&
		test -x bin/tool && test -x share/doc && cat share/doc/readme && ls bin`
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.ExtraFiles = []*os.File{d}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "read me") || !strings.Contains(string(out), "tool") {
		t.Fatalf("as uid 65534: %v, output %q", err, out)
	}
}
