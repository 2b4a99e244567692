package main

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ipnix/ipnix/integrity"
)

// Bad command lines of serve and register are refused with a message
// naming what is wrong.
func TestServeAndRegisterArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"serve"}, "no --substituter"},
		{[]string{"serve", "--substituter", "file:///c"}, "no --trusted-public-key"},
		{[]string{"serve", "--substituter", "file:///c", "--no-require-sigs", "extra"}, "no arguments"},
		{[]string{"serve", "--substituter", "file:///c", "--no-require-sigs", "--read-timeout", "0s"}, "must be positive"},
		{[]string{"serve", "--listen"}, "needs an argument"},
		{[]string{"register", "--substituter", "file:///c", "--no-require-sigs"}, "at least one STOREPATH"},
		{[]string{"register", "x"}, "no --substituter"},
		{[]string{"register", "--substituter", "file:///c", "x"}, "no --trusted-public-key"},
	} {
		var err error
		if tc.args[0] == "serve" {
			_, err = parseServeArgs(tc.args[1:], io.Discard)
		} else {
			_, err = parseRegisterArgs(tc.args[1:], io.Discard)
		}
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%q: %v, want %q", tc.args, err, tc.err)
		}
	}
	c, err := parseServeArgs([]string{"--substituter", "file:///c", "--no-require-sigs"}, io.Discard)
	if err != nil || c.Listen != "127.0.0.1:8480" {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	dir := t.TempDir()
	if code := run([]string{"ipnix", "register", "--substituter", "file://" + dir, "--no-require-sigs", "not a path"}, io.Discard, io.Discard); code != exitUsage {
		t.Fatalf("register of a bad store path: exit %d", code)
	}
}

// Whatever path a client asks for, the server answers without a panic:
// 404 for names it does not serve and for hashes no substituter holds.
func FuzzServePaths(f *testing.F) {
	dir := f.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nix-cache-info"), []byte("StoreDir: /nix/store\n"), 0o644); err != nil {
		f.Fatal(err)
	}
	res, err := newResolver([]string{"file://" + dir}, nil, false, false, nil)
	if err != nil {
		f.Fatal(err)
	}
	s := &cacheServer{res: res, readTimeout: time.Second, log: slog.New(slog.DiscardHandler), bad: map[string]error{},
		ahead: integrity.NewBudget(1 << 20)}
	for _, p := range []string{"/nix-cache-info", "/0c6kzph7l0dcbfmjap64f0czdafn3b7x.narinfo", "/nar/0c6kzph7l0dcbfmjap64f0czdafn3b7x.nar",
		"/x.ls", "/../etc/passwd.narinfo", "/nar/../x.nar", "/" + strings.Repeat("a", 300) + ".narinfo"} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p string) {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.URL.Path = p
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		if strings.TrimPrefix(p, "/") == "nix-cache-info" { // the same name with or without the slash
			if w.Code != 200 || !bytes.Contains(w.Body.Bytes(), []byte("StoreDir: /nix/store")) {
				t.Fatalf("nix-cache-info: %d %q", w.Code, w.Body.String())
			}
			return
		}
		if w.Code != http.StatusNotFound && w.Code != http.StatusMethodNotAllowed {
			t.Fatalf("%q: status %d, want 404 (nothing is in this cache)", p, w.Code)
		}
	})
}
