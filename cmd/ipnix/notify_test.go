package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// listenNotify opens a unixgram socket at addr (a path or an @abstract
// name) as the service manager would, closed by the test's cleanup.
func listenNotify(t *testing.T, addr string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// recvNotify returns the next datagram, failing the test if none arrives
// within a generous bound (the send has already returned when it is called).
func recvNotify(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, _, err := conn.ReadFromUnix(buf)
	if err != nil {
		t.Fatalf("no notification received: %v", err)
	}
	return string(buf[:n])
}

func TestNotifyPathSocket(t *testing.T) {
	// Not t.TempDir: its path can exceed the 108 bytes of sun_path.
	dir, err := os.MkdirTemp("", "ipnix-notify-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	addr := filepath.Join(dir, "notify")
	conn := listenNotify(t, addr)
	t.Setenv("NOTIFY_SOCKET", addr)

	var logs bytes.Buffer
	notifyReady(newLogger(&logs, false))
	if got := recvNotify(t, conn); got != "READY=1" {
		t.Errorf("got %q, want READY=1", got)
	}
	notifyStopping()
	if got := recvNotify(t, conn); got != "STOPPING=1" {
		t.Errorf("got %q, want STOPPING=1", got)
	}
	if logs.Len() != 0 {
		t.Errorf("unexpected log output: %s", logs.String())
	}
}

func TestNotifyAbstractSocket(t *testing.T) {
	addr := fmt.Sprintf("@ipnix-notify-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	conn := listenNotify(t, addr)
	t.Setenv("NOTIFY_SOCKET", addr)

	var logs bytes.Buffer
	notifyReady(newLogger(&logs, false))
	if got := recvNotify(t, conn); got != "READY=1" {
		t.Errorf("got %q, want READY=1", got)
	}
	if logs.Len() != 0 {
		t.Errorf("unexpected log output: %s", logs.String())
	}
	// The name really is abstract: nothing was created in the working
	// directory under the literal "@..." name.
	if _, err := os.Stat(addr); err == nil {
		t.Errorf("a file %q exists: the name was not taken as abstract", addr)
	}
}

func TestNotifyFailuresAreLoggedNotFatal(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "absent")
	cases := []struct {
		name, env, log string
	}{
		{"unset", "", ""},
		{"no such socket", missing, missing},
		{"relative", "notify.sock", "only unix socket paths"},
		{"vsock", "vsock:2:1234", "only unix socket paths"},
		{"bare at", "@", "empty socket name"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("NOTIFY_SOCKET", c.env)
			var logs bytes.Buffer
			notifyReady(newLogger(&logs, false))
			notifyStopping()
			out := logs.String()
			if c.log == "" {
				if out != "" {
					t.Errorf("unexpected log output: %s", out)
				}
				return
			}
			if !strings.Contains(out, "level=WARN") || !strings.Contains(out, c.log) {
				t.Errorf("log %q does not warn about %q", out, c.log)
			}
		})
	}
}
