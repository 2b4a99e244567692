package main

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"
)

// The service manager's readiness protocol (sd_notify(3)), without
// libsystemd: one datagram of "KEY=VALUE" lines sent to the unix socket
// named by $NOTIFY_SOCKET. A unit with Type=notify is "started" only once
// READY=1 arrives, so units ordered after ipnix.service find the store
// mounted. Outside systemd the variable is unset and nothing is sent.

// notifyTimeout bounds the send: a datagram to a socket whose queue is full
// would otherwise block, and readiness is never worth hanging the mount.
const notifyTimeout = 5 * time.Second

// notifyReady tells the service manager that the mount is up. Failures are
// logged and otherwise ignored: the mount works the same without systemd.
func notifyReady(log *slog.Logger) {
	if err := sdNotify("READY=1"); err != nil {
		log.Warn("could not tell the service manager that the mount is ready", "err", err)
	}
}

// notifyStopping tells the service manager that ipnix is unmounting. It is
// best effort and silent: at that point there is nothing to do about an
// error, and the service manager sees the process exit anyway.
func notifyStopping() {
	_ = sdNotify("STOPPING=1")
}

// sdNotify sends state to $NOTIFY_SOCKET; it does nothing when the variable
// is unset or empty. Supported addresses are a filesystem path (leading
// '/') and an abstract socket (leading '@', which stands for the NUL byte
// that starts an abstract name; Go's net package performs that
// translation). vsock addresses ("vsock:CID:PORT", used by VMs) are not.
func sdNotify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	if addr[0] != '/' && addr[0] != '@' {
		return fmt.Errorf("NOTIFY_SOCKET %q: only unix socket paths and @abstract names are supported", addr)
	}
	if len(addr) == 1 {
		return fmt.Errorf("NOTIFY_SOCKET %q: empty socket name", addr)
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("NOTIFY_SOCKET %q: %w", addr, err)
	}
	defer conn.Close()
	if err := conn.SetWriteDeadline(time.Now().Add(notifyTimeout)); err != nil {
		return fmt.Errorf("NOTIFY_SOCKET %q: %w", addr, err)
	}
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("NOTIFY_SOCKET %q: sending %s: %w", addr, state, err)
	}
	return nil
}
