package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The NixOS module is checked by evaluating it, not by booting NixOS (no VM
// here): nixos-module/eval-test.nix runs nixpkgs' lib.evalModules with
// stand-ins for the NixOS options the module sets, and this test checks
// what came out against the built ipnix. NIXPKGS_LIB must point at a
// nixpkgs lib directory (github:nix-community/nixpkgs.lib holds it alone).

// nixosEval is the JSON eval-test.nix prints.
type nixosEval struct {
	Full, RemoteAPI, Minimal, ServeOnly, Bad, BadRoot, BadValues, Disabled, FlakeModule nixosCase
	FlakePackages                                                                       map[string]map[string]string
	PackageArgs                                                                         struct {
		SubPackages []string
		DoCheck     bool
		Ldflags     []string
		PostInstall string
		VendorHash  string
	}
}

type nixosCase struct {
	FailedAssertions []string
	Services         map[string]nixosService
	NixSettings      map[string][]string
	SystemPackages   []string
}

type nixosService struct {
	Description            string
	After, Wants, WantedBy []string
	Path                   []string
	RestartIfChanged       *bool
	ServiceConfig          map[string]any
}

func TestNixOSModuleEval(t *testing.T) {
	libDir := os.Getenv("NIXPKGS_LIB")
	if libDir == "" {
		t.Skip("NIXPKGS_LIB is unset: set it to a nixpkgs lib directory (e.g. a checkout of github:nix-community/nixpkgs.lib, its lib/) to evaluate the NixOS module")
	}
	if _, err := os.Stat(filepath.Join(libDir, "modules.nix")); err != nil {
		t.Fatalf("NIXPKGS_LIB=%s is not a nixpkgs lib directory: %v", libDir, err)
	}
	nixInstantiate, err := exec.LookPath("nix-instantiate")
	if err != nil {
		t.Skip("nix-instantiate is not installed")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(nixInstantiate, "--eval", "--strict", "--json",
		filepath.Join(root, "nixos-module", "eval-test.nix"), "--argstr", "nixpkgsLib", libDir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("evaluating nixos-module/eval-test.nix: %v\n%s", err, stderr.String())
	}
	var ev nixosEval
	if err := json.Unmarshal(out, &ev); err != nil {
		t.Fatalf("eval-test.nix output: %v\n%s", err, out)
	}

	mountFlags, mountHelp := helpFlags(t, "mount")

	const key = "cache.example.org-1:rS5Gf+Kx8Q3eJ3i0m7cPqV1VPxq/3ZfW9s2mY6pN2tA="
	const otherKey = "other-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	mountCases := []struct {
		name       string
		c          nixosCase
		mountPoint string
		kubo       bool
	}{
		{"full", ev.Full, "/run/ipnix/store", true},
		{"remoteApi", ev.RemoteAPI, "/mnt/ipnix", false},
		{"minimal", ev.Minimal, "/run/ipnix/store", false},
		{"flakeModule", ev.FlakeModule, "/run/ipnix/store", false},
	}
	for _, mc := range mountCases {
		t.Run(mc.name, func(t *testing.T) {
			if len(mc.c.FailedAssertions) != 0 {
				t.Errorf("assertions failed: %q", mc.c.FailedAssertions)
			}
			svc, ok := mc.c.Services["ipnix"]
			if !ok {
				t.Fatalf("no ipnix service; services: %v", keys(mc.c.Services))
			}
			sc := svc.ServiceConfig
			for k, want := range map[string]string{"Type": "notify", "Restart": "on-failure", "NotifyAccess": "main"} {
				if sc[k] != want {
					t.Errorf("%s = %v, want %s", k, sc[k], want)
				}
			}
			argv := execArgv(t, sc["ExecStart"])
			if !strings.HasSuffix(argv[0], "/bin/ipnix") || len(argv) < 2 || argv[1] != "mount" {
				t.Fatalf("ExecStart does not run ipnix mount: %q", argv)
			}
			positional, err := checkFlags(argv[2:], mountFlags, mountHelp)
			if err != nil {
				t.Errorf("ExecStart %q: %v", argv, err)
			}
			if !reflect.DeepEqual(positional, []string{mc.mountPoint}) {
				t.Errorf("ExecStart's positional arguments %q, want just the mount point %s", positional, mc.mountPoint)
			}
			stop := execArgv(t, sc["ExecStopPost"])
			if !strings.HasPrefix(stop[0], "-") || !strings.HasSuffix(stop[0], "/bin/fusermount3") ||
				!slices.Contains(stop, "-u") || !slices.Contains(stop, "-z") || stop[len(stop)-1] != mc.mountPoint {
				t.Errorf("ExecStopPost %q does not detach %s (ignoring failure)", stop, mc.mountPoint)
			}
			if !slices.ContainsFunc(svc.Path, func(p string) bool { return strings.Contains(p, "-fuse-3") }) {
				t.Errorf("fuse3 is not in the service's path: %q", svc.Path)
			}
			// NixOS's services.kubo runs ipfs.service, its API on
			// ipfs-api.socket.
			for _, units := range [][]string{svc.After, svc.Wants} {
				if got := slices.Contains(units, "ipfs.service"); got != mc.kubo {
					t.Errorf("ordered after ipfs.service: %v, want %v (after %q, wants %q)", got, mc.kubo, svc.After, svc.Wants)
				}
			}
			if got := slices.Contains(svc.After, "ipfs-api.socket"); got != mc.kubo {
				t.Errorf("ordered after ipfs-api.socket: %v, want %v (after %q)", got, mc.kubo, svc.After)
			}
			if !slices.Contains(svc.WantedBy, "multi-user.target") {
				t.Errorf("wantedBy %q", svc.WantedBy)
			}
		})
	}

	t.Run("full command line", func(t *testing.T) {
		// Every option reaches the command line once, and values with
		// systemd's special characters survive its quoting.
		want := []string{"mount",
			"--substituter", "https://cache.example.org/ipnix?x=%41$HOME",
			"--substituter", "file:///srv/ipnix cache",
			"--trusted-public-key", key, "--trusted-public-key", otherKey,
			"--api", "/unix/run/ipfs.sock", // the local kubo's API socket
			"--gateway", "http://127.0.0.1:8080",
			"--memory-cache", "268435456",
			"--cache-dir", "/var/cache/ipnix",
			"--cache-size", "20GiB",
			"--require-cid-sig",
			"--kubo-repo", "/var/lib/ipfs", // its blockstore, read directly
			"--closure", "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello-2.12.1",
			"--closure", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-data",
			"--overlay", "/nix/store",
			"-o", "allow_other",
			"--metrics", "127.0.0.1:9464", "--read-timeout", "60s",
			"/run/ipnix/store"}
		argv := execArgv(t, ev.Full.Services["ipnix"].ServiceConfig["ExecStart"])
		if !reflect.DeepEqual(argv[1:], want) {
			t.Errorf("ExecStart arguments\n got %q\nwant %q", argv[1:], want)
		}
		if g := ev.Full.Services["ipnix-serve"].ServiceConfig["SupplementaryGroups"]; !reflect.DeepEqual(g, []any{"ipfs"}) {
			t.Errorf("ipnix-serve SupplementaryGroups = %v, want [ipfs] (the kubo API socket's group)", g)
		}
		if got := ev.Full.NixSettings["substituters"]; !reflect.DeepEqual(got, []string{"http://127.0.0.1:8480"}) {
			t.Errorf("nix.settings.substituters = %q", got)
		}
		if got := ev.Full.NixSettings["trusted-public-keys"]; !reflect.DeepEqual(got, []string{key, otherKey}) {
			t.Errorf("nix.settings.trusted-public-keys = %q", got)
		}
		if cd := ev.RemoteAPI.Services["ipnix"].ServiceConfig["CacheDirectory"]; cd != nil {
			t.Errorf("cacheDir = null still sets CacheDirectory=%v", cd)
		}
	})

	t.Run("serve", func(t *testing.T) {
		svc, ok := ev.ServeOnly.Services["ipnix-serve"]
		if !ok || len(ev.ServeOnly.Services) != 1 {
			t.Fatalf("serve.enable alone gives services %v, want ipnix-serve only", keys(ev.ServeOnly.Services))
		}
		if len(ev.ServeOnly.FailedAssertions) != 0 {
			t.Errorf("assertions failed: %q", ev.ServeOnly.FailedAssertions)
		}
		if cd := svc.ServiceConfig["CacheDirectory"]; cd != "ipnix-http" {
			t.Errorf("serve.cacheDir /var/cache/ipnix-http gives CacheDirectory=%v", cd)
		}
		if got := ev.ServeOnly.NixSettings["substituters"]; !reflect.DeepEqual(got, []string{"http://127.0.0.1:9000"}) {
			t.Errorf("nix.settings.substituters = %q for listen :9000", got)
		}
		serveCmds := map[string]string{
			"serveOnly": svc.ServiceConfig["ExecStart"].(string),
			"full":      ev.Full.Services["ipnix-serve"].ServiceConfig["ExecStart"].(string),
		}
		flags, help, err := tryHelpFlags("serve")
		for name, line := range serveCmds {
			argv := execArgv(t, line)
			if len(argv) < 4 || argv[1] != "serve" || argv[2] != "--listen" {
				t.Errorf("%s: ExecStart %q does not run ipnix serve --listen", name, argv)
				continue
			}
			if err != nil {
				continue
			}
			positional, ferr := checkFlags(argv[2:], flags, help)
			if ferr != nil || len(positional) != 0 {
				t.Errorf("%s: ExecStart %q: %v (positional %q)", name, argv, ferr, positional)
			}
		}
		if err != nil {
			// Until `ipnix serve` exists, its flags can only be checked
			// against mount's (the same source flags).
			t.Logf("ipnix serve --help: %v; checking the source flags against ipnix mount --help instead", err)
			for name, line := range serveCmds {
				argv := execArgv(t, line)
				if _, ferr := checkFlags(argv[4:], mountFlags, mountHelp); ferr != nil {
					t.Errorf("%s: %v", name, ferr)
				}
			}
		}
	})

	t.Run("systemd-analyze verify", func(t *testing.T) {
		// systemd itself parses the units (quoting, escapes, directives),
		// as NixOS would write them, with the stand-in store paths
		// replaced by real programs.
		analyze, err := exec.LookPath("systemd-analyze")
		if err != nil {
			t.Skip("systemd-analyze is not installed")
		}
		dir := t.TempDir()
		for name, svc := range map[string]nixosService{
			"ipnix":       ev.Full.Services["ipnix"],
			"ipnix-serve": ev.Full.Services["ipnix-serve"],
			"ipnix-min":   ev.Minimal.Services["ipnix"],
		} {
			unit := filepath.Join(dir, name+".service")
			if err := os.WriteFile(unit, []byte(unitFile(t, svc)), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(analyze, "verify", unit).CombinedOutput()
			if err != nil || len(bytes.TrimSpace(out)) != 0 {
				t.Errorf("systemd-analyze verify %s: %v\n%s\n%s", name, err, out, unitFile(t, svc))
			}
		}
	})

	t.Run("assertions", func(t *testing.T) {
		for _, c := range []struct {
			name  string
			c     nixosCase
			words []string
		}{
			{"bad", ev.Bad, []string{"substituters is empty", "trustedPublicKeys is empty", "mountPoint", "under /var/cache/"}},
			{"badRoot", ev.BadRoot, []string{"mountPoint"}},
			{"badValues", ev.BadValues, []string{"substituters: each", "trustedPublicKeys: each", "serve.cacheDir"}},
		} {
			if len(c.c.FailedAssertions) != len(c.words) {
				t.Errorf("%s: failed assertions %q, want %d", c.name, c.c.FailedAssertions, len(c.words))
			}
			for _, w := range c.words {
				if !slices.ContainsFunc(c.c.FailedAssertions, func(m string) bool { return strings.Contains(m, w) }) {
					t.Errorf("%s: no failed assertion mentions %q: %q", c.name, w, c.c.FailedAssertions)
				}
			}
		}
		if len(ev.Disabled.Services) != 0 || len(ev.Disabled.SystemPackages) != 0 || len(ev.Disabled.FailedAssertions) != 0 {
			t.Errorf("a disabled module still sets %+v", ev.Disabled)
		}
	})

	t.Run("package", func(t *testing.T) {
		for _, sys := range []string{"x86_64-linux", "aarch64-linux"} {
			if got := ev.FlakePackages[sys]["default"]; got != "ipnix-0.1.0-abcdef0" {
				t.Errorf("flake packages.%s.default = %q", sys, got)
			}
		}
		if !slices.Contains(ev.FlakeModule.SystemPackages, "ipnix-0.1.0-abcdef0") {
			t.Errorf("the flake's module does not default to the flake's package: %q", ev.FlakeModule.SystemPackages)
		}
		pa := ev.PackageArgs
		if !reflect.DeepEqual(pa.SubPackages, []string{"cmd/ipnix"}) || pa.DoCheck ||
			!strings.Contains(pa.PostInstall, "mount.fuse.ipnix") || pa.VendorHash == "" {
			t.Errorf("buildGoModule arguments %+v", pa)
		}
		// -X only takes effect on a variable that exists.
		main, err := os.ReadFile(filepath.Join(root, "cmd", "ipnix", "main.go"))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(pa.Ldflags, "-X main.version=0.1.0-abcdef0") || !regexp.MustCompile(`(?m)^var version = `).Match(main) {
			t.Errorf("ldflags %q do not set main.version", pa.Ldflags)
		}
	})
}

// unitFile writes svc as NixOS would (a list value is one line per element),
// with /nix/store/<stand-in>/bin/PROG replaced by the built ipnix or PROG
// found on PATH, so that systemd-analyze finds the programs.
func unitFile(t *testing.T, svc nixosService) string {
	t.Helper()
	stub := regexp.MustCompile(`/nix/store/0{32}-[^/"]+/bin/([a-z0-9.-]+)`)
	fix := func(s string) string {
		return stub.ReplaceAllStringFunc(s, func(m string) string {
			prog := stub.FindStringSubmatch(m)[1]
			if prog == "ipnix" {
				return ipnixBin
			}
			p, err := exec.LookPath(prog)
			if err != nil {
				t.Skipf("%s is not installed", prog)
			}
			return p
		})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "[Unit]\nDescription=%s\n", svc.Description)
	for _, u := range svc.After {
		fmt.Fprintf(&b, "After=%s\n", u)
	}
	for _, u := range svc.Wants {
		fmt.Fprintf(&b, "Wants=%s\n", u)
	}
	b.WriteString("[Service]\n")
	for _, k := range keys(svc.ServiceConfig) {
		var values []any
		switch v := svc.ServiceConfig[k].(type) {
		case []any:
			values = v
		default:
			values = []any{v}
		}
		for _, v := range values {
			switch v := v.(type) {
			case bool:
				fmt.Fprintf(&b, "%s=%s\n", k, map[bool]string{true: "yes", false: "no"}[v])
			case string:
				fmt.Fprintf(&b, "%s=%s\n", k, fix(v))
			default:
				fmt.Fprintf(&b, "%s=%v\n", k, v)
			}
		}
	}
	return b.String()
}

func keys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// execArgv splits a systemd command line as the module writes it: each
// argument either bare or in JSON string syntax (which systemd reads as
// C-style quoting), with '%' and '$' doubled. A leading '-' (ignore
// failure) stays on the first word.
func execArgv(t *testing.T, v any) []string {
	t.Helper()
	line, ok := v.(string)
	if !ok {
		t.Fatalf("command line %v is not a string", v)
	}
	var argv []string
	for i := 0; i < len(line); {
		if line[i] == ' ' {
			i++
			continue
		}
		start := i
		if line[i] == '"' {
			i++
			for i < len(line) && line[i] != '"' {
				if line[i] == '\\' {
					i++
				}
				i++
			}
			if i >= len(line) {
				t.Fatalf("unterminated quote in %q", line)
			}
			i++
		} else {
			for i < len(line) && line[i] != ' ' {
				i++
			}
		}
		word := line[start:i]
		if strings.ContainsAny(strings.NewReplacer("%%", "", "$$", "").Replace(word), "%$") {
			t.Errorf("%q: a lone %% or $ would be expanded by systemd", word)
		}
		word = strings.NewReplacer("%%", "%", "$$", "$").Replace(word)
		if word[0] == '"' {
			var s string
			if err := json.Unmarshal([]byte(word), &s); err != nil {
				t.Fatalf("argument %s of %q: %v", word, line, err)
			}
			word = s
		}
		argv = append(argv, word)
	}
	if len(argv) == 0 {
		t.Fatalf("empty command line")
	}
	return argv
}

// flagLine matches a flag in pflag's usage: "  -o, --option stringArray  ..."
// or "      --debug   ...". The type word is there only for flags that
// take a value.
var flagLine = regexp.MustCompile(`^\s+(?:-([a-zA-Z]), )?--([a-z0-9-]+)(?: ([a-zA-Z0-9]+))?\s\s+`)

// helpFlags returns the flags `ipnix CMD --help` lists (name -> takes a
// value; shorthands as "-x") and the whole help text.
func helpFlags(t *testing.T, cmd string) (map[string]bool, string) {
	t.Helper()
	flags, help, err := tryHelpFlags(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return flags, help
}

func tryHelpFlags(cmd string) (map[string]bool, string, error) {
	out, err := exec.Command(ipnixBin, cmd, "--help").CombinedOutput()
	if err != nil {
		return nil, "", fmt.Errorf("ipnix %s --help: %v: %s", cmd, err, firstLine(out))
	}
	flags := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		m := flagLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		takesValue := m[3] != ""
		flags["--"+m[2]] = takesValue
		if m[1] != "" {
			flags["-"+m[1]] = takesValue
		}
	}
	if len(flags) == 0 {
		return nil, "", fmt.Errorf("ipnix %s --help lists no flags: %s", cmd, firstLine(out))
	}
	return flags, string(out), nil
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return s
}

// checkFlags walks args as pflag would and fails on a flag the help does
// not list, a value-taking flag without its value, or an -o word the help
// does not mention. It returns the positional arguments.
func checkFlags(args []string, flags map[string]bool, help string) ([]string, error) {
	var positional []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(positional, args[i+1:]...), nil
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			positional = append(positional, a)
			continue
		}
		name, value, hasValue := strings.Cut(a, "=")
		if !strings.HasPrefix(a, "--") && len(a) > 2 { // -oVALUE
			name, value, hasValue = a[:2], a[2:], true
		}
		takesValue, ok := flags[name]
		if !ok {
			return positional, fmt.Errorf("flag %s is not in the --help output", name)
		}
		if takesValue && !hasValue {
			if i+1 >= len(args) {
				return positional, fmt.Errorf("flag %s has no value", name)
			}
			i++
			value = args[i]
		}
		if name == "-o" || name == "--option" {
			for _, w := range strings.Split(value, ",") {
				w, _, _ = strings.Cut(w, "=")
				if !regexp.MustCompile(`\b` + regexp.QuoteMeta(w) + `\b`).MatchString(help) {
					return positional, fmt.Errorf("mount option %q is not in the --help output", w)
				}
			}
		}
	}
	return positional, nil
}
